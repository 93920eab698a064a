"""sum_rows (stochastic_vq_core.row_sums) against the sum of gathered rows."""

import pytest
import torch

from stochastic_vq_core import row_sums
from stochastic_vq_core.row_sums import _SumRows, sum_rows


def reference(table, indices):
    return table[indices].sum(dim=1)  # (N, M, d) -> (N, d)


@pytest.mark.parametrize("n, m", [(0, 3), (1, 1), (50, 4)])
def test_values_and_gradient_match_gathered_rows(n, m):
    g = torch.Generator().manual_seed(n + m)
    table = torch.randn(12, 5, generator=g, requires_grad=True)
    indices = torch.randint(0, 12, (n, m), generator=g)  # repeats within a row included
    weights = torch.randn(n, 5, generator=g)
    out = sum_rows(table, indices)
    assert out.shape == (n, 5) and out.dtype == table.dtype
    (out * weights).sum().backward()
    mine = table.grad.clone()
    table.grad = None
    expected = reference(table, indices)
    (expected * weights).sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(mine, table.grad, atol=1e-6)


def test_gradcheck_in_float64():
    table = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[0, 7], [3, 3], [5, 1]])
    assert torch.autograd.gradcheck(lambda t: sum_rows(t, indices), (table,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m, d", [(64, 3, 128), (50, 7, 5), (9, 16, 3), (300, 4, 64)])
def test_small_and_large_batches_give_the_same_bits(n, m, d, dtype):
    # below GATHERED_AT_ONCE entries the rows are gathered at once; the bits of the sums
    # and of the gradient must not depend on the way
    g = torch.Generator().manual_seed(n * m * d)
    table = torch.randn(3 * m, d, generator=g, dtype=dtype, requires_grad=True)
    indices = torch.randint(0, 3 * m, (n, m), generator=g)  # repeats across columns too
    weights = torch.randn(n, d, generator=g, dtype=dtype)
    gathered = n * m * d <= row_sums.GATHERED_AT_ONCE
    assert gathered == (n < 300)
    out = sum_rows(table, indices)
    (grad,) = torch.autograd.grad((out * weights).sum(), table)
    expected = _SumRows.apply(table, indices)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), table)
    assert torch.equal(out, expected) and torch.equal(grad, expected_grad)
