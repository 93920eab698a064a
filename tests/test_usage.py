"""Usage counting and replacement of unused codewords (stochastic_vq_core.usage), on all three.

Counters count batches in training mode only; replacement overwrites exactly the entries
below the threshold with copies of used ones, resets the counters, optionally zeroes
their optimizer state, and is reproducible with a generator.
"""

import pytest
import torch

from helpers import D, K, M, make, set_usage, stage_rows, used_mask

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


