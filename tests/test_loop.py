"""stochastic_vq.loop: training runs, exact resume, evaluation, defaults on users' data."""

from dataclasses import replace

import pytest
import torch

from helpers import tiny, without_times
from stochastic_vq import loop
from stochastic_vq.config import ConfigError
from stochastic_vq.loop import train
from stochastic_vq.methods import build_quantizer, quantizer_class
from stochastic_vq_core.paper import METHODS


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_a_kill_ends_exactly_like_an_uninterrupted_run(method, tmp_path):
    config = tiny(method, steps=120)
    whole = train(replace(config, out=str(tmp_path / "whole")), progress=False)
    interrupted = replace(config, out=str(tmp_path / "cut"))
    # killed at step 100: the last checkpoint (step 90) is in the middle of a log window
    assert train(interrupted, progress=False, stop_after=100)["eval_mse"] is None
    resumed = train(replace(interrupted, resume=True), progress=False)
    assert torch.equal(resumed["quantizer"].codebooks, whole["quantizer"].codebooks)
    assert resumed["eval_mse"] == whole["eval_mse"]
    assert without_times(resumed) == without_times(whole)


def test_train_api_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(tiny("avq", steps=40), progress=False)
    assert list(tmp_path.iterdir()) == []
    quantizer = result["quantizer"]
    assert isinstance(quantizer, quantizer_class("avq")) and not quantizer.training
    assert len(result["windows"]) == 2 and result["eval_mse"] > 0


def test_defaults_on_the_normal_stream_are_the_papers():
    result = train(tiny("rvq", steps=40), progress=False)
    assert result["resolved_defaults"] == {"init": "uniform", "lr_scale": "absolute"}
    assert (result["config"]["init"], result["config"]["lr_scale"]) == ("uniform", "absolute")
    explicit = train(tiny("rvq", steps=40, init="uniform", lr_scale="absolute"), progress=False)
    assert explicit["resolved_defaults"] == {}
    assert explicit["eval_mse"] == result["eval_mse"]


def test_defaults_on_data_are_data_dependent():
    data = 120.0 + 80.0 * torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    result = train(tiny("rvq", steps=40), data, progress=False)
    assert result["resolved_defaults"] == {"init": "data", "lr_scale": "data"}
    explicit = train(tiny("rvq", steps=40, init="data", lr_scale="data"), data, progress=False)
    assert explicit["eval_mse"] == result["eval_mse"]
    only_lr = train(tiny("rvq", steps=40, init="uniform"), data, progress=False)
    assert only_lr["resolved_defaults"] == {"lr_scale": "data"}


def test_evaluate_is_the_mse_per_dimension_of_hard_quantization():
    quantizer = build_quantizer("rvq", 2, 3, 8).eval()
    x = torch.randn(70_000, 8)  # more than one evaluation chunk
    hard, _ = quantizer(x, train_mode=False)
    expected = (x - hard).double().pow(2).mean().item()
    assert loop.evaluate(quantizer, x) == pytest.approx(expected, rel=1e-9)
    drawn = []

    def next_rows(n):  # a stream of vectors: x, n rows at a time
        drawn.append(n)
        return x[sum(drawn) - n:sum(drawn)]

    assert loop.evaluate(quantizer, next_rows, 50_000) == pytest.approx(
        (x[:50_000] - hard[:50_000]).double().pow(2).mean().item(), rel=1e-9)
    assert drawn == [loop.EVAL_CHUNK, 50_000 - loop.EVAL_CHUNK]


def test_lr_scale_data_multiplies_lr_by_the_datas_standard_deviation():
    data = 50.0 + 40.0 * torch.randn(2000, 8)
    std = float(data.std())
    assert loop.lr_data_scale(tiny("rvq", lr_scale="data"), data) == pytest.approx(std)
    assert loop.lr_data_scale(tiny("rvq", lr_scale="absolute"), data) == 1.0  # the paper's
    assert loop.lr_data_scale(tiny("rvq", lr_scale="data"), None) == 1.0  # N(0, 1) stream


def test_raw_scale_data_trains_with_data_init_and_relative_lr():
    """Pixel-like data (mean 120, std 80): the paper's settings barely move the codebooks."""
    generator = torch.Generator().manual_seed(0)
    data = 120.0 + 80.0 * torch.randn(4000, 8, generator=generator)
    paper = train(tiny("rvq", steps=60, init="uniform", lr_scale="absolute"), data,
                  progress=False)["eval_mse"]
    robust = train(tiny("rvq", steps=60), data, progress=False)["eval_mse"]
    assert robust < 0.5 * float(data.var(0).mean()) < paper


@pytest.mark.parametrize("method", ["rvq", "avq", "pvq"])
def test_disjoint_data_init_trains(method):
    """init="data-disjoint": each RVQ/AVQ codebook is fitted to its own share of the data."""
    data = 120.0 + 80.0 * torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    result = train(tiny(method, steps=40, init="data-disjoint"), data, progress=False)
    assert result["eval_mse"] < 0.5 * float(data.var(0).mean())


def test_train_rejects_a_bad_config_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="^steps: must be an integer >= 1"):
        train(tiny("rvq", steps=0, out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


def test_training_on_data_without_eval_data_warns_and_says_so_in_the_log():
    data = torch.randn(500, 8)
    with pytest.warns(UserWarning, match="no eval_data: eval_mse will be measured on the "
                                         "training rows"):
        result = train(tiny("rvq", steps=20), data, progress=False)
    assert result["eval_on"] == "500 rows of the training data, not held out (no eval_data)"


def test_fewer_rows_than_codewords_warns():
    """5 rows for codebooks of 8 codewords: the codebooks cannot be filled."""
    with pytest.warns(UserWarning, match="data has 5 rows, fewer than the 8 codewords"):
        train(tiny("pvq", steps=20), torch.randn(5, 8), torch.randn(50, 8), progress=False)


def test_held_out_data_of_enough_rows_trains_without_warning(recwarn):
    train(tiny("avq", steps=20), torch.randn(500, 8), torch.randn(50, 8), progress=False)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
