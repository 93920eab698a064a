"""Nearest-row search (shared by the quantizers' searches) and k-means, for the
data-dependent initialisation of codebooks."""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2**20  # largest temporary of a nearest-codeword search on a CPU (cache-sized)
ARGMIN_BLOCKS = 32  # on a CPU, K >= 4 * 32 distances are reduced in 32 blocks (first_argmin)


def _blocked(size: int, device: torch.device) -> bool:
    """Whether ``first_argmin`` reduces ``size`` distances per vector in blocks."""
    return device.type == "cpu" and size >= 4 * ARGMIN_BLOCKS and size % ARGMIN_BLOCKS == 0


def search_layout(table: torch.Tensor, dim: int) -> torch.Tensor:
    """``table`` with its K entries along ``dim`` in the order ``first_argmin`` reads them:
    entry ``b * J + j`` (J = K / ARGMIN_BLOCKS) at position ``j * ARGMIN_BLOCKS + b``, so
    that each block b of J consecutive entries is one strided column. Unchanged where
    ``first_argmin`` is a plain argmin (small K, or not on a CPU)."""
    size = table.shape[dim]
    if not _blocked(size, table.device):
        return table
    dim %= table.dim()
    return (table.unflatten(dim, (ARGMIN_BLOCKS, size // ARGMIN_BLOCKS))
            .transpose(dim, dim + 1).flatten(dim, dim + 1))


def first_argmin(distances: torch.Tensor) -> torch.Tensor:
    """Index (...) of the smallest of distances (..., K), computed against a table in
    ``search_layout``: the same index as ``argmin`` over the entries in their own order,
    the first one on ties and the first NaN if any.

    A CPU argmin compares one entry at a time; here the minimum over the J members of all
    blocks at once (a vectorised min over columns) picks the first block that holds the
    smallest value, and an argmin over that block's J members the entry, so that most
    comparisons are vectorised.
    """
    size = distances.shape[-1]
    if not _blocked(size, distances.device):
        return distances.argmin(dim=-1)
    members = size // ARGMIN_BLOCKS
    grid = distances.unflatten(-1, (members, ARGMIN_BLOCKS))  # (..., J, B): [j, b] = b*J + j
    block = grid.amin(dim=-2).argmin(dim=-1, keepdim=True)  # (..., 1)
    column = grid.gather(-1, block.unsqueeze(-1).expand(*grid.shape[:-1], 1))  # (..., J, 1)
    return block.squeeze(-1) * members + column.squeeze(-1).argmin(dim=-1)


def nearest_rows(points: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest row of table (K, d) for each point (N, d), in chunks."""
    table = search_layout(table, 0)
    norms = table.pow(2).sum(1)  # (K,)
    rows = max(1, CHUNK_ELEMENTS // len(table))
    nearest = [first_argmin(torch.addmm(norms, chunk, table.t(), alpha=-2.0))
               for chunk in points.split(rows)]
    return torch.cat(nearest) if nearest else points.new_zeros(0, dtype=torch.long)


def kmeans(points: torch.Tensor, k: int, iterations: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """k centroids (k, d) of points (N, d): k random points refined by Lloyd iterations.

    With fewer than k points, points are drawn with replacement. An empty cluster keeps
    its previous centroid.
    """
    n = len(points)
    if n >= k:
        pick = torch.randperm(n, generator=generator)[:k]
    else:
        pick = torch.randint(n, (k,), generator=generator)
    centroids = points[pick.to(points.device)].clone()
    for _ in range(iterations):
        nearest = nearest_rows(points, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=k).unsqueeze(1)  # (k, 1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids
