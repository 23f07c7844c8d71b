import math

import torch
import torch.nn.functional as F
from l0_core import hookimpl, register_plugin, unregister_plugin
from l0_nn import L0Linear, export_pruned, layer_sparsity_stats
from torch import nn


class SigmoidGate(nn.Module):
    """A minimal third-party gate: P(active) = sigmoid(logit); hard 0/1 in eval."""

    def __init__(
        self, *shape, temperature=1.0, init_prob_active=0.5, device=None, dtype=None, generator=None
    ):
        super().__init__()
        self.shape = torch.Size(shape)
        self.temperature = temperature
        logit = math.log(init_prob_active / (1.0 - init_prob_active))
        self.logit = nn.Parameter(torch.full(shape, logit, device=device, dtype=dtype))

    def prob_active(self):
        return torch.sigmoid(self.logit)

    def l0_penalty(self):
        return self.prob_active().sum()

    def forward(self):
        p = self.prob_active()
        return p if self.training else (p > 0.5).to(p.dtype)


class _Plugin:
    @hookimpl
    def l0_register_gates(self, register):
        register("test_sigmoid_gate", SigmoidGate)


def test_a_plugin_gate_type_is_used_by_name_in_l0_linear():
    name = register_plugin(_Plugin(), name="l0-nn-test-sigmoid-gate")
    try:
        layer = L0Linear(5, 3, gate="test_sigmoid_gate", init_sparsity=0.2)
        assert isinstance(layer.gates, SigmoidGate)
        assert torch.allclose(layer.prob_active(), torch.full((5,), 0.8))
        with torch.no_grad():
            layer.gates.logit[[1, 3]] = -4.0
        x = torch.randn(4, 5)
        keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
        assert torch.allclose(layer.eval()(x), F.linear(x, layer.weight * keep, layer.bias))
        assert layer.active_parameter_count() == 3 * 3 + 3
        assert layer_sparsity_stats(nn.Sequential(layer))["0"]["gate_type"] == "test_sigmoid_gate"
        small = export_pruned(layer)
        assert small.layer.in_features == 3
        assert torch.allclose(small(x), layer(x), atol=1e-6)
    finally:
        unregister_plugin(name)
