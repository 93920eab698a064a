"""The ``process_group`` of a quantizer, with 2 CPU processes (gloo, file rendezvous).

``None``: each process trains its own quantizer and replaces its codewords alone, as often
as it likes, without waiting for the other. ``"default"`` and an explicit group: usage is
summed over the processes and rank 0's replacement is given to all, so the codebooks are
bitwise equal although each rank counted other usage.
"""

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from additive_vq import AVQ
from helpers import nsvq_step
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq_core.usage import usage_limit

WORLD = 2
M, BITS, D = 2, 3, 8
K = 2**BITS
THRESHOLD = 0.3
FACTORIES = {
    "AVQ": lambda **kw: AVQ(M, BITS, D, 2, THRESHOLD, **kw),
    "PVQ": lambda **kw: PVQ(M, BITS, D, THRESHOLD, **kw),
    "RVQ": lambda **kw: RVQ(M, BITS, D, THRESHOLD, **kw),
}
# process_group=None: rank r trains a quantizer from its own seed and replaces its
# codewords REPLACEMENTS[r] times, a different number of times on each rank
REPLACEMENTS = (3, 1)
SYNC_BATCHES = 4  # batches counted on each rank before a synchronised replacement
REPLACE_SEED = 100  # rank r replaces with a generator seeded REPLACE_SEED + r


# --- helpers (module level, for the spawned processes) ------------------------------------


def train_alone(rank: int, process_group) -> torch.Tensor:
    """Train an RVQ of rank ``rank``'s own seed and data, replacing REPLACEMENTS[rank] times."""
    torch.manual_seed(10 + rank)
    vq = FACTORIES["RVQ"](process_group=process_group)
    optimizer = torch.optim.SGD(vq.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(20 + rank)
    for _ in range(REPLACEMENTS[rank]):
        for _ in range(3):
            nsvq_step(vq, optimizer, torch.randn(16, D))
        vq.replace_unused_codebooks(3, verbose=False, generator=generator)
    return vq.codebooks.detach().clone()


def replace_synchronised(rank: int, kind: str, process_group) -> dict:
    """Count usage of rank-dependent data on identical quantizers, then replace."""
    torch.manual_seed(0)
    vq = FACTORIES[kind](process_group=process_group)
    with torch.no_grad():
        vq.codebooks.normal_()
    before = vq.codebooks.detach().clone()
    data = torch.Generator().manual_seed(1 + rank)
    for _ in range(SYNC_BATCHES):
        vq(torch.randn(3, D, generator=data), train_mode=True)
    usage = vq.codebook_usage.clone()
    replaced = vq.replace_unused_codebooks(
        SYNC_BATCHES, verbose=False, generator=torch.Generator().manual_seed(REPLACE_SEED + rank))
    return {"before": before, "usage": usage, "replaced": replaced,
            "after": vq.codebooks.detach().clone(), "usage_after": vq.codebook_usage.clone()}


def _init(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    # a short timeout turns a collective that waits for the other rank into an error
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=30))


def _worker_alone(rank: int, folder: str) -> None:
    _init(rank, folder)
    try:
        torch.save(train_alone(rank, None), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _worker_synchronised(rank: int, folder: str) -> None:
    _init(rank, folder)
    try:
        group = dist.new_group([0, 1])
        results = {}
        for kind in sorted(FACTORIES):
            results["default", kind] = replace_synchronised(rank, kind, "default")
            results["group", kind] = replace_synchronised(rank, kind, group)
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def train_with_dropout(rank: int) -> dict:
    """Moving-average RVQ with quantizer dropout and masks, each rank its own draws and
    data; on rank 0 the first batch is all padding."""
    torch.manual_seed(0)
    vq = RVQ(M, BITS, D, codebook_update="ema", quantizer_dropout=1.0)
    before = vq.codebooks.detach().clone()
    torch.manual_seed(30 + rank)
    for step in range(4):
        mask = torch.rand(3, 5) < 0.6
        if rank == 0 and step == 0:
            mask[:] = False
        vq(torch.randn(3, 5, D), train_mode=True, mask=mask)
    return {"before": before, "after": vq.codebooks.detach().clone(),
            "usage": vq.codebook_usage.clone()}


def _worker_dropout(rank: int, folder: str) -> None:
    _init(rank, folder)
    try:
        torch.save(train_with_dropout(rank), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(worker, folder: Path, timeout: float = 60.0) -> list:
    """Run ``worker(rank, folder)`` on WORLD processes; their saved results, by rank."""
    context = mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s (deadlock?)")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_process_group_trains_each_rank_alone(tmp_path):
    first, second = run_ranks(_worker_alone, tmp_path)
    assert not torch.equal(first, second)
    for rank, result in enumerate((first, second)):
        # what the same training gives in one process, torch.distributed not initialised
        assert torch.equal(result, train_alone(rank, None))


@pytest.fixture(scope="module")
def synchronised(tmp_path_factory):
    return run_ranks(_worker_synchronised, tmp_path_factory.mktemp("synchronised"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("group", ["default", "group"])
def test_synchronised_replacement_is_identical_on_all_ranks(synchronised, group, kind):
    first, second = (rank[group, kind] for rank in synchronised)
    assert torch.equal(first["before"], second["before"])
    assert not torch.equal(first["usage"], second["usage"])  # each rank counted its own data
    assert torch.equal(first["after"], second["after"])  # bitwise
    assert not torch.equal(first["after"], first["before"])
    assert torch.equal(first["replaced"], second["replaced"])
    for rank in (first, second):
        assert rank["usage_after"].sum() == 0

    # the replacement is rank 0's, decided on the usage summed over the ranks
    total = first["usage"] + second["usage"]
    unused = total < usage_limit(THRESHOLD, SYNC_BATCHES * WORLD)
    assert first["replaced"].tolist() == unused.sum(dim=1).tolist()
    assert 0 < int(first["replaced"].sum()) < M * K
    torch.manual_seed(0)
    alone = FACTORIES[kind](process_group=None)
    with torch.no_grad():
        alone.codebooks.copy_(first["before"])
        alone.codebook_usage.copy_(total)
    alone.replace_unused_codebooks(SYNC_BATCHES * WORLD, verbose=False,
                                   generator=torch.Generator().manual_seed(REPLACE_SEED))
    assert torch.equal(alone.codebooks.detach(), first["after"])


@pytest.mark.slow
def test_dropout_and_masks_keep_moving_averages_equal_on_all_ranks(tmp_path):
    """Each rank draws its own numbers of codebooks and masks its own padding, yet the
    ranks take the same moving-average steps: no collective waits, replicas stay equal."""
    first, second = run_ranks(_worker_dropout, tmp_path)
    assert torch.equal(first["before"], second["before"])
    assert not torch.equal(first["usage"], second["usage"])
    assert torch.equal(first["after"], second["after"])
    assert not torch.equal(first["after"], first["before"])


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("process_group", [3, "world", 1.5, True, object()])
def test_invalid_process_group_is_a_type_error(kind, process_group):
    with pytest.raises(TypeError, match="process_group"):
        FACTORIES[kind](process_group=process_group)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_process_group_attribute(kind):
    assert FACTORIES[kind]().process_group == "default"
    assert FACTORIES[kind](process_group=None).process_group is None
