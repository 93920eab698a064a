"""stochastic_vq.config: the settings of a run, their checks and the data-aware defaults."""

import re

import pytest

from helpers import tiny
from stochastic_vq.config import DATA_CHOICES, PAPER_CHOICES, ConfigError, TrainConfig


def test_defaults_are_the_papers_example_scripts():
    config = TrainConfig(method="avq", device="cpu")
    assert (config.stages, config.bits, config.beam_width) == (3, 5, 8)
    assert (config.data_dim, config.steps, config.batch_size, config.lr) == (128, 20000, 64, 1e-3)
    assert (config.replace_every, config.discard_threshold) == (1000, 0.01)
    assert (TrainConfig(method="pvq").stages, TrainConfig(method="rvq").bits) == (4, 7)


def test_unset_init_and_lr_scale_resolve_by_the_data():
    config = TrainConfig(method="rvq")
    assert (config.init, config.lr_scale) == (None, None)
    assert config.resolved(on_data=False).init == PAPER_CHOICES["init"] == "uniform"
    assert config.resolved(on_data=False).lr_scale == PAPER_CHOICES["lr_scale"] == "absolute"
    assert config.resolved(on_data=True).init == DATA_CHOICES["init"] == "data"
    assert config.resolved(on_data=True).lr_scale == DATA_CHOICES["lr_scale"] == "data"


def test_explicit_init_and_lr_scale_are_kept():
    config = TrainConfig(method="rvq", init="uniform", lr_scale="absolute")
    assert config.resolved(on_data=True) == config
    mixed = TrainConfig(method="rvq", init="data-disjoint").resolved(on_data=False)
    assert (mixed.init, mixed.lr_scale) == ("data-disjoint", "absolute")


@pytest.mark.parametrize("overrides, setting, message", [
    ({"method": "lvq"}, "method", "must be one of avq, rvq, pvq"),
    ({"steps": 0}, "steps", "must be an integer >= 1, got 0"),
    ({"bits": 31}, "bits", "must be <= 30"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"threads": True}, "threads", "integer"),
    ({"lr": float("nan")}, "lr", "positive number"),
    ({"discard_threshold": 2.0}, "discard_threshold", "[0, 1]"),
    ({"init": "kmeans"}, "init", "must be one of uniform, data, data-disjoint"),
    ({"lr_scale": "relative"}, "lr_scale", "must be one of absolute, data"),
    ({"method": "pvq", "stages": 3}, "stages", "(3) must divide data_dim (8)"),
    ({"estimator": "ste"}, "estimator", "must be one of nsvq, diveq"),
    ({"estimator": "diveq", "diveq_noise": -1.0}, "diveq_noise", "must be in [0, inf)"),
    ({"estimator": "diveq", "diveq_noise": float("inf")}, "diveq_noise", "[0, inf), got inf"),
    ({"diveq_noise": 0.5}, "diveq_noise", "only with estimator='diveq', got estimator='nsvq'"),
    ({"codebook_update": "ema", "ema_decay": 1.0}, "ema_decay", "must be in [0, 1), got 1.0"),
    ({"ema_decay": 0.5}, "ema_decay",
     "only with codebook_update='ema', got codebook_update='gradient'"),
    ({"device": "gpu0"}, "device", "unknown device"),
    ({"resume": True}, "resume", "run directory"),
])
def test_validate_names_the_first_bad_setting(overrides, setting, message):
    config = tiny(**{"method": "rvq", **overrides})
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config.validate()
    assert info.value.setting == setting
