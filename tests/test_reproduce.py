"""reproduce.py: every figure's experiment end to end at tiny sizes, and its command line."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import ROOT
from stochastic_vq import __version__, ann_experiment, data, figures, mse_experiment, reproduce
from stochastic_vq.ann import exact_search, write_vecs
from stochastic_vq.figures import SETTINGS_KEY


def _check_settings(panel: dict, mode: str, steps: int, seeds: int) -> None:
    settings = panel[SETTINGS_KEY]
    assert (settings["mode"], settings["steps"], settings["seeds"]) == (mode, steps, seeds)
    assert settings["library_version"] == __version__
    assert settings["torch_version"] == torch.__version__


def _check_curves(panel: dict, points: int, methods: list[str]) -> None:
    for method in methods:
        mean = panel[f"Mean ({method})"]
        low, high = panel[f"Quantile Low ({method})"], panel[f"Quantile High ({method})"]
        assert len(mean) == len(low) == len(high) == points
        assert all(np.isfinite(mean))
        assert all(lo <= m + 1e-9 and m <= hi + 1e-9 for lo, m, hi in zip(low, mean, high))


def _check_mse_schema(panel: dict, bitrates: list[int]) -> None:
    assert panel["Metric"] == "MSE"
    assert panel["VQ Bitrate"] == [f"{b} bits" for b in bitrates]
    _check_curves(panel, len(bitrates), ["AVQ", "RVQ", "PVQ"])
    assert all(m > 0 for m in panel["Mean (AVQ)"])


def test_fig2_tiny_writes_the_published_schema(tmp_path, capsys):
    assert reproduce.main(["fig2", "--tiny", "--out", str(tmp_path)]) == 0
    names = {"correlated_dataset_Fig2-a.json", "uncorrelated_dataset_Fig2-b.json",
             "Fig2.pdf", "Fig2.png"}
    assert {path.name for path in tmp_path.iterdir()} == names
    wrote = {line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote")}
    assert wrote == {f"wrote {tmp_path / name}" for name in names}
    correlated = json.loads((tmp_path / "correlated_dataset_Fig2-a.json").read_text())
    assert list(correlated)[:3] == ["Data", "Metric", "VQ Bitrate"]
    assert correlated["Data"] == "Correlated"
    tiny = mse_experiment.PRESETS["tiny"]
    _check_mse_schema(correlated, list(tiny.bits))
    _check_settings(correlated, "tiny", tiny.steps, tiny.seeds)
    uncorrelated = json.loads((tmp_path / "uncorrelated_dataset_Fig2-b.json").read_text())
    assert uncorrelated["Data"] == "Uncorrelated"
    _check_mse_schema(uncorrelated, list(tiny.bits))


@pytest.mark.slow
def test_fig3_tiny_writes_one_file_per_dimension(tmp_path):
    reproduce.main(["fig3", "--tiny", "--seeds", "1", "--bits", "8", "--steps", "3",
                    "--out", str(tmp_path)])
    for dim in (64, 128, 256):
        panel = json.loads((tmp_path / f"Data_Dimension_{dim}.json").read_text())
        assert panel["Data Dimension"] == str(dim)
        _check_mse_schema(panel, [8])
        _check_settings(panel, "tiny", 3, 1)
    assert (tmp_path / "Fig3.png").stat().st_size > 0


def _check_recall_schema(panel: dict, ranks: list[int], methods: list[str]) -> None:
    assert panel["Metric"] == "Recall @ T" and panel["T"] == [str(t) for t in ranks]
    _check_curves(panel, len(ranks), [f"{method} proposed" for method in methods])
    for method in methods:
        mean = panel[f"Mean ({method} proposed)"]
        assert all(0.0 <= m <= 1.0 for m in mean)
        assert all(a <= b + 1e-12 for a, b in zip(mean, mean[1:]))  # recall grows with T


@pytest.mark.slow
def test_fig5_and_fig6a_tiny_on_the_synthetic_corpus(tmp_path):
    reproduce.main(["fig5", "--tiny", "--out", str(tmp_path)])
    recall = json.loads((tmp_path / "Recall.json").read_text())
    _check_recall_schema(recall, list(ann_experiment.FIG5_T), ["AVQ", "RVQ", "PVQ"])
    assert recall[SETTINGS_KEY]["corpus"] == "synthetic AR(1)"
    reproduce.main(["fig6a", "--tiny", "--seeds", "1", "--out", str(tmp_path)])
    panel = json.loads((tmp_path / "Recall_RVQ_Fig6-a.json").read_text())
    _check_recall_schema(panel, list(ann_experiment.FIG6A_T), ["RVQ"])
    assert panel["Mean (RVQ proposed)"][-1] == 1.0  # T beyond the database size


def test_fig5_reads_a_sift_style_directory(tmp_path):
    generator = torch.Generator().manual_seed(3)
    learn, base, queries = (data.ar1(n, 16, generator=generator) for n in (400, 300, 8))
    _, nearest = exact_search(base, queries, k=5)
    for name, array in [("sift_learn.fvecs", learn), ("sift_base.fvecs", base),
                        ("sift_query.fvecs", queries),
                        ("sift_groundtruth.ivecs", nearest.int())]:
        write_vecs(tmp_path / name, array)
    corpus = ann_experiment.load_sift(tmp_path)
    assert corpus.base.shape == (300, 16) and torch.equal(corpus.nearest, nearest[:, 0])
    preset = replace(ann_experiment.PRESETS["tiny"], seeds=1)
    result = ann_experiment.recall_curves(preset, corpus, ("pvq",), (1, 4, 512))
    assert result["T"] == ["1", "4", "512"] and result["Mean (PVQ proposed)"][-1] == 1.0


def test_load_sift_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sift_base.fvecs"):
        ann_experiment.load_sift(tmp_path)


@pytest.mark.slow
def test_parallel_points_equal_sequential_ones():
    preset = replace(mse_experiment.PRESETS["tiny"], bits=(8,))
    points = [("correlated", "avq", 8, 16, 0), ("uncorrelated", "pvq", 8, 16, 1),
              ("uncorrelated", "rvq", 8, 16, 0)]
    sequential = mse_experiment.mse_points(preset, points, jobs=1)
    assert mse_experiment.mse_points(preset, points, jobs=2) == sequential
    assert sequential[0] != sequential[2]  # the points are really different runs


@pytest.fixture
def drawn(monkeypatch):
    """The legend labels of each subplot that reproduce draws, in order."""
    labels = []

    def spy(*args, **kwargs):
        fig = draw(*args, **kwargs)
        labels.extend([text.get_text() for text in ax.get_legend().get_texts()]
                      for ax in fig.axes)
        return fig

    draw = figures.draw_panels
    monkeypatch.setattr(figures, "draw_panels", spy)
    return labels


def test_published_curves_are_drawn_beside_ours(tmp_path, drawn):
    """--published DIR: the published panels found in DIR are drawn, dashed, in their
    subplots; the others get our curves alone."""
    published = tmp_path / "published"
    published.mkdir()
    panel = {"Metric": "MSE", "VQ Bitrate": ["8 bits"], "Mean (AVQ)": [1.0],
             "Quantile Low (AVQ)": [1.0], "Quantile High (AVQ)": [1.0]}
    (published / "Data_Dimension_128.json").write_text(json.dumps(panel))
    reproduce.main(["fig3", "--tiny", "--seeds", "1", "--bits", "8", "--steps", "2",
                    "--out", str(tmp_path / "out"), "--published", str(published)])
    ours = ["AVQ", "RVQ", "PVQ"]
    assert drawn == [ours, ["AVQ", "AVQ, published", "RVQ", "PVQ"], ours]


def test_published_without_a_folder_draws_the_bundled_values(tmp_path, drawn):
    reproduce.main(["fig6a", "--tiny", "--seeds", "1", "--out", str(tmp_path),
                    "--published"])
    assert drawn == [["RVQ proposed", "RVQ proposed, published"]]


def test_bundled_published_values_hold_every_figure_in_the_published_schema():
    bundled = json.loads(figures.PUBLISHED_RESULTS.read_text(encoding="utf-8"))
    assert "Results/" in bundled["source"] and "ICASSP 2023" in bundled["source"]
    assert set(bundled["figures"]) >= {*reproduce.FIGURES, "fig4c", "fig6b"}
    for figure in reproduce.FIGURES:
        for panel in figures.published_panels(figure).values():
            assert figures.curve_names(panel), figure
    recall = figures.published_panels("fig5")["Recall.json"]
    assert recall["Mean (AVQ proposed)"][0] == pytest.approx(0.29226)  # the paper's 0.292


@pytest.mark.parametrize("folder, message", [
    ("missing", "missing: not a folder"),
    ("empty", "holds none of fig3's published files (Data_Dimension_64.json"),
])
def test_unusable_published_folder_is_one_line_and_exit_2(folder, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig3", "--tiny", "--out", str(tmp_path / "out"),
                        "--published", str(tmp_path / folder)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "error: argument --published: " in err and message in err
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_default_output_folder_leaves_results_untouched(tmp_path, monkeypatch):
    """Without --out the files go to output/reproduce/FIGURE; Results/ stays as committed."""
    shutil.copytree(ROOT / "Results", tmp_path / "Results")
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
              for path in (tmp_path / "Results").iterdir()}
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["fig5", "--tiny"]) == 0
    after = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
             for path in (tmp_path / "Results").iterdir()}
    assert after == before
    assert (tmp_path / "output" / "reproduce" / "fig5" / "Recall.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["reproduce.py"],
    ["-c", "import sys; from stochastic_vq.reproduce import main; sys.exit(main())"],
])
def test_command_exits_0_and_lists_the_files_on_stdout(command, tmp_path):
    """``python reproduce.py`` and the console command's wrapper (sys.exit(main()))."""
    done = subprocess.run([sys.executable, *command, "fig6a", "--tiny", "--seeds", "1",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'Fig6-a.png'}" in done.stdout.splitlines()
    assert "wrote" not in done.stderr and "Path(" not in done.stderr


def test_point_command_prints_one_value(capsys):
    assert reproduce.main(["point", "--tiny", "--method", "RVQ", "--bits", "8",
                           "--dim", "16", "--kind", "correlated", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("[1/1] correlated D=16 RVQ  8 bits seed 3: MSE ")


@pytest.mark.parametrize("argv, message", [
    (["fig2", "--jobs", "0"], "--jobs"),
    (["fig2", "--seeds", "0"], "--seeds"),
    (["fig4", "--bits", "12", "14"], "--bits must be a multiple of 4 (the figures' codebooks)"),
    (["point", "--bits", "8"], "--method"),
    (["point", "--method", "avq", "--bits", "10"], "--bits"),
    (["point", "--method", "avq", "--bits", "8", "12"], "one --bits value"),
    (["point", "--method", "PVQ", "--bits", "8", "--dim", "30"], "--dim"),
])
def test_bad_command_line_is_rejected_early(argv, message, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(argv)
    assert message in capsys.readouterr().err


def _sift_folder(folder, broken=None):
    """A small SIFT-style folder; ``broken``: a file written with a bad length."""
    folder.mkdir()
    for name in ann_experiment.SIFT_FILES:
        write_vecs(folder / name, torch.zeros(3, 4, dtype=torch.int32 if "ivecs" in name
                                              else torch.float32))
    if broken:
        (folder / broken).write_bytes(b"\x04\x00\x00\x00\x00")
    return folder


@pytest.mark.parametrize("argv, message", [
    (["fig4", "--data", "{tmp}/x.npy"], "x.npy: not a directory; expected the CIFAR-10"),
    (["fig5", "--data", "{tmp}/empty"], "lacks sift_learn.fvecs, sift_base.fvecs"),
    (["fig6a", "--data", "{tmp}/sift"], "sift_base.fvecs is not a valid .fvecs file"),
])
def test_unreadable_data_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    _sift_folder(tmp_path / "sift", broken="sift_base.fvecs")
    argv = [arg.format(tmp=tmp_path) for arg in argv] + ["--tiny", "--out",
                                                         str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        reproduce.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "error: argument --data: " in err and message in err
    assert not (tmp_path / "out").exists()


def test_data_is_refused_where_no_figure_reads_it(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["fig2", "--tiny", "--data", "somewhere"])
    assert "--data applies to fig1, fig4, fig5, fig6a only" in capsys.readouterr().err


def test_missing_scikit_image_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig4", "--tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "fig4 needs scikit-image" in err and 'pip install ".[experiments]"' in err


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_every_committed_result_records_what_produced_it():
    """Each JSON in Results/ says the mode (or model), sizes and the library version."""
    results = sorted((ROOT / "Results").glob("*.json"))
    assert len(results) >= 10
    for path in results:
        settings = json.loads(path.read_text())[SETTINGS_KEY]
        assert re.fullmatch(r"\d+\.\d+\.\d+", settings["library_version"]), path.name
        assert version_tuple(settings["library_version"]) <= version_tuple(__version__)
        if not path.name.startswith("Complexity"):
            assert {"mode", "steps", "seeds"} <= set(settings), path.name
