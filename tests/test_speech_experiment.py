"""Figure 1: reading speech folders, the speaker split, and a tiny run end to end."""

import json
import sys

import numpy as np
import pytest
import torch

from helpers import voiced
from stochastic_vq import reproduce, speech_data, speech_experiment
from stochastic_vq.figures import SETTINGS_KEY

soundfile = pytest.importorskip("soundfile")

# LibriSpeech's layout: SUBSET/speaker/chapter/speaker-chapter-utterance.flac
SPEAKERS = ("19", "26", "32", "39", "40", "60")


def librispeech_tree(root, seconds: float = 0.6, per_speaker: int = 2):
    """A LibriSpeech-style tree of short generated utterances; returns its root."""
    for number, speaker in enumerate(SPEAKERS):
        folder = root / "train-clean-100" / speaker / "198"
        folder.mkdir(parents=True)
        for utterance in range(per_speaker):
            signal = voiced(seconds, 100.0 + 15 * number + 5 * utterance, number)
            soundfile.write(folder / f"{speaker}-198-{utterance:04d}.flac", signal.numpy(),
                            16000, subtype="PCM_16")
    return root


def test_speaker_split_holds_out_every_fifth_speaker_and_interleaves(tmp_path):
    train, test = speech_data.speaker_split(librispeech_tree(tmp_path))
    speaker = lambda path: path.name.split("-")[0]
    assert {speaker(p) for p in test} == {"40"}  # the 5th in sorted order
    assert {speaker(p) for p in train} == set(SPEAKERS) - {"40"}
    assert [speaker(p) for p in train[:5]] == ["19", "26", "32", "39", "60"]  # first files
    assert len(train) + len(test) == 2 * len(SPEAKERS)


def test_read_audio_gives_the_samples(tmp_path):
    signal = voiced(0.3, 120.0, 0)
    soundfile.write(tmp_path / "a.wav", signal.numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(speech_data.read_audio(tmp_path / "a.wav"), signal)


def test_flat_folder_makes_each_file_its_own_speaker(tmp_path):
    for i in range(3):
        soundfile.write(tmp_path / f"take{i}.wav", np.zeros(1600), 16000)
    train, test = speech_data.speaker_split(tmp_path)
    assert [p.name for p in train] == ["take0.wav", "take1.wav"]
    assert [p.name for p in test] == ["take2.wav"]  # at least one speaker held out


def test_load_speech_stops_at_the_training_seconds(tmp_path):
    train, test = speech_data.load_speech(librispeech_tree(tmp_path), train_seconds=1.0,
                                          test_utterances=1)
    assert len(train) == 2 and len(test) == 1  # 0.6 s each: two files reach 1 s


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "absent", "is not a folder"),
    (lambda root: root, "at least 2 speakers"),
])
def test_unusable_folders_are_named(make, message, tmp_path):
    soundfile.write(tmp_path / "only.wav", np.zeros(160), 16000)
    with pytest.raises(ValueError, match=message):
        speech_data.speaker_split(make(tmp_path))


def test_wrong_rate_and_broken_files_are_named(tmp_path):
    soundfile.write(tmp_path / "narrow.wav", np.zeros(800), 8000)
    with pytest.raises(ValueError, match="narrow.wav is sampled at 8000 Hz"):
        speech_data.read_audio(tmp_path / "narrow.wav")
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read audio file .*broken.flac"):
        speech_data.read_audio(tmp_path / "broken.flac")


def test_missing_soundfile_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r'pip install "\.\[experiments\]"'):
        speech_data.read_audio(tmp_path / "a.wav")


def test_missing_debian_speech_names_the_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(speech_data, "DEBIAN_TEST", (tmp_path / "absent.wav",))
    with pytest.raises(FileNotFoundError, match="apt-get install pocketsphinx-testdata "
                                                "codec2-examples"):
        speech_data.debian_split()


def test_missing_debian_speech_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    pytest.importorskip("pesq")
    monkeypatch.setattr(speech_data, "DEBIAN_TRAIN", (tmp_path / "absent.wav",))
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "apt-get install pocketsphinx-testdata codec2-examples" in err


def test_unreadable_data_folder_is_one_line_and_exit_2(tmp_path, capsys):
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


def test_fig1_tiny_writes_the_published_schema(tmp_path, capsys):
    pytest.importorskip("pesq")
    out = tmp_path / "out"
    reproduce.main(["fig1", "--tiny", "--data", str(librispeech_tree(tmp_path / "speech")),
                    "--out", str(out), "--published"])
    printed = capsys.readouterr().out
    assert "kbit/s spent" in printed and "unquantized envelope, mean PESQ" in printed
    for name, metric in (("PESQ.json", "PESQ"), ("pSNR.json", "pSNR")):
        panel = json.loads((out / name).read_text())
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
    assert set(measured["Envelope LSD dB"]) == {"AVQ", "RVQ", "PVQ"}
