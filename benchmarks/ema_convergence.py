"""How moving-average codebooks converge: the MSE of AVQ, RVQ and PVQ with
``codebook_update="ema"`` over a grid of shapes and decays, under four update rules.

    python benchmarks/ema_convergence.py --methods avq                    # the whole grid
    python benchmarks/ema_convergence.py --methods rvq --stages 4 --bits 8 --decays 0.8

Each step draws a batch of ``--batch`` vectors of N(offset, I) in ``--dim`` dimensions (the
offset is the same in every entry, so the error the codebooks start with is shared by
all vectors) and takes one training-mode forward, which moves the codewords; the table
gives the hard-quantization MSE per entry on ``--test`` fixed vectors of the same
distribution before training and after the listed steps. The rules:

- ``relaxed`` (the library's): every codebook at once, each codeword toward its codeword
  plus 1 / max(1, M (1 - decay)) of its correction (``ema_relaxation``; PVQ the whole);
- ``simultaneous``: every codebook at once, the whole correction;
- ``damped``: every codebook at once, 1 / M of the correction;
- ``sequential``: one codebook after another (iterated conditional modes), codebook s
  toward targets computed with the codewords that codebooks 0 ... s-1 took in the same
  step, the whole correction.

PVQ's codebooks do not share errors, so its rules differ by the damping only.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq.methods import build_quantizer  # noqa: E402
from stochastic_vq_core.codebook_updates import ema_update  # noqa: E402
from stochastic_vq_core.distributed import Sync  # noqa: E402
from stochastic_vq_core.quantizer import VectorQuantizer  # noqa: E402

RULES = ("relaxed", "simultaneous", "damped", "sequential")
CHECKPOINTS = (10, 30, 100, 300)  # steps after which the MSE is reported


def use_rule(vq: VectorQuantizer, rule: str) -> None:
    """Make ``vq``'s moving-average step follow ``rule`` (see the module's docstring)."""
    if rule == "simultaneous":
        vq._ema_share = lambda stages: 1.0
    elif rule == "damped":
        vq._ema_share = lambda stages: 1.0 / stages
    elif rule == "sequential":
        vq._ema_steps = lambda groups: [sequential_step(vq, x, codes) for x, codes, _ in groups]


def sequential_step(vq: VectorQuantizer, x: torch.Tensor, codes: torch.Tensor) -> None:
    """One moving-average step, codebook after codebook: codebook s's targets are the
    quantizer's own (``_codeword_targets``) for the codewords as they are once codebooks
    0 ... s-1 have moved."""
    entries, sync = vq.codebook_size, Sync(vq.process_group)
    for stage in range(codes.shape[1]):
        quantized = vq._decode(codes).detach().to(x.dtype)  # (N, D) with the moved ones
        targets = list(vq._codeword_targets(x.detach(), codes, quantized))[stage]  # (N, d)
        rows = slice(stage * entries, (stage + 1) * entries)
        sums = torch.zeros_like(vq.ema_sum[rows]).index_add_(
            0, codes[:, stage], targets.to(vq.ema_sum.dtype))  # (K, d)
        ema_update(vq._stage_table(stage), vq.ema_count[rows], vq.ema_sum[rows],
                   codes[:, stage], sums, vq.ema_decay, sync.sum)


def mse(vq: VectorQuantizer, x: torch.Tensor) -> float:
    """Mean squared error per entry of the hard quantization of x."""
    with torch.no_grad():
        return float((vq(x, train_mode=False)[0] - x).pow(2).mean())


def run(method: str, stages: int, bits: int, decay: float, rule: str, args) -> list[float]:
    """The test MSE before training and after each of ``CHECKPOINTS`` <= --steps."""
    torch.manual_seed(args.seed)
    vq = build_quantizer(method, stages, bits, args.dim, args.beam_width,
                         codebook_update="ema", ema_decay=decay)
    use_rule(vq, rule)
    data = torch.Generator().manual_seed(args.seed)
    test = torch.randn(args.test, args.dim, generator=data) + args.offset
    errors = [mse(vq, test)]
    for step in range(1, args.steps + 1):
        vq(torch.randn(args.batch, args.dim, generator=data) + args.offset, train_mode=True)
        if step in CHECKPOINTS or step == args.steps:
            errors.append(mse(vq, test))
    return errors


def fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=("avq", "rvq", "pvq"),
                        default=["avq", "rvq", "pvq"])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4, 8, 16],
                        help="M, codebooks (default: 2 4 8 16)")
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="bits per codebook, K = 2**bits (default: 1 2 4 8)")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.99])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES),
                        help="update rules to compare; the library's, relaxed, always runs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--test", type=int, default=4096, help="fixed test vectors")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--offset", type=float, default=3.0)
    parser.add_argument("--beam-width", type=int, default=4, help="AVQ's (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def summary(results: dict[tuple, list[float]], rules: list[str]) -> None:
    """Per method and rule over the grid: cells whose MSE ends above its start or not
    finite, and the medians over the cells of the MSE after 10 steps and at the end
    relative to the library's (relaxed) rule's end in the same cell."""
    print("\n| method | rule | cells | ends above start | not finite | "
          "median after 10 steps / relaxed end | median end / relaxed end |")
    print("|---" * 7 + "|")
    for method in dict.fromkeys(key[0] for key in results):
        for rule in rules:
            cells = [key for key in results if key[0] == method and key[-1] == rule]
            above = sum(not results[key][-1] <= results[key][0] for key in cells)
            infinite = sum(not math.isfinite(results[key][-1]) for key in cells)
            ratios = [[], []]  # after 10 steps, at the end; a non-finite MSE counts as inf
            for key in cells:
                base = results[(*key[:-1], "relaxed")][-1]
                for i, value in enumerate((results[key][1], results[key][-1])):
                    ratios[i].append(value / base if math.isfinite(value) else math.inf)
            means = [fmt(statistics.median(r)) for r in ratios]
            print(f"| {method} | {rule} | {len(cells)} | {above} | {infinite} | "
                  f"{means[0]} | {means[1]} |")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.rules = ["relaxed", *(r for r in args.rules if r != "relaxed")]
    torch.set_num_threads(1)
    after = [s for s in CHECKPOINTS if s < args.steps] + [args.steps]
    print(f"MSE per entry on {args.test} test vectors of N({args.offset:g}, I), D = {args.dim};"
          f" batches of {args.batch}, AVQ beam {args.beam_width}, seed {args.seed}")
    print("| method | M | K | decay | rule | start | "
          + " | ".join(f"step {s}" for s in after) + " |")
    print("|---" * (6 + len(after)) + "|")
    results = {}
    for method in args.methods:
        for stages in args.stages:
            if method == "pvq" and args.dim % stages:
                continue
            for bits in args.bits:
                for decay in args.decays:
                    for rule in args.rules:
                        errors = run(method, stages, bits, decay, rule, args)
                        results[(method, stages, bits, decay, rule)] = errors
                        print(f"| {method} | {stages} | {2 ** bits} | {decay:g} | {rule} | "
                              + " | ".join(fmt(e) for e in errors) + " |", flush=True)
    summary(results, args.rules)


if __name__ == "__main__":
    main()
