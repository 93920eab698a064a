import numpy as np
import pytest
import torch

from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq.ann import (
    adc_search,
    encode_database,
    exact_search,
    read_vecs,
    recall_at,
    write_vecs,
)


@pytest.mark.parametrize("suffix, dtype", [(".fvecs", torch.float32), (".ivecs", torch.int32),
                                           (".bvecs", torch.uint8)])
def test_vecs_round_trip(tmp_path, suffix, dtype):
    vectors = (torch.rand(7, 5) * 200).to(dtype)
    path = tmp_path / f"data{suffix}"
    write_vecs(path, vectors)
    assert path.stat().st_size == 7 * (4 + 5 * vectors.element_size())
    back = read_vecs(path)
    assert back.dtype == dtype and torch.equal(back, vectors)
    assert torch.equal(read_vecs(path, count=3), vectors[:3])


def test_fvecs_layout_is_dimension_then_entries(tmp_path):
    path = tmp_path / "one.fvecs"
    write_vecs(path, np.array([[1.5, -2.0, 3.25]], dtype=np.float32))
    raw = path.read_bytes()
    assert np.frombuffer(raw[:4], "<i4")[0] == 3
    assert np.frombuffer(raw[4:], "<f4").tolist() == [1.5, -2.0, 3.25]


def test_read_vecs_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unknown vector file type"):
        read_vecs(tmp_path / "x.npy")
    path = tmp_path / "bad.fvecs"
    path.write_bytes(np.array([3, 0, 0], dtype="<i4").tobytes())  # promises 3 entries, has 2
    with pytest.raises(ValueError, match="not a valid"):
        read_vecs(path)


def _quantizer(method: str):
    torch.manual_seed(1)
    if method == "avq":
        quantizer = AVQ(3, 3, 8, beam_width=4)
    elif method == "pvq":
        quantizer = PVQ(4, 3, 8)
    else:
        quantizer = RVQ(3, 3, 8)
    quantizer.initialize_from_data(torch.randn(500, 8))
    return quantizer


@pytest.mark.parametrize("method", ["avq", "pvq", "rvq"])
def test_adc_search_equals_brute_force_on_decoded_vectors(method):
    quantizer = _quantizer(method)
    base, queries = torch.randn(300, 8), torch.randn(20, 8)
    database = encode_database(quantizer, base, batch_size=128)
    assert database.codes.shape == (300, quantizer.num_stages)
    distances, indices = adc_search(quantizer, database, queries, k=10)

    decoded = quantizer.decode(database.codes)
    exact = torch.cdist(queries.double(), decoded.double()).pow(2)  # (Q, N)
    gathered = exact.gather(1, indices)
    assert torch.allclose(distances.double(), gathered, atol=1e-4, rtol=1e-4)
    # the same neighbours as brute force, up to ties within float32 rounding
    kth = exact.sort(dim=1).values[:, 9:10]
    assert (gathered <= kth + 1e-4).all()


def test_exact_search_finds_the_vectors_themselves():
    base = torch.randn(200, 6)
    distances, indices = exact_search(base, base[[5, 17, 123]], k=3)
    assert indices[:, 0].tolist() == [5, 17, 123]
    assert torch.allclose(distances[:, 0], torch.zeros(3), atol=1e-4)
    assert (distances[:, 1:] >= distances[:, :-1]).all()


def test_recall_at_on_a_known_case():
    found = torch.tensor([[3, 1, 2, 0],    # true neighbour at rank 1
                          [0, 2, 3, 1],    # rank 4
                          [2, 3, 0, 1],    # rank 2
                          [1, 2, 0, 3]])   # rank 3
    true_nearest = torch.tensor([3, 1, 3, 0])
    assert recall_at(found, true_nearest, [1, 2, 3, 4]) == [0.25, 0.5, 0.75, 1.0]
    assert recall_at(found[:, :2], torch.tensor([9, 9, 9, 9]), [1, 2]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="exceeds"):
        recall_at(found, true_nearest, [8])
