"""Small configurations shared by the tests of the training stack."""

from pathlib import Path

import numpy as np
import torch

from additive_vq import AVQ, cross_table
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq.config import TrainConfig
from stochastic_vq.speech_codec import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent  # the checkout

# the quantizers' shared test configuration: M codebooks of K entries, dimension D


def tiny(method: str, **overrides) -> TrainConfig:
    """A run of a few seconds: 2 codebooks of 8 codewords in 8 dimensions."""
    settings = dict(method=method, stages=2, bits=3, data_dim=8, beam_width=2, batch_size=16,
                    steps=100, replace_every=20, log_every=25, save_every=30,
                    eval_samples=512, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def without_times(log: dict) -> dict:
    """The log without wall-clock times, which differ between equal runs."""
    skip = {"train_time", "eval_time", "wall_time", "quantizer", "config"}
    windows = [{k: v for k, v in w.items() if k != "time"} for w in log["windows"]]
    return {**{k: v for k, v in log.items() if k not in skip}, "windows": windows}


def nsvq_step(vq, optimizer, x: torch.Tensor) -> torch.Tensor:
    """One training step of a bare quantizer on x (N, D): NSVQ output, squared error,
    backward and optimizer step. Returns the detached NSVQ output."""
    out, _ = vq(x, train_mode=True)
    loss = (x - out).pow(2).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return out.detach()


M, BITS, D = 3, 3, 12
K = 2**BITS

FACTORIES = {
    "AVQ": lambda **kw: AVQ(M, BITS, D, 4, **kw),
    "PVQ": lambda **kw: PVQ(M, BITS, D, **kw),
    "RVQ": lambda **kw: RVQ(M, BITS, D, **kw),
}
CLASSES = {"AVQ": AVQ, "PVQ": PVQ, "RVQ": RVQ}


def make(kind, random_codebooks=True, **kwargs):
    """A quantizer of the shared test configuration, optionally with N(0, 1) codebooks."""
    vq = FACTORIES[kind](**kwargs)
    if random_codebooks:
        with torch.no_grad():
            vq.codebooks.copy_(torch.randn(vq.codebooks.shape))
    return vq


def stage_rows(vq, stage):
    """Codebook ``stage`` of any quantizer as a (K, d) tensor."""
    if isinstance(vq, AVQ):
        return vq.codebooks.detach()[stage * vq.codebook_size:(stage + 1) * vq.codebook_size]
    return vq.codebooks.detach()[stage]


def used_mask(vq, codes):
    """(M, K) bool: which codewords the codes (N, M) use."""
    mask = torch.zeros(vq.num_stages, vq.codebook_size, dtype=torch.bool)
    for stage in range(vq.num_stages):
        mask[stage, codes[:, stage]] = True
    return mask


def set_usage(vq, usage) -> None:
    """Overwrite the usage counters of ``vq`` with ``usage`` (M, K)."""
    with torch.no_grad():
        vq.codebook_usage.copy_(torch.as_tensor(usage))


def voiced(seconds: float, f0: float, seed: int) -> torch.Tensor:
    """A speech-like test signal: harmonics of a wobbling pitch, syllable-rate amplitude
    modulation and a little noise, at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))) / 16000
    harmonics = sum(np.sin(k * phase) / k for k in range(1, int(7000 / (1.1 * f0))))
    syllables = 0.5 * (1 - np.cos(2 * np.pi * 2 * t))
    return torch.from_numpy(0.1 * harmonics * syllables + 0.003 * rng.standard_normal(len(t)))


def write_speech_tree(root: Path, files: dict[str, float]) -> Path:
    """Write each ``{relative path: f0}`` as 0.6 s of ``voiced`` 16-bit speech (the suffix
    picks WAV or FLAC) under ``root``; returns root."""
    import soundfile

    for number, (name, f0) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, voiced(0.6, f0, number).numpy(), SAMPLE_RATE, subtype="PCM_16")
    return root


LIBRISPEECH_SPEAKERS = ("19", "26", "32", "39", "40", "60")


def librispeech_tree(root: Path, subset: str = "train-clean-100",
                     speakers: tuple[str, ...] = LIBRISPEECH_SPEAKERS,
                     per_speaker: int = 2) -> Path:
    """LibriSpeech's layout, SUBSET/speaker/chapter/speaker-chapter-utterance.flac, of
    short generated utterances (chapter 198); returns root."""
    return write_speech_tree(root, {
        f"{subset}/{speaker}/198/{speaker}-198-{utterance:04d}.flac":
            100.0 + 15 * number + 5 * utterance
        for number, speaker in enumerate(speakers) for utterance in range(per_speaker)})


def search_tables(stages, bits, dim, dtype, generator, rows):
    """(base (N, MK), cross (MK, MK)) of random codebooks and vectors, as AVQ's
    beam_search makes them for its searches."""
    codewords = torch.randn(stages * 2**bits, dim, generator=generator, dtype=torch.float64)
    codewords = (codewords / stages**0.5).to(dtype)
    x = torch.randn(rows, dim, generator=generator, dtype=torch.float64).to(dtype)
    norms, cross = cross_table(codewords, stages)
    return torch.addmm(norms, x, codewords.t(), alpha=-2.0), cross
