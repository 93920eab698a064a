"""The benchmark scripts run: tiny sizes, so that a change of the library cannot break them."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_quantizers  # noqa: E402
import bench_training_loop  # noqa: E402
import compare_classical  # noqa: E402


@pytest.mark.parametrize("method, beam", [("AVQ", 2), ("RVQ", 1), ("PVQ", 1)])
def test_train_step_ms_times_a_few_steps(method, beam):
    ms = bench_quantizers.train_step_ms(method, 2, 3, beam, "cpu", steps=2, repeats=1)
    assert 0 < ms < 10_000


def test_side_by_side_runs_each_function_in_turns():
    calls = []
    first, second = bench_quantizers.timed_side_by_side(
        lambda: calls.append("a"), lambda: calls.append("b"), repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up each, then three turns
    assert first >= 0 and second >= 0


def test_report_prints_one_aligned_row(capsys):
    bench_quantizers.report("what", "configuration", "1.000 ms")
    line = capsys.readouterr().out.rstrip("\n")
    assert line.split(" | ") == ["what".ljust(38), "configuration".ljust(38), "1.000 ms"]


def test_bench_quantizers_rejects_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(bench_quantizers.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench_quantizers.main(["--device", "cuda"])


def test_compare_classical_library_rows(capsys):
    rows = compare_classical.main(["--bits", "8", "--stages", "2", "--train-size", "512",
                                   "--test-size", "128", "--steps", "5", "--batch-size", "32",
                                   "--beam-width", "2", "--no-faiss"])
    assert [row["method"] for row in rows] == list(compare_classical.LIBRARY)
    assert all(math.isfinite(row["mse"]) and row["mse"] > 0 for row in rows)
    assert all(row["bits"] == 8 for row in rows)


def test_bench_training_loop_gives_a_ratio(capsys):
    ratio = bench_training_loop.main(["--steps", "5", "--repeats", "1"])
    assert ratio > 0
    assert "ratio train()/bare" in capsys.readouterr().out
