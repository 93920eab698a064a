"""Computational complexity of AVQ, RVQ and PVQ encoding, in WMOPS (ITU-T G.191).

Operations needed to quantize ONE vector are counted with the model of Vali & Bäckström
(ICASSP 2023) and weighted as in the ITU-T G.191 basic operators: addition, multiplication
and move weigh 1 each and a branch 4 (double precision: 2, 2, 2 and 4). The result is the
weighted sum divided by 1e6, i.e. weighted million operations per quantized vector, which
equals WMOPS when one vector is quantized per second (multiply by the vector rate, e.g. the
frames per second of a codec, for the WMOPS of a real-time system).

The default model is the paper's and reproduces its Figures 4c and 6b: its RVQ and PVQ
loops run over M-1 stages only. ``count_all_stages=True`` corrects this by counting all M
stages; it is never the default.

Notation: D = ``input_dim``, K = ``num_codebooks`` (entries per codebook, the original's
name), M = ``num_stages``, bw = ``beam_width``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb
from numbers import Integral

from stochastic_vq_core.rules import check_divisible

SINGLE_PRECISION_WEIGHTS = (1, 1, 1, 4)  # addition, multiplication, move, branch
DOUBLE_PRECISION_WEIGHTS = (2, 2, 2, 4)


@dataclass(frozen=True)
class Ops:
    """Numbers of basic operations; supports ``ops + ops`` and ``n * ops``."""

    additions: int = 0
    multiplications: int = 0
    moves: int = 0
    branches: int = 0

    def __add__(self, other: Ops) -> Ops:
        return Ops(
            self.additions + other.additions,
            self.multiplications + other.multiplications,
            self.moves + other.moves,
            self.branches + other.branches,
        )

    def __rmul__(self, times: int) -> Ops:
        return Ops(
            times * self.additions,
            times * self.multiplications,
            times * self.moves,
            times * self.branches,
        )

    def weighted(self, weights: tuple[int, int, int, int]) -> int:
        """Weighted sum with ``weights`` for (addition, multiplication, move, branch)."""
        counts = (self.additions, self.multiplications, self.moves, self.branches)
        return sum(w * c for w, c in zip(weights, counts))


def distance(n: int, d: int) -> Ops:
    """Squared distances of one vector to ``n`` codewords of dimension ``d``:
    per codeword ``d`` subtractions, ``d`` squares and ``d-1`` additions."""
    return Ops(additions=n * (2 * d - 1), multiplications=n * d)


def argmin(n: int) -> Ops:
    """Index of the smallest of ``n`` values: ``n-1`` comparisons (additions) and
    ``n-1`` moves of the running minimum."""
    return Ops(additions=n - 1, moves=n - 1)


def sort_select(s: int, n: int) -> Ops:
    """The ``s`` smallest of ``n`` values by repeated argmin over n, n-1, ..., n-s+1."""
    total = Ops()
    for remaining in range(n, n - s, -1):
        total = total + argmin(remaining)
    return total


def mse(n: int, d: int) -> Ops:
    """Reconstruction error of ``n`` candidates of dimension ``d``: per candidate the
    distance (``2d-1`` additions, ``d`` multiplications) and one normalising multiply."""
    return Ops(additions=n * (2 * d - 1), multiplications=n * (d + 1))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _VQComplexity:
    """Shared validation, weighting and reporting; subclasses implement ``_count``."""

    def __init__(
        self, input_dim: int, num_codebooks: int, num_stages: int, single_precision: bool
    ) -> None:
        self.input_dim = _positive_int("input_dim", input_dim)
        self.num_codebooks = _positive_int("num_codebooks", num_codebooks)
        self.num_stages = _positive_int("num_stages", num_stages)
        self.single_precision = bool(single_precision)

    @property
    def weights(self) -> tuple[int, int, int, int]:
        """G.191 weights of (addition, multiplication, move, branch) for this precision."""
        return SINGLE_PRECISION_WEIGHTS if self.single_precision else DOUBLE_PRECISION_WEIGHTS

    def _count(self) -> Ops:
        raise NotImplementedError

    def operation_counts(self) -> dict[str, int]:
        """Operations per quantized vector: ``additions``, ``multiplications``, ``moves``,
        ``branches`` and their ``weighted_total``."""
        ops = self._count()
        return {**asdict(ops), "weighted_total": ops.weighted(self.weights)}

    def wmops(self) -> float:
        """Complexity in WMOPS: weighted operations per quantized vector / 1e6."""
        return self._count().weighted(self.weights) / 1e6

    def complexity_calculator(self) -> float:
        """``wmops()`` under the original implementation's name."""
        return self.wmops()


class AVQ_Complexity(_VQComplexity):
    """Additive VQ encoded by the paper's per-beam search.

    First step: distances to all M*K codewords, select the bw nearest. Then, for
    i = 1 ... M-1, for every beam: build the residual, find the bw nearest codewords among
    the (M-i)*K of unused codebooks, score the bw**2 candidates by their true error and keep
    the best bw (the best one after the last iteration). All M stages are counted.

    This is the count of the search as the paper describes it, which produced its Figures
    4c and 6b. ``additive_vq.py`` finds the same tuples with another algorithm (errors from
    tables of inner products, one top-k over all extensions), whose operation count differs.

    Args:
        input_dim: D, dimension of the vectors.
        num_codebooks: K, entries per codebook (2**bits per stage).
        num_stages: M, number of codebooks.
        beam_width: bw, partial solutions kept per step; at most K.
        single_precision: G.191 single (True) or double precision weights.
    """

    def __init__(
        self,
        input_dim: int,
        num_codebooks: int,
        num_stages: int,
        beam_width: int,
        single_precision: bool = True,
    ) -> None:
        super().__init__(input_dim, num_codebooks, num_stages, single_precision)
        self.beam_width = _positive_int("beam_width", beam_width)
        if self.beam_width > self.num_codebooks:
            raise ValueError(
                f"beam_width ({self.beam_width}) must not exceed num_codebooks, the entries "
                f"per codebook ({self.num_codebooks})"
            )

    def _count(self) -> Ops:
        d, k, m, bw = self.input_dim, self.num_codebooks, self.num_stages, self.beam_width
        total = distance(m * k, d) + sort_select(bw, m * k) + Ops(moves=bw)
        for i in range(1, m):
            total = (
                total
                + Ops(additions=i * bw * d, moves=i * bw * d)  # residual of each beam
                + Ops(branches=comb(m, i) - 1)  # the paper's C(M, i) - 1 codebook-subset branches
                + bw * (distance((m - i) * k, d) + sort_select(bw, (m - i) * k))
                + Ops(moves=bw**2 + bw**2 * d)  # gather the bw**2 candidates
                + Ops(additions=bw**2 * i * d)  # sum of their codewords
                + mse(bw**2, d)
            )
            if i == m - 1:
                total = total + argmin(bw**2)
            else:
                total = total + sort_select(bw, bw**2) + Ops(moves=bw)
        return total


class _StagedComplexity(_VQComplexity):
    """RVQ and PVQ: a loop over the stages, M-1 times in the paper's model."""

    def __init__(
        self,
        input_dim: int,
        num_codebooks: int,
        num_stages: int,
        single_precision: bool = True,
        *,
        count_all_stages: bool = False,
    ) -> None:
        super().__init__(input_dim, num_codebooks, num_stages, single_precision)
        self.count_all_stages = bool(count_all_stages)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Raise ValueError for sizes the method cannot use (after the generic checks)."""

    @property
    def stage_loops(self) -> int:
        """Stages counted: M-1 as in the paper's figures, or M with ``count_all_stages``."""
        return self.num_stages if self.count_all_stages else self.num_stages - 1


class RVQ_Complexity(_StagedComplexity):
    """Residual VQ: nearest codeword of each stage to the remaining residual.

    Per stage: distances to K codewords of dimension D, argmin, D moves (the chosen
    codeword) and D additions for the new residual (not after the last stage); then
    (M-1)*D additions to sum the chosen codewords.

    Args:
        input_dim: D, dimension of the vectors.
        num_codebooks: K, entries per codebook (2**bits per stage).
        num_stages: M, number of codebooks.
        single_precision: G.191 single (True) or double precision weights.
        count_all_stages: the paper's model (default, False) counts the stage loop M-1
            times, which is what its Figures 4c and 6b show; True counts all M stages,
            the corrected complexity of the algorithm.
    """

    def _count(self) -> Ops:
        d, k, m = self.input_dim, self.num_codebooks, self.num_stages
        loops = self.stage_loops
        total = Ops()
        for i in range(1, loops + 1):
            total = total + distance(k, d) + argmin(k) + Ops(moves=d)
            if i != loops:
                total = total + Ops(additions=d)  # residual for the next stage
        return total + Ops(additions=(m - 1) * d)


class PVQ_Complexity(_StagedComplexity):
    """Product VQ: each of M sub-vectors of dimension D/M quantized in its own codebook.

    D moves to split the vector; per sub-vector: distances to K codewords of dimension
    D/M, argmin and D/M moves; D moves to concatenate.

    Args:
        input_dim: D, dimension of the vectors; divisible by ``num_stages``.
        num_codebooks: K, entries per codebook (2**bits per stage).
        num_stages: M, number of codebooks (sub-vectors).
        single_precision: G.191 single (True) or double precision weights.
        count_all_stages: the paper's model (default, False) counts M-1 sub-vectors,
            which is what its Figures 4c and 6b show; True counts all M.
    """

    def _check_sizes(self) -> None:
        check_divisible("input_dim", self.input_dim, "num_stages", self.num_stages)

    def _count(self) -> Ops:
        d, k, m = self.input_dim, self.num_codebooks, self.num_stages
        loops = self.stage_loops
        sub_vector = distance(k, d // m) + argmin(k) + Ops(moves=d // m)
        return Ops(moves=d) + loops * sub_vector + Ops(moves=d)
