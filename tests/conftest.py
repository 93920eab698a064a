"""Shared test setup: the checkout's root (the quantizers, the packages ``stochastic_vq``
and ``stochastic_vq_core``) and the tests' helpers are importable."""

import os
import sys
from pathlib import Path

# AVQ's Triton search is tested on the CPU in Triton's interpreter, which has to be chosen
# before triton is first imported; the library runs that search only where
# STOCHASTIC_VQ_TRITON=1 (tests/test_triton_search.py sets it).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
for path in (ROOT, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# The tests use tiny tensors: intra-op threads only add synchronisation cost, which on a
# busy 2-core machine makes every small op ~100x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch random state."""
    torch.manual_seed(0)


@pytest.fixture(params=["AVQ", "PVQ", "RVQ"])
def kind(request):
    """Each quantizer class in turn, by name (see helpers.FACTORIES)."""
    return request.param
