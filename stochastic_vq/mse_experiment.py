"""Figures 2 and 3: test MSE against the total bitrate on correlated and uncorrelated data.

Every point trains AVQ, RVQ or PVQ (M = 4 codebooks) with the loop of the training
scripts (``stochastic_vq.loop.train``) on a fixed training set and measures the MSE
(squared error summed over the D dimensions, averaged over the test vectors) on held-out
vectors of the same source. ``--jobs N`` runs N points at a time, each in its own
process with one CPU thread; the values do not depend on N.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from stochastic_vq import data
from stochastic_vq.config import TrainConfig
from stochastic_vq.figures import add_curve, bitrate_axis, save_panels
from stochastic_vq.loop import train
from stochastic_vq.points import run_points
from stochastic_vq_core.paper import (
    METHODS,
    PAPER_BITRATES,
    PAPER_STAGES,
    beam_width_for,
    bits_per_stage,
    label,
)


@dataclass(frozen=True)
class MsePreset:
    """Sizes of one mode. seeds: runs per point; steps, batch_size, lr, init: training;
    train_samples, eval_samples: the fixed training set and the test set; bits: the
    total bitrates."""

    seeds: int
    steps: int
    batch_size: int
    lr: float
    init: str
    train_samples: int
    eval_samples: int
    bits: tuple[int, ...]


PRESETS = {
    # the paper's example-script settings (Adam 1e-3, batch 64, 20000 steps, uniform init)
    "full": MsePreset(seeds=5, steps=20000, batch_size=64, lr=1e-3, init="uniform",
                      train_samples=2**18, eval_samples=2**16, bits=PAPER_BITRATES),
    # short runs from k-means, each RVQ/AVQ codebook fitted to its own share of the data
    "quick": MsePreset(seeds=2, steps=250, batch_size=64, lr=1e-3, init="data-disjoint",
                       train_samples=2**18, eval_samples=2**13, bits=PAPER_BITRATES),
    "tiny": MsePreset(seeds=2, steps=4, batch_size=32, lr=1e-3, init="data",
                      train_samples=512, eval_samples=256, bits=(8, 12)),
}
Point = tuple[str, str, int, int, int]  # (kind, method, total bits, dim, seed)


def toy_data(kind: str, num: int, dim: int, seed: int) -> torch.Tensor:
    """(num, dim) vectors of "correlated" (AR(1), rho = 0.9) or "uncorrelated" data."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "correlated":
        return data.ar1(num, dim, generator=generator)
    return data.gaussian(num, dim, generator=generator)


def train_config(preset: MsePreset, method: str, bits: int, dim: int,
                 seed: int) -> TrainConfig:
    """TrainConfig of one point: ``method`` with 4 codebooks of ``bits // 4`` bits.

    Codewords are replaced on the paper's schedule (every 1000 steps, never in the last
    2000), so the short quick and tiny runs, which start from k-means, replace none. The
    learning rate is absolute, as in the paper. The device is cuda when available.
    """
    per_stage = bits_per_stage(bits)
    return TrainConfig(method=method, stages=PAPER_STAGES, bits=per_stage,
                       beam_width=beam_width_for(per_stage), data_dim=dim,
                       steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                       log_every=preset.steps, save_every=preset.steps,
                       eval_samples=preset.eval_samples, seed=seed, init=preset.init,
                       lr_scale="absolute")


def mse_point(preset: MsePreset, kind: str, method: str, bits: int, dim: int,
              seed: int) -> float:
    """Test MSE (summed over dimensions) of one trained quantizer."""
    config = train_config(preset, method, bits, dim, seed)
    training_set = toy_data(kind, preset.train_samples, dim, seed)
    test_set = toy_data(kind, preset.eval_samples, dim, 10_000 + seed)
    result = train(config, training_set, test_set, progress=False)
    return result["eval_mse"] * dim


def mse_points(preset: MsePreset, points: list[Point], jobs: int = 1) -> list[float]:
    """``mse_point`` of every point, in ``jobs`` worker processes (1: in this process).

    Each run seeds its own data and training and uses one CPU thread, so the values do not
    depend on ``jobs``. Progress is printed as points finish.
    """
    start = time.perf_counter()

    def report(done: int, point: Point, value: float) -> None:
        kind, method, bits, dim, seed = point
        print(f"[{done}/{len(points)}] {kind} D={dim} {label(method)} {bits:2d} bits seed "
              f"{seed}: MSE {value:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    return run_points(partial(mse_point, preset), points, jobs, report)


def mse_panels(preset: MsePreset, panels: dict[str, tuple[str, int, dict]],
               jobs: int = 1) -> dict[str, dict]:
    """MSE vs bitrate in the published schema, for panels {file: (kind, dim, header)}.

    Every point of every panel runs in one pool of ``jobs``.
    """
    points = [(kind, method, bits, dim, seed) for kind, dim, _ in panels.values()
              for method in METHODS for bits in preset.bits for seed in range(preset.seeds)]
    values = dict(zip(points, mse_points(preset, points, jobs)))
    result = {}
    for name, (kind, dim, header) in panels.items():
        panel = {**header, "Metric": "MSE", "VQ Bitrate": bitrate_axis(preset.bits)}
        for method in METHODS:
            add_curve(panel, label(method), [[values[kind, method, bits, dim, seed]
                                              for seed in range(preset.seeds)]
                                             for bits in preset.bits])
        result[name] = panel
    return result


def run_fig2(preset: MsePreset, out: Path, settings: dict, jobs: int = 1,
             published: dict[str, dict] | None = None) -> list[Path]:
    """Figure 2: correlated (a) and uncorrelated (b) data of dimension 64."""
    panels = mse_panels(preset, {
        "correlated_dataset_Fig2-a.json": ("correlated", 64, {"Data": "Correlated"}),
        "uncorrelated_dataset_Fig2-b.json": ("uncorrelated", 64, {"Data": "Uncorrelated"}),
    }, jobs)
    return save_panels(panels, out, "Fig2", settings, label_key="Data", published=published)


def run_fig3(preset: MsePreset, out: Path, settings: dict, jobs: int = 1,
             published: dict[str, dict] | None = None) -> list[Path]:
    """Figure 3: uncorrelated data of dimension 64, 128 and 256."""
    panels = mse_panels(preset, {
        f"Data_Dimension_{dim}.json": ("uncorrelated", dim, {"Data Dimension": str(dim)})
        for dim in (64, 128, 256)}, jobs)
    return save_panels(panels, out, "Fig3", settings, label_key="Data Dimension",
                       published=published)
