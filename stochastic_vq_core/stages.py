"""How many codebooks each vector uses: quantizer dropout's draw, and the groups of vectors
that share a number of codebooks.

A quantizer whose codebooks refine one another (RVQ, AVQ) can code a vector with its
first n of M codebooks, at n/M of the bits. Quantizer dropout (SoundStream's structured
dropout) trains every such rate in one model: in training, an example drawn for dropout
uses only its first n codebooks, n uniform in [low, M]. The draw is per example, as in
SoundStream, so every batch trains several rates at once; a draw per batch would train
one rate per step. It comes from a CPU generator (the default one unless a generator is
given), so a seeded run repeats it and the group sizes are known on the host without
waiting for an accelerator.

Everything here works on small CPU tensors: one entry per example or per vector.
"""

from __future__ import annotations

import torch


def draw_stages(examples: int, rate: float, low: int, high: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Codebooks used per example, (examples,) int64 on the CPU.

    Each example is dropped with probability ``rate`` and then uses n codebooks, n
    uniform in [low, high]; the others use all ``high``. Draws ``examples`` uniform
    numbers and ``examples`` integers from ``generator`` (the default CPU generator if
    None), whatever the rate.
    """
    dropped = torch.rand(examples, generator=generator) < rate  # (B,)
    drawn = torch.randint(low, high + 1, (examples,), generator=generator)  # (B,)
    return torch.where(dropped, drawn, high)


def stage_groups(stages: torch.Tensor, keep: torch.Tensor | None
                 ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The kept vectors grouped by the number of codebooks they use.

    Args:
        stages: (N,) int64 CPU, codebooks (>= 1) used by each vector.
        keep: (N,) bool CPU, the vectors to quantize (None: all).

    Returns:
        order (R,) int64 CPU, the kept vectors' indices, grouped by ascending number of
        codebooks and in their own order within a group; and [(size, n), ...], each
        group's length in ``order`` and its number of codebooks.
    """
    if keep is not None:
        stages = stages.masked_fill(~keep, 0)  # 0 codebooks: left out
    order = torch.argsort(stages, stable=True)  # (N,)
    sizes = torch.bincount(stages).tolist()  # [left out, 1 codebook, 2, ...]
    groups = [(size, n) for n, size in enumerate(sizes) if n and size]
    return order[sizes[0] if sizes else 0:], groups
