"""The same VQ-VAE with only its bottleneck swapped: this library's NSVQ quantizers against
vector-quantize-pytorch's straight-through / EMA layers, at equal bits per latent vector.

    python benchmarks/compare_in_model.py --bits 16 32 --seeds 2
    python benchmarks/compare_in_model.py --data ~/data/cifar-10-batches-py --bits 16 32
    python benchmarks/compare_in_model.py --bits 16 --steps 500 --json rows.json

Every run trains ``vq_vae.VQVAE`` with the settings of ``reproduce.py fig4 --quick`` (64
channels, batch 32, 2000 steps of Adam on the MSE for the whole model at 1e-3, falling
linearly to 0 over the last quarter; M = 4 codebooks, D = 64) and the training function
of the Figure 4 experiment; only the quantizer differs:

- this library: AVQ (beam min(K, 16)), RVQ and PVQ trained by NSVQ, unused codewords
  replaced every ``--replace-every`` steps (never in the last 2 x that many);
- vector-quantize-pytorch (optional dependency): ``ResidualVQ`` with its defaults
  (EMA codebooks, straight-through estimator, commitment loss 1.0) and with k-means
  initialisation and dead-code expiry (``kmeans_init=True, threshold_ema_dead_code=2``);
  ``VectorQuantize`` with 4 heads of separate 16-dimensional codebooks (product
  quantization of the latent vector), with its defaults and with the same two options.

The commitment loss of vector-quantize-pytorch is added to the MSE, as its README does.
Test images are scored as in Figure 4 (8-bit reconstructions, scikit-image PSNR and
SSIM). Usage is the share of all codebook entries that the codes of 4096 training images
use after training. One row per quantizer and bitrate: means over seeds, with the range
over seeds.

``--diagnose`` adds the test PSNR of each trained model with its decoder fed the
unquantized latents (what the quantization costs) and, for this library's rows, the NSVQ
latents of training (unquantized latents plus noise of the quantization error's norm).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq import image_experiment  # noqa: E402
from stochastic_vq.methods import METHODS, PAPER_STAGES  # noqa: E402
from stochastic_vq.nsvq import noise_substitution  # noqa: E402
from vq_vae import VQVAE  # noqa: E402

THEIRS = ("ResidualVQ", "ResidualVQ kmeans+expiry", "VectorQuantize heads",
          "VectorQuantize heads kmeans+expiry")
DEAD_CODE_THRESHOLD = 2  # the value of vector-quantize-pytorch's README example
SCORES = ("psnr", "ssim", "usage", "step_ms")  # of every run
DIAGNOSES = ("psnr_unquantized", "psnr_nsvq")  # of a run with --diagnose (NSVQ: ours only)


class TheirLayer(nn.Module):
    """A vector-quantize-pytorch layer behind this library's quantizer interface.

    ``forward(x) -> (quantized, None)`` for latents (..., D); the layer's commitment loss
    of the last call is kept in ``loss``; ``encode(x) -> (..., M)`` codes.
    """

    def __init__(self, name: str, bits: int, dim: int):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ, VectorQuantize  # optional

        stages, size = PAPER_STAGES, 2 ** (bits // PAPER_STAGES)
        options = ({"kmeans_init": True, "threshold_ema_dead_code": DEAD_CODE_THRESHOLD}
                   if "kmeans" in name else {})
        if name.startswith("ResidualVQ"):
            self.layer = ResidualVQ(dim=dim, num_quantizers=stages, codebook_size=size,
                                    **options)
        else:
            self.layer = VectorQuantize(dim=dim, codebook_size=size, heads=stages,
                                        separate_codebook_per_head=True,
                                        codebook_dim=dim // stages, **options)
        self.data_dim, self.num_stages, self.codebook_size = dim, stages, size
        self.bits_per_vector = bits
        self.loss = torch.zeros(())

    def forward(self, x: torch.Tensor):
        quantized, _, loss = self.layer(x.reshape(len(x), -1, self.data_dim))  # (B, n, D)
        self.loss = loss.sum()
        return quantized.reshape(x.shape), None

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, codes, _ = self.layer(x.reshape(len(x), -1, self.data_dim))  # (B, n, M)
        return codes.reshape(*x.shape[:-1], self.num_stages)


def run(library: str, quantizer: str, bits: int, seed: int, images, preset,
        diagnose: bool = False) -> dict:
    """Train one VQ-VAE and score it: a row with PSNR, SSIM, usage and ms per step
    (with ``diagnose``, also the PSNR from unquantized and from NSVQ latents)."""
    train_images, test_images = images
    torch.manual_seed(seed)
    if library == "this":
        model = image_experiment.build_model(quantizer, bits, preset.channels)
        extra_loss = None
    else:
        layer = TheirLayer(quantizer, bits, image_experiment.LATENT_DIM)
        model = VQVAE(layer, preset.channels)
        extra_loss = lambda: layer.loss
    step_ms = image_experiment.train_vqvae(model, train_images, preset,
                                           torch.Generator().manual_seed(seed), extra_loss)
    psnr, ssim = image_experiment.score_images(model, test_images)
    row = {"library": library, "quantizer": quantizer, "bits": bits, "seed": seed,
           "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
           "usage": image_experiment.used_share(model, image_experiment.training_sample(
               train_images)), "step_ms": step_ms}
    if diagnose:
        row.update(diagnosis(model, test_images, nsvq=library == "this"))
    return row


def diagnosis(model: VQVAE, test_images: torch.Tensor, nsvq: bool) -> dict:
    """Mean test PSNR with the decoder fed the unquantized latents and, when ``nsvq``,
    the NSVQ latents (noise drawn from seed 0)."""
    score = partial(image_experiment.score_images, model, test_images)
    found = {"psnr_unquantized": float(score(lambda latents: latents)[0].mean())}
    if nsvq:
        def noisy(latents: torch.Tensor) -> torch.Tensor:
            hard, _ = model.quantizer(latents, train_mode=False)
            return noise_substitution(latents, hard)

        with torch.random.fork_rng():
            torch.manual_seed(0)
            found["psnr_nsvq"] = float(score(noisy)[0].mean())
    return found


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (library, quantizer, bits): means over seeds, ranges and the runs."""
    rows = {}
    for r in runs:
        rows.setdefault((r["library"], r["quantizer"], r["bits"]), []).append(r)
    table = []
    for (library, quantizer, bits), group in rows.items():
        row = {"library": library, "quantizer": quantizer, "bits": bits}
        for key in [key for key in SCORES + DIAGNOSES if key in group[0]]:
            values = [r[key] for r in group]
            row[key] = statistics.fmean(values)
            row[f"{key}_range"] = [min(values), max(values)]
        row["seeds"] = [r["seed"] for r in group]
        table.append(row)
    return table


def print_row(row: dict) -> None:
    name = "this library" if row["library"] == "this" else row["library"]
    low, high = row["psnr_range"]
    diagnosed = "".join(f"  {row[key]:6.2f}" if key in row else f"  {'-':>6}"
                        for key in DIAGNOSES) if DIAGNOSES[0] in row else ""
    print(f"{row['bits']:>4}  {name:<23} {row['quantizer']:<34} {row['psnr']:6.2f} "
          f"({low:5.2f}-{high:5.2f})  {row['ssim']:6.4f}  {100 * row['usage']:5.1f} %  "
          f"{row['step_ms']:6.1f}{diagnosed}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    quick = image_experiment.PRESETS["quick"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 directory (python version); default: tiles of "
                             "scikit-image's photographs")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32],
                        help="total bits per latent vector, multiples of 4 (default: 16 32)")
    parser.add_argument("--steps", type=int, default=quick.steps,
                        help=f"training steps (default: {quick.steps})")
    parser.add_argument("--seeds", type=int, default=2, help="runs per row (default: 2)")
    parser.add_argument("--batch-size", type=int, default=quick.batch_size,
                        help=f"images per step (default: {quick.batch_size})")
    parser.add_argument("--channels", type=int, default=quick.channels,
                        help=f"VQ-VAE width (default: {quick.channels})")
    parser.add_argument("--lr", type=float, default=quick.lr,
                        help=f"Adam learning rate of the whole model (default: {quick.lr})")
    parser.add_argument("--replace-every", type=int, default=quick.replace_every,
                        help="this library's codeword replacement period "
                             f"(default: {quick.replace_every})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--test-images", type=int, default=0,
                        help="score only the first N test images (default: all)")
    parser.add_argument("--decoder-finish", type=float, default=0.0, metavar="SHARE",
                        help="this library's rows: train the decoder alone on hard-quantized "
                             "latents over this share of the steps at the end (default: 0)")
    parser.add_argument("--only", choices=["this", "vector-quantize-pytorch"], default=None,
                        help="run one library's rows only")
    parser.add_argument("--diagnose", action="store_true",
                        help="also score each model with its decoder fed the unquantized "
                             "latents and (this library) the NSVQ latents")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = [bits for bits in args.bits if bits < PAPER_STAGES or bits % PAPER_STAGES]
    if bad:
        parser.error(f"--bits must be positive multiples of {PAPER_STAGES}, got {bad}")
    if not 0 <= args.decoder_finish < 1:
        parser.error(f"--decoder-finish must be in [0, 1), got {args.decoder_finish}")
    torch.set_num_threads(args.threads)
    preset = replace(image_experiment.PRESETS["quick"], steps=args.steps,
                     batch_size=args.batch_size, channels=args.channels, lr=args.lr,
                     replace_every=args.replace_every, test_images=args.test_images)
    images = image_experiment.load_images(args.data)
    if args.test_images:
        images = (images[0], images[1][:args.test_images])
    ours = replace(preset, decoder_finish=args.decoder_finish)
    configurations = [("this", method) for method in METHODS]
    if args.only != "this":
        try:
            import vector_quantize_pytorch  # noqa: F401
            configurations += [("vector-quantize-pytorch", name) for name in THEIRS]
        except ImportError:
            print("vector-quantize-pytorch is not installed: this library's rows only",
                  file=sys.stderr)
    if args.only == "vector-quantize-pytorch":
        configurations = [c for c in configurations if c[0] != "this"]
    print(f"data: {args.data or 'scikit-image photo tiles'}, train {len(images[0])}, test "
          f"{len(images[1])} images; {args.steps} steps of {args.batch_size}, "
          f"{args.channels} channels, Adam {args.lr}, {args.seeds} seeds, "
          f"{torch.get_num_threads()} thread(s)"
          + (f"; decoder finish {args.decoder_finish:g}" if args.decoder_finish else ""))
    print(f"{'bits':>4}  {'library':<23} {'quantizer':<34} {'PSNR dB (range)':>20}  "
          f"{'SSIM':>6}  {'usage':>7}  {'ms/step':>6}"
          + (f"  {'unq dB':>6}  {'NSVQ dB':>6}" if args.diagnose else ""), flush=True)
    table = []
    start = time.perf_counter()
    for bits in args.bits:
        for library, quantizer in configurations:
            runs = [run(library, quantizer, bits, seed, images,
                        ours if library == "this" else preset, args.diagnose)
                    for seed in range(args.seeds)]
            row = summarise(runs)[0]
            row["runs"] = runs
            table.append(row)
            print_row(row)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
