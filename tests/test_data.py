"""stochastic_vq.data: .npy files, the seeded streams of a run and the experiments' data."""

import numpy as np
import pytest
import torch

from stochastic_vq import data
from stochastic_vq.config import ConfigError


def test_data_streams_are_a_function_of_seed_and_rank():
    def first_batch(seed, rank, rows=None):
        generator = torch.Generator().manual_seed(data.stream_seed(seed, rank, 0))
        return data.batch_sampler(rows, 4, 3, generator)()

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(0, 1))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))
    table = torch.arange(30.0).reshape(10, 3)
    rows = first_batch(0, 0, table)
    assert torch.equal(rows, first_batch(0, 0, table)) and (rows[:, 0] % 3 == 0).all()


def test_load_array_reads_integers_as_float32(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.int16).reshape(4, 3))
    array = data.load_array(str(tmp_path / "a.npy"))
    assert array.dtype == torch.float32 and array.shape == (4, 3) and array[3, 2] == 11
    assert data.npy_columns(str(tmp_path / "a.npy")) == 3


def test_load_array_errors_name_the_setting(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ConfigError, match=r"must hold an \(N, D\) array") as info:
        data.load_array(str(tmp_path / "bad.npy"), "eval_data")
    assert info.value.setting == "eval_data"


def test_training_arrays_must_match_data_dim():
    with pytest.raises(ConfigError, match="data_dim is 4 but data has 3 columns") as info:
        data.as_training_array(np.zeros((5, 3)), "data", 4, None)
    assert info.value.setting == "data_dim"
    with pytest.raises(ConfigError, match="finite"):
        data.as_training_array(np.full((5, 4), np.nan), "eval_data", 4, None)


def test_ar1_has_unit_variance_and_correlation_0_9():
    x = data.ar1(20000, 32, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (20000, 32)
    x = x.double()
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.03)
    corr = torch.corrcoef(x.t())  # (32, 32)
    for lag in (1, 2, 5):
        observed = corr.diagonal(lag).mean().item()
        assert observed == pytest.approx(0.9**lag, abs=0.01)


def test_gaussian_is_uncorrelated_standard_normal():
    x = data.gaussian(20000, 16, generator=torch.Generator().manual_seed(0)).double()
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.corrcoef(x.t()).diagonal(1).abs().max().item() < 0.05


def test_ar1_rejects_unstable_correlation():
    with pytest.raises(ValueError, match="rho"):
        data.ar1(3, 4, rho=1.0)


def test_patches_are_the_windows_of_the_image():
    image = torch.arange(6 * 7, dtype=torch.float64).reshape(6, 7)
    patches = data._patches(image, size=3, stride=2)  # rows 0, 2 x columns 0, 2, 4
    assert patches.shape == (6, 9)
    assert torch.equal(patches[0], image[:3, :3].flatten())
    assert torch.equal(patches[4], image[2:5, 2:5].flatten())


def _write(folder, name: str) -> str:
    """The path of a file a newcomer might pass as --data, written by its name
    (missing.npy: not written)."""
    path = folder / name
    if name == "vecs.csv":
        path.write_text("1.0,2.0\n3.0,4.0\n")
    elif name == "two.npz":
        np.savez(path, train=np.zeros((3, 2)), test=np.ones((2, 2)))
    elif name == "one.npz":
        np.savez(path, vectors=np.zeros((3, 2)))
    elif name == "objects.npy":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif name == "image.npy":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return str(path)


@pytest.mark.parametrize("name, message", [
    ("vecs.csv", "vecs.csv is not a .npy file; expected an (N, D) array saved with numpy.save, "
                 "found text; convert a CSV file with np.save('vecs.npy', "
                 "np.loadtxt('{path}', delimiter=',', ndmin=2))"),
    ("two.npz", "found a .npz archive (arrays: train, test); convert it with "
                "np.save('two.npy', np.load('{path}')['NAME'])"),
    ("one.npz", "np.save('one.npy', np.load('{path}')['vectors'])"),
    ("objects.npy", "objects.npy holds no array of numbers (Python objects"),
    ("image.npy", "image.npy is not a .npy file; expected an (N, D) array saved with "
                  "numpy.save, found another binary format"),
    ("missing.npy", "cannot read {path}: No such file or directory"),
])
def test_load_array_names_the_file_what_it_holds_and_the_conversion(name, message, tmp_path):
    path = _write(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        data.load_array(path, "data")
    assert message.format(path=path) in info.value.message
    assert "allow_pickle" not in info.value.message  # never advise the unsafe fix
    assert info.value.setting == "data"


def test_the_csv_conversion_the_error_gives_makes_a_loadable_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "vecs.csv")
    np.save("vecs.npy", np.loadtxt("vecs.csv", delimiter=",", ndmin=2))
    assert data.load_array("vecs.npy").tolist() == [[1.0, 2.0], [3.0, 4.0]]
