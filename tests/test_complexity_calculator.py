import importlib.util
import json
import math
import subprocess
import sys

import pytest

from complexity import AVQ_Complexity, PVQ_Complexity, RVQ_Complexity
from complexity_calculator import main
from helpers import ROOT
from stochastic_vq import __version__


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_defaults_without_torch_or_matplotlib():
    code = (
        "import sys, complexity_calculator as c; c.main([]); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "AVQ (beam width 8):" in result.stdout
    assert "D=128, M=4 stages x 5 bits = 20 bits" in result.stdout
    expected = AVQ_Complexity(128, 32, 4, 8).complexity_calculator()
    assert f"{expected:.6f} WMOPS" in result.stdout


def test_default_json_matches_models(capsys):
    out = run_json(capsys)
    assert out["precision"] == "single" and out["count_all_stages"] is False
    (row,) = out["rows"]
    assert row["AVQ"]["wmops"] == AVQ_Complexity(128, 32, 4, 8).complexity_calculator()
    assert row["RVQ"]["wmops"] == RVQ_Complexity(128, 32, 4).complexity_calculator()
    assert row["PVQ"]["operations"] == PVQ_Complexity(128, 32, 4).operation_counts()


def test_flags_reach_the_models(capsys):
    argv = ["--dim", "64", "--stages", "2", "--bits", "3", "--beam-width", "4"]
    (row,) = run_json(capsys, *argv, "--double", "--all-stages")["rows"]
    assert row["AVQ"]["wmops"] == AVQ_Complexity(64, 8, 2, 4, False).complexity_calculator()
    rvq = RVQ_Complexity(64, 8, 2, False, count_all_stages=True)
    assert row["RVQ"]["wmops"] == rvq.complexity_calculator()


def test_sweep_table_and_json(capsys):
    assert main(["--sweep", "12:40:4", "--dim", "64", "--beam-width", "16"]) == 0
    table = capsys.readouterr().out
    assert "AVQ WMOPS" in table and len(table.strip().splitlines()) == 3 + 8
    rows = run_json(capsys, "--sweep", "12:40:4", "--dim", "64", "--beam-width", "16")["rows"]
    assert [row["total_bits"] for row in rows] == list(range(12, 41, 4))
    assert [row["beam_width"] for row in rows] == [8, 16, 16, 16, 16, 16, 16, 16]
    assert math.log10(rows[-1]["RVQ"]["wmops"]) == pytest.approx(-0.22665099427212598, abs=1e-9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweep", "12:40:3"], "not divisible"),
        (["--sweep", "12:40"], "START:STOP:STEP"),
        (["--sweep", "40:12:4"], "START <= STOP"),
        (["--beam-width", "64"], "beam_width"),
        (["--dim", "130"], "input_dim"),
        (["--bits", "0"], "positive integer"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_paper_figures(tmp_path, capsys):
    assert main(["--paper-figures", str(tmp_path)]) == 0
    assert "Complexity_Fig6-b.json" in capsys.readouterr().out
    for name in ("complexity.pdf", "complexity.png"):
        assert (tmp_path / name).stat().st_size > 1000
    for name, dim, max_beam in [("Complexity_Fig4-c", 64, 16), ("Complexity_Fig6-b", 128, 64)]:
        figure = json.loads((tmp_path / f"{name}.json").read_text())
        assert set(figure) == {"Metric", "VQ Bitrate", "AVQ", "RVQ", "PVQ", "Settings"}
        assert figure["Settings"]["precision"] == "single"
        assert figure["Settings"]["count_all_stages"] is False
        assert figure["Settings"]["library_version"] == __version__
        assert figure["Metric"] == "Complexity (log10 WMOPS)"
        assert figure["VQ Bitrate"] == [f"{bits} bits" for bits in range(12, 41, 4)]
        for i, bits in enumerate(range(12, 41, 4)):
            k = 2 ** (bits // 4)
            models = {
                "AVQ": AVQ_Complexity(dim, k, 4, min(k, max_beam)),
                "RVQ": RVQ_Complexity(dim, k, 4),
                "PVQ": PVQ_Complexity(dim, k, 4),
            }
            for method, vq in models.items():
                assert figure[method][i] == math.log10(vq.complexity_calculator())
    fig6b = json.loads((tmp_path / "Complexity_Fig6-b.json").read_text())
    assert fig6b["PVQ"][0] == pytest.approx(-2.5728385970740346, abs=1e-9)  # published


def test_paper_figures_rejects_sweep(tmp_path):
    with pytest.raises(SystemExit):
        main(["--paper-figures", str(tmp_path), "--sweep", "12:40:4"])


@pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("torch", "additive_vq", "residual_vq", "product_vq")
    ),
    reason="--measure needs torch and the library's quantizers",
)
def test_measure_tiny_config(capsys):
    argv = [
        "--dim",
        "8",
        "--stages",
        "2",
        "--bits",
        "2",
        "--beam-width",
        "2",
        "--measure",
        "--measure-batch",
        "16",
        "--repeats",
        "1",
    ]
    (row,) = run_json(capsys, *argv)["rows"]
    assert all(row[method]["encode_us"] > 0 for method in ("AVQ", "RVQ", "PVQ"))
    assert main(argv) == 0
    assert "us/vector" in capsys.readouterr().out
