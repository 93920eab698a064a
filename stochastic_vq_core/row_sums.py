"""``sum_rows``: per vector, the sum of the table rows its indices name, differentiable in
the table, without an (N, M, d) temporary of the chosen rows."""

from __future__ import annotations

import torch
from torch.nn import functional as F


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
    it names. Differentiable in table."""
    return _SumRows.apply(table, indices)
