"""stochastic_vq.images: the CIFAR-10 reader on generated files, and the photo tiles."""

import pickle

import numpy as np
import pytest
import torch

from stochastic_vq import images
from stochastic_vq.images import ImageDataError


def cifar_directory(path, train: int = 6, test: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR-10 python-version directory of random images; returns (train, test)."""
    generator = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (5 * train, 3, 32, 32), dtype=torch.uint8,
                                 generator=generator)
    test_images = torch.randint(0, 256, (test, 3, 32, 32), dtype=torch.uint8,
                                generator=generator)
    images.write_cifar10(path, train_images, test_images)
    assert len(images.read_cifar_batch(path / "data_batch_2")) == train  # split in five
    return train_images, test_images


def test_cifar_directory_round_trip(tmp_path):
    train, test = cifar_directory(tmp_path)
    loaded_train, loaded_test = images.load_cifar10(tmp_path)
    assert torch.equal(loaded_train, train) and torch.equal(loaded_test, test)


def test_rows_are_channel_major(tmp_path):
    """Row layout of the CIFAR-10 files: 1024 red, then 1024 green, then 1024 blue values."""
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 1024 + 32 * 2 + 5] = 200  # green, image row 2, column 5
    with (tmp_path / "batch").open("wb") as handle:
        pickle.dump({b"data": row, b"labels": [3]}, handle, protocol=2)
    image = images.read_cifar_batch(tmp_path / "batch")[0]
    assert image.shape == (3, 32, 32) and image[1, 2, 5] == 200 and image.sum() == 200


@pytest.mark.parametrize("content, message", [
    (b"hello", "cannot be read"),
    (pickle.dumps([1, 2, 3]), "got list; expected a pickled dict"),
    (pickle.dumps({b"labels": [1]}), "NoneType under b'data'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}), "shape (2, 100)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32)}), "dtype float32"),
    (pickle.dumps(print), "refusing to load builtins.print"),
])
def test_malformed_batches_give_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(ImageDataError) as info:
        images.read_cifar_batch(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_missing_files_and_directories_are_named(tmp_path):
    with pytest.raises(ImageDataError, match="not a directory"):
        images.load_cifar10(tmp_path / "nowhere")
    cifar_directory(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ImageDataError, match="lacks data_batch_3;"):
        images.load_cifar10(tmp_path)


def test_writer_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="uint8 of shape"):
        images.write_cifar_batch(tmp_path / "x", torch.zeros(2, 3, 32, 32))


def test_photo_tiles_are_split_by_photograph():
    pytest.importorskip("skimage")
    train, test = images.photo_tiles()
    assert train.dtype == test.dtype == torch.uint8
    assert train.shape[1:] == test.shape[1:] == (3, 32, 32)
    assert len(train) > 5000 and len(test) > 1000
    # no test tile is a training tile
    train_keys = {bytes(tile.numpy()) for tile in train[::7]}
    assert not any(bytes(tile.numpy()) in train_keys for tile in test)
    assert abs(float(images.to_unit(test).mean()) - float(test.float().mean()) / 255) < 1e-6
