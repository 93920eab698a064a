"""How codebooks learn: by the optimizer through the estimator's gradient, the paper's way
(``"gradient"``), or by exponential moving averages of what each codeword quantizes
(``"ema"``), as k-means would.

With ``"ema"`` every training-mode forward pass moves each chosen codeword to the running
mean of its targets: ``count ← decay·count + (1 − decay)·n`` and ``sum ← decay·sum +
(1 − decay)·Σ target`` over the batch, then ``codeword = sum / count``. A codeword's
target is what it should reconstruct given the codewords chosen with it: for AVQ, whose
codewords are chosen jointly, the input less the other chosen codewords; for RVQ, whose
stages choose one after another, the residual its stage quantized (the input less the
codewords of the earlier stages); for PVQ its sub-vector. All codebooks move at once.

Where the codebooks' errors add up (AVQ, RVQ), an error that the vectors share moves
each of the n codewords of a vector by ``(1 − decay)`` of it, n times in all, which
overshoots and diverges once ``n·(1 − decay) > 2``. Each codeword there takes
``ema_relaxation(n, decay)`` of its correction (target less codeword): a shared error is
then corrected ``min(1, n·(1 − decay))`` times per step, never more than once; where
``n·(1 − decay) <= 1`` (the paper's four codebooks at the default decay) the update is
the plain one. The codebooks then get no gradient; the estimator still trains what comes
before the quantizer. A codeword unused in a batch keeps its place (its count and sum
decay alike).
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


def ema_relaxation(stages: int, decay: float) -> float:
    """The share of its correction that each codeword takes when ``stages`` codebooks
    whose errors add up move at once: ``1 / max(1, stages·(1 − decay))``."""
    return 1.0 / max(1.0, stages * (1.0 - decay))


@torch.no_grad()
def ema_update(rows: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
               codes: torch.Tensor, batch_sums: torch.Tensor, decay: float, reduce) -> None:
    """One moving-average step of the codewords, in place.

    rows: (R, d) the codewords (of one or several codebooks); counts: (R,) and sums: (R, d)
    their running statistics; codes: (N, ...) rows chosen, as indices into the R rows;
    batch_sums: (R, d) the sum of each row's targets (what it should reconstruct)
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
