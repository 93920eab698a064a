"""The one training loop behind train_additive_vq.py, train_product_vq.py and train_residual_vq.py.

Trains AVQ, PVQ or RVQ with NSVQ (or DiVeQ) and Adam on N(0, 1) data (the paper's example) or on
an (N, D) array, replaces unused codewords on the original schedule, logs per window,
checkpoints, resumes exactly, evaluates, and runs unchanged under ``torchrun``.

    from stochastic_vq.loop import TrainConfig, train
    result = train(TrainConfig(method="rvq", steps=2000, out=None))
    result["eval_mse"], result["quantizer"]   # the log dict (as in log.json) + the module

Determinism: every random stream is a seeded generator whose state is checkpointed —
the data of each rank, the torch RNG (NSVQ noise), the replacement choices — so on CPU a
run stopped at any point and resumed ends bitwise equal to an uninterrupted one. The
caller's global torch RNG is left as it was.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from stochastic_vq import __version__
from stochastic_vq.config import TrainConfig
from stochastic_vq.data import (
    DATA_STREAM,
    EVAL_STREAM,
    INIT_STREAM,
    NOISE_STREAM,
    REPLACEMENT_STREAM,
    as_training_array,
    batch_sampler,
    load_array,
    stream_seed,
)
from stochastic_vq.runfiles import (
    CHECKPOINT_FILE,
    LOG_FILE,
    read_checkpoint,
    write_checkpoint,
    write_json,
)
from stochastic_vq_core.quantizer import VectorQuantizer
from stochastic_vq_core.usage import replaces_at

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: without it progress is one line per log window
    tqdm = None

__all__ = ["TrainConfig", "evaluate", "train"]

EVAL_CHUNK = 2**15  # rows evaluated at once
# DDP keyword that leaves the buffers (the per-rank usage counters) alone in forward:
# forward_sync_buffers in recent torch releases, broadcast_buffers in earlier ones
_DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_OPTIONS
                   else {"broadcast_buffers": False})
INIT_SAMPLES = 2**16  # vectors per codebook given to initialize_from_data for init="data*"


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


def lr_data_scale(config: TrainConfig, data: torch.Tensor | None) -> float:
    """Factor from ``config.lr`` to Adam's step size: the data's standard deviation for
    ``lr_scale="data"`` (1 for the N(0, 1) stream), else 1."""
    if config.lr_scale == "absolute" or data is None:
        return 1.0
    return float(data.float().std()) or 1.0


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
        The log dict written to ``out/log.json`` (config with ``init`` and ``lr_scale``
        resolved, ``resolved_defaults``, versions, per-window loss, usage and
        replacements, times, ``eval_mse``) plus ``"quantizer"``: the trained bare module
        in eval mode.
    """
    config.validate()
    device = _device(config)
    data, eval_data = (_training_array(config, setting, array, device)
                       for setting, array in [("data", data), ("eval_data", eval_data)])
    _warn_about_data(config, data, eval_data)
    resolved = config.resolved(on_data=data is not None)
    defaults = {name: getattr(resolved, name) for name in ("init", "lr_scale")
                if getattr(config, name) is None}
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        rng_devices = [device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            return _train(_Run(resolved, defaults, data, device), data, eval_data, progress,
                          stop_after)
    finally:
        torch.set_num_threads(threads)


def _training_array(config: TrainConfig, setting: str, array, device: torch.device):
    """The ``data`` or ``eval_data`` array: given, loaded from config's file, or None."""
    path = getattr(config, setting)
    if array is None and path is not None:
        array = load_array(path, setting)
    if array is None:
        return None
    return as_training_array(array, setting, config.data_dim, path).to(device)


def _warn_about_data(config: TrainConfig, data, eval_data) -> None:
    """Warn when ``data`` cannot fill the codebooks or the evaluation would reuse it."""
    if data is None:
        return
    if len(data) < 2**config.bits:
        warnings.warn(f"data has {len(data)} rows, fewer than the {2**config.bits} codewords "
                      "of each codebook: codewords stay unused and the MSE means little",
                      stacklevel=3)
    if eval_data is None:
        warnings.warn("no eval_data: eval_mse will be measured on the training rows, not on "
                      "held-out data", stacklevel=3)


def _device(config: TrainConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Run:
    """The state of one training run on this rank: module, optimizer, random streams, log."""

    def __init__(self, config: TrainConfig, defaults: dict, data: torch.Tensor | None,
                 device: torch.device):
        self.config, self.device = config, device
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) \
            if dist.is_initialized() else (0, 1)
        torch.manual_seed(stream_seed(config.seed, 0, INIT_STREAM))
        self.quantizer = config.build_quantizer(device)
        if config.init != "uniform":
            disjoint = config.init == "data-disjoint"
            self.quantizer.initialize_from_data(self._init_samples(data, disjoint),
                                                disjoint=disjoint)
        self.model = self.quantizer
        # usage counters are per rank: never broadcast buffers; codebooks learnt by moving
        # averages take no gradient and synchronise themselves (process_group)
        if self.world > 1 and self.quantizer.codebooks.requires_grad:
            self.model = DistributedDataParallel(self.quantizer, **_NO_BUFFER_SYNC)
        self.optimizer = torch.optim.Adam(self.quantizer.parameters(), fused=True,
                                          lr=config.lr * lr_data_scale(config, data))
        torch.manual_seed(stream_seed(config.seed, self.rank, NOISE_STREAM))
        self.data_rng = torch.Generator(device).manual_seed(
            stream_seed(config.seed, self.rank, DATA_STREAM))
        self.replacement_rng = torch.Generator().manual_seed(
            stream_seed(config.seed, 0, REPLACEMENT_STREAM))
        self.loss_sum = torch.zeros((), device=device)  # of the open window, on device
        self.window_replaced = 0
        self.step = 0
        self.log = {"config": asdict(config), "resolved_defaults": defaults,
                    "library_version": __version__, "torch_version": str(torch.__version__),
                    "world_size": self.world, "windows": [], "replacements": [], "step": 0,
                    "train_time": 0.0, "eval_mse": None, "eval_on": None, "eval_time": 0.0,
                    "wall_time": 0.0, "finished": False}

    def _init_samples(self, data: torch.Tensor | None, disjoint: bool) -> torch.Tensor:
        """Vectors for ``initialize_from_data`` (drawn from the torch RNG, seeded for init)."""
        count = INIT_SAMPLES * (self.config.stages if disjoint else 1)
        if data is None:
            return torch.randn(count, self.config.data_dim, device=self.device)
        return data[torch.randperm(len(data), device=self.device)[:count]]

    def train_step(self, x: torch.Tensor) -> None:
        """One training-mode forward, backward and Adam step; the loss stays on the device."""
        quantized, _ = self.model(x, train_mode=True)
        loss = F.mse_loss(quantized, x)
        if loss.requires_grad:  # not with codebook_update="ema": the forward updated them
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.loss_sum += loss.detach()

    def replace(self) -> None:
        """Replace unused codewords (all ranks, same step) and log how many."""
        optimizer = self.optimizer if self.config.reset_optimizer_state else None
        replaced = self.quantizer.replace_unused_codebooks(
            self.config.replace_every, verbose=False, generator=self.replacement_rng,
            optimizer=optimizer)
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
        if self.rank == 0:
            write_checkpoint(path, {
                "vector_quantizer": self.quantizer.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "config": asdict(self.config), "world_size": self.world,
                "window_replaced": self.window_replaced, "log": self.log,
                "rank_states": states})

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``; ConfigError if it is another run's."""
        checkpoint = read_checkpoint(path, self.config, self.world)
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


def _train(run: _Run, data, eval_data, progress: bool, stop_after: int | None) -> dict:
    config = run.config
    out = Path(config.out) if config.out is not None else None
    writer = run.rank == 0 and out is not None
    if config.resume:
        run.load(out / CHECKPOINT_FILE)
        if progress and run.rank == 0:
            print(f"Resuming from step {run.step}", flush=True)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    report = _Progress(config, run.step, progress and run.rank == 0)
    next_batch = batch_sampler(data, config.batch_size, config.data_dim, run.data_rng)
    started = time.perf_counter() - run.log["train_time"]
    run.quantizer.train()
    run.quantizer.check_finite = False  # data are checked once above: no host sync per step
    try:
        while run.step < config.steps and run.step != stop_after:
            run.train_step(next_batch())
            run.step += 1
            closing = run.step % config.log_every == 0 or run.step == config.steps
            usage = run.usage_snapshot() if closing else None  # before replacement resets it
            if replaces_at(run.step, config.steps, config.replace_every):
                run.replace()
            run.log["step"], run.log["train_time"] = run.step, time.perf_counter() - started
            if closing:
                report.window(run.close_window(usage))
                if writer:
                    write_json(out / LOG_FILE, run.log)
            if out is not None and (run.step % config.save_every == 0
                                    or run.step == config.steps):
                run.save(out / CHECKPOINT_FILE)
            report.step()
    finally:
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


def _eval_source(config: TrainConfig, data, eval_data, device):
    """(samples for ``evaluate``, count, description) of the final evaluation set."""
    chosen = eval_data if eval_data is not None else data
    if chosen is not None:
        source = ("eval_data" if eval_data is not None
                  else "the training data, not held out (no eval_data)")
        return chosen, None, f"{len(chosen)} rows of {source}"
    generator = torch.Generator(device).manual_seed(stream_seed(config.seed, 0, EVAL_STREAM))
    sampler = lambda n: torch.randn(n, config.data_dim, generator=generator, device=device)
    return sampler, config.eval_samples, f"{config.eval_samples} fresh N(0, 1) samples"


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
