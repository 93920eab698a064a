"""stochastic_vq.runfiles: atomic writes and which checkpoints a run may resume."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from helpers import tiny
from stochastic_vq.config import ConfigError
from stochastic_vq.loop import train
from stochastic_vq.runfiles import atomic_write, read_checkpoint, write_json


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "log.json"
    write_json(path, {"a": 1})

    def failing(temp):
        Path(temp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    out = tmp_path / "run"
    train(tiny("rvq", steps=30, out=str(out)), progress=False)
    with pytest.raises(ConfigError, match=r"bits=3 \(now 4\), seed=0 \(now 5\)"):
        train(tiny("rvq", steps=30, out=str(out), bits=4, seed=5, resume=True), progress=False)


def test_resume_refuses_other_resolved_defaults(tmp_path):
    """A run begun on N(0, 1) data (uniform init) cannot continue on data (data init)."""
    out = tmp_path / "run"
    train(tiny("rvq", steps=30, out=str(out)), progress=False)
    with pytest.raises(ConfigError, match=r"init='uniform' \(now 'data'\)"):
        train(tiny("rvq", steps=30, out=str(out), resume=True), torch.randn(100, 8),
              progress=False)


def test_checkpoints_of_earlier_versions_are_read(tmp_path):
    """Before data_dim and lr_scale: the setting was called dim and lr was absolute."""
    config = tiny("rvq", init="uniform", lr_scale="absolute")
    saved = {**asdict(config), "dim": config.data_dim}
    del saved["data_dim"], saved["lr_scale"]
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": saved, "world_size": 1}, path)
    assert read_checkpoint(path, config, 1)["config"] == saved
    with pytest.raises(ConfigError, match="world_size=1 \\(now 2\\)"):
        read_checkpoint(path, config, 2)


def test_an_unreadable_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint") as info:
        read_checkpoint(path, tiny("rvq"), 1)
    assert "\n" not in str(info.value) and info.value.setting == "resume"


def test_defaults_left_out_match_the_values_earlier_versions_wrote(tmp_path):
    """Earlier versions wrote diveq_noise 1.0 and ema_decay 0.8 where a run now has None."""
    config = tiny("rvq", init="uniform", lr_scale="absolute")
    assert (config.diveq_noise, config.ema_decay) == (None, None)
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {**asdict(config), "diveq_noise": 1.0, "ema_decay": 0.8},
                "world_size": 1}, path)
    read_checkpoint(path, config, 1)
    torch.save({"config": {**asdict(config), "estimator": "diveq", "diveq_noise": 0.5},
                "world_size": 1}, path)
    with pytest.raises(ConfigError, match=r"diveq_noise=0.5 \(now None\)"):
        read_checkpoint(path, replace(config, estimator="diveq"), 1)
