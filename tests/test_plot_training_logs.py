"""Tests of plot_training_logs.py on fresh logs of the training loop, and on broken logs."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import plot_training_logs
from helpers import ROOT
from stochastic_vq.loop import TrainConfig, train


def _run(folder: Path, method: str) -> Path:
    out = folder / method
    config = TrainConfig(method=method, stages=2, bits=3, data_dim=8, beam_width=2, batch_size=16,
                         steps=60, replace_every=10, log_every=20, eval_samples=256,
                         device="cpu", out=str(out))
    train(config, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return [_run(folder, "rvq"), _run(folder, "avq")]


def test_plots_a_fresh_log(runs, capsys):
    assert plot_training_logs.main([str(runs[0])]) == 0
    pdf, png = runs[0] / "training_log.pdf", runs[0] / "training_summary.png"
    assert pdf.read_bytes().startswith(b"%PDF") and png.read_bytes().startswith(b"\x89PNG")
    pages = re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes())
    assert len(pages) == 1 + 3  # loss and replacements, then one usage page per window
    assert f"wrote {png}" in capsys.readouterr().out


def test_summary_shows_every_setting_and_nothing_runs_off_its_edges(runs):
    """The settings text ends with the versions line, and the image's outermost pixels are
    blank: no text or plot is cut off at the border."""
    import matplotlib.image

    assert plot_training_logs.main([str(runs[0])]) == 0
    log = json.loads((runs[0] / "log.json").read_text())
    assert plot_training_logs._describe(log).splitlines()[-1].startswith("versions")
    pixels = matplotlib.image.imread(runs[0] / "training_summary.png")[..., :3]  # (H, W, 3)
    border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3),
                             pixels[:, :3].reshape(-1, 3), pixels[:, -3:].reshape(-1, 3)])
    assert border.min() == 1.0  # white


def test_several_runs_give_a_comparison_plot(runs, tmp_path):
    target = tmp_path / "comparison.png"
    argv = [str(run) for run in runs] + ["--compare-out", str(target)]
    assert plot_training_logs.main(argv) == 0
    assert target.read_bytes().startswith(b"\x89PNG")
    assert all((run / "training_summary.png").exists() for run in runs)


def test_plots_a_run_that_is_still_training(tmp_path):
    run = tmp_path / "cut"
    config = TrainConfig(method="pvq", stages=2, bits=3, data_dim=8, batch_size=16, steps=60,
                         replace_every=10, log_every=20, device="cpu", out=str(run))
    train(config, progress=False, stop_after=40)
    assert json.loads((run / "log.json").read_text())["eval_mse"] is None
    assert plot_training_logs.main([str(run)]) == 0


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "cannot be read as JSON"),
    (json.dumps({"windows": 3}), "not a training log"),
    (json.dumps({"config": {}, "windows": [], "replacements": []}), "not a training log"),
    (json.dumps({"config": {"method": "rvq", "stages": 4, "bits": 7}, "windows": [],
                 "replacements": []}), "no logged window"),
])
def test_missing_or_corrupt_log_is_one_line_and_exit_1(content, message, tmp_path, capsys):
    if content is not None:
        (tmp_path / "log.json").write_text(content)
    assert plot_training_logs.main([str(tmp_path)]) == 1
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1


@pytest.mark.slow
def test_command_line_error_has_no_traceback(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "log.json").write_text('{"windows": [{"step": "x"}]')
    done = subprocess.run([sys.executable, "plot_training_logs.py", str(runs[0]), str(broken)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("plot_training_logs.py: error:") and done.stdout == ""
