"""Figure 1: AVQ, RVQ and PVQ quantizing the spectral envelope of a speech codec, scored by
PESQ and a perceptually weighted SNR at total bitrates of 8 ... 32 kbit/s.

Each point trains one envelope quantizer (M = 4 codebooks of 4 bits: 16 bits per 20 ms
frame; AVQ beam 16) with NSVQ and Adam on the 16-band envelope shapes of the training
speech, as the training scripts train a bare quantizer (k-means start, codewords
replaced on their schedule), then codes every test utterance with
``stochastic_vq.speech_codec.SpeechCodec`` at every bitrate and scores it against the
original, decoding each utterance from its range-coded file alone. The figure shows, per
bitrate, the mean and the 2.5 % and 97.5 % quantiles over the test utterances (pooled
over seeds). A point with the envelope unquantized ("none") measures the codec alone; it
is printed and saved in ``Fig1_measurements.json``, as are the bits each utterance spent
(per coded frame and per second of the file), the range coder's overhead, the envelope's
log-spectral distortion, every utterance's scores and the paired differences of AVQ
against RVQ and PVQ.
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
from stochastic_vq.speech_bitstream import INSTALL_HINT
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
from stochastic_vq.speech_data import load_speech, utterance_names, write_audio
from stochastic_vq_core.estimators import DEFAULT_ESTIMATOR
from stochastic_vq_core.paper import METHODS, label

PUBLISHED_BITRATES = (8.0, 9.6, 13.2, 16.4, 24.4, 32.0)  # kbit/s, Fig 1's x axis
STAGES, STAGE_BITS, BEAM_WIDTH = 4, 4, 16  # 16 bits per envelope, AVQ beam 16
UNQUANTIZED = "none"  # the point whose envelope is not quantized
FILES = {"pesq": "PESQ.json", "psnr": "pSNR.json"}
MEASUREMENTS = "Fig1_measurements.json"
# per bitrate and utterance: the scores, the coder's kbit/s per coded frame, the file's
# kbit/s per second of audio, and the coder's bits over the ideal code length in %
SCORES = ("pesq", "psnr", "kbps", "file_kbps", "overhead")
CONFIDENCE = 0.95  # of the paired differences' t interval
REFERENCE = "reference"  # the name of the original's WAV file under --write-audio


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
                    test_shapes: torch.Tensor, listen: tuple[Path, list[str], str] | None = None
                    ) -> dict[str, list]:
    """Per bitrate and test utterance the ``SCORES``, each utterance decoded from its
    file alone; and the envelope's mean log-spectral distortion (dB) over the test frames,
    whose envelope shapes are ``test_shapes`` (``envelope_shapes(test)``).

    ``listen``: (folder, the utterances' names, the method's label): write each decoded
    utterance (``write_decoded``)."""
    scores = {name: [] for name in SCORES}
    for bitrate in bitrates:
        codec = SpeechCodec(bitrate, quantizer)
        values = {name: [] for name in scores}
        for i, signal in enumerate(test):
            frames = codec.encode(signal)
            decoded = codec.decode(codec.read(frames.stream,
                                              frames.shape if quantizer is None else None))
            values["pesq"].append(pesq_score(signal, decoded))
            values["psnr"].append(weighted_snr(signal, decoded))
            values["kbps"].append(float(frames.bits.sum()) / len(frames.bits)
                                  * SAMPLE_RATE / HOP / 1000)
            values["file_kbps"].append(8 * len(frames.stream) * SAMPLE_RATE / len(signal)
                                       / 1000)
            values["overhead"].append(100 * float(frames.bits.sum() / frames.ideal_bits.sum()
                                                  - 1))
            if listen is not None:
                folder, names, name = listen
                write_decoded(folder / names[i], f"{name}-{bitrate:g}kbps", frames, decoded)
        for name in scores:
            scores[name].append(values[name])
    shapes = test_shapes.double()
    decoded_shapes = SpeechCodec(bitrates[0], quantizer).quantize_envelope(shapes)[1]
    scores["lsd"] = float(log_spectral_distortion(shapes, decoded_shapes).mean())
    return scores


def write_decoded(folder: Path, name: str, frames, decoded: torch.Tensor) -> None:
    """``folder/name.wav`` (16-bit PCM) and the codec's file ``folder/name.svq``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_audio(folder / f"{name}.wav", decoded)
    (folder / f"{name}.svq").write_bytes(frames.stream)


def speech_point(preset: SpeechPreset, data: str | None, method: str, seed: int,
                 estimator: str = DEFAULT_ESTIMATOR, audio: Path | None = None
                 ) -> dict[str, list]:
    """``code_utterances`` with ``method``'s trained quantizer (or none); one CPU thread.
    ``audio``: a folder to write seed 0's decoded utterances into."""
    torch.set_num_threads(1)
    train, test = load_speech(data, preset.train_seconds, preset.test_utterances)
    test_shapes = envelope_shapes(test)  # (frames, BANDS)
    quantizer = None
    if method != UNQUANTIZED:
        quantizer = train_envelope_quantizer(method, envelope_shapes(train), test_shapes,
                                             preset, seed, estimator)
    listen = None
    if audio is not None and seed == 0:
        listen = (audio, utterance_names(data, preset.test_utterances), method_name(method))
    return code_utterances(quantizer, test, preset.bitrates, test_shapes, listen)


def method_name(method: str) -> str:
    """A method's name in the decoded files' names: "AVQ", ..., "unquantized"."""
    return label(method) if method != UNQUANTIZED else "unquantized"


def bitrate_labels(bitrates: tuple[float, ...]) -> list[str]:
    """The published x axis: ["8 kbits/sec", "9.6 kbits/sec", ...]."""
    return [f"{rate:g} kbits/sec" for rate in bitrates]


def run_fig1(preset: SpeechPreset, out: Path, settings: dict, data: str | None = None,
             jobs: int = 1, published: dict[str, dict] | None = None,
             estimator: str = DEFAULT_ESTIMATOR, audio: Path | None = None) -> list[Path]:
    """Figure 1: PESQ and weighted SNR against the total bitrate; writes PESQ.json,
    pSNR.json, Fig1.pdf/png and Fig1_measurements.json, and prints the measurements.

    ``data``: a speech folder (``speech_data.speaker_split``), None: the Debian speech;
    ``published``: published panels by file name, drawn dashed beside ours;
    ``estimator``: the quantizers' training estimator ("nsvq", the paper's, or "diveq");
    ``audio``: a folder for listening: per test utterance a folder with the original
    (``reference.wav``) and, from seed 0, every method's decoded speech at every bitrate
    (``AVQ-8kbps.wav``, 16-bit PCM) beside its codec file (``AVQ-8kbps.svq``).
    """
    check_pesq()
    train, test = load_speech(data, preset.train_seconds, preset.test_utterances)
    names = utterance_names(data, preset.test_utterances)
    seconds = {"train": sum(map(len, train)) / SAMPLE_RATE,
               "test": sum(map(len, test)) / SAMPLE_RATE}
    print(f"fig1: {seconds['train']:.1f} s of training speech, {len(test)} test utterances "
          f"({seconds['test']:.1f} s)", flush=True)
    if audio is not None:
        for name, signal in zip(names, test):
            write_reference(audio / name, signal)
    points = [(method, seed) for method in METHODS for seed in range(preset.seeds)]
    points.append((UNQUANTIZED, 0))
    start = time.perf_counter()

    def report(done: int, point: tuple, value: dict) -> None:
        print(f"[{done}/{len(points)}] {point[0].upper()} seed {point[1]}: LSD "
              f"{value['lsd']:.2f} dB, PESQ {np.mean(value['pesq'][0]):.2f} ... "
              f"{np.mean(value['pesq'][-1]):.2f} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    values = dict(zip(points, run_points(partial(speech_point, preset, data,
                                                 estimator=estimator, audio=audio),
                                         points, jobs, report)))
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
    measurements.update(utterance_table(values, preset, names))
    print_measurements(measurements)
    print_scores(panels)
    print_paired(measurements)
    path = out / MEASUREMENTS
    written = save_panels(panels, out, "Fig1", settings, title=data_name, published=published)
    path.write_text(json.dumps(measurements, indent=1) + "\n")
    return [*written, path, *([audio] if audio is not None else [])]


def write_reference(folder: Path, signal: torch.Tensor) -> None:
    """``folder/reference.wav``: the original utterance as 16-bit PCM."""
    folder.mkdir(parents=True, exist_ok=True)
    write_audio(folder / f"{REFERENCE}.wav", signal)


def pool_seeds(values: dict[tuple[str, int], dict], preset: SpeechPreset
               ) -> tuple[dict[str, dict], dict[str, float]]:
    """(per method and score: per bitrate the values of every seed's utterances, per
    method the mean LSD over seeds) from the points' values {(method, seed): scores}."""
    seeds = range(preset.seeds)
    pooled = {method: {name: [sum((values[method, seed][name][i] for seed in seeds), [])
                              for i in range(len(preset.bitrates))]
                       for name in SCORES} for method in METHODS}
    pooled[UNQUANTIZED] = values[UNQUANTIZED, 0]
    lsd = {method: float(np.mean([values[method, seed]["lsd"] for seed in seeds]))
           for method in METHODS}
    return pooled, lsd


def measurement_table(pooled: dict, lsd: dict, axis: list[str], settings: dict) -> dict:
    """Bits spent (kbit/s per coded frame and of the file: mean, min, max over
    utterances), the range coder's overhead, envelope LSD and the unquantized envelope's
    mean PESQ and weighted SNR, per method and bitrate."""
    table: dict = {"Sampling Rate": axis}
    for key, score in (("kbit/s spent", "kbps"), ("kbit/s of the file", "file_kbps")):
        for method in (*METHODS, UNQUANTIZED):
            name = label(method) if method != UNQUANTIZED else "unquantized envelope"
            kbps = pooled[method][score]
            table[f"{key} ({name})"] = {"mean": [float(np.mean(k)) for k in kbps],
                                        "min": [min(k) for k in kbps],
                                        "max": [max(k) for k in kbps]}
    table["Range coder over the ideal code length %"] = {
        method_name(method): [float(np.mean(v)) for v in pooled[method]["overhead"]]
        for method in (*METHODS, UNQUANTIZED)}
    table["Envelope LSD dB"] = {label(method): lsd[method] for method in METHODS}
    for metric in ("pesq", "psnr"):
        table[f"Mean {FILES[metric][:-5]} (unquantized envelope)"] = [
            float(np.mean(v)) for v in pooled[UNQUANTIZED][metric]]
    return {**table, "Settings": settings}


def utterance_table(values: dict[tuple[str, int], dict], preset: SpeechPreset,
                    names: list[str]) -> dict:
    """Every utterance's PESQ and weighted SNR ("Per utterance": per method and score,
    [bitrate][seed][utterance], utterances in the order of "Test utterances"), and the
    paired differences of AVQ against each other method (``paired_differences``) over the
    utterances' means over seeds."""
    seeds = range(preset.seeds)
    scores = {metric: {method: [[values[method, seed][metric][i] for seed in seeds]
                                for i in range(len(preset.bitrates))] for method in METHODS}
              for metric in ("pesq", "psnr")}
    per_utterance = {label(method): {FILES[metric][:-5]: scores[metric][method]
                                     for metric in scores} for method in METHODS}
    paired = {}
    for other in METHODS[1:]:
        paired[f"{label(METHODS[0])} - {label(other)}"] = {
            FILES[metric][:-5]: [paired_differences(np.mean(first, axis=0),
                                                    np.mean(second, axis=0))
                                 for first, second in zip(scores[metric][METHODS[0]],
                                                          scores[metric][other])]
            for metric in scores}
    return {"Test utterances": names, "Per utterance": per_utterance,
            "Paired differences": paired}


def paired_differences(first: np.ndarray, second: np.ndarray) -> dict:
    """Per-utterance differences ``first - second`` (n,): their mean, standard deviation,
    the mean's standard error and CONFIDENCE t interval (None for n < 2), and the share of
    utterances where ``first`` is higher."""
    from scipy import stats

    difference = np.asarray(first) - np.asarray(second)
    n, mean = len(difference), float(np.mean(difference))
    spread = {"sd": None, "se": None, "interval": None}
    if n > 1:
        sd = float(np.std(difference, ddof=1))
        half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * sd / np.sqrt(n)
        spread = {"sd": sd, "se": sd / np.sqrt(n), "interval": [mean - half, mean + half]}
    return {"mean": mean, **spread, "share higher": float(np.mean(difference > 0)), "n": n}


def print_measurements(table: dict) -> None:
    """The bits spent per bitrate and method, the coder's overhead, the LSD, and the
    unquantized row."""
    for key in ("kbit/s spent", "kbit/s of the file"):
        print(f"{key} (mean over utterances, [min, max]):")
        for name, spent in table.items():
            if name.startswith(f"{key} ("):
                cells = ", ".join(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                                  zip(spent["mean"], spent["min"], spent["max"]))
                print(f"  {name[len(key) + 2:-1]}: {cells}")
    print("range coder's bits over the ideal code length (%): " + "; ".join(
        f"{name} " + ", ".join(f"{v:.3f}" for v in row) for name, row in
        table["Range coder over the ideal code length %"].items()))
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


def print_paired(table: dict) -> None:
    """Per pair, score and bitrate: mean difference ± standard error, the t interval and
    the share of utterances where AVQ is higher."""
    print(f"paired differences over utterances (mean ± standard error "
          f"[{CONFIDENCE:.0%} t interval], share where the first is higher):")
    for pair, metrics in table["Paired differences"].items():
        for metric, rows in metrics.items():
            cells = []
            for rate, row in zip(table["Sampling Rate"], rows):
                spread = (f" ± {row['se']:.3f} [{row['interval'][0]:.3f}, "
                          f"{row['interval'][1]:.3f}]" if row["se"] is not None else "")
                cells.append(f"{rate.split()[0]}: {row['mean']:+.3f}{spread} "
                             f"{row['share higher']:.0%}")
            print(f"  {pair} {metric}: " + "; ".join(cells))
