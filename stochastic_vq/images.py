"""Image data of the VQ-VAE experiment: CIFAR-10 files, or tiles of scikit-image's photos.

- ``load_cifar10(directory)``: CIFAR-10 as users download it (the "python version"):
  ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, each a pickled dict whose
  ``b"data"`` is a (10000, 3072) uint8 array of channel-major rows (1024 red, 1024
  green, 1024 blue values of a 32x32 image). ``write_cifar_batch`` writes that format.
- ``photo_tiles()``: 32x32 tiles of the natural photographs that scikit-image ships,
  split by photograph, so that no test tile comes from a training photograph. An offline
  stand-in for CIFAR-10; scikit-image is an experiment dependency, never a library one.

Images are uint8 tensors (N, 3, 32, 32); ``to_unit`` scales them to floats in [0, 1].
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
SIDE = 32  # CIFAR-10 images are 32 x 32
ROW_BYTES = 3 * SIDE * SIDE
# scikit-image's natural colour photographs, split by photograph
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle")
TEST_PHOTOS = ("coffee", "chelsea")
TRAIN_STRIDE, TEST_STRIDE = 8, 16  # pixels between tiles (training tiles overlap more)
# what a CIFAR-10 batch file may reference: numpy's array reconstruction, bytes, nothing else
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                 "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                 ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                 ("_codecs", "encode")}


class ImageDataError(ValueError):
    """A missing or malformed image file; the message names the file and what was expected."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a batch file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str | Path) -> torch.Tensor:
    """The images (N, 3, 32, 32) uint8 of one CIFAR-10 batch file (python version)."""
    path = Path(path)
    expected = "a pickled dict with b'data', an (N, 3072) uint8 array (CIFAR-10 python version)"
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise ImageDataError(f"{path}: not found; expected {expected}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            AttributeError, ImportError) as error:
        raise ImageDataError(f"{path}: cannot be read ({type(error).__name__}: {error}); "
                             f"expected {expected}") from None
    rows = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == ROW_BYTES and len(rows)):
        got = (f"an array of shape {rows.shape} and dtype {rows.dtype}"
               if isinstance(rows, np.ndarray) else f"{type(rows).__name__} under b'data'"
               if isinstance(batch, dict) else type(batch).__name__)
        raise ImageDataError(f"{path}: got {got}; expected {expected}")
    return torch.from_numpy(np.ascontiguousarray(rows)).view(-1, 3, SIDE, SIDE)


def load_cifar10(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images (50000, 3, 32, 32), test images (10000, 3, 32, 32)), uint8."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageDataError(f"{directory}: not a directory; expected the CIFAR-10 python "
                             f"version (data_batch_1 ... data_batch_5, test_batch)")
    missing = [name for name in (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE)
               if not (directory / name).is_file()]
    if missing:
        raise ImageDataError(f"{directory}: lacks {', '.join(missing)}; expected the CIFAR-10 "
                             f"python version (data_batch_1 ... data_batch_5, test_batch)")
    train = torch.cat([read_cifar_batch(directory / name) for name in CIFAR_TRAIN_FILES])
    return train, read_cifar_batch(directory / CIFAR_TEST_FILE)


def write_cifar10(directory: str | Path, train: torch.Tensor, test: torch.Tensor) -> None:
    """Write uint8 images (N, 3, 32, 32) as a CIFAR-10 directory (python version): the
    training images split over ``data_batch_1`` ... ``data_batch_5``, and ``test_batch``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in zip(CIFAR_TRAIN_FILES, train.tensor_split(len(CIFAR_TRAIN_FILES))):
        write_cifar_batch(directory / name, part)
    write_cifar_batch(directory / CIFAR_TEST_FILE, test)


def write_cifar_batch(path: str | Path, images: torch.Tensor,
                      labels: list[int] | None = None) -> None:
    """Write uint8 images (N, 3, 32, 32) as a CIFAR-10 batch file (python version)."""
    if images.dtype != torch.uint8 or images.shape[1:] != (3, SIDE, SIDE):
        raise ValueError(f"images must be uint8 of shape (N, 3, {SIDE}, {SIDE}), got "
                         f"{images.dtype} {tuple(images.shape)}")
    batch = {b"data": images.reshape(len(images), ROW_BYTES).numpy(),
             b"labels": list(labels) if labels is not None else [0] * len(images)}
    with Path(path).open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def photo_tiles() -> tuple[torch.Tensor, torch.Tensor]:
    """(training tiles, test tiles) (N, 3, 32, 32) uint8 of scikit-image's photographs.

    Training tiles are cut every 8 pixels from the astronaut, rocket and motorcycle
    photographs, test tiles every 16 pixels from the coffee and cat (chelsea) ones.
    """
    train = torch.cat([tiles(_photo(name), TRAIN_STRIDE) for name in TRAIN_PHOTOS])
    test = torch.cat([tiles(_photo(name), TEST_STRIDE) for name in TEST_PHOTOS])
    return train, test


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1]."""
    return images.float().div_(255.0)


def _photo(name: str) -> torch.Tensor:
    """One of scikit-image's colour photographs as a (3, H, W) uint8 tensor."""
    from skimage import data  # an experiment dependency

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)


def tiles(image: torch.Tensor, stride: int) -> torch.Tensor:
    """All 32x32 tiles of a (3, H, W) image, every ``stride`` pixels: (N, 3, 32, 32)."""
    windows = image.unfold(1, SIDE, stride).unfold(2, SIDE, stride)  # (3, h, w, 32, 32)
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, SIDE, SIDE).contiguous()
