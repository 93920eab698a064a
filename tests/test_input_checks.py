"""Bad input to AVQ, PVQ and RVQ: a clear, early error that names the argument.

The checks live in the base class (and ``stochastic_vq_core.rules``), so one class (RVQ)
pins them; a smoke test per class shows that each one runs them.
"""

import numpy as np
import pytest
import torch

from helpers import CLASSES, D, K, M, make
from residual_vq import RVQ

# --- bad inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["num_stages", "vq_bitrate_per_stage", "data_dim"])
@pytest.mark.parametrize("value, error", [(0, ValueError), (-2, ValueError),
                                          (2.0, TypeError), ("2", TypeError),
                                          (None, TypeError), (True, TypeError)])
def test_constructor_rejects_bad_sizes(name, value, error):
    args = {"num_stages": 2, "vq_bitrate_per_stage": 2, "data_dim": 4}
    args[name] = value
    with pytest.raises(error, match=name):
        RVQ(args["num_stages"], args["vq_bitrate_per_stage"], args["data_dim"])


@pytest.mark.parametrize("options, error, match", [
    ({"discard_threshold": -0.01}, ValueError, "discard_threshold"),
    ({"discard_threshold": 1.01}, ValueError, "discard_threshold"),
    ({"discard_threshold": float("nan")}, ValueError, "discard_threshold"),
    ({"discard_threshold": "0.1"}, TypeError, "discard_threshold"),
    ({"vq_bitrate_per_stage": 31}, ValueError, "vq_bitrate_per_stage must be <= 30"),
    ({"estimator": "straight-through"}, ValueError, "estimator must be one of nsvq, diveq"),
    ({"estimator": "diveq", "diveq_noise": -1.0}, ValueError, "diveq_noise"),
    ({"replacement_noise": -1.0}, ValueError, "replacement_noise"),
    ({"process_group": "world"}, TypeError, "process_group"),
])
def test_constructor_rejects_bad_options(options, error, match):
    args = {"num_stages": M, "vq_bitrate_per_stage": 3, "data_dim": D, **options}
    with pytest.raises(error, match=match):
        RVQ(**args)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 0, 1])
def test_constructor_accepts_threshold_bounds(threshold):
    assert make("RVQ", random_codebooks=False, discard_threshold=threshold).discard_threshold \
        == threshold


def test_every_class_checks_its_arguments_and_inputs(kind):
    """Smoke test: each class runs the base class's checks (pinned on RVQ below)."""
    extra = (2,) if kind == "AVQ" else ()
    with pytest.raises(TypeError, match="num_stages"):
        CLASSES[kind](2.0, 2, 4, *extra)
    vq = make(kind)
    with pytest.raises(ValueError, match="input_data"):
        vq(torch.randn(2, D + 1))
    with pytest.raises(ValueError, match="x"):
        vq.encode(torch.full((2, D), float("nan")))
    with pytest.raises(ValueError, match="indices"):
        vq.decode(torch.full((2, M), K))


def assert_rejected(vq, call, error, match):
    """``call()`` raises and leaves the codebooks and usage counters untouched."""
    codebooks = vq.codebooks.detach().clone()
    usage = vq.codebook_usage.clone()
    with pytest.raises(error, match=match):
        call()
    assert torch.equal(vq.codebooks.detach(), codebooks)
    assert torch.equal(vq.codebook_usage, usage)


BAD_INPUTS = {
    "list": (lambda: [[0.0] * D], TypeError),
    "numpy": (lambda: np.zeros((2, D), dtype=np.float32), TypeError),
    "int tensor": (lambda: torch.zeros(2, D, dtype=torch.long), TypeError),
    "bool tensor": (lambda: torch.zeros(2, D, dtype=torch.bool), TypeError),
    "wrong dim": (lambda: torch.randn(2, D + 1), ValueError),
    "scalar": (lambda: torch.tensor(1.0), ValueError),
    "nan": (lambda: torch.randn(4, D).index_fill_(0, torch.tensor([2]), float("nan")),
            ValueError),
    "inf": (lambda: torch.randn(4, D).index_fill_(0, torch.tensor([1]), float("inf")),
            ValueError),
    "-inf": (lambda: torch.randn(4, D).index_fill_(0, torch.tensor([0]), float("-inf")),
             ValueError),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("train_mode", [True, False])
def test_forward_rejects_bad_input(case, train_mode):
    make_input, error = BAD_INPUTS[case]
    vq = make("RVQ")
    vq(torch.randn(8, D), train_mode=True)  # non-zero usage to protect
    assert_rejected(vq, lambda: vq(make_input(), train_mode=train_mode), error, "input_data")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_encode_rejects_bad_input(case):
    make_input, error = BAD_INPUTS[case]
    vq = make("RVQ")
    assert_rejected(vq, lambda: vq.encode(make_input()), error, "x")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_check_finite_false_accepts_non_finite(kind, value):
    vq = make(kind, check_finite=False)
    x = torch.randn(64, D)
    x[::8, 1] = value
    codes = vq.encode(x)
    assert codes.shape == (64, M)
    assert codes.min() >= 0 and codes.max() < K  # valid codes even for non-finite rows
    for train_mode in (True, False):
        out, _ = vq(x, train_mode=train_mode)
        assert out.shape == x.shape
    assert torch.isfinite(vq.codebooks).all()


BAD_INDICES = {
    "too large": (lambda: torch.full((3, M), K), ValueError),
    "negative": (lambda: torch.tensor([[0] * (M - 1) + [-1]]), ValueError),
    "too many codebooks": (lambda: torch.zeros(3, M + 1, dtype=torch.long), ValueError),
    "no codebooks": (lambda: torch.zeros(3, 0, dtype=torch.long), ValueError),
    "scalar": (lambda: torch.tensor(0), ValueError),
    "float": (lambda: torch.zeros(3, M), TypeError),
    "bool": (lambda: torch.zeros(3, M, dtype=torch.bool), TypeError),
    "list": (lambda: [[0] * M], TypeError),
}


@pytest.mark.parametrize("case", sorted(BAD_INDICES))
def test_decode_rejects_bad_indices(case):
    make_indices, error = BAD_INDICES[case]
    vq = make("RVQ")
    with pytest.raises(error, match="indices"):
        vq.decode(make_indices())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_decode_accepts_other_integer_dtypes(dtype):
    vq = make("RVQ")
    codes = torch.randint(0, K, (5, M))
    assert torch.equal(vq.decode(codes.to(dtype)), vq.decode(codes))


