import math

import pytest
import torch
import torch.nn.functional as F
from l0_nn import L0Linear, SparseL0Linear

from .conftest import hard_concrete_prob_active


@pytest.mark.parametrize(
    ("granularity", "shape"),
    [("input", (7,)), ("output", (3,)), ("weight", (3, 7))],
)
def test_gate_shape_follows_granularity(granularity, shape):
    layer = L0Linear(7, 3, granularity=granularity)
    assert tuple(layer.gates.shape) == shape
    assert tuple(layer.gates().shape) == shape


def test_init_sparsity_is_the_exact_initial_probability_of_a_zero_gate():
    layer = L0Linear(50, 4, init_sparsity=0.3)
    assert torch.allclose(layer.gates.prob_zero(), torch.full((50,), 0.3), atol=1e-6)


def test_init_sparsity_matches_the_empirical_zero_frequency_of_training_samples():
    layer = L0Linear(4000, 1, init_sparsity=0.3, generator=torch.Generator().manual_seed(0))
    zeros = (layer.train().gates() == 0).float().mean().item()
    assert abs(zeros - 0.3) < 0.03  # 4000 Bernoulli(0.3): std ~0.007


def test_l0_penalty_equals_the_hand_computed_sum_of_active_probabilities():
    layer = L0Linear(6, 2, temperature=0.5)
    with torch.no_grad():
        layer.gates.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0]))
    expected = hard_concrete_prob_active(layer.gates.log_alpha.detach(), 0.5).sum()
    assert torch.allclose(layer.l0_penalty(), expected, atol=1e-6)


@pytest.mark.parametrize("granularity", ["input", "output", "weight"])
def test_l2_penalty_equals_a_loop_over_gate_groups(granularity):
    torch.manual_seed(0)
    layer = L0Linear(4, 3, granularity=granularity)
    with torch.no_grad():
        layer.gates.log_alpha.normal_()
    p = layer.prob_active().detach()
    w, b = layer.weight.detach(), layer.bias.detach()
    expected = 0.0
    if granularity == "input":
        for j in range(4):
            expected += p[j] * sum(w[i, j] ** 2 for i in range(3))
    elif granularity == "output":
        for i in range(3):
            expected += p[i] * (sum(w[i, j] ** 2 for j in range(4)) + b[i] ** 2)
    else:
        for i in range(3):
            for j in range(4):
                expected += p[i, j] * w[i, j] ** 2
    assert math.isclose(layer.l2_penalty().item(), float(expected), rel_tol=1e-5)


@pytest.mark.parametrize("granularity", ["input", "output", "weight"])
def test_eval_forward_equals_a_plain_linear_map_with_gated_weights(granularity):
    torch.manual_seed(1)
    layer = L0Linear(5, 4, granularity=granularity).eval()
    with torch.no_grad():
        layer.gates.log_alpha.normal_(0.0, 3.0)
    z = layer.deterministic_gates()
    x = torch.randn(6, 5)
    if granularity == "input":
        expected = (x * z) @ layer.weight.T + layer.bias
    elif granularity == "output":
        expected = (x @ layer.weight.T + layer.bias) * z
    else:
        expected = x @ (layer.weight * z).T + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_a_gated_off_output_neuron_outputs_exactly_zero_including_its_bias():
    layer = L0Linear(5, 4, granularity="output").eval()
    with torch.no_grad():
        layer.bias.fill_(3.0)
        layer.gates.log_alpha.copy_(torch.tensor([5.0, -10.0, 5.0, -10.0]))
    out = layer(torch.randn(8, 5))
    assert torch.equal(out[:, [1, 3]], torch.zeros(8, 2))
    assert bool((out[:, [0, 2]] != 0).all())


@pytest.mark.parametrize(
    ("granularity", "expected"),
    [("input", 2 * 3 + 3), ("output", 1 * (4 + 1)), ("weight", 5 + 3)],
)
def test_active_parameter_count_counts_the_weights_the_gates_keep(granularity, expected):
    layer = L0Linear(4, 3, granularity=granularity)
    with torch.no_grad():
        la = layer.gates.log_alpha
        la.fill_(-10.0)
        la.view(-1)[: {"input": 2, "output": 1, "weight": 5}[granularity]] = 10.0
    assert layer.parameter_count() == 15
    assert layer.active_parameter_count() == expected


def test_factory_kwargs_set_the_dtype_of_weights_and_gates():
    layer = L0Linear(3, 2, dtype=torch.float64)
    assert layer.weight.dtype == layer.gates.log_alpha.dtype == torch.float64
    assert layer(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


def test_to_moves_the_gates_with_the_weights():
    layer = L0Linear(3, 2).to(torch.float64)
    assert layer.gates.log_alpha.dtype == torch.float64
    assert layer.gates.temperature.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_factory_kwarg_puts_every_parameter_on_the_gpu():
    layer = L0Linear(3, 2, device="cuda")
    assert {p.device.type for p in layer.parameters()} == {"cuda"}
    assert layer(torch.randn(4, 3, device="cuda")).device.type == "cuda"


def test_a_seeded_generator_makes_initialisation_and_training_samples_bit_identical():
    outs = []
    for _ in range(2):
        layer = L0Linear(8, 4, generator=torch.Generator().manual_seed(3))
        outs.append((layer.weight.detach().clone(), layer(torch.ones(2, 8)).detach()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_state_dict_round_trip_restores_weights_gates_and_temperature():
    src = L0Linear(6, 3, granularity="output", temperature=0.4)
    with torch.no_grad():
        src.gates.log_alpha.normal_()
    dst = L0Linear(6, 3, granularity="output")
    dst.load_state_dict(src.state_dict())
    x = torch.randn(5, 6)
    assert torch.equal(src.eval()(x), dst.eval()(x))
    assert float(dst.gates.temperature) == pytest.approx(0.4)


def test_unknown_gate_name_raises_a_value_error_listing_available_gates():
    with pytest.raises(ValueError, match="hard_concrete"):
        L0Linear(3, 2, gate="no_such_gate")


def test_bad_granularity_raises_a_value_error_naming_the_choices():
    with pytest.raises(
        ValueError, match=r"granularity must be one of \['input', 'output', 'weight'\]"
    ):
        L0Linear(3, 2, granularity="channel")


@pytest.mark.parametrize(
    "value, bound",
    [(0.0, r"> 0\.0, got 0\.0"), (1.0, r"< 1\.0, got 1\.0"), (-0.2, r"> 0\.0, got -0\.2")],
)
def test_init_sparsity_outside_the_open_unit_interval_is_rejected(value, bound):
    with pytest.raises(ValueError, match=f"init_sparsity must be {bound}"):
        L0Linear(3, 2, init_sparsity=value)


def test_non_positive_sizes_are_rejected_with_the_argument_name():
    with pytest.raises(ValueError, match="out_features must be >= 1, got"):
        L0Linear(3, 0)


def test_gate_kwargs_may_not_override_layer_arguments():
    with pytest.raises(ValueError, match=r"gate_kwargs may not set \['init_mean'\]"):
        L0Linear(3, 2, gate_kwargs={"init_mean": 0.5})
    with pytest.raises(ValueError, match=r"gate_kwargs may not set \['init_prob_active'\]"):
        L0Linear(3, 2, gate_kwargs={"init_prob_active": 0.5})


def test_gate_kwargs_reach_the_gate_constructor():
    layer = L0Linear(3, 2, gate_kwargs={"stretch": 0.2})
    assert layer.gates.gamma == pytest.approx(-0.2)


def test_a_generator_on_another_device_type_is_rejected():
    with pytest.raises(ValueError, match="generator lives on cpu"):
        L0Linear(3, 2, device="meta", generator=torch.Generator())


def test_weights_receive_gradients_in_training_mode():
    layer = L0Linear(4, 2).train()
    F.mse_loss(layer(torch.randn(8, 4)), torch.zeros(8, 2)).backward()
    assert layer.weight.grad is not None and layer.gates.log_alpha.grad is not None


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
@pytest.mark.parametrize(
    "make", [lambda: L0Linear(3, 2, device="cuda"), lambda: SparseL0Linear(3, device="cuda")]
)
def test_a_cuda_device_without_cuda_is_refused_by_name(make):
    with pytest.raises(
        ValueError, match="device='cuda' but this torch build or machine has no CUDA"
    ):
        make()


def test_a_device_that_is_not_a_device_is_refused_by_name():
    with pytest.raises(ValueError, match="device must name a torch device such as 'cpu'"):
        L0Linear(3, 2, device="gpu")
