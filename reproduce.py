"""Reproduce the paper's experiments: one sub-command per figure, results into Results/.

    python reproduce.py fig2 [--quick]     # MSE vs bitrate, correlated and uncorrelated, D = 64
    python reproduce.py fig3 [--quick]     # MSE vs bitrate, uncorrelated, D = 64, 128, 256
    python reproduce.py fig5 [--data DIR]  # ANN search recall@T, AVQ/RVQ/PVQ (SIFT1M in DIR)
    python reproduce.py fig6a [--data DIR] # ANN search recall@T up to 10000, RVQ
    python reproduce.py all [--quick]
    python reproduce.py point --method AVQ --bits 40 --dim 128   # one MSE value of fig2/fig3

Each writes JSON files in the schema of the published ones (``"VQ Bitrate"`` or ``"T"``,
then ``"Mean (AVQ)"``, ``"Quantile Low (AVQ)"``, ``"Quantile High (AVQ)"``, ... over the
seeds: the 2.5 % and 97.5 % quantiles) and a PDF and PNG plot. Training uses the shared
loop of train_*.py (``training.train``).

Full mode (the default) uses the paper's training settings; ``--quick`` is a CI-size run
(fewer seeds and steps, k-means initialisation so that short runs converge, each RVQ/AVQ
codebook fitted to its own share of 2**18 training vectors) and
``--tiny`` a seconds-long smoke run for the tests. MSE is the squared error summed over
the D dimensions, averaged over the test vectors. Data: ``datasets.py``.

``--jobs N`` runs N training runs of fig2/fig3 at once, each in its own process with one
CPU thread; the results do not depend on N. On a GPU every process shares the card: start
NVIDIA's MPS daemon (``nvidia-cuda-mps-control -d``) first so that their small kernels
run side by side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import datasets
from ann import adc_search, encode_database, exact_search, read_vecs, recall_at
from training import TrainConfig, train

METHODS = ("AVQ", "RVQ", "PVQ")  # the published files' order
STAGES = 4
BITRATES = tuple(range(12, 41, 4))  # total bits per vector, 4 stages
MAX_TOY_BEAM = 16  # AVQ beam width of the toy experiments: min(K, 16), as in Fig 4c
FIG5_T = tuple(2**i for i in range(10))  # 1, 2, 4, ..., 512
FIG6A_T = (1, 10, 100, 1000, 10000)
QUANTILES = (0.025, 0.975)
SIFT_FILES = ("sift_learn.fvecs", "sift_base.fvecs", "sift_query.fvecs",
              "sift_groundtruth.ivecs")


@dataclass(frozen=True)
class Preset:
    """Sizes of one reproduction mode.

    seeds: runs per point. steps, batch_size, lr, init: training (TrainConfig fields).
    train_samples: size of the training set where the data are a fixed array (correlated
    data, ANN learn set). eval_samples: test vectors per MSE point. bits: total bitrates.
    ann_*: synthetic ANN corpus sizes (learn, base, queries) and the code shape.
    """

    seeds: int
    steps: int
    batch_size: int
    lr: float
    init: str
    train_samples: int
    eval_samples: int
    bits: tuple[int, ...]
    ann_sizes: tuple[int, int, int]
    ann_stages: int
    ann_bits: int
    ann_beam: int


PRESETS = {
    # the paper's example-script settings (Adam 1e-3, batch 64, 20000 steps, uniform init)
    "full": Preset(seeds=5, steps=20000, batch_size=64, lr=1e-3, init="uniform",
                   train_samples=2**18, eval_samples=2**16, bits=BITRATES,
                   ann_sizes=(100_000, 100_000, 1000), ann_stages=8, ann_bits=8, ann_beam=16),
    "quick": Preset(seeds=2, steps=250, batch_size=64, lr=1e-3, init="data-disjoint",
                    train_samples=2**18, eval_samples=2**13, bits=BITRATES,
                    ann_sizes=(20_000, 20_000, 200), ann_stages=4, ann_bits=8, ann_beam=8),
    "tiny": Preset(seeds=2, steps=4, batch_size=32, lr=1e-3, init="data",
                   train_samples=512, eval_samples=256, bits=(8, 12),
                   ann_sizes=(512, 600, 10), ann_stages=2, ann_bits=4, ann_beam=2),
}


# --- MSE vs bitrate (Figures 2 and 3) ---------------------------------------------------

def beam_width(bits_per_stage: int) -> int:
    """AVQ beam width of the toy experiments: min(K, 16)."""
    return min(2**bits_per_stage, MAX_TOY_BEAM)


def toy_data(kind: str, num: int, dim: int, seed: int) -> torch.Tensor:
    """(num, dim) vectors of "correlated" (AR(1), rho = 0.9) or "uncorrelated" data."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "correlated":
        return datasets.ar1(num, dim, generator=generator)
    return datasets.gaussian(num, dim, generator=generator)


def train_config(preset: Preset, method: str, bits: int, dim: int, seed: int,
                 **overrides) -> TrainConfig:
    """TrainConfig of one run: ``method`` with 4 stages of ``bits // 4`` bits.

    Codewords are replaced on the paper's schedule (every 1000 steps, never in the last
    2000), so the short quick and tiny runs, which start from k-means, replace none. The
    device is cuda when available.
    """
    stages = overrides.pop("stages", STAGES)
    per_stage = bits // stages
    config = TrainConfig(method=method.lower(), stages=stages, bits=per_stage,
                         beam_width=beam_width(per_stage), dim=dim, steps=preset.steps,
                         batch_size=preset.batch_size, lr=preset.lr,
                         log_every=preset.steps, save_every=preset.steps,
                         eval_samples=preset.eval_samples, seed=seed, init=preset.init)
    return replace(config, **overrides)


def mse_point(preset: Preset, kind: str, method: str, bits: int, dim: int,
              seed: int) -> float:
    """Test MSE (summed over dimensions) of one trained quantizer."""
    config = train_config(preset, method, bits, dim, seed)
    data = toy_data(kind, preset.train_samples, dim, seed)
    eval_data = toy_data(kind, preset.eval_samples, dim, 10_000 + seed)
    result = train(config, data, eval_data, progress=False)
    return result["eval_mse"] * dim


def summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, 2.5 % quantile, 97.5 % quantile) of one point's values over the seeds."""
    low, high = np.quantile(values, QUANTILES)
    return float(np.mean(values)), float(low), float(high)


Point = tuple[str, str, int, int, int]  # (kind, method, total bits, dim, seed)


def mse_points(preset: Preset, points: list[Point], jobs: int = 1) -> list[float]:
    """``mse_point`` of every point, in ``jobs`` worker processes (1: in this process).

    Each run seeds its own data and training and uses one CPU thread, so the values do not
    depend on ``jobs``. Progress is printed as points finish.
    """
    start, values = time.perf_counter(), [0.0] * len(points)

    def report(done: int, point: Point, value: float) -> None:
        kind, method, bits, dim, seed = point
        print(f"[{done}/{len(points)}] {kind} D={dim} {method} {bits:2d} bits seed {seed}: "
              f"MSE {value:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    if jobs == 1:
        for done, point in enumerate(points, 1):
            values[done - 1] = mse_point(preset, *point)
            report(done, point, values[done - 1])
        return values
    context = multiprocessing.get_context("spawn")  # fork is unsafe with CUDA and OpenMP
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(mse_point, preset, *point): i for i, point in enumerate(points)}
        for done, future in enumerate(as_completed(futures), 1):
            values[futures[future]] = future.result()
            report(done, points[futures[future]], values[futures[future]])
    return values


def mse_panels(preset: Preset, panels: dict[str, tuple[str, int, dict]],
               jobs: int = 1) -> dict[str, dict]:
    """MSE vs bitrate in the published schema, for panels {file: (kind, dim, header)}.

    Each panel: its header, "Metric", "VQ Bitrate", then per method the mean and the
    quantiles over the seeds. Every point of every panel runs in one pool of ``jobs``.
    """
    points = [(kind, method, bits, dim, seed) for kind, dim, _ in panels.values()
              for method in METHODS for bits in preset.bits for seed in range(preset.seeds)]
    values = dict(zip(points, mse_points(preset, points, jobs)))
    result = {}
    for name, (kind, dim, header) in panels.items():
        panel = {**header, "Metric": "MSE", "VQ Bitrate": [f"{b} bits" for b in preset.bits]}
        for method in METHODS:
            stats = [summary([values[kind, method, bits, dim, seed]
                              for seed in range(preset.seeds)]) for bits in preset.bits]
            panel[f"Mean ({method})"] = [s[0] for s in stats]
            panel[f"Quantile Low ({method})"] = [s[1] for s in stats]
            panel[f"Quantile High ({method})"] = [s[2] for s in stats]
        result[name] = panel
    return result


def run_fig2(preset: Preset, out: Path, jobs: int = 1) -> list[Path]:
    """Figure 2: correlated (a) and uncorrelated (b) data of dimension 64."""
    panels = mse_panels(preset, {
        "correlated_dataset_Fig2-a.json": ("correlated", 64, {"Data": "Correlated"}),
        "uncorrelated_dataset_Fig2-b.json": ("uncorrelated", 64, {"Data": "Uncorrelated"}),
    }, jobs)
    return save_panels(panels, out, "Fig2", "Data")


def run_fig3(preset: Preset, out: Path, jobs: int = 1) -> list[Path]:
    """Figure 3: uncorrelated data of dimension 64, 128 and 256."""
    panels = mse_panels(preset, {
        f"Data_Dimension_{dim}.json": ("uncorrelated", dim, {"Data Dimension": str(dim)})
        for dim in (64, 128, 256)}, jobs)
    return save_panels(panels, out, "Fig3", "Data Dimension")


# --- ANN search (Figures 5 and 6a) ------------------------------------------------------

@dataclass
class Corpus:
    """An ANN corpus: learn (training) set, database, queries and true nearest neighbours."""

    name: str
    learn: torch.Tensor  # (L, D)
    base: torch.Tensor  # (N, D)
    queries: torch.Tensor  # (Q, D)
    nearest: torch.Tensor  # (Q,) index of each query's nearest database vector


def load_sift(directory: str | Path) -> Corpus:
    """SIFT1M from ``directory`` (sift_learn/base/query.fvecs, sift_groundtruth.ivecs)."""
    directory = Path(directory)
    missing = [name for name in SIFT_FILES if not (directory / name).exists()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}")
    learn, base, queries = (read_vecs(directory / name) for name in SIFT_FILES[:3])
    truth = read_vecs(directory / SIFT_FILES[3])
    return Corpus("SIFT1M", learn, base, queries, truth[:, 0].long())


def synthetic_corpus(preset: Preset, dim: int = 128, seed: int = 0) -> Corpus:
    """AR(1) (rho = 0.9) vectors of dimension 128 with exact nearest neighbours."""
    learn_size, base_size, query_size = preset.ann_sizes
    generator = torch.Generator().manual_seed(seed)
    learn, base, queries = (datasets.ar1(n, dim, generator=generator)
                            for n in (learn_size, base_size, query_size))
    _, nearest = exact_search(base, queries, k=1)
    return Corpus("synthetic AR(1)", learn, base, queries, nearest[:, 0])


def recall_curve(preset: Preset, corpus: Corpus, method: str, seed: int,
                 ranks: tuple[int, ...]) -> list[float]:
    """Train ``method`` on the learn set, encode the base, and return recall@T for ``ranks``."""
    stages, per_stage = preset.ann_stages, preset.ann_bits
    config = train_config(preset, method, stages * per_stage, corpus.learn.shape[1], seed,
                          stages=stages, beam_width=min(2**per_stage, preset.ann_beam),
                          init="data", lr_scale="data")  # SIFT entries are 0..255
    learn = corpus.learn[:preset.train_samples] if len(corpus.learn) > preset.train_samples \
        else corpus.learn
    quantizer = train(config, learn.float(), learn[:1024].float(),  # a quick sanity MSE
                      progress=False)["quantizer"]
    database = encode_database(quantizer, corpus.base.float())
    k = min(max(ranks), len(database))
    _, found = adc_search(quantizer, database, corpus.queries.float(), k)
    return recall_at(found, corpus.nearest, [min(t, k) for t in ranks])


def recall_curves(preset: Preset, corpus: Corpus, methods: tuple[str, ...],
                  ranks: tuple[int, ...]) -> dict:
    """The published schema for recall@T: "T", then mean and quantiles per method."""
    result = {"Metric": "Recall @ T", "T": [str(t) for t in ranks]}
    for method in methods:
        start = time.perf_counter()
        runs = np.array([recall_curve(preset, corpus, method, seed, ranks)
                         for seed in range(preset.seeds)])  # (seeds, T)
        stats = [summary(runs[:, i].tolist()) for i in range(len(ranks))]
        name = f"{method} proposed"
        result[f"Mean ({name})"] = [s[0] for s in stats]
        result[f"Quantile Low ({name})"] = [s[1] for s in stats]
        result[f"Quantile High ({name})"] = [s[2] for s in stats]
        print(f"{corpus.name} {method}: recall@{ranks[0]} {stats[0][0]:.4f}, "
              f"recall@{ranks[-1]} {stats[-1][0]:.4f} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return result


def corpus_for(args: argparse.Namespace, preset: Preset) -> Corpus:
    return load_sift(args.data) if args.data else synthetic_corpus(preset)


def ann_title(preset: Preset, corpus: Corpus) -> str:
    return f"{corpus.name}, {preset.ann_stages} x {preset.ann_bits}-bit codebooks"


def run_fig5(preset: Preset, out: Path, corpus: Corpus) -> list[Path]:
    """Figure 5: recall@T, T = 1 ... 512, of AVQ, RVQ and PVQ."""
    panels = {"Recall.json": recall_curves(preset, corpus, METHODS, FIG5_T)}
    return save_panels(panels, out, "Fig5", None, title=ann_title(preset, corpus))


def run_fig6a(preset: Preset, out: Path, corpus: Corpus) -> list[Path]:
    """Figure 6a: recall@T, T = 1 ... 10000, of RVQ."""
    panels = {"Recall_RVQ_Fig6-a.json": recall_curves(preset, corpus, ("RVQ",), FIG6A_T)}
    return save_panels(panels, out, "Fig6-a", None, title=ann_title(preset, corpus))


# --- output -----------------------------------------------------------------------------

def save_panels(panels: dict[str, dict], out: Path, figure: str, label_key: str | None,
                title: str | None = None) -> list[Path]:
    """Write each panel's JSON and one PDF + PNG with a subplot per panel."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panel in panels.items():
        path = out / name
        path.write_text(json.dumps(panel, indent=1))
        written.append(path)
    written += plot_panels(panels, out / figure, label_key, title)
    return written


def plot_panels(panels: dict[str, dict], stem: Path, label_key: str | None,
                title: str | None) -> list[Path]:
    """Mean curves with quantile bands, one subplot per panel; returns the PDF and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels.values()):
        is_mse = "VQ Bitrate" in panel
        x_labels = panel["VQ Bitrate"] if is_mse else panel["T"]
        x = [int(label.split()[0]) for label in x_labels]
        for key in (k for k in panel if k.startswith("Mean (")):
            name = key[len("Mean ("):-1]
            line, = ax.plot(x, panel[key], marker="o", markersize=3, label=name)
            ax.fill_between(x, panel[f"Quantile Low ({name})"],
                            panel[f"Quantile High ({name})"], color=line.get_color(), alpha=0.2)
        if is_mse:
            ax.set(xlabel="total bitrate (bits per vector)", ylabel="MSE (sum over dimensions)",
                   yscale="log", xticks=x)
            ax.set_title(f"{label_key}: {panel[label_key]}")
        else:
            ax.set(xlabel="T", ylabel="recall@T", xscale="log", ylim=(0, 1.02))
            ax.set_title(title or "")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


# --- command line -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["fig2", "fig3", "fig5", "fig6a", "all", "point"],
                        help="experiment to run (all: every one; point: one MSE value of "
                             "fig2/fig3, chosen by --kind, --method, --bits, --dim, --seed)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="CI-size run: fewer seeds and steps, k-means initialisation")
    size.add_argument("--tiny", action="store_true",
                      help="smoke run of a few seconds (tests); the numbers mean nothing")
    parser.add_argument("--seeds", type=int, default=None, help="runs per point "
                        "(default: 5 full, 2 quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default: 20000 full, 250 quick)")
    parser.add_argument("--data", default=None,
                        help="fig5/fig6a: directory of SIFT1M (sift_learn.fvecs, "
                             "sift_base.fvecs, sift_query.fvecs, sift_groundtruth.ivecs); "
                             "default: a synthetic AR(1) corpus")
    parser.add_argument("--out", default="Results", help="output folder (default: Results)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="fig2/fig3: training runs in parallel, each in its own process "
                             "with one CPU thread (default: 1)")
    point = parser.add_argument_group("point", "one training run of fig2/fig3, printed")
    point.add_argument("--kind", choices=["correlated", "uncorrelated"], default="uncorrelated")
    point.add_argument("--method", choices=METHODS)
    point.add_argument("--bits", type=int, help=f"total bits per vector ({STAGES} stages)")
    point.add_argument("--dim", type=int, default=64, help="data dimension (default: 64)")
    point.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values that would fail late or run something other than asked."""
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.figure != "point":
        return
    if args.method is None or args.bits is None:
        parser.error("point needs --method and --bits")
    if args.bits < STAGES or args.bits % STAGES:
        parser.error(f"--bits must be a positive multiple of {STAGES}, got {args.bits}")
    if args.dim < STAGES or args.dim % STAGES:
        parser.error(f"--dim must be a positive multiple of {STAGES} (PVQ splits it), "
                     f"got {args.dim}")


def preset_from_args(args: argparse.Namespace) -> Preset:
    preset = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    changes = {name: getattr(args, name) for name in ("seeds", "steps")
               if getattr(args, name) is not None}
    return replace(preset, **changes)


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the chosen experiment(s); returns the files written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    preset = preset_from_args(args)
    if args.figure == "point":
        mse_points(preset, [(args.kind, args.method, args.bits, args.dim, args.seed)])
        return []
    out = Path(args.out)
    figures = ["fig2", "fig3", "fig5", "fig6a"] if args.figure == "all" else [args.figure]
    written: list[Path] = []
    for figure in figures:
        start = time.perf_counter()
        if figure in ("fig2", "fig3"):
            written += {"fig2": run_fig2, "fig3": run_fig3}[figure](preset, out, args.jobs)
        else:
            corpus = corpus_for(args, preset)
            written += {"fig5": run_fig5, "fig6a": run_fig6a}[figure](preset, out, corpus)
        print(f"{figure}: {time.perf_counter() - start:.1f} s", flush=True)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
