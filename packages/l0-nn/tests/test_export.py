import pytest
import torch
from l0_nn import (
    IndexSelect,
    L0Conv1d,
    L0Conv2d,
    L0DepthwiseConv2d,
    L0Layer,
    L0Linear,
    SparseMLP,
    export_pruned,
)
from torch import nn

from .conftest import randomise_gates

PLAIN = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.MaxPool2d,
         nn.AvgPool2d, nn.BatchNorm2d, IndexSelect)  # fmt: skip


def _conv_stack(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        L0Conv2d(3, 8, 3, padding=1, generator=g),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        L0DepthwiseConv2d(8, 3, padding=1, depth_multiplier=2, generator=g),
        nn.Sigmoid(),  # turns removed (zero) channels into constants 0.5
        nn.MaxPool2d(2),
        L0Conv2d(16, 6, 3, padding=1, generator=g),
        nn.ReLU(),
        nn.AvgPool2d(2, padding=1),
        nn.Flatten(),
        L0Linear(6 * 3 * 3, 20, generator=g),
        nn.Tanh(),
        L0Linear(20, 10, granularity="output", generator=g),
        nn.Sigmoid(),
        nn.Linear(10, 5),
    )
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
    randomise_gates(model, seed=seed)
    return model


def test_exported_mlp_outputs_equal_the_gated_model_in_eval_mode():
    model = SparseMLP(64, [300, 100], 10, generator=torch.Generator().manual_seed(0))
    randomise_gates(model)
    small = export_pruned(model)
    x = torch.randn(32, 64)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_exported_mlp_drops_removed_neurons_from_both_adjacent_layers():
    model = SparseMLP(10, [8, 6], 3)
    with torch.no_grad():
        for layer in model.gated_layers():
            layer.gates.log_alpha.fill_(10.0)
        model.fc2.gates.log_alpha[[1, 4, 5]] = -10.0  # hidden neurons 1, 4, 5 of fc1
        model.fc1.gates.log_alpha[[0, 9]] = -10.0  # input features 0 and 9
    small = export_pruned(model)
    assert (small.fc1.in_features, small.fc1.out_features) == (8, 5)
    assert (small.fc2.in_features, small.fc2.out_features) == (5, 6)
    assert small.select_fc1.index.tolist() == list(range(1, 9))


def test_exported_conv_stack_outputs_equal_the_gated_model_in_eval_mode():
    model = _conv_stack()
    x = torch.randn(6, 3, 8, 8)
    small = export_pruned(model, example_input=x[:1])
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_exported_conv_stack_is_made_of_plain_modules_and_is_smaller():
    small = export_pruned(_conv_stack(), example_input=torch.zeros(1, 3, 8, 8))
    assert all(isinstance(m, PLAIN) for m in small.children())
    report = small.export_report
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before


def test_removed_channels_of_a_conv_shrink_the_next_conv_and_the_linear_after_flatten():
    model = nn.Sequential(
        L0Conv2d(1, 4, 3, padding=1), nn.ReLU(), L0Conv2d(4, 3, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 5 * 5, 2),
    )  # fmt: skip
    with torch.no_grad():
        model[0].gates.log_alpha.copy_(torch.tensor([9.0, -9.0, 9.0, -9.0]))
        model[2].gates.log_alpha.copy_(torch.tensor([9.0, 9.0, -9.0]))
    small = export_pruned(model, example_input=torch.zeros(1, 1, 5, 5))
    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels) == (2, 2, 2)
    assert small[5].in_features == 2 * 25


def test_report_counts_parameters_and_flops_like_a_hand_computation():
    model = SparseMLP(10, [8, 6], 3)
    with torch.no_grad():
        for layer in model.gated_layers():
            layer.gates.log_alpha.fill_(10.0)
        model.fc2.gates.log_alpha[:3] = -10.0  # fc1 keeps 5 of 8 outputs
        model.fc3.gates.log_alpha[:2] = -10.0  # fc2 keeps 4 of 6 outputs
    report = export_pruned(model).export_report
    assert report.params_before == (10 * 8 + 8) + (8 * 6 + 6) + (6 * 3 + 3)
    assert report.params_after == (10 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3)
    assert report.flops_before == 2 * (10 * 8 + 8 * 6 + 6 * 3)
    assert report.flops_after == 2 * (10 * 5 + 5 * 4 + 4 * 3)
    # Each layer on its own (no upstream accounting) keeps more than the export.
    assert report.gated_active_params == (10 * 8 + 8) + (5 * 6 + 6) + (4 * 3 + 3)


def test_report_flops_of_a_convolution_use_the_output_size():
    conv = L0Conv2d(2, 4, 3, stride=2, init_sparsity=0.01)
    report = export_pruned(conv, example_input=torch.zeros(1, 2, 9, 9)).export_report
    assert report.flops_before == 2 * (4 * 2 * 3 * 3) * (4 * 4)


def test_constants_from_removed_neurons_are_folded_into_the_next_bias():
    model = nn.Sequential(L0Linear(4, 3, granularity="output"), nn.Sigmoid(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].gates.log_alpha.copy_(torch.tensor([9.0, -9.0, 9.0]))
    small = export_pruned(model)
    assert small[2].in_features == 2
    x = torch.randn(5, 4)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-6)


def test_exported_sparse_mlp_still_accepts_unflattened_images():
    model = SparseMLP(64, 32, 10)
    randomise_gates(model)
    small = model.export()
    x = torch.randn(3, 8, 8)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_export_leaves_the_model_and_its_training_flag_unchanged():
    model = SparseMLP(6, 5, 2)
    randomise_gates(model)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_pruned(model)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_layer_norm_keeps_every_feature_around_it_and_the_export_stays_exact():
    model = nn.Sequential(L0Linear(6, 5, granularity="output"), nn.LayerNorm(5), L0Linear(5, 2))
    randomise_gates(model, seed=4)
    small = export_pruned(model)
    x = torch.randn(4, 6)
    assert small[0].out_features == 5
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_export_of_a_depthwise_layer_keeps_whole_channel_groups():
    model = nn.Sequential(L0Conv2d(2, 4, 1), L0DepthwiseConv2d(4, 3, padding=1, depth_multiplier=2))
    with torch.no_grad():
        model[0].gates.log_alpha.fill_(9.0)
        model[1].gates.log_alpha.copy_(torch.tensor([9.0, 9.0, -9.0, -9.0, 9.0, -9.0, -9.0, -9.0]))
    x = torch.randn(2, 2, 4, 4)
    small = export_pruned(model, example_input=x)
    assert small[1].groups == small[1].in_channels
    assert torch.allclose(small(x), model.eval()(x), atol=1e-6)


def test_gated_layers_inside_a_custom_forward_are_exported_by_tracing():
    # Until the torch.fx export this raised "follows nn.Sequential chains"; see
    # test_export_residual.py for residual models and for the errors that remain.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = L0Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    model = nn.Sequential(Net())
    small = export_pruned(model)
    x = torch.randn(4, 3)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-6)


def test_a_conv_model_without_example_input_raises_a_value_error():
    with pytest.raises(ValueError, match="needs example_input"):
        export_pruned(nn.Sequential(L0Conv2d(1, 2, 3)))


def test_an_example_input_of_the_wrong_shape_raises_a_value_error():
    with pytest.raises(ValueError, match="failed at '0'"):
        export_pruned(nn.Sequential(L0Conv2d(1, 2, 3)), example_input=torch.zeros(1, 3, 5, 5))


@pytest.mark.parametrize(
    ("make", "x_shape", "plain_type"),
    [
        (lambda: L0Linear(6, 4, granularity="input"), (3, 6), nn.Linear),
        (lambda: L0Linear(6, 4, granularity="output"), (3, 6), nn.Linear),
        (lambda: L0Linear(6, 4, granularity="weight"), (3, 6), nn.Linear),
        (lambda: L0Conv2d(3, 5, 3, padding=1, stride=2), (2, 3, 8, 8), nn.Conv2d),
        (lambda: L0DepthwiseConv2d(4, 3, depth_multiplier=2, padding=1), (2, 4, 6, 6), nn.Conv2d),
        (lambda: L0Conv1d(3, 5, 3, dilation=2), (2, 3, 12), nn.Conv1d),
    ],
)
def test_each_gated_layer_knows_its_plain_equivalent(make, x_shape, plain_type):
    torch.manual_seed(0)
    layer = make().eval()
    with torch.no_grad():
        layer.gates.log_alpha.normal_(0.0, 4.0)  # some gates exactly 0, some 1, some between
    plain = layer.to_plain()
    assert type(plain) is plain_type and not plain.training
    assert not any(isinstance(m, L0Layer) for m in plain.modules())
    x = torch.randn(*x_shape)
    torch.testing.assert_close(plain(x), layer(x))
    w, _ = layer.effective_weight_and_bias()
    assert torch.equal(plain.weight, w)
    assert layer.weight.data_ptr() != plain.weight.data_ptr()  # a copy: the layer is untouched
