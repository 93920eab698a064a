"""Codebook usage: counting which codewords a batch uses, and replacing unused ones."""

from __future__ import annotations

import torch

DEFAULT_REPLACEMENT_NOISE = 1e-2  # noise of a replaced codeword, relative to the codewords' RMS


def count_usage(usage: torch.Tensor, codes: torch.Tensor) -> None:
    """Add 1 to ``usage[m, k]`` for every codeword ``k`` of codebook ``m`` used in the batch.

    usage: (M, K) integer counter, updated in place. codes: (N, n) indices into the first
    n <= M codebooks.
    """
    used = torch.zeros(usage.shape, dtype=torch.bool, device=usage.device)
    used.scatter_(1, codes.t(), True)
    usage.add_(used)


def replace_rows(table: torch.Tensor, unused: torch.Tensor, noise_scale: float,
                 generator: torch.Generator | None = None) -> None:
    """Overwrite the ``unused`` rows of ``table`` (R, d) by random used rows plus noise, in place.

    unused: (R,) bool. When no row is used the whole table is perturbed. The noise has
    standard deviation ``noise_scale`` times the RMS value of the used rows, so a copy is
    always separated from its source in float32.
    """
    used_idx = torch.nonzero(~unused).flatten()
    unused_idx = torch.nonzero(unused).flatten()
    if len(unused_idx) == 0:
        return
    if len(used_idx) == 0:
        table.add_(_noise_like(table, table, noise_scale, generator))
        return
    repeats = -(-len(unused_idx) // len(used_idx))  # ceil
    pool = used_idx.repeat(repeats)
    order = torch.randperm(len(pool), generator=generator, device="cpu").to(pool.device)
    sources = table[pool[order[: len(unused_idx)]]]  # (U, d)
    table[unused_idx] = sources + _noise_like(sources, table[used_idx], noise_scale, generator)


def _noise_like(target: torch.Tensor, reference: torch.Tensor, scale: float,
                generator: torch.Generator | None) -> torch.Tensor:
    rms = reference.float().pow(2).mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    noise = torch.randn(target.shape, generator=generator, device="cpu").to(target.device)
    return (scale * rms * noise).to(target.dtype)


def usage_limit(discard_threshold: float, batches: int) -> int:
    """The smallest usage count ``u`` with ``u / batches >= discard_threshold`` (``batches``
    when none below it has).

    A codeword is unused when its count is below this limit: the original's test
    ``u / batches < discard_threshold`` in float64, evaluated once on the host for every
    count so that the comparison on the device is between integers.
    """
    return next((u for u in range(batches) if u / batches >= discard_threshold), batches)


def replaces_at(step: int, steps: int, every: int) -> bool:
    """True if codewords are replaced after ``step`` (1-based) of ``steps``, on the
    original's schedule: every ``every`` steps while ``step - 1 <= steps - 2 * every``
    (the original's test on its 0-based counter), i.e. never in the last 2 x every steps.
    """
    return step % every == 0 and step - 1 <= steps - 2 * every
