"""stochastic_vq.loop.train under torch.distributed: 2 CPU processes (gloo on loopback) with DDP.

Each rank draws its own data; after 300 steps with replacement every 100 steps the
codebooks of both ranks must be bitwise identical, for AVQ, PVQ and RVQ (with codebooks
learnt by gradient and by moving averages, whose statistics too); a 2-process
run stopped and resumed must end exactly like an uninterrupted one.
"""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stochastic_vq.loop import TrainConfig, train
from stochastic_vq_core.paper import METHODS

WORLD = 2
# moving-average codebooks: every training step all-reduces the batch statistics
EMA_RUNS = [(f"{method}-ema", {"method": method, "codebook_update": "ema"})
            for method in ("avq", "rvq", "pvq")]
pytestmark = pytest.mark.slow  # spawns processes


def _config(method: str) -> TrainConfig:
    return TrainConfig(method=method, stages=2, bits=4, data_dim=8, beam_width=2, batch_size=8,
                       steps=300, replace_every=100, discard_threshold=0.3, log_every=100,
                       save_every=100, eval_samples=1024, device="cpu")


def _worker(rank: int, folder: str) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    # a file rendezvous: no port to pick, so no race with other processes for one
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD)
    try:
        results = {}
        for method in sorted(METHODS):
            result = train(_config(method), progress=False)
            results[method] = {"codebooks": result["quantizer"].codebooks.detach(),
                               "usage": result["quantizer"].codebook_usage,
                               "replaced": sum(sum(r["replaced"]) for r in result["replacements"]),
                               "eval_mse": result["eval_mse"]}
        for name, options in [("rvq-diveq", {"estimator": "diveq"}), *EMA_RUNS]:
            result = train(replace(_config("rvq"), **options), progress=False)
            quantizer = result["quantizer"]
            results[name] = {"codebooks": quantizer.codebooks.detach(),
                             "usage": quantizer.codebook_usage,
                             "replaced": sum(sum(r["replaced"]) for r in result["replacements"]),
                             "eval_mse": result["eval_mse"],
                             "averages": [getattr(quantizer, buffer, torch.zeros(0))
                                          for buffer in ("ema_count", "ema_sum")]}
        config = replace(_config("rvq"), out=str(Path(folder) / "run"), save_every=70)
        train(config, progress=False, stop_after=250)  # last checkpoint at step 210
        resumed = train(replace(config, resume=True), progress=False)
        results["resumed_rvq"] = {"codebooks": resumed["quantizer"].codebooks.detach(),
                                  "world_size": resumed["world_size"]}
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    results = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return folder, results


@pytest.mark.parametrize("method", [*sorted(METHODS), "rvq-diveq", *dict(EMA_RUNS)])
def test_codebooks_stay_identical_on_all_ranks(ranks, method):
    _, (first, second) = ranks
    assert torch.equal(first[method]["codebooks"], second[method]["codebooks"])
    assert first[method]["replaced"] > 0 and first[method]["replaced"] == second[method]["replaced"]
    # each rank counted the usage of its own data
    assert not torch.equal(first[method]["usage"], second[method]["usage"])
    assert first[method]["eval_mse"] == second[method]["eval_mse"] > 0


@pytest.mark.parametrize("method", dict(EMA_RUNS))
def test_moving_averages_stay_identical_on_all_ranks(ranks, method):
    _, (first, second) = ranks
    for mine, other in zip(first[method]["averages"], second[method]["averages"]):
        assert mine.numel() > 0 and torch.equal(mine, other)


def test_resume_under_ddp_is_exact_and_only_rank_0_writes(ranks):
    folder, (first, second) = ranks
    for rank in (first, second):
        assert torch.equal(rank["resumed_rvq"]["codebooks"], first["rvq"]["codebooks"])
        assert rank["resumed_rvq"]["world_size"] == WORLD
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["checkpoint.pt", "log.json"]
