"""One model, every bitrate: scores of a trained VQ-VAE decoded from the first n codebooks
of its quantizer, n = 1 ... M, the rows of ``compare_in_model.py --dropout``.

A quantizer here has this library's interface for fewer codebooks:
``encode(latents, num_stages=n)`` gives codes (..., n) and ``decode`` takes them back to
latents (..., D). Test images are scored as in Figure 4 (8-bit reconstructions,
scikit-image PSNR and SSIM); a row holds one mean per n and, over seeds, one range per n.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch
from torch import nn

from stochastic_vq import image_experiment
from vq_vae import VQVAE

STAGE_SCORES = ("psnr_stages", "ssim_stages")  # one value per n = 1 ... M


def first_stages(quantizer: nn.Module, num_stages: int, latents: torch.Tensor
                 ) -> torch.Tensor:
    """Latents (..., D) that the first ``num_stages`` codes of ``latents`` (..., D) decode
    to: ``decode(encode(latents, num_stages=n))``."""
    codes = quantizer.encode(latents, num_stages=num_stages)  # (..., n)
    return quantizer.decode(codes)


def score_stages(model: VQVAE, test_images: torch.Tensor) -> dict[str, list[float]]:
    """Mean test PSNR and SSIM of ``model`` decoded from its first n codebooks, for
    n = 1 ... M: ``{"psnr_stages": [...], "ssim_stages": [...]}``."""
    quantizer = model.quantizer
    found = {key: [] for key in STAGE_SCORES}
    for num_stages in range(1, quantizer.num_stages + 1):
        psnr, ssim = image_experiment.score_images(
            model, test_images, partial(first_stages, quantizer, num_stages))
        found["psnr_stages"].append(float(psnr.mean()))
        found["ssim_stages"].append(float(ssim.mean()))
    return found


def summarise_stages(runs: list[dict]) -> dict:
    """Means over the runs (seeds) per n, and ``<key>_range``: [min, max] per n."""
    row = {}
    for key in STAGE_SCORES:
        per_stage = list(zip(*(run[key] for run in runs)))  # M x (runs,)
        row[key] = [statistics.fmean(values) for values in per_stage]
        row[f"{key}_range"] = [[min(values), max(values)] for values in per_stage]
    return row


def dropout_words(options: dict) -> str:
    """How a row's quantizer dropped codebooks in training, in a few words."""
    if "quantizer_dropout" in options:  # this library: a share of the examples
        return f"{options['quantizer_dropout']:g} of examples"
    return "every batch"  # vector-quantize-pytorch: one n per batch, in every batch


def print_header(num_stages: int) -> None:
    columns = "".join(f"  {f'n = {n}':>19}" for n in range(1, num_stages + 1))
    print(f"{'bits':>4}  {'library':<23} {'quantizer':<26} {'estimator':<14} "
          f"{'dropout':<15}{columns}  {'usage':>7}  {'ms/step':>7}", flush=True)


def print_stage_row(row: dict, quantizer: str) -> None:
    """One line: bits per codebook, the arm, and the PSNR (range over seeds) per n."""
    per_codebook = row["bits"] // len(row["psnr_stages"])
    scores = "".join(f"  {mean:5.2f} ({low:5.2f}-{high:5.2f})" for mean, (low, high)
                     in zip(row["psnr_stages"], row["psnr_stages_range"]))
    print(f"{per_codebook:>4}  {row['library']:<23} {quantizer:<26} {row['estimator']:<14} "
          f"{dropout_words(row['dropout']):<15}{scores}  {100 * row['usage']:5.1f} %  "
          f"{row['step_ms']:7.1f}", flush=True)
