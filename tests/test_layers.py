"""The layers' imports point one way: entry points -> stochastic_vq -> the quantizers and
vq_vae -> stochastic_vq_core, with plain import statements (docs/contributing.md)."""

import ast

import pytest

from helpers import ROOT

QUANTIZERS = {"additive_vq", "product_vq", "residual_vq", "vq_vae"}
ENTRY_POINTS = {"train_additive_vq", "train_product_vq", "train_residual_vq", "reproduce",
                "complexity_calculator", "plot_training_logs", "complexity"}


def project_imports(path) -> set[str]:
    """The top-level names of the project's modules that ``path`` imports."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & (QUANTIZERS | ENTRY_POINTS | {"stochastic_vq", "stochastic_vq_core"})


@pytest.mark.parametrize("path", sorted((ROOT / "stochastic_vq_core").glob("*.py")),
                         ids=lambda path: path.name)
def test_the_core_imports_only_itself(path):
    assert project_imports(path) <= {"stochastic_vq_core"}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_the_quantizers_import_only_the_core(name):
    assert project_imports(ROOT / f"{name}.py") <= {"stochastic_vq_core"}


@pytest.mark.parametrize("path", sorted((ROOT / "stochastic_vq").glob("*.py")),
                         ids=lambda path: path.name)
def test_the_upper_storey_imports_no_entry_point(path):
    assert not project_imports(path) & ENTRY_POINTS
    assert "import_module" not in path.read_text()


def test_the_package_gives_the_quantizer_classes():
    import stochastic_vq
    from additive_vq import AVQ
    from product_vq import PVQ
    from residual_vq import RVQ
    from vq_vae import VQVAE

    assert (stochastic_vq.AVQ, stochastic_vq.PVQ, stochastic_vq.RVQ, stochastic_vq.VQVAE) == (
        AVQ, PVQ, RVQ, VQVAE)
