"""Write a CIFAR-10-format directory of 32x32 tiles of scikit-learn's two sample photographs.

    python benchmarks/make_cifar_format.py DIR
    python benchmarks/compare_in_model.py --data DIR --bits 16 32

A second image set for the benchmarks, in the format of CIFAR-10's python version
(``data_batch_1`` ... ``data_batch_5``, ``test_batch``), for machines without CIFAR-10
itself. The photographs (china.jpg, flower.jpg, 427 x 640) are split by region: tiles
from the top three quarters of each are for training (every 4 pixels), tiles from the
bottom quarter for testing (every 8 pixels), so no test pixel is in a training tile.
Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stochastic_vq.images import tiles, write_cifar10  # noqa: E402

TRAIN_SHARE, TRAIN_STRIDE, TEST_STRIDE = 0.75, 4, 8


def sample_photo_tiles() -> tuple[torch.Tensor, torch.Tensor]:
    """(training tiles, test tiles) (N, 3, 32, 32) uint8, split by region of each photo."""
    from sklearn.datasets import load_sample_images  # a benchmark dependency

    train, test = [], []
    for photo in load_sample_images().images:
        image = torch.tensor(photo).permute(2, 0, 1)  # (3, H, W)
        split = round(image.shape[1] * TRAIN_SHARE)
        train.append(tiles(image[:, :split], TRAIN_STRIDE))
        test.append(tiles(image[:, split:], TEST_STRIDE))
    return torch.cat(train), torch.cat(test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the files (created if missing)")
    args = parser.parse_args(argv)
    train, test = sample_photo_tiles()
    write_cifar10(args.directory, train, test)
    print(f"wrote {len(train)} training and {len(test)} test images to {args.directory}")


if __name__ == "__main__":
    main()
