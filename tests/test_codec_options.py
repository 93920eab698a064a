"""The forward's options for models such as codecs, on every class (VectorQuantizer):
``mask`` for padding, ``return_codes``, ``channel_first`` layout, ``frozen()``, and the
refusal of moving-average codebooks that an optimizer would also move."""

import copy

import pytest
import torch

from helpers import CLASSES, D, M, make
from residual_vq import RVQ

UPDATES = {"gradient": {}, "ema": {"codebook_update": "ema", "estimator": "diveq"}}


def padding_mask(lengths, frames):
    """(B, T) bool, True for the first ``lengths[b]`` frames of example b."""
    return torch.arange(frames) < torch.tensor(lengths).unsqueeze(1)


def state(vq):
    return {name: tensor.clone() for name, tensor in vq.state_dict().items()
            if isinstance(tensor, torch.Tensor)}


def assert_same_state(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# --- mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("update", UPDATES)
def test_a_masked_batch_is_the_kept_vectors_alone(kind, update):
    """Same codes, usage, moving averages, output and codebook gradient as the kept
    vectors quantized on their own (same random state for the estimator's noise); the
    masked-out vectors come back unchanged, with codes -1."""
    masked = make(kind, **UPDATES[update])
    alone = copy.deepcopy(masked)
    x = torch.randn(4, 6, D)
    mask = padding_mask([6, 2, 0, 4], 6)
    torch.manual_seed(5)
    out, usage, codes = masked(x, mask=mask, return_codes=True)
    torch.manual_seed(5)
    out_alone, usage_alone, codes_alone = alone(x[mask], return_codes=True)
    assert torch.equal(codes[mask], codes_alone) and (codes[~mask] == -1).all()
    assert torch.equal(usage, usage_alone)
    assert_same_state(state(masked), state(alone))
    assert torch.equal(out[mask], out_alone)
    assert torch.equal(out[~mask], x[~mask])
    if update == "gradient":
        out.pow(2).sum().backward()
        out_alone.pow(2).sum().backward()
        assert torch.equal(masked.codebooks.grad, alone.codebooks.grad)


def test_masked_vectors_pass_their_gradient_through():
    vq = make("RVQ")
    x = torch.randn(3, 5, D, requires_grad=True)
    mask = padding_mask([5, 3, 1], 5)
    out, _ = vq(x, mask=mask)
    out.sum().backward()
    assert torch.equal(x.grad[~mask], torch.ones_like(x.grad[~mask]))


def test_mask_in_eval_mode_and_with_fewer_codebooks(kind):
    vq = make(kind).eval()
    x = torch.randn(3, 5, D)
    mask = padding_mask([5, 3, 1], 5)
    hard, _, codes = vq(x, mask=mask, return_codes=True)
    assert torch.equal(hard[~mask], x[~mask]) and (codes[~mask] == -1).all()
    assert torch.equal(codes[mask], vq.encode(x[mask]))
    assert torch.equal(hard[mask], vq.decode(codes[mask]))
    if kind != "PVQ":
        vq.train()
        _, _, codes = vq(x, mask=mask, num_stages=2, return_codes=True)
        assert codes.shape == (3, 5, 2)
        assert torch.equal(codes[mask], vq.encode(x[mask], num_stages=2))


def test_mask_with_dropout_counts_only_kept_vectors():
    """Each kept vector is coded with its example's first n codebooks; usage counts
    exactly the codewords those codes use."""
    vq = make("RVQ", quantizer_dropout=1.0)
    x = torch.randn(8, 5, D)
    mask = padding_mask([5, 0, 3, 1, 5, 2, 4, 0], 5)
    out, usage, codes = vq(x, mask=mask, return_codes=True)
    assert (codes[~mask] == -1).all() and (codes[mask][:, 0] >= 0).all()
    assert torch.equal(out[~mask], x[~mask])
    used = torch.zeros_like(usage)
    for n in range(1, M + 1):
        rows = mask & ((codes >= 0).sum(-1) == n)
        assert torch.equal(codes[rows][:, :n], vq.encode(x[rows], num_stages=n))
        for stage in range(n):
            used[stage, codes[rows][:, stage]] = 1
    assert torch.equal(usage, used)


def test_all_masked_changes_nothing():
    vq = make("RVQ", codebook_update="ema", quantizer_dropout=0.5)
    before = state(vq)
    x = torch.randn(2, 3, D)
    out, _, codes = vq(x, mask=torch.zeros(2, 3, dtype=torch.bool), return_codes=True)
    assert torch.equal(out, x) and (codes == -1).all()
    assert_same_state(state(vq), before)


def test_initialize_from_data_leaves_masked_samples_out():
    x = torch.randn(6, 40, D)
    mask = padding_mask([40, 10, 0, 25, 40, 3], 40)
    masked, alone = make("RVQ"), make("RVQ")
    masked.initialize_from_data(x, mask=mask, generator=torch.Generator().manual_seed(0))
    alone.initialize_from_data(x[mask], generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked.codebooks, alone.codebooks)


@pytest.mark.parametrize("mask, error, match", [
    (lambda: torch.ones(3, 5), TypeError, "mask must be a bool torch.Tensor"),
    (lambda: [[True] * 5] * 3, TypeError, "mask must be a bool"),
    (lambda: torch.ones(3, 4, dtype=torch.bool), ValueError, r"mask must have .* \(3, 5\)"),
    (lambda: torch.ones(3, 5, D, dtype=torch.bool), ValueError, "mask must have"),
])
def test_bad_masks_are_named(mask, error, match):
    vq = make("RVQ")
    for call in (lambda: vq(torch.randn(3, 5, D), mask=mask()),
                 lambda: vq.initialize_from_data(torch.randn(3, 5, D), mask=mask())):
        with pytest.raises(error, match=match):
            call()


def test_return_codes_is_checked():
    with pytest.raises(TypeError, match="return_codes must be True or False"):
        make("RVQ")(torch.randn(2, D), return_codes=1)


def test_training_forward_returns_the_codes_of_its_search(kind):
    vq = make(kind, estimator="diveq", diveq_noise=0.0)
    x = torch.randn(7, D)
    out, _, codes = vq(x, train_mode=True, return_codes=True)
    assert torch.equal(codes, vq.encode(x))
    torch.testing.assert_close(out, vq.decode(codes))


# --- channel-first layout ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, D, 7), (2, D, 3, 4)])
def test_channel_first_is_the_same_quantizer_in_another_layout(kind, shape):
    last = make(kind)
    first = CLASSES[kind].build(M, 3, D, beam_width=4, channel_first=True)
    first.load_state_dict(last.state_dict())
    x = torch.randn(shape)  # (B, D, ...)
    x_last = x.movedim(1, -1)  # (B, ..., D)
    mask = torch.rand(x_last.shape[:-1]) < 0.7  # (B, ...)
    torch.manual_seed(2)
    out, usage, codes = first(x, mask=mask, return_codes=True)
    torch.manual_seed(2)
    out_last, usage_last, codes_last = last(x_last, mask=mask, return_codes=True)
    assert out.shape == x.shape and torch.equal(out, out_last.movedim(-1, 1))
    assert codes.shape == (shape[0], M, *shape[2:])
    assert torch.equal(codes, codes_last.movedim(-1, 1)) and torch.equal(usage, usage_last)
    encoded = first.encode(x)  # (B, M, ...)
    assert torch.equal(encoded, last.encode(x_last).movedim(-1, 1))
    assert torch.equal(first.decode(encoded), last.decode(last.encode(x_last)).movedim(-1, 1))
    if kind != "PVQ":
        two = first.encode(x, num_stages=2)  # (B, 2, ...)
        assert torch.equal(first.decode(two), last.decode(two.movedim(1, -1)).movedim(-1, 1))
    flat = torch.randn(5, D)  # (N, D) is the same in both layouts
    assert torch.equal(first.encode(flat), last.encode(flat))


def test_channel_first_input_names_the_option():
    vq = RVQ(M, 3, D)
    with pytest.raises(ValueError, match="build the quantizer with channel_first=True"):
        vq(torch.randn(4, D, 50))
    with pytest.raises(ValueError, match="channel_first=True"):
        vq.encode(torch.randn(4, D, 5, 5))
    first = RVQ(M, 3, D, channel_first=True)
    with pytest.raises(ValueError, match=rf"input_data must have shape \(B, {D}, \.\.\.\) "
                                         r"\(channel_first=True\), got \(4, 50, 12\)"):
        first(torch.randn(4, 50, D))
    with pytest.raises(ValueError, match=r"indices must have shape \(B, n, \.\.\.\)"):
        first.decode(torch.zeros(4, 7, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="channel_first must be True or False"):
        RVQ(M, 3, D, channel_first="yes")


# --- frozen codebooks and moving averages under an optimizer ----------------------------


@pytest.mark.parametrize("update", UPDATES)
def test_frozen_training_forward_moves_nothing(kind, update):
    vq = make(kind, **UPDATES[update])
    vq(torch.randn(16, D), train_mode=True)  # some usage to keep
    before = state(vq)
    twin = copy.deepcopy(vq)
    x = torch.randn(16, D)
    torch.manual_seed(7)
    with vq.frozen():
        with vq.frozen():
            pass
        out, usage = vq(x, train_mode=True)  # still frozen after the inner context
    assert_same_state(state(vq), before)
    assert torch.equal(usage, before["codebook_usage"])
    torch.manual_seed(7)
    out_twin, _ = twin(x, train_mode=True)
    assert torch.equal(out, out_twin)  # the same training-mode output
    if update == "gradient":
        out.pow(2).sum().backward()
        assert vq.codebooks.grad is not None
    vq(x, train_mode=True)  # outside: learns again
    assert not torch.equal(vq.codebook_usage, before["codebook_usage"])


def test_moving_average_codebooks_refuse_gradients(kind):
    vq = make(kind, codebook_update="ema")
    model = torch.nn.Sequential(vq)
    model.requires_grad_(True)
    for train_mode in (True, False):
        with pytest.raises(RuntimeError, match=r"codebooks\.requires_grad_\(False\)"):
            vq(torch.randn(4, D), train_mode=train_mode)
    vq.codebooks.requires_grad_(False)
    vq(torch.randn(4, D), train_mode=True)
    make(kind).codebooks.requires_grad_(True)  # gradient codebooks are meant to


def test_codec_options_leave_checkpoints_alone(kind):
    """The options are settings, not state: a checkpoint loads either way."""
    plain = make(kind)
    options = {"channel_first": True}
    if kind != "PVQ":
        options.update(quantizer_dropout=0.5, dropout_min_stages=2)
    other = CLASSES[kind].build(M, 3, D, beam_width=4, **options)
    other.load_state_dict(plain.state_dict())
    assert other.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(5, D)
    assert torch.equal(other.encode(x), plain.encode(x))
    plain.load_state_dict(other.state_dict())
