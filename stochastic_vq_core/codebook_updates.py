"""How codebooks learn: by the optimizer through the estimator's gradient, the paper's way
(``"gradient"``), or by exponential moving averages of what each codeword quantizes
(``"ema"``), as k-means would.

With ``"ema"`` every training-mode forward pass moves each chosen codeword to the running
mean of its targets: ``count ← decay·count + (1 − decay)·n`` and ``sum ← decay·sum +
(1 − decay)·Σ target`` over the batch, then ``codeword = sum / count``. A codeword's
target is what it should reconstruct given the codewords chosen with it: for AVQ, whose
codewords are chosen jointly, the input less the other chosen codewords; for RVQ, whose
stages choose one after another, the residual its stage quantized (the input less the
codewords of the earlier stages); for PVQ its sub-vector. The codebooks move one after
another, and a codebook's targets use the codewords of the codebooks that moved before
it in the same step (iterated conditional modes): moving all at once toward targets of
the old codewords corrects an error the vectors share once per codebook, which makes
AVQ, and RVQ with small codebooks, diverge (docs/estimators.md). The codebooks then get
no gradient; the estimator still trains what comes before the quantizer. A codeword
unused in a batch keeps its place (its count and sum decay alike).
"""

from __future__ import annotations

import torch

from stochastic_vq_core.rules import check_choice, check_given_only_with, check_real

CODEBOOK_UPDATES = ("gradient", "ema")
DEFAULT_CODEBOOK_UPDATE = "gradient"
EMA_DECAY = 0.8  # the default decay of the moving averages
_TINY = 1e-12  # a count below this leaves its codeword where it is


def check_codebook_update(update: str, decay) -> tuple[str, float]:
    """(update, decay) if both are valid: a name of CODEBOOK_UPDATES and a decay in [0, 1),
    given only with "ema"; a decay of None (left out) is EMA_DECAY."""
    update = check_choice("codebook_update", update, CODEBOOK_UPDATES)
    if decay is None:
        return update, EMA_DECAY
    decay = check_real("ema_decay", decay, 0.0, 1.0, open_high=True)
    check_given_only_with("ema_decay", decay, "codebook_update", update, "ema")
    return update, decay


@torch.no_grad()
def ema_update(rows: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
               codes: torch.Tensor, batch_sums: torch.Tensor, decay: float, reduce) -> None:
    """One moving-average step of the codewords, in place.

    rows: (R, d) the codewords (one codebook, R = K, or several); counts: (R,) and sums:
    (R, d) their running statistics; codes: (N, ...) rows chosen, as indices into the R
    rows; batch_sums: (R, d) the sum of each row's targets (what it should reconstruct)
    over the batch; ``reduce(tensor)`` sums a batch statistic over the processes that
    train together.
    """
    flat = codes.reshape(-1)  # (N*M,)
    batch_counts = torch.zeros_like(counts).index_add_(
        0, flat, torch.ones_like(flat, dtype=counts.dtype))
    counts.mul_(decay).add_(reduce(batch_counts), alpha=1.0 - decay)
    sums.mul_(decay).add_(reduce(batch_sums), alpha=1.0 - decay)
    means = sums / counts.clamp_min(_TINY).unsqueeze(1)
    rows.copy_(torch.where((counts > _TINY).unsqueeze(1), means.to(rows.dtype), rows))


@torch.no_grad()
def restart_statistics(rows: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
                       restarted: torch.Tensor | None = None) -> None:
    """Make the running means equal the codewords again, in place: after the codewords
    were set from outside (replacement, initialisation). ``restarted`` (R,) bool marks the
    rows to restart with a count of 1 (None: every row keeps its count)."""
    if restarted is not None:
        counts[restarted] = 1.0
    sums.copy_(rows.to(sums.dtype) * counts.unsqueeze(1))
