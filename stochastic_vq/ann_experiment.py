"""Figures 5 and 6a: approximate nearest neighbour search, recall@T of quantized databases.

A quantizer is trained on the learn set, the database is encoded, and each query's
neighbours are ranked by asymmetric distance (``stochastic_vq.ann``); recall@T is the
fraction of queries whose true nearest neighbour is among the first T. On SIFT1M when a
directory is given, else on a synthetic AR(1) corpus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stochastic_vq import data
from stochastic_vq.ann import adc_search, encode_database, exact_search, read_vecs, recall_at
from stochastic_vq.config import TrainConfig
from stochastic_vq.figures import add_curve, save_panels
from stochastic_vq.loop import train
from stochastic_vq_core.paper import METHODS, beam_width_for, label

FIG5_T = tuple(2**i for i in range(10))  # 1, 2, 4, ..., 512
FIG6A_T = (1, 10, 100, 1000, 10000)
SIFT_FILES = ("sift_learn.fvecs", "sift_base.fvecs", "sift_query.fvecs",
              "sift_groundtruth.ivecs")


@dataclass(frozen=True)
class AnnPreset:
    """Sizes of one mode. seeds: runs per curve; steps, batch_size, lr: training;
    train_samples: learn vectors used at most; sizes: synthetic corpus (learn, base,
    queries); stages, bits, beam: the code (M codebooks of ``bits`` bits, AVQ beam)."""

    seeds: int
    steps: int
    batch_size: int
    lr: float
    train_samples: int
    sizes: tuple[int, int, int]
    stages: int
    bits: int
    beam: int


PRESETS = {
    "full": AnnPreset(seeds=5, steps=20000, batch_size=64, lr=1e-3, train_samples=2**18,
                      sizes=(100_000, 100_000, 1000), stages=8, bits=8, beam=16),
    "quick": AnnPreset(seeds=2, steps=250, batch_size=64, lr=1e-3, train_samples=2**18,
                       sizes=(20_000, 20_000, 200), stages=4, bits=8, beam=8),
    "tiny": AnnPreset(seeds=2, steps=4, batch_size=32, lr=1e-3, train_samples=512,
                      sizes=(512, 600, 10), stages=2, bits=4, beam=2),
}


@dataclass
class Corpus:
    """An ANN corpus: learn (training) set, database, queries and true nearest neighbours."""

    name: str
    learn: torch.Tensor  # (L, D)
    base: torch.Tensor  # (N, D)
    queries: torch.Tensor  # (Q, D)
    nearest: torch.Tensor  # (Q,) index of each query's nearest database vector


def check_sift(directory: str | Path) -> None:
    """Raise one line unless ``directory`` holds SIFT1M's files, each well formed:
    FileNotFoundError naming the missing ones, ValueError for a malformed one."""
    directory = Path(directory)
    missing = [name for name in SIFT_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)} of the SIFT1M "
                                "data set (sift_learn/base/query.fvecs, sift_groundtruth.ivecs)")
    for name in SIFT_FILES:
        read_vecs(directory / name, count=1)


def load_sift(directory: str | Path) -> Corpus:
    """SIFT1M from ``directory`` (sift_learn/base/query.fvecs, sift_groundtruth.ivecs)."""
    directory = Path(directory)
    check_sift(directory)
    learn, base, queries = (read_vecs(directory / name) for name in SIFT_FILES[:3])
    truth = read_vecs(directory / SIFT_FILES[3])
    return Corpus("SIFT1M", learn, base, queries, truth[:, 0].long())


def synthetic_corpus(preset: AnnPreset, dim: int = 128, seed: int = 0) -> Corpus:
    """AR(1) (rho = 0.9) vectors of dimension 128 with exact nearest neighbours."""
    generator = torch.Generator().manual_seed(seed)
    learn, base, queries = (data.ar1(n, dim, generator=generator) for n in preset.sizes)
    _, nearest = exact_search(base, queries, k=1)
    return Corpus("synthetic AR(1)", learn, base, queries, nearest[:, 0])


def recall_curve(preset: AnnPreset, corpus: Corpus, method: str, seed: int,
                 ranks: tuple[int, ...]) -> list[float]:
    """Train ``method`` on the learn set, encode the base, and return recall@T for ``ranks``."""
    config = TrainConfig(method=method, stages=preset.stages, bits=preset.bits,
                         beam_width=beam_width_for(preset.bits, preset.beam),
                         data_dim=corpus.learn.shape[1], steps=preset.steps,
                         batch_size=preset.batch_size, lr=preset.lr, log_every=preset.steps,
                         save_every=preset.steps, seed=seed,
                         init="data", lr_scale="data")  # SIFT entries are 0..255
    learn = corpus.learn[:preset.train_samples].float()
    quantizer = train(config, learn, learn[:1024], progress=False)["quantizer"]
    database = encode_database(quantizer, corpus.base.float())
    k = min(max(ranks), len(database))
    _, found = adc_search(quantizer, database, corpus.queries.float(), k)
    return recall_at(found, corpus.nearest, [min(t, k) for t in ranks])


def recall_curves(preset: AnnPreset, corpus: Corpus, methods: tuple[str, ...],
                  ranks: tuple[int, ...]) -> dict:
    """The published schema for recall@T: "T", then mean and quantiles per method."""
    result = {"Metric": "Recall @ T", "T": [str(t) for t in ranks]}
    for method in methods:
        start = time.perf_counter()
        runs = np.array([recall_curve(preset, corpus, method, seed, ranks)
                         for seed in range(preset.seeds)])  # (seeds, T)
        add_curve(result, f"{label(method)} proposed", runs.T.tolist())
        means = result[f"Mean ({label(method)} proposed)"]
        print(f"{corpus.name} {label(method)}: recall@{ranks[0]} {means[0]:.4f}, "
              f"recall@{ranks[-1]} {means[-1]:.4f} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return result


def _title(preset: AnnPreset, corpus: Corpus) -> str:
    return f"{corpus.name}, {preset.stages} x {preset.bits}-bit codebooks"


def run_fig5(preset: AnnPreset, out: Path, settings: dict, corpus: Corpus,
             published: dict[str, dict] | None = None) -> list[Path]:
    """Figure 5: recall@T, T = 1 ... 512, of AVQ, RVQ and PVQ."""
    panels = {"Recall.json": recall_curves(preset, corpus, METHODS, FIG5_T)}
    return save_panels(panels, out, "Fig5", {**settings, "corpus": corpus.name},
                       title=_title(preset, corpus), published=published)


def run_fig6a(preset: AnnPreset, out: Path, settings: dict, corpus: Corpus,
              published: dict[str, dict] | None = None) -> list[Path]:
    """Figure 6a: recall@T, T = 1 ... 10000, of RVQ."""
    panels = {"Recall_RVQ_Fig6-a.json": recall_curves(preset, corpus, ("rvq",), FIG6A_T)}
    return save_panels(panels, out, "Fig6-a", {**settings, "corpus": corpus.name},
                       title=_title(preset, corpus), published=published)
