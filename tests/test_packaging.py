"""The package as users install it: the wheel's contents, and using it from elsewhere.

The wheel is built from a copy of the checkout (no build files left in it) and installed
into a new virtual environment that sees only this interpreter's dependencies (torch,
numpy, matplotlib) through a .pth file; everything is then imported and run from a
directory outside the checkout.
"""

import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11
pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TOP_LEVEL = PYPROJECT["tool"]["setuptools"]["py-modules"]
SMOKE = """
import additive_vq, product_vq, residual_vq, torch
from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ
from vq_vae import VQVAE
for vq in (AVQ(3, 4, 16, 4), PVQ(4, 4, 16), RVQ(4, 4, 16)):
    x = torch.randn(32, 16)
    out, usage = vq(x)
    out.sum().backward()
    assert vq.codebooks.grad is not None and usage.shape == (vq.num_stages, 16)
    assert vq.encode(x).shape == (32, vq.num_stages)
import stochastic_vq
assert (stochastic_vq.AVQ, stochastic_vq.PVQ, stochastic_vq.RVQ) == (AVQ, PVQ, RVQ)
from stochastic_vq_core.complexity import AVQ_Complexity
assert round(AVQ_Complexity(128, 32, 4, beam_width=8).wmops(), 5) == 0.82417
import shutil
expected = "native" if shutil.which("c++") or shutil.which("g++") else "torch"
assert AVQ(3, 4, 16, 4).search_backend == expected  # the kernel builds from the wheel
print(additive_vq.__file__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "output", "__pycache__", "*.egg-info", "build", "Results"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(source)], check=True, timeout=300)
    return next(dist.glob("stochastic_vq-*.whl"))


def installed_names(wheel: Path) -> set[str]:
    """The top-level modules and packages the wheel installs."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    return {top.removesuffix(".py") for top in tops if not top.endswith(".dist-info")}


def test_wheel_holds_the_library_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {name[:-3] for name in names if "/" not in name and name.endswith(".py")}
    assert modules == set(TOP_LEVEL)
    assert {"additive_vq", "product_vq", "residual_vq", "complexity_calculator"} <= modules
    package = {name for name in names if name.startswith(("stochastic_vq/",
                                                          "stochastic_vq_core/"))}
    assert {"stochastic_vq/__init__.py", "stochastic_vq/loop.py",
            "stochastic_vq/published_results.json", "stochastic_vq_core/quantizer.py",
            "stochastic_vq_core/complexity.py", "stochastic_vq_core/native/__init__.py",
            "stochastic_vq_core/native/beam_search.cpp"} <= package
    assert not any(name.startswith(("tests/", "benchmarks/", "Results/")) for name in names)
    metadata = next(name for name in names if name.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: torch>=" in text and "# Additive, product and residual VQ" in text


def test_no_installed_name_is_a_single_common_word(wheel):
    """Every top-level name the wheel installs, read from the wheel itself, is a compound
    of the project's own (``additive_vq``, ``stochastic_vq_core``, ...): no one-word name
    such as ``complexity`` or ``data``, which other projects on the package index use."""
    installed = installed_names(wheel)
    assert installed == set(TOP_LEVEL) | {"stochastic_vq", "stochastic_vq_core"}
    assert all("_" in name for name in installed), sorted(installed)
    assert "complexity" not in installed


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)],
                   check=True, timeout=120)
    python = environment / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True
                             ).stdout.strip()
    dependencies = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    (Path(purelib) / "dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*command):
        done = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run(python, "-c", SMOKE).strip().startswith(str(purelib))
    assert "--beam-width" in run(environment / "bin" / "train-additive-vq", "--help")
    assert "AVQ (beam width 8)" in run(environment / "bin" / "complexity-calculator")
    assert "RUN_DIR" in run(python, "-m", "plot_training_logs", "--help")
    assert "fig4" in run(environment / "bin" / "stochastic-vq-reproduce", "--help")
    run(environment / "bin" / "train-product-vq", "--steps", "20", "--dim", "8", "--stages",
        "2", "--bits", "2", "--eval-samples", "64", "--out", "run")
    assert sorted(p.name for p in (elsewhere / "run").iterdir()) == ["checkpoint.pt",
                                                                    "log.json"]
