"""Additive vector quantization (AVQ) trained with NSVQ or DiVeQ, by an exact table-lookup
beam search.

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
Copies of a set are recognised by comparing the beams' codewords, not by hashing, and when
M*K >= 128 the top-k over the (N, B*MK) candidates first narrows them to groups
(``k_smallest``).
"""

from __future__ import annotations

import math

import torch

from stochastic_vq_core import native, triton_search
from stochastic_vq_core.quantizer import CPU, VectorQuantizer
from stochastic_vq_core.rules import check_int
from stochastic_vq_core.scratch import buffer_view, scratch
from stochastic_vq_core.usage import replace_rows

_HUGE = 1e30  # stands in for a non-finite distance; a sum of M of them stays finite
_MIN_GROUP = 16  # smaller groups do not repay the extra steps of ``k_smallest``
_MIN_STRIDE = 64  # the group minima are a fast element-wise reduction over rows this long
_BUFFERED = 2**17  # searches whose (N, B, MK) tables hold this many entries reuse buffers


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
        **options: the keyword options of ``VectorQuantizer``: ``check_finite``,
            ``replacement_noise``, ``process_group``, ``estimator`` ("nsvq", the paper's,
            or "diveq"), ``diveq_noise`` (with "diveq"), ``codebook_update`` ("gradient",
            the paper's, or "ema": moving averages), ``ema_decay`` (with "ema"),
            ``quantizer_dropout``, ``dropout_min_stages``, ``channel_first``.

    The parameter ``codebooks`` has shape (M*K, D); codebook m owns rows
    ``m*K ... (m+1)*K - 1``.
    The optimizer learns it through the estimator's gradient (``codebook_update=
    "gradient"``), or moving averages set it (``"ema"``; no gradient then): each chosen
    codeword moves toward the input less the other chosen codewords.
    """

    title = "additive VQ (AVQ)"

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 beam_width: int, discard_threshold: float = 0.01,
                 device=CPU, **options):
        super().__init__(num_stages, vq_bitrate_per_stage, data_dim, discard_threshold, device,
                         **options)
        self.beam_width = check_int("beam_width", beam_width)
        self.codebooks = self._uniform_codebooks(
            (num_stages * self.codebook_size, data_dim), device)

    @classmethod
    def build(cls, num_stages, vq_bitrate_per_stage, data_dim, *, beam_width=None, **options):
        """An AVQ from the shared settings; ``beam_width`` is required."""
        if beam_width is None:
            raise TypeError("AVQ needs a beam_width")
        return cls(num_stages, vq_bitrate_per_stage, data_dim, beam_width, **options)

    @property
    def search_backend(self) -> str:
        """Which beam search encodes on the codebooks' device: "native" (the C++ kernel),
        "triton" (a GPU kernel, opt-in) or "torch" (``beam_search_torch``); all give the
        same codes."""
        return search_backend(self.codebooks.device, self.num_stages, self.codebook_size,
                              self.beam_width)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, beam_width={self.beam_width}, "
                f"search={self.search_backend!r}")

    def _elements_per_row(self, stages: int) -> int:
        total = stages * self.codebook_size
        if search_backend(self.codebooks.device, stages, self.codebook_size,
                          self.beam_width) != "torch":  # per vector: its (nK,) errors
            return total
        # per vector: the (B, nK) candidates, and at most (B*n)² codeword comparisons
        # between beams in ``_drop_repeated_sets``
        beams = min(self.beam_width, total)
        return max(beams * total, (beams * stages) ** 2)

    def _tables(self, dtype, stages):
        # the first n codebooks: rows 0 ... n*K - 1
        codewords = self.codebooks.detach()[:stages * self.codebook_size].to(dtype)  # (nK, D)
        total = len(codewords)
        out = scratch("avq cross", (total, total), dtype, codewords.device)
        norms, cross = cross_table(codewords, stages, out)  # (nK,), (nK, nK)
        return codewords, norms, cross

    def _encode_chunk(self, x, tables, stages):
        """The beam search over the first ``stages`` codebooks only."""
        codewords, norms, cross = tables
        return beam_search(x, codewords, norms, cross, stages, self.beam_width)

    def _stage_table(self, stage):
        entries = self.codebook_size
        return self.codebooks.detach()[stage * entries:(stage + 1) * entries]

    def _replace(self, unused, generator):
        replace_rows(self.codebooks.detach(), unused.flatten(), self.replacement_noise, generator)


def beam_search(x: torch.Tensor, codewords: torch.Tensor, norms: torch.Tensor,
                cross: torch.Tensor, num_stages: int, beam_width: int) -> torch.Tensor:
    """Choose one codeword per codebook so that their sum is close to x.

    Args:
        x: (N, D) vectors.
        codewords: (M*K, D), codebook m in rows m*K ... (m+1)*K - 1.
        norms: (M*K,) squared codeword norms.
        cross: (M*K, M*K) codeword inner products, +inf between codewords of the same
            codebook (see ``cross_table``), which keeps a used codebook out of a tuple.
        num_stages: M. beam_width: tuples kept at each step.

    Returns:
        (N, M) int64, the index within each codebook, ordered by codebook.

    The native kernel or the Triton one runs where ``search_backend`` says so, else
    ``beam_search_torch``; all give the same codes.
    """
    # error of adding codeword j to an empty tuple, less the constant ||x||², (N, MK), in
    # a buffer that the next search reuses on the CPU (codes need no gradient)
    with torch.no_grad():
        base = torch.addmm(norms, x, codewords.t(), alpha=-2.0,
                           out=scratch("avq base", (len(x), len(codewords)), x.dtype, x.device))
    backend = search_backend(x.device, num_stages, len(codewords) // num_stages, beam_width)
    if backend == "native":  # NaN and inf are never among its best
        return native.search(base, cross, num_stages, beam_width)
    # non-finite input (allowed with check_finite=False) must not outrank the +inf that
    # keeps used codebooks out, so its errors are clamped to finite values
    base = torch.nan_to_num_(base, nan=_HUGE, posinf=_HUGE, neginf=-_HUGE)
    if backend == "triton":
        codes = triton_search.beam_search(base, cross, num_stages, beam_width,
                                          beam_search_torch)
        if codes is not None:  # None: it failed its first-use check here
            return codes
    return beam_search_torch(base, cross, num_stages, beam_width)


def search_backend(device: torch.device, num_stages: int, entries: int,
                   beam_width: int) -> str:
    """Which beam search runs for tensors on ``device``: "native" (the C++ kernel of
    ``stochastic_vq_core.native``, on a CPU where it could be built, for searches of the
    sizes it takes), "triton" (``stochastic_vq_core.triton_search``, on a GPU, where
    ``STOCHASTIC_VQ_TRITON=1``) or "torch"."""
    if (device.type == "cpu" and native.takes(num_stages, entries, beam_width)
            and native.available()):
        return "native"
    if triton_search.enabled(device):
        return "triton"
    return "torch"


def beam_search_torch(base: torch.Tensor, cross: torch.Tensor, num_stages: int,
                      beam_width: int) -> torch.Tensor:
    """``beam_search`` in plain torch, batched over the vectors: the readable reference
    of the native kernel and the search on devices it does not cover.

    base: (N, M*K) ``||c_j||² - 2 <x, c_j>``, finite; cross: as in ``beam_search``.
    """
    n, stages, total = len(base), num_stages, len(cross)
    entries = total // stages
    error, chosen = k_smallest(base, min(beam_width, total))  # (N, B) ascending
    # a large search keeps its (N, B, MK) tables in three buffers that take turns, each
    # allocated once: freed blocks this large go back to the system (glibc), and every new
    # one would be faulted in afresh. A small one allocates as it goes (fewer operations).
    most = min(beam_width, total)  # beams entering the last step, the most of any step
    for _ in range(2, stages):
        most = min(beam_width, most * total)
    size = n * most * total
    crossed_buffer, spare, added = (base.new_empty(size) if size >= _BUFFERED else None
                                    for _ in range(3))
    # (N, B, MK): Σ_tuple <c_i, c_j> for every codeword j, inf if j's codebook is used
    crossed = _gather_rows(cross, chosen, crossed_buffer)
    path = chosen.unsqueeze(2)  # (N, B, t) codewords of each tuple, best tuple first
    beams = chosen.shape[1]
    rows = torch.arange(0, n * beams, beams, device=base.device).unsqueeze(1)  # (N, 1) first beam

    for step in range(1, stages):
        # error of extending tuple b by codeword j: e_b + ||c_j||² - 2<x,c_j> + 2Σ_i<c_i,c_j>
        candidate_error = torch.add(base.unsqueeze(1), crossed, alpha=2.0,
                                    out=buffer_view(spare, crossed.shape))  # (N, B, MK)
        candidate_error = candidate_error.add_(error.unsqueeze(2))
        if step == stages - 1:
            parent, chosen = _best_extension(candidate_error)  # (N, 1) each
            best = path.gather(1, parent.unsqueeze(2).expand(n, 1, step))  # (N, 1, M-1)
            path = torch.cat([best, chosen.unsqueeze(2)], dim=2)  # (N, 1, M)
            break
        # the best B distinct sets among all extensions: the same as extending each beam by
        # its B nearest codewords and keeping the best distinct sets (the paper's search),
        # since an extension outside its beam's best B is beaten by B sets of that beam
        _drop_repeated_sets(candidate_error, path)
        candidate_error = candidate_error.view(n, beams * total)
        error, pick = k_smallest(candidate_error, min(beam_width, beams * total))  # (N, B')
        parent = pick.div(total, rounding_mode="floor") + rows  # (N, B') row of the beam
        chosen = pick.remainder(total)
        path = torch.cat([_gather_beams(path, parent), chosen.unsqueeze(2)], dim=2)
        # the candidate errors are spent: their buffer takes the new cross sums
        crossed = _gather_beams(crossed, parent, spare).add_(_gather_rows(cross, chosen, added))
        crossed_buffer, spare = spare, crossed_buffer
        if chosen.shape[1] != beams:
            beams = chosen.shape[1]
            rows = torch.arange(0, n * beams, beams, device=base.device).unsqueeze(1)

    # the best tuple (N, M); codebook m owns codewords m*K ... (m+1)*K - 1, so sorting
    # puts them in codebook order
    return path[:, 0].sort(dim=1).values.remainder_(entries)


def _best_extension(candidate_error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam and codeword (N, 1) each of the smallest of candidate_error (N, B, MK).

    The minimum over the beams first (a fast reduction), then the best codeword, then the
    beam that reaches it: the same as one argmin over all B*MK candidates, ties aside,
    which takes longer on a CPU for rows this short.
    """
    n, beams, _ = candidate_error.shape
    codeword = candidate_error.amin(dim=1).argmin(dim=1, keepdim=True)  # (N, 1)
    column = candidate_error.gather(2, codeword.view(n, 1, 1).expand(n, beams, 1))  # (N, B, 1)
    return column.view(n, beams).argmin(dim=1, keepdim=True), codeword


def _drop_repeated_sets(candidate_error: torch.Tensor, path: torch.Tensor) -> None:
    """Set to +inf, in place, each candidate whose set of codewords a better beam also reaches.

    candidate_error: (N, B, MK), candidate [b, j] extends beam b by codeword j.
    path: (N, B, t) codewords of each beam, best beam first, no two beams the same set.
    Beam b extended by j holds the same set as beam a extended by j' exactly when the
    sets of a and b differ in one codeword each (j = the one a holds, j' = the one b
    holds); the copy from the better beam a stays. Every other (a, b) pair writes to a
    candidate that adds a codeword b already holds, which is +inf anyway.
    """
    n, beams, size = path.shape
    if size == 1:  # single codewords: any two beams are one apart
        order = torch.arange(beams, device=path.device)
        first = torch.minimum(order.unsqueeze(1), order)  # (B, B): [b, a] -> min(a, b)
        column = path.view(n, beams).index_select(1, first.view(-1)).view(n, beams, beams)
    else:
        # codeword position first, so that every comparison and sum below runs over
        # contiguous (N, B, A) blocks rather than over the t codewords of one beam
        codewords = path.permute(2, 0, 1).contiguous()  # (t, N, B)
        # held[i, n, b, a]: codeword i of beam a is also held by beam b, (t, N, B, A)
        held = (codewords.view(size, 1, n, 1, beams)
                == codewords.view(1, size, n, beams, 1)).any(dim=1)
        missing = ~held
        better = torch.ones(beams, beams, dtype=torch.bool, device=path.device).tril_(-1)
        # (N, B, A), only a < b; counted in int8, not converted to int64
        one_apart = (missing.sum(dim=0, dtype=torch.int8) == 1) & better
        swapped_in = path[:, :, 0].unsqueeze(2)  # (N, B, A): a's codeword b lacks, where one
        for position in range(size):  # a selection, no int64 x bool products
            swapped_in = torch.where(missing[position], codewords[position].unsqueeze(1),
                                     swapped_in)
        column = torch.where(one_apart, swapped_in, path[:, :, 0].unsqueeze(2))
    candidate_error.scatter_(2, column, float("inf"))  # column (N, B, A): beam b's codeword


def k_smallest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values.topk(k, dim=1, largest=False)`` for values (N, C), ascending; faster for C >> k.

    Splits each row into C/g groups of g ≈ sqrt(C / k) values: the k smallest values lie
    in the k groups of smallest minimum, so the top-k runs over C/g group minima and then
    over k*g members instead of over all C values (ties may pick other equal values).
    """
    columns = values.shape[1]
    group = min(2 ** round(math.log2(max(columns / max(k, 1), 1)) / 2),
                columns & -columns)  # a power of two that divides C
    while group > 1 and columns // group < _MIN_STRIDE:  # groups with long strides
        group //= 2
    if group < _MIN_GROUP:
        return values.topk(k, dim=1, largest=False)
    stride = columns // group  # group i holds columns i, i + stride, i + 2*stride, ...
    minima = values.view(len(values), group, stride).amin(dim=1)  # (N, C/g)
    best_groups = minima.topk(k, dim=1, largest=False, sorted=False).indices  # (N, k)
    offsets = torch.arange(0, columns, stride, device=values.device)  # (g,)
    members = (best_groups.unsqueeze(2) + offsets).view(len(values), k * group)
    top, position = values.gather(1, members).topk(k, dim=1, largest=False)  # (N, k)
    return top, members.gather(1, position)


def _gather_beams(table: torch.Tensor, rows: torch.Tensor,
                  buffer: torch.Tensor | None = None) -> torch.Tensor:
    """The beams ``rows`` (N, B') of ``table`` (N, B, C) seen as (N*B, C): (N, B', C)."""
    n, beams, columns = table.shape
    return _gather_rows(table.reshape(n * beams, columns), rows, buffer)


def _gather_rows(table: torch.Tensor, index: torch.Tensor,
                 buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``table[index]`` for a 2-D table and (N, B) index, as one index_select: (N, B, C).

    Written into the front of ``buffer`` (1-D, large enough) when one is given.
    """
    shape = (index.numel(), table.shape[1])
    out = buffer_view(buffer, shape)
    return torch.index_select(table, 0, index.reshape(-1), out=out).view(*index.shape, shape[1])


def cross_table(codewords: torch.Tensor, num_stages: int,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norms (M*K,) and inner products (M*K, M*K) of the codewords, the latter
    written into ``out`` where given.

    The inner products between codewords of the same codebook are set to +inf.
    """
    cross = torch.mm(codewords, codewords.t(), out=out)
    norms = cross.diagonal().clone()
    entries = len(codewords) // num_stages
    blocks = cross.view(num_stages, entries, num_stages, entries)
    blocks.diagonal(dim1=0, dim2=2).fill_(float("inf"))  # the (K, K) blocks of codebook m, m
    return norms, cross
