"""Training-mode estimators: what a quantizer returns in training mode, so that gradients
reach its codebooks.

Both replace the hard-quantized ``q`` of an input ``x`` by ``x + ||q - x|| * u``, a point at
exactly the quantization error's distance from ``x``, so the codebooks receive gradients
through the error norm ``||q - x||``; they differ in the direction ``u`` (per row):

- ``"nsvq"`` (the paper's method, the default): ``u = v / ||v||``, ``v ~ N(0, I)``, a
  uniformly random direction (noise substitution, Vali & Bäckström 2022).
- ``"diveq"`` (Vali, Bäckström & Solin, ICLR 2026): ``u = sg(d / ||d||)`` with
  ``d = (q - x) + noise * ||q - x|| / sqrt(D) * v``: the error's own direction, blurred by
  noise whose expected norm is about ``noise`` times the error's. With ``noise = 0`` the
  output is the hard quantization itself; as ``noise`` grows it becomes NSVQ.

In both ``u`` carries no gradient (``sg`` stops it), so an incoming gradient ``g`` reaches
``x`` as ``g - e (u . g)``, ``e = (q - x) / ||q - x||`` the error direction: the identity
less what moving ``x`` does to the error norm. Only where ``u = e``, DiVeQ without noise,
is that the projection of ``g`` off the error direction.

``noise`` is relative to the error norm (the authors' ``diveq`` package and
vector-quantize-pytorch use an absolute standard deviation): the angle between ``u`` and the
error then depends on ``noise`` alone, not on the scale of the data or of the error, which
shrinks by orders of magnitude as the codebooks and a model's latents train.
"""

from __future__ import annotations

import math

import torch

from stochastic_vq_core.rules import check_choice, check_given_only_with, check_real

ESTIMATORS = ("nsvq", "diveq")
DEFAULT_ESTIMATOR = "nsvq"
DIVEQ_NOISE = 1.0  # default relative noise of DiVeQ's direction
EPS = 1e-12  # keeps the division by a norm finite


def noise_substitution(x: torch.Tensor, q: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """NSVQ output ``x + ||x - q|| * v / ||v||`` with ``v ~ N(0, I)``, per row.

    x, q: (..., D). The output is at exactly the distance ``||x - q||`` from ``x`` in a
    random direction, so gradients reach the codebooks through the error norm.
    """
    error_norm = torch.linalg.vector_norm(x - q, dim=-1, keepdim=True)  # (..., 1)
    noise = torch.randn_like(x)
    scale = error_norm / (torch.linalg.vector_norm(noise, dim=-1, keepdim=True) + eps)  # (..., 1)
    return torch.addcmul(x, scale, noise)


def diveq(x: torch.Tensor, q: torch.Tensor, noise: float = DIVEQ_NOISE,
          eps: float = EPS) -> torch.Tensor:
    """DiVeQ output ``x + ||q - x|| * sg(d / ||d||)``, ``d = (q - x) + noise-blurred``, per row.

    x, q: (..., D). ``noise`` >= 0 is relative to the error norm (see the module's
    docstring); with 0 the forward value is ``q`` up to rounding and the gradient to x is
    the incoming one with the error direction projected out.
    """
    error = q - x  # (..., D)
    error_norm = torch.linalg.vector_norm(error, dim=-1, keepdim=True)  # (..., 1)
    direction = error.detach()
    if noise:
        scale = error_norm.detach() * (noise / math.sqrt(x.shape[-1]))  # (..., 1)
        direction = torch.addcmul(direction, scale, torch.randn_like(x))
    direction = direction / (torch.linalg.vector_norm(direction, dim=-1, keepdim=True) + eps)
    return torch.addcmul(x, error_norm, direction)


def check_estimator(estimator: str, noise) -> tuple[str, float]:
    """(estimator, DiVeQ noise) if both are valid: a name of ESTIMATORS and a finite noise
    >= 0, given only with "diveq"; a noise of None (left out) is DIVEQ_NOISE."""
    estimator = check_choice("estimator", estimator, ESTIMATORS)
    if noise is None:
        return estimator, DIVEQ_NOISE
    noise = check_real("diveq_noise", noise)
    check_given_only_with("diveq_noise", noise, "estimator", estimator, "diveq")
    return estimator, noise


def estimate(estimator: str, noise: float, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The training-mode output of ``estimator`` for x (..., D) and its quantization q."""
    if estimator == "diveq":
        return diveq(x, q, noise)
    return noise_substitution(x, q)
