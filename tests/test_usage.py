"""Usage counting and replacement of unused codewords (stochastic_vq_core.usage), on all three.

Counters count batches in training mode only; replacement overwrites exactly the entries
below the threshold with copies of used ones, resets the counters, optionally zeroes
their optimizer state, and is reproducible with a generator.
"""

import math
import random

import numpy as np
import pytest
import torch

from helpers import D, K, M, make, set_usage, stage_rows, used_mask
from stochastic_vq_core.usage import count_usage, replace_rows, replaces_at, usage_limit

# --- usage -----------------------------------------------------------------------------


def test_usage_counts_batches_in_train_mode_only(kind):
    vq = make(kind)
    x = torch.randn(40, D)
    used = used_mask(vq, vq.encode(x))
    _, snapshot = vq(x, train_mode=False)
    assert snapshot.sum() == 0 and vq.codebook_usage.sum() == 0
    _, snapshot = vq(x, train_mode=True)
    assert torch.equal(snapshot, used.long())
    _, snapshot = vq(x, train_mode=True)
    assert torch.equal(snapshot, 2 * used.long())  # batches, not vectors
    assert torch.equal(vq.codebook_usage, 2 * used.long())
    vq(x, train_mode=False)
    assert torch.equal(vq.codebook_usage, 2 * used.long())


@pytest.mark.parametrize("stages", [M, 2])
def test_count_usage_marks_each_used_codeword_once_per_batch(stages):
    """codes (N, n) of the first n <= M codebooks count those codebooks only."""
    usage = torch.zeros(M, K, dtype=torch.long)
    codes = torch.tensor([[1, 2, 3], [1, 0, 3], [5, 0, 3]])[:, :stages]
    count_usage(usage, codes)
    count_usage(usage, codes[:1])
    expected = torch.zeros(M, K, dtype=torch.long)
    expected[0, [1, 5]] = 1
    expected[0, 1] += 1
    expected[1, [0, 2]] = 1
    expected[1, 2] += 1
    if stages == M:
        expected[2, 3] = 2
    assert torch.equal(usage, expected)


def test_count_usage_stays_on_the_counters_device():
    usage = torch.zeros(M, K, dtype=torch.long, device="meta")
    count_usage(usage, torch.zeros(4, M, dtype=torch.long, device="meta"))
    assert usage.device.type == "meta"


def test_usage_snapshot_is_a_copy(kind):
    vq = make(kind)
    x = torch.randn(40, D)
    _, snapshot = vq(x, train_mode=True)
    assert snapshot.shape == (M, K) and snapshot.dtype == torch.int64
    before = vq.codebook_usage.clone()
    snapshot += 100
    assert torch.equal(vq.codebook_usage, before)
    _, later = vq(x, train_mode=True)
    assert torch.equal(snapshot, before + 100)  # later passes do not touch old snapshots
    assert torch.equal(later, 2 * before)


# --- replacement of unused codewords ---------------------------------------------------


def assert_copied_from_used(rows, used_rows):
    """Each row is close to, but not equal to, some used row (in float32)."""
    distance = torch.cdist(rows.double(), used_rows.double()).min(dim=1).values  # (R,)
    scale = used_rows.double().pow(2).sum(1).sqrt().mean()
    assert (distance > 0).all()
    assert (distance < 0.1 * scale).all()


@pytest.mark.parametrize("threshold, num_batches, levels", [
    (0.01, 100, [0, 1, 37]),   # usage 1 / 100 is not below 0.01
    (0.5, 10, [4, 5, 9]),      # 4 / 10 is below 0.5, 5 / 10 is not
    (0.0, 10, [0, 0, 3]),      # threshold 0 replaces nothing
])
def test_replace_exactly_the_entries_below_threshold(kind, capsys, threshold, num_batches,
                                                     levels):
    vq = make(kind, discard_threshold=threshold)
    usage = torch.tensor(levels)[torch.randint(0, len(levels), (M, K))]
    usage[:, 0] = levels[-1]  # every codebook has a used entry
    set_usage(vq, usage)
    unused = usage.double() / num_batches < threshold  # (M, K)
    before = [stage_rows(vq, stage).clone() for stage in range(M)]
    replaced = vq.replace_unused_codebooks(num_batches)

    assert replaced.dtype == torch.int64 and replaced.shape == (M,)
    assert torch.equal(replaced, unused.sum(dim=1))
    assert vq.codebook_usage.sum() == 0 and vq.codebook_usage.shape == (M, K)
    all_used = torch.cat([before[s][~unused[s]] for s in range(M)])
    for stage in range(M):
        after = stage_rows(vq, stage)
        kept = ~unused[stage]
        assert torch.equal(after[kept], before[stage][kept])  # bitwise
        if unused[stage].any():
            sources = all_used if kind == "AVQ" else before[stage][kept]
            assert_copied_from_used(after[unused[stage]], sources)
            assert not torch.equal(after[unused[stage]], before[stage][unused[stage]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(int(replaced.sum())) in lines[0]


def test_replace_is_silent_without_verbose(kind, capsys):
    vq = make(kind)
    vq.replace_unused_codebooks(5, verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW,
                                       lambda params: torch.optim.SGD(params, lr=0.1,
                                                                      momentum=0.9)])
def test_replace_resets_the_optimizer_state_of_replaced_entries_only(kind, optimizer):
    vq = make(kind)
    opt = optimizer(vq.parameters())
    out, _ = vq(torch.randn(16, D))
    out.pow(2).sum().backward()
    opt.step()
    state = {name: value.clone() for name, value in opt.state[vq.codebooks].items()
             if value.shape == vq.codebooks.shape}
    assert state and all(value.abs().sum() > 0 for value in state.values())
    usage = torch.zeros(M, K, dtype=torch.long)
    usage[:, :K // 2] = 5  # the second half of every codebook is unused
    set_usage(vq, usage)
    vq.replace_unused_codebooks(5, verbose=False, optimizer=opt)
    unused = (usage == 0).flatten()  # (M*K,) in the rows of a (M*K, d) view
    for name, before in state.items():
        after = opt.state[vq.codebooks][name].reshape(M * K, -1)
        assert (after[unused] == 0).all(), name
        assert torch.equal(after[~unused], before.reshape(M * K, -1)[~unused]), name


def test_replace_keeps_the_parameter_object(kind):
    vq = make(kind)
    parameter = vq.codebooks
    vq.replace_unused_codebooks(3, verbose=False)
    assert vq.codebooks is parameter and vq.codebooks.requires_grad


def test_replace_all_unused_codebook_is_perturbed(kind):
    vq = make(kind)
    usage = torch.full((M, K), 7)
    usage[1] = 0
    set_usage(vq, usage)
    before = vq.codebooks.detach().clone()
    replaced = vq.replace_unused_codebooks(7, verbose=False)
    assert replaced.tolist() == [0, K, 0]
    after = stage_rows(vq, 1)
    if kind == "AVQ":  # sources come from the whole table: the rows of codebooks 0 and 2
        used_rows = torch.cat([before[:K], before[2 * K:]])
        assert_copied_from_used(after, used_rows)
    else:
        old = before[1]
        assert not torch.equal(after, old)
        assert torch.allclose(after, old, atol=0.1)


def test_replace_whole_table_unused_is_perturbed(kind):
    vq = make(kind)
    before = vq.codebooks.detach().clone()
    replaced = vq.replace_unused_codebooks(4, verbose=False)
    assert replaced.tolist() == [K] * M
    after = vq.codebooks.detach()
    assert (after != before).any(dim=-1).all()  # every codeword moved
    assert torch.allclose(after, before, atol=0.1)  # slightly


def test_replace_is_reproducible_with_seed(kind):
    def run(use_generator):
        torch.manual_seed(3)
        vq = make(kind)
        usage = torch.randint(0, 3, (M, K))
        usage[:, 0] = 2
        set_usage(vq, usage)
        generator = torch.Generator().manual_seed(11) if use_generator else None
        torch.manual_seed(5)
        vq.replace_unused_codebooks(2, verbose=False, generator=generator)
        return vq.codebooks.detach().clone()

    assert torch.equal(run(True), run(True))
    assert torch.equal(run(False), run(False))


@pytest.mark.parametrize("num_batches", [0, -3])
def test_replace_rejects_num_batches_below_one(kind, num_batches):
    vq = make(kind)
    set_usage(vq, torch.ones(M, K, dtype=torch.long))
    before = vq.codebooks.detach().clone()
    with pytest.raises(ValueError, match="num_batches"):
        vq.replace_unused_codebooks(num_batches)
    assert torch.equal(vq.codebooks.detach(), before)
    assert vq.codebook_usage.sum() == M * K


def test_replace_rejects_non_int_num_batches(kind):
    with pytest.raises(TypeError, match="num_batches"):
        make(kind).replace_unused_codebooks(2.5)




# --- replace_rows itself -----------------------------------------------------------------


def test_replaced_rows_are_used_rows_plus_noise_of_the_used_rows_rms():
    """Each unused row becomes a used row plus N(0, (scale * RMS of the used rows)²) noise;
    a used row serves at most ceil(unused / used) times."""
    torch.manual_seed(0)
    table = torch.randn(3000, 16, dtype=torch.float64) * 50.0 + 7.0  # RMS about 50.5
    unused = torch.zeros(3000, dtype=torch.bool)
    unused[torch.randperm(3000)[:2000]] = True  # 1000 used rows serve 2000 unused ones
    used_rows = table[~unused].clone()
    rms = float(used_rows.pow(2).mean().sqrt())
    replace_rows(table, unused, 1e-3, torch.Generator().manual_seed(1))
    assert torch.equal(table[~unused], used_rows)
    source = torch.cdist(table[unused], used_rows).argmin(dim=1)  # (U,) nearest used row
    noise = table[unused] - used_rows[source]  # (U, d)
    assert abs(float(noise.std()) / (1e-3 * rms) - 1) < 0.02 and abs(float(noise.mean())) < 1e-3
    assert int(torch.bincount(source).max()) <= 2


def test_fewer_unused_rows_than_used_ones_take_distinct_sources():
    table = torch.arange(20, dtype=torch.float32).view(10, 2) * 10
    unused = torch.tensor([True, False] * 5)
    before = table.clone()
    replace_rows(table, unused, 1e-3, torch.Generator().manual_seed(0))
    source = torch.cdist(table[unused], before[~unused]).argmin(dim=1)
    assert len(source.unique()) == 5


def test_a_table_with_no_used_row_is_perturbed_by_its_own_rms():
    table = torch.full((400, 8), -3.0)
    replace_rows(table, torch.ones(400, dtype=torch.bool), 0.1,
                 torch.Generator().manual_seed(0))
    assert abs(float((table + 3.0).std()) / 0.3 - 1) < 0.05


def test_copies_of_zero_rows_are_still_separated():
    table = torch.zeros(6, 4)
    unused = torch.tensor([True, False] * 3)
    replace_rows(table, unused, 1e-2, torch.Generator().manual_seed(0))
    assert (table[unused] != 0).any(dim=1).all() and (table[~unused] == 0).all()


@pytest.mark.parametrize("used", [3, 0])
def test_replace_rows_follows_its_generator_alone(used):
    """The same generator gives the same rows whatever the global random state."""
    def replaced(global_seed):
        torch.manual_seed(global_seed)
        table = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
        unused = torch.arange(8) >= used
        replace_rows(table, unused, 1e-2, torch.Generator().manual_seed(9))
        return table

    assert torch.equal(replaced(0), replaced(1))


def test_replace_rows_draws_on_the_cpu_whatever_the_default_device():
    """The generator is a CPU one: the draws are made on the CPU even where another
    default device is set (they move to the table's device afterwards)."""
    table = torch.randn(8, 4)
    some, every = torch.arange(8) >= 3, torch.ones(8, dtype=torch.bool)
    with torch.device("meta"):
        replace_rows(table, some, 1e-2, torch.Generator().manual_seed(0))
        replace_rows(table, every, 1e-2, torch.Generator().manual_seed(0))
    assert table.device.type == "cpu" and torch.isfinite(table).all()


# --- the replacement schedule ----------------------------------------------------------


def test_replacement_schedule_is_the_originals():
    steps = [s for s in range(1, 20001) if replaces_at(s, 20000, 1000)]
    assert steps == list(range(1000, 18001, 1000))


@pytest.mark.parametrize("steps, every, expected", [
    (10, 3, [3]),  # the original's test i <= steps - 2 * every on its 0-based counter i
    (11, 3, [3, 6]),
    (6, 3, []),
    (12, 1, list(range(1, 12))),
    (9, 4, []),
    (10, 4, []),
    (11, 4, [4]),
])
def test_replacement_never_comes_in_the_last_two_periods(steps, every, expected):
    assert [s for s in range(1, steps + 1) if replaces_at(s, steps, every)] == expected


# --- the usage limit ----------------------------------------------------------------------


BATCH_COUNTS = [1, 7, 100, 1000, 12345]


def thresholds_for(batches, rng):
    """Fixed, random and exactly-on-a-ratio thresholds (and their float neighbours)."""
    fixed = [0.0, 0.01, 0.1, 1 / 3, 0.5, 0.999, 1.0]
    drawn = [rng.random() for _ in range(20)]
    on_ratio = [rng.randint(0, batches) / batches for _ in range(10)]
    on_ratio += [1 / batches, (batches - 1) / batches]
    neighbours = [math.nextafter(t, direction) for t in on_ratio + fixed
                  for direction in (0.0, 1.0)]
    return [t for t in fixed + drawn + on_ratio + neighbours if 0.0 <= t <= 1.0]


@pytest.mark.parametrize("batches", BATCH_COUNTS)
def test_usage_limit_equals_the_float64_rule(batches):
    rng = random.Random(batches)
    counts = np.arange(batches + 1, dtype=np.int64)  # every possible count 0..batches
    ratios = counts / batches  # float64, correctly rounded like Python's u / batches
    for threshold in thresholds_for(batches, rng):
        limit = usage_limit(threshold, batches)
        assert isinstance(limit, int)
        unused_by_rule = ratios < threshold
        assert np.array_equal(counts < limit, unused_by_rule), (threshold, batches, limit)
        # spot-check the Python expression itself at and around the limit
        for u in {0, limit - 1, limit, limit + 1, batches}:
            if 0 <= u <= batches:
                assert (u < limit) == (u / batches < threshold)
