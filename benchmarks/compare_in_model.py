"""The same VQ-VAE with only its bottleneck swapped: this library's quantizers against every
peer a user could pick, at equal bits per latent vector.

    python benchmarks/compare_in_model.py --bits 16 32 --seeds 2 --jobs 2
    python benchmarks/compare_in_model.py --data ~/data/cifar-10-batches-py --bits 16 32
    python benchmarks/compare_in_model.py --bits 16 --only diveq --json rows.json
    python benchmarks/compare_in_model.py --bits 16 --arms rvq ResidualVQ --estimator diveq
    python benchmarks/compare_in_model.py --dropout 1 --ema-decay 0.99 --arms "rvq ema" ResidualVQ
    python benchmarks/compare_in_model.py --list

Every run trains ``vq_vae.VQVAE`` with the settings of ``reproduce.py fig4 --quick`` (64
channels, batch 32, 2000 steps of Adam on the MSE for the whole model at 1e-3, falling
linearly to 0 over the last quarter; M = 4 codebooks of ``bits / 4`` bits, D = 64) and the
training function of the Figure 4 experiment; only the quantizer differs. The arms
(``ARMS``, ``--list``), each with its library's recommended settings:

- this library: AVQ (beam min(K, 16)), RVQ and PVQ, each trained by NSVQ, by DiVeQ, and
  by DiVeQ with moving-average codebooks ("ema" arms: noise 0.3, decay 0.9 for PVQ and
  0.8 for the others, or ``--ema-decay``), unused codewords replaced every
  ``--replace-every`` steps (never in the last 2 x that);
- vector-quantize-pytorch 1.32 (optional): ``ResidualVQ``, and ``VectorQuantize`` with 4
  heads of separate 16-dimensional codebooks (product quantization of the latent vector),
  each (a) with its defaults: EMA codebooks, gradients through the rotation trick (not a
  plain straight-through estimator), commitment loss 1.0; (b) with k-means initialisation
  and dead-code expiry; (c) with DiVeQ (``ResidualVQ(diveq=True)``,
  ``VectorQuantize(directional_reparam=True)``, which requires dead-code expiry);
- diveq 0.1.3 (optional, the DiVeQ authors'): ``ResidualDIVEQ``, ``ProductDIVEQ`` and the
  space-filling ``ResidualSFDIVEQ``, ``ProductSFDIVEQ``, with the package's defaults (its
  own codeword replacement every 100 steps). SF-DiVeQ's inference maps each stage to the
  nearest point of the polyline through its codewords, a continuous position: its rows
  are labelled "continuous codes, not N bits";
- nsvq 0.1.0 (optional, the NSVQ authors'): ``ResidualNSVQ`` and ``ProductNSVQ``, the same
  method as ours, with the package's defaults (its own replacement every 100 steps).

The auxiliary (commitment) loss of vector-quantize-pytorch is added to the MSE, as its
README does; the authors' packages have none. Test images are scored as in Figure 4
(8-bit reconstructions, scikit-image PSNR and SSIM). Usage is the share of all codebook
entries that the codes of 4096 training images use after training. One row per arm and
bitrate: means over seeds, with the range over seeds. ``--jobs N`` trains N runs at once,
each in its own process with one CPU thread; the rows do not depend on N.

``--time-bottleneck`` trains nothing: it times the bottleneck alone, a training-mode
forward and backward of each arm's quantizer on a batch of the model's latents
(``--batch-size`` x 8 x 8 x D), one thread, the arms taking turns in every round; a row is
the fastest round's median step, with its ratio to the fastest other library's arm.

``--diagnose`` adds the test PSNR of each trained model with its decoder fed the
unquantized latents (what the quantization costs) and, for this library's rows, the
latents its quantizer gives in training mode (NSVQ's or DiVeQ's output).

``--dropout SHARE`` is the scalable mode, one model for every bitrate: each arm that can
decode from its first n codebooks trains with quantizer dropout and is scored from its
first n = 1 ... M codebooks (n x ``bits / 4`` bits per latent vector;
``scalable_scores.py``). This library's AVQ and RVQ drop on SHARE of the training
examples, each example its own n (``quantizer_dropout=SHARE``; 0 trains the fixed-rate
model, scored the same way) and are scored from ``encode(x, num_stages=n)``;
vector-quantize-pytorch's ``ResidualVQ`` arms take ``quantize_dropout=True``, one n for
the whole batch in every training batch (it has no share), and are scored from
``get_output_from_indices`` of their first n codes. n is uniform in
[``--dropout-min-stages``, M] on both sides.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scalable_scores import (  # noqa: E402
    STAGE_SCORES,
    print_header,
    print_stage_row,
    score_stages,
    summarise_stages,
)
from stochastic_vq import image_experiment  # noqa: E402
from stochastic_vq.points import run_points  # noqa: E402
from stochastic_vq_core.codebook_updates import EMA_DECAY  # noqa: E402
from stochastic_vq_core.estimators import DIVEQ_NOISE, ESTIMATORS  # noqa: E402
from stochastic_vq_core.paper import METHODS, PAPER_STAGES, label  # noqa: E402
from vq_vae import VQVAE  # noqa: E402

VQP = "vector-quantize-pytorch"
LIBRARIES = ("this", VQP, "diveq", "nsvq")
MODULES = {VQP: "vector_quantize_pytorch", "diveq": "diveq", "nsvq": "nsvq"}  # to import
DEAD_CODE_THRESHOLD = 2  # the value of vector-quantize-pytorch's README examples
EXPIRY = {"kmeans_init": True, "threshold_ema_dead_code": DEAD_CODE_THRESHOLD}
EMA_DIVEQ_NOISE = 0.3  # DiVeQ's relative noise beside moving-average codebooks
PVQ_EMA_DECAY = 0.9  # PVQ's moving averages; AVQ's and RVQ's take the default EMA_DECAY
SCORES = ("psnr", "ssim", "usage", "step_ms")  # of every run
DIAGNOSES = ("psnr_unquantized", "psnr_train_mode")  # of a run with --diagnose (2nd: ours)


class PeerQuantizer(nn.Module):
    """Another library's layer behind this library's quantizer interface.

    ``forward(x) -> (quantized, None)`` for latents (..., D): the layer's training output in
    training mode; in eval mode ``decode(encode(x))``, what the codes decode to, so that
    every row scores its codes and nothing else (the layer's own eval output need not be:
    ``ResidualVQ(diveq=True)`` of vector-quantize-pytorch 1.32 applies its noisy DiVeQ
    output in eval mode too). ``encode(x) -> (..., M)`` int64 codes, ``decode`` back;
    ``loss``: the auxiliary loss of the last training call (0 when there is none).
    ``bits`` per latent vector over M = 4 codebooks of ``2 ** (bits / 4)`` entries.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.data_dim, self.num_stages = image_experiment.LATENT_DIM, PAPER_STAGES
        self.codebook_size = 2 ** (bits // PAPER_STAGES)
        self.bits_per_vector = bits
        self.loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self.training:
            return self._training_output(x), None
        return self._eval_output(x), None

    def _eval_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class VQPytorchLayer(PeerQuantizer):
    """vector-quantize-pytorch's ``ResidualVQ`` (``kind="ResidualVQ"``) or ``VectorQuantize``
    with M heads of separate D/M-dimensional codebooks (``kind="VectorQuantize"``), built
    with the keyword arguments ``options`` and ``extra``."""

    def __init__(self, kind: str, options: dict, bits: int, **extra):
        super().__init__(bits)
        from vector_quantize_pytorch import ResidualVQ, VectorQuantize  # optional

        options = {**options, **extra}

        if kind == "ResidualVQ":
            self.layer = ResidualVQ(dim=self.data_dim, num_quantizers=self.num_stages,
                                    codebook_size=self.codebook_size, **options)
        else:
            self.layer = VectorQuantize(dim=self.data_dim, codebook_size=self.codebook_size,
                                        heads=self.num_stages, separate_codebook_per_head=True,
                                        codebook_dim=self.data_dim // self.num_stages,
                                        **options)

    def _training_output(self, x: torch.Tensor) -> torch.Tensor:
        quantized, _, loss = self.layer(x.reshape(len(x), -1, self.data_dim))  # (B, n, D)
        self.loss = loss.sum()
        return quantized.reshape(x.shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, num_stages: int | None = None) -> torch.Tensor:
        """Codes (..., M) of latents (..., D); with ``num_stages`` n, their first n
        (..., n), what a ``ResidualVQ`` trained with ``quantize_dropout`` sends at a lower
        bitrate (its search is greedy, stage by stage, so they are the n-stage codes). Call
        it in eval mode (in training mode the layer would also update its codebooks)."""
        _, codes, _ = self.layer(x.reshape(len(x), -1, self.data_dim))  # (B, L, M)
        return codes.reshape(*x.shape[:-1], self.num_stages)[..., :num_stages]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents (..., D) that codes (..., n) stand for, n <= M (n < M: the first n
        stages' codewords, for a ``ResidualVQ`` with ``quantize_dropout``)."""
        flat = codes.reshape(len(codes), -1, codes.shape[-1])  # (B, L, n)
        return self.layer.get_output_from_indices(flat).reshape(*codes.shape[:-1],
                                                                self.data_dim)


class AuthorsLayer(PeerQuantizer):
    """A multi-codebook class of the authors' ``diveq`` or ``nsvq`` package (``module``,
    ``name``), built with its defaults and ``options``. Training calls its ``forward``
    (which also replaces unused codewords on its own schedule). Its codebooks are summed
    (``Residual*`` classes) or concatenated (``Product*``) to decode. The SF-DiVeQ classes'
    hard output is a continuous point between two codewords per stage, so their eval
    output is the class's ``inference`` (the rows say that the codes are not ``bits``
    bits); their ``encode`` gives the nearest codeword of each stage (what usage counts).
    """

    def __init__(self, module: str, name: str, bits: int, **options):
        super().__init__(bits)
        layer_class = getattr(importlib.import_module(module), name)
        self.layer = layer_class(self.codebook_size, self.data_dim, self.num_stages,
                                 verbose=False, **options)
        self.continuous = "SF" in name
        self.product = name.startswith("Product")

    def _training_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.reshape(-1, self.data_dim))[0].reshape(x.shape)

    def _eval_output(self, x: torch.Tensor) -> torch.Tensor:
        if self.continuous:
            return self.layer.inference(x.reshape(-1, self.data_dim))[0].reshape(x.shape)
        return super()._eval_output(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., M) of latents (..., D): the nearest codeword of each stage."""
        _, codes, _ = self.layer.inference(x.reshape(-1, self.data_dim))  # M x (N,)
        return torch.stack(list(codes), dim=-1).reshape(*x.shape[:-1], self.num_stages)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents (..., D) that codes (..., M) stand for: the sum (residual classes) or
        the concatenation (product classes) of the chosen codewords."""
        codebooks = self.layer.codebook  # (M, K, d)
        chosen = [codebooks[stage][codes[..., stage]] for stage in range(self.num_stages)]
        return torch.cat(chosen, dim=-1) if self.product else sum(chosen)


@dataclass(frozen=True)
class Arm:
    """One bottleneck of the comparison.

    library: one of LIBRARIES; quantizer: the class (this library: the method key);
    estimator: how gradients pass the quantizer in training; settings: in words;
    build(bits, channels, **options): the untrained VQ-VAE, ``options`` added to the
    quantizer's; continuous: whether the codes include a continuous position, so that
    they are not ``bits`` bits; dropout(share, min_stages): the quantizer's options for
    quantizer dropout (``--dropout``), None where it cannot decode from fewer codebooks.
    """

    library: str
    quantizer: str
    estimator: str
    settings: str
    build: Callable[..., VQVAE]
    continuous: bool = False
    dropout: Callable[[float, int], dict] | None = None

    @property
    def name(self) -> str:
        """``library quantizer estimator``, what ``--arms`` matches."""
        return f"{self.library} {self.quantizer} {self.estimator}"

    def rate(self, bits: int) -> str:
        """The rate the codes really spend, in words."""
        return f"continuous codes, not {bits} bits" if self.continuous else f"{bits} bits"


def _peer_model(quantizer: Callable[..., nn.Module], bits: int, channels: int,
                **options) -> VQVAE:
    """The VQ-VAE with ``quantizer(bits, **options)`` in its bottleneck."""
    return VQVAE(quantizer(bits, **options), channels)


def _our_dropout(share: float, min_stages: int) -> dict:
    """This library's quantizer dropout: ``share`` of the training examples, drawn per
    example, use their first n codebooks, n uniform in [min_stages, M]."""
    return {"quantizer_dropout": share, "dropout_min_stages": min_stages}


def _vqp_dropout(_share: float, min_stages: int) -> dict:
    """vector-quantize-pytorch's ``ResidualVQ`` quantizer dropout: every training batch
    uses its first n codebooks, one n per batch, uniform in [min_stages, M] (its
    ``quantize_dropout_cutoff_index`` is min_stages - 1); it has no share to set."""
    return {"quantize_dropout": True, "quantize_dropout_cutoff_index": min_stages - 1}


def _ours(method: str, estimator: str, ema: bool = False) -> Arm:
    """This library's arm of ``method`` trained by ``estimator``; with ``ema``, codebooks
    learnt by moving averages (decay PVQ_EMA_DECAY for PVQ, EMA_DECAY for the others) and
    DiVeQ with EMA_DIVEQ_NOISE (near the hard code)."""
    options = {}
    if ema:
        options = {"codebook_update": "ema", "diveq_noise": EMA_DIVEQ_NOISE,
                   "ema_decay": PVQ_EMA_DECAY if method == "pvq" else EMA_DECAY}
    noise = options.get("diveq_noise", DIVEQ_NOISE)
    settings = (["beam min(K, 16)"] if method == "avq" else []) + (
        [f"diveq_noise {noise:g} (relative to the error norm)"]
        if estimator == "diveq" else []) + (
        [f"codebooks by moving averages (decay {options['ema_decay']:g}; --ema-decay)"]
        if ema else []) + [
        "unused codewords replaced every --replace-every steps"]
    return Arm("this", f"{method} ema" if ema else method, estimator, "; ".join(settings),
               partial(image_experiment.build_model, method, estimator=estimator, **options),
               dropout=None if method == "pvq" else _our_dropout)


def _vqp(quantizer: str, estimator: str, settings: str, options: dict) -> Arm:
    """A vector-quantize-pytorch arm: the class named first in ``quantizer``, ``options``."""
    kind = quantizer.split()[0]
    return Arm(VQP, quantizer, estimator, settings,
               partial(_peer_model, partial(VQPytorchLayer, kind, options)),
               dropout=_vqp_dropout if kind == "ResidualVQ" else None)


def _authors(module: str, name: str, estimator: str, settings: str) -> Arm:
    """An arm of the authors' package ``module``: its class ``name`` with its defaults."""
    return Arm(module, name, estimator, settings,
               partial(_peer_model, partial(AuthorsLayer, module, name)),
               continuous=estimator == "sf-diveq")


_VQP_DEFAULTS = "defaults: EMA codebooks (decay 0.8), commitment loss 1.0"
_AUTHORS_DEFAULTS = ("package defaults: codebooks U(0, 1/K), entries used in < 1 % of 100 "
                     "steps replaced every 100 steps")
_SF_DEFAULTS = ("package defaults: residual/product DiVeQ with replacement for 1000 steps, "
                "codebooks then set from the last 50 steps' latents, SF-DiVeQ after")
ARMS = (
    *[_ours(method, estimator) for estimator in ESTIMATORS for method in METHODS],
    *[_ours(method, "diveq", ema=True) for method in METHODS],
    _vqp("ResidualVQ", "rotation trick", _VQP_DEFAULTS, {}),
    _vqp("ResidualVQ kmeans+expiry", "rotation trick",
         f"kmeans_init=True, threshold_ema_dead_code={DEAD_CODE_THRESHOLD}", EXPIRY),
    _vqp("ResidualVQ diveq=True", "diveq",
         "codebooks learnt by Adam (no EMA), DiVeQ on the sum (variance 5e-3), no "
         "commitment loss, no expiry", {"diveq": True}),
    _vqp("VectorQuantize heads", "rotation trick", _VQP_DEFAULTS, {}),
    _vqp("VectorQuantize heads kmeans+expiry", "rotation trick",
         f"kmeans_init=True, threshold_ema_dead_code={DEAD_CODE_THRESHOLD}", EXPIRY),
    _vqp("VectorQuantize heads directional_reparam", "diveq",
         "codebooks learnt by Adam (no EMA), DiVeQ per head (variance 5e-3), no commitment "
         f"loss, threshold_ema_dead_code={DEAD_CODE_THRESHOLD} (required)",
         {"directional_reparam": True, "threshold_ema_dead_code": DEAD_CODE_THRESHOLD}),
    _authors("diveq", "ResidualDIVEQ", "diveq", f"{_AUTHORS_DEFAULTS}; noise_var 1e-3"),
    _authors("diveq", "ProductDIVEQ", "diveq", f"{_AUTHORS_DEFAULTS}; noise_var 1e-3"),
    _authors("diveq", "ResidualSFDIVEQ", "sf-diveq", _SF_DEFAULTS),
    _authors("diveq", "ProductSFDIVEQ", "sf-diveq", _SF_DEFAULTS),
    _authors("nsvq", "ResidualNSVQ", "nsvq", _AUTHORS_DEFAULTS),
    _authors("nsvq", "ProductNSVQ", "nsvq", _AUTHORS_DEFAULTS),
)
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}


def installed(library: str) -> bool:
    """Whether ``library`` can be imported (this library always can)."""
    return library == "this" or importlib.util.find_spec(MODULES[library]) is not None


def select_arms(only: str | None = None, patterns: list[str] | None = None,
                estimator: str | None = None) -> list[Arm]:
    """The arms of library ``only`` whose name contains one of ``patterns``
    (case-insensitive), this library's restricted to ``estimator``; None: no restriction."""
    return [arm for arm in ARMS
            if (only is None or arm.library == only)
            and (not patterns or any(p.lower() in arm.name.lower() for p in patterns))
            and (estimator is None or arm.library != "this" or arm.estimator == estimator)]


@dataclass(frozen=True)
class Settings:
    """What the runs of one invocation share: training sizes (``preset``, with the test
    images to score), the data folder (None: photo tiles), ``diagnose``, torch threads,
    the decay of this library's moving-average arms (None: each arm's own), and the
    quantizer dropout of ``--dropout`` (None: fixed-rate training and rows) with its
    fewest codebooks."""

    preset: image_experiment.ImagePreset
    data: str | None
    diagnose: bool
    threads: int
    ema_decay: float | None = None
    dropout: float | None = None
    dropout_min_stages: int = 1


def _images(data: str | None, test_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, test) uint8 images, the test images cut to the first ``test_images``."""
    train, test = image_experiment.load_images(data)
    return train, test[:test_images] if test_images else test


def run(settings: Settings, arm_name: str, bits: int, seed: int) -> dict:
    """Train one VQ-VAE with the bottleneck of arm ``arm_name`` and score it: a row with
    PSNR, SSIM, usage and ms per step (with ``settings.diagnose``, also the PSNR from
    unquantized and, for this library, from training-mode latents; with
    ``settings.dropout``, trained with quantizer dropout and also scored from its first
    n codebooks, n = 1 ... M)."""
    torch.set_num_threads(settings.threads)
    arm = ARMS_BY_NAME[arm_name]
    train_images, test_images = _images(settings.data, settings.preset.test_images)
    torch.manual_seed(seed)
    overrides = ({"ema_decay": settings.ema_decay}
                 if settings.ema_decay is not None and arm.quantizer.endswith(" ema") else {})
    dropout = ({} if settings.dropout is None
               else arm.dropout(settings.dropout, settings.dropout_min_stages))
    model = arm.build(bits, settings.preset.channels, **overrides, **dropout)
    quantizer = model.quantizer
    extra_loss = None if arm.library == "this" else (lambda: quantizer.loss)
    step_ms = image_experiment.train_vqvae(model, train_images, settings.preset,
                                           torch.Generator().manual_seed(seed), extra_loss)
    psnr, ssim = image_experiment.score_images(model, test_images)
    row = {"library": arm.library, "quantizer": arm.quantizer, "estimator": arm.estimator,
           "rate": arm.rate(bits), "bits": bits, "seed": seed,
           "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
           "usage": image_experiment.used_share(model, image_experiment.training_sample(
               train_images)), "step_ms": step_ms}
    if settings.diagnose:
        row.update(diagnosis(model, test_images, train_mode=arm.library == "this"))
    if settings.dropout is not None:
        row.update(score_stages(model, test_images), dropout=dropout)
    return row


def diagnosis(model: VQVAE, test_images: torch.Tensor, train_mode: bool) -> dict:
    """Mean test PSNR with the decoder fed the unquantized latents and, when ``train_mode``,
    the quantizer's training-mode output (its estimator's noise drawn from seed 0), from a
    copy of the quantizer, since a training-mode pass counts usage and may move codewords
    (``codebook_update="ema"``)."""
    score = partial(image_experiment.score_images, model, test_images)
    found = {"psnr_unquantized": float(score(lambda latents: latents)[0].mean())}
    if train_mode:
        quantizer = copy.deepcopy(model.quantizer)

        def training_output(latents: torch.Tensor) -> torch.Tensor:
            return quantizer(latents, train_mode=True)[0]  # (B, h, w, D)

        with torch.random.fork_rng():
            torch.manual_seed(0)
            found["psnr_train_mode"] = float(score(training_output)[0].mean())
    return found


def summarise(runs: list[dict]) -> dict:
    """The row of the runs of one arm and bitrate: means over seeds, ranges and the runs."""
    first = runs[0]
    row = {key: first[key] for key in ("library", "quantizer", "estimator", "rate", "bits",
                                       "dropout") if key in first}
    for key in [key for key in SCORES + DIAGNOSES if key in first]:
        values = [r[key] for r in runs]
        row[key] = statistics.fmean(values)
        row[f"{key}_range"] = [min(values), max(values)]
    if STAGE_SCORES[0] in first:
        row.update(summarise_stages(runs))
    row["seeds"] = [r["seed"] for r in runs]
    row["runs"] = runs
    return row


def quantizer_label(row: dict) -> str:
    """The quantizer as printed: AVQ, RVQ, PVQ or the peer's class, with its rate when the
    codes are not ``bits`` bits."""
    name = label(row["quantizer"]) if row["library"] == "this" else row["quantizer"]
    return name if row["rate"] == f"{row['bits']} bits" else f"{name} ({row['rate']})"


def print_row(row: dict) -> None:
    if STAGE_SCORES[0] in row:
        print_stage_row(row, quantizer_label(row))
        return
    low, high = row["psnr_range"]
    diagnosed = "".join(f"  {row[key]:8.2f}" if key in row else f"  {'-':>8}"
                        for key in DIAGNOSES) if DIAGNOSES[0] in row else ""
    print(f"{row['bits']:>4}  {row['library']:<23} {quantizer_label(row):<47} "
          f"{row['estimator']:<14} {row['psnr']:6.2f} ({low:5.2f}-{high:5.2f})  "
          f"{row['ssim']:6.4f}  {100 * row['usage']:5.1f} %  {row['step_ms']:7.1f}{diagnosed}",
          flush=True)


def time_bottlenecks(arms: list[Arm], bits: int, batch_size: int, rounds: int = 5,
                     steps: int = 30, warmup: int = 10) -> dict[str, float]:
    """ms per training-mode forward and backward of each arm's quantizer alone on random
    latents (batch_size, 8, 8, D): per arm the fastest of ``rounds`` rounds (the arms
    take turns in each), a round's value the median of ``steps`` steps after ``warmup``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    quantizers = {arm.name: arm.build(bits, 8).quantizer.train() for arm in arms}
    latents = torch.randn(batch_size, 8, 8, image_experiment.LATENT_DIM)  # (B, h, w, D)
    best = dict.fromkeys(quantizers, float("inf"))
    for _ in range(rounds):
        for name, quantizer in quantizers.items():
            times = []
            for step in range(warmup + steps):
                x = latents.clone().requires_grad_(True)
                start = time.perf_counter()
                out, _ = quantizer(x)
                loss = out.square().mean() + getattr(quantizer, "loss", 0.0)
                loss.backward()
                if step >= warmup:
                    times.append(time.perf_counter() - start)
            best[name] = min(best[name], statistics.median(times) * 1e3)
    return best


def print_bottleneck_times(arms: list[Arm], bits: int, times: dict[str, float]) -> None:
    peers = [times[arm.name] for arm in arms if arm.library != "this"]
    fastest = min(peers) if peers else None
    for arm in arms:
        ratio = f"  {times[arm.name] / fastest:5.2f}x" if fastest else ""
        print(f"{bits:>4}  {arm.library:<23} {arm.quantizer:<40} {arm.estimator:<14} "
              f"{times[arm.name]:7.2f} ms{ratio}", flush=True)


def print_arms() -> None:
    """One line per arm: library, quantizer, estimator and settings."""
    for arm in ARMS:
        installed_note = "" if installed(arm.library) else "  [not installed]"
        scalable_note = "" if arm.dropout is None else "  [--dropout]"
        print(f"{arm.library:<23} {arm.quantizer:<40} {arm.estimator:<14} "
              f"{arm.settings}{scalable_note}{installed_note}")


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
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seed of a row's first run; its runs take the next --seeds seeds "
                             "(default: 0), to add runs to earlier rows")
    parser.add_argument("--batch-size", type=int, default=quick.batch_size,
                        help=f"images per step (default: {quick.batch_size})")
    parser.add_argument("--channels", type=int, default=quick.channels,
                        help=f"VQ-VAE width (default: {quick.channels})")
    parser.add_argument("--lr", type=float, default=quick.lr,
                        help=f"Adam learning rate of the whole model (default: {quick.lr})")
    parser.add_argument("--replace-every", type=int, default=quick.replace_every,
                        help="this library's codeword replacement period "
                             f"(default: {quick.replace_every})")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own process with one thread "
                             "(default: 1, in this process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads with --jobs 1 (default: 1)")
    parser.add_argument("--test-images", type=int, default=0,
                        help="score only the first N test images (default: all)")
    parser.add_argument("--decoder-finish", type=float, default=0.0, metavar="SHARE",
                        help="this library's rows: train the decoder alone on hard-quantized "
                             "latents over this share of the steps at the end (default: 0)")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="decay of this library's moving-average (ema) arms (default: "
                             f"{PVQ_EMA_DECAY:g} for PVQ, {EMA_DECAY:g} for AVQ and RVQ)")
    parser.add_argument("--dropout", type=float, default=None, metavar="SHARE",
                        help="scalable mode: train with quantizer dropout and score every "
                             "model from its first n = 1 ... M codebooks; this library's arms "
                             "drop on SHARE of the training examples (0: fixed-rate "
                             "training), vector-quantize-pytorch's ResidualVQ on every batch "
                             "(quantize_dropout=True; it has no share); arms that cannot "
                             "decode from fewer codebooks are left out")
    parser.add_argument("--dropout-min-stages", type=int, default=1, metavar="N",
                        help="with --dropout: the fewest codebooks a training example (this "
                             "library) or batch (ResidualVQ: quantize_dropout_cutoff_index "
                             "N - 1) uses (default: 1)")
    parser.add_argument("--only", choices=LIBRARIES, default=None,
                        help="run one library's arms only")
    parser.add_argument("--arms", nargs="+", default=None, metavar="SUBSTRING",
                        help="run only the arms whose 'library quantizer estimator' contains "
                             "one of these, case-insensitive (see --list)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=None,
                        help="this library's arms with this estimator only")
    parser.add_argument("--list", action="store_true", help="print the arms and exit")
    parser.add_argument("--time-bottleneck", action="store_true",
                        help="train nothing: time each arm's quantizer alone (forward and "
                             "backward on a batch of latents, one thread) and exit")
    parser.add_argument("--diagnose", action="store_true",
                        help="also score each model with its decoder fed the unquantized "
                             "latents and (this library) its quantizer's training-mode output")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print_arms()
        return []
    bad = [bits for bits in args.bits if bits < PAPER_STAGES or bits % PAPER_STAGES]
    if bad:
        parser.error(f"--bits must be positive multiples of {PAPER_STAGES}, got {bad}")
    for option in ("steps", "seeds", "batch_size", "channels", "replace_every", "jobs",
                   "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, "
                         f"got {getattr(args, option)}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.jobs > 1 and args.threads > 1:
        parser.error("--threads applies to --jobs 1 only: every job runs with one thread")
    if args.ema_decay is not None and not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not 0 <= args.decoder_finish < 1:
        parser.error(f"--decoder-finish must be in [0, 1), got {args.decoder_finish}")
    if args.dropout is not None and not 0 <= args.dropout <= 1:
        parser.error(f"--dropout must be in [0, 1], got {args.dropout}")
    if not 1 <= args.dropout_min_stages <= PAPER_STAGES:
        parser.error(f"--dropout-min-stages must be in [1, {PAPER_STAGES}], "
                     f"got {args.dropout_min_stages}")
    if args.dropout is None and args.dropout_min_stages != 1:
        parser.error("--dropout-min-stages applies to --dropout only")
    if args.dropout is not None and args.time_bottleneck:
        parser.error("--dropout does not apply to --time-bottleneck")
    selected = select_arms(args.only, args.arms, args.estimator)
    if args.dropout is not None:
        selected = [arm for arm in selected if arm.dropout is not None]
    for library in dict.fromkeys(arm.library for arm in selected):
        if not installed(library):
            print(f"{library} is not installed: its arms are left out", file=sys.stderr)
    arms = [arm for arm in selected if installed(arm.library)]
    if not arms:
        parser.error("no arm to run: none matches --only/--arms/--estimator or is installed "
                     "(see --list)")
    if args.time_bottleneck:
        print(f"{'bits':>4}  {'library':<23} {'quantizer':<40} {'estimator':<14} "
              f"{'ms/step':>10}  vs fastest other library")
        for bits in args.bits:
            print_bottleneck_times(arms, bits, time_bottlenecks(arms, bits, args.batch_size))
        return []
    preset = replace(image_experiment.PRESETS["quick"], steps=args.steps,
                     batch_size=args.batch_size, channels=args.channels, lr=args.lr,
                     replace_every=args.replace_every, test_images=args.test_images,
                     decoder_finish=args.decoder_finish)
    settings = Settings(preset, args.data, args.diagnose, 1 if args.jobs > 1 else args.threads,
                        args.ema_decay, args.dropout, args.dropout_min_stages)
    train_images, test_images = _images(args.data, args.test_images)
    print(f"data: {args.data or 'scikit-image photo tiles'}, train {len(train_images)}, test "
          f"{len(test_images)} images; {args.steps} steps of {args.batch_size}, "
          f"{args.channels} channels, Adam {args.lr}, {args.seeds} seeds, "
          f"{args.jobs} job(s) of {settings.threads} thread(s)"
          + (f"; decoder finish {args.decoder_finish:g}" if args.decoder_finish else "")
          + (f"; ema arms' decay {args.ema_decay:g}" if args.ema_decay is not None else "")
          + (f"; quantizer dropout ({args.dropout:g} of this library's examples), at least "
             f"{args.dropout_min_stages} codebook(s); PSNR dB (range) from the first n "
             "codebooks, bits per codebook first" if args.dropout is not None else ""))
    if args.dropout is not None:
        print_header(PAPER_STAGES)
    else:
        print(f"{'bits':>4}  {'library':<23} {'quantizer':<47} {'estimator':<14} "
              f"{'PSNR dB (range)':>20}  {'SSIM':>6}  {'usage':>7}  {'ms/step':>7}"
              + (f"  {'unq dB':>8}  {'train dB':>8}" if args.diagnose else ""), flush=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    groups = [[(arm.name, bits, seed) for seed in seeds]
              for bits in args.bits for arm in arms]
    table, done = [], {}

    def finished(_count: int, point: tuple, row: dict) -> None:
        """Keep a run; print the next rows of the table once all their runs are in."""
        done[point] = row
        while len(table) < len(groups) and all(p in done for p in groups[len(table)]):
            table.append(summarise([done[p] for p in groups[len(table)]]))
            print_row(table[-1])

    start = time.perf_counter()
    run_points(partial(run, settings), [p for group in groups for p in group], args.jobs,
               finished)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
