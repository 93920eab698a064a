"""Figure 1: AVQ, RVQ and PVQ quantizing the spectral envelope of a speech codec, scored by
PESQ and a perceptually weighted SNR at total bitrates of 8 ... 32 kbit/s.

Each point trains one envelope quantizer (M = 4 codebooks of 4 bits: 16 bits per 20 ms
frame; AVQ beam 16) with NSVQ and Adam on the 16-band envelope shapes of the training
speech, as the training scripts train a bare quantizer (k-means start, codewords
replaced on their schedule), then codes every test utterance with
``stochastic_vq.speech_codec.SpeechCodec`` at every bitrate and scores it against the
original. The figure shows, per bitrate, the mean and the 2.5 % and 97.5 % quantiles over
the test utterances (pooled over seeds). A point with the envelope unquantized ("none")
measures the codec alone; it is printed and saved in ``Fig1_measurements.json``, as are
the bits each utterance spent and the envelope's log-spectral distortion.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from stochastic_vq.config import TrainConfig
from stochastic_vq.figures import add_curve, save_panels
from stochastic_vq.loop import train
from stochastic_vq.points import run_points
from stochastic_vq.speech_codec import (
    BANDS,
    HOP,
    SAMPLE_RATE,
    SHAPING,
    SpeechCodec,
    envelope_db,
    mdct,
    split_envelope,
    weighting,
)
from stochastic_vq.speech_data import INSTALL_HINT, load_speech
from stochastic_vq_core.estimators import DEFAULT_ESTIMATOR
from stochastic_vq_core.paper import METHODS, label

PUBLISHED_BITRATES = (8.0, 9.6, 13.2, 16.4, 24.4, 32.0)  # kbit/s, Fig 1's x axis
STAGES, STAGE_BITS, BEAM_WIDTH = 4, 4, 16  # 16 bits per envelope, AVQ beam 16
UNQUANTIZED = "none"  # the point whose envelope is not quantized
FILES = {"pesq": "PESQ.json", "psnr": "pSNR.json"}
MEASUREMENTS = "Fig1_measurements.json"


@dataclass(frozen=True)
class SpeechPreset:
    """Sizes of one mode. seeds: training runs per method (test values pooled over them);
    steps, batch_size, lr, replace_every: NSVQ training with Adam (``lr`` relative to the
    standard deviation of the envelope values); bitrates: kbit/s; train_seconds: training
    speech read from ``--data`` (0: all); test_utterances: test files coded (0: all)."""

    seeds: int
    steps: int
    batch_size: int
    lr: float
    replace_every: int
    bitrates: tuple[float, ...]
    train_seconds: float = 0.0
    test_utterances: int = 0


PRESETS = {
    # the training scripts' schedule (20000 steps of 64, Adam 1e-3, replacement every 1000)
    "full": SpeechPreset(seeds=3, steps=20000, batch_size=64, lr=1e-3, replace_every=1000,
                         bitrates=PUBLISHED_BITRATES, train_seconds=3600,
                         test_utterances=200),
    "quick": SpeechPreset(seeds=1, steps=3000, batch_size=64, lr=1e-3, replace_every=300,
                          bitrates=PUBLISHED_BITRATES, train_seconds=600, test_utterances=20),
    "tiny": SpeechPreset(seeds=1, steps=3, batch_size=16, lr=1e-3, replace_every=1,
                         bitrates=(8.0, 32.0), test_utterances=2),
}


def envelope_shapes(signals: list[torch.Tensor]) -> torch.Tensor:
    """(frames, BANDS) float32 envelope shapes (dB, gain removed) of all frames of
    ``signals``: the vectors the envelope quantizer codes."""
    return torch.cat([split_envelope(envelope_db(mdct(s)))[1] for s in signals]).float()


def train_envelope_quantizer(method: str, shapes: torch.Tensor, held_out: torch.Tensor,
                             preset: SpeechPreset, seed: int,
                             estimator: str = DEFAULT_ESTIMATOR):
    """AVQ, RVQ or PVQ of 4 x 4 bits trained on ``shapes`` (N, 16) with ``estimator`` by the
    training scripts' loop (k-means start, Adam at ``lr`` times the data's standard
    deviation, codewords replaced on the scripts' schedule); ``held_out`` (n, 16) is its
    final evaluation. Returned in eval mode."""
    config = TrainConfig(method=method, stages=STAGES, bits=STAGE_BITS, beam_width=BEAM_WIDTH,
                         data_dim=BANDS, steps=preset.steps, batch_size=preset.batch_size,
                         lr=preset.lr, replace_every=preset.replace_every,
                         log_every=preset.steps, save_every=preset.steps, seed=seed,
                         device="cpu", init="data", lr_scale="data", estimator=estimator)
    return train(config, shapes, held_out, progress=False)["quantizer"]


def pesq_score(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """Wideband PESQ (ITU-T P.862.2, the ``pesq`` package) of 16 kHz ``decoded``."""
    from pesq import pesq

    return float(pesq(SAMPLE_RATE, reference.numpy(), decoded.numpy(), "wb"))


def check_pesq() -> None:
    """A one-line error naming the install command when the ``pesq`` package is missing."""
    try:
        import pesq  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(f"fig1 needs the pesq package: {INSTALL_HINT}") from None


def weighted_snr(reference: torch.Tensor, decoded: torch.Tensor,
                 shaping: float = SHAPING) -> float:
    """Perceptually weighted SNR in dB of ``decoded`` against ``reference`` (both (L,)).

    Both are analysed by the codec's MDCT; each bin is divided by the codec's weighting
    ``10**((g + γ·s_b) / 20)`` computed from the reference's own (unquantized) envelope,
    the same yardstick for every method; then ``10 log10(Σ (X / w)² / Σ ((X - X̂) / w)²)``
    over all frames and bins.
    """
    x, x_hat = mdct(reference), mdct(decoded)  # (T, HOP)
    w = weighting(*split_envelope(envelope_db(x)), shaping)
    return float(10 * torch.log10((x / w).pow(2).sum() / ((x - x_hat) / w).pow(2).sum()))


def log_spectral_distortion(shape: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """(T,) RMS over the bands of the envelope error in dB (the log-spectral distortion)."""
    return (shape - decoded).pow(2).mean(dim=-1).sqrt()


def code_utterances(quantizer, test: list[torch.Tensor], bitrates: tuple[float, ...],
                    test_shapes: torch.Tensor) -> dict[str, list]:
    """Per bitrate and test utterance: PESQ, weighted SNR (dB) and the kbit/s spent; and
    the envelope's mean log-spectral distortion (dB) over the test frames, whose envelope
    shapes are ``test_shapes`` (``envelope_shapes(test)``)."""
    scores = {"pesq": [], "psnr": [], "kbps": []}
    for bitrate in bitrates:
        codec = SpeechCodec(bitrate, quantizer)
        values = {name: [] for name in scores}
        for signal in test:
            frames = codec.encode(signal)
            decoded = codec.decode(frames)
            values["pesq"].append(pesq_score(signal, decoded))
            values["psnr"].append(weighted_snr(signal, decoded))
            values["kbps"].append(float(frames.bits.sum()) / len(frames.bits)
                                  * SAMPLE_RATE / HOP / 1000)
        for name in scores:
            scores[name].append(values[name])
    shapes = test_shapes.double()
    decoded_shapes = SpeechCodec(bitrates[0], quantizer).quantize_envelope(shapes)[1]
    scores["lsd"] = float(log_spectral_distortion(shapes, decoded_shapes).mean())
    return scores


def speech_point(preset: SpeechPreset, data: str | None, method: str, seed: int,
                 estimator: str = DEFAULT_ESTIMATOR) -> dict[str, list]:
    """``code_utterances`` with ``method``'s trained quantizer (or none); one CPU thread."""
    torch.set_num_threads(1)
    train, test = load_speech(data, preset.train_seconds, preset.test_utterances)
    test_shapes = envelope_shapes(test)  # (frames, BANDS)
    quantizer = None
    if method != UNQUANTIZED:
        quantizer = train_envelope_quantizer(method, envelope_shapes(train), test_shapes,
                                             preset, seed, estimator)
    return code_utterances(quantizer, test, preset.bitrates, test_shapes)


def bitrate_labels(bitrates: tuple[float, ...]) -> list[str]:
    """The published x axis: ["8 kbits/sec", "9.6 kbits/sec", ...]."""
    return [f"{rate:g} kbits/sec" for rate in bitrates]


def run_fig1(preset: SpeechPreset, out: Path, settings: dict, data: str | None = None,
             jobs: int = 1, published: dict[str, dict] | None = None,
             estimator: str = DEFAULT_ESTIMATOR) -> list[Path]:
    """Figure 1: PESQ and weighted SNR against the total bitrate; writes PESQ.json,
    pSNR.json, Fig1.pdf/png and Fig1_measurements.json, and prints the measurements.

    ``data``: a speech folder (``speech_data.speaker_split``), None: the Debian speech;
    ``published``: published panels by file name, drawn dashed beside ours;
    ``estimator``: the quantizers' training estimator ("nsvq", the paper's, or "diveq").
    """
    check_pesq()
    train, test = load_speech(data, preset.train_seconds, preset.test_utterances)
    seconds = {"train": sum(map(len, train)) / SAMPLE_RATE,
               "test": sum(map(len, test)) / SAMPLE_RATE}
    print(f"fig1: {seconds['train']:.1f} s of training speech, {len(test)} test utterances "
          f"({seconds['test']:.1f} s)", flush=True)
    points = [(method, seed) for method in METHODS for seed in range(preset.seeds)]
    points.append((UNQUANTIZED, 0))
    start = time.perf_counter()

    def report(done: int, point: tuple, value: dict) -> None:
        print(f"[{done}/{len(points)}] {point[0].upper()} seed {point[1]}: LSD "
              f"{value['lsd']:.2f} dB, PESQ {np.mean(value['pesq'][0]):.2f} ... "
              f"{np.mean(value['pesq'][-1]):.2f} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    values = dict(zip(points, run_points(partial(speech_point, preset, data,
                                                 estimator=estimator), points, jobs, report)))
    pooled, lsd = pool_seeds(values, preset)
    axis = bitrate_labels(preset.bitrates)
    panels = {}
    for metric, title in (("pesq", "PESQ"), ("psnr", "pSNR")):
        panel = {"Metric": title, "Sampling Rate": axis}
        for method in METHODS:
            add_curve(panel, label(method), pooled[method][metric])
        panels[FILES[metric]] = panel
    data_name = str(data) if data is not None else "Debian speech (pocketsphinx, codec2)"
    settings = {**settings, "data": data_name, "shaping": SHAPING,
                "speech_seconds": {name: round(value, 1) for name, value in seconds.items()},
                "utterances_coded": len(test)}
    measurements = measurement_table(pooled, lsd, axis, settings)
    print_measurements(measurements)
    print_scores(panels)
    path = out / MEASUREMENTS
    written = save_panels(panels, out, "Fig1", settings, title=data_name, published=published)
    path.write_text(json.dumps(measurements, indent=1) + "\n")
    return [*written, path]


def pool_seeds(values: dict[tuple[str, int], dict], preset: SpeechPreset
               ) -> tuple[dict[str, dict], dict[str, float]]:
    """(per method and score: per bitrate the values of every seed's utterances, per
    method the mean LSD over seeds) from the points' values {(method, seed): scores}."""
    seeds = range(preset.seeds)
    pooled = {method: {name: [sum((values[method, seed][name][i] for seed in seeds), [])
                              for i in range(len(preset.bitrates))]
                       for name in ("pesq", "psnr", "kbps")} for method in METHODS}
    pooled[UNQUANTIZED] = values[UNQUANTIZED, 0]
    lsd = {method: float(np.mean([values[method, seed]["lsd"] for seed in seeds]))
           for method in METHODS}
    return pooled, lsd


def measurement_table(pooled: dict, lsd: dict, axis: list[str], settings: dict) -> dict:
    """Bits spent (kbit/s: mean, min, max over utterances), envelope LSD and the
    unquantized envelope's mean PESQ and weighted SNR, per method and bitrate."""
    table: dict = {"Sampling Rate": axis}
    for method in (*METHODS, UNQUANTIZED):
        name = label(method) if method != UNQUANTIZED else "unquantized envelope"
        kbps = pooled[method]["kbps"]
        table[f"kbit/s spent ({name})"] = {"mean": [float(np.mean(k)) for k in kbps],
                                           "min": [min(k) for k in kbps],
                                           "max": [max(k) for k in kbps]}
    table["Envelope LSD dB"] = {label(method): lsd[method] for method in METHODS}
    for metric in ("pesq", "psnr"):
        table[f"Mean {FILES[metric][:-5]} (unquantized envelope)"] = [
            float(np.mean(v)) for v in pooled[UNQUANTIZED][metric]]
    return {**table, "Settings": settings}


def print_measurements(table: dict) -> None:
    """The bits spent per bitrate and method, the LSD, and the unquantized row."""
    print("kbit/s spent (mean over utterances, [min, max]):")
    for key, spent in table.items():
        if key.startswith("kbit/s spent"):
            cells = ", ".join(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                              zip(spent["mean"], spent["min"], spent["max"]))
            print(f"  {key[len('kbit/s spent ('):-1]}: {cells}")
    print("envelope log-spectral distortion (test frames): " + ", ".join(
        f"{name} {value:.3f} dB" for name, value in table["Envelope LSD dB"].items()))
    for metric in ("PESQ", "pSNR"):
        row = table[f"Mean {metric} (unquantized envelope)"]
        print(f"unquantized envelope, mean {metric}: " + ", ".join(f"{v:.2f}" for v in row))


def print_scores(panels: dict[str, dict]) -> None:
    """Mean PESQ and weighted SNR per bitrate and method."""
    for panel in panels.values():
        methods = [label(method) for method in METHODS]
        print(f"{panel['Metric']:>16}  " + "  ".join(f"{m:>6}" for m in methods))
        for i, rate in enumerate(panel["Sampling Rate"]):
            print(f"{rate:>16}  " + "  ".join(f"{panel[f'Mean ({m})'][i]:6.2f}"
                                              for m in methods))
