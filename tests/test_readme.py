"""Every Python block of README.md runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


def test_autoencoder_example_learns():
    """The drop-in example trains: its reconstruction error falls below the start."""
    import torch

    namespace = {"__name__": "readme"}
    block = next(b for b in BLOCKS if "class Autoencoder" in b)
    head = block.split("torch.manual_seed(0)")[0]
    exec(compile(head, "README.md autoencoder", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["Autoencoder"]()
    frames = torch.randn(16, 50, 40)
    model.eval()
    before = (model(frames) - frames).pow(2).mean().item()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        loss = (model(frames) - frames).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = (model(frames) - frames).pow(2).mean().item()
    assert after < 0.9 * before
    assert model.quantizer.codebooks.grad is not None
