"""A VQ-VAE for small RGB images with an AVQ, PVQ or RVQ in its bottleneck.

The model of van den Oord et al. (2017) for CIFAR-10, in the paper's image experiment
(Figure 4): two stride-2 4x4 convolutions and two residual blocks take a 32x32 image to
an 8x8 grid of latent vectors of the quantizer's dimension D; the quantizer replaces each
latent vector by a sum (AVQ, RVQ) or concatenation (PVQ) of M codewords; a mirrored
decoder (two residual blocks, two stride-2 4x4 transposed convolutions) draws the image
again. Trained end to end on the reconstruction error: NSVQ passes gradients through the
quantizer in training mode, so no straight-through estimator or commitment loss is
needed.

    from residual_vq import RVQ
    from vq_vae import VQVAE
    model = VQVAE(RVQ(4, 4, 64), channels=64)     # 16 bits per latent vector
    reconstruction, usage = model(images)         # (B, 3, 32, 32), images in [0, 1]
    codes = model.compress(images)                # (B, 8, 8, 4) int64: 1024 bits an image
    images_again = model.decompress(codes)        # (B, 3, 32, 32)
"""

from __future__ import annotations

import torch
from torch import nn

DOWNSAMPLING = 4  # two stride-2 convolutions: an H x W image has an H/4 x W/4 latent grid


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, the VQ-VAE paper's residual block."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQVAE(nn.Module):
    """Convolutional autoencoder whose latent vectors are quantized by ``quantizer``.

    Args:
        quantizer: an AVQ, PVQ or RVQ of this library (or any module with their
            interface: ``forward(x) -> (quantized, usage)``, ``encode``, ``decode``,
            ``data_dim``, ``num_stages``, ``bits_per_vector``); its ``data_dim`` is the
            latent dimension D.
        channels: width of every hidden layer (256 in the VQ-VAE paper).
        residual_blocks: residual blocks in the encoder and in the decoder.
        image_channels: 3 for RGB.

    Images are (B, C, H, W) floats in [0, 1] with H and W divisible by 4; the latent grid
    is (B, H/4, W/4, D), one quantized vector per position, so an image costs
    ``(H/4) * (W/4) * quantizer.bits_per_vector`` bits (``bits_per_image``).
    """

    def __init__(self, quantizer: nn.Module, channels: int = 256, *, residual_blocks: int = 2,
                 image_channels: int = 3):
        super().__init__()
        for name, value in [("channels", channels), ("residual_blocks", residual_blocks),
                            ("image_channels", image_channels)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        latent = quantizer.data_dim
        self.image_channels = image_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(image_channels, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            *[ResidualBlock(channels, channels) for _ in range(residual_blocks)],
            nn.ReLU(), nn.Conv2d(channels, latent, 1))
        self.quantizer = quantizer
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, channels, 3, padding=1),
            *[ResidualBlock(channels, channels) for _ in range(residual_blocks)],
            nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(), nn.ConvTranspose2d(channels, image_channels, 4, stride=2, padding=1))

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Unquantized latent vectors (B, H/4, W/4, D) of images (B, C, H, W)."""
        self._check_images(images)
        return self.encoder(images - 0.5).permute(0, 2, 3, 1)  # channels last: (B, h, w, D)

    def reconstruct(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) drawn from (quantized) latent vectors (B, h, w, D)."""
        return self.decoder(latents.permute(0, 3, 1, 2)) + 0.5

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (B, C, H, W), codebook usage (M, K)) of images (B, C, H, W).

        In training mode the quantizer gives its NSVQ output, in eval mode the
        hard-quantized latents, so ``model.eval()`` shows what the codes decode to.
        """
        quantized, usage = self.quantizer(self.latents(images))  # (B, h, w, D)
        return self.reconstruct(quantized), usage

    @torch.no_grad()
    def compress(self, images: torch.Tensor, *, num_stages: int | None = None) -> torch.Tensor:
        """Codes (B, H/4, W/4, M) int64 of images (B, C, H, W): one index per codebook;
        with ``num_stages`` n, (B, H/4, W/4, n), one for each of the first n codebooks
        (a quantizer whose ``encode`` takes ``num_stages``)."""
        latents = self.latents(images)
        if num_stages is None:
            return self.quantizer.encode(latents)
        return self.quantizer.encode(latents, num_stages=num_stages)

    @torch.no_grad()
    def decompress(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) from codes (B, h, w, n), n = M or, for a quantizer that
        decodes with its first n codebooks, fewer; equals the eval-mode forward."""
        if codes.dim() != 4:
            raise ValueError(f"codes must have shape (B, h, w, {self.quantizer.num_stages}), "
                             f"got {tuple(codes.shape)}")
        return self.reconstruct(self.quantizer.decode(codes))

    def bits_per_image(self, height: int = 32, width: int = 32) -> int:
        """Bits of the codes of one ``height`` x ``width`` image."""
        grid = (height // DOWNSAMPLING) * (width // DOWNSAMPLING)
        return grid * self.quantizer.bits_per_vector

    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images must be a floating point torch.Tensor, got "
                            f"{getattr(images, 'dtype', type(images).__name__)}")
        if (images.dim() != 4 or images.shape[1] != self.image_channels
                or images.shape[2] % DOWNSAMPLING or images.shape[3] % DOWNSAMPLING):
            raise ValueError(f"images must have shape (B, {self.image_channels}, H, W) with H "
                             f"and W divisible by {DOWNSAMPLING}, got {tuple(images.shape)}")
