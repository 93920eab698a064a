"""Training-mode estimators (stochastic_vq_core.estimators): NSVQ and DiVeQ on all three
quantizers: forward values, gradients, determinism, autocast, torch.compile."""

import pytest
import torch
import torch._dynamo

from helpers import CLASSES, D, M, make, nsvq_step
from stochastic_vq_core.estimators import DIVEQ_NOISE, diveq, estimate, noise_substitution


def hard(vq, x):
    return vq(x, train_mode=False)[0]


@pytest.mark.parametrize("noise", [0.0, 1e-6])
def test_diveq_forward_is_the_hard_quantization_as_the_noise_vanishes(kind, noise):
    vq = make(kind, estimator="diveq", diveq_noise=noise)
    x = torch.randn(64, D)
    out, _ = vq(x, train_mode=True)
    assert torch.allclose(out, hard(vq, x), atol=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("noise", [0.1, 1.0, 7.0])
def test_diveq_noise_is_relative_to_the_error_norm(noise, scale):
    """The output is x + ||e|| * d / ||d|| with d = e + noise * ||e|| / sqrt(D) * v, v the
    N(0, I) draw that follows the seed: the same direction whatever the error's scale."""
    x = torch.randn(64, D, dtype=torch.float64)
    error = torch.randn(64, D, dtype=torch.float64) * torch.rand(64, 1) * scale  # many norms
    torch.manual_seed(5)
    out = diveq(x, x + error, noise)
    torch.manual_seed(5)
    v = torch.randn_like(x)
    norm = error.norm(dim=1, keepdim=True)
    d = error + noise * norm / D**0.5 * v
    expected = norm * d / d.norm(dim=1, keepdim=True)
    assert torch.allclose(out - x, expected, rtol=1e-6, atol=1e-9 * scale)


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
    assert torch.allclose((nsvq - x).norm(dim=1), error, rtol=1e-5)
    assert abs(torch.cosine_similarity(nsvq - x, q - x, dim=1).mean()) < 0.1


@pytest.mark.parametrize("estimator", ["nsvq", "diveq"])
def test_the_output_works_row_by_row_on_any_leading_shape(estimator):
    """(B, N, D) gives the rows of (B*N, D) under the same seed."""
    x, q = torch.randn(2, 5, D), torch.randn(2, 5, D)
    torch.manual_seed(4)
    batched = estimate(estimator, 0.5, x, q)
    torch.manual_seed(4)
    flat = estimate(estimator, 0.5, x.view(10, D), q.view(10, D))
    assert torch.equal(batched.view(10, D), flat)


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1.0])
def test_the_output_is_never_farther_than_the_error(scale):
    """||out - x|| = ||e|| ||d|| / (||d|| + eps) <= ||e||, down to tiny errors."""
    x = torch.zeros(256, D, dtype=torch.float64)
    q = torch.randn(256, D, dtype=torch.float64) * scale
    error = q.norm(dim=1)
    for out in (noise_substitution(x, q), diveq(x, q, 0.0), diveq(x, q, 1.0)):
        distance = out.norm(dim=1)
        assert (distance <= error).all() and torch.allclose(distance, error, rtol=1e-5)


def test_estimate_gives_each_estimator_its_noise():
    x, q = torch.randn(16, D), torch.randn(16, D)
    outputs = {}
    for name, noise in [("diveq", 0.5), ("diveq", 0.0), ("nsvq", 0.5)]:
        torch.manual_seed(6)
        outputs[name, noise] = estimate(name, noise, x, q)
    torch.manual_seed(6)
    assert torch.equal(outputs["diveq", 0.5], diveq(x, q, 0.5))
    torch.manual_seed(6)
    assert torch.equal(outputs["nsvq", 0.5], noise_substitution(x, q))
    assert not torch.allclose(outputs["diveq", 0.5], outputs["diveq", 0.0])


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


@pytest.mark.parametrize("estimator, noise", [("diveq", 0.0), ("diveq", 0.3), ("diveq", 1.0),
                                              ("nsvq", None)])
def test_the_input_gradient_is_g_less_the_error_direction_times_u_dot_g(estimator, noise):
    """out = x + ||q - x|| u with u held fixed, so d out / d x = I - u e^T for the error
    direction e = (q - x) / ||q - x||, and the gradient to x is g - e (u . g): the
    projection of g off e only where u = e (DiVeQ without noise)."""
    x = torch.randn(8, D, dtype=torch.float64, requires_grad=True)
    q = torch.randn(8, D, dtype=torch.float64)
    g = torch.randn(8, D, dtype=torch.float64)
    out = diveq(x, q, noise) if estimator == "diveq" else noise_substitution(x, q)
    (out * g).sum().backward()
    with torch.no_grad():
        e = (q - x) / (q - x).norm(dim=1, keepdim=True)
        u = (out - x) / (q - x).norm(dim=1, keepdim=True)
        # finite differences of x + ||q - x|| u with u held fixed
        numeric = torch.zeros_like(x)
        for i in range(D):
            step = torch.zeros_like(x)
            step[:, i] = 1e-6
            up = ((x + step + (q - x - step).norm(dim=1, keepdim=True) * u) * g).sum(1)
            down = ((x - step + (q - x + step).norm(dim=1, keepdim=True) * u) * g).sum(1)
            numeric[:, i] = (up - down) / 2e-6
    expected = g - e * (u * g).sum(dim=1, keepdim=True)
    assert torch.allclose(x.grad, expected, atol=1e-10)
    assert torch.allclose(numeric, expected, atol=1e-6)
    projected = g - e * (e * g).sum(dim=1, keepdim=True)
    assert torch.allclose(x.grad, projected, atol=1e-10) == (noise == 0.0)


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


@pytest.mark.parametrize("options, error, argument, match", [
    ({"estimator": "ste"}, ValueError, "estimator",
     r"^estimator must be one of nsvq, diveq, got 'ste'$"),
    ({"estimator": "diveq", "diveq_noise": float("inf")}, ValueError, "diveq_noise",
     r"^diveq_noise must be in \[0, inf\), got inf$"),
    ({"estimator": "diveq", "diveq_noise": -0.5}, ValueError, "diveq_noise",
     r"^diveq_noise must be in \[0, inf\), got -0.5$"),
    ({"estimator": "diveq", "diveq_noise": "1"}, TypeError, "diveq_noise",
     r"^diveq_noise must be a number in \[0, inf\), got str$"),
    ({"diveq_noise": 1.0}, ValueError, "diveq_noise",
     r"^diveq_noise is used only with estimator='diveq', got estimator='nsvq'$"),
])
def test_bad_estimator_options_are_named(options, error, argument, match):
    with pytest.raises(error, match=match) as info:
        CLASSES["PVQ"](M, 3, D, **options)
    assert info.value.argument == argument


def test_a_noise_left_out_is_the_default():
    assert CLASSES["PVQ"](M, 3, D, estimator="diveq").diveq_noise == DIVEQ_NOISE == 1.0
    assert CLASSES["PVQ"](M, 3, D, estimator="diveq", diveq_noise=0).diveq_noise == 0.0
    assert CLASSES["PVQ"](M, 3, D).estimator == "nsvq"
