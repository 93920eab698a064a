"""Nearest-row search and k-means, for the data-dependent initialisation of codebooks."""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2**20  # largest temporary of a nearest-codeword search on a CPU (cache-sized)


def nearest_rows(points: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest row of table (K, d) for each point (N, d), in chunks."""
    norms = table.pow(2).sum(1)  # (K,)
    rows = max(1, CHUNK_ELEMENTS // len(table))
    nearest = [torch.addmm(norms, chunk, table.t(), alpha=-2.0).argmin(dim=1)
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
