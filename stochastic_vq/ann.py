"""Approximate nearest neighbour (ANN) search with a trained AVQ, PVQ or RVQ.

The database is stored as codes (one index per codebook) and searched with asymmetric
distance computation (ADC): the query stays exact, the database vectors are the decoded
(quantized) ones, and the distances come from lookup tables, never from decoding.

Each quantizer gives its own tables (``search_tables``) and the distances from their sums
(``table_distances``):

- PVQ: per-subspace tables ``T[m, k] = ||q_m - c_mk||²``; the distance to a database
  vector is ``Σ_m T[m, code_m]``.
- RVQ and AVQ: ``||q - Σ_m c_m||² = ||q||² - 2 Σ_m <q, c_m> + ||Σ_m c_m||²`` with
  per-codebook inner-product tables ``T[m, k] = <q, c_mk>`` and the squared norm of each
  decoded database vector computed once, when the database is encoded.

Recall@T (the paper's Figures 5 and 6a) is the fraction of queries whose true nearest
neighbour is among the T nearest database vectors by ADC distance.

File formats of the SIFT1M/GIST1M corpora (``.fvecs``, ``.ivecs``, ``.bvecs``): every vector
is stored as its dimension (int32, little endian) followed by its entries (float32, int32
or uint8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stochastic_vq_core.quantizer import VectorQuantizer

SEARCH_ELEMENTS = 2**24  # bound on the (queries x database) block scored at once

_FORMATS = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}


# --- .fvecs / .ivecs / .bvecs ------------------------------------------------------------

def read_vecs(path: str | Path, count: int | None = None) -> torch.Tensor:
    """Read a ``.fvecs`` (float32), ``.ivecs`` (int32) or ``.bvecs`` (uint8) file.

    Args:
        path: the file; the suffix gives the entry type.
        count: read only the first ``count`` vectors (None: all).

    Returns:
        (N, D) tensor of the file's entry type.
    """
    path = Path(path)
    dtype = np.dtype(_dtype(path))
    header = np.fromfile(path, dtype="<i4", count=1)
    if len(header) == 0:
        return torch.from_numpy(np.zeros((0, 0), dtype=dtype))
    dim = int(header[0])
    row_bytes = 4 + dim * dtype.itemsize
    size = path.stat().st_size
    if dim <= 0 or size % row_bytes:
        raise ValueError(f"{path} is not a valid {path.suffix} file (dimension {dim}, "
                         f"{size} bytes)")
    rows = size // row_bytes if count is None else min(count, size // row_bytes)
    raw = np.fromfile(path, dtype=np.uint8, count=rows * row_bytes).reshape(rows, row_bytes)
    if not (raw[:, :4].copy().view("<i4") == dim).all():
        raise ValueError(f"{path}: vectors of different dimensions are not supported")
    data = raw[:, 4:].copy().view(dtype.newbyteorder("<")).astype(dtype)
    return torch.from_numpy(data)


def write_vecs(path: str | Path, vectors: torch.Tensor | np.ndarray) -> None:
    """Write (N, D) vectors to ``.fvecs``, ``.ivecs`` or ``.bvecs`` (by suffix)."""
    path = Path(path)
    dtype = np.dtype(_dtype(path)).newbyteorder("<")
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ValueError(f"vectors must have shape (N, D), got {array.shape}")
    rows, dim = array.shape
    out = np.empty((rows, 4 + dim * dtype.itemsize), dtype=np.uint8)
    out[:, :4] = np.full((rows, 1), dim, dtype="<i4").view(np.uint8)
    out[:, 4:] = np.ascontiguousarray(array.astype(dtype)).view(np.uint8).reshape(rows, -1)
    out.tofile(path)


def _dtype(path: Path):
    if path.suffix not in _FORMATS:
        raise ValueError(f"unknown vector file type {path.suffix!r}; "
                         f"expected one of {sorted(_FORMATS)}")
    return _FORMATS[path.suffix]


# --- encoding and ADC search -------------------------------------------------------------

@dataclass
class EncodedDatabase:
    """A database stored as codes.

    Attributes:
        codes: (N, M) int64, one codeword index per codebook.
        norms: (N,) float32, squared norm of each decoded vector ``||Σ_m c_m||²``
            (used by the RVQ/AVQ distance; unused for PVQ).
    """

    codes: torch.Tensor
    norms: torch.Tensor

    def __len__(self) -> int:
        return len(self.codes)


@torch.no_grad()
def encode_database(quantizer: VectorQuantizer, base: torch.Tensor,
                    batch_size: int = 65536) -> EncodedDatabase:
    """Encode database vectors base (N, D) with any of AVQ, PVQ, RVQ, batch by batch."""
    device = quantizer.codebooks.device
    codes, norms = [], []
    for chunk in base.split(batch_size):
        chunk_codes = quantizer.encode(chunk.to(device, torch.float32))  # (n, M)
        codes.append(chunk_codes.cpu())
        norms.append(quantizer.decode(chunk_codes).pow(2).sum(1).cpu())
    if not codes:
        return EncodedDatabase(torch.zeros(0, quantizer.num_stages, dtype=torch.long),
                               torch.zeros(0))
    return EncodedDatabase(torch.cat(codes), torch.cat(norms))


def adc_distances(quantizer: VectorQuantizer, tables: torch.Tensor, queries: torch.Tensor,
                  database: EncodedDatabase) -> torch.Tensor:
    """Squared distances (Q, N) from exact queries (Q, D) to the decoded database, by lookup.

    tables: (Q, M, K) from ``quantizer.search_tables`` (on the CPU).
    """
    total = torch.zeros(len(tables), len(database))  # (Q, N)
    for m in range(tables.shape[1]):
        total += tables[:, m, :].index_select(1, database.codes[:, m])
    return quantizer.table_distances(total, queries.cpu(), database.norms)


@torch.no_grad()
def adc_search(quantizer: VectorQuantizer, database: EncodedDatabase, queries: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest database vectors of each query by asymmetric distance.

    Args:
        quantizer: the AVQ, PVQ or RVQ that encoded ``database``.
        database: from ``encode_database``.
        queries: (Q, D) exact query vectors.
        k: neighbours to return (at most ``len(database)``).

    Returns:
        (distances, indices): (Q, k) float32 squared distances, ascending, and (Q, k)
        int64 database indices.
    """
    k = min(k, len(database))
    rows = max(1, SEARCH_ELEMENTS // max(1, len(database)))
    distances, indices = [], []
    for chunk in queries.split(rows):
        tables = quantizer.search_tables(chunk).cpu()  # (q, M, K)
        found = adc_distances(quantizer, tables, chunk, database).topk(k, dim=1, largest=False)
        distances.append(found.values)
        indices.append(found.indices)
    return torch.cat(distances), torch.cat(indices)


@torch.no_grad()
def exact_search(base: torch.Tensor, queries: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force k nearest neighbours: (Q, k) squared distances and (Q, k) indices."""
    base = base.float()
    k = min(k, len(base))
    norms = base.pow(2).sum(1)  # (N,)
    rows = max(1, SEARCH_ELEMENTS // max(1, len(base)))
    distances, indices = [], []
    for chunk in queries.float().split(rows):
        d = torch.addmm(norms, chunk, base.t(), alpha=-2.0) + chunk.pow(2).sum(1, keepdim=True)
        found = d.topk(k, dim=1, largest=False)
        distances.append(found.values)
        indices.append(found.indices)
    return torch.cat(distances), torch.cat(indices)


def recall_at(found: torch.Tensor, true_nearest: torch.Tensor,
              ranks: list[int]) -> list[float]:
    """Recall@T for each T in ``ranks``.

    Args:
        found: (Q, k) database indices ranked by the approximate search, nearest first.
        true_nearest: (Q,) index of each query's true nearest neighbour.
        ranks: the values of T (each <= k).

    Returns:
        For each T, the fraction of queries whose true nearest neighbour is among the
        first T entries of ``found``.
    """
    if max(ranks) > found.shape[1]:
        raise ValueError(f"T = {max(ranks)} exceeds the {found.shape[1]} neighbours found")
    hit = found == true_nearest.reshape(-1, 1).to(found.dtype)  # (Q, k)
    first = torch.where(hit.any(1), hit.float().argmax(1), found.shape[1])  # rank of the hit
    return [float((first < t).double().mean()) for t in ranks]
