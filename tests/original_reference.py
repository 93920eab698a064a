"""Slow, obvious reference quantizers, written out from SPEC.md, to test the fast ones against.

Everything here works on plain float64 NumPy arrays, one vector at a time where that is
clearer, and favours readability over speed:

- ``pvq_exhaustive`` / ``rvq_exhaustive``: nearest codeword by comparing with every codeword.
- ``avq_exhaustive``: the best of all K**M tuples (itertools.product).
- ``avq_beam_search``: the beam search of SPEC "AVQ", step by step with explicit residuals,
  duplicates removed as sets.
- ``avq_beam_search_original``: the public implementation's flawed search as SPEC describes
  it (residual = x minus the latest codeword t+1 times; order-permuted duplicates kept).

Codebooks are passed as an (M, K, d) array in every function; for AVQ, d = D.
"""

from __future__ import annotations

import itertools

import numpy as np


def as_numpy(tensor) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().double().numpy()
    return np.array(tensor, dtype=np.float64)


def squared_distance(x: np.ndarray, codewords: np.ndarray) -> np.ndarray:
    """||x - c||² for one vector x (d,) and every row c of codewords (n, d) -> (n,)."""
    diff = codewords - x[None, :]
    return (diff * diff).sum(axis=1)


def pvq_exhaustive(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Product VQ: x (N, D), codebooks (M, K, D/M) -> codes (N, M)."""
    stages, _, sub_dim = codebooks.shape
    codes = np.zeros((len(x), stages), dtype=np.int64)
    for n, vector in enumerate(x):
        for stage in range(stages):
            part = vector[stage * sub_dim:(stage + 1) * sub_dim]
            codes[n, stage] = int(np.argmin(squared_distance(part, codebooks[stage])))
    return codes


def rvq_exhaustive(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Residual VQ: x (N, D), codebooks (M, K, D) -> codes (N, M)."""
    stages = codebooks.shape[0]
    codes = np.zeros((len(x), stages), dtype=np.int64)
    for n, vector in enumerate(x):
        residual = vector.copy()
        for stage in range(stages):
            index = int(np.argmin(squared_distance(residual, codebooks[stage])))
            codes[n, stage] = index
            residual = residual - codebooks[stage, index]
    return codes


def avq_decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Sum of one codeword per codebook: codes (N, M) -> (N, D)."""
    stages = codebooks.shape[0]
    return sum(codebooks[stage, codes[:, stage]] for stage in range(stages))


def avq_error(x: np.ndarray, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Squared reconstruction error of each vector, (N,)."""
    diff = x - avq_decode(codes, codebooks)
    return (diff * diff).sum(axis=1)


def avq_exhaustive(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """The best of all K**M tuples for every vector: x (N, D) -> codes (N, M)."""
    stages, entries, _ = codebooks.shape
    tuples = np.array(list(itertools.product(range(entries), repeat=stages)))  # (K**M, M)
    sums = avq_decode(tuples, codebooks)  # (K**M, D)
    codes = np.zeros((len(x), stages), dtype=np.int64)
    for n, vector in enumerate(x):
        codes[n] = tuples[int(np.argmin(squared_distance(vector, sums)))]
    return codes


def _tuple_error(x: np.ndarray, chosen, codebooks: np.ndarray) -> float:
    """||x - Σ chosen||² for chosen a collection of (stage, index) pairs."""
    residual = x - sum(codebooks[stage, index] for stage, index in chosen)
    return float(residual @ residual)


def _nearest_unused(residual: np.ndarray, used_stages, codebooks: np.ndarray, count: int):
    """The ``count`` codewords of not yet used codebooks nearest to ``residual``.

    Returns a list of (stage, index) pairs, nearest first (stable order at ties).
    """
    stages, entries, _ = codebooks.shape
    options = [(stage, index) for stage in range(stages) if stage not in used_stages
               for index in range(entries)]
    free = [stage for stage in range(stages) if stage not in used_stages]
    distances = squared_distance(residual, codebooks[free].reshape(len(free) * entries, -1))
    order = np.argsort(distances, kind="stable")[:count]
    return [options[k] for k in order]


def _to_codes(chosen, stages: int) -> np.ndarray:
    codes = np.full(stages, -1, dtype=np.int64)
    for stage, index in chosen:
        codes[stage] = index
    return codes


def avq_beam_search(x: np.ndarray, codebooks: np.ndarray, beam_width: int) -> np.ndarray:
    """The beam search of SPEC "AVQ", written out plainly: x (N, D) -> codes (N, M).

    A beam entry is a frozenset of (stage, index) pairs; its residual is x minus the sum of
    all its codewords; candidates holding the same set are one candidate.
    """
    stages = codebooks.shape[0]
    codes = np.zeros((len(x), stages), dtype=np.int64)
    for n, vector in enumerate(x):
        first = _nearest_unused(vector, set(), codebooks, beam_width)
        beam = [frozenset([pair]) for pair in first]
        for _ in range(1, stages):
            candidates = set()
            for chosen in beam:
                residual = vector - sum(codebooks[s, i] for s, i in chosen)
                used_stages = {s for s, _ in chosen}
                for pair in _nearest_unused(residual, used_stages, codebooks, beam_width):
                    candidates.add(chosen | {pair})
            scored = sorted(candidates, key=lambda c: (_tuple_error(vector, c, codebooks),
                                                       sorted(c)))
            beam = scored[:beam_width]
        codes[n] = _to_codes(beam[0], stages)
    return codes


def avq_beam_search_original(x: np.ndarray, codebooks: np.ndarray,
                             beam_width: int) -> np.ndarray:
    """The public implementation's flawed beam search, as SPEC "AVQ" describes it.

    Two differences from ``avq_beam_search``: at extension step t (t = 0, 1, ...) the
    residual is x minus the most recently added codeword taken t+1 times (instead of x
    minus the sum of all chosen codewords), and tuples holding the same codewords in a
    different order are all kept in the beam. Candidates are still ranked by their true
    reconstruction error. x (N, D) -> codes (N, M).
    """
    stages = codebooks.shape[0]
    codes = np.zeros((len(x), stages), dtype=np.int64)
    for n, vector in enumerate(x):
        first = _nearest_unused(vector, set(), codebooks, beam_width)
        beam = [(pair,) for pair in first]  # ordered tuples, duplicates allowed
        for step in range(stages - 1):
            candidates = []
            for chosen in beam:
                stage, index = chosen[-1]
                residual = vector - (step + 1) * codebooks[stage, index]
                used_stages = {s for s, _ in chosen}
                for pair in _nearest_unused(residual, used_stages, codebooks, beam_width):
                    candidates.append(chosen + (pair,))
            errors = np.array([_tuple_error(vector, c, codebooks) for c in candidates])
            beam = [candidates[k] for k in np.argsort(errors, kind="stable")[:beam_width]]
        codes[n] = _to_codes(beam[0], stages)
    return codes
