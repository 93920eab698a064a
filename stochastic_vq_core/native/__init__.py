"""Native kernels: C++ built on first use with the system's compiler, registered as torch ops.

``beam_search.cpp`` holds AVQ's beam search (see ``additive_vq.beam_search``). It has no
torch headers, so it builds in a second or two with any C++17 compiler (``$CXX``, else
``c++``/``g++``/``clang++``) into a cache folder (``$STOCHASTIC_VQ_CACHE``, else
``$XDG_CACHE_HOME/stochastic_vq`` or ``~/.cache/stochastic_vq``), keyed by the source, the
compiler and the CPU, and is loaded with ctypes. The op ``stochastic_vq::avq_beam_search``
wraps it for CPU tensors, so ``torch.compile`` sees one opaque operation; eager code
calls the kernel directly (``search``).

Where no compiler is found or the build fails, ``available()`` is False (with one warning
saying why) and the quantizers use their plain-torch search, which gives the same codes.
``STOCHASTIC_VQ_NATIVE=0`` turns the native kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("beam_search.cpp")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]
MAX_STAGES = 64  # the kernel marks used codebooks in a 64-bit mask

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_state = "not built"  # "not built", "loaded" or why it is unavailable


def takes(num_stages: int, entries: int, beam_width: int) -> bool:
    """Whether the kernel takes a search of this size: at most 64 codebooks, and a
    candidate's beam and codeword fit its 32-bit key (beam << bits of M*K | codeword)."""
    total = num_stages * entries
    return num_stages <= MAX_STAGES and most_beams(num_stages, entries, beam_width) << \
        total.bit_length() <= 2**32


def most_beams(num_stages: int, entries: int, beam_width: int) -> int:
    """The most beams a step keeps: beam_width, or the number of sets of t codewords,
    C(M, t) K^t, where fewer before the last step (as the kernel counts them)."""
    most, sets = 0, 1
    for t in range(1, max(num_stages, 2)):
        sets = sets * (num_stages - t + 1) // t * entries if t > 1 else num_stages * entries
        most = max(most, min(sets, beam_width))
        if most == beam_width:  # no step keeps more: the later steps need no counting
            break
    return most


def available() -> bool:
    """Whether the native kernels are built (building them on the first call)."""
    return _load() is not None


def status() -> str:
    """"loaded", or why the native kernels are not used."""
    _load()
    return _state


def _load() -> ctypes.CDLL | None:
    global _library, _state
    if _state != "not built":
        return _library
    with _lock:
        if _state != "not built":
            return _library
        if os.environ.get("STOCHASTIC_VQ_NATIVE", "1") == "0":
            _state = "turned off by STOCHASTIC_VQ_NATIVE=0"
            return None
        try:
            _library = _bind(ctypes.CDLL(str(_build())))
            _state = "loaded"
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _state = f"unavailable: {error}"
            warnings.warn(f"stochastic_vq: native AVQ search {_state}; using the plain-torch "
                          "search (same codes, slower)", RuntimeWarning, stacklevel=3)
    return _library


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no C++ compiler found (set CXX or install g++)")


def _cpu_signature() -> str:
    """What the built code depends on: the machine and, on Linux, the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def _cache_dir() -> Path:
    if os.environ.get("STOCHASTIC_VQ_CACHE"):
        return Path(os.environ["STOCHASTIC_VQ_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stochastic_vq"


def native_flags() -> list[str]:
    """The compiler flags of the build: FLAGS, and the host's instruction set on x86-64."""
    return FLAGS + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])


def _build(flags: list[str] | None = None) -> Path:
    """The compiled library (with ``flags``, default ``native_flags()``), built into the
    cache folder unless it is there already."""
    compiler = _compiler()
    flags = native_flags() if flags is None else flags
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *flags, _cpu_signature()])
                         .encode()).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"beam_search-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # built aside, then renamed
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode:
            raise RuntimeError(f"{Path(compiler).name} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


# flags added to native_flags() for the kernel's other code paths on x86-64: its AVX2
# code, and its portable code (plain arrays), which other processors run
X86_VARIANTS = {"avx2": ["-mno-avx512f"], "portable": ["-mno-avx512f", "-mno-avx2"]}


def variant(name: str) -> ctypes.CDLL:
    """The kernel built with one of X86_VARIANTS' code paths (x86-64 only), for tests and
    benchmarks: pass it to ``_search``."""
    return _bind(ctypes.CDLL(str(_build(native_flags() + X86_VARIANTS[name]))))


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    for name in ("avq_beam_search_f32", "avq_beam_search_f64"):
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                             ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return library


@torch.library.custom_op("stochastic_vq::avq_beam_search", mutates_args=(), device_types="cpu")
def avq_beam_search(base: torch.Tensor, cross: torch.Tensor, num_stages: int,
                    beam_width: int) -> torch.Tensor:
    """AVQ's beam search from its tables: codes (N, M) int64, ordered by codebook.

    base: (N, M*K) ``||c_j||² - 2 <x, c_j>`` per vector and codeword; cross: (M*K, M*K)
    codeword inner products (the blocks of one codebook are not read). float32 or
    float64, both of the same dtype, on the CPU.
    """
    library = _load()
    if library is None:
        raise RuntimeError(f"the native AVQ search is {status()}")
    return _search(library, base, cross, num_stages, beam_width)


def search(base: torch.Tensor, cross: torch.Tensor, num_stages: int,
           beam_width: int) -> torch.Tensor:
    """``avq_beam_search``: the op while a graph is traced, else the kernel called
    directly, without the op's dispatch (a cost that shows in small batches' steps)."""
    if torch.compiler.is_compiling():
        return avq_beam_search(base, cross, num_stages, beam_width)
    return _search(_load(), base, cross, num_stages, beam_width)


def _search(library: ctypes.CDLL, base: torch.Tensor, cross: torch.Tensor, num_stages: int,
            beam_width: int) -> torch.Tensor:
    """``avq_beam_search`` with the kernel of ``library``."""
    base, cross = base.contiguous(), cross.contiguous()
    rows, total = base.shape
    codes = torch.empty(rows, num_stages, dtype=torch.long)
    kernel = (library.avq_beam_search_f64 if base.dtype == torch.float64
              else library.avq_beam_search_f32)
    threads = torch.get_num_threads() if rows * total * beam_width >= 2**20 else 1
    kernel(base.data_ptr(), cross.data_ptr(), rows, num_stages, total // num_stages,
           beam_width, codes.data_ptr(), threads)
    return codes


@avq_beam_search.register_fake
def _(base, cross, num_stages, beam_width):
    return base.new_empty(base.shape[0], num_stages, dtype=torch.long)
