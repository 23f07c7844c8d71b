"""The Gate and GatedLayer protocols and the helpers built on them."""

from __future__ import annotations

import torch
from l0_core import (
    Gate,
    GatedLayer,
    HardConcrete,
    deterministic_gates,
    gate_temperature,
    is_gate,
    is_gated_layer,
    iter_gates,
)
from torch import nn


def test_hard_concrete_implements_the_gate_protocol_but_is_not_a_gated_layer():
    gate = HardConcrete(3)
    assert isinstance(gate, Gate) and is_gate(gate)
    assert not is_gated_layer(gate)


def test_a_layer_with_the_four_methods_is_a_gated_layer(row_gated_linear):
    layer = row_gated_linear(2, 2)
    assert isinstance(layer, GatedLayer) and is_gated_layer(layer)
    assert not is_gate(layer)


def test_a_plain_module_or_a_non_module_is_neither():
    assert not is_gate(nn.Linear(2, 2)) and not is_gated_layer(nn.Linear(2, 2))

    class Duck:
        temperature = 1.0

        def forward(self):
            return torch.ones(1)

        def l0_penalty(self):
            return torch.ones(())

        def prob_active(self):
            return torch.ones(1)

    assert isinstance(Duck(), Gate) and not is_gate(Duck())


def test_a_custom_gate_with_a_float_temperature_counts_as_a_gate(float_temperature_gate):
    gate = float_temperature_gate(3, temperature=0.4)
    assert is_gate(gate) and gate_temperature(gate) == 0.4


def test_iter_gates_does_not_descend_into_a_gate(float_temperature_gate):
    outer = float_temperature_gate(2)
    outer.inner = HardConcrete(2)
    model = nn.Sequential(outer, HardConcrete(3))
    assert [name for name, _ in iter_gates(model)] == ["0", "1"]


def test_deterministic_gates_uses_eval_mode_and_restores_the_training_flag(float_temperature_gate):
    gate = float_temperature_gate(3)
    gate.train()
    values = deterministic_gates(gate)
    assert gate.training and not values.requires_grad
    assert torch.allclose(values, torch.full((3,), 0.5))


def test_deterministic_gates_of_hard_concrete_equals_its_eval_output():
    gate = HardConcrete(
        6, init_prob_active=0.5, init_std=2.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(deterministic_gates(gate), gate.eval()().detach())


def test_protocol_checks_see_module_buffers_that_static_lookup_cannot():
    # Python >= 3.12 checks runtime protocols with inspect.getattr_static, which
    # does not see a temperature *buffer*; the Gate protocol must still match.
    import inspect

    from l0_core import Gate, HardConcrete

    gate = HardConcrete(3)
    assert inspect.getattr_static(gate, "temperature", None) is None
    assert isinstance(gate, Gate)

    class NoTemperature(torch.nn.Module):
        def forward(self):
            return torch.ones(1)

        def l0_penalty(self):
            return torch.ones(())

        def prob_active(self):
            return torch.ones(1)

    assert not isinstance(NoTemperature(), Gate)
    with_buffer = NoTemperature()
    with_buffer.register_buffer("temperature", torch.tensor(0.5))
    assert isinstance(with_buffer, Gate)
