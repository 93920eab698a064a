"""The speech codec of Figure 1: MDCT, band layout, entropy model, bit counting, rate control."""

import math

import numpy as np
import pytest
import torch

from helpers import voiced
from stochastic_vq import speech_codec as codec
from stochastic_vq.methods import build_quantizer
from stochastic_vq.speech_experiment import PUBLISHED_BITRATES, envelope_shapes


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return voiced(1.5, 140.0, 0)


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


def test_frame_bits_add_up_and_the_envelope_costs_its_code_length(speech):
    torch.manual_seed(0)
    quantizer = build_quantizer("rvq", 4, 4, codec.BANDS, check_finite=False)
    quantizer.initialize_from_data(envelope_shapes([speech]))
    speech_codec = codec.SpeechCodec(13.2, quantizer.eval())
    assert speech_codec.envelope_bits == 16 and speech_codec.frame_bits == 264
    frames = speech_codec.encode(speech)
    assert frames.codes.shape == (len(frames.bits), 4) and int(frames.codes.max()) < 16
    y = codec.mdct(speech)  # recount the spectrum's bits from what the decoder receives
    weights, beta = speech_codec._model(frames.gain.double(), frames.shape)
    steps = codec.step_size(frames.step)[:, None]
    assert codec.quantize(y / (weights * steps)).equal(frames.spectrum.double())
    spectrum = codec.code_length(frames.spectrum.double(), beta / steps).ceil()
    side = 16 + codec.GAIN_BITS + codec.STEP_BITS + codec.CODER_BITS
    torch.testing.assert_close(frames.bits, spectrum + side)


@pytest.mark.parametrize("bitrate", PUBLISHED_BITRATES)
def test_rate_control_hits_the_target(speech, bitrate):
    speech_codec = codec.SpeechCodec(bitrate)
    bits = speech_codec.encode(speech).bits  # (T,)
    budget = bitrate * 20  # bits per 20 ms frame
    assert float(bits.mean()) == pytest.approx(budget, rel=0.02)
    frames = torch.arange(1, len(bits) + 1, dtype=torch.float64)
    assert bool((bits.cumsum(0) <= frames * budget).all())  # never more than the budget


def test_quality_rises_with_the_bitrate_and_decoding_is_deterministic(speech):
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
