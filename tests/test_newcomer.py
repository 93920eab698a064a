"""What a newcomer meets first: the dtype rule of decode, a conv feature map in a
quantizer, and README's conv autoencoder trained under bfloat16 autocast."""

import math
import re
from pathlib import Path

import pytest
import torch

from helpers import D, make

README = Path(__file__).resolve().parent.parent / "README.md"


def test_decode_returns_float32_and_matches_the_forward_in_the_inputs_dtype(kind):
    """README: decode gives the codebooks' dtype, the forward the input's dtype, so
    ``decode(encode(x)).to(x.dtype)`` equals the eval-mode output under bf16 autocast."""
    vq = make(kind).eval()
    x = torch.randn(32, D).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hard, _ = vq(x)
        decoded = vq.decode(vq.encode(x))
    assert hard.dtype == torch.bfloat16 and decoded.dtype == torch.float32
    assert torch.equal(decoded.to(x.dtype), hard)


def test_a_conv_feature_map_is_quantized_channels_last(kind):
    """(B, C, H, W) with C = D is refused with the permute as the hint; permuted it works."""
    vq = make(kind).eval()
    feature_map = torch.randn(2, D, 5, 6)  # (B, C, H, W)
    with pytest.raises(ValueError, match=re.escape("permute(0, 2, 3, 1)")):
        vq(feature_map)
    quantized, _ = vq(feature_map.permute(0, 2, 3, 1))  # (B, H, W, C)
    assert quantized.permute(0, 3, 1, 2).shape == feature_map.shape


def test_readme_conv_autoencoder_trains_under_bfloat16_autocast():
    """README's model, unchanged, trained in bf16 on CPU: bf16 flows through the quantizer
    and the reconstruction error falls."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    block = next(block for block in blocks if "class ConvAutoencoder" in block)
    namespace = {"__name__": "readme"}
    exec(compile(block.split("torch.manual_seed(0)")[0], "README.md", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["ConvAutoencoder"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(8, 3, 32, 32)
    losses = []
    for _ in range(60):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantized, _ = model.quantizer(model.latents(images))
            loss = (model(images).float() - images).pow(2).mean()
        assert quantized.dtype == torch.bfloat16
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
