"""Overhead of the training loop (stochastic_vq.loop.train) over a bare training loop.

    python benchmarks/bench_training_loop.py [--method rvq] [--steps 3000] [--repeats 3]

Both loops train the same quantizer with the same batch size, steps, device and thread
count on N(0, 1) batches. The bare loop is what a user would write by hand; train() adds
loss accumulation, usage snapshots, codeword replacement, logging and checkpoints (into a
temporary folder, every 1000 steps as by default). Its time is log["train_time"], the
training loop without setup and evaluation. The two alternate ``--repeats`` times and
the best time of each is kept, so that load from other processes affects both alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq.config import TrainConfig  # noqa: E402
from stochastic_vq.loop import train  # noqa: E402
from stochastic_vq.methods import build_quantizer  # noqa: E402
from stochastic_vq_core.paper import METHODS  # noqa: E402


def bare_loop(config: TrainConfig) -> float:
    """Seconds of ``config.steps`` plain NSVQ training steps of a fresh quantizer."""
    torch.manual_seed(config.seed)
    quantizer = build_quantizer(config.method, config.stages, config.bits, config.data_dim,
                                config.beam_width).to(config.device)
    quantizer.check_finite = False  # as in train(): no host sync per step
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=config.lr)
    generator = torch.Generator(config.device).manual_seed(config.seed)
    start = time.perf_counter()
    for _ in range(config.steps):
        x = torch.randn(config.batch_size, config.data_dim, generator=generator,
                        device=config.device)
        quantized, _ = quantizer(x, train_mode=True)
        loss = F.mse_loss(quantized, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if quantizer.codebooks.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_loop(config: TrainConfig) -> float:
    """Seconds of train()'s training loop for ``config``, writing into a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        log = train(replace(config, out=folder), progress=False)
    return log["train_time"]


def main(argv: list[str] | None = None) -> float:
    """Print the best times of both loops and their ratio; return the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=METHODS, default="rvq")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    config = TrainConfig(method=args.method, steps=args.steps, eval_samples=1024,
                         device=args.device, threads=args.threads)
    torch.set_num_threads(args.threads)
    bare_loop(replace(config, steps=50))  # warm-up: lazy imports and allocations
    bare, loop = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(config))
        loop.append(train_loop(config))
    ratio = min(loop) / min(bare)
    print(f"{args.method} {config.stages}x{config.bits} bits, D={config.data_dim}, "
          f"batch {config.batch_size}, {args.steps} steps on {config.device}, "
          f"{args.threads} thread(s)")
    print(f"bare loop: {min(bare):.2f} s ({1000 * min(bare) / args.steps:.2f} ms/step)")
    print(f"train():   {min(loop):.2f} s ({1000 * min(loop) / args.steps:.2f} ms/step)")
    print(f"ratio train()/bare: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
