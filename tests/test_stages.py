"""The first n codebooks and quantizer dropout (stochastic_vq_core.stages and the base
class): n-codebook searches against brute-force references, decoding of n codes, the
dropout draw's statistics, and what a training forward with fewer codebooks counts and
moves."""

import numpy as np
import pytest
import torch

from additive_vq import AVQ
from helpers import CLASSES, D, K, M, make
from original_reference import (
    as_numpy,
    avq_beam_search,
    avq_error,
    avq_exhaustive,
    rvq_exhaustive,
)
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq_core.stages import draw_stages, stage_groups

SCALABLE = ["AVQ", "RVQ"]  # the classes whose first n codebooks code a vector


def stacked(vq, stages=None):
    """The first ``stages`` codebooks (all if None) as a float64 (n, K, D) array."""
    table = as_numpy(vq.codebooks).reshape(vq.num_stages, vq.codebook_size, vq.data_dim)
    return table[:stages]


def reference_decode(vq, codes):
    """The sum of the chosen codewords of the first n codebooks, codes (N, n)."""
    table = torch.from_numpy(stacked(vq)).float()
    return sum(table[stage, codes[:, stage]] for stage in range(codes.shape[1]))


# --- the n-codebook search --------------------------------------------------------------


@pytest.mark.parametrize("stages", range(1, 5))
def test_rvq_first_codes_are_the_n_stage_encode(stages):
    """A stage's choice never depends on later stages: the first n codes of a full
    encode are the n-stage encode, which is the stage-by-stage nearest codeword."""
    vq = RVQ(4, 3, D)
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(vq.codebooks.shape) * 0.6 ** torch.arange(4.0)[:, None,
                                                                                      None])
    x = torch.randn(300, D)
    codes = vq.encode(x, num_stages=stages)
    assert codes.shape == (300, stages)
    assert torch.equal(codes, vq.encode(x)[:, :stages])
    reference = rvq_exhaustive(as_numpy(x), stacked(vq, stages))
    assert torch.equal(codes, torch.from_numpy(reference))


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_avq_wide_beam_over_n_codebooks_equals_exhaustive(stages):
    """With a beam of K**(n-1) or more tuples the search over the first n codebooks is
    exact: the best of all K**n tuples of those codebooks."""
    vq = AVQ(3, 2, 6, beam_width=4**2 * 3)
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(vq.codebooks.shape))
    x = torch.randn(120, 6, dtype=torch.float64)
    codes = vq.encode(x, num_stages=stages)
    assert codes.shape == (120, stages)
    best = avq_exhaustive(as_numpy(x), stacked(vq, stages))
    np.testing.assert_allclose(avq_error(as_numpy(x), codes.numpy(), stacked(vq, stages)),
                               avq_error(as_numpy(x), best, stacked(vq, stages)), rtol=1e-9)


@pytest.mark.parametrize("stages, beam_width", [(1, 2), (2, 1), (2, 3), (3, 4)])
def test_avq_n_codebook_search_is_the_beam_search_over_them(stages, beam_width):
    """The beam search with the first n codebooks is the plain reference beam search
    given only those n codebooks (not the first n codes of a full search)."""
    vq = AVQ(4, 3, 8, beam_width)
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(vq.codebooks.shape))
    x = torch.randn(60, 8, dtype=torch.float64)
    codes = vq.encode(x, num_stages=stages).numpy()
    reference = avq_beam_search(as_numpy(x), stacked(vq, stages), beam_width)
    same = (codes == reference).all(axis=1)
    assert same.mean() > 0.95
    errors = [avq_error(as_numpy(x), found, stacked(vq, stages)) for found in (codes, reference)]
    np.testing.assert_allclose(errors[0][~same], errors[1][~same], rtol=1e-9)


@pytest.mark.parametrize("name", SCALABLE)
@pytest.mark.parametrize("stages", range(1, M + 1))
def test_n_codes_decode_with_the_first_n_codebooks(name, stages):
    vq = make(name)
    x = torch.randn(4, 5, D)
    codes = vq.encode(x, num_stages=stages)  # (4, 5, n)
    assert codes.shape == (4, 5, stages)
    decoded = vq.decode(codes)
    assert decoded.shape == x.shape
    torch.testing.assert_close(decoded.reshape(-1, D), reference_decode(vq, codes.reshape(-1,
                                                                                      stages)))
    vq.eval()
    hard, _, returned = vq(x, num_stages=stages, return_codes=True)
    assert torch.equal(returned, codes) and torch.equal(hard, decoded)


@pytest.mark.parametrize("name", SCALABLE)
def test_fewer_codebooks_cost_error(name):
    vq = make(name)
    x = torch.randn(500, D)
    vq.initialize_from_data(x)
    errors = [(vq.decode(vq.encode(x, num_stages=n)) - x).pow(2).sum(1).mean()
              for n in range(1, M + 1)]
    assert all(fewer > more for fewer, more in zip(errors, errors[1:]))


def test_pvq_needs_every_codebook():
    vq = make("PVQ")
    reason = "its codebooks code different parts of the vector"
    with pytest.raises(ValueError, match=f"num_stages must be {M} for PVQ, got 2: {reason}"):
        vq.encode(torch.randn(3, D), num_stages=2)
    with pytest.raises(ValueError, match="num_stages must be"):
        vq(torch.randn(3, D), num_stages=1)
    with pytest.raises(ValueError, match=f"indices must be of shape .* for PVQ.*{reason}"):
        vq.decode(torch.zeros(3, M - 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"quantizer_dropout must be 0 for PVQ.*{reason}"):
        PVQ(M, 3, D, quantizer_dropout=0.5)
    assert vq.encode(torch.randn(3, D), num_stages=M).shape == (3, M)


@pytest.mark.parametrize("value, error", [(0, ValueError), (M + 1, ValueError),
                                          (2.0, TypeError), (True, TypeError)])
def test_num_stages_is_checked(kind, value, error):
    vq = make(kind)
    for call in (lambda: vq.encode(torch.randn(2, D), num_stages=value),
                 lambda: vq(torch.randn(2, D), num_stages=value),
                 lambda: vq.bitrate(50, num_stages=value)):
        with pytest.raises(error, match="num_stages"):
            call()


@pytest.mark.parametrize("options, error, match", [
    ({"quantizer_dropout": -0.1}, ValueError, "quantizer_dropout"),
    ({"quantizer_dropout": 1.5}, ValueError, "quantizer_dropout"),
    ({"quantizer_dropout": "0.5"}, TypeError, "quantizer_dropout"),
    ({"dropout_min_stages": 0}, ValueError, r"dropout_min_stages must be an integer in \[1, 3\]"),
    ({"dropout_min_stages": M + 1}, ValueError, "dropout_min_stages"),
    ({"dropout_min_stages": 1.0}, TypeError, "dropout_min_stages"),
])
def test_dropout_options_are_checked(options, error, match):
    with pytest.raises(error, match=match):
        RVQ(M, 3, D, **options)


def test_bitrate():
    vq = make("RVQ")
    assert vq.bitrate(50) == 50 * M * 3
    assert vq.bitrate(50.0, num_stages=1) == 150.0
    with pytest.raises(ValueError, match="vectors_per_second"):
        vq.bitrate(-1)


# --- quantizer dropout ------------------------------------------------------------------


def test_draw_statistics():
    """Over many seeded draws: each example is dropped with the given probability, and a
    dropped one uses n codebooks uniform in [low, high]."""
    rate, low, high, draws = 0.4, 2, 5, 200_000
    stages = draw_stages(draws, rate, low, high, torch.Generator().manual_seed(1))
    assert stages.dtype == torch.int64 and stages.device.type == "cpu"
    counts = torch.bincount(stages, minlength=high + 1).double() / draws
    share = rate / (high - low + 1)  # of each n; n = high also when not dropped
    expected = torch.tensor([0] * low + [share] * (high - low) + [1 - rate + share],
                            dtype=torch.float64)
    spread = (expected * (1 - expected) / draws).sqrt()
    assert ((counts - expected).abs() <= 5 * spread + 1e-12).all()
    again = draw_stages(draws, rate, low, high, torch.Generator().manual_seed(1))
    assert torch.equal(stages, again)


def test_no_draw_without_dropout_or_with_a_single_rate():
    assert torch.equal(draw_stages(100, 0.0, 1, 4), torch.full((100,), 4))
    assert torch.equal(draw_stages(100, 1.0, 3, 3), torch.full((100,), 3))
    assert (draw_stages(1000, 1.0, 1, 4) < 4).any()


def test_groups_hold_the_kept_vectors_by_number_of_codebooks():
    stages = torch.tensor([3, 1, 3, 2, 1, 3, 2])
    keep = torch.tensor([True, True, False, True, True, True, False])
    order, groups = stage_groups(stages, keep)
    assert order.tolist() == [1, 4, 3, 0, 5]
    assert groups == [(2, 1), (1, 2), (2, 3)]
    order, groups = stage_groups(stages, None)
    assert order.tolist() == [1, 4, 3, 6, 0, 2, 5] and groups == [(2, 1), (2, 2), (3, 3)]
    order, groups = stage_groups(stages, torch.zeros(7, dtype=torch.bool))
    assert order.tolist() == [] and groups == []


@pytest.mark.parametrize("name", SCALABLE)
def test_dropout_in_the_training_forward(name):
    """Per example: every vector of an example uses the same first n codebooks; over a
    large batch the shares of each n follow the draw; the dropped codebooks' codes are
    -1 and the output is the estimator's output for the first n codebooks."""
    rate, low = 0.6, 2
    vq = make(name, quantizer_dropout=rate, dropout_min_stages=low, estimator="diveq",
              diveq_noise=0.0)  # noise 0: the output is the hard quantization
    examples, frames = 3000, 2
    x = torch.randn(examples, frames, D)
    out, _, codes = vq(x, train_mode=True, return_codes=True)  # (B, T, M)
    used = (codes >= 0).sum(-1)  # (B, T)
    assert torch.equal(used, used[:, :1].expand(-1, frames))
    for example in range(examples):
        n = int(used[example, 0])
        assert (codes[example, :, :n] >= 0).all() and (codes[example, :, n:] == -1).all()
    counts = torch.bincount(used[:, 0], minlength=M + 1).double() / examples
    share = rate / (M - low + 1)
    expected = torch.tensor([0] * low + [share] * (M - low) + [1 - rate + share],
                            dtype=torch.float64)
    assert ((counts - expected).abs() <= 5 * (expected * (1 - expected) / examples).sqrt()).all()
    for n in range(low, M + 1):
        rows = used == n
        expected_out = vq.decode(codes[rows][:, :n])
        torch.testing.assert_close(out[rows], expected_out, atol=1e-5, rtol=1e-5)
        assert torch.equal(codes[rows][:, :n], vq.encode(x[rows], num_stages=n))


def test_dropout_is_seeded_and_leaves_eval_mode_alone():
    vq = make("RVQ", quantizer_dropout=1.0)
    x = torch.randn(40, D)
    torch.manual_seed(3)
    first = vq(x, train_mode=True, return_codes=True)
    torch.manual_seed(3)
    second = vq(x, train_mode=True, return_codes=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[2], second[2])
    assert (first[2] == -1).any()
    state = torch.get_rng_state()
    hard, _, codes = vq(x, train_mode=False, return_codes=True)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    assert torch.equal(codes, vq.encode(x)) and torch.equal(hard, vq.decode(codes))
    _, _, codes = vq(x, train_mode=True, num_stages=2, return_codes=True)
    assert torch.equal(codes, vq.encode(x, num_stages=2))  # num_stages overrides dropout


def used_codewords(codes: torch.Tensor) -> torch.Tensor:
    """(M, K) int64: 1 where codes (N, M) use a codeword, -1 entries (unused) aside."""
    used = torch.zeros(M, K, dtype=torch.long)
    for stage in range(codes.shape[1]):
        column = codes[:, stage]
        used[stage, column[column >= 0]] = 1
    return used


@pytest.mark.parametrize("name", SCALABLE)
def test_usage_counts_only_the_codebooks_used(name):
    """Each codeword counts once per batch, in the codebooks the vector used."""
    vq = make(name, quantizer_dropout=1.0)
    usage = vq.codebook_usage.clone()
    _, after, codes = vq(torch.randn(6, D), train_mode=True, return_codes=True)
    assert (codes == -1).any()
    assert torch.equal(after - usage, used_codewords(codes))
    _, again, codes = vq(torch.randn(40, D), train_mode=True, num_stages=1, return_codes=True)
    assert torch.equal(again - after, used_codewords(codes))
    assert torch.equal(again[1:], after[1:])


@pytest.mark.parametrize("name", SCALABLE)
def test_moving_averages_move_only_the_codebooks_used(name):
    """With n codebooks, the codebooks after the n-th keep their codewords and
    statistics; the first n move as a plain n-codebook quantizer's would."""
    stages = 2
    vq = make(name, codebook_update="ema")
    n_stage = CLASSES[name].build(stages, 3, D, beam_width=4, codebook_update="ema")
    rows = stages * K
    with torch.no_grad():
        n_stage.codebooks.copy_(vq.codebooks.reshape(M * K, D)[:rows].reshape(
            n_stage.codebooks.shape))
        n_stage.ema_sum.copy_(vq.ema_sum[:rows])
    before = {name: tensor.clone() for name, tensor in vq.state_dict().items()
              if isinstance(tensor, torch.Tensor)}
    x = torch.randn(64, D)
    vq(x, train_mode=True, num_stages=stages)
    n_stage(x, train_mode=True)
    flat = vq.codebooks.detach().reshape(M * K, D)
    assert torch.equal(flat[rows:], before["codebooks"].reshape(M * K, D)[rows:])
    assert torch.equal(vq.ema_count[rows:], before["ema_count"][rows:])
    assert torch.equal(vq.ema_sum[rows:], before["ema_sum"][rows:])
    assert not torch.equal(flat[:rows], before["codebooks"].reshape(M * K, D)[:rows])
    torch.testing.assert_close(flat[:rows], n_stage.codebooks.detach().reshape(rows, D))
    torch.testing.assert_close(vq.ema_count[:rows], n_stage.ema_count)
