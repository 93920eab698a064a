"""AVQ's native beam search alone: microseconds per vector from its tables, one thread.

    python benchmarks/bench_native_search.py
    python benchmarks/bench_native_search.py --rows 4096 --rounds 11
    python benchmarks/bench_native_search.py --variants avx2 portable

For each configuration (M codebooks of K entries, beam B, D = 64) the kernel searches
``--rows`` random vectors against random codebooks, from the tables that AVQ passes it
(``base`` (N, M*K) and ``cross`` (M*K, M*K)), and the same number of copies of one vector.
The copies take the same path through the search every time, so the processor predicts
every branch and the rows of the tables they read stay in cache: the difference to
distinct vectors is what mispredicted branches and reading the tables from memory cost
together. Each row is the fastest of ``--rounds`` runs, the two inputs taking turns.
``--variants`` (x86-64) also times the kernel's other code paths on the distinct
vectors: its AVX2 code, and its portable code (plain arrays), which processors without
AVX2 run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from additive_vq import cross_table  # noqa: E402
from stochastic_vq_core import native  # noqa: E402

CONFIGURATIONS = ((4, 4, 16), (4, 8, 16), (3, 5, 8), (4, 5, 16))  # (M, bits, beam)


def tables(stages: int, bits: int, rows: int, dim: int = 64) -> tuple[torch.Tensor, ...]:
    """(base (rows, MK), base of one vector repeated (rows, MK), cross (MK, MK))."""
    generator = torch.Generator().manual_seed(0)
    codewords = torch.randn(stages * 2**bits, dim, generator=generator) / stages**0.5
    x = torch.randn(rows, dim, generator=generator)
    norms, cross = cross_table(codewords, stages)
    base = torch.addmm(norms, x, codewords.t(), alpha=-2.0)
    return base, base[:1].expand_as(base).contiguous(), cross


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048, help="vectors per run (2048)")
    parser.add_argument("--rounds", type=int, default=7, help="runs per input (7)")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(native.X86_VARIANTS),
                        help="also time these builds of the kernel (x86-64)")
    args = parser.parse_args(argv)
    if not native.available():
        sys.exit(f"the native search is {native.status()}")
    libraries = {"native": native._load(), **{name: native.variant(name) for name in args.variants}}
    torch.set_num_threads(1)
    print(f"{'configuration':<22} {'distinct vectors':>18} {'one vector':>12}  share saved"
          + "".join(f" {name + ', distinct':>20}" for name in args.variants))
    for stages, bits, beam in CONFIGURATIONS:
        base, repeated, cross = tables(stages, bits, args.rows)
        runs = {"distinct": (libraries["native"], base),
                "repeated": (libraries["native"], repeated),
                **{name: (libraries[name], base) for name in args.variants}}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.rounds):
            for name, (library, table) in runs.items():
                start = time.perf_counter()
                native._search(library, table, cross, stages, beam)
                best[name] = min(best[name], time.perf_counter() - start)
        micros = {name: seconds * 1e6 / args.rows for name, seconds in best.items()}
        distinct, cached = micros["distinct"], micros["repeated"]
        print(f"{stages} x {bits} bits, beam {beam:<3} {distinct:>15.2f} us {cached:>9.2f} us"
              f"  {1 - cached / distinct:10.0%}"
              + "".join(f" {micros[name]:>17.2f} us" for name in args.variants), flush=True)


if __name__ == "__main__":
    main()
