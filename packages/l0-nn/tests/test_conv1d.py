import pytest
import torch
import torch.nn.functional as F
from l0_core import is_gated_layer
from l0_nn import L0Conv1d, L0Linear, export_pruned, prune_model
from torch import fx, nn

from .conftest import randomise_gates


def test_channel_gates_have_one_gate_per_output_channel_and_weight_gates_one_per_weight():
    assert tuple(L0Conv1d(3, 8, 3).gates.shape) == (8,)
    assert tuple(L0Conv1d(4, 6, 5, groups=2, granularity="weight").gates.shape) == (6, 2, 5)
    assert is_gated_layer(L0Conv1d(2, 2, 1))


def test_eval_output_equals_a_plain_conv1d_with_the_gated_weights():
    conv = L0Conv1d(
        3, 4, 3, stride=2, padding=1, dilation=1, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        conv.bias.fill_(2.0)
        conv.gates.log_alpha.copy_(torch.tensor([-10.0, 5.0, -10.0, 5.0]))
    conv.eval()
    x = torch.randn(2, 3, 11)
    out = conv(x)
    w, b = conv.effective_weight_and_bias()
    assert torch.allclose(out, F.conv1d(x, w, b, stride=2, padding=1))
    assert torch.equal(out[:, [0, 2]], torch.zeros(2, 2, 6))  # removed: filter and bias


def test_same_padding_keeps_the_length_and_counts_match_the_equivalent_conv1d():
    conv = L0Conv1d(2, 4, 3, padding="same", init_sparsity=0.01)
    assert conv(torch.randn(1, 2, 9)).shape == (1, 4, 9)
    assert conv.parameter_count() == sum(p.numel() for p in nn.Conv1d(2, 4, 3).parameters())
    assert conv.active_parameter_count() == conv.parameter_count()


def test_gates_receive_gradients_in_training_mode():
    conv = L0Conv1d(2, 3, 3, generator=torch.Generator().manual_seed(1)).train()
    loss = conv(torch.randn(4, 2, 8)).square().mean() + 0.1 * conv.l0_penalty() + conv.l2_penalty()
    loss.backward()
    assert conv.gates.log_alpha.grad is not None and conv.weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kernel_size": (3, 3)}, ValueError, "kernel_size must be an int >= 1 or a 1-tuple"),
        ({"kernel_size": 3, "groups": 3}, ValueError, "groups=3 must divide"),
        ({"kernel_size": 3, "padding": "full"}, ValueError, "padding must be one of"),
        ({"kernel_size": 3, "stride": 2, "padding": "same"}, ValueError, "needs stride=1"),
        ({"kernel_size": 3, "granularity": "input"}, ValueError, "granularity must be one of"),
    ],
)
def test_bad_arguments_raise_errors_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        L0Conv1d(2, 4, **kwargs)


def test_prune_model_zeroes_removed_filters_and_biases():
    conv = L0Conv1d(1, 4, 3)
    with torch.no_grad():
        conv.gates.log_alpha.copy_(torch.tensor([-10.0, 9.0, -10.0, 9.0]))
    prune_model(conv)
    assert conv.weight[[0, 2]].abs().sum().item() == 0.0
    assert conv.bias[[0, 2]].abs().sum().item() == 0.0


def test_a_conv1d_chain_exports_to_smaller_plain_conv1d_layers_exactly():
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(
        L0Conv1d(3, 8, 3, padding=1, generator=g), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        L0Conv1d(8, 6, 3, padding=1, generator=g), nn.ReLU(), nn.Flatten(),
        L0Linear(6 * 5, 4, generator=g),
    )  # fmt: skip
    with torch.no_grad():
        model[0].gates.log_alpha.fill_(9.0)
        model[0].gates.log_alpha[[1, 6]] = -9.0
        model[4].gates.log_alpha.fill_(9.0)
        model[4].gates.log_alpha[[0]] = -9.0
        model[7].gates.log_alpha.fill_(9.0)
    x = torch.randn(5, 3, 10)
    small = export_pruned(model, example_input=x[:1])
    assert isinstance(small, nn.Sequential)
    assert isinstance(small[0], nn.Conv1d) and isinstance(small[4], nn.Conv1d)
    assert (small[0].out_channels, small[1].num_features, small[4].in_channels) == (6, 6, 6)
    assert (small[4].out_channels, small[7].in_features) == (5, 5 * 5)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    report = small.export_report
    assert report.flops_before == 2 * (8 * 3 * 3 * 10 + 6 * 8 * 3 * 5 + 30 * 4)
    assert report.params_after == (6 * 3 * 3 + 6) + 2 * 6 + (5 * 6 * 3 + 5) + (25 * 4 + 4)


class TemporalBlock(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.conv1 = L0Conv1d(6, 10, 3, padding=1, generator=g)
        self.conv2 = L0Conv1d(10, 6, 3, padding=1, generator=g)
        self.head = L0Linear(6, 2, generator=g)

    def forward(self, x):
        y = x + self.conv2(F.relu(self.conv1(x)))
        return self.head(F.relu(y).mean(-1))


def test_a_residual_conv1d_block_exports_through_torch_fx_exactly():
    model = TemporalBlock(torch.Generator().manual_seed(3))
    randomise_gates(model, seed=3)
    x = torch.randn(4, 6, 12)
    small = export_pruned(model, example_input=x[:1])
    assert isinstance(small, fx.GraphModule)
    assert isinstance(small.conv1, nn.Conv1d)
    kept = int((model.conv1.deterministic_gates() > 0).sum())
    assert small.conv1.out_channels == small.conv2.in_channels == kept
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
