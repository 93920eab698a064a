"""AVQ, PVQ and RVQ under mixed precision: autocast, GradScaler and no float64 on the way.

The nearest-codeword searches run in full precision even inside ``torch.autocast``, so
the codes are exactly those of float32; training works with a low-precision input and a
GradScaler; training and codebook replacement never create float64 tensors.
"""


import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ

D = 64

# the configurations of the code-equality tests, with the scale of their N(0, 1) codebooks:
# a search in bfloat16 gets the codes of some vectors wrong (with the library's AVQ and
# PVQ searches run under autocast: 2 and 1 of 64, 108 and 120 of 4096 vectors; its RVQ
# search writes into float32 buffers, which autocast leaves alone)
SEARCH_CONFIGS = {
    "AVQ": (lambda: AVQ(3, 5, D, 8), 0.2),
    "PVQ": (lambda: PVQ(4, 7, D), 1.0),
    "RVQ": (lambda: RVQ(4, 7, D), 0.5),
}

# small quantizers for the training tests
M, BITS = 2, 3
K = 2**BITS
SMALL = {
    "AVQ": lambda **kw: AVQ(M, BITS, D, 4, **kw),
    "PVQ": lambda **kw: PVQ(M, BITS, D, **kw),
    "RVQ": lambda **kw: RVQ(M, BITS, D, **kw),
}


@pytest.fixture(params=sorted(SMALL))
def kind(request):
    return request.param


def random_codebooks(vq, scale=1.0):
    """vq with N(0, scale²) codebooks (returned for chaining)."""
    with torch.no_grad():
        vq.codebooks.normal_().mul_(scale)
    return vq


def search_quantizer(name, device="cpu"):
    factory, scale = SEARCH_CONFIGS[name]
    return random_codebooks(factory(), scale).to(device)


# --- the search is exact under autocast -------------------------------------------------


def assert_autocast_changes_nothing(vq, x, device_type, dtype):
    codes = vq.encode(x)
    out, _ = vq(x, train_mode=False)
    with torch.autocast(device_type, dtype=dtype):
        autocast_codes = vq.encode(x)
        autocast_out, _ = vq(x, train_mode=False)
    assert autocast_codes.dtype == torch.int64
    differing = int((autocast_codes != codes).any(dim=-1).sum())
    assert differing == 0, f"{differing} of {len(x)} vectors get other codes under autocast"
    assert autocast_out.dtype == torch.float32
    assert torch.equal(autocast_out, out)


@pytest.mark.parametrize("batch", [64, 4096])
@pytest.mark.parametrize("name", sorted(SEARCH_CONFIGS))
def test_cpu_bf16_autocast_gives_the_float32_codes(name, batch):
    vq = search_quantizer(name)
    x = torch.randn(batch, D)
    assert_autocast_changes_nothing(vq, x, "cpu", torch.bfloat16)


def test_bf16_search_would_differ():
    """The codes test can fail: a nearest-codeword search in bfloat16 picks other codes."""
    vq = search_quantizer("RVQ")
    x = torch.randn(4096, D)
    table = vq.codebooks.detach()[0]  # (K, D), the first stage
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products = x @ table.t()
    assert products.dtype == torch.bfloat16
    low_precision_codes = (table.pow(2).sum(1) - 2 * products.float()).argmin(dim=1)
    assert (low_precision_codes != vq.encode(x)[:, 0]).sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [64, 4096])
@pytest.mark.parametrize("name", sorted(SEARCH_CONFIGS))
def test_cuda_autocast_gives_the_float32_codes(name, batch, dtype):
    # TF32 matrix products would already differ from float32 without autocast
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        vq = search_quantizer(name, "cuda")
        x = torch.randn(batch, D, device="cuda")
        assert_autocast_changes_nothing(vq, x, "cuda", dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


# --- training under autocast ------------------------------------------------------------


def test_bf16_training_input_from_a_linear_layer(kind):
    torch.manual_seed(1)
    linear = nn.Linear(D, D)
    vq = random_codebooks(SMALL[kind](), 0.3)
    x = torch.randn(32, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = linear(x)
        out, usage = vq(hidden, train_mode=True)
    assert hidden.dtype == torch.bfloat16
    assert out.dtype == hidden.dtype and out.shape == hidden.shape
    assert usage.sum() > 0
    loss = (out.float() - x).pow(2).mean()
    loss.backward()
    for grad in (vq.codebooks.grad, linear.weight.grad):
        assert grad is not None
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert vq.codebooks.grad.dtype == torch.float32


def test_grad_scaler_training_step_updates_the_codebooks(kind):
    torch.manual_seed(2)
    linear = nn.Linear(D, D)
    vq = random_codebooks(SMALL[kind](), 0.3)
    optimizer = torch.optim.SGD([*linear.parameters(), *vq.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(32, D)
    before = vq.codebooks.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = vq(linear(x), train_mode=True)
        loss = (out.float() - x).pow(2).mean()
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    after = vq.codebooks.detach()
    assert torch.isfinite(after).all()
    assert not torch.equal(after, before)
    assert scaler.get_scale() == 2.0**16  # no inf/NaN gradient was found, scale unchanged


def test_data_initialisation_is_the_same_under_autocast(kind):
    samples = 2.0 + torch.randn(300, D)
    plain, autocast = SMALL[kind](), SMALL[kind]()
    plain.initialize_from_data(samples, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast.initialize_from_data(samples, generator=torch.Generator().manual_seed(4))
    assert autocast.codebooks.dtype == torch.float32
    assert torch.equal(autocast.codebooks, plain.codebooks)


# --- no float64 ---------------------------------------------------------------------------


class DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every tensor that any operation returns (and which op)."""

    def __init__(self):
        super().__init__()
        self.dtypes = {}  # dtype -> set of op names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.dtypes.setdefault(value.dtype, set()).add(str(func))
        return result


def test_training_and_replacement_create_no_float64(kind):
    vq = random_codebooks(SMALL[kind]())
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-3)
    x = torch.randn(16, D)
    out, _ = vq(x, train_mode=True)
    out.pow(2).sum().backward()
    optimizer.step()  # creates Adam's per-entry state, outside the recorder
    optimizer.zero_grad()
    vq.codebook_usage.zero_()

    recorder = DtypeRecorder()
    with recorder:
        for _ in range(2):  # 2 batches of 3 vectors use at most 6 of the K = 8 codewords
            out, _ = vq(torch.randn(3, D), train_mode=True)
            out.pow(2).sum().backward()
        encoded = vq.encode(x)
        decoded, _ = vq(x, train_mode=False)
        replaced = vq.replace_unused_codebooks(
            2, verbose=False, generator=torch.Generator().manual_seed(0), optimizer=optimizer)
    assert replaced.sum() > 0
    assert encoded.dtype == torch.int64 and decoded.dtype == torch.float32
    assert torch.float32 in recorder.dtypes  # the recorder saw the work
    assert torch.float64 not in recorder.dtypes, sorted(recorder.dtypes.get(torch.float64, ()))
