"""Data generators of the experiments: i.i.d. Gaussian, AR(1) Gaussian, image patches.

- ``gaussian``: uncorrelated data, every entry i.i.d. N(0, 1) (the paper's "uncorrelated"
  toy data, Figures 2b and 3).
- ``ar1``: correlated data, each vector a stationary first-order autoregressive Gaussian
  process ``x[0] ~ N(0, 1)``, ``x[t] = rho * x[t-1] + sqrt(1 - rho**2) * e[t]`` with
  ``e[t] ~ N(0, 1)``; every entry has unit variance and ``corr(x[s], x[t]) = rho**|s-t|``
  (the paper's "correlated" toy data, Figure 2a, with ``rho = 0.9``).
- ``image_patches``: real data at raw scale, 8x8 grayscale patches (values 0..255) of the
  two sample images that scikit-learn ships. For benchmarks only: scikit-learn is
  imported lazily and is never a dependency of the library.

All generators return float32 tensors of shape (N, D).
"""

from __future__ import annotations

import torch

AR1_CORRELATION = 0.9
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 RGB -> gray


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
