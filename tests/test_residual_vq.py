"""RVQ: stage-by-stage nearest-codeword search against the exhaustive reference; layout."""

import pytest
import torch

from original_reference import as_numpy, rvq_exhaustive
from residual_vq import RVQ


def random_rvq(stages, bits, dim, scale=1.0):
    """An RVQ whose codebooks are N(0, scale²), each stage a little smaller, as trained ones."""
    vq = RVQ(stages, bits, dim)
    decay = 0.6 ** torch.arange(stages, dtype=torch.float32).reshape(-1, 1, 1)
    with torch.no_grad():
        vq.codebooks.copy_(scale * decay * torch.randn(vq.codebooks.shape))
    return vq


@pytest.mark.parametrize("stages, bits, dim", [(1, 3, 4), (2, 4, 8), (4, 2, 6), (3, 5, 12),
                                               (6, 1, 3), (4, 7, 16)])
@pytest.mark.parametrize("scale", [1.0, 0.05])
def test_encode_equals_exhaustive_search(stages, bits, dim, scale):
    vq = random_rvq(stages, bits, dim, scale)
    x = scale * torch.randn(200, dim)
    codes = vq.encode(x)
    assert codes.dtype == torch.int64
    expected = torch.from_numpy(rvq_exhaustive(as_numpy(x), as_numpy(vq.codebooks)))
    assert torch.equal(codes, expected)


def test_layout_output_is_sum_of_stage_codewords():
    vq = random_rvq(3, 2, 5)
    assert vq.codebooks.shape == (3, 4, 5)
    codes = torch.tensor([[0, 1, 2], [3, 0, 3]])
    table = vq.codebooks.detach()
    expected = torch.stack([table[0, 0] + table[1, 1] + table[2, 2],
                            table[0, 3] + table[1, 0] + table[2, 3]])
    torch.testing.assert_close(vq.decode(codes), expected)


def test_first_stage_is_nearest_codeword_of_first_codebook():
    vq = random_rvq(3, 4, 6)
    x = torch.randn(100, 6)
    nearest = torch.cdist(x, vq.codebooks.detach()[0]).argmin(dim=1)
    assert torch.equal(vq.encode(x)[:, 0], nearest)


def test_more_stages_reduce_the_error():
    torch.manual_seed(3)
    vq = random_rvq(4, 4, 8, scale=0.5)
    x = torch.randn(300, 8)
    codes = vq.encode(x)
    table = vq.codebooks.detach()
    errors = []
    for used in range(1, 5):
        partial = sum(table[s, codes[:, s]] for s in range(used))
        errors.append((x - partial).pow(2).sum(1).mean())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
