"""The files of a run directory: ``log.json`` and ``checkpoint.pt``, written atomically.

A file is written to a temporary file beside it and renamed over it, so a run killed
while writing leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from stochastic_vq.config import ConfigError, TrainConfig
from stochastic_vq_core.codebook_updates import EMA_DECAY
from stochastic_vq_core.estimators import DIVEQ_NOISE

LOG_FILE, CHECKPOINT_FILE = "log.json", "checkpoint.pt"
# Settings a resumed run may change: they do not alter the trained codebooks.
RESUMABLE_CHANGES = ("out", "save_every", "eval_samples", "eval_data", "resume", "threads")
# Names of settings in checkpoints of earlier versions, and the values they had implied.
RENAMED_SETTINGS = {"dim": "data_dim"}
IMPLIED_SETTINGS = {"lr_scale": "absolute", "estimator": "nsvq", "diveq_noise": 1.0,
                    "codebook_update": "gradient", "ema_decay": 0.8}
# Settings whose None stands for the quantizer's default: the two are the same setting.
DEFAULTED_SETTINGS = {"diveq_noise": DIVEQ_NOISE, "ema_decay": EMA_DECAY}


def _resolved(setting: str, value):
    """The value a setting stands for: its default where None means the default."""
    return DEFAULTED_SETTINGS.get(setting) if value is None else value


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` on a new file beside ``path``, then rename it to path.

    The file is created with the permissions the process's umask gives new files.
    """
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(temp))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(obj, indent=1)))


def write_checkpoint(path: Path, checkpoint: dict) -> None:
    """``torch.save`` the checkpoint dict to ``path`` atomically."""
    atomic_write(path, lambda temp: torch.save(checkpoint, temp))


def read_checkpoint(path: Path, config: TrainConfig, world: int) -> dict:
    """The checkpoint at ``path`` if a run of ``config`` on ``world`` processes may resume it.

    Raises ConfigError (setting "resume") when the file is missing or unreadable, or was
    written with other settings (all but RESUMABLE_CHANGES must match).
    """
    if not path.is_file():
        raise ConfigError("resume", f"no checkpoint to resume from: {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = {RENAMED_SETTINGS.get(key, key): value
                 for key, value in checkpoint["config"].items()}
        saved = {**IMPLIED_SETTINGS, **saved, "world_size": checkpoint["world_size"]}
    except Exception as error:  # unreadable file: report it as one line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError("resume", f"cannot read checkpoint {path}: {first_line}") from None
    current = {**asdict(config), "world_size": world}
    differing = [f"{key}={saved.get(key)!r} (now {value!r})" for key, value in current.items()
                 if key not in RESUMABLE_CHANGES
                 and _resolved(key, saved.get(key)) != _resolved(key, value)]
    if differing:
        raise ConfigError("resume", f"{path} was written by a run with other settings: "
                                    + ", ".join(differing))
    return checkpoint
