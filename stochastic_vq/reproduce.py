"""Reproduce the paper's experiments: one sub-command per figure, results into output/.

    python reproduce.py fig1 [--data DIR]  # speech codec: PESQ, weighted SNR vs kbit/s
                                           # (--write-audio DIR: the decoded speech)
    python reproduce.py fig2 [--quick]     # MSE vs bitrate, correlated and uncorrelated, D = 64
    python reproduce.py fig3 [--quick]     # MSE vs bitrate, uncorrelated, D = 64, 128, 256
    python reproduce.py fig4 [--quick]     # VQ-VAE on 32x32 images: SSIM, peak SNR vs bitrate
    python reproduce.py fig5 [--data DIR]  # ANN search recall@T, AVQ/RVQ/PVQ (SIFT1M in DIR)
    python reproduce.py fig6a [--data DIR] # ANN search recall@T up to 10000, RVQ
    python reproduce.py all [--quick]
    python reproduce.py point --method avq --bits 40 --dim 128   # one MSE value of fig2/fig3

Each writes JSON files in the schema of the published ones plus ``"Settings"`` (mode,
sizes, versions), and a PDF and PNG plot, into output/reproduce/FIGURE (``--out Results``
replaces the committed results); ``--published`` draws the published curves beside ours.
Full mode (the default) uses the paper's settings, ``--quick`` a run sized for a CPU and
``--tiny`` a seconds-long smoke run for the tests. A user's mistake (an unreadable
``--data`` or ``--published`` folder, a missing optional package) is one line on stderr
and exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import NoReturn

from stochastic_vq import (
    ann_experiment,
    image_experiment,
    mse_experiment,
    speech_data,
    speech_experiment,
)
from stochastic_vq.figures import (
    PUBLISHED_RESULTS,
    PublishedError,
    published_panels,
    run_settings,
)
from stochastic_vq.images import ImageDataError
from stochastic_vq_core.estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from stochastic_vq_core.paper import METHODS, PAPER_STAGES, bits_per_stage
from stochastic_vq_core.rules import check_divisible

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6a")
EXPERIMENTS = {"fig1": speech_experiment, "fig2": mse_experiment, "fig3": mse_experiment,
               "fig4": image_experiment, "fig5": ann_experiment, "fig6a": ann_experiment}
DATA_FIGURES = ("fig1", "fig4", "fig5", "fig6a")  # the figures that read --data
ESTIMATOR_FIGURES = ("fig1", "fig4")  # the figures that take --estimator
BITS_FIGURES = ("fig2", "fig3", "fig4", "point")  # the figures that take --bits
# optional module (from the "experiments" extra) each figure needs: (module, package)
OPTIONAL_MODULES = {"fig1": (("pesq", "pesq"), ("soundfile", "soundfile"),
                             ("constriction", "constriction"), ("scipy", "scipy")),
                    "fig4": (("skimage", "scikit-image"),)}
DEFAULT_OUT = Path("output", "reproduce")  # + the figure's name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=[*FIGURES, "all", "point"],
                        help="experiment to run (all: every one; point: one MSE value of "
                             "fig2/fig3, chosen by --kind, --method, --bits, --dim, --seed)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a run sized for a CPU: fewer seeds and steps (fig4: a narrower "
                           "model, 12 ... 24 bits)")
    size.add_argument("--tiny", action="store_true",
                      help="smoke run of a few seconds (tests); the numbers mean nothing")
    parser.add_argument("--seeds", type=int, default=None, help="runs per point")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--bits", type=int, nargs="+", default=None,
                        help="fig2, fig3, fig4: only these total bitrates (bits per vector, "
                             f"multiples of {PAPER_STAGES}); point: the one bitrate")
    parser.add_argument("--data", default=None,
                        help="fig1: a LibriSpeech tree (speaker/chapter/*.flac) or any "
                             "folder of 16 kHz WAV/FLAC files, split by speaker, default: "
                             "the speech of Debian's pocketsphinx-testdata and "
                             "codec2-examples; fig4: the CIFAR-10 directory (python "
                             "version: data_batch_1 ... data_batch_5, test_batch), "
                             "default: tiles of scikit-image's photographs; fig5/fig6a: "
                             "the SIFT1M directory (sift_learn.fvecs, sift_base.fvecs, "
                             "sift_query.fvecs, sift_groundtruth.ivecs), default: a "
                             "synthetic AR(1) corpus")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {DEFAULT_OUT}/FIGURE, e.g. "
                             f"{DEFAULT_OUT / 'fig2'}; --out Results replaces the "
                             "committed results)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="fig1, fig2, fig3, fig4: training runs in parallel, each in its own "
                             "process with one CPU thread (default: 1)")
    parser.add_argument("--published", type=Path, nargs="?", const=PUBLISHED_RESULTS,
                        default=None, metavar="DIR",
                        help="draw the published curves dashed beside ours: without DIR "
                             "the values bundled with the library (from the original "
                             "repository's Results/), with DIR the published JSON files "
                             "in that folder")
    parser.add_argument("--write-audio", type=Path, default=None, metavar="DIR",
                        help="fig1: write, per test utterance, the original and every "
                             "method's decoded speech at every bitrate (first seed) as "
                             "16-bit WAV files, beside the codec's files, into DIR")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=DEFAULT_ESTIMATOR,
                        help="fig1, fig4: the quantizers' training-mode estimator, recorded "
                             "in the files' Settings (default: nsvq, the paper's)")
    point = parser.add_argument_group("point", "one training run of fig2/fig3, printed")
    point.add_argument("--kind", choices=["correlated", "uncorrelated"], default="uncorrelated")
    point.add_argument("--method", type=str.lower, choices=METHODS)
    point.add_argument("--dim", type=int, default=64, help="data dimension (default: 64)")
    point.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values that would fail late or run something other than asked."""
    for name in ("jobs", "seeds", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    try:
        for bits in args.bits or ():
            bits_per_stage(bits, "--bits")
        if args.figure == "point":
            check_divisible("--dim", args.dim, "the codebooks", PAPER_STAGES)
    except ValueError as error:
        parser.error(str(error))
    if args.bits is not None and args.figure not in (*BITS_FIGURES, "all"):
        parser.error(f"--bits applies to {', '.join(BITS_FIGURES)} only, not {args.figure}")
    if args.data is not None and args.figure not in (*DATA_FIGURES, "all"):
        parser.error(f"--data applies to {', '.join(DATA_FIGURES)} only, not {args.figure}")
    if args.write_audio is not None and args.figure not in ("fig1", "all"):
        parser.error(f"--write-audio applies to fig1 only, not {args.figure}")
    if args.estimator != DEFAULT_ESTIMATOR and args.figure not in (*ESTIMATOR_FIGURES, "all"):
        parser.error(f"--estimator applies to {', '.join(ESTIMATOR_FIGURES)} only, "
                     f"not {args.figure}")
    if args.figure != "point":
        return
    if args.method is None or args.bits is None:
        parser.error("point needs --method and --bits")
    if len(args.bits) != 1:
        parser.error(f"point takes one --bits value, got {args.bits}")


def mode(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "quick" if args.quick else "full"


def preset_for(figure: str, args: argparse.Namespace):
    """The preset of ``figure``'s experiment in the chosen mode, with the overrides."""
    preset = EXPERIMENTS[figure].PRESETS[mode(args)]
    changes = {name: getattr(args, name) for name in ("seeds", "steps")
               if getattr(args, name) is not None}
    if args.bits is not None and hasattr(preset, "bits") and figure != "point":
        changes["bits"] = tuple(args.bits)
    return replace(preset, **changes)


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit with status 2 after one line on stderr: ``PROG: error: message``."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def check_packages(parser: argparse.ArgumentParser, figures: tuple[str, ...]) -> None:
    """Fail unless the optional modules that ``figures`` import are installed."""
    for figure in figures:
        for module, package in OPTIONAL_MODULES.get(figure, ()):
            if importlib.util.find_spec(module) is None:
                fail(parser, f"{figure} needs {package} (module {module}), which is not "
                             f'installed: pip install ".[experiments]"')


def check_data(parser: argparse.ArgumentParser, args: argparse.Namespace,
               figures: tuple[str, ...]) -> None:
    """Fail unless the figures that read ``--data`` can read it, and fig1 without it its
    default speech (before any run; fig1 reads the speech it will code)."""
    if args.data is None:
        if "fig1" in figures:
            try:
                speech_data.debian_split()
            except FileNotFoundError as error:
                fail(parser, str(error))
        return
    try:
        if "fig1" in figures:
            preset = preset_for("fig1", args)
            speech_data.load_speech(args.data, preset.train_seconds, preset.test_utterances)
        if "fig4" in figures:
            image_experiment.load_images(args.data)
        if "fig5" in figures or "fig6a" in figures:
            ann_experiment.check_sift(args.data)
    except (ImageDataError, ValueError, OSError) as error:
        fail(parser, f"argument --data: {error}")


def read_published(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   figure: str) -> dict[str, dict] | None:
    """The published panels ``--published`` asks for (None without it); fails if unusable."""
    if args.published is None:
        return None
    try:
        return published_panels(figure, args.published)
    except PublishedError as error:
        fail(parser, f"argument --published: {error}")


def run_figure(figure: str, args: argparse.Namespace,
               published: dict[str, dict] | None = None) -> list[Path]:
    """Run one figure's experiment and write its files; returns them."""
    preset = preset_for(figure, args)
    settings = run_settings(mode=mode(args), **asdict(preset))
    if figure in ESTIMATOR_FIGURES:
        settings["estimator"] = args.estimator
    out = args.out if args.out is not None else DEFAULT_OUT / figure
    if figure == "fig1":
        return speech_experiment.run_fig1(preset, out, settings, args.data, args.jobs,
                                          published, args.estimator, args.write_audio)
    if figure in ("fig2", "fig3"):
        run = {"fig2": mse_experiment.run_fig2, "fig3": mse_experiment.run_fig3}[figure]
        return run(preset, out, settings, args.jobs, published)
    if figure == "fig4":
        return image_experiment.run_fig4(preset, out, settings, args.data, args.jobs,
                                         published, args.estimator)
    corpus = (ann_experiment.load_sift(args.data) if args.data
              else ann_experiment.synthetic_corpus(preset))
    run = {"fig5": ann_experiment.run_fig5, "fig6a": ann_experiment.run_fig6a}[figure]
    return run(preset, out, settings, corpus, published)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen experiment(s), print ``wrote PATH`` per file; returns 0.

    A bad command line or input exits with status 2 (SystemExit) before anything runs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.figure == "point":
        point = (args.kind, args.method, args.bits[0], args.dim, args.seed)
        mse_experiment.mse_points(preset_for("fig2", args), [point])
        return 0
    figures = FIGURES if args.figure == "all" else (args.figure,)
    published = {figure: read_published(parser, args, figure) for figure in figures}
    check_packages(parser, figures)
    check_data(parser, args, figures)
    for figure in figures:
        start = time.perf_counter()
        written = run_figure(figure, args, published[figure])
        print(f"{figure}: {time.perf_counter() - start:.1f} s", flush=True)
        for path in written:
            print(f"wrote {path}", flush=True)
    return 0
