"""Tests of training.py and the train_*.py scripts: runs, logs, checkpoints, resume, errors."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import training
from training import (
    METHODS,
    ConfigError,
    TrainConfig,
    atomic_write,
    batch_sampler,
    build_parser,
    config_from_args,
    replaces_at,
    stream_seed,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"avq": "train_additive_vq.py", "pvq": "train_product_vq.py",
           "rvq": "train_residual_vq.py"}
TINY_FLAGS = ["--dim", "8", "--stages", "2", "--bits", "3", "--batch-size", "16",
              "--replace-every", "20", "--log-every", "25", "--eval-samples", "512",
              "--device", "cpu"]


def tiny(method: str, **overrides) -> TrainConfig:
    """A run of a few seconds: 2 codebooks of 8 codewords in 8 dimensions."""
    settings = dict(method=method, stages=2, bits=3, dim=8, beam_width=2, batch_size=16,
                    steps=100, replace_every=20, log_every=25, save_every=30,
                    eval_samples=512, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def run_main(method: str, argv: list, capsys) -> tuple:
    """training.main in-process: (exit status, stdout, stderr)."""
    try:
        training.main(method, [str(a) for a in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def without_times(log: dict) -> dict:
    """The log without wall-clock times, which differ between equal runs."""
    skip = {"train_time", "eval_time", "wall_time", "quantizer", "config"}
    windows = [{k: v for k, v in w.items() if k != "time"} for w in log["windows"]]
    return {**{k: v for k, v in log.items() if k not in skip}, "windows": windows}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_script_runs_and_writes_log_and_checkpoint(method, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = TINY_FLAGS + ["--steps", "100", "--out", str(out)]
    if method == "avq":
        flags += ["--beam-width", "2"]
    done = subprocess.run([sys.executable, SCRIPTS[method], *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 100/100" in done.stdout and "eval_mse" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.json"]

    log = json.loads((out / "log.json").read_text())
    assert log["config"]["method"] == method and log["config"]["steps"] == 100
    assert log["library_version"] and log["torch_version"] == torch.__version__
    assert [w["step"] for w in log["windows"]] == [25, 50, 75, 100]
    assert all(np.array(w["usage"]).shape == (2, 8) for w in log["windows"])
    assert [r["step"] for r in log["replacements"]] == [20, 40, 60]  # not in the last 40
    assert 0 < log["eval_mse"] < 1.2 and log["finished"] and log["wall_time"] > 0

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 100 and "optimizer" in checkpoint
    quantizer = training.build_quantizer(TrainConfig(**log["config"]))
    quantizer.load_state_dict(checkpoint["vector_quantizer"])  # the original's key


def test_replacement_schedule_is_the_originals():
    config = TrainConfig(steps=20000, replace_every=1000)
    steps = [s for s in range(1, 20001) if replaces_at(s, config)]
    assert steps == list(range(1000, 18001, 1000))


@pytest.mark.parametrize("method", sorted(METHODS))
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


def test_resume_from_the_command_line(tmp_path, capsys):
    flags = TINY_FLAGS + ["--steps", "90", "--save-every", "40"]
    assert run_main("rvq", flags + ["--out", tmp_path / "whole"], capsys)[0] == 0
    assert run_main("rvq", flags + ["--out", tmp_path / "cut", "--stop-after", "70"],
                    capsys)[0] == 0
    status, stdout, _ = run_main("rvq", flags + ["--out", tmp_path / "cut", "--resume"], capsys)
    assert status == 0 and "step 90/90" in stdout
    logs = [json.loads((tmp_path / name / "log.json").read_text()) for name in ("whole", "cut")]
    assert logs[0]["eval_mse"] == logs[1]["eval_mse"]
    checkpoints = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
                   for name in ("whole", "cut")]
    assert torch.equal(checkpoints[0]["vector_quantizer"]["codebooks"],
                       checkpoints[1]["vector_quantizer"]["codebooks"])


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny("rvq", steps=30, out=str(out)), progress=False)
    with pytest.raises(ConfigError, match=r"bits=3 \(now 4\), seed=0 \(now 5\)"):
        train(tiny("rvq", steps=30, out=str(out), bits=4, seed=5, resume=True), progress=False)
    flags = TINY_FLAGS + ["--steps", "30", "--out", out, "--resume", "--lr", "0.01"]
    status, _, stderr = run_main("rvq", flags, capsys)
    assert status == 2 and "lr=0.001 (now 0.01)" in stderr and stderr.count("\n") == 1


def test_resume_needs_a_checkpoint_and_a_new_run_needs_a_new_folder(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, stderr = run_main("rvq", TINY_FLAGS + ["--out", out, "--resume"], capsys)
    assert status == 2 and "does not exist" in stderr
    train(tiny("rvq", steps=30, out=str(out)), progress=False)
    status, _, stderr = run_main("rvq", TINY_FLAGS + ["--out", out], capsys)
    assert status == 2 and "--resume" in stderr


def test_default_out_is_a_new_folder_named_after_the_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = build_parser("avq")
    first = config_from_args("avq", parser.parse_args([]))
    assert first.out == str(Path("output") / "avq_3x5b_bw8_d128_seed0")
    Path(first.out).mkdir(parents=True)
    assert config_from_args("avq", parser.parse_args([])).out.endswith("seed0_2")
    resumed = config_from_args("avq", parser.parse_args(["--resume"]))
    assert resumed.out == first.out


def test_help_explains_every_flag(capsys):
    status, stdout, _ = run_main("avq", ["--help"], capsys)
    assert status == 0
    for flag in ["--steps", "--batch-size", "--lr", "--dim", "--stages", "--bits",
                 "--beam-width", "--replace-every", "--discard-threshold", "--log-every",
                 "--save-every", "--eval-samples", "--seed", "--device", "--out", "--resume",
                 "--init", "--data", "--eval-data", "--lr-scale"]:
        assert flag in stdout
    assert "--stop-after" not in stdout


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "log.json"
    training.write_json(path, {"a": 1})

    def failing(temp):
        Path(temp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps: must be an integer >= 1, got -5"),
    (["--bits", "0"], "--bits: must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr: must be a positive number"),
    (["--discard-threshold", "1.5"], "--discard-threshold"),
    (["--stages", "3"], "divisible"),  # PVQ with D = 8
    (["--steps", "ten"], "invalid int value"),
])
def test_bad_flags_give_one_line_and_exit_2(flags, message, capsys):
    status, _, stderr = run_main("pvq", TINY_FLAGS + flags, capsys)
    assert status == 2 and message in stderr and stderr.count("\n") == 1


def _npy(tmp_path, name, array) -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize("array, flags, message", [
    (np.zeros(10), [], "must hold an (N, D) array, got shape (10,)"),
    (np.zeros((4, 2, 8)), [], "got shape (4, 2, 8)"),
    (np.array([[0.0] * 8, [np.nan] * 8, [1.0, np.inf] + [0.0] * 6]), [],
     "2 rows contain NaN or Inf (first: row 1)"),
    (np.zeros((10, 8)), ["--dim", "16"], "--dim: dim is 16 but"),
    (np.array([["a"] * 8]), [], "must hold real numbers"),
])
def test_bad_data_files_give_one_line_and_exit_2(array, flags, message, tmp_path, capsys):
    path = _npy(tmp_path, "data.npy", array)
    argv = ["--steps", "10", "--out", tmp_path / "run", "--data", path, *flags]
    status, _, stderr = run_main("rvq", argv, capsys)
    assert status == 2 and message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_missing_data_file_and_eval_data_of_another_dimension(tmp_path, capsys):
    status, _, stderr = run_main("rvq", ["--data", tmp_path / "none.npy"], capsys)
    assert status == 2 and "--data: cannot read" in stderr
    data = _npy(tmp_path, "data.npy", np.ones((50, 6)))
    held_out = _npy(tmp_path, "held_out.npy", np.ones((50, 4)))
    argv = ["--data", data, "--eval-data", held_out, "--out", tmp_path / "run"]
    status, _, stderr = run_main("rvq", argv, capsys)
    assert status == 2 and "has 4 columns" in stderr


def test_training_on_a_data_file_takes_its_dimension(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = _npy(tmp_path, "data.npy", 3.0 * rng.standard_normal((400, 6)))
    held_out = _npy(tmp_path, "held_out.npy", 3.0 * rng.standard_normal((300, 6)))
    flags = ["--steps", "60", "--stages", "2", "--bits", "3", "--batch-size", "16",
             "--replace-every", "20", "--log-every", "30", "--data", data, "--init", "data"]
    status, stdout, stderr = run_main("pvq", flags + ["--out", tmp_path / "a"], capsys)
    assert status == 0, stderr
    log = json.loads((tmp_path / "a" / "log.json").read_text())
    assert log["config"]["dim"] == 6 and log["eval_on"].startswith("400 rows of the training")
    status, _, _ = run_main("pvq", flags + ["--out", tmp_path / "b", "--eval-data", held_out],
                            capsys)
    log = json.loads((tmp_path / "b" / "log.json").read_text())
    assert status == 0 and log["eval_on"] == "300 rows of eval_data"
    assert 0 < log["eval_mse"] < 9.0  # well below the data's variance


def test_data_streams_are_a_function_of_seed_and_rank():
    def first_batch(seed, rank, data=None):
        generator = torch.Generator().manual_seed(stream_seed(seed, rank, 0))
        return batch_sampler(data, 4, 3, generator)()

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(0, 1))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))
    data = torch.arange(30.0).reshape(10, 3)
    rows = first_batch(0, 0, data)
    assert torch.equal(rows, first_batch(0, 0, data)) and (rows[:, 0] % 3 == 0).all()


def test_train_api_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(tiny("avq", steps=40), progress=False)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(result["quantizer"], METHODS["avq"]) and not result["quantizer"].training
    assert len(result["windows"]) == 2 and result["eval_mse"] > 0


def test_evaluate_is_the_mse_per_dimension_of_hard_quantization():
    quantizer = training.build_quantizer(tiny("rvq")).eval()
    x = torch.randn(70_000, 8)  # more than one evaluation chunk
    hard, _ = quantizer(x, train_mode=False)
    expected = (x - hard).double().pow(2).mean().item()
    assert training.evaluate(quantizer, x) == pytest.approx(expected, rel=1e-9)
    drawn = []

    def next_rows(n):  # a stream of vectors: x, n rows at a time
        drawn.append(n)
        return x[sum(drawn) - n:sum(drawn)]

    assert training.evaluate(quantizer, next_rows, 50_000) == pytest.approx(
        (x[:50_000] - hard[:50_000]).double().pow(2).mean().item(), rel=1e-9)
    assert drawn == [training.EVAL_CHUNK, 50_000 - training.EVAL_CHUNK]


def test_lr_scale_data_multiplies_lr_by_the_datas_standard_deviation():
    data = 50.0 + 40.0 * torch.randn(2000, 8)
    std = float(data.std())
    assert training.lr_factor(tiny("rvq", lr_scale="data"), data) == pytest.approx(std)
    assert training.lr_factor(tiny("rvq"), data) == 1.0  # the paper's absolute step size
    assert training.lr_factor(tiny("rvq", lr_scale="data"), None) == 1.0  # N(0, 1) stream
    with pytest.raises(ConfigError, match="must be .absolute. or .data."):
        tiny("rvq", lr_scale="relative").validate()


def test_raw_scale_data_trains_with_data_init_and_relative_lr():
    """Pixel-like data (mean 120, std 80): the paper's settings barely move the codebooks."""
    generator = torch.Generator().manual_seed(0)
    data = 120.0 + 80.0 * torch.randn(4000, 8, generator=generator)
    paper = train(tiny("rvq", steps=60), data, progress=False)["eval_mse"]
    robust = train(tiny("rvq", steps=60, init="data", lr_scale="data"), data,
                   progress=False)["eval_mse"]
    assert robust < 0.5 * float(data.var(0).mean()) < paper


@pytest.mark.parametrize("method", ["rvq", "avq", "pvq"])
def test_disjoint_data_init_trains(method):
    """--init data-disjoint: each RVQ/AVQ codebook is fitted to its own share of the data."""
    data = 120.0 + 80.0 * torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    result = train(tiny(method, steps=40, init="data-disjoint", lr_scale="data"), data,
                   progress=False)
    assert result["eval_mse"] < 0.5 * float(data.var(0).mean())
    with pytest.raises(ConfigError, match="must be one of uniform, data, data-disjoint"):
        tiny(method, init="kmeans").validate()
