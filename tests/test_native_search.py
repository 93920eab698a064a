"""The native AVQ search (stochastic_vq_core.native) against the plain-torch one, which
stays the reference and the fallback: the same codes on data without exact ties."""

import itertools
import os
import platform
import subprocess
import sys

import pytest
import torch

import additive_vq
from additive_vq import AVQ, beam_search_torch
from conftest import ROOT
from helpers import search_tables
from stochastic_vq_core import native

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native search {native.status()}")


GRID = [(stages, bits, beam, dim)
        for stages, bits, beam, dim in itertools.product([1, 2, 3, 4, 6, 8], [1, 2, 3, 5, 8],
                                                         [1, 2, 5, 16, 32], [4, 32, 128])
        if stages * 2**bits <= 1024 and (bits < 8 or beam in (1, 16))]
# runs of several chunks (the kernel's minima per four SIMD registers), the last one short
# where whole rows (short codebooks) are not a multiple of a chunk: 80 and 112 codewords
GRID += [(5, 4, 16, 32), (7, 4, 8, 128), (3, 7, 16, 32), (2, 9, 8, 32)]
# many codebooks of two registers (float32 at K = 32, float64 at K = 16 with AVX-512):
# whole rows while a beam uses a quarter of its row, also once its sums are added up
GRID += [(16, 5, 8, 32), (16, 4, 8, 32)]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_codes_as_the_torch_search(dtype):
    """float64 everywhere; float32 where rounding leaves no exact ties (D >= 32)."""
    generator = torch.Generator().manual_seed(0)
    for stages, bits, beam, dim in GRID:
        if dtype == torch.float32 and dim < 32:
            continue
        base, cross = search_tables(stages, bits, dim, dtype, generator, rows=24)
        ours = native.avq_beam_search(base, cross, stages, beam)
        reference = beam_search_torch(base, cross, stages, beam)
        assert torch.equal(ours, reference), (stages, bits, beam, dim, dtype)


@needs_native
def test_exact_ties_give_the_same_error():
    """Copies of one codebook: every set is reached in many orders, many errors equal."""
    vq = AVQ(3, 2, 4, 8)
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(4, 4).repeat(3, 1))
    x = torch.randn(200, 4)
    codewords, norms, cross = vq._tables(torch.float32, vq.num_stages)
    base = torch.addmm(norms, x, codewords.t(), alpha=-2.0)
    ours = vq.decode(native.avq_beam_search(base, cross, 3, 8))
    reference = vq.decode(beam_search_torch(base, cross, 3, 8))
    torch.testing.assert_close((x - ours).pow(2).sum(1), (x - reference).pow(2).sum(1))


X86 = platform.machine() in ("x86_64", "AMD64")

@needs_native
@pytest.mark.skipif(not X86, reason="the instruction-set variants are x86-64's")
@pytest.mark.parametrize("variant", sorted(native.X86_VARIANTS))
def test_every_instruction_set_gives_the_same_codes(variant, tmp_path, monkeypatch):
    """The kernel built without AVX-512 (its AVX2 code, where the CPU has AVX2) and without
    either (its portable code, plain arrays) gives the torch search's codes too."""
    monkeypatch.setenv("STOCHASTIC_VQ_CACHE", str(tmp_path))
    library = native.variant(variant)
    generator = torch.Generator().manual_seed(2)
    for (stages, bits, beam), dtype in itertools.product(
            [(1, 3, 5), (2, 5, 16), (3, 5, 8), (4, 4, 16), (4, 5, 16), (4, 8, 16), (5, 4, 16),
             (6, 2, 32), (6, 3, 16), (8, 1, 5)],
            [torch.float32, torch.float64]):
        base, cross = search_tables(stages, bits, 32, dtype, generator, rows=40)
        ours = native._search(library, base, cross, stages, beam)
        assert torch.equal(ours, beam_search_torch(base, cross, stages, beam)), \
            (stages, bits, beam, dtype)


@needs_native
@pytest.mark.parametrize("stages, bits", [(4, 3), (4, 5), (3, 6)])
def test_infinite_errors_never_take_a_codebook_twice(stages, bits):
    """Errors of +inf but for two codewords per vector: steps whose bound is then +inf
    (whole rows of short codebooks, whole rows at the first step, runs of one codebook)
    still leave out the codebooks a beam holds, so every codebook gets one code."""
    generator = torch.Generator().manual_seed(3)
    base, cross = search_tables(stages, bits, 32, torch.float32, generator, rows=40)
    entries = 2**bits
    finite = torch.stack([torch.randint(0, entries, (40,), generator=generator),
                          torch.randint(entries, 2 * entries, (40,), generator=generator)], 1)
    base = torch.full_like(base, float("inf")).scatter_(1, finite, base.gather(1, finite))
    codes = torch.full((40, stages), -1, dtype=torch.long)  # -1 where none is written
    native._load().avq_beam_search_f32(base.data_ptr(), cross.data_ptr(), 40, stages, entries,
                                       16, codes.data_ptr(), 1)
    assert ((codes >= 0) & (codes < entries)).all()
    assert torch.equal(codes[:, :2], finite % entries)  # the two finite ones chosen


@needs_native
def test_threads_give_the_same_codes():
    generator = torch.Generator().manual_seed(1)
    base, cross = search_tables(4, 5, 16, torch.float32, generator, rows=3000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = native.avq_beam_search(base, cross, 4, 16)
        torch.set_num_threads(3)
        together = native.avq_beam_search(base, cross, 4, 16)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)


@needs_native
def test_avq_uses_the_native_search_and_says_so():
    vq = AVQ(3, 4, 16, 8)
    assert vq.search_backend == "native"
    assert "search='native'" in repr(vq)
    x = torch.randn(50, 16)
    codewords, norms, cross = vq._tables(torch.float32, vq.num_stages)
    base = torch.addmm(norms, x, codewords.t(), alpha=-2.0)
    assert torch.equal(vq.encode(x), beam_search_torch(base, cross, 3, 8))


def test_without_the_native_search_avq_uses_torch(monkeypatch):
    vq = AVQ(3, 4, 16, 8)
    x = torch.randn(50, 16)
    codes = vq.encode(x)
    monkeypatch.setattr(native, "available", lambda: False)
    assert vq.search_backend == "torch"
    assert "search='torch'" in repr(vq)
    assert torch.equal(vq.encode(x), codes)


def test_searches_the_kernel_does_not_take_use_torch():
    assert native.takes(4, 256, 16)
    assert not native.takes(65, 2, 4)  # more codebooks than the kernel's 64-bit mask
    assert not native.takes(2, 2**28, 64)  # beam and codeword do not fit a 32-bit key
    assert native.takes(2, 2, 2**31)  # a beam wider than the 4 sets a step can keep
    assert additive_vq.search_backend(torch.device("meta"), 4, 16, 8) == "torch"


def test_most_beams_counts_the_sets_of_each_step():
    assert native.most_beams(4, 16, 16) == 16
    assert native.most_beams(3, 2, 16) == 12  # C(3, 2) * 2**2 sets of two codewords
    assert native.most_beams(2, 2, 1000) == 4  # one step before the last: 4 codewords
    assert native.most_beams(1, 8, 100) == 8


@pytest.mark.slow
def test_no_compiler_falls_back_with_one_warning(tmp_path):
    """A machine without a C++ compiler: a warning, then the torch search."""
    script = ("import warnings, torch\n"
              "from additive_vq import AVQ\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    vq = AVQ(3, 3, 8, 4)\n"
              "    codes = vq.encode(torch.randn(20, 8))\n"
              "print(vq.search_backend, codes.shape[1], len(caught), str(caught[0].message))\n")
    env = {**os.environ, "PATH": str(tmp_path), "CXX": "", "STOCHASTIC_VQ_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    backend, stages, warned, message = result.stdout.split(maxsplit=3)
    assert (backend, stages, warned) == ("torch", "3", "1")
    assert "no C++ compiler" in message and "plain-torch" in message


@pytest.mark.slow
def test_turned_off_by_the_environment():
    script = ("import torch\nfrom additive_vq import AVQ\n"
              "from stochastic_vq_core import native\n"
              "print(AVQ(3, 3, 8, 4).search_backend, native.status())\n")
    env = {**os.environ, "STOCHASTIC_VQ_NATIVE": "0"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(maxsplit=1) == ["torch", "turned off by STOCHASTIC_VQ_NATIVE=0\n"]
