"""The speech codec of Figure 1: MDCT, band layout, entropy model, bit counting, rate control."""

import math
import sys

import numpy as np
import pytest
import torch

from helpers import voiced
from stochastic_vq import speech_bitstream as bitstream
from stochastic_vq import speech_codec as codec
from stochastic_vq.methods import build_quantizer
from stochastic_vq.speech_experiment import PUBLISHED_BITRATES, envelope_shapes


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return voiced(1.5, 140.0, 0)


@pytest.fixture
def coder():
    """Skips a test that runs the range coder where constriction is not installed."""
    pytest.importorskip("constriction")


def test_window_is_low_overlap_and_meets_princen_bradley():
    window = codec.low_overlap_window()  # (640,)
    assert window.shape == (2 * codec.HOP,)
    assert int((window > 0).sum()) == codec.WINDOW_SUPPORT  # 30 ms of 40
    torch.testing.assert_close(window, window.flip(0))
    head, tail = window[:codec.HOP], window[codec.HOP:]
    torch.testing.assert_close(head**2 + tail**2, torch.ones(codec.HOP, dtype=torch.float64))


@pytest.mark.parametrize("length", [1, 320, 4000, 16001])
def test_mdct_reconstructs_perfectly(length):
    signal = torch.randn(length, generator=torch.Generator().manual_seed(length),
                         dtype=torch.float64)
    coefficients = codec.mdct(signal)
    assert coefficients.shape == (math.ceil(length / codec.HOP) + 1, codec.HOP)
    torch.testing.assert_close(codec.imdct(coefficients, length), signal, atol=1e-10,
                               rtol=0)


def test_mdct_is_orthogonal():
    """Parseval: the coefficients hold the signal's energy (the codec's errors in the MDCT
    domain are errors of the signal)."""
    signal = torch.randn(8000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(codec.mdct(signal).pow(2).sum(), signal.pow(2).sum())


def test_window_rejects_a_support_without_overlap():
    with pytest.raises(ValueError, match="support"):
        codec.low_overlap_window(320, 320)


def test_band_layout():
    edges = codec.band_edges()
    assert len(edges) == codec.BANDS + 1 and edges[0] == 0 and edges[-1] == codec.HOP
    widths = np.diff(edges)
    assert (widths > 0).all() and (np.diff(widths) >= 0).all()  # wider towards 8 kHz
    assert codec.to_bins(torch.zeros(3, codec.BANDS)).shape == (3, codec.HOP)


def test_envelope_is_band_energy_in_db_and_its_shape_has_zero_mean():
    coefficients = torch.zeros(2, codec.HOP, dtype=torch.float64)
    start, stop = codec.band_edges()[3:5]
    coefficients[0, start:stop] = 10.0  # band 3 at 20 dB, the others at the floor
    envelope = codec.envelope_db(coefficients)
    assert envelope[0, 3] == pytest.approx(20.0)
    assert envelope[1].tolist() == pytest.approx([codec.GAIN_FLOOR_DB] * codec.BANDS, abs=1e-6)
    gain, shape = codec.split_envelope(envelope)
    torch.testing.assert_close(shape.mean(dim=1), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(gain[:, None] + shape, envelope)


def laplace_cell_reference(q: int, beta: float) -> float:
    """P(q), the Laplacian's probability of q's cell, one cell at a time (the slow, obvious
    way): its tail probability 0.5 exp(-|y| / beta) at the cell's ends."""
    if q == 0:
        return 1 - math.exp(-0.7 / beta)
    low = abs(q) - 0.3  # the cell on q's side: [|q| - 0.3, |q| + 0.7)
    return 0.5 * (math.exp(-low / beta) - math.exp(-(low + 1) / beta))


@pytest.mark.parametrize("beta", [0.05, 0.7, 3.0])
def test_laplace_probabilities_match_the_cdf_and_sum_to_one(beta):
    q = torch.arange(-200, 201, dtype=torch.float64)
    log_p = codec.laplace_log_prob(q, torch.full_like(q, beta))
    expected = [laplace_cell_reference(int(v), beta) for v in q]
    np.testing.assert_allclose(log_p.exp().numpy(), expected, rtol=1e-9, atol=1e-300)
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_code_length_is_the_mixture_model_ideal_length():
    """Bits = -Σ log2 P(q), P a proper distribution (so the lengths meet Kraft's bound)."""
    beta = torch.tensor([[0.1, 2.0]], dtype=torch.float64)
    q = torch.arange(-80, 81, dtype=torch.float64)[:, None].expand(-1, 2)  # (161, 2)
    probabilities = [[codec.mixture(v[None], beta)[0].exp()[0, i] for v in q]
                     for i in range(2)]
    for column in probabilities:
        assert float(sum(column)) == pytest.approx(1.0, abs=1e-9)
    sample = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    expected = -math.log2(probabilities[0][80]) - math.log2(probabilities[1][83])
    assert float(codec.code_length(sample, beta)) == pytest.approx(expected)


@pytest.mark.parametrize("beta, wide", [(0.05, 0.05), (0.8, 6.0), (4.0, 40.0)])
def test_magnitude_tables_multiply_to_the_model(beta, wide):
    """The range coder's tables (15 magnitudes and an escape each, one bit for a sign) give
    every q the model's own probability: their product is exp(mixture_log_prob)."""
    q = torch.tensor([0, 1, -2, 14, 15, -16, 29, 31, 47, -100], dtype=torch.float64)
    scales, wide = torch.full_like(q, beta), torch.tensor(wide, dtype=torch.float64)
    coded = torch.zeros_like(q)  # log of the product of the tables' probabilities
    for level in range(int(q.abs().max()) // codec.TABLE_MAGNITUDES + 1):
        table = codec.magnitude_table(scales, wide, level)  # (10, 16)
        torch.testing.assert_close(table.sum(dim=1), torch.ones_like(q))
        rest = q.abs() - level * codec.TABLE_MAGNITUDES
        symbol = rest.clamp(0, codec.TABLE_MAGNITUDES).long()
        picked = table.gather(1, symbol[:, None])[:, 0].log()
        coded += torch.where(rest >= 0, picked, torch.zeros_like(q))
    coded += torch.where(q != 0, math.log(0.5), 0.0)  # the sign bit
    expected = codec.mixture_log_prob(q, scales, wide)
    torch.testing.assert_close(coded, expected, rtol=1e-9, atol=1e-9)


def test_frame_bits_are_the_streams_and_near_the_ideal_code_length(speech, coder):
    torch.manual_seed(0)
    quantizer = build_quantizer("rvq", 4, 4, codec.BANDS, check_finite=False)
    quantizer.initialize_from_data(envelope_shapes([speech]))
    speech_codec = codec.SpeechCodec(13.2, quantizer.eval())
    assert speech_codec.envelope_bits == 16 and speech_codec.frame_bits == 264
    frames = speech_codec.encode(speech)
    assert frames.codes.shape == (len(frames.bits), 4) and int(frames.codes.max()) < 16
    header = 8 * bitstream.HEADER.size
    assert float(frames.bits.sum()) == 8 * len(frames.stream) - header  # whole 32-bit words
    assert (len(frames.stream) - bitstream.HEADER.size) % 4 == 0
    y = codec.mdct(speech)  # recount the ideal bits from what the decoder receives
    weights, beta = speech_codec._model(frames.gain.double(), frames.shape)
    steps = codec.step_size(frames.step)[:, None]
    assert codec.quantize(y / weights / steps).equal(frames.spectrum.double())
    side = 16 + codec.GAIN_BITS + codec.STEP_BITS
    ideal = codec.code_length(frames.spectrum.double(), beta / steps) + side
    torch.testing.assert_close(frames.ideal_bits, ideal)
    # the range coder's own bits: near the ideal, at most the seal word and a small
    # share of a bit per frame above it
    excess = float(frames.bits.sum() - ideal.sum())
    assert -1 < excess <= bitstream.SEAL_BITS + 0.1 * len(ideal)
    assert bool(((frames.bits[:-1] - ideal[:-1]).abs() < 4).all())


@pytest.mark.parametrize("method", ["avq", "rvq", "pvq", None])
def test_the_stream_alone_decodes_bit_exactly(speech, coder, method):
    quantizer = None
    if method is not None:
        quantizer = build_quantizer(method, 4, 4, codec.BANDS, check_finite=False, beam_width=4)
        quantizer.initialize_from_data(envelope_shapes([speech]))
        quantizer.eval()
    speech_codec = codec.SpeechCodec(9.6, quantizer)
    frames = speech_codec.encode(speech)
    stream = bytes(frames.stream)  # nothing but the file travels
    # a fresh codec with the same quantizer: the decoder's side of the channel
    receiver = codec.SpeechCodec(9.6, quantizer)
    read = receiver.read(stream, shape=None if quantizer else frames.shape)
    for name in ("gain", "step", "spectrum", *(("codes",) if quantizer else ())):
        assert getattr(read, name).equal(getattr(frames, name)), name
    assert read.length == len(speech) and read.shape.equal(frames.shape)
    assert receiver.decode(read).equal(speech_codec.decode(frames))


@pytest.mark.parametrize("position", [10, 40, 200])
def test_a_changed_stream_is_refused_or_decodes_to_other_frames(speech, coder, position):
    speech_codec = codec.SpeechCodec(8.0)
    frames = speech_codec.encode(speech)
    words = bytearray(frames.stream)
    words[bitstream.HEADER.size + position] ^= 0xFF  # one byte of the coded frames
    try:
        read = speech_codec.read(bytes(words), shape=frames.shape)
    except ValueError as error:
        assert str(error).startswith("stream is corrupt")
    else:
        assert not read.spectrum.equal(frames.spectrum)


@pytest.mark.parametrize("stream, match", [
    (b"RIFF" + bytes(12), "stream must be a speech codec file"),
    (b"SVQ1", "stream must be a speech codec file"),
    (b"SVQ1" + bytes(6), "whole 32-bit words"),
])
def test_a_stream_that_is_not_a_codec_file_is_refused(stream, match, coder):
    with pytest.raises(ValueError, match=match):
        codec.SpeechCodec(8.0).read(stream, shape=torch.zeros(2, codec.BANDS))


def test_read_needs_the_shape_exactly_for_an_unquantized_envelope(speech, coder):
    frames = codec.SpeechCodec(8.0).encode(speech)
    with pytest.raises(ValueError, match="shape must be given exactly when"):
        codec.SpeechCodec(8.0).read(frames.stream)


def test_rate_control_counts_the_coders_bits(speech, coder, monkeypatch):
    """Make the coder dearer than the model (20 padding bits per frame): rate control,
    counting what the coder wrote, still keeps every prefix of the stream in budget,
    where counting the model's ideal lengths would overrun by 20 bits a frame."""
    write = codec.SpeechCodec._write_frame

    def padded(self, writer, side, q, beta):
        write(self, writer, side, q, beta)
        writer.uniform(np.zeros(20, np.int32), np.full(20, 2, np.int32))

    monkeypatch.setattr(codec.SpeechCodec, "_write_frame", padded)
    frames = codec.SpeechCodec(8.0).encode(speech)
    assert float(frames.bits.sum()) <= 160 * len(frames.bits)
    assert float((frames.bits - frames.ideal_bits).mean()) > 19  # the padding is counted
    frame_count = torch.arange(1, len(frames.bits) + 1, dtype=torch.float64)
    assert bool((frames.bits.cumsum(0) <= frame_count * 160).all())


def test_missing_constriction_names_the_extra(speech, monkeypatch):
    monkeypatch.setitem(sys.modules, "constriction", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r'constriction: pip install "\.\[experiments\]"'):
        codec.SpeechCodec(8.0).encode(speech)


@pytest.mark.parametrize("bitrate", PUBLISHED_BITRATES)
def test_rate_control_hits_the_target(speech, coder, bitrate):
    speech_codec = codec.SpeechCodec(bitrate)
    bits = speech_codec.encode(speech).bits  # (T,)
    budget = bitrate * 20  # bits per 20 ms frame
    assert float(bits.mean()) == pytest.approx(budget, rel=0.02)
    frames = torch.arange(1, len(bits) + 1, dtype=torch.float64)
    assert bool((bits.cumsum(0) <= frames * budget).all())  # never more than the budget
    # the stream sealed after any frame (its final word or two) would fit too
    spent = bits.cumsum(0)[:-1] + bitstream.SEAL_BITS
    assert bool((spent <= frames[:-1] * budget).all())


def test_quality_rises_with_the_bitrate_and_decoding_is_deterministic(speech, coder):
    errors = []
    for bitrate in (8.0, 16.4, 32.0):
        speech_codec = codec.SpeechCodec(bitrate)
        frames = speech_codec.encode(speech)
        decoded = speech_codec.decode(frames)
        assert decoded.shape == speech.shape
        torch.testing.assert_close(speech_codec.decode(frames), decoded, rtol=0, atol=0)
        errors.append(float((decoded - speech).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert 10 * math.log10(float(speech.pow(2).mean()) / errors[2]) > 10  # dB at 32 kbit/s


@pytest.mark.parametrize("kwargs, match", [
    ({"bitrate": 1.5}, "bitrate must leave bits"),
    ({"bitrate": 8.0, "shaping": 1.5}, "shaping must be in"),
    ({"bitrate": 8.0, "envelope_quantizer": build_quantizer("rvq", 4, 4, 8)},
     "envelope_quantizer must quantize 16"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        codec.SpeechCodec(**kwargs)
