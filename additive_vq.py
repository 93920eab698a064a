"""Additive vector quantization (AVQ) trained with NSVQ, with an exact table-lookup beam search.

A vector is approximated by the sum of M codewords, one from each of M codebooks, chosen
in any order by a beam search: the ``beam_width`` best partial tuples are extended by the
``beam_width`` codewords of not yet used codebooks nearest to their residual, tuples that
hold the same set of codewords are merged, and the ``beam_width`` tuples of least
reconstruction error are kept.

Every error the search needs comes from tables: with ``<x, c>`` for all codewords
(one matrix product per batch) and the codeword norms ``||c||²`` and cross products
``<c_i, c_j>`` (once per call), the error of a tuple S is

    ||x - Σ_S c||² = ||x||² - 2 Σ_S <x, c> + Σ_S ||c||² + 2 Σ_{i<j in S} <c_i, c_j>,

so a beam step is a gather, an add and a top-k instead of new distance computations.
"""

from __future__ import annotations

import torch

from nsvq import CPU, DEFAULT_REPLACEMENT_NOISE, VectorQuantizer, check_int, replace_rows

_HUGE = 1e30  # stands in for a non-finite distance; a sum of M of them stays finite


class AVQ(VectorQuantizer):
    """Additive VQ with M codebooks of K = 2**vq_bitrate_per_stage entries of dimension D.

    Args:
        num_stages: M, number of codebooks.
        vq_bitrate_per_stage: bits per codebook, K = 2**bits entries each.
        data_dim: D, dimension of the vectors to quantize.
        beam_width: partial tuples kept at each step of the beam search (1 = greedy).
        discard_threshold: usage fraction below which ``replace_unused_codebooks``
            replaces a codeword (decided over the whole M*K table, as the original).
        device: where the codebooks live.
        check_finite: reject NaN/Inf input (one host sync per call; turn off for speed).
        replacement_noise: noise of a replaced codeword, relative to the codewords' RMS.

    The trainable parameter ``codebooks`` has shape (M*K, D); codebook m owns rows
    ``m*K ... (m+1)*K - 1``.
    """

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 beam_width: int, discard_threshold: float = 0.01,
                 device=CPU, *, check_finite: bool = True,
                 replacement_noise: float = DEFAULT_REPLACEMENT_NOISE):
        super().__init__(num_stages, vq_bitrate_per_stage, data_dim, discard_threshold, device,
                         check_finite=check_finite, replacement_noise=replacement_noise)
        self.beam_width = check_int("beam_width", beam_width)
        self.codebooks = self._uniform_codebooks(
            (num_stages * self.num_codebooks, data_dim), device)
        self.register_buffer("code_keys", _code_keys(num_stages, self.num_codebooks, device),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beam_width={self.beam_width}"

    def _elements_per_row(self) -> int:
        beams = min(self.beam_width, len(self.codebooks))
        shortlist = self.beam_width * min(self.num_stages, beams)
        return max(beams * len(self.codebooks), shortlist**2)

    def _tables(self, dtype):
        codewords = self.codebooks.detach().to(dtype)  # (MK, D)
        norms, cross = cross_table(codewords, self.num_stages)  # (MK,), (MK, MK)
        return codewords, norms, cross

    def _encode_chunk(self, x, tables):
        codewords, norms, cross = tables
        return beam_search(x, codewords, norms, cross, self.code_keys, self.num_stages,
                           self.beam_width)

    def _decode(self, codes):
        return self._gather_codewords(codes).sum(dim=1)  # (N, M, D) -> (N, D)

    def _stage_table(self, stage):
        entries = self.num_codebooks
        return self.codebooks.detach()[stage * entries:(stage + 1) * entries]

    def _replace(self, unused, generator):
        replace_rows(self.codebooks.detach(), unused.flatten(), self.replacement_noise, generator)


def beam_search(x: torch.Tensor, codewords: torch.Tensor, norms: torch.Tensor,
                cross: torch.Tensor, code_keys: torch.Tensor, num_stages: int,
                beam_width: int) -> torch.Tensor:
    """Choose one codeword per codebook so that their sum is close to x.

    Args:
        x: (N, D) vectors.
        codewords: (M*K, D), codebook m in rows m*K ... (m+1)*K - 1.
        norms: (M*K,) squared codeword norms.
        cross: (M*K, M*K) codeword inner products, +inf between codewords of the same
            codebook (see ``cross_table``), which keeps a used codebook out of a tuple.
        code_keys: (M*K,) integer key share of each codeword (see ``_code_keys``).
        num_stages: M. beam_width: tuples kept at each step.

    Returns:
        (N, M) int64, the index within each codebook, ordered by codebook.
    """
    n, stages, total = len(x), num_stages, len(codewords)
    entries = total // stages
    # error of adding codeword j to an empty tuple, less the constant ||x||², (N, MK);
    # non-finite input (allowed with check_finite=False) must not outrank the +inf that
    # keeps used codebooks out, so its errors are clamped to finite values
    base = torch.addmm(norms, x, codewords.t(), alpha=-2.0)
    base = torch.nan_to_num(base, nan=_HUGE, posinf=_HUGE, neginf=-_HUGE)

    error, chosen = base.topk(min(beam_width, total), dim=1, largest=False)  # (N, B)
    key = code_keys[chosen]  # (N, B) identifies the set of chosen codewords
    crossed = _rows(cross, chosen)  # (N, B, MK) Σ over the tuple of <c_i, c_j>, inf for used
    path = chosen.unsqueeze(2)  # (N, B, t) codewords of each tuple, in the order chosen

    for step in range(1, stages):
        beams = chosen.shape[1]
        # error of extending tuple b by codeword j: e_b + ||c_j||² - 2<x,c_j> + 2Σ_i<c_i,c_j>
        candidate_error = torch.add(base.unsqueeze(1), crossed, alpha=2.0)  # (N, B, MK)
        candidate_error = (candidate_error + error.unsqueeze(2)).reshape(n, beams * total)
        if step == stages - 1:  # the best complete tuple; copies of a set have equal error
            error, pick = candidate_error.min(dim=1, keepdim=True)  # (N, 1)
        else:
            error, pick = _best_distinct_sets(candidate_error, key, code_keys, beam_width,
                                              copies=min(step + 1, beams))
        parent, chosen = pick // total, pick % total  # (N, B') beam, codeword in [0, MK)
        path = torch.cat([path.gather(1, parent.unsqueeze(2).expand(-1, -1, step)),
                          chosen.unsqueeze(2)], dim=2)
        if step < stages - 1:
            key = key.gather(1, parent) + code_keys[chosen]
            crossed = crossed.gather(1, parent.unsqueeze(-1).expand(-1, -1, total))
            crossed += _rows(cross, chosen)

    codewords = path[:, 0]  # (N, M) the best tuple: top-k and min order beams by error
    codes = torch.empty_like(codewords)  # (N, M) indices in codebook order
    return codes.scatter_(1, codewords // entries, codewords % entries)


def _best_distinct_sets(candidate_error: torch.Tensor, key: torch.Tensor,
                        code_keys: torch.Tensor, beam_width: int,
                        copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``beam_width`` best candidates holding distinct sets of codewords.

    candidate_error: (N, B*MK), candidate b*MK + j extends beam b by codeword j.
    key: (N, B) set keys of the beams. A set of t codewords is reached from at most
    ``copies`` beams, so the best ``beam_width`` distinct sets lie among the best
    ``beam_width * copies`` candidates; a candidate whose set equals that of a better
    one is dropped. This equals keeping, per beam, the ``beam_width`` codewords nearest
    to its residual and then the best distinct sets among those (the search the paper
    describes): a candidate outside its beam's best ``beam_width`` is beaten by that
    many distinct sets of its own beam.

    Returns:
        (error, pick): (N, B') errors ascending and indices into the candidates.
    """
    total = len(code_keys)
    shortlist = min(beam_width * copies, candidate_error.shape[1])
    error, pick = candidate_error.topk(shortlist, dim=1, largest=False)  # (N, L) ascending
    candidate_key = key.gather(1, pick // total) + code_keys[pick % total]  # (N, L)
    same = candidate_key.unsqueeze(2) == candidate_key.unsqueeze(1)  # (N, L, L)
    earlier = torch.ones(shortlist, shortlist, dtype=torch.bool, device=key.device).tril(-1)
    repeat = (same & earlier).any(dim=2)  # equals a better candidate's set
    error = error.masked_fill(repeat, float("inf"))
    keep = min(beam_width, shortlist)
    error, order = error.topk(keep, dim=1, largest=False)
    return error, pick.gather(1, order)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 2-D table and (N, B) index, as one index_select: (N, B, C)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, table.shape[1])


def cross_table(codewords: torch.Tensor,
                num_stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norms (M*K,) and inner products (M*K, M*K) of the codewords.

    The inner products between codewords of the same codebook are set to +inf.
    """
    cross = codewords @ codewords.t()
    norms = cross.diagonal().clone()
    entries = len(codewords) // num_stages
    blocks = cross.view(num_stages, entries, num_stages, entries)
    blocks.diagonal(dim1=0, dim2=2).fill_(float("inf"))  # the (K, K) blocks of codebook m, m
    return norms, cross


def _code_keys(stages: int, entries: int, device) -> torch.Tensor:
    """(M*K,) key share of each codeword; the sum over a tuple identifies its set.

    Codeword k of codebook m adds (k + 1) * w_m with exact mixed-radix weights
    w_m = (K+1)**m when they fit in 62 bits, otherwise fixed pseudo-random 62-bit
    weights (a collision then has probability ~2**-62).
    """
    if stages * (entries + 1).bit_length() <= 62:
        weights = torch.tensor([(entries + 1) ** m for m in range(stages)])
    else:
        generator = torch.Generator().manual_seed(stages * 1_000_003 + entries)
        weights = torch.randint(1, 2**62, (stages,), generator=generator)
    code = torch.arange(1, entries + 1).repeat(stages)  # (MK,)
    return (code * weights.repeat_interleave(entries)).to(device)
