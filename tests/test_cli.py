"""The train_*.py scripts and their command line (stochastic_vq.cli)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT
from stochastic_vq import cli
from stochastic_vq.methods import build_quantizer
from stochastic_vq_core.paper import METHODS

SCRIPTS = {"avq": "train_additive_vq.py", "pvq": "train_product_vq.py",
           "rvq": "train_residual_vq.py"}
TINY_FLAGS = ["--dim", "8", "--stages", "2", "--bits", "3", "--batch-size", "16",
              "--replace-every", "20", "--log-every", "25", "--eval-samples", "512",
              "--device", "cpu"]


def run_main(method: str, argv: list, capsys) -> tuple:
    """cli.main in-process: (exit status, stdout, stderr)."""
    try:
        cli.main(method, [str(a) for a in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
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
    config = log["config"]
    quantizer = build_quantizer(method, config["stages"], config["bits"], config["data_dim"],
                                config["beam_width"])
    quantizer.load_state_dict(checkpoint["vector_quantizer"])  # the original's key


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


def test_resume_with_other_flags_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main("rvq", TINY_FLAGS + ["--steps", "30", "--out", out], capsys)[0] == 0
    flags = TINY_FLAGS + ["--steps", "30", "--out", out, "--resume", "--lr", "0.01"]
    status, _, stderr = run_main("rvq", flags, capsys)
    assert status == 2 and "lr=0.001 (now 0.01)" in stderr and stderr.count("\n") == 1


def test_resume_needs_a_checkpoint_and_a_new_run_needs_a_new_folder(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, stderr = run_main("rvq", TINY_FLAGS + ["--out", out, "--resume"], capsys)
    assert status == 2 and "does not exist" in stderr
    assert run_main("rvq", TINY_FLAGS + ["--steps", "30", "--out", out], capsys)[0] == 0
    status, _, stderr = run_main("rvq", TINY_FLAGS + ["--out", out], capsys)
    assert status == 2 and "--resume" in stderr


def test_default_out_is_a_new_folder_named_after_the_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = cli.build_parser("avq")
    first = cli.config_from_args("avq", parser.parse_args([]))
    assert first.out == str(Path("output") / "avq_3x5b_bw8_d128_seed0")
    Path(first.out).mkdir(parents=True)
    assert cli.config_from_args("avq", parser.parse_args([])).out.endswith("seed0_2")
    resumed = cli.config_from_args("avq", parser.parse_args(["--resume"]))
    assert resumed.out == first.out


def test_help_explains_every_flag(capsys):
    status, stdout, _ = run_main("avq", ["--help"], capsys)
    assert status == 0
    for flag in ["--steps", "--batch-size", "--lr", "--dim", "--stages", "--bits",
                 "--beam-width", "--replace-every", "--discard-threshold", "--log-every",
                 "--save-every", "--eval-samples", "--seed", "--device", "--out", "--resume",
                 "--init", "--data", "--eval-data", "--lr-scale", "--reset-optimizer-state"]:
        assert flag in stdout
    assert "--stop-after" not in stdout
    assert "(default: 20000)" in stdout and "(default: 3)" in stdout  # the paper's


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps: must be an integer >= 1, got -5"),
    (["--bits", "0"], "--bits: must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr: must be a positive number"),
    (["--discard-threshold", "1.5"], "--discard-threshold"),
    (["--stages", "3"], "must divide"),  # PVQ with D = 8
    (["--steps", "ten"], "invalid int value"),
    (["--dim", "0"], "--dim: must be an integer >= 1"),
    (["--diveq-noise", "0.5"], "--diveq-noise: is used only with estimator='diveq', got "
                               "estimator='nsvq'"),
    (["--estimator", "diveq", "--diveq-noise", "inf"], "--diveq-noise: must be in [0, inf)"),
    (["--ema-decay", "0.9"], "--ema-decay: is used only with codebook_update='ema'"),
    (["--codebook-update", "ema", "--ema-decay", "1"], "--ema-decay: must be in [0, 1), got"),
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
    (np.zeros((10, 8)), ["--dim", "16"], "--dim: data_dim is 16 but"),
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


def test_training_on_a_data_file_takes_its_dimension_and_data_defaults(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = _npy(tmp_path, "data.npy", 3.0 * rng.standard_normal((400, 6)))
    held_out = _npy(tmp_path, "held_out.npy", 3.0 * rng.standard_normal((300, 6)))
    flags = ["--steps", "60", "--stages", "2", "--bits", "3", "--batch-size", "16",
             "--replace-every", "20", "--log-every", "30", "--data", data]
    status, stdout, stderr = run_main("pvq", flags + ["--out", tmp_path / "a"], capsys)
    assert status == 0, stderr
    log = json.loads((tmp_path / "a" / "log.json").read_text())
    assert log["config"]["data_dim"] == 6
    assert log["eval_on"].startswith("400 rows of the training")
    assert log["resolved_defaults"] == {"init": "data", "lr_scale": "data"}
    assert (log["config"]["init"], log["config"]["lr_scale"]) == ("data", "data")
    status, _, _ = run_main("pvq", flags + ["--out", tmp_path / "b", "--eval-data", held_out,
                                            "--init", "uniform"], capsys)
    log = json.loads((tmp_path / "b" / "log.json").read_text())
    assert status == 0 and log["eval_on"] == "300 rows of eval_data"
    assert log["resolved_defaults"] == {"lr_scale": "data"} and log["config"]["init"] == "uniform"
    assert 0 < log["eval_mse"] < 9.0  # well below the data's variance


def test_estimator_flag_reaches_the_quantizer_and_the_log(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, _ = run_main("avq", TINY_FLAGS + ["--steps", "30", "--estimator", "diveq",
                                                 "--diveq-noise", "0.5", "--out", out], capsys)
    assert status == 0
    log = json.loads((out / "log.json").read_text())
    assert (log["config"]["estimator"], log["config"]["diveq_noise"]) == ("diveq", 0.5)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["vector_quantizer"]["_extra_state"]["estimator"] == "diveq"
    assert "_diveq_" in cli.run_name(cli.config_from_args("avq", cli.build_parser("avq")
                                                          .parse_args(["--estimator", "diveq"])))


def test_codebook_update_flag_trains_without_a_gradient_step(tmp_path, capsys):
    out = tmp_path / "ema"
    status, _, _ = run_main("pvq", TINY_FLAGS + ["--steps", "40", "--codebook-update", "ema",
                                                 "--estimator", "diveq", "--diveq-noise", "0",
                                                 "--out", out], capsys)
    assert status == 0
    log = json.loads((out / "log.json").read_text())
    assert log["config"]["codebook_update"] == "ema" and log["eval_mse"] > 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["vector_quantizer"]
    assert {"ema_count", "ema_sum"} <= set(state)
