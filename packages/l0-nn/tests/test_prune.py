import numpy as np
import pytest
import torch
from l0_nn import L0Conv2d, L0DepthwiseConv2d, L0Linear, SparseL0Linear, SparseMLP, prune_model

from .conftest import randomise_gates


def _expected_weight_mask(layer):
    """Which weights survive, from the layer's deterministic gates, built by hand per granularity."""
    keep = (layer.deterministic_gates() > 0).float()
    if isinstance(layer, L0Linear):
        if layer.granularity == "input":
            return keep.expand_as(layer.weight), torch.ones_like(layer.bias)
        if layer.granularity == "output":
            return keep[:, None].expand_as(layer.weight), keep
        return keep, torch.ones_like(layer.bias)
    if layer.granularity == "channel":
        return keep.view(-1, 1, 1, 1).expand_as(layer.weight), keep
    return keep, torch.ones_like(layer.bias)


@pytest.mark.parametrize(
    "make",
    [
        lambda: L0Linear(6, 5, granularity="input"),
        lambda: L0Linear(6, 5, granularity="output"),
        lambda: L0Linear(6, 5, granularity="weight"),
        lambda: L0Conv2d(3, 6, 3, granularity="channel"),
        lambda: L0Conv2d(3, 6, 3, granularity="weight"),
        lambda: L0DepthwiseConv2d(6, 3),
    ],
    ids=[
        "linear-input",
        "linear-output",
        "linear-weight",
        "conv-channel",
        "conv-weight",
        "depthwise",
    ],
)
def test_prune_model_zeroes_exactly_the_removed_groups_of_every_layer_type(make):
    layer = make()
    with torch.no_grad():  # every third group removed
        la = layer.gates.log_alpha.view(-1)
        la.copy_(torch.where(torch.arange(la.numel()) % 3 == 0, -10.0, 10.0))
    w_before, b_before = layer.weight.detach().clone(), layer.bias.detach().clone()
    w_mask, b_mask = _expected_weight_mask(layer)
    assert 0 < w_mask.sum() < w_mask.numel()  # the case is non-trivial
    prune_model(layer)
    assert torch.equal(layer.weight.detach(), w_before * w_mask)
    assert torch.equal(layer.bias.detach(), b_before * b_mask)


def test_prune_model_reaches_layers_nested_in_a_sparse_mlp_and_keeps_its_eval_output():
    model = SparseMLP(8, [6, 5], 3)
    randomise_gates(model, seed=2)
    x = torch.randn(4, 8)
    before = model.eval()(x)
    prune_model(model)
    assert torch.allclose(model(x), before, atol=1e-6)
    removed_inputs = model.fc2.deterministic_gates() == 0
    assert bool(removed_inputs.any())
    assert float(model.fc2.weight.detach()[:, removed_inputs].abs().sum()) == 0.0


def test_prune_model_zeroes_removed_coefficients_of_a_sparse_l0_linear():
    model = SparseL0Linear(4, seed=0)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.gates.log_alpha.copy_(torch.tensor([5.0, -10.0, 5.0, -10.0]))
    prune_model(model)
    assert model.weight.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_threshold_removes_groups_whose_active_probability_is_at_most_the_threshold():
    layer = L0Linear(4, 2, granularity="output")
    with torch.no_grad():
        layer.gates.log_alpha.copy_(torch.tensor([0.0, 3.0]))  # P(active) ~0.83 and ~0.99
    p = layer.prob_active().detach()
    prune_model(layer, threshold=float((p[0] + p[1]) / 2))
    assert float(layer.weight.detach()[0].abs().sum()) == 0.0
    assert float(layer.weight.detach()[1].abs().sum()) > 0.0


def test_prune_model_returns_the_same_model_in_eval_mode():
    model = SparseMLP(4, 3, 2).train()
    assert prune_model(model) is model and not model.training


@pytest.mark.parametrize("threshold", [1.0, -0.1])
def test_a_threshold_outside_zero_to_one_is_rejected(threshold):
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        prune_model(L0Linear(3, 2), threshold=threshold)


def test_prune_model_rejects_something_that_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prune_model(np.zeros(3))
