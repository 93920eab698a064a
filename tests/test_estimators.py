"""Training-mode estimators (stochastic_vq_core.estimators): NSVQ and DiVeQ on all three
quantizers: forward values, gradients, determinism, autocast, torch.compile."""

import pytest
import torch
import torch._dynamo

from helpers import CLASSES, D, M, make, nsvq_step
from stochastic_vq_core.estimators import diveq, noise_substitution


def hard(vq, x):
    return vq(x, train_mode=False)[0]


@pytest.mark.parametrize("noise", [0.0, 1e-6])
def test_diveq_forward_is_the_hard_quantization_as_the_noise_vanishes(kind, noise):
    vq = make(kind, estimator="diveq", diveq_noise=noise)
    x = torch.randn(64, D)
    out, _ = vq(x, train_mode=True)
    assert torch.allclose(out, hard(vq, x), atol=1e-5)


def test_diveq_output_keeps_the_error_norm_and_tends_to_nsvq():
    x, q = torch.randn(512, D), torch.randn(512, D)
    error = (q - x).norm(dim=1)
    cosines = []
    for noise in (0.1, 1.0, 1e4):
        out = diveq(x, q, noise)
        assert torch.allclose((out - x).norm(dim=1), error, rtol=1e-5)
        cosines.append(torch.cosine_similarity(out - x, q - x, dim=1).mean())
    assert cosines[0] > 0.99 > cosines[1] > 0.5 > abs(cosines[2])  # random direction at last
    nsvq = noise_substitution(x, q)
    assert abs(torch.cosine_similarity(nsvq - x, q - x, dim=1).mean()) < 0.1


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_diveq_codebook_gradient_matches_finite_differences(kind, noise):
    """The gradient is that of ``x + ||q(C) - x|| * u`` with the direction u held fixed."""
    vq = make(kind, estimator="diveq", diveq_noise=noise).double()
    x = torch.randn(5, D, dtype=torch.float64)
    weights = torch.randn(5, D, dtype=torch.float64)
    torch.manual_seed(3)
    out, _ = vq(x, train_mode=True)
    (out * weights).sum().backward()
    codes = vq.encode(x)  # the codewords chosen (fixed under a small step)
    with torch.no_grad():
        error = vq.decode(codes) - x
        direction = (out - x) / error.norm(dim=1, keepdim=True)  # u, held fixed

    def surrogate() -> float:
        with torch.no_grad():
            norm = (vq.decode(codes) - x).norm(dim=1, keepdim=True)
            return float(((x + norm * direction) * weights).sum())

    flat = vq.codebooks.detach().view(-1)
    numeric = torch.zeros_like(flat)
    step = 1e-6
    for i in range(len(flat)):
        flat[i] += step
        up = surrogate()
        flat[i] -= 2 * step
        down = surrogate()
        flat[i] += step
        numeric[i] = (up - down) / (2 * step)
    assert torch.allclose(vq.codebooks.grad.view(-1), numeric, atol=1e-6)
    assert numeric.abs().sum() > 0


def test_diveq_projects_the_error_direction_out_of_the_input_gradient():
    x = torch.randn(8, D, requires_grad=True)
    q = torch.randn(8, D)
    weights = torch.randn(8, D)
    (diveq(x, q, 0.0) * weights).sum().backward()
    unit = (q - x.detach()) / (q - x.detach()).norm(dim=1, keepdim=True)
    expected = weights - unit * (weights * unit).sum(dim=1, keepdim=True)
    assert torch.allclose(x.grad, expected, atol=1e-5)


@pytest.mark.parametrize("estimator", ["nsvq", "diveq"])
def test_seeded_training_reproduces(kind, estimator):
    def trained():
        torch.manual_seed(7)
        vq = make(kind, estimator=estimator)
        optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(0)
        for _ in range(20):
            nsvq_step(vq, optimizer, torch.randn(16, D, generator=data))
        return vq.codebooks.detach()

    assert torch.equal(trained(), trained())


def test_diveq_trains_codebooks_toward_the_data(kind):
    torch.manual_seed(0)
    vq = make(kind, random_codebooks=False, estimator="diveq")
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
    x = torch.randn(256, D)
    before = float((hard(vq, x) - x).pow(2).mean())
    for _ in range(100):
        nsvq_step(vq, optimizer, x)
    assert float((hard(vq, x) - x).pow(2).mean()) < 0.8 * before


def test_diveq_under_bf16_autocast_gives_the_float32_codes(kind):
    vq = make(kind, estimator="diveq", diveq_noise=0.0)
    x = torch.randn(32, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = vq(x.bfloat16(), train_mode=True)
        codes = vq.encode(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert torch.equal(codes, vq.encode(x.bfloat16().float()))


def test_diveq_training_forward_is_one_graph():
    torch._dynamo.reset()
    try:
        vq = CLASSES["RVQ"](M, 3, D, check_finite=False, estimator="diveq")
        explanation = torch._dynamo.explain(vq)(torch.randn(32, D), True)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    finally:
        torch._dynamo.reset()


def test_a_checkpoint_loads_into_another_estimator_but_not_another_class(kind):
    diveq_vq = make(kind, estimator="diveq")
    state = diveq_vq.state_dict()
    assert state["_extra_state"] == {"quantizer": kind, "estimator": "diveq",
                                    "codebook_update": "gradient"}
    nsvq_vq = make(kind)
    nsvq_vq.load_state_dict(state)
    assert torch.equal(nsvq_vq.codebooks, diveq_vq.codebooks)
    assert nsvq_vq.estimator == "nsvq"  # the module keeps its own estimator
    other = next(name for name in CLASSES if name != kind)
    with pytest.raises(RuntimeError, match=f"written by a {kind}, not a {other}"):
        make(other).load_state_dict(state, strict=False)


def test_a_pvq_state_dict_of_matching_shapes_is_refused_by_rvq():
    pvq = CLASSES["PVQ"](4, 3, 16)  # codebooks (4, 8, 4)
    rvq = CLASSES["RVQ"](4, 3, 4)  # codebooks (4, 8, 4): the same shape
    with pytest.raises(RuntimeError, match="written by a PVQ, not a RVQ"):
        rvq.load_state_dict(pvq.state_dict())


def test_an_original_checkpoint_still_loads(kind):
    vq = make(kind)
    fresh = make(kind, random_codebooks=False)
    fresh.load_state_dict({"codebooks": vq.codebooks.detach().clone()})
    assert torch.equal(fresh.codebooks, vq.codebooks)


# --- codebook updates by moving averages ------------------------------------------------


def test_ema_codewords_are_the_running_means_of_their_targets(kind):
    """With decay 0 every chosen codeword becomes the mean of its targets in the batch."""
    vq = make(kind, codebook_update="ema", ema_decay=0.0)
    assert not vq.codebooks.requires_grad
    x = torch.randn(256, D)
    codes = vq.encode(x)
    before = vq.codebooks.detach().clone()
    targets = stacked_targets(vq, x, codes)  # (N, M, d)
    vq(x, train_mode=True)
    after = vq.codebooks.detach()
    for stage in range(M):
        for index in codes[:, stage].unique():
            chosen = codes[:, stage] == index
            expected = targets[chosen, stage].mean(dim=0)
            assert torch.allclose(stage_rows(after, vq, stage)[index], expected, atol=1e-5)
        unused = torch.ones(vq.codebook_size, dtype=torch.bool)
        unused[codes[:, stage]] = False
        assert torch.equal(stage_rows(after, vq, stage)[unused],
                           stage_rows(before, vq, stage)[unused])


def stacked_targets(vq, x, codes):
    """The targets the quantizer yields stage by stage for codes (N, M), (N, M, d)."""
    return torch.stack(list(vq._codeword_targets(x, codes, vq.decode(codes))), dim=1)


def chosen_codewords(vq, codes):
    """(N, M, d) the codewords codes (N, M) choose, codebook by codebook."""
    table = vq.codebooks.detach().reshape(M, vq.codebook_size, -1)
    return torch.stack([table[stage][codes[:, stage]] for stage in range(M)], dim=1)


def stage_rows(table, vq, stage):
    return table.reshape(M, vq.codebook_size, -1)[stage]


def test_ema_targets_are_what_each_codeword_must_reconstruct():
    x = torch.randn(16, D)
    avq = make("AVQ", codebook_update="ema")
    codes = avq.encode(x)
    parts = chosen_codewords(avq, codes)  # (N, M, D)
    targets = stacked_targets(avq, x, codes)  # x less the other chosen codewords
    assert torch.allclose(targets + parts.sum(1, keepdim=True) - parts, x.unsqueeze(1).expand(
        -1, M, -1), atol=1e-6)
    rvq = make("RVQ", codebook_update="ema")
    codes = rvq.encode(x)
    parts = chosen_codewords(rvq, codes)
    targets = stacked_targets(rvq, x, codes)  # the residual each stage quantized
    residual = x.clone()
    for stage in range(M):
        assert torch.allclose(targets[:, stage], residual, atol=1e-6)
        residual = residual - parts[:, stage]
    pvq = make("PVQ", codebook_update="ema")
    assert torch.equal(stacked_targets(pvq, x, pvq.encode(x)), x.view(16, M, D // M))


@pytest.mark.parametrize("estimator", ["nsvq", "diveq"])
def test_ema_lowers_the_error_and_leaves_the_gradient_to_the_input(kind, estimator):
    torch.manual_seed(0)
    vq = make(kind, random_codebooks=False, codebook_update="ema", estimator=estimator)
    x = torch.randn(512, D, requires_grad=True)
    before = float((hard(vq, x.detach()) - x.detach()).pow(2).mean())
    for _ in range(20):
        out, _ = vq(x, train_mode=True)
    out.pow(2).sum().backward()
    assert x.grad is not None and vq.codebooks.grad is None
    assert float((hard(vq, x.detach()) - x.detach()).pow(2).mean()) < 0.8 * before


def test_ema_statistics_follow_replacement_and_checkpoints(kind):
    vq = make(kind, codebook_update="ema")
    x = torch.randn(64, D)
    vq(x, train_mode=True)
    vq.replace_unused_codebooks(1, verbose=False, generator=torch.Generator().manual_seed(0))
    rows = vq.codebooks.detach().reshape(len(vq.ema_count), -1)
    assert torch.allclose(vq.ema_sum / vq.ema_count.unsqueeze(1), rows, atol=1e-6)
    state = vq.state_dict()
    assert state["_extra_state"]["codebook_update"] == "ema"
    other = make(kind, random_codebooks=False, codebook_update="ema")
    other.load_state_dict(state)
    assert torch.equal(other.ema_sum, vq.ema_sum) and torch.equal(other.ema_count, vq.ema_count)
    gradient = make(kind, random_codebooks=False)  # takes the codewords, not the averages
    gradient.load_state_dict(state)
    assert torch.equal(gradient.codebooks, vq.codebooks) and "ema_sum" not in gradient.state_dict()
    gradient_trained = make(kind)  # no moving averages in its state: they start afresh
    other.load_state_dict(gradient_trained.state_dict())
    rows = other.codebooks.detach().reshape(len(other.ema_count), -1)
    assert torch.equal(other.ema_count, torch.ones_like(other.ema_count))
    assert torch.allclose(other.ema_sum, rows)


def test_ema_training_is_seeded_and_one_graph():
    def trained():
        torch.manual_seed(3)
        vq = CLASSES["RVQ"](M, 3, D, codebook_update="ema", estimator="diveq")
        data = torch.Generator().manual_seed(0)
        for _ in range(10):
            vq(torch.randn(32, D, generator=data), train_mode=True)
        return vq.codebooks.detach()

    assert torch.equal(trained(), trained())
    torch._dynamo.reset()
    try:
        vq = CLASSES["PVQ"](M, 3, D, check_finite=False, codebook_update="ema")
        explanation = torch._dynamo.explain(vq)(torch.randn(32, D), True)
        assert explanation.graph_break_count == 0
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("options, match", [
    ({"codebook_update": "kmeans"}, "codebook_update must be one of gradient, ema"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": -0.1}, "ema_decay"),
])
def test_bad_codebook_update_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        CLASSES["RVQ"](M, 3, D, **options)
