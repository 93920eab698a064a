import json

import numpy as np
import pytest
import torch

import datasets
import reproduce
from ann import exact_search, write_vecs


def test_ar1_has_unit_variance_and_correlation_0_9():
    x = datasets.ar1(20000, 32, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (20000, 32)
    x = x.double()
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.03)
    corr = torch.corrcoef(x.t())  # (32, 32)
    for lag in (1, 2, 5):
        observed = corr.diagonal(lag).mean().item()
        assert observed == pytest.approx(0.9**lag, abs=0.01)


def test_gaussian_is_uncorrelated_standard_normal():
    x = datasets.gaussian(20000, 16, generator=torch.Generator().manual_seed(0)).double()
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.corrcoef(x.t()).diagonal(1).abs().max().item() < 0.05


def test_ar1_rejects_unstable_correlation():
    with pytest.raises(ValueError, match="rho"):
        datasets.ar1(3, 4, rho=1.0)


def test_patches_are_the_windows_of_the_image():
    image = torch.arange(6 * 7, dtype=torch.float64).reshape(6, 7)
    patches = datasets._patches(image, size=3, stride=2)  # rows 0, 2 x columns 0, 2, 4
    assert patches.shape == (6, 9)
    assert torch.equal(patches[0], image[:3, :3].flatten())
    assert torch.equal(patches[4], image[2:5, 2:5].flatten())


def _check_mse_schema(panel: dict, bitrates: list[int]) -> None:
    assert panel["Metric"] == "MSE"
    assert panel["VQ Bitrate"] == [f"{b} bits" for b in bitrates]
    for method in ("AVQ", "RVQ", "PVQ"):
        mean = panel[f"Mean ({method})"]
        low, high = panel[f"Quantile Low ({method})"], panel[f"Quantile High ({method})"]
        assert len(mean) == len(low) == len(high) == len(bitrates)
        assert all(np.isfinite(mean)) and all(m > 0 for m in mean)
        assert all(lo <= m + 1e-9 and m <= hi + 1e-9 for lo, m, hi in zip(low, mean, high))


def test_fig2_tiny_writes_the_published_schema(tmp_path):
    written = reproduce.main(["fig2", "--tiny", "--out", str(tmp_path)])
    names = {path.name for path in written}
    assert {"correlated_dataset_Fig2-a.json", "uncorrelated_dataset_Fig2-b.json",
            "Fig2.pdf", "Fig2.png"} <= names
    correlated = json.loads((tmp_path / "correlated_dataset_Fig2-a.json").read_text())
    assert list(correlated)[:3] == ["Data", "Metric", "VQ Bitrate"]
    assert correlated["Data"] == "Correlated"
    _check_mse_schema(correlated, list(reproduce.PRESETS["tiny"].bits))
    uncorrelated = json.loads((tmp_path / "uncorrelated_dataset_Fig2-b.json").read_text())
    assert uncorrelated["Data"] == "Uncorrelated"
    _check_mse_schema(uncorrelated, list(reproduce.PRESETS["tiny"].bits))


def test_fig3_tiny_writes_one_file_per_dimension(tmp_path):
    preset = reproduce.replace(reproduce.PRESETS["tiny"], seeds=1, bits=(8,))
    reproduce.run_fig3(preset, tmp_path)
    for dim in (64, 128, 256):
        panel = json.loads((tmp_path / f"Data_Dimension_{dim}.json").read_text())
        assert panel["Data Dimension"] == str(dim)
        _check_mse_schema(panel, [8])
    assert (tmp_path / "Fig3.png").stat().st_size > 0


def _check_recall_schema(panel: dict, ranks: list[int], methods: list[str]) -> None:
    assert panel["Metric"] == "Recall @ T" and panel["T"] == [str(t) for t in ranks]
    for method in methods:
        mean = panel[f"Mean ({method} proposed)"]
        assert len(mean) == len(ranks) and all(0.0 <= m <= 1.0 for m in mean)
        assert all(a <= b + 1e-12 for a, b in zip(mean, mean[1:]))  # recall grows with T
        assert len(panel[f"Quantile Low ({method} proposed)"]) == len(ranks)
        assert len(panel[f"Quantile High ({method} proposed)"]) == len(ranks)


def test_fig5_and_fig6a_tiny_on_the_synthetic_corpus(tmp_path):
    reproduce.main(["fig5", "--tiny", "--out", str(tmp_path)])
    _check_recall_schema(json.loads((tmp_path / "Recall.json").read_text()),
                         list(reproduce.FIG5_T), ["AVQ", "RVQ", "PVQ"])
    reproduce.main(["fig6a", "--tiny", "--seeds", "1", "--out", str(tmp_path)])
    panel = json.loads((tmp_path / "Recall_RVQ_Fig6-a.json").read_text())
    _check_recall_schema(panel, list(reproduce.FIG6A_T), ["RVQ"])
    assert panel["Mean (RVQ proposed)"][-1] == 1.0  # T beyond the database size


def test_fig5_reads_a_sift_style_directory(tmp_path):
    generator = torch.Generator().manual_seed(3)
    learn, base, queries = (datasets.ar1(n, 16, generator=generator) for n in (400, 300, 8))
    _, nearest = exact_search(base, queries, k=5)
    for name, array in [("sift_learn.fvecs", learn), ("sift_base.fvecs", base),
                        ("sift_query.fvecs", queries),
                        ("sift_groundtruth.ivecs", nearest.int())]:
        write_vecs(tmp_path / name, array)
    corpus = reproduce.load_sift(tmp_path)
    assert corpus.base.shape == (300, 16) and torch.equal(corpus.nearest, nearest[:, 0])
    preset = reproduce.replace(reproduce.PRESETS["tiny"], seeds=1)
    result = reproduce.recall_curves(preset, corpus, ("PVQ",), (1, 4, 512))
    assert result["T"] == ["1", "4", "512"] and result["Mean (PVQ proposed)"][-1] == 1.0


def test_load_sift_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sift_base.fvecs"):
        reproduce.load_sift(tmp_path)


def test_parallel_points_equal_sequential_ones():
    preset = reproduce.replace(reproduce.PRESETS["tiny"], bits=(8,))
    points = [("correlated", "AVQ", 8, 16, 0), ("uncorrelated", "PVQ", 8, 16, 1),
              ("uncorrelated", "RVQ", 8, 16, 0)]
    sequential = reproduce.mse_points(preset, points, jobs=1)
    assert reproduce.mse_points(preset, points, jobs=2) == sequential
    assert sequential[0] != sequential[2]  # the points are really different runs


def test_point_command_prints_one_value(capsys):
    assert reproduce.main(["point", "--tiny", "--method", "RVQ", "--bits", "8",
                           "--dim", "16", "--kind", "correlated", "--seed", "3"]) == []
    line = capsys.readouterr().out.strip()
    assert line.startswith("[1/1] correlated D=16 RVQ  8 bits seed 3: MSE ")


@pytest.mark.parametrize("argv, message", [
    (["fig2", "--jobs", "0"], "--jobs"),
    (["point", "--bits", "8"], "--method"),
    (["point", "--method", "AVQ", "--bits", "10"], "--bits"),
    (["point", "--method", "PVQ", "--bits", "8", "--dim", "30"], "--dim"),
])
def test_bad_command_line_is_rejected_early(argv, message, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(argv)
    assert message in capsys.readouterr().err
