"""Small configurations shared by the tests of the training stack."""

import torch

from stochastic_vq.config import TrainConfig


def tiny(method: str, **overrides) -> TrainConfig:
    """A run of a few seconds: 2 codebooks of 8 codewords in 8 dimensions."""
    settings = dict(method=method, stages=2, bits=3, data_dim=8, beam_width=2, batch_size=16,
                    steps=100, replace_every=20, log_every=25, save_every=30,
                    eval_samples=512, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def without_times(log: dict) -> dict:
    """The log without wall-clock times, which differ between equal runs."""
    skip = {"train_time", "eval_time", "wall_time", "quantizer", "config"}
    windows = [{k: v for k, v in w.items() if k != "time"} for w in log["windows"]]
    return {**{k: v for k, v in log.items() if k not in skip}, "windows": windows}


def nsvq_step(vq, optimizer, x: torch.Tensor) -> torch.Tensor:
    """One training step of a bare quantizer on x (N, D): NSVQ output, squared error,
    backward and optimizer step. Returns the detached NSVQ output."""
    out, _ = vq(x, train_mode=True)
    loss = (x - out).pow(2).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return out.detach()
