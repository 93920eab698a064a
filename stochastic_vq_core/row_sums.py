"""``sum_rows``: per vector, the sum of the table rows its indices name, differentiable in
the table, without an (N, M, d) temporary of the chosen rows where that is large."""

from __future__ import annotations

import torch
from torch.nn import functional as F

GATHERED_AT_ONCE = 2**15  # entries of the chosen rows up to which they are gathered at once


class _SumRows(torch.autograd.Function):
    """Forward by an embedding bag; backward adds the gradient into the table's rows one
    column of indices at a time (faster on a CPU than the bag's own backward)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.table_rows = len(table)
        return F.embedding_bag(indices, table, mode="sum")  # (N, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (indices,) = ctx.saved_tensors  # (N, M)
        grad_table = grad.new_zeros(ctx.table_rows, grad.shape[1])  # (R, d)
        for column in indices.unbind(dim=1):
            grad_table.index_add_(0, column, grad)
        return grad_table, None


def sum_rows(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, d): for each row of indices (N, M) int64, the sum of the M rows of table (R, d)
    it names. Differentiable in table.

    Small batches gather the chosen rows column by column in one index_select and add them
    up in order, which autograd differentiates without ``_SumRows``' Python backward (a
    cost that shows in a small batch's step); the same additions in the same order, so
    both give the same bits.
    """
    (rows, columns), width = indices.shape, table.shape[1]
    if not 0 < rows * columns * width <= GATHERED_AT_ONCE:
        return _SumRows.apply(table, indices)
    chosen = table.index_select(0, indices.t().reshape(-1)).view(columns, rows, width)  # (M, N, d)
    out, *others = chosen.unbind(0)
    for column in others:
        out = out + column
    return out
