"""The settings of a training run (``TrainConfig``) and their checks.

The defaults are the paper's example scripts; ``init`` and ``lr_scale`` left at None
resolve to the paper's choices on the built-in N(0, 1) stream and to data-dependent ones
on the user's data (``TrainConfig.resolved``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from stochastic_vq.methods import build_quantizer
from stochastic_vq_core.codebook_updates import DEFAULT_CODEBOOK_UPDATE
from stochastic_vq_core.estimators import DEFAULT_ESTIMATOR
from stochastic_vq_core.paper import SCRIPT_BEAM_WIDTH, SCRIPT_SHAPES
from stochastic_vq_core.quantizer import VectorQuantizer
from stochastic_vq_core.rules import check_choice, check_int

INITS = ("uniform", "data", "data-disjoint")
LR_SCALES = ("absolute", "data")
PAPER_CHOICES = {"init": "uniform", "lr_scale": "absolute"}  # on the N(0, 1) stream
DATA_CHOICES = {"init": "data", "lr_scale": "data"}  # on the user's data
# the quantizer constructors' argument names of the settings named otherwise here
SETTINGS = {"num_stages": "stages", "vq_bitrate_per_stage": "bits"}


class ConfigError(ValueError):
    """An invalid setting, data file or resume request.

    ``setting`` names the TrainConfig field, ``message`` says what is wrong; ``str()`` of
    the error is ``"setting: message"``.
    """

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting, self.message = setting, message


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are the paper's example scripts.

    method: "avq", "pvq" or "rvq". stages, bits: None picks the paper's setting (AVQ 3x5,
    PVQ/RVQ 4x7). beam_width is used by AVQ only. data_dim: D, the dimension of the
    vectors. device: None picks cuda when available. out: run directory for log.json and
    checkpoint.pt (None: no files). data, eval_data: paths of (N, D) .npy files (None:
    N(0, 1) samples). resume: continue from ``out``'s checkpoint. threads: torch CPU
    threads while training (0: leave torch's setting); 1 is by far the fastest for the
    paper's 64-vector batches, above all on a busy machine.

    init: "uniform" (the paper's Uniform(-1/K, 1/K)), "data" (``initialize_from_data``:
    k-means of the training data) or "data-disjoint" (the same with ``disjoint=True``:
    RVQ/AVQ codebooks fitted to their own share of M times as many samples).
    lr_scale: "absolute" (the paper: ``lr`` is Adam's step size) or "data": ``lr`` is
    relative to the scale of the training data and is multiplied by the standard deviation
    of all its entries. Adam moves each entry by about ``lr`` per step whatever the
    gradient's size, so data far from unit scale (e.g. pixels 0..255) need it.
    None (the default of both) resolves to the paper's choice on the N(0, 1) stream and
    to "data" when training on data (``resolved``).
    estimator, diveq_noise: the quantizer's training-mode estimator, "nsvq" (the paper's)
    or "diveq", and DiVeQ's relative noise (``stochastic_vq_core.estimators``; None: the
    quantizer's default, DIVEQ_NOISE; a value only with "diveq").
    codebook_update, ema_decay: "gradient" (the paper's: Adam learns the codebooks) or
    "ema" (moving averages of what each codeword quantizes, online k-means; no gradient
    step then), and the averages' decay (``stochastic_vq_core.codebook_updates``; None:
    the quantizer's default, EMA_DECAY; a value only with "ema").
    reset_optimizer_state: zero Adam's moments of the codewords a replacement overwrites
    (``replace_unused_codebooks(optimizer=...)``) instead of letting them inherit those
    of the dead entries.
    """

    method: str = "rvq"
    stages: int | None = None
    bits: int | None = None
    beam_width: int = SCRIPT_BEAM_WIDTH
    data_dim: int = 128
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    replace_every: int = 1000
    discard_threshold: float = 0.01
    log_every: int = 1000
    save_every: int = 1000
    eval_samples: int = 2**18
    seed: int = 0
    device: str | None = None
    out: str | None = None
    init: str | None = None
    data: str | None = None
    eval_data: str | None = None
    resume: bool = False
    threads: int = 1
    lr_scale: str | None = None
    reset_optimizer_state: bool = False
    estimator: str = DEFAULT_ESTIMATOR
    diveq_noise: float | None = None
    codebook_update: str = DEFAULT_CODEBOOK_UPDATE
    ema_decay: float | None = None

    def __post_init__(self):
        stages, bits = SCRIPT_SHAPES.get(self.method, (None, None))
        self.stages = stages if self.stages is None else self.stages
        self.bits = bits if self.bits is None else self.bits
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def resolved(self, on_data: bool) -> TrainConfig:
        """A copy with ``init`` and ``lr_scale`` chosen where they are None: the paper's
        choices on the N(0, 1) stream, the data-dependent ones when ``on_data``."""
        choices = DATA_CHOICES if on_data else PAPER_CHOICES
        return replace(self, **{name: choice for name, choice in choices.items()
                                if getattr(self, name) is None})

    def build_quantizer(self, device: str | torch.device | None = None) -> VectorQuantizer:
        """The untrained quantizer these settings describe (on ``device``, default cpu)."""
        return build_quantizer(self.method, self.stages, self.bits, self.data_dim,
                               self.beam_width, discard_threshold=self.discard_threshold,
                               estimator=self.estimator, diveq_noise=self.diveq_noise,
                               codebook_update=self.codebook_update, ema_decay=self.ema_decay,
                               device=torch.device("cpu") if device is None else device)

    def validate(self) -> None:
        """Raise ConfigError for the first invalid setting.

        The quantizer's own settings are checked by its constructor (on the "meta"
        device, which allocates nothing); its errors are reported in the settings' names.
        """
        try:
            for name, minimum in [("steps", 1), ("batch_size", 1), ("replace_every", 1),
                                  ("log_every", 1), ("save_every", 1), ("eval_samples", 1),
                                  ("seed", 0), ("threads", 0)]:
                check_int(name, getattr(self, name), minimum)
            if self.init is not None:
                check_choice("init", self.init, INITS)
            if self.lr_scale is not None:
                check_choice("lr_scale", self.lr_scale, LR_SCALES)
            self.build_quantizer(device="meta")
        except (TypeError, ValueError) as error:
            argument = getattr(error, "argument", None)
            if argument is None:
                raise
            message = str(error).removeprefix(f"{argument} ")
            raise ConfigError(SETTINGS.get(argument, argument), message) from None
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a positive number, got {self.lr!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError("device", f"unknown device {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda was requested but is not available")
        if self.resume and self.out is None:
            raise ConfigError("resume", "needs the run directory (out) to resume from")
