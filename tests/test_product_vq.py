"""PVQ: nearest-codeword search per sub-vector against the exhaustive reference; layout."""

import pytest
import torch

from original_reference import as_numpy, pvq_exhaustive
from product_vq import PVQ


def random_pvq(stages, bits, dim, scale=1.0):
    """A PVQ whose codebooks are N(0, scale²) instead of the tiny uniform initialisation."""
    vq = PVQ(stages, bits, dim)
    with torch.no_grad():
        vq.codebooks.copy_(scale * torch.randn(vq.codebooks.shape))
    return vq


@pytest.mark.parametrize("stages, bits, dim", [(1, 3, 4), (2, 4, 8), (4, 2, 8), (3, 5, 12),
                                               (8, 1, 8), (4, 7, 16)])
@pytest.mark.parametrize("scale", [1.0, 0.05])
def test_encode_equals_exhaustive_search(stages, bits, dim, scale):
    vq = random_pvq(stages, bits, dim, scale)
    x = scale * torch.randn(200, dim)
    codes = vq.encode(x)
    assert codes.dtype == torch.int64
    expected = torch.from_numpy(pvq_exhaustive(as_numpy(x), as_numpy(vq.codebooks)))
    assert torch.equal(codes, expected)


def test_layout_sub_vectors_use_their_own_codebook():
    vq = random_pvq(3, 2, 6)
    assert vq.codebooks.shape == (3, 4, 2)
    codes = torch.tensor([[0, 1, 2], [3, 0, 3]])
    table = vq.codebooks.detach()
    expected = torch.stack([torch.cat([table[0, 0], table[1, 1], table[2, 2]]),
                            torch.cat([table[0, 3], table[1, 0], table[2, 3]])])
    assert torch.equal(vq.decode(codes), expected)


def test_changing_one_sub_vector_changes_only_its_code():
    vq = random_pvq(4, 3, 8)
    x = torch.randn(50, 8)
    y = x.clone()
    y[:, 2:4] = torch.randn(50, 2) * 3
    assert torch.equal(vq.encode(x)[:, [0, 2, 3]], vq.encode(y)[:, [0, 2, 3]])


@pytest.mark.parametrize("stages, dim", [(3, 8), (5, 4), (2, 7)])
def test_rejects_data_dim_not_divisible_by_num_stages(stages, dim):
    with pytest.raises(ValueError, match="data_dim"):
        PVQ(stages, 2, dim)
