"""Figure 1: a tiny run end to end, its files, its command line's errors and its statistics."""

import json
import sys

import numpy as np
import pytest

from helpers import librispeech_tree
from stochastic_vq import reproduce, speech_data, speech_experiment
from stochastic_vq.figures import SETTINGS_KEY

soundfile = pytest.importorskip("soundfile")


def fig1_packages() -> None:
    """Skip a test that runs fig1's command line without its optional packages."""
    for module in ("pesq", "constriction", "scipy"):
        pytest.importorskip(module)


def test_missing_debian_speech_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    fig1_packages()
    monkeypatch.setattr(speech_data, "DEBIAN_TRAIN", (tmp_path / "absent.wav",))
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "apt-get install pocketsphinx-testdata codec2-examples" in err


def test_unreadable_data_folder_is_one_line_and_exit_2(tmp_path, capsys):
    fig1_packages()
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--data", str(tmp_path / "absent"), "--out",
                        str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "argument --data:" in err


def test_missing_pesq_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pesq", None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "fig1 needs pesq" in err
    assert 'pip install ".[experiments]"' in err


def test_missing_constriction_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "constriction", None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "fig1 needs constriction" in err and 'pip install ".[experiments]"' in err


def test_write_audio_is_refused_where_no_figure_writes_it(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["fig2", "--tiny", "--write-audio", "somewhere"])
    assert "--write-audio applies to fig1 only" in capsys.readouterr().err


def test_paired_differences():
    first = np.array([3.0, 2.5, 4.0, 3.5, 1.0])
    second = np.array([2.0, 2.75, 3.0, 3.0, 1.0])
    paired = speech_experiment.paired_differences(first, second)
    difference = [1.0, -0.25, 1.0, 0.5, 0.0]
    sd = float(np.std(difference, ddof=1))
    assert paired["mean"] == pytest.approx(0.45) and paired["sd"] == pytest.approx(sd)
    assert paired["se"] == pytest.approx(sd / 5**0.5)
    half = 2.7764451051977987 * sd / 5**0.5  # Student's t, 97.5 %, 4 degrees of freedom
    assert paired["interval"] == pytest.approx([0.45 - half, 0.45 + half])
    assert paired["share higher"] == pytest.approx(0.6) and paired["n"] == 5  # ties: not
    alone = speech_experiment.paired_differences(first[:1], second[:1])
    assert alone["mean"] == 1.0 and alone["se"] is None and alone["interval"] is None


def test_utterance_table_keeps_bitrate_seed_utterance_order():
    """Per utterance: [bitrate][seed][utterance]; paired differences over the utterances'
    means over seeds."""
    preset = speech_experiment.PRESETS["tiny"]  # 2 bitrates
    preset = speech_experiment.SpeechPreset(**{**preset.__dict__, "seeds": 2})
    offset = {"avq": 0.5, "rvq": 0.25, "pvq": 0.0}

    def score(method, seed, rate, utterance):
        return 100 * rate + 10 * seed + utterance + offset[method] * (1 + utterance)

    values = {(method, seed): {metric: [[score(method, seed, rate, u) for u in range(3)]
                                        for rate in range(2)] for metric in ("pesq", "psnr")}
              for method in offset for seed in range(2)}
    table = speech_experiment.utterance_table(values, preset, ["a", "b", "c"])
    assert table["Test utterances"] == ["a", "b", "c"]
    assert table["Per utterance"]["RVQ"]["PESQ"][1][0] == [100 + 0.25, 101.5, 102.75]
    assert table["Per utterance"]["PVQ"]["pSNR"][0][1] == [10.0, 11.0, 12.0]
    paired = table["Paired differences"]["AVQ - PVQ"]["pSNR"][1]
    assert paired["mean"] == pytest.approx(np.mean([0.5, 1.0, 1.5]))
    assert paired["sd"] == pytest.approx(0.5) and paired["share higher"] == 1.0


def test_fig1_tiny_writes_the_published_schema_and_the_decoded_speech(tmp_path, capsys):
    fig1_packages()
    out, audio = tmp_path / "out", tmp_path / "listen"
    reproduce.main(["fig1", "--tiny", "--data", str(librispeech_tree(tmp_path / "speech")),
                    "--out", str(out), "--published", "--write-audio", str(audio)])
    printed = capsys.readouterr().out
    assert "kbit/s spent" in printed and "unquantized envelope, mean PESQ" in printed
    assert "AVQ - RVQ PESQ: 8: " in printed
    panels = {}
    for name, metric in (("PESQ.json", "PESQ"), ("pSNR.json", "pSNR")):
        panel = panels[metric] = json.loads((out / name).read_text())
        assert panel["Metric"] == metric
        assert panel["Sampling Rate"] == ["8 kbits/sec", "32 kbits/sec"]
        for method in ("AVQ", "RVQ", "PVQ"):
            low, mean, high = (panel[f"{key} ({method})"] for key in
                               ("Quantile Low", "Mean", "Quantile High"))
            assert len(mean) == 2 and all(np.isfinite(mean))
            assert all(lo <= m + 1e-9 <= hi + 2e-9 for lo, m, hi in zip(low, mean, high))
        assert panel[SETTINGS_KEY]["mode"] == "tiny"
        assert panel[SETTINGS_KEY]["utterances_coded"] == 2
    assert (out / "Fig1.pdf").stat().st_size > 0 and (out / "Fig1.png").stat().st_size > 0
    measured = json.loads((out / speech_experiment.MEASUREMENTS).read_text())
    for method in ("AVQ", "RVQ", "PVQ", "unquantized envelope"):
        spent = measured[f"kbit/s spent ({method})"]
        for low, high, target in zip(spent["min"], spent["max"], (8, 32)):
            assert 0.98 * target <= low <= high <= target + 1e-9
        file_rate = measured[f"kbit/s of the file ({method})"]  # more: header, edge frames
        assert all(f > s for f, s in zip(file_rate["min"], spent["min"]))
    assert set(measured["Envelope LSD dB"]) == {"AVQ", "RVQ", "PVQ"}
    for row in measured["Range coder over the ideal code length %"].values():
        assert all(0 <= value < 2 for value in row)
    # every utterance's scores: [bitrate][seed][utterance], their means the figure's
    names = measured["Test utterances"]
    assert names == ["train-clean-100_40_198_40-198-0000", "train-clean-100_40_198_40-198-0001"]
    for metric, panel in panels.items():
        for method in ("AVQ", "RVQ", "PVQ"):
            scores = np.array(measured["Per utterance"][method][metric])
            assert scores.shape == (2, 1, 2)
            np.testing.assert_allclose(scores.mean(axis=(1, 2)), panel[f"Mean ({method})"])
        for other in ("RVQ", "PVQ"):
            paired = measured["Paired differences"][f"AVQ - {other}"][metric]
            difference = np.array(measured["Per utterance"]["AVQ"][metric]) - np.array(
                measured["Per utterance"][other][metric])
            for row, rate in zip(paired, difference[:, 0]):
                assert row["mean"] == pytest.approx(rate.mean()) and row["n"] == 2
                assert row["share higher"] == pytest.approx(np.mean(rate > 0))
    # the decoded speech: per utterance the reference and every method at every bitrate
    for name in names:
        folder = audio / name
        reference = soundfile.info(str(folder / "reference.wav"))
        assert (reference.samplerate, reference.subtype) == (16000, "PCM_16")
        for method in ("AVQ", "RVQ", "PVQ", "unquantized"):
            for rate in ("8", "32"):
                info = soundfile.info(str(folder / f"{method}-{rate}kbps.wav"))
                assert (info.samplerate, info.subtype) == (16000, "PCM_16")
                assert info.frames == reference.frames
                stream = (folder / f"{method}-{rate}kbps.svq").read_bytes()
                assert stream.startswith(b"SVQ1")
                seconds = reference.frames / 16000
                assert 8 * len(stream) / seconds / 1000 < 1.1 * float(rate)
    assert f"wrote {audio}" in printed
