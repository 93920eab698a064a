"""Every Python block of README.md runs as written, from a fresh working directory."""

import re
from pathlib import Path

import pytest

import train_residual_vq

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
CHECKPOINT = Path("output", "rvq_4x7b_d128_seed0", "checkpoint.pt")  # as README names it


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    """Each block in an empty folder; a block that loads a run's checkpoint finds the one
    that README's command ``python train_residual_vq.py`` writes there (here shortened)."""
    monkeypatch.chdir(tmp_path)
    if str(CHECKPOINT) in BLOCKS[index]:
        train_residual_vq.main(["--steps", "20", "--log-every", "10", "--eval-samples", "256"])
        assert CHECKPOINT.is_file()
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.slow
def test_conv_autoencoder_example_learns():
    """The drop-in example trains: its reconstruction error falls below the start."""
    import torch

    namespace = {"__name__": "readme"}
    block = next(b for b in BLOCKS if "class ConvAutoencoder" in b)
    head = block.split("torch.manual_seed(0)")[0]
    exec(compile(head, "README.md autoencoder", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["ConvAutoencoder"]()
    images = torch.rand(16, 3, 32, 32)
    model.eval()
    before = (model(images) - images).pow(2).mean().item()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        loss = (model(images) - images).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = (model(images) - images).pow(2).mean().item()
    assert after < 0.9 * before
    assert model.quantizer.codebooks.grad is not None


@pytest.mark.slow
def test_codec_example_serves_every_rate():
    """The codec example's one model decodes from its first n codebooks, better with more
    of them; its training codes mark padding frames -1."""
    import torch

    namespace = {"__name__": "readme"}
    block = next(b for b in BLOCKS if "class TinyCodec" in b)
    exec(compile(block.split("model.eval()")[0], "README.md codec", "exec"), namespace)
    model, audio, frames, samples = (namespace[name] for name in
                                     ("model", "audio", "frames", "samples"))
    assert (namespace["codes"][~frames.unsqueeze(1).expand(-1, 4, -1)] == -1).all()
    model.eval()
    with torch.no_grad():
        latents = model.encoder(audio)
        errors = [(model.decoder(model.quantizer.decode(model.quantizer.encode(
            latents, num_stages=n))) - audio).squeeze(1)[samples].pow(2).mean()
            for n in range(1, 5)]
    assert errors[0] > 1.5 * errors[-1]
    assert all(fewer >= 0.99 * more for fewer, more in zip(errors, errors[1:]))
