"""Speech for the Figure 1 experiment: a LibriSpeech tree, any folder of 16 kHz WAV/FLAC
files, or the read speech that Debian packages ship, split into training and test
utterances by speaker.

A file's speaker is the folder two levels above it (LibriSpeech's
``speaker/chapter/speaker-chapter-utterance.flac``), else the folder holding it inside the
root, else the file itself (a flat folder: every recording its own speaker). Every fifth
speaker in sorted order (the 5th, 10th, ...) is held out for testing, and at least one.

Without a folder: pocketsphinx-testdata's five LibriVox excerpts (one reader of *Sense
and Sensibility*, the audiobook source of LibriSpeech; 24.6 s) are the test utterances,
and codec2-examples' two 16 kHz samples with pocketsphinx's five "cards" recordings
(other speakers; 21.5 s) the training speech.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from stochastic_vq.speech_codec import SAMPLE_RATE

AUDIO_SUFFIXES = (".flac", ".wav")
TEST_EVERY = 5  # every fifth speaker is held out
INSTALL_HINT = 'pip install ".[experiments]"'
APT_PACKAGES = "pocketsphinx-testdata codec2-examples"
_POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
_CODEC2 = Path("/usr/share/codec2")
DEBIAN_TRAIN = (_CODEC2 / "raw/speech_orig_16k.wav", _CODEC2 / "wav/wia_16kHz.wav",
                *(_POCKETSPHINX / f"cards/00{i}.wav" for i in range(1, 6)))
DEBIAN_TEST = tuple(_POCKETSPHINX / f"librivox/sense_and_sensibility_01_austen_64kb-0{n}.wav"
                    for n in (870, 880, 890, 920, 930))


def read_audio(path: str | Path) -> torch.Tensor:
    """(L,) float64 samples in [-1, 1] of a 16 kHz audio file (channels averaged)."""
    try:
        import soundfile
    except ImportError:
        raise ModuleNotFoundError(f"reading audio needs soundfile: {INSTALL_HINT}") from None
    try:
        samples, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise ValueError(f"data: cannot read audio file {path}: {error}") from None
    if rate != SAMPLE_RATE:
        raise ValueError(f"data: {path} is sampled at {rate} Hz, the codec needs "
                         f"{SAMPLE_RATE} Hz")
    return torch.from_numpy(samples.mean(axis=1))


def speaker_of(path: Path, root: Path) -> str:
    """The speaker of an audio file under ``root`` (see the module's docstring)."""
    parts = path.relative_to(root).parts
    return parts[-3] if len(parts) >= 3 else parts[0] if len(parts) == 2 else path.stem


def speaker_split(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(training files, test files) of the audio under ``root``, disjoint by speaker and
    interleaved over speakers (the first file of each, then the second, ...)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data: {root} is not a folder")
    speakers: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
            speakers.setdefault(speaker_of(path, root), []).append(path)
    if len(speakers) < 2:
        raise ValueError(f"data: {root} needs .flac or .wav files of at least 2 speakers "
                         f"for a speaker-disjoint split, found {len(speakers)}")
    names = sorted(speakers)
    test = {name for i, name in enumerate(names, 1) if i % TEST_EVERY == 0} or {names[-1]}
    return (_interleave([speakers[n] for n in names if n not in test]),
            _interleave([speakers[n] for n in names if n in test]))


def debian_split() -> tuple[list[Path], list[Path]]:
    """(training files, test files) of the Debian packages' speech; a one-line error
    naming the packages when they are not installed."""
    missing = [path for path in (*DEBIAN_TRAIN, *DEBIAN_TEST) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no --data folder and {missing[0]} is missing: "
                                f"apt-get install {APT_PACKAGES}")
    return list(DEBIAN_TRAIN), list(DEBIAN_TEST)


def load_speech(data: str | Path | None, train_seconds: float = 0.0,
                test_utterances: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(training signals, test signals) from ``data`` (None: the Debian speech).

    ``train_seconds``: read training files until this much speech (0: all);
    ``test_utterances``: the first this many test files (0: all). A file is read once per
    process: every point of a run that process codes reuses it.
    """
    train_files, test_files = speaker_split(data) if data is not None else debian_split()
    train: list[torch.Tensor] = []
    for path in train_files:
        if train_seconds and sum(map(len, train)) >= train_seconds * SAMPLE_RATE:
            break
        train.append(_read_once(path))
    test_files = test_files[:test_utterances] if test_utterances else test_files
    return train, [_read_once(path) for path in test_files]


@cache
def _read_once(path: Path) -> torch.Tensor:
    return read_audio(path)


def _interleave(groups: Sequence[list[Path]]) -> list[Path]:
    longest = max(map(len, groups), default=0)
    return [group[i] for i in range(longest) for group in groups if i < len(group)]
