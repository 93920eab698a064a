"""Speech for the Figure 1 experiment: a LibriSpeech tree, any folder of 16 kHz WAV/FLAC
files, or the read speech that Debian packages ship, split into training and test
utterances by speaker.

A file's speaker (``speaker_of``):

- a LibriSpeech file, ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTTERANCE.flac`` (the numbers in
  its name matching its two folders), belongs to SPEAKER;
- any other file in a sub-folder belongs to the folder that holds it, by name, however
  deep (``corpus/speaker/take.wav``, VCTK's ``wav48/p225/p225_001.wav``, TIMIT's
  ``DR1/FCJF0/SA1.WAV``);
- a file directly in the root is its own speaker (a flat folder: every recording one).

A root that holds ``test-clean`` is a LibriSpeech root: test-clean's files are the test
utterances and the ``train-*`` subsets' the training speech (LibriSpeech's speakers of
the two are disjoint; dev-* and test-other are not used). In any other folder every
fifth speaker in sorted order (the 5th, 10th, ...) is held out for testing, and at least
one. Either way the files are interleaved over the speakers (the first file of each,
then the second, ...).

Without a folder: pocketsphinx-testdata's five LibriVox excerpts (one reader of *Sense
and Sensibility*, the audiobook source of LibriSpeech; 24.7 s) are the test utterances,
and the training speech (21.5 s) is codec2-examples' two 16 kHz samples (codec2's own
test recordings, not LibriVox) with pocketsphinx's five "cards" recordings (read card
names).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from stochastic_vq.speech_bitstream import INSTALL_HINT
from stochastic_vq.speech_codec import SAMPLE_RATE

AUDIO_SUFFIXES = (".flac", ".wav")
TEST_EVERY = 5  # every fifth speaker is held out
LIBRISPEECH_TEST = "test-clean"  # a root holding this folder is split as LibriSpeech
LIBRISPEECH_TRAIN = "train-*"  # LibriSpeech's training subsets
LIBRISPEECH_NAME = re.compile(r"(\d+)-(\d+)-\d+")  # SPEAKER-CHAPTER-UTTERANCE
APT_PACKAGES = "pocketsphinx-testdata codec2-examples"
_POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
_CODEC2 = Path("/usr/share/codec2")
DEBIAN_TRAIN = (_CODEC2 / "raw/speech_orig_16k.wav", _CODEC2 / "wav/wia_16kHz.wav",
                *(_POCKETSPHINX / f"cards/00{i}.wav" for i in range(1, 6)))
DEBIAN_TEST = tuple(_POCKETSPHINX / f"librivox/sense_and_sensibility_01_austen_64kb-0{n}.wav"
                    for n in (870, 880, 890, 920, 930))


def read_audio(path: str | Path) -> torch.Tensor:
    """(L,) float64 samples in [-1, 1] of a 16 kHz audio file (channels averaged)."""
    soundfile = _soundfile("reading audio")
    try:
        samples, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        message = str(error).replace("\n", " ")
        raise ValueError(f"data: cannot read audio file {path}: {message}") from None
    if rate != SAMPLE_RATE:
        raise ValueError(f"data: {path} is sampled at {rate} Hz, the codec needs "
                         f"{SAMPLE_RATE} Hz")
    return torch.from_numpy(samples.mean(axis=1))


def write_audio(path: str | Path, signal: torch.Tensor) -> None:
    """Write a (L,) signal as a 16 kHz, 16-bit PCM WAV file, clipped to [-1, 1]."""
    _soundfile("writing audio").write(str(path), signal.clamp(-1, 1).numpy(), SAMPLE_RATE,
                                      subtype="PCM_16")


def _soundfile(purpose: str):
    try:
        import soundfile
    except ImportError:
        raise ModuleNotFoundError(f"{purpose} needs soundfile: {INSTALL_HINT}") from None
    return soundfile


def speaker_of(path: Path, root: Path) -> str:
    """The speaker of an audio file under ``root`` (see the module's docstring)."""
    parts = path.relative_to(root).parts
    name = LIBRISPEECH_NAME.fullmatch(path.stem)
    if name is not None and len(parts) >= 3 and parts[-3:-1] == name.groups():
        return name[1]
    return parts[-2] if len(parts) >= 2 else path.stem


def speaker_split(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(training files, test files) of the audio under ``root``, disjoint by speaker and
    interleaved over speakers (see the module's docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data: {root} is not a folder")
    if (root / LIBRISPEECH_TEST).is_dir():
        return _librispeech_split(root)
    speakers = _by_speaker(_audio_files(root), root)
    if len(speakers) < 2:
        raise ValueError(f"data: {root} needs .flac or .wav files of at least 2 speakers "
                         f"for a speaker-disjoint split, found {len(speakers)}")
    names = sorted(speakers)
    test = {name for i, name in enumerate(names, 1) if i % TEST_EVERY == 0} or {names[-1]}
    return (_interleave([speakers[n] for n in names if n not in test]),
            _interleave([speakers[n] for n in names if n in test]))


def _librispeech_split(root: Path) -> tuple[list[Path], list[Path]]:
    test = _audio_files(root / LIBRISPEECH_TEST)
    train = [path for subset in sorted(root.glob(LIBRISPEECH_TRAIN)) if subset.is_dir()
             for path in _audio_files(subset)]
    if not train:
        raise ValueError(f"data: {root} holds {LIBRISPEECH_TEST} but no training subset "
                         f"({LIBRISPEECH_TRAIN}) with .flac or .wav files")
    split = [_by_speaker(files, root) for files in (train, test)]
    return tuple(_interleave([group[n] for n in sorted(group)]) for group in split)


def _audio_files(folder: Path) -> list[Path]:
    """The .flac and .wav files anywhere under ``folder``, sorted; an error if none."""
    files = [path for path in sorted(folder.rglob("*"))
             if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()]
    if not files:
        raise ValueError(f"data: {folder} holds no .flac or .wav files")
    return files


def _by_speaker(files: list[Path], root: Path) -> dict[str, list[Path]]:
    speakers: dict[str, list[Path]] = {}
    for path in files:
        speakers.setdefault(speaker_of(path, root), []).append(path)
    return speakers


def debian_split() -> tuple[list[Path], list[Path]]:
    """(training files, test files) of the Debian packages' speech; a one-line error
    naming the packages when they are not installed."""
    missing = [path for path in (*DEBIAN_TRAIN, *DEBIAN_TEST) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no --data folder and {missing[0]} is missing: "
                                f"apt-get install {APT_PACKAGES}")
    return list(DEBIAN_TRAIN), list(DEBIAN_TEST)


def speech_files(data: str | Path | None, test_utterances: int = 0
                 ) -> tuple[list[Path], list[Path]]:
    """(training files, the first ``test_utterances`` test files (0: all)) of ``data``
    (None: the Debian speech)."""
    train, test = speaker_split(data) if data is not None else debian_split()
    return train, test[:test_utterances] if test_utterances else test


def utterance_names(data: str | Path | None, test_utterances: int = 0) -> list[str]:
    """Names of the test utterances ``load_speech`` reads: each file's path inside
    ``data`` without its suffix, "/" as "_" (the file's name for the Debian speech)."""
    root = Path(data) if data is not None else None
    return ["_".join(path.relative_to(root).with_suffix("").parts) if root else path.stem
            for path in speech_files(data, test_utterances)[1]]


def load_speech(data: str | Path | None, train_seconds: float = 0.0,
                test_utterances: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(training signals, test signals) from ``data`` (None: the Debian speech).

    ``train_seconds``: read training files until this much speech (0: all);
    ``test_utterances``: the first this many test files (0: all). A file is read once per
    process: every point of a run that process codes reuses it.
    """
    train_files, test_files = speech_files(data, test_utterances)
    train: list[torch.Tensor] = []
    for path in train_files:
        if train_seconds and sum(map(len, train)) >= train_seconds * SAMPLE_RATE:
            break
        train.append(_read_once(path))
    return train, [_read_once(path) for path in test_files]


@cache
def _read_once(path: Path) -> torch.Tensor:
    return read_audio(path)


def _interleave(groups: Sequence[list[Path]]) -> list[Path]:
    longest = max(map(len, groups), default=0)
    return [group[i] for i in range(longest) for group in groups if i < len(group)]
