import pytest
import torch
from l0_nn import L0Linear


@pytest.mark.slow
def test_torch_compile_of_a_layer_forward_runs_on_cpu_and_matches_eager():
    layer = L0Linear(8, 4, granularity="output").eval()
    with torch.no_grad():
        layer.gates.log_alpha[:2] = -10.0
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 8)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)
