"""The benchmark scripts run: tiny sizes, so that a change of the library cannot break them."""

import math
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

from stochastic_vq_core import native

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_native_search  # noqa: E402
import bench_quantizers  # noqa: E402
import bench_training_loop  # noqa: E402
import compare_classical  # noqa: E402
import ema_convergence  # noqa: E402


@pytest.mark.parametrize("method, beam", [("avq", 2), ("rvq", 1), ("pvq", 1)])
def test_train_steps_train_the_codebooks(method, beam, monkeypatch):
    built = []
    build = bench_quantizers.build
    monkeypatch.setattr(bench_quantizers, "build",
                        lambda *args, **kwargs: built.append(build(*args, **kwargs)) or built[-1])
    run = bench_quantizers.train_steps(method, 2, 3, beam, "cpu", steps=2)
    before = built[0].codebooks.detach().clone()
    run()
    assert not torch.equal(built[0].codebooks, before)


def test_timed_in_turns_runs_each_function_in_turns():
    calls = []
    seconds = bench_quantizers.timed_in_turns(
        [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")],
        repeats=3)
    assert calls == ["a", "b", "c"] * 4  # one warm-up each, then three rounds
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)


def test_train_section_reports_every_configuration(capsys):
    bench_quantizers.main(["--quick", "--sections", "train"])
    rows = [[cell.strip() for cell in line.split("|")]
            for line in capsys.readouterr().out.splitlines() if "train step" in line]
    assert [row[1] for row in rows] == ["AVQ 3x5b, beam 8", "RVQ 4x5b", "PVQ 4x5b",
                                        "AVQ 4x5b, beam 16", "RVQ 4x7b", "PVQ 4x7b"]
    assert all(row[0] == "train step, batch 64, D=128" for row in rows)
    times = [row[2].split() for row in rows]
    assert all(unit == "ms" and 0 < float(value) < 1000 for value, unit in times)


@pytest.mark.skipif(not native.available(), reason="no native search")
def test_native_search_seconds_times_the_kernel_alone():
    run = bench_quantizers.train_steps("avq", 2, 3, 4, "cpu", steps=3)
    start = bench_quantizers.time.perf_counter()
    spent = bench_quantizers.native_search_seconds(run)
    assert 0 < spent < bench_quantizers.time.perf_counter() - start
    assert bench_quantizers.native_search_seconds(bench_quantizers.plain_torch(run)) == 0


@pytest.mark.skipif(not native.available(), reason="no native search")
def test_bench_native_search_reports_every_configuration(capsys):
    bench_native_search.main(["--rows", "32", "--rounds", "1"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["4 x 4 bits", "4 x 8 bits", "3 x 5 bits",
                                                   "4 x 5 bits"]
    assert all(row.count(" us") == 2 for row in rows)


@pytest.mark.skipif(not native.available() or platform.machine() not in ("x86_64", "AMD64"),
                    reason="the kernel's variants are x86-64 builds of the native search")
def test_bench_native_search_times_the_variants_asked_for(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STOCHASTIC_VQ_CACHE", str(tmp_path))
    bench_native_search.main(["--rows", "32", "--rounds", "1", "--variants", "portable"])
    lines = capsys.readouterr().out.splitlines()
    assert "portable, distinct" in lines[0]
    assert all(row.count(" us") == 3 for row in lines[1:])


def test_with_triton_switches_the_triton_search_on_for_the_call(monkeypatch):
    monkeypatch.delenv("STOCHASTIC_VQ_TRITON", raising=False)
    seen = []
    bench_quantizers.with_triton(lambda: seen.append(os.environ.get("STOCHASTIC_VQ_TRITON")))()
    assert seen == ["1"] and "STOCHASTIC_VQ_TRITON" not in os.environ


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
    assert [row["method"] for row in rows] == ["AVQ", "RVQ", "PVQ"]
    assert all(row["resolved_defaults"] == {"init": "data", "lr_scale": "data"} for row in rows)
    assert all(math.isfinite(row["mse"]) and row["mse"] > 0 for row in rows)
    assert all(row["bits"] == 8 for row in rows)


def test_bench_training_loop_gives_the_ratio_of_its_printed_times(capsys):
    ratio = bench_training_loop.main(["--method", "pvq", "--steps", "5", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "pvq 4x7 bits, D=128, batch 64, 5 steps on cpu, 1 thread(s)"
    bare, loop = (float(line.split()[-2].lstrip("(")) for line in lines[1:3])  # ms/step
    assert lines[1].startswith("bare loop:") and lines[2].startswith("train():")
    assert lines[1].endswith("ms/step)") and lines[2].endswith("ms/step)")
    assert ratio == pytest.approx(loop / bare, rel=0.05)
    assert lines[3] == f"ratio train()/bare: {ratio:.3f}"


@pytest.mark.slow
def test_bench_optimizer_reset_compares_the_same_runs(capsys):
    import bench_optimizer_reset

    rows = bench_optimizer_reset.main(["--data", "ar1", "--methods", "rvq", "--seeds", "1",
                                       "--steps", "40"])
    assert [(row["data"], row["method"]) for row in rows] == [("ar1", "rvq")]
    assert rows[0]["replaced"] > 0 and 0 < rows[0]["reset"] != rows[0]["inherited"]
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:2] == ["ar1", "RVQ"] and line[4].endswith("%")


def test_ema_convergence_runs_each_rule_it_names():
    """Each rule changes how the codebooks move (at M = 4, decay 0.5 the relaxation is
    1/2, the damping 1/4), so no two rules give the same errors."""
    args = ema_convergence.build_parser().parse_args(
        ["--steps", "3", "--batch", "32", "--test", "64", "--dim", "8"])
    errors = {rule: tuple(ema_convergence.run("rvq", 4, 1, 0.5, rule, args))
              for rule in ema_convergence.RULES}
    assert len(set(errors.values())) == len(ema_convergence.RULES)
