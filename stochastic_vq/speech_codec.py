"""A small MDCT speech codec: this project's stand-in for the codec of the paper's Figure 1.

The authors' frequency-domain codec is not public; this one is ours, built so that only
the envelope quantizer differs between the methods. Per 20 ms frame at 16 kHz:

    signal ──MDCT (2N = 640, hop N = 320, 30 ms low-overlap sine window)──▶ X (320 bins)
    X ──16-band log energies (dB)──▶ E = g + s: gain g (their mean), shape s (16 values)
    g ──uniform scalar quantizer, 1 dB steps──▶ 7 bits
    s ──envelope quantizer (AVQ, RVQ or PVQ, M = 4 x 4 bits; or None)──▶ 16 bits
    X ──divided by the weighting 10**((ĝ + γ·ŝ_b) / 20) and a global step──▶ dead-zone
        scalar quantizer ──▶ integers, coded under a Laplacian model whose scales the
        quantized envelope gives (with a small share of a wide one: ``mixture``)
    decoder: each integer to its cell's centroid under the model, zeros to noise at
        half the RMS the model expects there (noise filling), times weighting and step,
        inverse MDCT with overlap-add
    the global step: the finest of 512 (9 bits, 1/32 octave apart) whose frame fits the
        budget (rate control: a binary search per frame on the model's ideal lengths,
        then the range coder's own count and a bit reservoir)

A frame costs at most ``bitrate · 20 ms`` bits (envelope + gain + step + spectrum) plus
the bits the frames before it left unused, at most RESERVOIR_BITS (as MP3's bit
reservoir), so the bits of any run of frames stay within their budget. Every bit is range
coded (``stochastic_vq.speech_bitstream``: constriction's range coder) into one stream
per signal: per frame the gain, the envelope codes and the step as uniform symbols
(exactly 7, log2 K per codebook and 9 bits), then the spectrum's magnitudes under that
model (which the decoder knows: it has ĝ, ŝ and the step), TABLE_MAGNITUDES values and an
escape to the next ones per table, then one bit per non-zero sign. Rate control counts
the coder's own bits (``RangeWriter.bits``), reserving the stream's final word from the
start; the file adds an 8-byte header. ``SpeechCodec.read`` recovers the frames from the
file alone.

γ (``shaping``) sets the noise shaping: 1 makes the coding noise follow the envelope
(the same SNR in every band), 0 makes it white within a frame (the most SNR); codecs
weight in between. The gain is always divided out, so every frame has the same budget
and the same relative accuracy, like a constant-bitrate codec's.

With ``envelope_quantizer=None`` the envelope shape is used unquantized (its 16 bits are
still written, as zeros), which measures what the codec costs apart from the envelope VQ;
its decoder must be given the shape, which the stream cannot carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from stochastic_vq.speech_bitstream import (
    SEAL_BITS,
    WORD_BITS,
    RangeReader,
    RangeWriter,
    read_file,
    write_file,
)

SAMPLE_RATE = 16_000
HOP = 320  # N: 20 ms frame step
WINDOW_SUPPORT = 480  # 30 ms of non-zero window inside the 2N-sample MDCT frame
BANDS = 16
ENVELOPE_BITS = 16  # reserved for an unquantized envelope; a quantizer's own bits otherwise
GAIN_BITS, GAIN_STEP_DB, GAIN_FLOOR_DB = 7, 1.0, -100.0
STEP_BITS, STEPS_PER_OCTAVE, FINEST_STEP_OCTAVES = 9, 32, -4.0
ROUNDING = 0.3  # q = sign(y) floor(|y| + 0.3): the zero cell is |y| < 0.7
ESCAPE = 1 / 256  # the entropy model's share of its wide component (see ``mixture``)
TABLE_MAGNITUDES = 15  # |q| values per coding table; one more symbol escapes to the next
SHAPING = 0.5  # γ: noise shaping by the envelope
NOISE_FILL = 0.5  # zero coefficients decode to noise of this share of their expected RMS
RESERVOIR_BITS = 24  # most unused bits carried on to the next frame
RESERVOIR_STEPS = 24  # finer step indices than a frame's own budget allows, tried with them
CHUNK = 256  # frames whose candidate steps' ideal lengths are computed at once
NOISE_SEED = 0  # of the decoder's noise filling: decoding is deterministic
ENERGY_FLOOR = 10 ** (GAIN_FLOOR_DB / 10)  # mean square of a silent band


def low_overlap_window(hop: int = HOP, support: int = WINDOW_SUPPORT) -> torch.Tensor:
    """The (2*hop,) float64 window: zeros, a sine rise over ``support - hop`` samples, ones,
    the mirrored fall, zeros. It meets the Princen-Bradley condition
    ``w[n]² + w[n + hop]² = 1``, so the MDCT reconstructs perfectly."""
    overlap = support - hop
    if not 0 < overlap <= hop or (hop - overlap) % 2:
        raise ValueError(f"support must be in (hop, 2*hop] with 2*hop - support even, "
                         f"got hop={hop}, support={support}")
    zeros = torch.zeros((hop - overlap) // 2, dtype=torch.float64)
    rise = torch.sin(math.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap)
    flat = torch.ones(hop - overlap, dtype=torch.float64)
    return torch.cat([zeros, rise, flat, rise.flip(0), zeros])


@lru_cache(maxsize=4)
def mdct_basis(hop: int = HOP, support: int = WINDOW_SUPPORT) -> torch.Tensor:
    """(2*hop, hop) windowed, orthonormal MDCT basis: frame (2*hop,) @ basis = (hop,) bins."""
    n = torch.arange(2 * hop, dtype=torch.float64)[:, None] + 0.5 + hop / 2
    k = torch.arange(hop, dtype=torch.float64)[None, :] + 0.5
    cosines = math.sqrt(2 / hop) * torch.cos(math.pi / hop * n * k)
    return low_overlap_window(hop, support)[:, None] * cosines


def frame_count(length: int, hop: int = HOP) -> int:
    """T = ceil(L / hop) + 1: the MDCT frames that code L samples."""
    return math.ceil(length / hop) + 1


def mdct(signal: torch.Tensor, hop: int = HOP) -> torch.Tensor:
    """(T, hop) float64 MDCT of a (L,) signal, T = ``frame_count(L)`` frames."""
    frames = frame_count(len(signal), hop)
    padded = torch.zeros((frames + 1) * hop, dtype=torch.float64)
    padded[hop:hop + len(signal)] = signal
    return padded.unfold(0, 2 * hop, hop) @ mdct_basis(hop)  # (T, 2*hop) @ (2*hop, hop)


def imdct(coefficients: torch.Tensor, length: int) -> torch.Tensor:
    """(length,) signal from (T, hop) MDCT coefficients by windowed overlap-add."""
    frames, hop = coefficients.shape
    pieces = coefficients.double() @ mdct_basis(hop).T  # (T, 2*hop)
    out = torch.zeros((frames + 1) * hop, dtype=torch.float64)
    out[:-hop].view(frames, hop).add_(pieces[:, :hop])
    out[hop:].view(frames, hop).add_(pieces[:, hop:])
    return out[hop:hop + length]


def band_edges(bands: int = BANDS, bins: int = HOP) -> tuple[int, ...]:
    """``bands + 1`` bin edges, equally spaced on the mel scale from 0 to 8 kHz."""
    mel_top = 2595 * math.log10(1 + 8000 / 700)
    hertz = [700 * (10 ** (mel_top * i / bands / 2595) - 1) for i in range(bands + 1)]
    return tuple(round(f / 8000 * bins) for f in hertz)


def band_widths() -> torch.Tensor:
    """(BANDS,) int64 bins per band (5, 5, 7, ..., 51 for N = 320)."""
    return torch.tensor(band_edges()).diff()


def to_bins(per_band: torch.Tensor) -> torch.Tensor:
    """(T, BANDS) values repeated over each band's bins: (T, HOP)."""
    return per_band.repeat_interleave(band_widths(), dim=-1)


def envelope_db(coefficients: torch.Tensor) -> torch.Tensor:
    """(T, BANDS) log energies in dB: 10 log10 of each band's mean square, floored."""
    power = coefficients.double().pow(2)  # (T, HOP)
    sums = torch.zeros(len(power), BANDS, dtype=torch.float64)
    sums.index_add_(1, torch.arange(BANDS).repeat_interleave(band_widths()), power)
    return 10 * torch.log10(sums / band_widths() + ENERGY_FLOOR)


def split_envelope(envelope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain (T,), shape (T, BANDS)): the mean over bands and what is left, in dB."""
    gain = envelope.mean(dim=-1)
    return gain, envelope - gain[:, None]


def weighting(gain: torch.Tensor, shape: torch.Tensor, shaping: float) -> torch.Tensor:
    """(T, HOP) amplitude weights ``10**((g + γ·s_b) / 20)``: the codec's step per bin
    (times the global step) and the divisor of the weighted SNR."""
    return to_bins(10 ** ((gain[:, None] + shaping * shape) / 20))


def step_size(index: torch.Tensor) -> torch.Tensor:
    """Global step of step index ``index`` (0 ... 2**STEP_BITS - 1), 1/32 octave apart."""
    return 2.0 ** (index.double() / STEPS_PER_OCTAVE + FINEST_STEP_OCTAVES)


def quantize(y: torch.Tensor) -> torch.Tensor:
    """Dead-zone rounding of normalised coefficients: sign(y) floor(|y| + ROUNDING)."""
    return torch.sign(y) * torch.floor(y.abs() + ROUNDING)


def laplace_log_prob(q: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Natural log of P(q) for integers q under a zero-mean Laplacian of scale ``beta``
    (in steps), integrated over the dead-zone quantizer's cells: |y| < 0.7 for q = 0,
    [|q| - 0.3, |q| + 0.7) on q's side for |q| >= 1."""
    magnitude = q.abs()
    zero = torch.log(-torch.expm1(-(1 - ROUNDING) / beta))
    other = math.log(0.5) - (magnitude - ROUNDING) / beta + torch.log(-torch.expm1(-1 / beta))
    return torch.where(magnitude == 0, zero, other)


def mixture_log_prob(q: torch.Tensor, beta: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """Natural log of P(q) under the Laplacian of scale ``beta`` with probability
    1 - ESCAPE and the one of scale ``wide`` with probability ESCAPE (broadcast)."""
    return torch.logaddexp(math.log1p(-ESCAPE) + laplace_log_prob(q, beta),
                           math.log(ESCAPE) + laplace_log_prob(q, wide))


def mixture(q: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """The entropy coder's model of q (..., HOP) given the envelope's scales ``beta``:
    the Laplacian of scale beta with probability 1 - ESCAPE, else one of the frame's
    widest scale (its largest beta), so that a band far louder than its quantized
    envelope costs bits but cannot overflow the frame. Returns (log P(q), the widest
    scale, P(main component | q's cell)), each (..., HOP)."""
    wide = beta.amax(dim=-1, keepdim=True).expand_as(beta)
    main = math.log1p(-ESCAPE) + laplace_log_prob(q, beta)
    log_p = mixture_log_prob(q, beta, wide)
    return log_p, wide, torch.exp(main - log_p)


def code_length(q: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Ideal bits ``-Σ log2 P(q)`` over the last axis of q (..., HOP) under ``mixture``."""
    wide = beta.amax(dim=-1, keepdim=True)
    return -mixture_log_prob(q, beta, wide).sum(dim=-1) / math.log(2)


def tail_log_prob(start: int, beta: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """Natural log of P(|q| >= start), start >= 1, under ``mixture_log_prob``: the
    Laplacians' tails ``exp(-(start - 0.3) / scale)``, mixed."""
    return torch.logaddexp(math.log1p(-ESCAPE) - (start - ROUNDING) / beta,
                           math.log(ESCAPE) - (start - ROUNDING) / wide)


def magnitude_table(beta: torch.Tensor, wide: torch.Tensor, level: int) -> torch.Tensor:
    """(n, TABLE_MAGNITUDES + 1) float64: the range coder's distribution of |q| in the
    ``level``-th table, for bins of scales ``beta`` (n,) in a frame of widest scale
    ``wide`` (0-dim): given |q| >= s = level * TABLE_MAGNITUDES, column j < 15 is
    P(|q| = s + j) and the last column P(|q| >= s + 15), the escape to the next table.
    The tables' probabilities multiply to the model's P(q) / 2 for q != 0 (the sign's bit
    completes it) and to P(0) for q = 0."""
    start = level * TABLE_MAGNITUDES
    magnitude = torch.arange(start, start + TABLE_MAGNITUDES, dtype=torch.float64)  # (15,)
    log_cell = (mixture_log_prob(magnitude, beta[:, None], wide)
                + math.log(2) * (magnitude > 0))  # (n, 15): both signs of |q|
    log_rest = tail_log_prob(start + TABLE_MAGNITUDES, beta, wide)[:, None]  # (n, 1)
    return torch.softmax(torch.cat([log_cell, log_rest], dim=1), dim=1)


def reconstruct(q: torch.Tensor, beta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Decoded coefficients (in steps) of integers q (T, HOP) under ``mixture``.

    |q| >= 1: the model's centroid of the cell [a, a + 1), for a Laplacian of scale b
    ``a + b - 1 / expm1(1 / b)``, weighted by each component's posterior, with q's sign.
    q = 0 (noise filling): ``noise`` (unit variance) times NOISE_FILL times the RMS the
    model expects inside the zero cell, so that no band falls silent.
    """
    _, wide, main = mixture(q, beta)
    start = q.abs() - ROUNDING
    centroid = start + main * (beta - 1 / torch.expm1(1 / beta)) + (1 - main) * (
        wide - 1 / torch.expm1(1 / wide))
    zero_rms = (main * zero_cell_rms(beta)**2 + (1 - main) * zero_cell_rms(wide)**2).sqrt()
    return torch.where(q == 0, NOISE_FILL * zero_rms * noise, torch.sign(q) * centroid)


def zero_cell_rms(beta: torch.Tensor) -> torch.Tensor:
    """RMS of a Laplacian of scale ``beta`` restricted to the zero cell |y| < a = 0.7:
    ``E[y² | |y| < a] = (2β² - e^(-a/β) (a² + 2aβ + 2β²)) / (1 - e^(-a/β))``."""
    a = 1 - ROUNDING
    tail = torch.exp(-a / beta)
    second_moment = (2 * beta**2 - tail * (a * a + 2 * a * beta + 2 * beta**2)) / (1 - tail)
    return second_moment.clamp(min=0).sqrt()


@dataclass
class Frames:
    """A coded signal: what the decoder receives (codes, indices), what it cost, and the
    file that carries it."""

    codes: torch.Tensor | None  # (T, M) envelope codes; None for an unquantized envelope
    shape: torch.Tensor  # (T, BANDS) the decoded envelope shape in dB
    gain: torch.Tensor  # (T,) int64 gain indices
    step: torch.Tensor  # (T,) int64 step indices
    spectrum: torch.Tensor  # (T, HOP) int64 quantized coefficients
    length: int  # samples of the coded signal
    bits: torch.Tensor | None = None  # (T,) float64 the range coder's bits per frame
    ideal_bits: torch.Tensor | None = None  # (T,) float64 the model's -Σ log2 P per frame
    stream: bytes | None = None  # the file: header and range-coded words


class SpeechCodec:
    """Codes 16 kHz speech at ``bitrate`` kbit/s with ``envelope_quantizer`` (a trained
    AVQ, RVQ or PVQ of dimension 16 in eval mode, or None: the envelope unquantized).

    ``shaping``: γ of the noise shaping (see the module's docstring).
    """

    def __init__(self, bitrate: float, envelope_quantizer=None, *, shaping: float = SHAPING):
        self.quantizer = envelope_quantizer
        if envelope_quantizer is not None and envelope_quantizer.data_dim != BANDS:
            raise ValueError(f"envelope_quantizer must quantize {BANDS}-dimensional "
                             f"vectors, got data_dim={envelope_quantizer.data_dim}")
        codes = ([2] * ENVELOPE_BITS if envelope_quantizer is None
                 else [envelope_quantizer.codebook_size] * envelope_quantizer.num_stages)
        # the uniform symbols that open a frame: gain, envelope codes (or padding), step
        self.side_sizes = np.array([2**GAIN_BITS, *codes, 2**STEP_BITS], np.int32)
        self.envelope_bits = (ENVELOPE_BITS if envelope_quantizer is None
                              else envelope_quantizer.bits_per_vector)
        self.side_bits = self.envelope_bits + GAIN_BITS + STEP_BITS
        self.frame_bits = bitrate * 1000 * HOP / SAMPLE_RATE
        if not self.frame_bits > self.side_bits:
            raise ValueError(f"bitrate must leave bits for the spectrum: above "
                             f"{self.side_bits * SAMPLE_RATE / HOP / 1000:g} kbit/s, "
                             f"got {bitrate!r}")
        if not 0 <= shaping <= 1:
            raise ValueError(f"shaping must be in [0, 1], got {shaping!r}")
        self.shaping = shaping

    @torch.no_grad()
    def quantize_envelope(self, shape: torch.Tensor) -> tuple[torch.Tensor | None,
                                                               torch.Tensor]:
        """(codes (T, M) or None, decoded shape (T, BANDS)) of envelope shapes (T, BANDS)."""
        if self.quantizer is None:
            return None, shape
        device = self.quantizer.codebooks.device
        codes = self.quantizer.encode(shape.to(device, torch.float32))  # (T, M)
        return codes.cpu(), self.decode_envelope(codes.cpu())

    @torch.no_grad()
    def decode_envelope(self, codes: torch.Tensor) -> torch.Tensor:
        """(T, BANDS) float64 envelope shapes of codes (T, M)."""
        device = self.quantizer.codebooks.device
        return self.quantizer.decode(codes.to(device)).cpu().double()

    def encode(self, signal: torch.Tensor) -> Frames:
        """Code a (L,) signal in [-1, 1] at the codec's bitrate (see the module's docstring)
        into a file (``Frames.stream``) and the frames it holds."""
        if signal.dim() != 1:
            raise ValueError(f"signal must be one channel of samples (L,), got shape "
                             f"{tuple(signal.shape)}")
        x = mdct(signal.double())  # (T, HOP)
        gain, shape = split_envelope(envelope_db(x))
        gain_index = ((gain - GAIN_FLOOR_DB) / GAIN_STEP_DB).round().clamp(0, 2**GAIN_BITS - 1)
        codes, decoded_shape = self.quantize_envelope(shape)
        weights, beta_steps = self._model(gain_index, decoded_shape)
        y = x / weights  # (T, HOP)
        writer, steps, spectra, bits = self._rate_control(y, beta_steps, gain_index.long(),
                                                          codes, decoded_shape)
        step = torch.tensor(steps, dtype=torch.long)  # (T,)
        q = torch.stack(spectra)  # (T, HOP) as coded
        words = writer.words()
        bits[-1] += WORD_BITS * len(words) - writer.bits()  # the seal: the last word(s)
        ideal = code_length(q, beta_steps / step_size(step)[:, None]) + self.side_bits
        return Frames(codes, decoded_shape, gain_index.long(), step, q.long(), len(signal),
                      torch.tensor(bits, dtype=torch.float64), ideal,
                      write_file(len(signal), words))

    def read(self, stream: bytes, shape: torch.Tensor | None = None) -> Frames:
        """The frames of a file ``encode`` wrote (``Frames.stream``), from the file alone;
        ``shape`` (T, BANDS): the envelope, needed only when it is unquantized."""
        if (self.quantizer is None) != (shape is not None):
            raise ValueError("shape must be given exactly when the envelope is unquantized "
                             "(the stream carries no unquantized envelope)")
        length, words = read_file(stream)
        reader = RangeReader(words)
        sides, spectra = [], []
        for t in range(frame_count(length)):
            side = torch.from_numpy(reader.uniform(self.side_sizes).astype(np.int64))
            row = shape[t:t + 1] if shape is not None else self.decode_envelope(side[None, 1:-1])
            beta = self._coding_scales(side[:1], row, int(side[-1]))
            sides.append(side)
            spectra.append(self._read_spectrum(reader, beta))
        side = torch.stack(sides)  # (T, 2 + M)
        codes = None if shape is not None else side[:, 1:-1]
        decoded = shape if shape is not None else self.decode_envelope(codes)
        return Frames(codes, decoded, side[:, 0], side[:, -1], torch.stack(spectra), length,
                      stream=stream)

    def decode(self, frames: Frames) -> torch.Tensor:
        """The (L,) float64 signal that ``frames`` describe."""
        shape = frames.shape if frames.codes is None else self.decode_envelope(frames.codes)
        weights, beta_steps = self._model(frames.gain.double(), shape)
        steps = step_size(frames.step)[:, None]  # (T, 1)
        generator = torch.Generator().manual_seed(NOISE_SEED)
        noise = (torch.rand(frames.spectrum.shape, generator=generator,
                            dtype=torch.float64) * 2 - 1) * math.sqrt(3)  # (T, HOP)
        coefficients = reconstruct(frames.spectrum.double(), beta_steps / steps, noise)
        return imdct(coefficients * weights * steps, frames.length)

    def _model(self, gain_index: torch.Tensor,
               shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (T, HOP), Laplacian scale (T, HOP) of x / weights) from the decoded
        gain index and envelope shape: what encoder and decoder both know."""
        gain = gain_index * GAIN_STEP_DB + GAIN_FLOOR_DB
        weights = weighting(gain, shape, self.shaping)
        rms = to_bins(10 ** ((gain[:, None] + shape) / 20)) / weights
        return weights, rms / math.sqrt(2)  # a Laplacian of scale β has RMS β·√2

    def _coding_scales(self, gain_index: torch.Tensor, shape: torch.Tensor,
                       step: int) -> torch.Tensor:
        """(HOP,) the model's scales in steps for one frame, from its gain index (1,),
        decoded shape (1, BANDS) and step index, computed the same way by encoder and
        decoder (the range coder needs bit-identical tables on both sides)."""
        beta = self._model(gain_index.double(), shape)[1][0]  # (HOP,)
        return beta / step_size(torch.tensor([step]))

    def _rate_control(self, y: torch.Tensor, beta: torch.Tensor, gain_index: torch.Tensor,
                      codes: torch.Tensor | None, shape: torch.Tensor
                      ) -> tuple[RangeWriter, list[int], list[torch.Tensor], list[float]]:
        """Range-code the frames of y = x / weights (T, HOP), each with the finest step
        whose frame fits its budget plus the bits the earlier frames left (a reservoir of
        at most RESERVOIR_BITS; the stream's seal is reserved first), as the coder counts
        them. Returns (the writer, the step indices, the quantized spectra (HOP,) and the
        coder's bits, per frame).

        The model's ideal lengths of RESERVOIR_STEPS + 1 candidates per frame guide the
        search: candidates whose ideal spectrum does not fit are skipped, the others
        coded finest first until one fits; when none does, coarser steps follow."""
        candidates, estimates = self._step_candidates(y, beta)
        writer, carry, budget = RangeWriter(), -SEAL_BITS, math.floor(self.frame_bits)
        steps, spectra, bits, before = [], [], [], 0  # an empty stream has 0 bits
        for t in range(len(y)):
            allowed = before + budget + carry
            envelope = ([0] * ENVELOPE_BITS if codes is None else codes[t].tolist())
            row = shape[t:t + 1] if codes is None else self.decode_envelope(codes[t:t + 1])
            room = allowed - before - self.side_bits
            for step in self._trial_steps(candidates[t], estimates[t], room):
                trial = writer.clone()
                q = quantize(y[t] / step_size(torch.tensor(step)))  # (HOP,)
                self._write_frame(trial, [int(gain_index[t]), *envelope, step], q,
                                  self._coding_scales(gain_index[t:t + 1], row, step))
                if trial.bits() <= allowed:
                    break
            writer = trial
            steps.append(step)
            spectra.append(q)
            bits.append(float(writer.bits() - before))
            before = writer.bits()
            carry = min(allowed - before, RESERVOIR_BITS)
        return writer, steps, spectra, bits

    def _step_candidates(self, y: torch.Tensor, beta: torch.Tensor
                         ) -> tuple[list[list[int]], list[list[float]]]:
        """Per frame RESERVOIR_STEPS + 1 step indices, finest first, ending with the finest
        whose spectrum's ideal length fits the frame's own budget, and those lengths."""
        budget = math.floor(self.frame_bits) - self.side_bits
        nominal = self._fitting_steps(y, beta, budget)  # (T,)
        candidates = (nominal[:, None] - torch.arange(RESERVOIR_STEPS, -1, -1)).clamp(min=0)
        steps = step_size(candidates)[..., None]  # (T, W, 1)
        table = torch.cat([code_length(quantize(yc[:, None] / s), bc[:, None] / s)
                           for yc, bc, s in zip(y.split(CHUNK), beta.split(CHUNK),
                                                steps.split(CHUNK))])  # (T, W)
        return candidates.tolist(), table.tolist()

    @staticmethod
    def _trial_steps(candidates: list[int], estimates: list[float], room: float) -> list[int]:
        """The steps to try, in order: the candidates whose ideal spectrum fits ``room``,
        finest first, then every coarser step from the last candidate on."""
        fitting = [c for c, e in zip(candidates, estimates) if e <= room]
        return list(dict.fromkeys([*fitting, *range(candidates[-1], 2**STEP_BITS)]))

    def _write_frame(self, writer: RangeWriter, side: list[int], q: torch.Tensor,
                     beta: torch.Tensor) -> None:
        """Append one frame: its side symbols, then the magnitudes of q (HOP,) table by
        table under ``magnitude_table`` of the scales ``beta`` (HOP,), then the signs."""
        writer.uniform(np.array(side), self.side_sizes)
        magnitude, wide = q.abs().long(), beta.amax()
        rows, level = torch.arange(HOP), 0
        while len(rows):
            rest = magnitude[rows] - level * TABLE_MAGNITUDES
            writer.categorical(rest.clamp(max=TABLE_MAGNITUDES).numpy(),
                               magnitude_table(beta[rows], wide, level).numpy())
            rows, level = rows[rest >= TABLE_MAGNITUDES], level + 1
        negative = (q[q != 0] < 0).long().numpy()
        writer.uniform(negative, np.full(len(negative), 2))

    @staticmethod
    def _read_spectrum(reader: RangeReader, beta: torch.Tensor) -> torch.Tensor:
        """(HOP,) int64 q that ``_write_frame`` wrote after the side symbols."""
        magnitude, wide = torch.zeros(HOP, dtype=torch.long), beta.amax()
        rows, level = torch.arange(HOP), 0
        while len(rows):
            rest = torch.from_numpy(reader.categorical(
                magnitude_table(beta[rows], wide, level).numpy()).astype(np.int64))
            magnitude[rows] += rest
            rows, level = rows[rest == TABLE_MAGNITUDES], level + 1
        nonzero = magnitude != 0
        negative = torch.from_numpy(reader.uniform(np.full(int(nonzero.sum()), 2)) == 1)
        sign = torch.ones(int(nonzero.sum()), dtype=torch.long).masked_fill(negative, -1)
        return magnitude.masked_scatter(nonzero, magnitude[nonzero] * sign)

    @staticmethod
    def _fitting_steps(y: torch.Tensor, beta: torch.Tensor, budget: int) -> torch.Tensor:
        """(T,) int64: per frame the finest step index whose spectrum fits ``budget`` bits
        (the coarsest where none does), by a binary search on all frames at once."""
        frames, top = len(y), 2**STEP_BITS - 1
        low = torch.full((frames,), -1, dtype=torch.long)  # does not fit (or none tried)
        high = torch.full((frames,), top, dtype=torch.long)  # fits, or the coarsest
        while bool((high - low > 1).any()):
            middle = (low + high) // 2
            steps = step_size(middle)[:, None]
            fits = code_length(quantize(y / steps), beta / steps).ceil() <= budget
            high = torch.where(fits, middle, high)
            low = torch.where(fits, low, middle)
        return high
