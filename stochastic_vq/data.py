"""Training data: .npy files, seeded random streams, and the experiments' generators.

- ``load_array`` / ``npy_columns``: an (N, D) .npy file, checked, as float32; any
  other file (CSV, .npz, ...) is refused with the line that converts it.
- ``stream_seed`` / ``batch_sampler``: the seeded streams of a training run (its data,
  NSVQ noise, replacement choices, evaluation data, initialisation), independent per
  rank, so that a run is reproducible and resumable.
- ``gaussian``: uncorrelated data, every entry i.i.d. N(0, 1) (the paper's
  "uncorrelated" toy data, Figures 2b and 3).
- ``ar1``: correlated data, each vector a stationary first-order autoregressive Gaussian
  process ``x[0] ~ N(0, 1)``, ``x[t] = rho * x[t-1] + sqrt(1 - rho**2) * e[t]`` with
  ``e[t] ~ N(0, 1)``; every entry has unit variance and ``corr(x[s], x[t]) = rho**|s-t|``
  (the paper's "correlated" toy data, Figure 2a, with ``rho = 0.9``).
- ``image_patches``: real data at raw scale, 8x8 grayscale patches (values 0..255) of the
  two sample images that scikit-learn ships. For benchmarks only: scikit-learn is
  imported lazily and is never a dependency of the library.

The generators return float32 tensors of shape (N, D).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stochastic_vq.config import ConfigError

DATA_STREAM, NOISE_STREAM, REPLACEMENT_STREAM, EVAL_STREAM, INIT_STREAM = range(5)
AR1_CORRELATION = 0.9
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 RGB -> gray


# --- files ------------------------------------------------------------------------------

NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"  # first bytes of .npy and .npz files


def load_array(path: str, setting: str = "data") -> torch.Tensor:
    """Load an (N, D) real-valued .npy file as a float32 tensor; ConfigError if unusable.

    The error names the file, what it holds instead and, for a text or .npz file, the
    NumPy line that converts it.
    """
    _check_npy_file(path, setting)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError:  # allow_pickle=False refuses object arrays; or a truncated file
        raise ConfigError(setting, f"{path} holds no array of numbers (Python objects, or "
                                   "a damaged file); save an (N, D) array of real numbers "
                                   "with numpy.save") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or 0 in array.shape:
        shape = getattr(array, "shape", "not an array")
        raise ConfigError(setting, f"{path} must hold an (N, D) array, got shape {shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ConfigError(setting, f"{path} must hold real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise ConfigError(setting, f"{path}: {len(bad)} rows contain NaN or Inf "
                                   f"(first: row {bad[0]})")
    return torch.from_numpy(array)


def _check_npy_file(path: str, setting: str) -> None:
    """ConfigError unless ``path`` can be opened and starts as a .npy file does."""
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError as error:
        raise ConfigError(setting, f"cannot read {path}: {error.strerror}") from None
    if head.startswith(NPY_MAGIC):
        return
    stem = Path(path).with_suffix(".npy").name
    expected = f"{path} is not a .npy file; expected an (N, D) array saved with numpy.save"
    if head.startswith(ZIP_MAGIC):
        try:
            names = np.load(path, allow_pickle=False).files
        except (OSError, ValueError, zipfile.BadZipFile):
            names = []
        name = names[0] if len(names) == 1 else "NAME"
        raise ConfigError(setting, f"{expected}, found a .npz archive (arrays: "
                                   f"{', '.join(names) or 'none'}); convert it with "
                                   f"np.save('{stem}', np.load('{path}')['{name}'])")
    if _is_text(head):
        raise ConfigError(setting, f"{expected}, found text; convert a CSV file with "
                                   f"np.save('{stem}', np.loadtxt('{path}', delimiter=',', "
                                   "ndmin=2))")
    raise ConfigError(setting, f"{expected}, found another binary format")


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (a full 256-byte head may end
    inside a character, which is then ignored)."""
    try:
        text = head.decode("utf-8", errors="strict" if len(head) < 256 else "ignore")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def npy_columns(path: str, setting: str = "data") -> int:
    """D of the (N, D) array in a .npy file, reading only its header when it is well formed."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        array = None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        array = load_array(path, setting)  # raises the precise ConfigError
    return array.shape[1]


def as_training_array(array, setting: str, data_dim: int, path: str | None) -> torch.Tensor:
    """``array`` as a finite (N, data_dim) float32 tensor; ConfigError naming ``setting``."""
    array = torch.as_tensor(array, dtype=torch.float32)
    if array.dim() != 2 or not torch.isfinite(array).all():
        raise ConfigError(setting, f"must be a finite (N, D) array, got shape "
                                   f"{tuple(array.shape)} or NaN/Inf values")
    if array.shape[1] != data_dim:
        raise ConfigError("data_dim", f"data_dim is {data_dim} but {path or setting} has "
                                      f"{array.shape[1]} columns")
    return array


# --- random streams ---------------------------------------------------------------------

def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Independent 63-bit seed for random ``stream`` of ``rank`` in the run seeded ``seed``."""
    state = np.random.SeedSequence([seed, rank, stream]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def batch_sampler(data: torch.Tensor | None, batch_size: int, data_dim: int,
                  generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """Function drawing the next (batch_size, data_dim) batch from ``generator``'s stream.

    N(0, 1) samples when ``data`` is None, else rows of ``data`` drawn with replacement.
    """
    device = generator.device
    if data is None:
        return lambda: torch.randn(batch_size, data_dim, generator=generator, device=device)
    return lambda: data[torch.randint(len(data), (batch_size,), generator=generator,
                                      device=device)]


# --- generators of the experiments ------------------------------------------------------

def gaussian(num: int, dim: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """(num, dim) float32, i.i.d. N(0, 1) entries."""
    return torch.randn(num, dim, generator=generator)


def ar1(num: int, dim: int, rho: float = AR1_CORRELATION, *,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """(num, dim) float32 rows of a stationary AR(1) Gaussian process with unit variance.

    Args:
        num: number of vectors.
        dim: D, length of each vector (the process runs along it).
        rho: correlation of neighbouring entries, |rho| < 1.
        generator: optional CPU torch.Generator.
    """
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    noise = torch.randn(num, dim, generator=generator, dtype=torch.float64)  # (N, D)
    x = torch.empty_like(noise)
    x[:, 0] = noise[:, 0]
    innovation = (1.0 - rho * rho) ** 0.5
    for t in range(1, dim):
        x[:, t] = rho * x[:, t - 1] + innovation * noise[:, t]
    return x.float()


def image_patches(size: int = 8, stride: int = 2,
                  test_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 (``size`` x ``size``) grayscale patches, values in 0..255, split by image region.

    The patches of scikit-learn's two sample images (427 x 640 each) are taken every
    ``stride`` pixels. The bottom ``test_fraction`` of each image's rows gives the test
    patches and the rest the training patches, so no pixel is in both splits.

    Returns:
        (train, test): float32 tensors (N_train, size**2) and (N_test, size**2).
    """
    from sklearn.datasets import load_sample_images  # benchmarks only

    luma = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)
    train, test = [], []
    for image in load_sample_images().images:
        gray = torch.tensor(image, dtype=torch.float64) @ luma  # (H, W)
        split = int(round(gray.shape[0] * (1.0 - test_fraction)))
        train.append(_patches(gray[:split], size, stride))
        test.append(_patches(gray[split:], size, stride))
    return torch.cat(train).float(), torch.cat(test).float()


def _patches(image: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """All size x size patches of a 2-D image, every ``stride`` pixels, as rows (N, size**2)."""
    windows = image.unfold(0, size, stride).unfold(1, size, stride)  # (H', W', size, size)
    return windows.reshape(-1, size * size)


GENERATORS = {"gaussian": gaussian, "ar1": ar1}
