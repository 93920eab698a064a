"""The angle between DiVeQ's direction and the quantization error, by dimension and noise.

    python benchmarks/diveq_angle.py
    python benchmarks/diveq_angle.py --dims 2 4 8 --noises 0.3 1 --samples 1000000

DiVeQ (``stochastic_vq_core.estimators.diveq``) moves ``x`` along
``d = e + noise * ||e|| / sqrt(D) * v``, ``e`` the error, ``v ~ N(0, I)``. Writing
``v = z * e / ||e|| + w`` (``z ~ N(0, 1)``, ``w`` the part orthogonal to the error, with
``||w||² ~ χ²(D - 1)``), the angle θ between ``d`` and ``e`` has

    tan θ = (noise / sqrt(D)) * ||w|| / (1 + noise * z / sqrt(D)),

which tends to ``noise`` as D grows (θ → arctan(noise), 45° at noise 1) and spreads
around it in few dimensions. The table gives the mean and median of θ in degrees over
``--samples`` draws of the library's function, and arctan(noise) for comparison.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq_core.estimators import diveq  # noqa: E402

CHUNK = 2**20  # entries drawn at once


def angles(dim: int, noise: float, samples: int, generator: torch.Generator) -> torch.Tensor:
    """θ in degrees (samples,) between DiVeQ's direction and random errors, drawn in
    chunks of about CHUNK entries."""
    chunks = []
    for start in range(0, samples, max(1, CHUNK // dim)):
        rows = min(max(1, CHUNK // dim), samples - start)
        q = torch.randn(rows, dim, generator=generator, dtype=torch.float64)  # the errors
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        out = diveq(torch.zeros_like(q), q, noise)
        chunks.append(torch.cosine_similarity(out, q, dim=1).clamp(-1, 1))
    return torch.rad2deg(torch.arccos(torch.cat(chunks)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 64, 256, 1024])
    parser.add_argument("--noises", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--samples", type=int, default=200000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"angle between DiVeQ's direction and the error, degrees: mean (median) of "
          f"{args.samples} draws")
    print("| D | " + " | ".join(f"noise {n:g}" for n in args.noises) + " |")
    print("|---" * (1 + len(args.noises)) + "|")
    for dim in args.dims:
        cells = []
        for noise in args.noises:
            theta = angles(dim, noise, args.samples, generator)
            cells.append(f"{float(theta.mean()):.1f} ({float(theta.median()):.1f})")
        print(f"| {dim} | " + " | ".join(cells) + " |")
    print("| arctan(noise), D → ∞ | "
          + " | ".join(f"{math.degrees(math.atan(n)):.1f}" for n in args.noises) + " |")


if __name__ == "__main__":
    main()
