"""Receivers export: torch.export of a module wrapping ``encode`` and of one wrapping
``decode``, with the default options, gives the eager codes and vectors exactly, and
keeps the checks of values (finite input, index range) as asserts in the graph."""

import pytest
import torch

from helpers import CLASSES, D, K, M, make


class Encoder(torch.nn.Module):
    def __init__(self, quantizer, num_stages=None):
        super().__init__()
        self.quantizer, self.num_stages = quantizer, num_stages

    def forward(self, x):
        return self.quantizer.encode(x, num_stages=self.num_stages)


class Decoder(torch.nn.Module):
    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, codes):
        return self.quantizer.decode(codes)


@pytest.mark.slow
def test_exported_encoder_and_decoder_match_eager(kind):
    vq = make(kind).eval()  # default options: check_finite=True
    x = torch.randn(2, 5, D)
    encoder = torch.export.export(Encoder(vq), (x,)).module()
    decoder = torch.export.export(Decoder(vq), (vq.encode(x),)).module()
    other = torch.randn(2, 5, D)
    for batch in (x, other):
        codes = encoder(batch)
        assert torch.equal(codes, vq.encode(batch))
        assert torch.equal(decoder(codes), vq.decode(codes))
    with pytest.raises(RuntimeError, match="x contains NaN or Inf"):
        encoder(torch.full((2, 5, D), float("nan")))
    with pytest.raises(RuntimeError, match=rf"indices must be in \[0, {K - 1}\]"):
        decoder(torch.full((2, 5, M), K))


@pytest.mark.slow
def test_exported_decoder_takes_any_length():
    """A receiver decodes streams of any length: batch and time axes may be dynamic."""
    vq = make("RVQ").eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
    codes = vq.encode(torch.randn(2, 5, D))
    decoder = torch.export.export(Decoder(vq), (codes,), dynamic_shapes=(dims,)).module()
    longer = torch.randint(0, K, (3, 17, M))
    assert torch.equal(decoder(longer), vq.decode(longer))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AVQ", "RVQ"])
def test_exported_first_n_codebooks_and_channel_first(name):
    vq = CLASSES[name].build(M, 3, D, beam_width=4, channel_first=True).eval()
    with torch.no_grad():
        vq.codebooks.copy_(torch.randn(vq.codebooks.shape))
    x = torch.randn(2, D, 6)  # (B, D, T)
    encoder = torch.export.export(Encoder(vq, num_stages=2), (x,)).module()
    codes = encoder(x)  # (B, 2, T)
    assert torch.equal(codes, vq.encode(x, num_stages=2))
    decoder = torch.export.export(Decoder(vq), (codes,)).module()
    assert torch.equal(decoder(codes), vq.decode(codes))
