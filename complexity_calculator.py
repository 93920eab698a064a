"""Complexity (WMOPS per quantized vector) of AVQ, RVQ and PVQ; see ``complexity.py``.

Usage:
    python complexity_calculator.py                        # D=128, 4 stages x 5 bits, beam 8
    python complexity_calculator.py --dim 64 --sweep 12:40:4 --beam-width 16
    python complexity_calculator.py --measure              # add measured encode time
    python complexity_calculator.py --paper-figures Results  # Figures 4c and 6b
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from stochastic_vq_core import __version__
from stochastic_vq_core.complexity import AVQ_Complexity, PVQ_Complexity, RVQ_Complexity
from stochastic_vq_core.paper import (
    FIG4_LARGEST_BEAM,
    FIG6B_LARGEST_BEAM,
    METHODS,
    PAPER_BITRATES,
    PAPER_STAGES,
    beam_width_for,
    bits_per_stage,
    label,
)

LABELS = tuple(label(method) for method in METHODS)  # "AVQ", "RVQ", "PVQ"
# file name -> (figure, data dimension, largest AVQ beam width; the beam is min(K, this))
PAPER_FIGURES = {
    "Complexity_Fig4-c": ("Fig. 4c", 64, FIG4_LARGEST_BEAM),
    "Complexity_Fig6-b": ("Fig. 6b", 128, FIG6B_LARGEST_BEAM),
}


def complexities(
    dim: int,
    stages: int,
    bits: int,
    beam_width: int,
    *,
    single_precision: bool = True,
    count_all_stages: bool = False,
) -> dict:
    """The three complexity models for ``stages`` codebooks of ``bits`` bits each."""
    k = 2**bits
    return {
        "AVQ": AVQ_Complexity(dim, k, stages, beam_width, single_precision),
        "RVQ": RVQ_Complexity(dim, k, stages, single_precision, count_all_stages=count_all_stages),
        "PVQ": PVQ_Complexity(dim, k, stages, single_precision, count_all_stages=count_all_stages),
    }


def measure_encode_us(
    method: str,
    dim: int,
    stages: int,
    bits: int,
    beam_width: int,
    batch: int = 8192,
    repeats: int = 3,
) -> float:
    """Median wall-clock encode time per vector (microseconds) of the library's quantizer
    on ``batch`` N(0, 1) vectors, after one warm-up call."""
    import torch  # only for --measure: the model itself needs no torch

    from stochastic_vq.methods import build_quantizer

    quantizer = build_quantizer(method.lower(), stages, bits, dim, beam_width).eval()
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0))  # (N, D)
    seconds = []
    with torch.no_grad():
        quantizer.encode(x)
        for _ in range(repeats):
            start = time.perf_counter()
            quantizer.encode(x)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / batch * 1e6


def log10_or_none(value: float) -> float | None:
    return math.log10(value) if value > 0 else None


def paper_figure(dim: int, max_beam: int, **model: bool) -> dict:
    """One complexity figure of the paper, in the schema of its published JSON files."""
    figure = {
        "Metric": "Complexity (log10 WMOPS)",
        "VQ Bitrate": [],
        "AVQ": [],
        "RVQ": [],
        "PVQ": [],
    }
    for total_bits in PAPER_BITRATES:
        bits = bits_per_stage(total_bits)
        beam = beam_width_for(bits, max_beam)
        models = complexities(dim, PAPER_STAGES, bits, beam, **model)
        figure["VQ Bitrate"].append(f"{total_bits} bits")
        for name in LABELS:
            figure[name].append(math.log10(models[name].wmops()))
    return figure


def plot_figures(figures: dict, out_dir: Path, all_stages: bool) -> None:
    """Two panels, log10 WMOPS vs bitrate; saved as complexity.pdf and complexity.png."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, (name, figure) in zip(axes, figures.items()):
        label, dim, max_beam = PAPER_FIGURES[name]
        bits = [int(rate.split()[0]) for rate in figure["VQ Bitrate"]]
        for method, marker in zip(LABELS, "o^s"):
            ax.plot(bits, figure[method], marker=marker, label=method)
        ax.set_title(f"{label}: D={dim}, M={PAPER_STAGES}, AVQ beam min(K, {max_beam})")
        ax.set_xlabel("VQ bitrate (bits)")
        ax.set_ylabel("log10 WMOPS")
        ax.set_xticks(bits)
        ax.grid(alpha=0.3)
        ax.legend()
    if all_stages:
        fig.suptitle("RVQ and PVQ: all M stages counted")
    fig.tight_layout()
    fig.savefig(out_dir / "complexity.pdf", metadata={"CreationDate": None})
    fig.savefig(out_dir / "complexity.png", dpi=150)


def write_paper_figures(out_dir: Path, single_precision: bool, all_stages: bool) -> dict:
    """Write the JSON files of Figures 4c and 6b and their plot into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = {"single_precision": single_precision, "count_all_stages": all_stages}
    figures = {
        name: paper_figure(dim, beam, **model) for name, (_, dim, beam) in PAPER_FIGURES.items()
    }
    settings = {"model": "the paper's operation counts (complexity.py)",
                "precision": "single" if single_precision else "double",
                "count_all_stages": all_stages, "library_version": __version__}
    for name, figure in figures.items():
        record = {**figure, "Settings": settings}
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_figures(figures, out_dir, all_stages)
    return figures


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def bit_range(text: str) -> list[int]:
    """``START:STOP:STEP`` (STOP included) of total bitrates."""
    try:
        start, stop, step = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP:STEP of integers, e.g. 12:40:4, got {text!r}"
        ) from None
    if start <= 0 or step <= 0 or stop < start:
        raise argparse.ArgumentTypeError(f"need 0 < START <= STOP and STEP > 0, got {text!r}")
    return list(range(start, stop + 1, step))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="WMOPS (ITU-T G.191 weighted million operations per quantized vector) "
        "of additive, residual and product VQ encoding."
    )
    parser.add_argument("--dim", type=positive_int, default=128, help="data dimension D")
    parser.add_argument("--stages", type=positive_int, default=4, help="codebooks M")
    parser.add_argument("--bits", type=positive_int, default=5, help="bits per stage b")
    parser.add_argument(
        "--beam-width",
        type=positive_int,
        default=8,
        help="AVQ beam width, at most 2**bits (capped at 2**bits in a sweep)",
    )
    parser.add_argument("--double", action="store_true", help="double precision weights")
    parser.add_argument(
        "--all-stages",
        action="store_true",
        help="RVQ/PVQ: count all M stages instead of the paper's M-1",
    )
    parser.add_argument(
        "--sweep",
        type=bit_range,
        metavar="START:STOP:STEP",
        help="total bitrates, split evenly over the stages (overrides --bits)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also time the library's encoders on this machine (needs torch)",
    )
    parser.add_argument(
        "--measure-batch",
        type=positive_int,
        default=8192,
        help="vectors per timed encode call (lower it for sweeps: AVQ at high bitrates "
        "takes milliseconds per vector)",
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed encode calls")
    parser.add_argument(
        "--paper-figures",
        type=Path,
        metavar="DIR",
        help="write Figures 4c and 6b (JSON, PDF, PNG) with the paper's "
        "D, M, bitrates and beams; --double and --all-stages apply",
    )
    return parser


def compute_rows(args: argparse.Namespace, bit_rates: list[int]) -> list[dict]:
    """One row per total bitrate: configuration and, per method, WMOPS and operations."""
    rows = []
    for total_bits in bit_rates:
        bits = total_bits // args.stages
        beam = beam_width_for(bits, args.beam_width) if args.sweep else args.beam_width
        models = complexities(
            args.dim,
            args.stages,
            bits,
            beam,
            single_precision=not args.double,
            count_all_stages=args.all_stages,
        )
        row = {
            "dim": args.dim,
            "stages": args.stages,
            "total_bits": total_bits,
            "bits_per_stage": bits,
            "entries_per_codebook": 2**bits,
            "beam_width": beam,
        }
        for name, model in models.items():
            wmops = model.wmops()
            row[name] = {
                "wmops": wmops,
                "log10_wmops": log10_or_none(wmops),
                "operations": model.operation_counts(),
            }
            if args.measure:
                row[name]["encode_us"] = measure_encode_us(
                    name, args.dim, args.stages, bits, beam, args.measure_batch, args.repeats
                )
        rows.append(row)
    return rows


def model_line(args: argparse.Namespace) -> str:
    precision = "double" if args.double else "single"
    stages = (
        "all M stages counted"
        if args.all_stages
        else "the paper's M-1 stages counted (--all-stages for all M)"
    )
    return f"ITU-T G.191 {precision} precision; RVQ/PVQ: {stages}"


def format_single(row: dict) -> str:
    lines = [
        f"D={row['dim']}, M={row['stages']} stages x {row['bits_per_stage']} bits = "
        f"{row['total_bits']} bits (K={row['entries_per_codebook']} per codebook)"
    ]
    for name in LABELS:
        label = f"{name} (beam width {row['beam_width']}):" if name == "AVQ" else f"{name}:"
        line = f"  {label:<24}{row[name]['wmops']:>12.6f} WMOPS"
        if "encode_us" in row[name]:
            line += f"   measured encode {row[name]['encode_us']:9.3f} us/vector"
        lines.append(line)
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    measured = "encode_us" in rows[0]["AVQ"]
    header = f"{'bits':>5}{'b':>4}{'K':>7}{'beam':>6}" + "".join(
        f"{name + ' WMOPS':>14}" for name in LABELS
    )
    if measured:
        header += "".join(f"{name + ' us/vec':>13}" for name in LABELS)
    lines = [f"D={rows[0]['dim']}, M={rows[0]['stages']}, AVQ beam width capped at K", header]
    for row in rows:
        line = (
            f"{row['total_bits']:>5}{row['bits_per_stage']:>4}"
            f"{row['entries_per_codebook']:>7}{row['beam_width']:>6}"
        )
        line += "".join(f"{row[name]['wmops']:>14.6f}" for name in LABELS)
        if measured:
            line += "".join(f"{row[name]['encode_us']:>13.3f}" for name in LABELS)
        lines.append(line)
    return "\n".join(lines)


def format_figures(figures: dict, out_dir: Path) -> str:
    lines = []
    for name, figure in figures.items():
        lines.append(f"{out_dir / name}.json (log10 WMOPS)")
        lines.append(f"{'bits':>9}" + "".join(f"{method:>10}" for method in LABELS))
        for i, rate in enumerate(figure["VQ Bitrate"]):
            lines.append(f"{rate:>9}" + "".join(f"{figure[m][i]:>10.4f}" for m in LABELS))
    lines.append(f"plots: {out_dir / 'complexity.pdf'}, {out_dir / 'complexity.png'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.paper_figures is not None:
        if args.measure or args.sweep:
            parser.error("--paper-figures cannot be combined with --measure or --sweep")
        figures = write_paper_figures(args.paper_figures, not args.double, args.all_stages)
        print(
            json.dumps(figures, indent=1)
            if args.json
            else f"{model_line(args)}\n{format_figures(figures, args.paper_figures)}"
        )
        return 0
    bit_rates = args.sweep or [args.bits * args.stages]
    uneven = [bits for bits in bit_rates if bits % args.stages]
    if uneven:
        parser.error(f"--sweep: total bits {uneven} not divisible by --stages {args.stages}")
    try:
        rows = compute_rows(args, bit_rates)
    except ValueError as error:
        parser.error(str(error))
    except ImportError as error:
        parser.error(f"--measure needs the library's quantizers and torch: {error}")
    if args.json:
        model = {
            "precision": "double" if args.double else "single",
            "count_all_stages": args.all_stages,
        }
        print(json.dumps({**model, "rows": rows}, indent=1))
    else:
        body = format_sweep(rows) if args.sweep else format_single(rows[0])
        print(f"WMOPS per quantized vector; {model_line(args)}\n{body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
