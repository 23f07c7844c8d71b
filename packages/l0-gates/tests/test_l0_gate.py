"""L0Gate: the generic gate vector, its protocol and its errors."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import HardConcrete, compute_l0_penalty, is_gate, update_temperatures
from l0_gates import HybridGate, L0Gate


def test_l0_gate_implements_the_core_gate_protocol_so_core_penalties_find_it():
    gate = L0Gate(50, init_prob_active=0.3, seed=0)
    model = torch.nn.ModuleDict({"selector": gate, "head": torch.nn.Linear(3, 1)})
    assert is_gate(gate)
    assert torch.allclose(compute_l0_penalty(model), gate.prob_active().sum())


def test_penalty_is_the_sum_of_prob_active_computed_from_log_alpha():
    gate = L0Gate(40, temperature=0.3, init_prob_active=0.7, seed=1)
    hc = gate.gates
    expected = torch.sigmoid(hc.log_alpha - 0.3 * torch.log(torch.tensor(0.1 / 1.1))).sum()
    assert torch.allclose(gate.get_penalty(), expected)


def test_training_mode_gates_are_random_samples_and_eval_gates_are_deterministic():
    gate = L0Gate(200, init_prob_active=0.5, seed=0)
    a, b = gate.get_gates(), gate.get_gates()
    assert not torch.equal(a, b)
    gate.eval()
    assert torch.equal(gate.get_gates(), gate.get_gates())


def test_apply_gates_multiplies_along_the_requested_dimension():
    gate = L0Gate(4, init_prob_active=0.5, seed=3).eval()
    x = torch.arange(12.0).reshape(3, 4)
    gates = gate.get_gates()
    assert torch.equal(gate.apply_gates(x, dim=1), x * gates[None, :])
    assert torch.equal(gate.apply_gates(x.t(), dim=0), x.t() * gates[:, None])


def test_apply_with_a_tensor_gates_it_and_with_a_function_keeps_module_apply():
    gate = L0Gate(3, init_prob_active=0.5, seed=0).eval()
    x = torch.ones(3, 2)
    assert torch.equal(gate.apply(x, dim=0), gate.apply_gates(x, dim=0))
    seen = []
    assert gate.apply(lambda m: seen.append(type(m).__name__)) is gate
    assert seen == ["HardConcrete", "L0Gate"]


def test_active_indices_are_the_items_whose_deterministic_gate_exceeds_the_threshold():
    gate = L0Gate(6, init_prob_active=0.5, seed=0)
    with torch.no_grad():
        gate.gates.log_alpha.copy_(torch.tensor([5.0, -5.0, 0.5, -0.2, 3.0, -9.0]))
    det = gate.gates.deterministic()
    assert gate.get_active_indices().tolist() == (det > 0).nonzero().reshape(-1).tolist()
    assert (
        gate.get_active_indices(threshold=0.9).tolist()
        == (det > 0.9).nonzero().reshape(-1).tolist()
    )


def test_temperature_is_read_and_set_through_the_underlying_gate_and_core_schedules():
    gate = L0Gate(5, temperature=0.3, seed=0)
    assert gate.temperature == pytest.approx(0.3)
    update_temperatures(torch.nn.Sequential(gate), 0.05)
    assert gate.gates.temperature.item() == pytest.approx(0.05)


def test_equal_seeds_give_identical_gates_and_samples():
    a, b = L0Gate(100, seed=7), L0Gate(100, seed=7)
    assert torch.equal(a.gates.log_alpha, b.gates.log_alpha)
    assert torch.equal(a.get_gates(), b.get_gates())


def test_gates_are_built_by_registered_name_including_plugin_gates(logistic_gate_name):
    gate = L0Gate(10, gate=logistic_gate_name, init_prob_active=0.2, seed=0)
    assert type(gate.gates).__name__ == "LogisticGate"
    assert gate.get_penalty().item() == pytest.approx(2.0, rel=1e-5)
    assert isinstance(L0Gate(3, seed=0).gates, HardConcrete)


def test_an_unknown_gate_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown gate 'nope'.*hard_concrete"):
        L0Gate(3, gate="nope")


@pytest.mark.parametrize("size", [0, -3])
def test_a_non_positive_size_is_rejected(size):
    with pytest.raises(
        ValueError, match=rf"size must be >= 1, got {size}; pass e.g. L0Gate\(size=100\)"
    ):
        L0Gate(size)


def test_a_non_integer_size_is_rejected():
    with pytest.raises(TypeError, match="size must be an int"):
        L0Gate(2.5)


@pytest.mark.parametrize(
    "temperature, problem",
    [
        (0.0, "must be > 0.0, got 0.0"),
        (-1.0, "must be > 0.0, got -1.0"),
        (float("nan"), "must be a finite number"),
    ],
)
def test_a_non_positive_temperature_is_rejected(temperature, problem):
    with pytest.raises(ValueError, match=f"temperature {problem}"):
        L0Gate(3, temperature=temperature)


@pytest.mark.parametrize(
    "init_prob_active, bound", [(0.0, "> 0.0"), (1.0, "< 1.0"), (1.5, "< 1.0")]
)
def test_init_prob_active_outside_the_open_unit_interval_is_rejected(init_prob_active, bound):
    with pytest.raises(
        ValueError, match=f"init_prob_active must be {bound}, got {init_prob_active}"
    ):
        L0Gate(3, init_prob_active=init_prob_active)


def test_a_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1; pass e.g. seed=0"):
        L0Gate(3, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        L0Gate(3, seed="0")


def test_apply_gates_rejects_a_tensor_of_the_wrong_size():
    with pytest.raises(ValueError, match="x has size 5 along dim 0, but the gate has 4 items"):
        L0Gate(4, seed=0).apply_gates(torch.ones(5, 4), dim=0)


def test_apply_gates_rejects_a_non_tensor():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        L0Gate(4, seed=0).apply_gates([1, 2, 3, 4])


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_a_cuda_device_without_cuda_is_refused_by_name():
    with pytest.raises(
        ValueError, match="device='cuda' but this torch build or machine has no CUDA"
    ):
        L0Gate(3, device="cuda")
    with pytest.raises(
        ValueError, match="device='cuda' but this torch build or machine has no CUDA"
    ):
        HybridGate(100, 0.0, 1.0, target_items=10, device="cuda")


def test_init_prob_active_is_the_initial_p_active_of_the_gate():
    gate = L0Gate(6, temperature=0.4, init_prob_active=0.85, seed=0)
    assert gate.init_prob_active == 0.85
    # closed form P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)) at the mean logit
    la = gate.gates.log_alpha.double().mean().item()
    p = 1.0 / (1.0 + math.exp(-(la - 0.4 * math.log(0.1 / 1.1))))
    assert p == pytest.approx(0.85, abs=2e-3)  # N(0, 0.01) jitter on 6 logits


def test_init_mean_keeps_062_meaning_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"L0Gate\(init_mean=\.\.\.\) is deprecated.*"):
        gate = L0Gate(2000, temperature=0.3, init_mean=0.7, seed=0)
    logit = math.log(0.7 / 0.3)
    want = 1.0 / (1.0 + math.exp(-(logit - 0.3 * math.log(0.1 / 1.1))))
    assert gate.init_prob_active == pytest.approx(want, rel=1e-12)
    # 0.6.2: logits = logit(init_mean); l0-gates adds N(0, 0.01) jitter
    assert gate.gates.log_alpha.mean().item() == pytest.approx(logit, abs=1e-3)


def test_init_mean_and_init_prob_active_together_are_rejected():
    with pytest.raises(TypeError, match=r"L0Gate\(\) got both init_prob_active and init_mean"):
        L0Gate(3, init_prob_active=0.5, init_mean=0.5)


def test_bad_init_mean_is_rejected_naming_it():
    with pytest.raises(ValueError, match=r"init_mean must be < 1\.0, got 1\.0; it is l0-python"):
        L0Gate(3, init_mean=1.0)
