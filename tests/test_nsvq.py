"""Behaviour shared by AVQ, PVQ and RVQ (the base class VectorQuantizer), tested on all three.

NSVQ training output, checkpoints and devices, shapes and dtypes, determinism, chunked
encoding and data-dependent initialisation. Usage and replacement: test_usage.py; input
checks: test_input_checks.py.
"""

import pytest
import torch

from helpers import BITS, FACTORIES, D, K, M, make, nsvq_step, stage_rows, used_mask
from product_vq import PVQ
from stochastic_vq_core import kmeans
from stochastic_vq_core import quantizer as quantizer_module
from stochastic_vq_core.estimators import noise_substitution

# --- construction ----------------------------------------------------------------------


def test_attributes_and_shapes(kind):
    vq = make(kind, random_codebooks=False)
    expected = {"AVQ": (M * K, D), "PVQ": (M, K, D // M), "RVQ": (M, K, D)}[kind]
    assert vq.codebooks.shape == expected
    assert isinstance(vq.codebooks, torch.nn.Parameter)
    assert vq.codebook_usage.shape == (M, K)
    assert vq.codebook_usage.dtype == torch.int64
    assert "codebook_usage" in dict(vq.named_buffers())
    assert (vq.num_stages, vq.num_codebooks, vq.data_dim) == (M, K, D)
    assert vq.bits_per_vector == M * BITS


def test_initialisation_is_uniform_in_one_over_k(kind):
    vq = make(kind, random_codebooks=False)
    assert vq.codebooks.abs().max() <= 1.0 / K
    assert vq.codebooks.std() > 0.25 / K  # spread over the interval, not all zero


# --- NSVQ ------------------------------------------------------------------------------


def test_noise_substitution_distance_and_zero_error():
    x = torch.randn(20, 5)
    q = x + torch.randn(20, 5)
    out = noise_substitution(x, q)
    torch.testing.assert_close(
        torch.linalg.vector_norm(out - x, dim=1), torch.linalg.vector_norm(q - x, dim=1))
    assert torch.equal(noise_substitution(x, x.clone()), x)  # eps is in the denominator


def test_train_output_is_at_quantization_error_distance(kind):
    vq = make(kind)
    x = torch.randn(64, D)
    out, _ = vq(x, train_mode=True)
    q = vq.decode(vq.encode(x)).detach()
    assert out.shape == x.shape
    torch.testing.assert_close(torch.linalg.vector_norm(out - x, dim=1),
                               torch.linalg.vector_norm(x - q, dim=1), rtol=1e-5, atol=0)
    assert not torch.allclose(out, q)  # a random point at that distance, not q itself


def test_train_output_of_exact_codeword_is_the_input():
    vq = make("PVQ")
    codes = torch.randint(0, K, (16, M))
    x = vq.decode(codes).detach()
    assert torch.equal(vq.encode(x), codes)
    out, _ = vq(x, train_mode=True)
    assert torch.equal(out, x)


def test_codebooks_get_gradients_from_the_output(kind):
    vq = make(kind)
    x = torch.randn(64, D)
    out, _ = vq(x, train_mode=True)
    out.pow(2).sum().backward()
    grad = vq.codebooks.grad
    assert grad is not None and grad.shape == vq.codebooks.shape
    assert grad.abs().sum() > 0
    used = used_mask(vq, vq.encode(x))
    for stage in range(M):
        stage_grad = grad[stage * K:(stage + 1) * K] if kind == "AVQ" else grad[stage]
        assert stage_grad[used[stage]].abs().sum(dim=1).gt(0).all()
        assert stage_grad[~used[stage]].abs().sum() == 0


def test_gradients_reach_the_input(kind):
    vq = make(kind)
    x = torch.randn(8, D, requires_grad=True)
    out, _ = vq(x, train_mode=True)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_outputs_are_ordinary_tensors(kind):
    """The search runs in inference mode; nothing it returns is an inference tensor."""
    vq = make(kind)
    x = torch.randn(8, D)
    codes = vq.encode(x)
    out, usage = vq(x, train_mode=False)
    for tensor in (codes, out, usage):
        assert not tensor.is_inference()
    codes += 0  # in-place use outside inference mode is allowed
    out.mul_(2.0)


def test_eval_output_is_hard_quantized_and_detached(kind):
    vq = make(kind)
    x = torch.randn(32, D, requires_grad=True)
    out, _ = vq(x, train_mode=False)
    assert not out.requires_grad
    assert torch.equal(out, vq.decode(vq.encode(x)))


def test_train_mode_none_follows_module_training(kind):
    vq = make(kind)
    x = torch.randn(32, D)
    q = vq.decode(vq.encode(x)).detach()
    vq.train()
    out, usage = vq(x)
    assert out.requires_grad and not torch.allclose(out, q)
    assert usage.sum() > 0
    vq.eval()
    out, usage_after = vq(x)
    assert not out.requires_grad and torch.equal(out, q)
    assert torch.equal(usage_after, usage)
    vq.eval()
    out, _ = vq(x, train_mode=True)  # an explicit argument wins over the module's mode
    assert out.requires_grad


# --- checkpoints and devices -----------------------------------------------------------


def test_state_dict_round_trip(kind, tmp_path):
    vq = make(kind)
    vq(torch.randn(30, D), train_mode=True)
    vq(torch.randn(30, D), train_mode=True)
    state = vq.state_dict()
    assert set(state) == {"codebooks", "codebook_usage", "_extra_state"}
    assert state["_extra_state"] == {"quantizer": kind, "estimator": "nsvq",
                                    "codebook_update": "gradient"}
    torch.save(state, tmp_path / "vq.pt")
    other = make(kind)
    other.load_state_dict(torch.load(tmp_path / "vq.pt"))
    assert torch.equal(other.codebooks, vq.codebooks)
    assert torch.equal(other.codebook_usage, vq.codebook_usage)
    assert other.codebook_usage.sum() > 0
    x = torch.randn(20, D)
    assert torch.equal(other.encode(x), vq.encode(x))


def test_loads_original_checkpoint_format(kind, tmp_path):
    table = torch.randn(make(kind).codebooks.shape)
    path = tmp_path / "original.pt"
    torch.save({"vector_quantizer": {"codebooks": table}}, path)
    vq = make(kind)
    vq(torch.randn(10, D), train_mode=True)
    result = vq.load_state_dict(torch.load(path)["vector_quantizer"])
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(vq.codebooks.detach(), table)
    assert vq.codebook_usage.shape == (M, K) and vq.codebook_usage.sum() == 0


def test_load_rejects_wrong_codebook_shape(kind):
    vq = make(kind)
    with pytest.raises(RuntimeError, match="codebooks"):
        vq.load_state_dict({"codebooks": torch.randn(2, 2)})


def test_to_moves_the_usage_buffer(kind):
    vq = make(kind).to("meta")
    assert vq.codebooks.device.type == "meta"
    assert vq.codebook_usage.device.type == "meta"
    vq = make(kind).to(torch.float64)
    assert vq.codebooks.dtype == torch.float64
    assert vq.codebook_usage.dtype == torch.int64


def test_rejects_input_on_another_device(kind):
    vq = make(kind).to("meta")
    with pytest.raises(ValueError, match="input_data"):
        vq(torch.randn(2, D))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(kind):
    vq = make(kind)
    x = torch.randn(200, D)
    codes = vq.encode(x)
    vq.to("cuda")
    assert vq.codebook_usage.device.type == "cuda"
    assert torch.equal(vq.encode(x.cuda()).cpu(), codes)
    out, usage = vq(x.cuda(), train_mode=True)
    assert out.device.type == "cuda" and usage.device.type == "cuda"
    assert torch.equal(usage.cpu(), used_mask(vq, codes).long())
    out.sum().backward()
    vq.replace_unused_codebooks(1, verbose=False)
    assert vq.codebook_usage.sum() == 0


# --- shapes and dtypes -----------------------------------------------------------------


def test_encode_decode_round_trip_equals_eval_forward(kind):
    vq = make(kind)
    x = torch.randn(50, D)
    codes = vq.encode(x)
    assert codes.shape == (50, M) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < K
    out, _ = vq(x, train_mode=False)
    assert torch.equal(vq.decode(codes), out)
    if kind == "PVQ":  # a product-quantized vector is its own code
        assert torch.equal(vq.encode(out), codes)


@pytest.mark.parametrize("shape", [(4, 5, D), (D,), (2, 1, 3, D)])
def test_shapes(kind, shape):
    vq = make(kind)
    x = torch.randn(shape)
    codes = vq.encode(x)
    assert codes.shape == shape[:-1] + (M,)
    assert vq.decode(codes).shape == shape
    for train_mode in (True, False):
        out, usage = vq(x, train_mode=train_mode)
        assert out.shape == shape and usage.shape == (M, K)
    flat_codes = vq.encode(x.reshape(-1, D))
    assert torch.equal(codes.reshape(-1, M), flat_codes)


def test_non_contiguous_input(kind):
    vq = make(kind)
    x = torch.randn(D, 20).t()
    assert torch.equal(vq.encode(x), vq.encode(x.contiguous()))
    assert torch.equal(vq(x, train_mode=False)[0], vq(x.contiguous(), train_mode=False)[0])


@pytest.mark.parametrize("train_mode", [True, False])
def test_empty_batch(kind, train_mode):
    vq = make(kind)
    x = torch.randn(0, D)
    out, usage = vq(x, train_mode=train_mode)
    assert out.shape == (0, D) and usage.sum() == 0
    assert vq.encode(x).shape == (0, M)
    assert vq.decode(torch.zeros(0, M, dtype=torch.long)).shape == (0, D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes(kind, dtype):
    vq = make(kind)
    x = torch.randn(64, D).to(dtype)
    codes = vq.encode(x)
    assert torch.equal(codes, vq.encode(x.float()))
    for train_mode in (True, False):
        out, _ = vq(x, train_mode=train_mode)
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.isfinite(out).all()
    out, _ = vq(x, train_mode=False)
    assert torch.equal(out, vq.decode(codes).detach().to(dtype))


def test_float64_train_output_keeps_precision(kind):
    vq = make(kind)
    x = torch.randn(32, D, dtype=torch.float64)
    out, _ = vq(x, train_mode=True)
    q = vq.decode(vq.encode(x)).double()
    torch.testing.assert_close(torch.linalg.vector_norm(out - x, dim=1),
                               torch.linalg.vector_norm(x - q, dim=1), rtol=1e-6, atol=0)


# --- determinism and chunking ----------------------------------------------------------


def train_a_little(kind, seed):
    torch.manual_seed(seed)
    vq = FACTORIES[kind]()
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
    outputs = []
    for step in range(4):
        outputs.append(nsvq_step(vq, optimizer, torch.randn(32, D)))
        if step == 1:
            vq.replace_unused_codebooks(2, verbose=False)
    return outputs, vq.codebooks.detach().clone()


def test_training_is_deterministic_under_a_seed(kind):
    outputs, codebooks = train_a_little(kind, 7)
    outputs_again, codebooks_again = train_a_little(kind, 7)
    assert all(torch.equal(a, b) for a, b in zip(outputs, outputs_again))
    assert torch.equal(codebooks, codebooks_again)
    _, other_codebooks = train_a_little(kind, 8)
    assert not torch.equal(codebooks, other_codebooks)


def test_training_reduces_the_error(kind):
    torch.manual_seed(1)
    vq = FACTORIES[kind]()
    data = torch.randn(256, D)
    before = (vq(data, train_mode=False)[0] - data).pow(2).mean()
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
    for _ in range(30):
        x = data[torch.randint(0, len(data), (64,))]
        out, _ = vq(x, train_mode=True)
        loss = (x - out).pow(2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (vq(data, train_mode=False)[0] - data).pow(2).mean()
    assert after < 0.9 * before


@pytest.mark.parametrize("chunk_elements", [1, 1000])
def test_chunked_encoding_equals_encoding_at_once(kind, monkeypatch, chunk_elements):
    vq = make(kind)
    x = torch.randn(301, D)
    codes = vq.encode(x)
    out, _ = vq(x, train_mode=False)
    monkeypatch.setattr(quantizer_module, "CHUNK_ELEMENTS", chunk_elements)
    assert torch.equal(vq.encode(x), codes)
    assert torch.equal(vq(x, train_mode=False)[0], out)


# --- data-dependent initialisation ---------------------------------------------------


def expected_initialisation(vq, x, disjoint, seed):
    """Codebooks by the rule of ``initialize_from_data``, written out stage by stage."""
    generator = torch.Generator().manual_seed(seed)
    tables = []
    residual = x
    for stage in range(M):
        if isinstance(vq, PVQ):
            target = x[:, stage * (D // M):(stage + 1) * (D // M)]
        else:
            if disjoint:  # this stage's share, through the codebooks fitted before
                residual = x[stage::M]
                for earlier in tables:
                    residual = residual - earlier[kmeans.nearest_rows(residual, earlier)]
            target = residual
        table = kmeans.kmeans(target, K, 3, generator)
        tables.append(table)
        residual = target - table[kmeans.nearest_rows(target, table)]
    return tables


@pytest.mark.parametrize("disjoint", [False, True])
def test_data_initialisation_is_stagewise_kmeans(kind, disjoint):
    vq = make(kind)
    vq.codebook_usage.fill_(3)
    x = 5.0 + 3.0 * torch.randn(400, D)
    vq.initialize_from_data(x, kmeans_iterations=3, disjoint=disjoint,
                            generator=torch.Generator().manual_seed(7))
    for stage, table in enumerate(expected_initialisation(vq, x, disjoint, seed=7)):
        assert torch.equal(stage_rows(vq, stage), table)
    assert vq.codebook_usage.sum() == 0


def test_disjoint_initialisation_uses_a_share_per_codebook(kind):
    """RVQ/AVQ fit later codebooks to other samples; PVQ is unchanged by the keyword."""
    x = torch.randn(300, D)
    shared, disjoint = make(kind), make(kind)
    shared.initialize_from_data(x, generator=torch.Generator().manual_seed(1))
    disjoint.initialize_from_data(x, disjoint=True, generator=torch.Generator().manual_seed(1))
    same = torch.equal(shared.codebooks, disjoint.codebooks)
    assert same == (kind == "PVQ")


@pytest.mark.parametrize("samples, keywords, error", [
    (torch.zeros(0, D), {}, ValueError),
    (torch.zeros(2, D), {"disjoint": True}, ValueError),  # fewer than M for M shares
    (torch.zeros(10, D + 1), {}, ValueError),
    (torch.zeros(10, D), {"kmeans_iterations": -1}, ValueError),
])
def test_data_initialisation_rejects_bad_input(kind, samples, keywords, error):
    vq = make(kind)
    before = vq.codebooks.detach().clone()
    if kind == "PVQ" and keywords.get("disjoint"):
        vq.initialize_from_data(samples, **keywords)  # PVQ needs no shares
        return
    with pytest.raises(error, match="samples|kmeans_iterations"):
        vq.initialize_from_data(samples, **keywords)
    assert torch.equal(vq.codebooks, before)
