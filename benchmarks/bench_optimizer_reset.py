"""Whether replaced codewords should start with fresh optimizer state.

    python benchmarks/bench_optimizer_reset.py                       # N(0, 1), AR(1), patches
    python benchmarks/bench_optimizer_reset.py --data normal --seeds 3

When ``replace_unused_codebooks`` overwrites a dead codeword, the codeword keeps Adam's
moments of the dead entry unless the optimizer is passed (``optimizer=``), which sets them
to zero. This trains every method twice per seed with the training loop at the training
scripts' defaults (``TrainConfig.reset_optimizer_state`` False and True, all else equal)
and prints the test MSE of both and how many codewords were replaced:

- ``normal``: the scripts' own example, N(0, 1) vectors of dimension 128, the paper's
  shapes (AVQ 3 x 5 bits, RVQ/PVQ 4 x 7 bits), evaluated on 2**16 fresh vectors;
- ``ar1`` and ``patches``: 50000 training and 10000 test vectors of dimension 64 (AR(1)
  with rho = 0.9; 8x8 image patches, values 0..255, needs scikit-learn), 4 x 6 bits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq import data  # noqa: E402
from stochastic_vq.config import TrainConfig  # noqa: E402
from stochastic_vq.loop import train  # noqa: E402
from stochastic_vq_core.paper import METHODS, label  # noqa: E402

DATA = ("normal", "ar1", "patches")


def data_sets(name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(training, test) vectors of a data set; (None, None) for the N(0, 1) stream."""
    generator = torch.Generator().manual_seed(0)
    if name == "normal":
        return None, None
    if name == "ar1":
        return data.ar1(50000, 64, generator=generator), data.ar1(10000, 64, generator=generator)
    train_set, test_set = data.image_patches()
    pick = lambda x, n: x[torch.randperm(len(x), generator=generator)[:n]]
    return pick(train_set, 50000), pick(test_set, 10000)


def run(name: str, method: str, seed: int, reset: bool, vectors,
        steps: int | None = None) -> tuple[float, int]:
    """(test MSE summed over dimensions, codewords replaced) of one training run.

    ``steps``: a shorter run, replacing every ``steps // 20`` steps (for the tests).
    """
    training, test = vectors
    settings = {} if name == "normal" else {"stages": 4, "bits": 6, "data_dim": 64}
    if steps is not None:
        settings.update(steps=steps, replace_every=max(1, steps // 20), log_every=steps,
                        save_every=steps)
    config = TrainConfig(method=method, seed=seed, reset_optimizer_state=reset,
                         eval_samples=2**16, device="cpu", **settings)
    result = train(config, training, test, progress=False)
    replaced = sum(sum(r["replaced"]) for r in result["replacements"])
    return result["eval_mse"] * config.data_dim, replaced


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=2, help="runs per row (default: 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the scripts' 20000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'data':<8} {'method':<6} {'MSE, inherited state':>21} {'MSE, reset state':>17} "
          f"{'change':>8} {'replaced':>9}", flush=True)
    rows = []
    for name in args.data:
        vectors = data_sets(name)
        for method in args.methods:
            results = {reset: [run(name, method, seed, reset, vectors, args.steps)
                               for seed in range(args.seeds)] for reset in (False, True)}
            kept, reset = (statistics.fmean(mse for mse, _ in results[r]) for r in (False, True))
            replaced = sum(count for _, count in results[True])
            rows.append({"data": name, "method": method, "inherited": kept, "reset": reset,
                         "replaced": replaced})
            print(f"{name:<8} {label(method):<6} {kept:>21.4f} {reset:>17.4f} "
                  f"{100 * (reset / kept - 1):>+7.2f}% {replaced:>9}", flush=True)
    return rows


if __name__ == "__main__":
    main()
