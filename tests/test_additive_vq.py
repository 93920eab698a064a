"""AVQ: the beam search against exhaustive search, a plain reference beam search and the
original implementation's flawed search; AVQ-specific layout, checks and replacement."""

from math import comb

import numpy as np
import pytest
import torch

import additive_vq
from additive_vq import AVQ, _drop_repeated_sets, k_smallest
from original_reference import (
    as_numpy,
    avq_beam_search,
    avq_beam_search_original,
    avq_error,
    avq_exhaustive,
)
from stochastic_vq_core import native


def random_avq(stages, bits, dim, beam_width, scale=1.0):
    """An AVQ whose codebooks are N(0, scale²) instead of the tiny uniform initialisation."""
    vq = AVQ(stages, bits, dim, beam_width)
    with torch.no_grad():
        vq.codebooks.copy_(scale * torch.randn(vq.codebooks.shape))
    return vq


def stacked(vq):
    """The codebooks as a float64 (M, K, D) array, the layout of original_reference."""
    return as_numpy(vq.codebooks).reshape(vq.num_stages, vq.codebook_size, vq.data_dim)


def errors(vq, x, codes):
    return avq_error(as_numpy(x), np.asarray(codes), stacked(vq))


def exhaustive_beam(stages, entries):
    """A beam that holds every partial tuple of every step: max_t C(M, t) K**t."""
    return max(comb(stages, t) * entries**t for t in range(1, stages + 1))


def test_layout_and_decode():
    vq = random_avq(3, 2, 5, 2)
    assert vq.codebooks.shape == (12, 5) and vq.beam_width == 2
    codes = torch.tensor([[0, 1, 2], [3, 3, 3]])
    table = vq.codebooks.detach()
    expected = torch.stack([table[0] + table[5] + table[10], table[3] + table[7] + table[11]])
    torch.testing.assert_close(vq.decode(codes), expected)


@pytest.mark.parametrize("stages, bits, dim", [(2, 2, 4), (3, 2, 5), (4, 1, 3), (3, 3, 6),
                                               (1, 4, 3)])
def test_wide_beam_equals_exhaustive_search(stages, bits, dim):
    vq = random_avq(stages, bits, dim, exhaustive_beam(stages, 2**bits))
    x = torch.randn(150, dim)
    ours = errors(vq, x, vq.encode(x))
    best = errors(vq, x, avq_exhaustive(as_numpy(x), stacked(vq)))
    np.testing.assert_allclose(ours, best, rtol=1e-5, atol=1e-6)


def test_single_stage_is_nearest_codeword():
    vq = random_avq(1, 4, 6, 1)
    x = torch.randn(100, 6)
    nearest = torch.cdist(x, vq.codebooks.detach()).argmin(dim=1)
    assert torch.equal(vq.encode(x)[:, 0], nearest)


def test_error_does_not_grow_with_beam_width():
    torch.manual_seed(2)
    vq = random_avq(4, 3, 8, 1)
    x = torch.randn(400, 8)
    means = []
    for beam_width in (1, 2, 4, 8, 16):
        vq.beam_width = beam_width
        means.append(errors(vq, x, vq.encode(x)).mean())
    assert all(wider <= narrower * (1 + 1e-6) for narrower, wider in zip(means, means[1:]))
    assert means[-1] < means[0]


@pytest.mark.parametrize("stages, bits, dim, beam_width", [
    (2, 2, 4, 1),    # greedy
    (3, 3, 6, 1),
    (3, 3, 8, 4),
    (4, 2, 6, 3),
    (3, 2, 4, 6),    # beam wider than K
    (4, 3, 8, 8),
    (3, 5, 16, 8),   # the paper's configuration: the candidate top-k narrows to groups
    (8, 7, 8, 3),    # many steps over large codebooks
])
def test_equals_plain_reference_beam_search(stages, bits, dim, beam_width):
    vq = random_avq(stages, bits, dim, beam_width)
    x = torch.randn(60, dim, dtype=torch.float64)  # float64: no near-ties from rounding
    ours = vq.encode(x).numpy()
    reference = avq_beam_search(as_numpy(x), stacked(vq), beam_width)
    same = (ours == reference).all(axis=1)
    assert same.mean() > 0.95
    np.testing.assert_allclose(errors(vq, x, ours)[~same], errors(vq, x, reference)[~same],
                               rtol=1e-9)


def test_float32_search_matches_reference_error():
    vq = random_avq(3, 3, 8, 4)
    x = torch.randn(100, 8)
    ours = errors(vq, x, vq.encode(x))
    reference = errors(vq, x, avq_beam_search(as_numpy(x), stacked(vq), 4))
    assert np.isclose(ours, reference, rtol=1e-5).mean() > 0.97
    assert ours.mean() == pytest.approx(reference.mean(), rel=1e-3)


@pytest.mark.parametrize("stages, bits, dim, beam_width", [(2, 3, 8, 4), (3, 3, 8, 8),
                                                           (4, 2, 8, 4)])
def test_never_worse_than_original_search(stages, bits, dim, beam_width):
    vq = random_avq(stages, bits, dim, beam_width)
    x = torch.randn(150, dim)
    ours = errors(vq, x, vq.encode(x)).mean()
    original = errors(vq, x, avq_beam_search_original(as_numpy(x), stacked(vq),
                                                      beam_width)).mean()
    assert ours <= original * (1 + 1e-6)
    if stages == 2:  # the residual is right at the only extension step: the same search
        assert ours == pytest.approx(original, rel=1e-6)


def test_strictly_better_than_original_search_for_three_stages():
    """SPEC: M=3, K=8, D=8, bw=8: the original finds the optimum for 81%, a correct beam 91%."""
    torch.manual_seed(4)
    vq = random_avq(3, 3, 8, 8)
    x = torch.randn(300, 8)
    codebooks, data = stacked(vq), as_numpy(x)
    ours = errors(vq, x, vq.encode(x))
    original = avq_error(data, avq_beam_search_original(data, codebooks, 8), codebooks)
    best = avq_error(data, avq_exhaustive(data, codebooks), codebooks)
    assert ours.mean() < original.mean() * (1 - 1e-3)
    found_ours = np.isclose(ours, best, rtol=1e-5).mean()
    found_original = np.isclose(original, best, rtol=1e-5).mean()
    assert found_ours > found_original + 0.03
    assert found_ours > 0.85


def test_beam_wider_than_table_is_clamped():
    vq = random_avq(2, 2, 4, 1000)
    x = torch.randn(30, 4)
    ours = errors(vq, x, vq.encode(x))
    best = errors(vq, x, avq_exhaustive(as_numpy(x), stacked(vq)))
    np.testing.assert_allclose(ours, best, rtol=1e-5, atol=1e-6)


def test_identical_codebooks_give_a_valid_tuple():
    """Copies of one codebook: every candidate set repeats in many orders."""
    vq = AVQ(3, 2, 4, 8)
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(4, 4).repeat(3, 1))
    x = torch.randn(50, 4)
    codes = vq.encode(x)
    assert codes.min() >= 0 and codes.max() < 4
    ours = errors(vq, x, codes)
    best = errors(vq, x, avq_exhaustive(as_numpy(x), stacked(vq)))
    assert ours.mean() <= best.mean() * 1.05


@pytest.mark.parametrize("beam_width, error", [(0, ValueError), (-1, ValueError),
                                               (2.0, TypeError), (None, TypeError)])
def test_rejects_bad_beam_width(beam_width, error):
    with pytest.raises(error, match="beam_width"):
        AVQ(2, 2, 4, beam_width)


def test_replacement_draws_from_the_whole_table():
    vq = random_avq(2, 3, 4, 2)
    usage = torch.zeros(2, 8, dtype=torch.long)
    usage[1, :2] = 5  # only two codewords of codebook 1 are used
    with torch.no_grad():
        vq.codebook_usage.copy_(usage)
    before = vq.codebooks.detach().clone()
    generator = torch.Generator().manual_seed(0)
    replaced = vq.replace_unused_codebooks(5, verbose=False, generator=generator)
    assert replaced.tolist() == [8, 6]
    after = vq.codebooks.detach()
    assert torch.equal(after[8:10], before[8:10])
    distance = torch.cdist(torch.cat([after[:8], after[10:]]), before[8:10])  # (14, 2)
    assert (distance.min(dim=1).values < 0.1).all()  # every replaced row copies a used one
    assert (distance.min(dim=1).values > 0).all()
    sources = distance.argmin(dim=1)
    assert set(sources.tolist()) == {0, 1}  # 14 rows shuffled over both sources


@pytest.mark.parametrize("rows, columns, k", [(5, 768, 16), (3, 768, 1), (4, 96, 8),
                                              (3, 3072, 3), (2, 16384, 48), (3, 40, 40)])
def test_smallest_equals_topk(rows, columns, k):
    values = torch.randn(rows, columns)
    values[:, ::3] = float("inf")  # the +inf of used codebooks
    values[0, 5:9] = -1.0  # ties
    top, index = k_smallest(values, k)
    assert torch.equal(top, values.topk(k, dim=1, largest=False).values)
    assert torch.equal(values.gather(1, index), top)
    assert all(len(set(row)) == k for row in index.tolist())


def random_beams(n, beams, size, total, generator):
    """(n, beams, size) paths: distinct sets of distinct codewords in [0, total)."""
    paths = []
    for _ in range(n):
        beam, seen = [], set()
        while len(beam) < beams:
            codewords = torch.randperm(total, generator=generator)[:size].tolist()
            if frozenset(codewords) not in seen:
                seen.add(frozenset(codewords))
                beam.append(codewords)
        paths.append(beam)
    return torch.tensor(paths)


@pytest.mark.parametrize("beams, size", [(6, 1), (6, 2), (5, 3), (1, 2)])
def test_repeated_sets_are_dropped_once(beams, size):
    """Every set a beam extension reaches stays exactly once, from its best beam."""
    total, n = 7, 30
    path = random_beams(n, beams, size, total, torch.Generator().manual_seed(size))
    candidate_error = torch.zeros(n, beams, total)
    _drop_repeated_sets(candidate_error, path)
    for row in range(n):
        reached, kept = {}, []
        for b in range(beams):
            for j in range(total):
                if j in path[row, b].tolist():
                    continue  # adds a codeword the beam holds: +inf through the cross table
                key = frozenset(path[row, b].tolist() + [j])
                reached.setdefault(key, b)
                if candidate_error[row, b, j] == 0:
                    kept.append((key, b))
        assert sorted(kept, key=str) == sorted(reached.items(), key=str)


@pytest.mark.parametrize("stages, bits, beam", [(3, 5, 8), (4, 3, 16), (2, 2, 8), (4, 2, 32)])
def test_buffered_search_equals_unbuffered(stages, bits, beam, monkeypatch):
    """Large searches keep their tables in reused buffers; the codes must not change."""
    torch.manual_seed(0)
    vq = AVQ(stages, bits, 16, beam)
    with torch.no_grad():
        vq.codebooks.normal_()
    x = torch.randn(300, 16)
    monkeypatch.setattr(native, "available", lambda: False)  # the torch search's buffers
    monkeypatch.setattr(additive_vq, "_BUFFERED", 2**62)
    unbuffered = vq.encode(x)
    monkeypatch.setattr(additive_vq, "_BUFFERED", 1)
    assert torch.equal(vq.encode(x), unbuffered)
