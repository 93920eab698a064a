"""The quantizers work under torch.compile: one graph, same results as eager."""

import pytest
import torch
import torch._dynamo

from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ

FACTORIES = {
    "AVQ": lambda: AVQ(3, 3, 16, 4, check_finite=False),
    "PVQ": lambda: PVQ(2, 3, 16, check_finite=False),
    "RVQ": lambda: RVQ(3, 3, 16, check_finite=False),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
def test_training_forward_is_one_graph(name):
    module = FACTORIES[name]()
    explanation = torch._dynamo.explain(module)(torch.randn(32, 16), True)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
def test_compiled_matches_eager(name):
    eager = FACTORIES[name]()
    compiled_module = FACTORIES[name]()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend="aot_eager")
    x = torch.randn(4, 8, 16)

    def run(module):
        torch.manual_seed(1)
        out, usage = module(x, True)
        out.pow(2).sum().backward()
        return out.detach(), usage, module(x, False)[0]

    eager_out, eager_usage, eager_hard = run(eager)
    compiled_out, compiled_usage, compiled_hard = run(compiled)
    assert torch.allclose(eager_out, compiled_out, atol=1e-6)
    assert torch.equal(eager_usage, compiled_usage)
    assert torch.equal(eager_hard, compiled_hard)
    assert torch.allclose(eager.codebooks.grad, compiled_module.codebooks.grad, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
def test_default_options_compile_to_one_graph(name):
    """check_finite=True, the default, keeps its check in the graph as an assert."""
    module = FACTORIES[name]()
    module.check_finite = True
    explanation = torch._dynamo.explain(module)(torch.randn(32, 16), True)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(module, backend="aot_eager")
    with pytest.raises(RuntimeError, match="input_data contains NaN or Inf"):
        compiled(torch.full((32, 16), float("nan")), True)


@pytest.mark.slow
def test_compiled_dropout_and_mask_match_eager():
    """The groups of quantizer dropout and a mask run eagerly inside a compiled model
    (one graph break), with the eager results."""
    eager = RVQ(3, 3, 16, quantizer_dropout=1.0)
    compiled_module = RVQ(3, 3, 16, quantizer_dropout=1.0)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend="aot_eager")
    x = torch.randn(6, 5, 16)
    mask = torch.rand(6, 5) < 0.7
    results = []
    for module in (eager, compiled):
        torch.manual_seed(1)
        out, usage, codes = module(x, True, mask=mask, return_codes=True)
        results.append((out, usage, codes))
    assert (results[0][2] == -1).any()
    for first, second in zip(*results):
        assert torch.equal(first, second)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(compiled_module)(x, True, mask=mask)
    assert explanation.graph_break_count == 1
