"""Temperature schedules, the scheduler and update_temperatures."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import (
    HardConcrete,
    TemperatureScheduler,
    gate_temperature,
    get_schedule,
    hookimpl,
    register_plugin,
    set_gate_temperature,
    unregister_plugin,
    update_temperatures,
)
from torch import nn

BUILTINS = ["constant", "linear", "exponential", "cosine"]
ANNEALING = ["linear", "exponential", "cosine"]


@pytest.mark.parametrize("schedule", BUILTINS)
def test_schedule_starts_exactly_at_initial_temperature(schedule):
    s = TemperatureScheduler(
        initial_temperature=1.0, final_temperature=0.1, total_epochs=50, schedule=schedule
    )
    assert s.get_temperature(0) == 1.0


@pytest.mark.parametrize("schedule", ANNEALING)
def test_schedule_ends_exactly_at_final_temperature_on_the_last_epoch(schedule):
    s = TemperatureScheduler(
        initial_temperature=1.0, final_temperature=0.1, total_epochs=50, schedule=schedule
    )
    assert s.get_temperature(49) == 0.1


@pytest.mark.parametrize("schedule", ANNEALING)
def test_schedule_is_constant_after_total_epochs(schedule):
    s = TemperatureScheduler(
        initial_temperature=2.0, final_temperature=0.3, total_epochs=10, schedule=schedule
    )
    assert [s.get_temperature(e) for e in (9, 10, 11, 1000)] == [0.3] * 4


@pytest.mark.parametrize("schedule", ANNEALING)
def test_cooling_schedule_decreases_strictly(schedule):
    s = TemperatureScheduler(
        initial_temperature=1.0, final_temperature=0.1, total_epochs=100, schedule=schedule
    )
    temps = [s.get_temperature(e) for e in range(100)]
    assert all(a > b for a, b in zip(temps, temps[1:], strict=False))


@pytest.mark.parametrize("schedule", ANNEALING)
def test_warming_schedule_increases_strictly(schedule):
    s = TemperatureScheduler(
        initial_temperature=0.1, final_temperature=1.0, total_epochs=30, schedule=schedule
    )
    temps = [s.get_temperature(e) for e in range(30)]
    assert all(a < b for a, b in zip(temps, temps[1:], strict=False))
    assert temps[0] == 0.1 and temps[-1] == 1.0


def test_constant_schedule_keeps_the_initial_temperature_until_the_end():
    s = TemperatureScheduler(
        initial_temperature=0.5, final_temperature=0.1, total_epochs=5, schedule="constant"
    )
    assert [s.get_temperature(e) for e in range(4)] == [0.5] * 4


def test_middle_values_match_the_closed_forms():
    mid = {  # epoch 50 of 101 is progress 0.5
        "linear": 1.0 + (0.1 - 1.0) * 0.5,
        "exponential": 1.0 * (0.1 / 1.0) ** 0.5,
        "cosine": 0.1 + (1.0 - 0.1) * 0.5 * (1 + math.cos(math.pi * 0.5)),
    }
    for name, value in mid.items():
        s = TemperatureScheduler(1.0, 0.1, total_epochs=101, schedule=name)
        assert s.get_temperature(50) == pytest.approx(value, rel=1e-12), name


def test_default_schedule_is_exponential_from_one_to_a_tenth_over_a_hundred_epochs():
    s = TemperatureScheduler()
    assert (s.initial_temperature, s.final_temperature, s.total_epochs, s.schedule) == (
        1.0,
        0.1,
        100,
        "exponential",
    )
    assert s.get_temperature(33) == pytest.approx(0.1 ** (33 / 99), rel=1e-12)


def test_a_one_epoch_schedule_is_already_at_the_final_temperature():
    assert TemperatureScheduler(1.0, 0.2, total_epochs=1).get_temperature(0) == 0.2


def test_a_callable_schedule_is_used_as_is():
    def halfway(progress, initial, final):
        return (initial + final) / 2

    s = TemperatureScheduler(1.0, 0.0 + 0.2, total_epochs=5, schedule=halfway)
    assert s.get_temperature(2) == pytest.approx(0.6)
    assert get_schedule(halfway) is halfway


def test_a_plugin_schedule_is_found_by_name():
    class StepPlugin:
        @hookimpl
        def l0_register_schedules(self, register):
            register("test-step", lambda p, a, b: a if p < 0.5 else b)

    name = register_plugin(StepPlugin(), name="test-step-plugin")
    try:
        s = TemperatureScheduler(1.0, 0.2, total_epochs=11, schedule="test-step")
        assert [s.get_temperature(e) for e in (0, 4, 5, 10)] == [1.0, 1.0, 0.2, 0.2]
    finally:
        unregister_plugin(name)


def test_an_unknown_schedule_name_lists_the_available_ones():
    with pytest.raises(
        ValueError, match=r"unknown schedule 'warp' for schedule; available: \[.*'cosine'"
    ):
        TemperatureScheduler(schedule="warp")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"initial_temperature": 0.0}, ValueError, r"initial_temperature must be > 0\.0, got 0\.0"),
        ({"final_temperature": -1.0}, ValueError, r"final_temperature must be > 0\.0, got -1\.0"),
        (
            {"final_temperature": float("inf")},
            ValueError,
            "final_temperature must be a finite number, got inf",
        ),
        ({"total_epochs": 0}, ValueError, "total_epochs must be >= 1, got 0"),
        ({"total_epochs": 10.0}, TypeError, r"total_epochs must be an int, got float \(10\.0\)"),
        ({"schedule": 3}, TypeError, "schedule must be a registered schedule name or a function"),
    ],
)
def test_scheduler_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TemperatureScheduler(**kwargs)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("initial_temp", "initial_temperature", 2.0), ("final_temp", "final_temperature", 0.2)],
)
def test_initial_temp_and_final_temp_are_deprecated_spellings(old, new, value):
    with pytest.warns(DeprecationWarning, match=f"pass {new}="):
        s = TemperatureScheduler(**{old: value}, total_epochs=10, schedule="linear")
    assert getattr(s, new) == value
    assert getattr(s, old) == value  # the l0 facade's 0.6.2 attribute name stays readable
    same = TemperatureScheduler(**{new: value}, total_epochs=10, schedule="linear")
    assert [s.get_temperature(e) for e in range(10)] == [same.get_temperature(e) for e in range(10)]


@pytest.mark.parametrize(
    ("old", "new"), [("initial_temp", "initial_temperature"), ("final_temp", "final_temperature")]
)
def test_an_old_and_a_new_temperature_keyword_together_are_rejected(old, new):
    with pytest.raises(TypeError, match=f"both {old}= and {new}="):
        TemperatureScheduler(**{old: 0.5, new: 0.5})


def test_negative_epoch_is_rejected():
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        TemperatureScheduler().get_temperature(-1)


def test_repr_shows_the_settings():
    assert repr(TemperatureScheduler(schedule="linear")) == (
        "TemperatureScheduler(initial_temperature=1.0, final_temperature=0.1, total_epochs=100, schedule='linear')"
    )


def test_update_temperatures_sets_every_gate_and_counts_them(float_temperature_gate):
    model = nn.ModuleDict(
        {
            "a": HardConcrete(3, temperature=1.0),
            "deep": nn.Sequential(nn.Linear(2, 2), HardConcrete(2, 2, temperature=1.0)),
            "custom": float_temperature_gate(4, temperature=1.0),
        }
    )
    assert update_temperatures(model, 0.25) == 3
    assert gate_temperature(model["a"]) == 0.25
    assert gate_temperature(model["deep"][1]) == 0.25
    assert model["custom"].temperature == 0.25


def test_update_temperatures_changes_the_sampled_distribution():
    gate = HardConcrete(1, temperature=1.0, init_std=0.0)
    before = gate.prob_active().item()
    update_temperatures(gate, 0.1)
    assert gate.temperature.item() == pytest.approx(0.1)
    assert gate.prob_active().item() != pytest.approx(before)


def test_update_temperatures_with_a_model_without_gates_sets_nothing():
    assert update_temperatures(nn.Linear(2, 2), 0.5) == 0


def test_set_gate_temperature_writes_into_a_tensor_buffer_without_set_temperature():
    class BufferGate(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("temperature", torch.tensor(1.0))

        def forward(self):
            return torch.ones(2)

        def l0_penalty(self):
            return torch.tensor(2.0)

        def prob_active(self):
            return torch.ones(2)

    gate = BufferGate()
    set_gate_temperature(gate, 0.3)
    assert gate.temperature.item() == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("temp", "problem"),
    [
        (0.0, r"must be > 0\.0, got 0\.0"),
        (-1.0, r"must be > 0\.0, got -1\.0"),
        (float("nan"), "must be a finite number"),
    ],
)
def test_set_gate_temperature_rejects_non_positive_values(temp, problem):
    with pytest.raises(ValueError, match=f"temperature {problem}"):
        set_gate_temperature(HardConcrete(2), temp)


def test_scheduler_with_update_temperatures_anneals_the_model_as_in_a_training_loop():
    model = nn.ModuleList([HardConcrete(4), HardConcrete(2)])
    scheduler = TemperatureScheduler(
        initial_temperature=1.0, final_temperature=0.1, total_epochs=10
    )
    seen = []
    for epoch in range(10):
        update_temperatures(model, scheduler.get_temperature(epoch))
        seen.append(gate_temperature(model[0]))
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.1)
    assert gate_temperature(model[1]) == pytest.approx(0.1)


def test_update_temperatures_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        update_temperatures([HardConcrete(2)], 0.5)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 0.0, float("inf"), "hot"])
def test_a_schedule_returning_a_bad_temperature_is_refused_naming_it_and_the_epoch(bad):
    def broken(progress, initial, final):
        return bad if progress > 0.4 else initial

    scheduler = TemperatureScheduler(1.0, 0.1, total_epochs=11, schedule=broken)
    assert scheduler.get_temperature(4) == 1.0
    with pytest.raises(
        ValueError, match=r"temperature schedule <function .*broken.*> returned .* at epoch 5"
    ):
        scheduler.get_temperature(5)


def test_a_registered_schedule_returning_nan_is_refused_naming_it():
    from l0_core import hookimpl, register_plugin, unregister_plugin

    class Plugin:
        @hookimpl
        def l0_register_schedules(self, register):
            register("nan_after_start", lambda p, a, b: float("nan"))

    name = register_plugin(Plugin(), name="test-nan-schedule")
    try:
        scheduler = TemperatureScheduler(schedule="nan_after_start", total_epochs=10)
        with pytest.raises(
            ValueError, match=r"temperature schedule 'nan_after_start' returned nan at epoch 3"
        ):
            scheduler.get_temperature(3)
    finally:
        unregister_plugin(name)
