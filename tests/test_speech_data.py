"""stochastic_vq.speech_data: the speech folders' layouts, the speaker split, reading and
writing audio, and the errors for folders and files that cannot be used."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import LIBRISPEECH_SPEAKERS, librispeech_tree, voiced, write_speech_tree
from stochastic_vq import reproduce, speech_data

soundfile = pytest.importorskip("soundfile")


def speaker(path: Path) -> str:
    return path.name.split("-")[0]


def test_speaker_split_holds_out_every_fifth_speaker_and_interleaves(tmp_path):
    train, test = speech_data.speaker_split(librispeech_tree(tmp_path))
    assert {speaker(p) for p in test} == {"40"}  # the 5th in sorted order
    assert {speaker(p) for p in train} == set(LIBRISPEECH_SPEAKERS) - {"40"}
    assert [speaker(p) for p in train[:5]] == ["19", "26", "32", "39", "60"]  # first files
    assert len(train) + len(test) == 2 * len(LIBRISPEECH_SPEAKERS)


@pytest.mark.parametrize("relative, expected", [
    ("train-clean-100/19/198/19-198-0001.flac", "19"),  # LibriSpeech, in a subset
    ("19/198/19-198-0001.flac", "19"),  # LibriSpeech, the subset itself as root
    ("other/198/19-198-0001.flac", "198"),  # a LibriSpeech name in the wrong folders
    ("corpus/p225/p225_001.wav", "p225"),  # corpus/speaker/utterance
    ("wav48/a/b/p226/x.wav", "p226"),  # deeper: the folder that holds the file
    ("take3.wav", "take3"),  # flat: the file itself
])
def test_speaker_of_each_layout(relative, expected, tmp_path):
    assert speech_data.speaker_of(tmp_path / relative, tmp_path) == expected


def test_corpus_speaker_utterance_tree_splits_by_speaker(tmp_path):
    """root/corpus/speaker/utterance: five speakers, not one corpus."""
    files = {f"corpus/spk{i}/take{j}.wav": 100.0 + 10 * i for i in range(5) for j in range(2)}
    train, test = speech_data.speaker_split(write_speech_tree(tmp_path, files))
    assert {p.parent.name for p in test} == {"spk4"}
    assert {p.parent.name for p in train} == {"spk0", "spk1", "spk2", "spk3"}


def test_a_librispeech_root_tests_on_test_clean_and_trains_on_the_training_subsets(tmp_path):
    librispeech_tree(tmp_path, "train-clean-100", ("19", "26"))
    librispeech_tree(tmp_path, "train-other-500", ("32",))
    librispeech_tree(tmp_path, "test-clean", ("1089", "121"))
    librispeech_tree(tmp_path, "dev-clean", ("84",))
    train, test = speech_data.speaker_split(tmp_path)
    assert {p.relative_to(tmp_path).parts[0] for p in test} == {"test-clean"}
    assert [speaker(p) for p in test] == ["1089", "121", "1089", "121"]  # interleaved
    assert {p.relative_to(tmp_path).parts[0] for p in train} == {"train-clean-100",
                                                                   "train-other-500"}
    assert {speaker(p) for p in train} == {"19", "26", "32"} and len(train) == 6
    names = speech_data.utterance_names(tmp_path, test_utterances=1)
    assert names == ["test-clean_1089_198_1089-198-0000"]


def test_a_librispeech_root_without_training_subsets_is_refused(tmp_path):
    librispeech_tree(tmp_path, "test-clean", ("1089", "121"))
    with pytest.raises(ValueError, match="holds test-clean but no training subset"):
        speech_data.speaker_split(tmp_path)


def test_read_audio_gives_the_samples(tmp_path):
    signal = voiced(0.3, 120.0, 0)
    soundfile.write(tmp_path / "a.wav", signal.numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(speech_data.read_audio(tmp_path / "a.wav"), signal)


def test_write_audio_writes_16_bit_pcm_clipped(tmp_path):
    signal = torch.tensor([0.0, 0.5, -0.25, 1.7, -3.0], dtype=torch.float64)
    speech_data.write_audio(tmp_path / "a.wav", signal)
    info = soundfile.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.subtype, info.frames) == (16000, "PCM_16", 5)
    read, _ = soundfile.read(str(tmp_path / "a.wav"), dtype="float64")
    np.testing.assert_allclose(read, [0.0, 0.5, -0.25, 1.0, -1.0], atol=1 / 32768)


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
    (lambda root: root / "empty", "empty holds no .flac or .wav files"),
])
def test_unusable_folders_are_named(make, message, tmp_path):
    soundfile.write(tmp_path / "only.wav", np.zeros(160), 16000)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=message):
        speech_data.speaker_split(make(tmp_path))


def test_wrong_rate_and_broken_files_are_named(tmp_path):
    soundfile.write(tmp_path / "narrow.wav", np.zeros(800), 8000)
    with pytest.raises(ValueError, match="narrow.wav is sampled at 8000 Hz"):
        speech_data.read_audio(tmp_path / "narrow.wav")
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read audio file .*broken.flac"):
        speech_data.read_audio(tmp_path / "broken.flac")


@pytest.mark.parametrize("spoil, message", [
    (lambda path: soundfile.write(path, np.zeros(800), 8000),
     "is sampled at 8000 Hz, the codec needs 16000 Hz"),
    (lambda path: path.write_bytes(b"not audio"), "cannot read audio file"),
    (lambda path: None, "holds no .flac or .wav files"),
])
def test_fig1_names_a_file_it_cannot_use_in_one_line(spoil, message, tmp_path, capsys):
    """A wrong rate, an unreadable file or no audio at all: one line and exit status 2
    before anything runs."""
    for module in ("pesq", "constriction", "scipy"):
        pytest.importorskip(module)
    if message.startswith("holds no"):
        (tmp_path / "speech").mkdir()
    else:
        librispeech_tree(tmp_path / "speech")
        spoil(tmp_path / "speech/train-clean-100/26/198/26-198-0000.flac")
    with pytest.raises(SystemExit) as info:
        reproduce.main(["fig1", "--tiny", "--data", str(tmp_path / "speech"), "--out",
                        str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "argument --data: data: " in err and message in err
    assert not (tmp_path / "out").exists()


def test_missing_soundfile_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r'pip install "\.\[experiments\]"'):
        speech_data.read_audio(tmp_path / "a.wav")


def test_missing_debian_speech_names_the_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(speech_data, "DEBIAN_TEST", (tmp_path / "absent.wav",))
    with pytest.raises(FileNotFoundError, match="apt-get install pocketsphinx-testdata "
                                                "codec2-examples"):
        speech_data.debian_split()
