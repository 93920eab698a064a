"""Figure 4a/4b: a VQ-VAE compressing 32x32 images, scored by SSIM and peak SNR.

Each point trains ``vq_vae.VQVAE`` with AVQ, RVQ or PVQ in its bottleneck (M = 4
codebooks, D = 64, ``bits / 4`` bits per codebook, AVQ beam min(K, 16)) end to end with
Adam on the mean squared error, replacing unused codewords on the schedule of the
training scripts, then reconstructs the test images (eval mode: the hard-quantized
codes), rounds them to 8-bit pixels and scores each image against its original with
scikit-image's ``peak_signal_noise_ratio`` and ``structural_similarity`` (data range 255;
SSIM with its default 7x7 uniform window, averaged over the colour channels). A point's
value is the mean over the test images; the figure shows the mean and the 2.5 % and
97.5 % quantiles over seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stochastic_vq.figures import add_curve, bitrate_axis, save_panels
from stochastic_vq.images import load_cifar10, photo_tiles, to_unit
from stochastic_vq.methods import build_quantizer
from stochastic_vq.points import run_points
from stochastic_vq_core.estimators import DEFAULT_ESTIMATOR
from stochastic_vq_core.paper import (
    METHODS,
    PAPER_BITRATES,
    PAPER_STAGES,
    beam_width_for,
    bits_per_stage,
    label,
)
from stochastic_vq_core.usage import replaces_at
from vq_vae import VQVAE

LATENT_DIM = 64  # D of the paper's Figure 4 (its complexity panel 4c)
EVAL_BATCH = 256
USAGE_IMAGES = 4096  # training images whose codes measure the codebook usage
FILES = {"ssim": "SSIM_Fig4-a.json", "psnr": "PeakSNR_Fig4-b.json"}
METRIC_TITLES = {"ssim": "SSIM", "psnr": "Peak SNR"}


@dataclass(frozen=True)
class ImagePreset:
    """Sizes of one mode. seeds: runs per point; steps, batch_size, lr: Adam on the MSE;
    channels: the VQ-VAE's width; replace_every: codeword replacement period (never in
    the last 2 x replace_every steps); bits: total bits per latent vector; test_images:
    test images scored (0: all); decay: the share of the steps at the end over which the
    learning rate falls linearly to 0 (0: constant); decoder_finish: the share of the
    steps at the end in which only the decoder trains, on hard-quantized latents (0: none;
    for this library's quantizers)."""

    seeds: int
    steps: int
    batch_size: int
    lr: float
    channels: int
    replace_every: int
    bits: tuple[int, ...]
    test_images: int = 0
    decay: float = 0.0
    decoder_finish: float = 0.0


PRESETS = {
    # the paper: 15,000 batches, 10 runs per point; the VQ-VAE paper's CIFAR-10 model
    "full": ImagePreset(seeds=10, steps=15000, batch_size=128, lr=2e-4, channels=256,
                        replace_every=1000, bits=PAPER_BITRATES),
    # a CPU-sized model; the learning rate falls to 0 over the last quarter of the steps,
    # which makes a run's result far less dependent on its last few updates
    "quick": ImagePreset(seeds=2, steps=2000, batch_size=32, lr=1e-3, channels=64,
                         replace_every=100, bits=(12, 16, 20, 24), decay=0.25),
    "tiny": ImagePreset(seeds=2, steps=3, batch_size=4, lr=1e-3, channels=8,
                        replace_every=1, bits=(8, 12), test_images=16),
}


@cache
def load_images(data: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, test) uint8 images: CIFAR-10 from ``data``, else scikit-image tiles.

    Read once per process: every point of a run that process trains reuses them (callers
    index them, never write into them)."""
    return load_cifar10(data) if data is not None else photo_tiles()


def build_model(method: str, bits: int, channels: int,
                estimator: str = DEFAULT_ESTIMATOR, **options) -> VQVAE:
    """The VQ-VAE of one point: ``method`` with 4 codebooks of ``bits // 4`` bits, trained
    with ``estimator``; ``options``: the quantizer's other keyword options
    (``diveq_noise``, ``codebook_update``, ...)."""
    per_stage = bits_per_stage(bits)
    quantizer = build_quantizer(method, PAPER_STAGES, per_stage, LATENT_DIM,
                                beam_width_for(per_stage), check_finite=False,
                                estimator=estimator, **options)
    return VQVAE(quantizer, channels)


def train_vqvae(model: VQVAE, images: torch.Tensor, preset: ImagePreset,
                generator: torch.Generator,
                extra_loss: Callable[[], torch.Tensor] | None = None) -> float:
    """Train ``model`` on uint8 ``images`` with Adam on the MSE; returns ms per step.

    Batches are drawn with replacement from ``generator``. ``extra_loss()``, when given,
    is added to each step's loss (a commitment loss of another quantizer layer). The
    codebooks are replaced when the quantizer has ``replace_unused_codebooks``; with
    ``preset.decoder_finish``, the last steps train the decoder alone on its hard output.
    """
    quantizer = model.quantizer
    replaces = hasattr(quantizer, "replace_unused_codebooks")
    finishing = round(preset.decoder_finish * preset.steps) if replaces else 0
    hard_from = preset.steps - finishing  # later steps train the decoder alone
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_lr_schedule, preset))
    model.train()
    start = time.perf_counter()
    for step in range(1, preset.steps + 1):
        batch = to_unit(images[torch.randint(len(images), (preset.batch_size,),
                                             generator=generator)])  # (B, 3, 32, 32)
        if step > hard_from:
            reconstruction = _hard_reconstruction(model, batch)
        else:
            reconstruction, _ = model(batch)
        loss = F.mse_loss(reconstruction, batch)
        if extra_loss is not None:
            loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if replaces and step <= hard_from and replaces_at(step, preset.steps,
                                                          preset.replace_every):
            quantizer.replace_unused_codebooks(preset.replace_every, verbose=False,
                                               generator=generator)
    return (time.perf_counter() - start) / preset.steps * 1e3


def _hard_reconstruction(model: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Reconstruction of ``images`` from hard-quantized latents, differentiable in the
    decoder only (what the decoder sees in eval mode)."""
    with torch.no_grad():
        quantized, _ = model.quantizer(model.latents(images), train_mode=False)  # (B, h, w, D)
    return model.reconstruct(quantized)


def _lr_schedule(preset: ImagePreset, step: int) -> float:
    """Learning rate of step ``step`` (0-based) relative to ``preset.lr``: 1, then a linear
    fall to 0 over the last ``preset.decay`` share of the steps."""
    decay_steps = preset.decay * preset.steps
    return min(1.0, (preset.steps - step) / decay_steps) if decay_steps else 1.0


@torch.no_grad()
def score_images(model: VQVAE, images: torch.Tensor,
                 bottleneck: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (PSNR in dB, SSIM) of the eval-mode reconstructions of uint8 ``images``.

    ``bottleneck``, when given, replaces the quantizer: the decoder draws the images from
    ``bottleneck(latents)``, latents (B, h, w, D) (a diagnosis of what the quantizer costs).
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    model.eval()
    psnr, ssim = [], []
    for chunk in images.split(EVAL_BATCH):
        if bottleneck is None:
            reconstruction, _ = model(to_unit(chunk))
        else:
            reconstruction = model.reconstruct(bottleneck(model.latents(to_unit(chunk))))
        decoded = reconstruction.clamp(0, 1).mul(255).round().to(torch.uint8)
        for original, image in zip(_channels_last(chunk), _channels_last(decoded)):
            psnr.append(peak_signal_noise_ratio(original, image, data_range=255))
            ssim.append(structural_similarity(original, image, data_range=255,
                                              channel_axis=-1))
    return np.array(psnr), np.array(ssim)


def used_share(model: VQVAE, images: torch.Tensor) -> float:
    """Share of all codebook entries used by the codes of uint8 ``images`` (eval mode)."""
    model.eval()
    quantizer = model.quantizer
    used = torch.zeros(quantizer.num_stages, quantizer.codebook_size, dtype=torch.bool)
    for chunk in images.split(EVAL_BATCH):
        codes = model.compress(to_unit(chunk)).reshape(-1, quantizer.num_stages)  # (n, M)
        used.scatter_(1, codes.t().cpu(), True)
    return float(used.float().mean())


def training_sample(images: torch.Tensor, count: int = USAGE_IMAGES) -> torch.Tensor:
    """``count`` training images drawn without replacement (the same ones every call)."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    return images[pick]


def _channels_last(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


def image_point(preset: ImagePreset, data: str | None, method: str, bits: int, seed: int,
                estimator: str = DEFAULT_ESTIMATOR) -> tuple[float, float]:
    """(mean PSNR, mean SSIM) over the test images of one trained VQ-VAE.

    One CPU thread, so that a point's value does not depend on how many run at once.
    """
    torch.set_num_threads(1)
    train_images, test_images = load_images(data)
    if preset.test_images:
        test_images = test_images[:preset.test_images]
    torch.manual_seed(seed)
    model = build_model(method, bits, preset.channels, estimator)
    train_vqvae(model, train_images, preset, torch.Generator().manual_seed(seed))
    psnr, ssim = score_images(model, test_images)
    return float(psnr.mean()), float(ssim.mean())


def run_fig4(preset: ImagePreset, out: Path, settings: dict, data: str | None = None,
             jobs: int = 1, published: dict[str, dict] | None = None,
             estimator: str = DEFAULT_ESTIMATOR) -> list[Path]:
    """Figure 4a (SSIM) and 4b (peak SNR) against the total bits per latent vector, the
    quantizers trained with ``estimator``."""
    points = [(method, bits, seed) for method in METHODS for bits in preset.bits
              for seed in range(preset.seeds)]
    start = last = time.perf_counter()

    def report(done: int, point: tuple, value: tuple[float, float]) -> None:
        """One line per finished point: its scores, the seconds since the previous point
        finished (with jobs=1 the point's own time) and since the start."""
        nonlocal last
        now = time.perf_counter()
        method, bits, seed = point
        print(f"[{done}/{len(points)}] {label(method)} {bits:2d} bits seed {seed}: "
              f"PSNR {value[0]:.2f} dB, SSIM {value[1]:.4f} "
              f"({now - last:.0f} s, {now - start:.0f} s in all)", flush=True)
        last = now

    run = partial(image_point, preset, data, estimator=estimator)
    values = dict(zip(points, run_points(run, points, jobs, report)))
    panels = {}
    for index, metric in ((1, "ssim"), (0, "psnr")):
        panel = {"Metric": METRIC_TITLES[metric], "VQ Bitrate": bitrate_axis(preset.bits)}
        for method in METHODS:
            add_curve(panel, label(method), [[values[method, bits, seed][index]
                                              for seed in range(preset.seeds)]
                                             for bits in preset.bits])
        panels[FILES[metric]] = panel
    data_name = "CIFAR-10" if data is not None else "scikit-image photo tiles"
    return save_panels(panels, out, "Fig4", {**settings, "data": data_name},
                       title=data_name, published=published)
