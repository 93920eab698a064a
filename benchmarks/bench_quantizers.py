"""Speed of the three quantizers: training steps, encode throughput, faiss and hardware limit.

    python benchmarks/bench_quantizers.py                  # CPU, every section
    python benchmarks/bench_quantizers.py --device cuda    # GPU: adds the limit and memory rows
    python benchmarks/bench_quantizers.py --quick          # smaller batches, fewer repeats

Sections (each row measured in this run, the fastest of several repeats):
  1. training step (forward + backward + fused Adam, as in the training loop) at batch 64,
     D = 128: the fastest of 20 rounds of 100 steps, the six configurations taking turns
     in every round (rows printed when all are done);
  2. encode throughput at large batch;
  3. RVQ/PVQ encode against faiss-cpu's ResidualQuantizer (beam 1, the same greedy
     search) and ProductQuantizer at the same configuration and thread count, the two
     timed in turns (skipped when faiss is not installed);
  4. AVQ's native beam search against its plain-torch reference (training steps at batch
     64, encode at large batch) and faiss-cpu's ResidualQuantizer with the same beam and
     its beam lookup tables, D = 128 and 64, the three timed in turns;
  5. on CUDA: the distance-plus-argmin pass that bounds any encoder (one matrix product
     and an argmin over the same number of codewords), AVQ's Triton search against its
     plain-torch one (where Triton is installed) and peak memory of a large encode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq.methods import build_quantizer  # noqa: E402
from stochastic_vq_core import native, triton_search  # noqa: E402
from stochastic_vq_core.paper import label  # noqa: E402


def build(method: str, stages: int, bits: int, dim: int, beam: int, device: str,
          compile_mode: str | None = None):
    """A quantizer with N(0,1)-initialised codebooks (input checks off, as in a tuned loop)."""
    module = build_quantizer(method, stages, bits, dim, beam, device=device, check_finite=False)
    with torch.no_grad():
        module.codebooks.normal_(0, 0.3 / stages**0.5)
    return torch.compile(module, mode=compile_mode) if compile_mode else module


def timed(fn, repeats: int, device: str) -> float:
    """Fastest of ``repeats`` runs of ``fn()`` in seconds, after one warm-up run.

    The minimum, as ``timeit`` reports: on a shared machine the slower runs measure the
    neighbours, not the code."""
    return timed_in_turns([fn], repeats, device)[0]


def timed_in_turns(functions, repeats: int, device: str = "cpu") -> list[float]:
    """Fastest of ``repeats`` runs of each function, the functions run in turns, in seconds.

    One warm-up run each, then ``repeats`` rounds of one run of every function. Taking
    turns spreads each function's runs over the whole measurement, so a slow minute of a
    shared machine hits all of them alike and their ratios stay fair; measured one block
    after the other, a function whose block falls in that minute would look slower."""
    for fn in functions:
        fn()
    samples = [[] for _ in functions]
    for _ in range(repeats):
        for fn, times in zip(functions, samples):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return [min(times) for times in samples]


def train_steps(method, stages, bits, beam, device, steps, compile_mode=None):
    """A function that runs ``steps`` training steps (forward, loss, backward, fused Adam,
    as the training loop does) at batch 64, D = 128."""
    module = build(method, stages, bits, 128, beam, device, compile_mode)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)  # as the loop
    data = torch.randn(steps, 64, 128, device=device)

    def run():
        for batch in data:
            out, _ = module(batch)
            loss = (batch - out).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def encode_rate(module, x: torch.Tensor, repeats: int, device: str) -> float:
    """Vectors per second of ``module.encode``."""
    module.eval()
    with torch.no_grad():
        return len(x) / timed(lambda: module.encode(x), repeats, device)


def section_train(args):
    configs = [("avq", 3, 5, 8), ("rvq", 4, 5, 1), ("pvq", 4, 5, 1), ("avq", 4, 5, 16),
               ("rvq", 4, 7, 1), ("pvq", 4, 7, 1)]
    runs = [train_steps(method, stages, bits, beam, args.device, args.steps, args.compile)
            for method, stages, bits, beam in configs]
    for (method, stages, bits, beam), seconds in zip(
            configs, timed_in_turns(runs, args.rounds, args.device)):
        report("train step, batch 64, D=128", describe(method, stages, bits, beam),
               f"{1e3 * seconds / args.steps:.3f} ms")


def section_encode(args):
    batch = 8192 if args.quick else 65536
    x = torch.randn(batch, 128, device=args.device)
    configs = [("avq", 3, 5, 8), ("avq", 4, 8, 16), ("rvq", 4, 8, 1), ("pvq", 4, 8, 1)]
    if args.device == "cuda":
        configs += [("rvq", 4, 10, 1), ("pvq", 4, 10, 1)]
    for method, stages, bits, beam in configs:
        module = build(method, stages, bits, 128, beam, args.device)
        rate = encode_rate(module, x, args.repeats, args.device)
        report(f"encode, batch {batch}, D=128", describe(method, stages, bits, beam),
               f"{rate / 1e6:.3f} M vectors/s")


def section_faiss(args):
    try:
        import faiss
    except ImportError:
        report("faiss comparison", "faiss-cpu not installed", "skipped")
        return
    faiss.omp_set_num_threads(torch.get_num_threads())
    batch, dim, stages, bits = (8192 if args.quick else 65536), 64, 4, 8
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(16384, dim, generator=generator)
    x = torch.randn(batch, dim, generator=generator)
    x_np = x.numpy()
    for method in ("rvq", "pvq"):
        module = build(method, stages, bits, dim, 1, "cpu").eval()
        module.initialize_from_data(train, kmeans_iterations=0)
        if method == "rvq":
            reference = faiss.ResidualQuantizer(dim, stages, bits)
            reference.max_beam_size = 1
            name = "faiss ResidualQuantizer, beam 1"
        else:
            reference = faiss.ProductQuantizer(dim, stages, bits)
            name = "faiss ProductQuantizer"
        reference.train(train.numpy())
        with torch.no_grad():
            ours, theirs = (batch / seconds for seconds in timed_in_turns(
                [lambda vq=module: vq.encode(x), lambda ref=reference: ref.compute_codes(x_np)],
                args.repeats))
        label = f"encode, batch {batch}, D={dim}, {torch.get_num_threads()} threads"
        report(label, describe(method, stages, bits, 1), f"{ours / 1e6:.3f} M vectors/s")
        ratio = f"(ours: {ours / theirs:.2f}x)"
        report(label, f"{name} {stages}x{bits}b", f"{theirs / 1e6:.3f} M vectors/s {ratio}")


def patched(fn, patch):
    """``fn`` run inside ``patch`` (a reusable ``unittest.mock`` patch), each time."""
    def run():
        with patch:
            return fn()
    return run


def plain_torch(fn):
    """``fn`` run with AVQ's plain-torch beam search, the reference of the native one."""
    return patched(fn, mock.patch.object(native, "available", lambda: False))


def native_search_seconds(fn) -> float:
    """Seconds that one run of ``fn`` spends in AVQ's native search."""
    spent = 0.0
    search = native._search

    def timed(*args):
        nonlocal spent
        start = time.perf_counter()
        try:
            return search(*args)
        finally:
            spent += time.perf_counter() - start

    with mock.patch.object(native, "_search", timed):
        fn()
    return spent


def section_avq(args):
    """AVQ's native search against its plain-torch reference and faiss's
    ResidualQuantizer with the same beam (its beam LUT on), at the same threads."""
    if not native.available():
        report("AVQ native search", native.status(), "skipped")
        return
    steps = args.steps
    for stages, bits, beam in ((3, 5, 8), (4, 5, 16)):
        run = train_steps("avq", stages, bits, beam, "cpu", steps)
        native_s, torch_s = timed_in_turns([run, plain_torch(run)], args.rounds)
        search_s = native_search_seconds(run)
        label = "train step, batch 64, D=128"
        report(label, describe("avq", stages, bits, beam) + ", native",
               f"{1e3 * native_s / steps:.3f} ms ({torch_s / native_s:.1f}x the torch search; "
               f"search {1e6 * search_s / steps:.0f} us of a step)")
        report(label, describe("avq", stages, bits, beam) + ", torch",
               f"{1e3 * torch_s / steps:.3f} ms")
    try:
        import faiss
    except ImportError:
        faiss = None
        report("faiss comparison", "faiss-cpu not installed", "skipped")
    batch, stages, bits, beam = (8192 if args.quick else 65536), 4, 8, 16
    generator = torch.Generator().manual_seed(0)
    for dim in (128, 64):
        train = torch.randn(16384, dim, generator=generator)
        x = torch.randn(batch, dim, generator=generator)
        module = build("avq", stages, bits, dim, beam, "cpu").eval()
        module.initialize_from_data(train)
        encode = partial(module.encode, x)
        functions = [encode, plain_torch(encode)]
        if faiss is not None:
            faiss.omp_set_num_threads(torch.get_num_threads())
            reference = faiss.ResidualQuantizer(dim, stages, bits)
            reference.max_beam_size = beam
            reference.use_beam_LUT = 1
            reference.train(train.numpy())
            functions.append(partial(reference.compute_codes, x.numpy()))
        with torch.no_grad():
            rates = [batch / seconds for seconds in timed_in_turns(functions, 3)]
        label = f"encode, batch {batch}, D={dim}, {torch.get_num_threads()} threads"
        names = [describe("avq", stages, bits, beam) + ", native",
                 describe("avq", stages, bits, beam) + ", torch",
                 f"faiss ResidualQuantizer {stages}x{bits}b, beam {beam}, LUT"]
        for name, rate in zip(names, rates):
            ratio = f" (native: {rates[0] / rate:.1f}x)" if rate != rates[0] else ""
            report(label, name, f"{rate / 1e6:.4f} M vectors/s{ratio}")


def with_triton(fn):
    """``fn`` run with AVQ's Triton search switched on (``STOCHASTIC_VQ_TRITON=1``)."""
    return patched(fn, mock.patch.dict(os.environ, {"STOCHASTIC_VQ_TRITON": "1"}))


def section_cuda(args):
    batch = 8192 if args.quick else 65536
    x = torch.randn(batch, 128, device="cuda")
    for codewords in (96, 4096):
        table = torch.randn(codewords, 128, device="cuda")
        norms = table.pow(2).sum(1)
        rate = batch / timed(lambda t=table, n=norms: torch.addmm(n, x, t.t(), alpha=-2.0)
                             .argmin(dim=1), args.repeats, "cuda")
        report(f"limit, batch {batch}, D=128", f"distance + argmin, {codewords} codewords",
               f"{rate / 1e6:.3f} M vectors/s")
    if triton_search.triton is not None:  # AVQ's Triton search against its torch one
        for stages, bits, beam in ((3, 5, 8), (4, 8, 16)):
            module = build("avq", stages, bits, 128, beam, "cuda").eval()
            encode = partial(module.encode, x)
            with torch.no_grad():
                triton_s, torch_s = timed_in_turns([with_triton(encode), encode],
                                                   args.repeats, "cuda")
            report(f"encode, batch {batch}, D=128", describe("avq", stages, bits, beam)
                   + ", Triton", f"{batch / triton_s / 1e6:.3f} M vectors/s "
                   f"({torch_s / triton_s:.1f}x the torch search)")
    module = build("avq", 4, 8, 128, 16, "cuda")
    module.eval()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        module.encode(x)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    report(f"peak memory, batch {batch}", describe("avq", 4, 8, 16), f"{peak:.2f} GiB")


def report(what: str, configuration: str, result: str) -> None:
    """Print one result row as soon as it is measured, so that a run cut short by a time
    limit still shows what it finished."""
    print(f"{what:<38} | {configuration:<38} | {result}", flush=True)


def describe(method: str, stages: int, bits: int, beam: int) -> str:
    text = f"{label(method)} {stages}x{bits}b"
    return f"{text}, beam {beam}" if method == "avq" else text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch (and faiss) threads")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="wrap the modules in torch.compile(mode=...) for the training-step "
                             "rows; reduce-overhead replays CUDA graphs on a GPU")
    parser.add_argument("--sections", default="train,encode,faiss,avq,cuda",
                        help="comma-separated subset of train, encode, faiss, avq, cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = 3 if args.quick else 7
    # training steps: rounds of 100 steps of every configuration, about 1.2 s per round on
    # a CPU, so the fastest of 20 rounds is taken over half a minute of a shared machine
    args.rounds = 3 if args.quick else 20
    args.steps = 20 if args.quick else 100
    sections = set(args.sections.split(","))

    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads")
    print(f"# torch {torch.__version__}, device: {device_name}", flush=True)
    if "train" in sections:
        section_train(args)
    if "encode" in sections:
        section_encode(args)
    if "faiss" in sections and args.device == "cpu":
        section_faiss(args)
    if "avq" in sections and args.device == "cpu":
        section_avq(args)
    if "cuda" in sections and args.device == "cuda":
        section_cuda(args)


if __name__ == "__main__":
    main()
