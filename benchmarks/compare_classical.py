"""Compare the library's AVQ, PVQ and RVQ with faiss's classical quantizers at equal bits.

    python benchmarks/compare_classical.py --data gaussian --bits 16 24
    python benchmarks/compare_classical.py --data patches   # 8x8 image patches, 0..255
    python benchmarks/compare_classical.py --data vectors.npy

The library's quantizers are trained with the loop of the training scripts
(``stochastic_vq.loop.train``) at the scripts' defaults: 20000 steps of 64 vectors, Adam
1e-3, replacement every 1000 steps, AVQ beam 8, and on data the data-dependent
initialisation and learning-rate scale that ``init`` and ``lr_scale`` resolve to when left
unset (``--init``/``--lr-scale`` set them). faiss (optional, faiss-cpu) trains
ProductQuantizer, ResidualQuantizer with beam 1 and 8, and LocalSearchQuantizer with the
same number of codebooks and bits. One table: test MSE (summed over dimensions and per
dimension), training time, encoding throughput, and the ratio to the best faiss result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq import data  # noqa: E402
from stochastic_vq.config import INITS, LR_SCALES, TrainConfig  # noqa: E402
from stochastic_vq.loop import train  # noqa: E402
from stochastic_vq_core.paper import METHODS, beam_width_for, label  # noqa: E402

SCRIPTS = TrainConfig(device="cpu")  # the training scripts' defaults


def load_data(name: str, train_size: int, test_size: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) float32 tensors for a generator name or an (N, D) .npy file."""
    generator = torch.Generator().manual_seed(seed)
    if name == "patches":
        train_set, test_set = data.image_patches()  # split by image region
        pick = lambda x, n: x[torch.randperm(len(x), generator=generator)[:n]]
        return pick(train_set, train_size), pick(test_set, test_size)
    if name in data.GENERATORS:
        make = data.GENERATORS[name]
        return (make(train_size, 64, generator=generator),
                make(test_size, 64, generator=generator))
    array = torch.from_numpy(np.load(name).astype(np.float32))
    array = array[torch.randperm(len(array), generator=generator)]
    if len(array) <= test_size:
        raise ValueError(f"{name} has {len(array)} rows, fewer than --test-size {test_size}")
    return array[test_size:test_size + train_size], array[:test_size]


def squared_error(decoded: np.ndarray | torch.Tensor, test: torch.Tensor) -> float:
    """Mean over test vectors of the squared error summed over dimensions."""
    decoded = torch.as_tensor(decoded).detach().double()
    return float((decoded - test.double()).pow(2).sum(1).mean())


def run_library(method: str, stages: int, bits: int, train_set: torch.Tensor,
                test_set: torch.Tensor, args: argparse.Namespace) -> dict:
    """Train one of the library's quantizers with the training loop; time it; test it."""
    config = TrainConfig(method=method, stages=stages, bits=bits,
                         beam_width=beam_width_for(bits, args.beam_width),
                         data_dim=train_set.shape[1],
                         steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         lr_scale=args.lr_scale, init=args.init,
                         replace_every=args.replace_every, log_every=args.steps,
                         save_every=args.steps, eval_samples=1, seed=args.seed, device="cpu",
                         threads=args.threads)
    start = time.perf_counter()
    result = train(config, train_set, test_set[:1], progress=False)
    train_time = time.perf_counter() - start - result["eval_time"]
    quantizer = result["quantizer"]
    start = time.perf_counter()
    codes = quantizer.encode(test_set)
    encode_time = time.perf_counter() - start
    return {"method": label(method), "mse": squared_error(quantizer.decode(codes), test_set),
            "train_s": train_time, "encode_per_s": len(test_set) / encode_time,
            "resolved_defaults": result["resolved_defaults"]}


def faiss_quantizers(dim: int, stages: int, bits: int) -> dict:
    """faiss's classical quantizers with ``stages`` codebooks of ``bits`` bits each."""
    import faiss  # optional: benchmarks only

    rq1 = faiss.ResidualQuantizer(dim, stages, bits)
    rq1.max_beam_size = 1
    rq8 = faiss.ResidualQuantizer(dim, stages, bits)
    rq8.max_beam_size = 8
    return {"faiss PQ": faiss.ProductQuantizer(dim, stages, bits), "faiss RQ beam 1": rq1,
            "faiss RQ beam 8": rq8,
            "faiss LSQ": faiss.LocalSearchQuantizer(dim, stages, bits)}


def run_faiss(name: str, quantizer, train_set: torch.Tensor, test_set: torch.Tensor) -> dict:
    """Train one faiss quantizer; time it; test it."""
    start = time.perf_counter()
    quantizer.train(np.ascontiguousarray(train_set.numpy()))
    train_time = time.perf_counter() - start
    test = np.ascontiguousarray(test_set.numpy())
    start = time.perf_counter()
    codes = quantizer.compute_codes(test)
    encode_time = time.perf_counter() - start
    return {"method": name, "mse": squared_error(quantizer.decode(codes), test_set),
            "train_s": train_time, "encode_per_s": len(test_set) / encode_time}


def compare(args: argparse.Namespace) -> list[dict]:
    """All rows of the table, for every bitrate in ``args.bits``."""
    train_set, test_set = load_data(args.data, args.train_size, args.test_size, args.seed)
    dim = train_set.shape[1]
    print(f"data {args.data}: train {tuple(train_set.shape)}, test {tuple(test_set.shape)}; "
          f"library: {args.steps} steps of {args.batch_size}, AVQ beam {args.beam_width}, "
          f"init {args.init or 'default'}, lr-scale {args.lr_scale or 'default'}", flush=True)
    print(HEADER)
    rows = []
    for total_bits in args.bits:
        if total_bits % args.stages:
            raise ValueError(f"--bits {total_bits} is not a multiple of --stages {args.stages}")
        bits = total_bits // args.stages
        group = [run_library(m, args.stages, bits, train_set, test_set, args) for m in METHODS]
        if not args.no_faiss:
            try:
                classical = faiss_quantizers(dim, args.stages, bits)
            except ImportError:
                print("faiss is not installed: library results only", file=sys.stderr)
                classical = {}
            group += [run_faiss(name, q, train_set, test_set) for name, q in classical.items()]
        best_faiss = min((r["mse"] for r in group if r["method"].startswith("faiss")),
                         default=float("nan"))
        for row in group:
            row.update(bits=total_bits, mse_per_dim=row["mse"] / dim,
                       ratio_to_best_faiss=row["mse"] / best_faiss)
            rows.append(row)
            print_row(row)
    return rows


HEADER = (f"{'bits':>4}  {'method':<16} {'MSE/vector':>11} {'MSE/dim':>10} "
          f"{'/best faiss':>11} {'train s':>8} {'encode/s':>10}")


def print_row(row: dict) -> None:
    print(f"{row['bits']:>4}  {row['method']:<16} {row['mse']:>11.4f} {row['mse_per_dim']:>10.5f} "
          f"{row['ratio_to_best_faiss']:>11.4f} {row['train_s']:>8.1f} "
          f"{row['encode_per_s']:>10.0f}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="gaussian",
                        help="gaussian, ar1 (rho 0.9), patches (8x8, 0..255; needs "
                             "scikit-learn) or an (N, D) .npy file (default: gaussian)")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 24],
                        help="total bits per vector (default: 16 24)")
    parser.add_argument("--stages", type=int, default=4, help="codebooks (default: 4)")
    parser.add_argument("--train-size", type=int, default=50_000,
                        help="training vectors (default: 50000)")
    parser.add_argument("--test-size", type=int, default=10_000,
                        help="test vectors (default: 10000)")
    parser.add_argument("--steps", type=int, default=SCRIPTS.steps,
                        help=f"library training steps (default: {SCRIPTS.steps})")
    parser.add_argument("--batch-size", type=int, default=SCRIPTS.batch_size,
                        help=f"library batch size (default: {SCRIPTS.batch_size})")
    parser.add_argument("--lr", type=float, default=SCRIPTS.lr,
                        help=f"Adam learning rate (default: {SCRIPTS.lr}; relative to the "
                             "data's standard deviation with the data-dependent lr-scale)")
    parser.add_argument("--beam-width", type=int, default=SCRIPTS.beam_width,
                        help=f"AVQ beam width, at most K (default: {SCRIPTS.beam_width})")
    parser.add_argument("--replace-every", type=int, default=SCRIPTS.replace_every,
                        help="codeword replacement period in steps "
                             f"(default: {SCRIPTS.replace_every})")
    parser.add_argument("--init", choices=INITS, default=None,
                        help="codebook initialisation (default: as the training loop "
                             "resolves it on data: data)")
    parser.add_argument("--lr-scale", choices=LR_SCALES, default=None,
                        help="learning-rate scale (default: as the training loop resolves "
                             "it on data: data)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and faiss (default: 1, the training "
                             "scripts' default)")
    parser.add_argument("--no-faiss", action="store_true", help="library quantizers only")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    rows = compare(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
