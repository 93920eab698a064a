"""AVQ's Triton search (stochastic_vq_core.triton_search) against the plain-torch one, run
on the CPU in Triton's interpreter: the same codes, the opt-in and the first-use check.
Its speed on a GPU is not measured here."""

import os

import pytest
import torch

pytest.importorskip("triton")

import additive_vq  # noqa: E402
from additive_vq import AVQ, beam_search_torch, cross_table  # noqa: E402
from helpers import search_tables  # noqa: E402
from stochastic_vq_core import native, triton_search  # noqa: E402


@pytest.fixture
def interpreted(monkeypatch):
    """The Triton search switched on, interpreted on the CPU (conftest chose the
    interpreter before triton was imported), with no native search."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter was not chosen before triton was imported")
    monkeypatch.setenv("STOCHASTIC_VQ_TRITON", "1")
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(triton_search, "_checked", {})


CONFIGURATIONS = [(1, 3, 4), (2, 1, 5), (2, 2, 3), (3, 2, 4), (3, 5, 8), (4, 2, 16),
                  (4, 4, 16), (5, 3, 6)]  # (M, bits, beam): fewer sets than beams, too


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_codes_as_the_torch_search(interpreted, dtype):
    generator = torch.Generator().manual_seed(0)
    for stages, bits, beam in CONFIGURATIONS:
        base, cross = search_tables(stages, bits, 32, dtype, generator, rows=6)
        ours = triton_search.beam_search(base, cross, stages, beam, beam_search_torch)
        assert torch.equal(ours, beam_search_torch(base, cross, stages, beam)), \
            (stages, bits, beam, dtype)


@pytest.mark.slow
def test_same_codes_with_long_codebooks_and_wide_beams(interpreted):
    generator = torch.Generator().manual_seed(1)
    for stages, bits, beam in [(4, 8, 16), (3, 5, 32)]:
        base, cross = search_tables(stages, bits, 32, torch.float32, generator, rows=4)
        ours = triton_search.beam_search(base, cross, stages, beam, beam_search_torch)
        assert torch.equal(ours, beam_search_torch(base, cross, stages, beam)), \
            (stages, bits, beam)


def test_avq_uses_it_where_switched_on_and_says_so(interpreted, monkeypatch):
    vq = AVQ(3, 3, 8, 4, check_finite=False)
    x = torch.randn(20, 8)
    x[3] = float("nan")  # non-finite input is clamped as for the torch search
    assert vq.search_backend == "triton" and "search='triton'" in repr(vq)
    ours = vq.encode(x)
    monkeypatch.setenv("STOCHASTIC_VQ_TRITON", "0")
    assert vq.search_backend == "torch"
    assert torch.equal(ours, vq.encode(x))


def test_off_unless_switched_on(monkeypatch):
    monkeypatch.delenv("STOCHASTIC_VQ_TRITON", raising=False)
    assert not triton_search.enabled(torch.device("cuda"))
    monkeypatch.setenv("STOCHASTIC_VQ_TRITON", "1")
    assert triton_search.enabled(torch.device("cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_search.enabled(torch.device("cpu"))  # CPUs only interpreted


@pytest.mark.parametrize("failure", ["other codes", "no compiler"])
def test_a_failed_first_use_check_leaves_the_search_to_torch(interpreted, monkeypatch,
                                                             failure):
    def launch(base, cross, stages, beam):
        if failure == "no compiler":
            raise RuntimeError("cannot compile")
        return torch.zeros(len(base), stages, dtype=torch.long)

    monkeypatch.setattr(triton_search, "_launch", launch)
    base, cross = search_tables(3, 3, 32, torch.float32, torch.Generator().manual_seed(2), rows=70)
    with pytest.warns(RuntimeWarning, match="Triton AVQ search"):
        assert triton_search.beam_search(base, cross, 3, 4, beam_search_torch) is None
    assert triton_search.beam_search(base, cross, 3, 4, beam_search_torch) is None  # once
    codewords = torch.randn(16, 32)
    norms, cross = cross_table(codewords, 2)
    x = torch.randn(5, 32)
    with pytest.warns(RuntimeWarning, match="Triton AVQ search"):  # a new configuration
        codes = additive_vq.beam_search(x, codewords, norms, cross, 2, 4)
    base = torch.addmm(norms, x, codewords.t(), alpha=-2.0)
    assert torch.equal(codes, beam_search_torch(base, cross, 2, 4))
