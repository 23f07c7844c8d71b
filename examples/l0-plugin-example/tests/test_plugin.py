"""The example plugin, used the way a third party would: by name, through l0."""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from l0_core import (
    TemperatureScheduler,
    available,
    compute_l0_penalty,
    get_gate_class,
    is_gate,
    list_plugins,
    lookup,
    make_gate,
    update_temperatures,
)
from l0_plugin_example import StraightThroughGate, plateau_cosine
from torch import nn


def test_the_gate_is_discovered_through_the_entry_point_by_name():
    assert "straight_through" in available("gates")
    assert lookup("gates", "straight_through") is StraightThroughGate
    assert get_gate_class("straight_through") is StraightThroughGate


def test_the_schedule_is_discovered_through_the_entry_point_by_name():
    assert "plateau_cosine" in available("schedules")
    assert lookup("schedules", "plateau_cosine") is plateau_cosine


def test_list_plugins_shows_the_distribution_its_version_and_what_it_registered():
    info = {p.name: p for p in list_plugins()}["straight_through"]
    assert info.distribution == "l0-plugin-example"
    assert info.version == importlib.metadata.version("l0-plugin-example")
    assert info.registered == {"gates": ["straight_through"], "schedules": ["plateau_cosine"]}


def test_the_l0_command_lists_the_plugin():
    script = Path(sys.executable).with_name("l0")
    out = subprocess.run(
        [str(script), "plugins"], capture_output=True, text=True, check=True
    ).stdout
    assert "straight_through (l0-plugin-example" in out
    assert "gates: straight_through" in out and "schedules: plateau_cosine" in out


def test_make_gate_builds_it_with_the_l0_constructor_convention():
    gen = torch.Generator().manual_seed(0)
    gate = make_gate(
        "straight_through",
        6,
        2,
        temperature=0.3,
        init_prob_active=0.7,
        dtype=torch.float64,
        generator=gen,
    )
    assert isinstance(gate, StraightThroughGate) and is_gate(gate)
    assert gate.logits.shape == (6, 2) and gate.logits.dtype == torch.float64
    assert gate.temperature.item() == pytest.approx(0.3)


def test_temperature_scheduler_uses_the_plugin_schedule_by_name():
    s = TemperatureScheduler(
        initial_temperature=1.0, final_temperature=0.1, total_epochs=11, schedule="plateau_cosine"
    )
    temps = [s.get_temperature(e) for e in range(11)]
    assert temps[:3] == [1.0, 1.0, 1.0]  # progress 0, 0.1, 0.2: the plateau
    assert temps[-1] == 0.1
    assert all(a > b for a, b in zip(temps[2:], temps[3:], strict=False))
    phase = (0.5 - 0.2) / 0.8
    assert temps[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * phase)))


def test_the_schedule_rejects_progress_outside_zero_one():
    with pytest.raises(ValueError, match=r"progress must lie in \[0, 1\]"):
        plateau_cosine(1.5, 1.0, 0.1)


def test_training_samples_are_exactly_zero_or_one_with_the_analytic_frequency():
    gen = torch.Generator().manual_seed(1)
    gate = StraightThroughGate(50_000, 3, init_prob_active=0.5, init_std=0.0, generator=gen)
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([-1.0, 0.0, 2.0]).expand(50_000, 3))
    z = gate.train()().detach()
    assert set(z.unique().tolist()) == {0.0, 1.0}
    for col, logit in enumerate([-1.0, 0.0, 2.0]):
        p = 1 / (1 + math.exp(-logit))
        se = math.sqrt(p * (1 - p) / 50_000)
        assert abs(z[:, col].mean().item() - p) < 5 * se


def test_l0_penalty_is_the_exact_expected_number_of_open_gates():
    gate = StraightThroughGate(4, init_std=0.0, dtype=torch.float64)
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64))
    expected = sum(1 / (1 + math.exp(-v)) for v in [-2.0, 0.0, 1.0, 3.0])
    assert gate.l0_penalty().item() == pytest.approx(expected, abs=1e-12)
    assert compute_l0_penalty(nn.ModuleList([gate, nn.Linear(2, 2)])).item() == pytest.approx(
        expected
    )


def test_straight_through_gradient_is_the_gradient_of_the_relaxed_gate():
    gate = StraightThroughGate(
        5,
        temperature=0.5,
        init_std=1.0,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(2),
    )
    gate.generator.manual_seed(3)
    gate().sum().backward()
    grad = gate.logits.grad.clone()
    # same noise again, relaxed value only
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(5, generator=gen, dtype=torch.float64).clamp(1e-16, 1 - 1e-16)
    logits = gate.logits.detach().clone().requires_grad_(True)
    torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / 0.5).sum().backward()
    assert torch.allclose(grad, logits.grad, atol=1e-12)


def test_eval_gate_is_exactly_zero_iff_prob_active_is_at_most_one_half():
    gate = StraightThroughGate(100, init_std=2.0, generator=torch.Generator().manual_seed(4))
    det = gate.eval()()
    assert torch.equal(det == 0, gate.prob_active() <= 0.5)
    assert set(det.unique().tolist()) <= {0.0, 1.0}


def test_update_temperatures_reaches_the_plugin_gate():
    model = nn.Sequential(nn.Linear(3, 3), make_gate("straight_through", 3))
    assert update_temperatures(model, 0.05) == 1
    assert model[1].temperature.item() == pytest.approx(0.05)


def test_state_dict_round_trip_keeps_logits_and_temperature():
    gate = StraightThroughGate(7, init_std=1.0, temperature=0.2)
    other = StraightThroughGate(7)
    other.load_state_dict(gate.state_dict())
    assert torch.equal(other.logits, gate.logits) and other.temperature.item() == pytest.approx(0.2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_samples_are_finite(dtype):
    gate = StraightThroughGate(
        1000, temperature=0.1, init_std=3.0, dtype=dtype, generator=torch.Generator().manual_seed(5)
    )
    z = gate()
    z.sum().backward()
    assert torch.isfinite(z).all() and torch.isfinite(gate.logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_prob_active": 1.0}, "init_prob_active must lie strictly between 0 and 1"),
        ({"temperature": 0.0}, "temperature must be a positive number"),
        ({"init_std": -1.0}, "init_std must be >= 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StraightThroughGate(3, **kwargs)


def test_a_gate_without_a_shape_is_rejected():
    with pytest.raises(ValueError, match="shape must be one or more positive integers"):
        StraightThroughGate()


def test_a_gated_training_loop_learns_to_close_useless_gates():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :2].sum(1, keepdim=True)  # only the first two features matter
    gate = make_gate(
        "straight_through", 8, init_prob_active=0.9, generator=torch.Generator().manual_seed(0)
    )
    head = nn.Linear(8, 1)
    opt = torch.optim.Adam([*gate.parameters(), *head.parameters()], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = (head(x * gate()) - y).pow(2).mean() + 0.02 * gate.l0_penalty()
        loss.backward()
        opt.step()
    assert gate.eval()()[:2].tolist() == [1.0, 1.0]
    assert gate.eval()()[2:].sum().item() <= 2
