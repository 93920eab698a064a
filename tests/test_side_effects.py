"""The library leaves the process as it found it: the global torch RNG, the thread count,
the quantizer's flags after an error, the umask, and matplotlib's backend."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from stochastic_vq import loop
from stochastic_vq.config import TrainConfig
from stochastic_vq.loop import train
from stochastic_vq.runfiles import atomic_write, write_json


def tiny(**overrides) -> TrainConfig:
    """A run of well under a second: 2 codebooks of 8 codewords in 8 dimensions."""
    settings = dict(method="rvq", stages=2, bits=3, data_dim=8, beam_width=2, batch_size=16,
                    steps=30, replace_every=10, log_every=10, eval_samples=256, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root; fails the test on error."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


# --- the global torch RNG ------------------------------------------------------------------


def test_train_leaves_the_global_rng_as_it_was():
    torch.manual_seed(123)
    torch.randn(5)  # some state other than a fresh seed
    before = torch.get_rng_state()
    expected = torch.randn(10)  # what comes next without the call
    torch.set_rng_state(before)
    result = train(tiny(), progress=False)
    assert result["eval_mse"] is not None
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.randn(10), expected)


def test_train_is_independent_of_the_global_rng():
    torch.manual_seed(1)
    first = train(tiny(), progress=False)
    torch.manual_seed(2)
    torch.randn(100)
    second = train(tiny(), progress=False)
    assert first["eval_mse"] == second["eval_mse"]
    assert torch.equal(first["quantizer"].codebooks, second["quantizer"].codebooks)


# --- an error inside a training step ------------------------------------------------------


def test_an_error_in_a_step_propagates_and_restores_state(monkeypatch):
    original = loop._Run.train_step
    seen = {"calls": 0, "quantizers": [], "threads": [], "check_finite": []}

    def failing_step(self, x):
        seen["calls"] += 1
        seen["quantizers"].append(self.quantizer)
        seen["threads"].append(torch.get_num_threads())
        seen["check_finite"].append(self.quantizer.check_finite)
        if seen["calls"] == 3:
            raise RuntimeError("step failed")
        original(self, x)

    monkeypatch.setattr(loop._Run, "train_step", failing_step)
    threads_before = torch.get_num_threads()
    threads_in_run = 2 if threads_before != 2 else 1  # so that the run does change it
    torch.manual_seed(5)
    rng_before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="step failed"):
        train(tiny(threads=threads_in_run), progress=False)
    assert seen["calls"] == 3
    quantizer = seen["quantizers"][0]
    assert all(q is quantizer for q in seen["quantizers"])
    assert seen["check_finite"] == [False] * 3  # the loop did switch it off while training
    assert quantizer.check_finite is True
    assert seen["threads"] == [threads_in_run] * 3
    assert torch.get_num_threads() == threads_before
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_an_error_in_a_step_leaves_no_log(monkeypatch, tmp_path):
    def failing_step(self, x):
        raise RuntimeError("step failed")

    monkeypatch.setattr(loop._Run, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="step failed"):
        train(tiny(out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run" / "log.json").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


# --- the umask ---------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_the_library_never_calls_umask():
    """In a fresh process: no os.umask call while importing, and files written afterwards
    get the mode of the umask the process set."""
    done = run_python("""
        import os, stat, sys, tempfile, traceback
        from pathlib import Path
        calls = []
        real_umask = os.umask
        def recording_umask(mask):
            calls.append((mask, "".join(traceback.format_stack(limit=4))))
            return real_umask(mask)
        os.umask = recording_umask
        import stochastic_vq.runfiles
        import stochastic_vq.loop
        assert "stochastic_vq.loop" in sys.modules
        os.umask = real_umask
        print("UMASK_CALLS", len(calls))
        for mask, where in calls:
            print(oct(mask), where)
        os.umask(0o027)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "log.json"
            stochastic_vq.runfiles.write_json(path, {"x": 1})
            print("MODE", oct(stat.S_IMODE(path.stat().st_mode)))
        print("UMASK", oct(os.umask(0)))
    """)
    assert "UMASK_CALLS 0" in done.stdout, done.stdout
    assert "MODE 0o640" in done.stdout, done.stdout
    assert "UMASK 0o27" in done.stdout, done.stdout


@pytest.mark.parametrize("umask", [0o027, 0o002, 0o077])
def test_written_files_get_the_mode_the_umask_gives(umask, tmp_path):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "raw.bin", lambda temp: Path(temp).write_bytes(b"abc"))
        write_json(tmp_path / "log.json", {"a": 1})
        # replacing an existing file gives the new one the umask's mode too
        write_json(tmp_path / "log.json", {"a": 2})
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("raw.bin", "log.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert (tmp_path / "raw.bin").read_bytes() == b"abc"
    assert json.loads((tmp_path / "log.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.json", "raw.bin"]


# --- matplotlib's backend ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "run"
    train(tiny(out=str(out)), progress=False)
    assert (out / "log.json").is_file()
    return out


@pytest.mark.slow
def test_importing_plot_training_logs_keeps_the_backend(run_dir):
    done = run_python(f"""
        import matplotlib
        import plot_training_logs
        print("BACKEND", matplotlib.get_backend())
        assert plot_training_logs.main([{str(run_dir)!r}]) == 0
        print("BACKEND", matplotlib.get_backend())
    """, MPLBACKEND="svg")
    assert done.stdout.count("BACKEND svg") == 2, done.stdout


def test_plot_training_logs_still_writes_its_files(run_dir, capsys):
    import plot_training_logs

    for name in ("training_log.pdf", "training_summary.png"):
        (run_dir / name).unlink(missing_ok=True)
    assert plot_training_logs.main([str(run_dir)]) == 0
    assert (run_dir / "training_log.pdf").read_bytes().startswith(b"%PDF")
    assert (run_dir / "training_summary.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "wrote" in capsys.readouterr().out
