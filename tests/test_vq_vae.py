"""vq_vae.VQVAE: shapes, the compress/decompress round trip, gradients and input checks."""

import pytest
import torch

from stochastic_vq.methods import build_quantizer
from stochastic_vq_core.paper import METHODS
from vq_vae import VQVAE


def model(method: str, channels: int = 8) -> VQVAE:
    """A small VQ-VAE: 4 codebooks of 8 entries over 16-dimensional latents."""
    return VQVAE(build_quantizer(method, 4, 3, 16, beam_width=4), channels)


@pytest.mark.parametrize("method", METHODS)
def test_compress_decompress_equals_the_eval_forward(method):
    vae = model(method).eval()
    images = torch.rand(3, 3, 32, 32)
    codes = vae.compress(images)
    assert codes.shape == (3, 8, 8, 4) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 8
    reconstruction, usage = vae(images)
    assert reconstruction.shape == images.shape and usage.shape == (4, 8)
    assert torch.equal(vae.decompress(codes), reconstruction)
    assert vae.bits_per_image() == 64 * 12 and vae.bits_per_image(64, 48) == 192 * 12


@pytest.mark.parametrize("method", ["avq", "rvq"])
def test_compress_with_the_first_n_codebooks(method):
    vae = model(method).eval()
    images = torch.rand(2, 3, 32, 32)
    codes = vae.compress(images, num_stages=2)
    assert codes.shape == (2, 8, 8, 2)
    assert torch.equal(codes, vae.quantizer.encode(vae.latents(images), num_stages=2))
    assert torch.equal(vae.decompress(codes), vae.reconstruct(vae.quantizer.decode(codes)))


@pytest.mark.parametrize("method", METHODS)
def test_training_mode_passes_gradients_to_encoder_decoder_and_codebooks(method):
    vae = model(method).train()
    images = torch.rand(2, 3, 32, 32)
    reconstruction, usage = vae(images)
    (reconstruction - images).pow(2).mean().backward()
    for name in ("encoder.0.weight", "decoder.0.weight", "quantizer.codebooks"):
        grad = dict(vae.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert int(usage.sum()) > 0  # training mode counts usage


def test_other_image_sizes_and_widths():
    vae = VQVAE(build_quantizer("pvq", 2, 2, 4), channels=6, residual_blocks=1,
                image_channels=1).eval()
    images = torch.rand(2, 1, 16, 24)
    assert vae.compress(images).shape == (2, 4, 6, 2)
    assert vae(images)[0].shape == images.shape
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae.decoder) == 2


@pytest.mark.parametrize("images, error, message", [
    (torch.rand(2, 3, 30, 32), ValueError, "divisible by 4"),
    (torch.rand(3, 32, 32), ValueError, r"shape \(B, 3, H, W\)"),
    (torch.rand(2, 1, 32, 32), ValueError, r"shape \(B, 3, H, W\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating point"),
])
def test_bad_images_are_named(images, error, message):
    with pytest.raises(error, match=message):
        model("rvq")(images)


def test_bad_codes_and_widths_are_named():
    vae = model("rvq").eval()
    with pytest.raises(ValueError, match=r"codes must have shape \(B, h, w, 4\)"):
        vae.decompress(torch.zeros(8, 8, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="indices must be in"):
        vae.decompress(torch.full((1, 8, 8, 4), 8))
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        VQVAE(build_quantizer("rvq", 2, 2, 4), channels=0)
