"""The one training loop behind train_additive_vq.py, train_product_vq.py and train_residual_vq.py.

Trains AVQ, PVQ or RVQ with NSVQ and Adam on N(0, 1) data (the paper's example) or on
an (N, D) array, replaces unused codewords on the original schedule, logs per window,
checkpoints, resumes exactly, evaluates, and runs unchanged under ``torchrun``.

    from training import TrainConfig, train
    result = train(TrainConfig(method="rvq", steps=2000, out=None))
    result["eval_mse"], result["quantizer"]   # the log dict (as in log.json) + the module

Determinism: every random stream is a seeded generator whose state is checkpointed —
the data of each rank, the global torch RNG (NSVQ noise), the replacement choices — so
on CPU a run stopped at any point and resumed ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from additive_vq import AVQ
from nsvq import VectorQuantizer
from product_vq import PVQ
from residual_vq import RVQ

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: without it progress is one line per log window
    tqdm = None

METHODS = {"avq": AVQ, "pvq": PVQ, "rvq": RVQ}
METHOD_NAMES = {"avq": "additive VQ (AVQ)", "pvq": "product VQ (PVQ)", "rvq": "residual VQ (RVQ)"}
PAPER_STAGES_BITS = {"avq": (3, 5), "pvq": (4, 7), "rvq": (4, 7)}
LOG_FILE, CHECKPOINT_FILE = "log.json", "checkpoint.pt"
# Settings a resumed run may change: they do not alter the trained codebooks.
RESUMABLE_CHANGES = ("out", "save_every", "eval_samples", "eval_data", "resume", "threads")
DATA_STREAM, NOISE_STREAM, REPLACEMENT_STREAM, EVAL_STREAM, INIT_STREAM = range(5)
EVAL_CHUNK = 2**15  # rows evaluated at once
INIT_SAMPLES = 2**16  # vectors per codebook given to initialize_from_data for --init data*
INITS = ("uniform", "data", "data-disjoint")
LR_SCALES = ("absolute", "data")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class ConfigError(ValueError):
    """An invalid setting, data file or resume request; ``setting`` names the field."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are the paper's example scripts.

    method: "avq", "pvq" or "rvq". stages, bits: None picks the paper's setting (AVQ 3x5,
    PVQ/RVQ 4x7). beam_width is used by AVQ only. device: None picks cuda when available.
    out: run directory for log.json and checkpoint.pt (None: no files). data, eval_data:
    paths of (N, D) .npy files (None: N(0, 1) samples). init: "uniform" (the paper),
    "data" (``initialize_from_data``) or "data-disjoint" (the same with
    ``disjoint=True``: RVQ/AVQ codebooks fitted to their own share of M times as many
    samples). resume: continue from ``out``'s checkpoint.
    threads: torch CPU threads while training (0: leave torch's setting); 1 is by far the
    fastest for the paper's 64-vector batches, above all on a busy machine.
    lr_scale: "absolute" (the paper: ``lr`` is Adam's step size) or "data": ``lr`` is
    relative to the scale of the training data and is multiplied by the standard deviation
    of all its entries (1 for N(0, 1) data). Adam moves each entry by about ``lr`` per step
    whatever the gradient's size, so data far from unit scale (e.g. pixels 0..255) need
    it, together with ``init="data"``.
    """

    method: str = "rvq"
    stages: int | None = None
    bits: int | None = None
    beam_width: int = 8
    dim: int = 128
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    replace_every: int = 1000
    discard_threshold: float = 0.01
    log_every: int = 1000
    save_every: int = 1000
    eval_samples: int = 2**18
    seed: int = 0
    device: str | None = None
    out: str | None = None
    init: str = "uniform"
    data: str | None = None
    eval_data: str | None = None
    resume: bool = False
    threads: int = 1
    lr_scale: str = "absolute"

    def __post_init__(self):
        stages, bits = PAPER_STAGES_BITS.get(self.method, (None, None))
        self.stages = stages if self.stages is None else self.stages
        self.bits = bits if self.bits is None else self.bits
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def validate(self) -> None:
        """Raise ConfigError for the first invalid setting."""
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {sorted(METHODS)}, got {self.method!r}")
        for name, minimum in [("stages", 1), ("bits", 1), ("beam_width", 1), ("dim", 1),
                              ("steps", 1), ("batch_size", 1), ("replace_every", 1),
                              ("log_every", 1), ("save_every", 1), ("eval_samples", 1),
                              ("seed", 0), ("threads", 0)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
        if self.bits > 30:
            raise ConfigError("bits", f"must be <= 30, got {self.bits}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.discard_threshold <= 1.0:
            raise ConfigError("discard_threshold",
                              f"must be in [0, 1], got {self.discard_threshold}")
        if self.init not in INITS:
            raise ConfigError("init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError("lr_scale", f"must be 'absolute' or 'data', got {self.lr_scale!r}")
        if self.method == "pvq" and self.dim % self.stages:
            raise ConfigError("stages", f"product VQ needs dim ({self.dim}) divisible by "
                                        f"stages ({self.stages})")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError("device", f"unknown device {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda was requested but is not available")
        if self.resume and self.out is None:
            raise ConfigError("resume", "needs the run directory (out) to resume from")


def build_quantizer(config: TrainConfig) -> VectorQuantizer:
    """The untrained quantizer that ``config`` describes, on CPU (Uniform(-1/K, 1/K) init)."""
    cls = METHODS[config.method]
    if config.method == "avq":
        return cls(config.stages, config.bits, config.dim, config.beam_width,
                   config.discard_threshold)
    return cls(config.stages, config.bits, config.dim, config.discard_threshold)


def run_name(config: TrainConfig) -> str:
    """Folder name describing a run, e.g. ``rvq_4x7b_d128_seed0``."""
    beam = f"_bw{config.beam_width}" if config.method == "avq" else ""
    data = f"_{Path(config.data).stem}" if config.data else ""
    shape = f"{config.stages}x{config.bits}b{beam}_d{config.dim}"
    return f"{config.method}_{shape}{data}_seed{config.seed}"


def replaces_at(step: int, config: TrainConfig) -> bool:
    """True if codewords are replaced after ``step`` (1-based), on the original's schedule.

    Every ``replace_every`` steps while ``step - 1 <= steps - 2 * replace_every`` (the
    original's test on its 0-based counter), i.e. never in the last 2 x replace_every steps.
    """
    every = config.replace_every
    return step % every == 0 and step - 1 <= config.steps - 2 * every


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Independent 63-bit seed for random ``stream`` of ``rank`` in the run seeded ``seed``."""
    state = np.random.SeedSequence([seed, rank, stream]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def load_array(path: str, setting: str = "data") -> torch.Tensor:
    """Load an (N, D) real-valued .npy file as a float32 tensor; ConfigError if unusable."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(setting, f"cannot read {path}: {error}") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or 0 in array.shape:
        shape = getattr(array, "shape", "not an array")
        raise ConfigError(setting, f"{path} must hold an (N, D) array, got shape {shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ConfigError(setting, f"{path} must hold real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise ConfigError(setting, f"{path}: {len(bad)} rows contain NaN or Inf "
                                   f"(first: row {bad[0]})")
    return torch.from_numpy(array)


def npy_columns(path: str, setting: str = "data") -> int:
    """D of the (N, D) array in a .npy file, reading only its header when it is well formed."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        array = None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        array = load_array(path, setting)  # raises the precise ConfigError
    return array.shape[1]


def batch_sampler(data: torch.Tensor | None, batch_size: int, dim: int,
                  generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """Function drawing the next (batch_size, dim) batch from ``generator``'s stream.

    N(0, 1) samples when ``data`` is None, else rows of ``data`` drawn with replacement.
    """
    device = generator.device
    if data is None:
        return lambda: torch.randn(batch_size, dim, generator=generator, device=device)
    return lambda: data[torch.randint(len(data), (batch_size,), generator=generator,
                                      device=device)]


@torch.no_grad()
def evaluate(quantizer: VectorQuantizer,
             samples: torch.Tensor | Callable[[int], torch.Tensor],
             count: int | None = None) -> float:
    """MSE per dimension of hard (eval-mode) quantization, as the original prints it.

    Args:
        quantizer: the trained module (its device).
        samples: (N, D) vectors, or a function returning the next n vectors (n, D).
        count: how many vectors to draw from a function (default: all N of a tensor).
    """
    if isinstance(samples, torch.Tensor):
        chunks = samples.split(EVAL_CHUNK)
    else:
        chunks = (samples(min(EVAL_CHUNK, count - start)) for start in range(0, count, EVAL_CHUNK))
    squared_error, elements = 0.0, 0
    for x in chunks:
        quantized, _ = quantizer(x, train_mode=False)
        squared_error += float((x - quantized).double().pow(2).sum())
        elements += x.numel()
    return squared_error / elements


def lr_factor(config: TrainConfig, data: torch.Tensor | None) -> float:
    """Factor from ``config.lr`` to Adam's step size: the data's standard deviation for
    ``lr_scale="data"`` (1 for the N(0, 1) stream), else 1."""
    if config.lr_scale == "absolute" or data is None:
        return 1.0
    return float(data.float().std()) or 1.0


def library_version() -> str:
    """Version of this library (pyproject.toml next to this file)."""
    try:
        text = Path(__file__).with_name("pyproject.toml").read_text()
    except OSError:
        return "unknown"
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, then rename it to path."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        write(temp)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(obj, indent=1)))


class _Run:
    """The state of one training run on this rank: module, optimizer, random streams, log."""

    def __init__(self, config: TrainConfig, data: torch.Tensor | None, device: torch.device):
        self.config, self.device = config, device
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) \
            if dist.is_initialized() else (0, 1)
        torch.manual_seed(stream_seed(config.seed, 0, INIT_STREAM))
        self.quantizer = build_quantizer(config).to(device)
        if config.init != "uniform":
            disjoint = config.init == "data-disjoint"
            self.quantizer.initialize_from_data(self._init_samples(data, disjoint),
                                                disjoint=disjoint)
        self.model = self.quantizer
        if self.world > 1:  # usage counters are per rank: never broadcast buffers
            self.model = DistributedDataParallel(self.quantizer, forward_sync_buffers=False)
        self.optimizer = torch.optim.Adam(self.quantizer.parameters(), fused=True,
                                          lr=config.lr * lr_factor(config, data))
        torch.manual_seed(stream_seed(config.seed, self.rank, NOISE_STREAM))
        self.data_rng = torch.Generator(device).manual_seed(
            stream_seed(config.seed, self.rank, DATA_STREAM))
        self.replacement_rng = torch.Generator().manual_seed(
            stream_seed(config.seed, 0, REPLACEMENT_STREAM))
        self.loss_sum = torch.zeros((), device=device)  # of the open window, on device
        self.window_replaced = 0
        self.step = 0
        self.log = {"config": asdict(config), "library_version": library_version(),
                    "torch_version": str(torch.__version__), "world_size": self.world,
                    "windows": [], "replacements": [], "step": 0, "train_time": 0.0,
                    "eval_mse": None, "eval_on": None, "eval_time": 0.0, "wall_time": 0.0,
                    "finished": False}

    def _init_samples(self, data: torch.Tensor | None, disjoint: bool) -> torch.Tensor:
        """Vectors for ``initialize_from_data`` (drawn from the global RNG, seeded for init)."""
        count = INIT_SAMPLES * (self.config.stages if disjoint else 1)
        if data is None:
            return torch.randn(count, self.config.dim, device=self.device)
        return data[torch.randperm(len(data), device=self.device)[:count]]

    def train_step(self, x: torch.Tensor) -> None:
        """One NSVQ forward, backward and Adam step; the loss stays on the device."""
        quantized, _ = self.model(x, train_mode=True)
        loss = F.mse_loss(quantized, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def replace(self) -> None:
        """Replace unused codewords (all ranks, same step) and log how many."""
        replaced = self.quantizer.replace_unused_codebooks(
            self.config.replace_every, verbose=False, generator=self.replacement_rng)
        self.log["replacements"].append({"step": self.step, "replaced": replaced.tolist()})
        self.window_replaced += int(replaced.sum())

    def close_window(self, usage: torch.Tensor) -> dict:
        """Log the window ending at this step: mean loss, usage snapshot, replacements."""
        start = self.log["windows"][-1]["step"] if self.log["windows"] else 0
        loss_sum = self.loss_sum.clone()
        if self.world > 1:
            dist.all_reduce(loss_sum)
        window = {"step": self.step,
                  "loss": float(loss_sum) / ((self.step - start) * self.world),
                  "replaced": self.window_replaced, "usage": usage.tolist(),
                  "time": round(self.log["train_time"], 3)}
        self.log["windows"].append(window)
        self.loss_sum.zero_()
        self.window_replaced = 0
        return window

    def usage_snapshot(self) -> torch.Tensor:
        """Usage counters (M, K) since the last replacement, summed over ranks."""
        usage = self.quantizer.codebook_usage.clone()
        if self.world > 1:
            dist.all_reduce(usage)
        return usage

    # --- checkpoints ------------------------------------------------------------------

    def _rank_state(self) -> dict:
        cuda = self.device.type == "cuda"
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
                "data_rng": self.data_rng.get_state(),
                "replacement_rng": self.replacement_rng.get_state(),
                "loss_sum": self.loss_sum.cpu(),
                "codebook_usage": self.quantizer.codebook_usage.cpu()}

    def save(self, path: Path) -> None:
        """Checkpoint (collective: every rank calls it; rank 0 writes ``path``)."""
        states = [self._rank_state()]
        if self.world > 1:
            gathered = [None] * self.world if self.rank == 0 else None
            dist.gather_object(states[0], gathered, dst=0)
            states = gathered
        if self.rank != 0:
            return
        checkpoint = {"vector_quantizer": self.quantizer.state_dict(),
                      "optimizer": self.optimizer.state_dict(), "step": self.step,
                      "config": asdict(self.config), "world_size": self.world,
                      "window_replaced": self.window_replaced, "log": self.log,
                      "rank_states": states}
        atomic_write(path, lambda temp: torch.save(checkpoint, temp))

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``; ConfigError if it is another run's."""
        if not path.is_file():
            raise ConfigError("resume", f"no checkpoint to resume from: {path} does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            saved = {**checkpoint["config"], "world_size": checkpoint["world_size"]}
        except Exception as error:  # unreadable file: report it as one line
            raise ConfigError("resume", f"cannot read checkpoint {path}: {error}") from None
        saved.setdefault("lr_scale", "absolute")  # checkpoints from before the setting
        current = {**asdict(self.config), "world_size": self.world}
        differing = [f"{key}={saved.get(key)!r} (now {value!r})" for key, value in current.items()
                     if key not in RESUMABLE_CHANGES and saved.get(key) != value]
        if differing:
            raise ConfigError("resume", f"{path} was written by a run with other settings: "
                                        + ", ".join(differing))
        state = checkpoint["rank_states"][self.rank]
        self.quantizer.load_state_dict(checkpoint["vector_quantizer"])
        self.quantizer.codebook_usage.copy_(state["codebook_usage"])  # this rank's own
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.data_rng.set_state(state["data_rng"])
        self.replacement_rng.set_state(state["replacement_rng"])
        self.loss_sum.copy_(state["loss_sum"])
        self.window_replaced = checkpoint["window_replaced"]
        self.step = checkpoint["step"]
        self.log = {**checkpoint["log"], "config": asdict(self.config)}


def _resolve_data(config: TrainConfig, data, eval_data, device: torch.device):
    """Load the files named in ``config`` unless arrays are given; check their dimension."""
    arrays = []
    for setting, array in [("data", data), ("eval_data", eval_data)]:
        path = getattr(config, setting)
        if array is None and path is not None:
            array = load_array(path, setting)
        elif array is not None:
            array = torch.as_tensor(array, dtype=torch.float32)
            if array.dim() != 2 or not torch.isfinite(array).all():
                raise ConfigError(setting, f"must be a finite (N, D) array, got shape "
                                           f"{tuple(array.shape)} or NaN/Inf values")
        if array is not None and array.shape[1] != config.dim:
            raise ConfigError("dim", f"dim is {config.dim} but {path or setting} has "
                                     f"{array.shape[1]} columns")
        arrays.append(None if array is None else array.to(device))
    return arrays


def _device(config: TrainConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _eval_source(config: TrainConfig, data, eval_data, device):
    """(samples for ``evaluate``, count, description) of the final evaluation set."""
    chosen = eval_data if eval_data is not None else data
    if chosen is not None:
        source = "eval_data" if eval_data is not None else "the training data (no eval_data)"
        return chosen, None, f"{len(chosen)} rows of {source}"
    generator = torch.Generator(device).manual_seed(stream_seed(config.seed, 0, EVAL_STREAM))
    sampler = lambda n: torch.randn(n, config.dim, generator=generator, device=device)
    return sampler, config.eval_samples, f"{config.eval_samples} fresh N(0, 1) samples"


def train(config: TrainConfig, data: torch.Tensor | np.ndarray | None = None,
          eval_data: torch.Tensor | np.ndarray | None = None, progress: bool = True, *,
          stop_after: int | None = None) -> dict:
    """Train the quantizer ``config`` describes; return the log with the trained module.

    Args:
        config: the run's settings (``config.data``/``eval_data`` files are loaded unless
            arrays are passed here).
        data: optional (N, D) training vectors (default: N(0, 1) samples).
        eval_data: optional (N, D) held-out vectors for the final evaluation (default:
            ``config.eval_samples`` fresh N(0, 1) samples, or ``data`` itself).
        progress: print progress (rank 0): a tqdm bar on a terminal, else a line per window.
        stop_after: stop after this step without saving, as if the process were killed
            (for tests of ``resume``); the result then has no ``eval_mse``.

    Under ``torch.distributed`` (initialised by the caller) every rank calls ``train``:
    the module is wrapped in DistributedDataParallel, each rank draws its own data stream
    with ``batch_size`` per rank, only rank 0 writes files and prints, and rank 0 evaluates.

    Returns:
        The log dict written to ``out/log.json`` (config, versions, per-window loss, usage
        and replacements, times, ``eval_mse``) plus ``"quantizer"``: the trained bare
        module in eval mode.
    """
    config.validate()
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        return _train(config, data, eval_data, progress, stop_after)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, data, eval_data, progress: bool, stop_after: int | None) -> dict:
    device = _device(config)
    data, eval_data = _resolve_data(config, data, eval_data, device)
    out = Path(config.out) if config.out is not None else None
    run = _Run(config, data, device)
    writer = run.rank == 0 and out is not None
    if config.resume:
        run.load(out / CHECKPOINT_FILE)
        if progress and run.rank == 0:
            print(f"Resuming from step {run.step}", flush=True)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    report = _Progress(config, run.step, progress and run.rank == 0)
    next_batch = batch_sampler(data, config.batch_size, config.dim, run.data_rng)
    started = time.perf_counter() - run.log["train_time"]
    run.quantizer.train()
    run.quantizer.check_finite = False  # data are checked once above: no host sync per step
    while run.step < config.steps and run.step != stop_after:
        run.train_step(next_batch())
        run.step += 1
        closing = run.step % config.log_every == 0 or run.step == config.steps
        usage = run.usage_snapshot() if closing else None  # before replacement resets it
        if replaces_at(run.step, config):
            run.replace()
        run.log["step"], run.log["train_time"] = run.step, time.perf_counter() - started
        if closing:
            report.window(run.close_window(usage))
            if writer:
                write_json(out / LOG_FILE, run.log)
        if out is not None and (run.step % config.save_every == 0 or run.step == config.steps):
            run.save(out / CHECKPOINT_FILE)
        report.step()
    report.close()
    run.quantizer.check_finite = True
    run.quantizer.eval()
    if run.step == config.steps:
        _final_evaluation(run, data, eval_data)
        if writer:
            write_json(out / LOG_FILE, run.log)
        if progress and run.rank == 0:
            where = f"; wrote {out / LOG_FILE} and {out / CHECKPOINT_FILE}" if out else ""
            print(f"eval_mse {run.log['eval_mse']:.4f} on {run.log['eval_on']} "
                  f"(training {run.log['train_time']:.1f} s){where}")
    return {**run.log, "quantizer": run.quantizer}


def _final_evaluation(run: _Run, data, eval_data) -> None:
    """Evaluate on rank 0 (the others wait for its result) and complete the log."""
    log = run.log
    if run.rank == 0:
        samples, count, log["eval_on"] = _eval_source(run.config, data, eval_data, run.device)
        begin = time.perf_counter()
        log["eval_mse"] = evaluate(run.quantizer, samples, count)
        log["eval_time"] = time.perf_counter() - begin
    if run.world > 1:
        shared = [log["eval_mse"], log["eval_on"], log["eval_time"]]
        dist.broadcast_object_list(shared, src=0)
        log["eval_mse"], log["eval_on"], log["eval_time"] = shared
    log.update(finished=True, wall_time=log["train_time"] + log["eval_time"])


class _Progress:
    """A tqdm bar on a terminal (when tqdm is installed), else one line per log window."""

    def __init__(self, config: TrainConfig, start: int, enabled: bool):
        self.steps, self.enabled = config.steps, enabled
        self.bar = None
        if enabled and tqdm is not None and sys.stdout.isatty():
            self.bar = tqdm(total=config.steps, initial=start, unit="step",
                            desc=config.method.upper())

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def window(self, window: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{window['loss']:.4f}", replaced=window["replaced"])
        elif self.enabled:
            width = len(str(self.steps))
            print(f"step {window['step']:>{width}}/{self.steps}  loss {window['loss']:.5f}  "
                  f"replaced {window['replaced']:>4}  {window['time']:7.1f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- command line -----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr and exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(method: str) -> argparse.ArgumentParser:
    """The command line of ``train_<method>.py``; defaults are the paper's."""
    stages, bits = PAPER_STAGES_BITS[method]
    parser = _Parser(description=f"Train {METHOD_NAMES[method]} with NSVQ and Adam on N(0, 1) "
                                 "data (the paper's example) or on an (N, D) .npy file.")
    add = parser.add_argument
    add("--steps", type=int, default=20000, help="training steps (batches) (default: 20000)")
    add("--batch-size", type=int, default=64, help="vectors per step, per process "
                                                    "(default: 64)")
    add("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    add("--dim", type=int, default=None,
        help="data dimension D (default: 128, or the --data file's number of columns)")
    add("--stages", type=int, default=stages, help=f"number of codebooks M (default: {stages})")
    add("--bits", type=int, default=bits,
        help=f"bits per codebook, K = 2**bits codewords each (default: {bits})")
    if method == "avq":
        add("--beam-width", type=int, default=8, help="beam width of the AVQ search "
                                                      "(default: 8)")
    add("--replace-every", type=int, default=1000,
        help="replace unused codewords every this many steps, never in the last "
             "2x this many (default: 1000)")
    add("--discard-threshold", type=float, default=0.01,
        help="a codeword used in fewer than this fraction of the batches since the last "
             "replacement is replaced (default: 0.01)")
    add("--log-every", type=int, default=1000,
        help="steps per log window: mean loss and usage snapshot (default: 1000)")
    add("--save-every", type=int, default=1000,
        help="write checkpoint.pt every this many steps and at the end (default: 1000)")
    add("--eval-samples", type=int, default=2**18,
        help="fresh N(0, 1) vectors of the final hard-quantization MSE (default: 2**18)")
    add("--seed", type=int, default=0, help="seed of initialisation, data, noise and "
                                            "replacement (default: 0)")
    add("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add("--threads", type=int, default=1,
        help="torch CPU threads; 0 keeps torch's default (default: 1, the fastest for small "
             "batches)")
    add("--out", default=None,
        help="run directory for log.json and checkpoint.pt (default: a new folder "
             "output/<method>_<stages>x<bits>b_..._seed<seed>)")
    add("--resume", action="store_true",
        help="continue the run in --out from its checkpoint (same settings required)")
    add("--init", choices=list(INITS), default="uniform",
        help="codebook initialisation: the paper's Uniform(-1/K, 1/K), or k-means of the "
             "training data; data-disjoint fits each RVQ/AVQ codebook to its own share of "
             "the samples, for large codebooks in high dimension (default: uniform)")
    add("--lr-scale", choices=list(LR_SCALES), default="absolute",
        help="absolute: --lr is Adam's step size (the paper); data: --lr is multiplied by the "
             "standard deviation of the training data, for data far from unit scale "
             "(default: absolute)")
    add("--data", default=None, help="(N, D) float .npy file to train on, rows drawn with "
                                     "replacement (default: N(0, 1) samples)")
    add("--eval-data", default=None,
        help="(N, D) .npy file of held-out vectors for the final evaluation (default: fresh "
             "N(0, 1) samples, or --data itself when --data is given)")
    add("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests of --resume
    return parser


def config_from_args(method: str, args: argparse.Namespace) -> TrainConfig:
    """TrainConfig of parsed command-line arguments, ``out`` filled in when not given."""
    dim = args.dim
    if dim is None:
        dim = npy_columns(args.data) if args.data else 128
    config = TrainConfig(
        method=method, stages=args.stages, bits=args.bits,
        beam_width=getattr(args, "beam_width", 8), dim=dim, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, replace_every=args.replace_every,
        discard_threshold=args.discard_threshold, log_every=args.log_every,
        save_every=args.save_every, eval_samples=args.eval_samples, seed=args.seed,
        device=args.device, out=args.out, init=args.init, data=args.data,
        eval_data=args.eval_data, resume=args.resume, threads=args.threads,
        lr_scale=args.lr_scale)
    if config.out is None:
        out = Path("output") / run_name(config)
        if not config.resume:  # a new folder: never overwrite an earlier run
            base, count = out, 1
            while out.exists():
                count += 1
                out = base.with_name(f"{base.name}_{count}")
        config = replace(config, out=str(out))
    elif not config.resume and (Path(config.out) / CHECKPOINT_FILE).exists():
        raise ConfigError("out", f"{config.out} already holds a run; pass --resume to "
                                 "continue it or choose another --out")
    return config


def main(method: str, argv: list[str] | None = None) -> dict:
    """Entry point of the train_*.py scripts, also under ``torchrun``; returns train()'s dict."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        config = config_from_args(method, args)
        config.validate()
        if distributed:
            if torch.device(config.device).type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"Training {METHOD_NAMES[method]} into {config.out}", flush=True)
        return train(config, stop_after=args.stop_after)
    except ConfigError as error:
        flag = "--" + error.setting.replace("_", "-")
        parser.error(f"argument {flag}: {error}")
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()

