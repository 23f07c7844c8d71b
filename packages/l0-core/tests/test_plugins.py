"""The plugin system: in-process and entry-point plugins, warnings, lookup, listing."""

from __future__ import annotations

import importlib.metadata
import re
import types
import warnings

import pytest
import torch
from l0_core import (
    HardConcrete,
    L0PluginWarning,
    TemperatureScheduler,
    available,
    get_gate_class,
    get_plugin_manager,
    hookimpl,
    list_plugins,
    lookup,
    make_gate,
    register_plugin,
    unregister_plugin,
)
from l0_core.plugins import (
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    PROJECT_NAME,
    add_builtin_plugin,
)
from torch import nn


class SigmoidGate(nn.Module):
    """A small deterministic gate type used as a plugin gate in these tests."""

    def __init__(
        self, *shape, temperature=0.5, init_prob_active=0.5, device=None, dtype=None, generator=None
    ):
        super().__init__()
        logit = torch.logit(torch.tensor(init_prob_active, dtype=torch.float64)).item()
        self.logits = nn.Parameter(torch.full(shape, logit, device=device, dtype=dtype))
        self.register_buffer("temperature", torch.tensor(temperature, device=device, dtype=dtype))

    def forward(self):
        return torch.sigmoid(self.logits / self.temperature)

    def prob_active(self):
        return torch.sigmoid(self.logits)

    def l0_penalty(self):
        return self.prob_active().sum()


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A module object whose attributes are the given hook implementations."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def gates_hook(*entries):
    def l0_register_gates(register):
        for name, obj in entries:
            register(name, obj)

    return l0_register_gates


def schedules_hook(*entries):
    def l0_register_schedules(register):
        for name, obj in entries:
            register(name, obj)

    return l0_register_schedules


def half(progress, initial, final):
    return initial + (final - initial) * min(1.0, 2 * progress)


# -- plugins registered in-process ----------------------------------------------------------


def test_in_process_plugin_adds_a_gate_and_a_schedule_until_unregistered():
    class Plugin:
        @hookimpl
        def l0_register_gates(self, register):
            register("test-sigmoid", SigmoidGate)

        @hookimpl
        def l0_register_schedules(self, register):
            register("test-half", half)

    name = register_plugin(Plugin(), name="test-plugin")
    try:
        assert name == "test-plugin"
        assert "test-sigmoid" in available("gates") and "test-half" in available("schedules")
        gate = make_gate("test-sigmoid", 3, 2, init_prob_active=0.8, dtype=torch.float64)
        assert isinstance(gate, SigmoidGate) and gate().shape == (3, 2)
        assert gate.l0_penalty().item() == pytest.approx(6 * 0.8)
        s = TemperatureScheduler(1.0, 0.5, total_epochs=5, schedule="test-half")
        assert s.get_temperature(1) == pytest.approx(half(0.25, 1.0, 0.5))
    finally:
        unregister_plugin(name)
    assert "test-sigmoid" not in available("gates")
    assert "test-half" not in available("schedules")


def test_register_plugin_uses_a_canonical_name_when_none_is_given():
    class Plugin:
        @hookimpl
        def l0_register_schedules(self, register):
            register("test-canonical", half)

    plugin = Plugin()
    name = register_plugin(plugin)
    try:
        assert isinstance(name, str) and name
        assert "test-canonical" in available("schedules")
    finally:
        unregister_plugin(plugin)
    assert "test-canonical" not in available("schedules")


def test_registering_two_plugins_under_one_name_is_an_error():
    class Plugin:
        @hookimpl
        def l0_register_schedules(self, register):
            pass

    name = register_plugin(Plugin(), name="test-twice")
    try:
        with pytest.raises(ValueError, match="a plugin named 'test-twice' is already registered"):
            register_plugin(Plugin(), name="test-twice")
    finally:
        unregister_plugin(name)


def test_unregistering_an_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="no plugin named 'nope' is registered"):
        unregister_plugin("nope")


def test_l0_register_gates_hook_makes_a_gate_available_by_name():
    name = register_plugin(
        plugin_module("gp", l0_register_gates=gates_hook(("test-g", SigmoidGate)))
    )
    try:
        assert get_gate_class("test-g") is SigmoidGate
        assert lookup("gates", "test-g") is SigmoidGate
    finally:
        unregister_plugin(name)


def test_l0_register_schedules_hook_makes_a_schedule_available_by_name():
    name = register_plugin(
        plugin_module("sp", l0_register_schedules=schedules_hook(("test-s", half)))
    )
    try:
        assert lookup("schedules", "test-s") is half
    finally:
        unregister_plugin(name)


def test_l0_register_losses_hook_makes_a_loss_available_by_name():
    def abs_loss(estimate, target):
        return (estimate - target).abs()

    def l0_register_losses(register):
        register("test-abs", abs_loss)

    name = register_plugin(plugin_module("lp", l0_register_losses=l0_register_losses))
    try:
        assert "test-abs" in available("losses")
        loss = lookup("losses", "test-abs")
        assert loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])).tolist() == [1.0, 1.0]
    finally:
        unregister_plugin(name)


def test_l0_calibration_log_hook_receives_the_event_dict():
    events = []

    def l0_calibration_log(event):
        events.append(event)

    name = register_plugin(plugin_module("log", l0_calibration_log=l0_calibration_log))
    try:
        get_plugin_manager().hook.l0_calibration_log(event={"epoch": 3, "n_active": 10})
        assert events == [{"epoch": 3, "n_active": 10}]
    finally:
        unregister_plugin(name)


def test_builtins_are_registered_through_the_hooks_by_l0_core_builtins():
    info = {p.name: p for p in list_plugins()}["l0_core.builtins"]
    assert info.registered["gates"] == ["hard_concrete"]
    assert sorted(info.registered["schedules"]) == ["constant", "cosine", "exponential", "linear"]
    assert info.distribution == "l0-core"
    assert info.version == importlib.metadata.version("l0-core")
    assert lookup("gates", "hard_concrete") is HardConcrete


def test_plugin_manager_is_the_l0_project():
    assert get_plugin_manager().project_name == PROJECT_NAME == "l0"
    assert ENTRY_POINT_GROUP == "l0"


# -- warnings: duplicates, unknown hooks, failing hooks, bad names ------------------------


def test_a_duplicate_gate_name_warns_naming_both_plugins_and_keeps_the_first():
    name = register_plugin(
        plugin_module("dup", l0_register_gates=gates_hook(("hard_concrete", SigmoidGate))),
        name="test-dup",
    )
    try:
        with pytest.warns(
            L0PluginWarning,
            match=r"'test-dup' registered gate 'hard_concrete', "
            r"already registered by 'l0_core.builtins'",
        ):
            assert lookup("gates", "hard_concrete") is HardConcrete
    finally:
        unregister_plugin(name)


def test_a_duplicate_schedule_name_between_two_plugins_warns_and_keeps_the_earlier_one():
    def other(progress, initial, final):
        return final

    a = register_plugin(
        plugin_module("a", l0_register_schedules=schedules_hook(("test-x", half))),
        name="test-first",
    )
    b = register_plugin(
        plugin_module("b", l0_register_schedules=schedules_hook(("test-x", other))),
        name="test-second",
    )
    try:
        with pytest.warns(L0PluginWarning, match="'test-second' registered schedule 'test-x'"):
            assert lookup("schedules", "test-x") is half
    finally:
        unregister_plugin(b)
        unregister_plugin(a)


def test_an_unknown_hook_warns_and_the_plugin_is_rejected():
    def l0_register_widgets(register):
        pass

    with pytest.warns(
        L0PluginWarning,
        match=r"'test-unknown' implements unknown hook\(s\) "
        r"\['l0_register_widgets'\]",
    ):
        with pytest.raises(ValueError, match="plugin 'test-unknown' was rejected"):
            register_plugin(
                plugin_module("u", l0_register_widgets=l0_register_widgets), name="test-unknown"
            )
    assert "test-unknown" not in [p.name for p in list_plugins()]


def test_a_hook_that_raises_warns_and_keeps_what_it_registered_before():
    def l0_register_schedules(register):
        register("test-before", half)
        raise RuntimeError("boom")

    name = register_plugin(
        plugin_module("r", l0_register_schedules=l0_register_schedules), name="test-raises"
    )
    try:
        with pytest.warns(
            L0PluginWarning,
            match=r"'test-raises' failed in l0_register_schedules: "
            r"RuntimeError: boom",
        ):
            names = available("schedules")
        assert "test-before" in names and "linear" in names
    finally:
        unregister_plugin(name)


def test_an_invalid_registered_name_warns_and_is_skipped():
    name = register_plugin(
        plugin_module("n", l0_register_schedules=schedules_hook(("", half))), name="test-bad-name"
    )
    try:
        with pytest.warns(
            L0PluginWarning, match="'test-bad-name' registered a schedule with an invalid name ''"
        ):
            assert "" not in available("schedules")
    finally:
        unregister_plugin(name)


# -- lookup ---------------------------------------------------------------------------------


def test_an_unknown_name_raises_listing_the_available_names():
    with pytest.raises(
        ValueError,
        match=r"unknown gate 'magic' for gate; available: "
        r"\[.*'hard_concrete'.*\]\. Install or register a plugin",
    ):
        make_gate("magic", 3)


def test_lookup_error_names_the_users_argument():
    with pytest.raises(ValueError, match=r"unknown schedule 'x' for anneal; available: \["):
        lookup("schedules", "x", argument="anneal")


def test_an_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match=r"kind must be one of \['gates', 'losses', 'schedules'\]"):
        available("widgets")


def test_make_gate_rejects_a_class_that_is_not_a_gate():
    with pytest.raises(TypeError, match="does not implement the l0_core.Gate protocol"):
        make_gate(nn.Linear, 2, 2)


def test_make_gate_passes_the_constructor_convention_through():
    gen = torch.Generator().manual_seed(0)
    gate = make_gate(
        "hard_concrete",
        4,
        3,
        temperature=0.3,
        init_prob_active=0.9,
        dtype=torch.float64,
        generator=gen,
    )
    assert isinstance(gate, HardConcrete) and gate.shape == (4, 3)
    assert gate.temperature.item() == pytest.approx(0.3) and gate.log_alpha.dtype == torch.float64


class LegacyGate(SigmoidGate):
    """A gate written for the old contract: the open probability is called ``init_mean``."""

    def __init__(self, *shape, temperature=0.5, init_mean=0.5, dtype=None):
        super().__init__(*shape, temperature=temperature, init_prob_active=init_mean, dtype=dtype)


def test_make_gate_passes_init_prob_active_as_init_mean_to_a_gate_of_the_old_contract():
    with pytest.warns(
        DeprecationWarning, match=r"takes init_mean, not init_prob_active.*Rename the constructor"
    ):
        gate = make_gate(LegacyGate, 5, init_prob_active=0.8, dtype=torch.float64)
    want = torch.full((5,), 0.8, dtype=torch.float64)
    assert isinstance(gate, LegacyGate) and torch.allclose(gate.prob_active(), want)


def test_make_gate_passes_init_prob_active_unchanged_to_gates_that_take_it_or_kwargs():
    class KwargsGate(SigmoidGate):
        def __init__(self, *shape, **kw):
            super().__init__(*shape, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        a = make_gate(SigmoidGate, 2, init_prob_active=0.3, dtype=torch.float64)
        b = make_gate(KwargsGate, 2, init_prob_active=0.3, dtype=torch.float64)
    for g in (a, b):
        assert torch.allclose(g.prob_active(), torch.full((2,), 0.3, dtype=torch.float64))


def test_get_gate_class_returns_a_class_unchanged():
    assert get_gate_class(SigmoidGate) is SigmoidGate


# -- entry points -------------------------------------------------------------------------


def test_an_entry_point_plugin_is_loaded_listed_and_usable_by_name(fake_entry_points):
    module = plugin_module(
        "ep_plugin",
        l0_register_gates=gates_hook(("test-ep-gate", SigmoidGate)),
        l0_register_schedules=schedules_hook(("test-ep-half", half)),
    )
    fake_entry_points.add("ep-plugin", lambda: module, "ep-dist", "1.2.3")
    assert isinstance(make_gate("test-ep-gate", 5), SigmoidGate)
    assert TemperatureScheduler(schedule="test-ep-half").get_temperature(0) == 1.0
    info = {p.name: p for p in list_plugins()}["ep-plugin"]
    assert (info.distribution, info.version) == ("ep-dist", "1.2.3")
    assert info.registered == {"gates": ["test-ep-gate"], "schedules": ["test-ep-half"]}
    assert fake_entry_points.calls == ["l0"]


def test_a_plugin_that_fails_to_import_only_warns_and_the_others_still_load(fake_entry_points):
    def broken():
        raise ImportError("No module named 'missing_dependency'")

    good = plugin_module("good", l0_register_schedules=schedules_hook(("test-good", half)))
    fake_entry_points.add("broken-plugin", broken)
    fake_entry_points.add("good-plugin", lambda: good)
    with pytest.warns(
        L0PluginWarning,
        match=r"l0 plugin 'broken-plugin' \(fake_module_broken-plugin:"
        r"plugin\) failed to import and was skipped: ImportError: No module named",
    ):
        names = available("schedules")
    assert "test-good" in names and "exponential" in names
    plugin_names = [p.name for p in list_plugins()]
    assert "good-plugin" in plugin_names and "broken-plugin" not in plugin_names


def test_an_entry_point_with_an_unknown_hook_only_warns(fake_entry_points):
    def l0_register_gadgets(register):
        pass

    fake_entry_points.add(
        "odd-plugin", lambda: plugin_module("odd", l0_register_gadgets=l0_register_gadgets)
    )
    with pytest.warns(
        L0PluginWarning,
        match=r"'odd-plugin' implements unknown hook\(s\) "
        r"\['l0_register_gadgets'\]; known hooks are \['l0_calibration_log'",
    ):
        assert "hard_concrete" in available("gates")
    assert "odd-plugin" not in [p.name for p in list_plugins()]


def test_an_entry_point_duplicating_a_builtin_name_only_warns(fake_entry_points):
    module = plugin_module("cos", l0_register_schedules=schedules_hook(("cosine", half)))
    fake_entry_points.add("cos-plugin", lambda: module)
    with pytest.warns(
        L0PluginWarning,
        match="'cos-plugin' registered schedule 'cosine', already "
        "registered by 'l0_core.builtins'; the second one is ignored",
    ):
        schedule = lookup("schedules", "cosine")
    assert schedule(0.0, 1.0, 0.1) == 1.0 and schedule is not half


def test_disable_autoload_env_skips_entry_points_but_keeps_builtins(fake_entry_points, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert DISABLE_AUTOLOAD_ENV == "L0_DISABLE_PLUGIN_AUTOLOAD"
    module = plugin_module("skipped", l0_register_schedules=schedules_hook(("test-skipped", half)))
    fake_entry_points.add("skipped-plugin", lambda: module)
    names = available("schedules")
    assert "test-skipped" not in names and "linear" in names
    assert fake_entry_points.calls == []


def test_disable_autoload_env_set_to_zero_still_loads_entry_points(fake_entry_points, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "0")
    module = plugin_module("loaded", l0_register_schedules=schedules_hook(("test-loaded", half)))
    fake_entry_points.add("loaded-plugin", lambda: module)
    assert "test-loaded" in available("schedules")


def test_a_real_distribution_on_sys_path_is_discovered_through_its_entry_point(
    tmp_path, monkeypatch, fresh_plugin_manager
):
    (tmp_path / "test_l0_realplug.py").write_text(
        "from l0_core import hookimpl\n\n"
        "@hookimpl\n"
        "def l0_register_schedules(register):\n"
        "    register('test-real-step', lambda p, a, b: a if p < 0.5 else b)\n"
    )
    info = tmp_path / "test_l0_realplug-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: test-l0-realplug\nVersion: 0.3.1\n"
    )
    (info / "entry_points.txt").write_text("[l0]\nrealplug = test_l0_realplug\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    s = TemperatureScheduler(1.0, 0.1, total_epochs=3, schedule="test-real-step")
    assert [s.get_temperature(e) for e in range(3)] == [1.0, 0.1, 0.1]
    plugin = {p.name: p for p in list_plugins()}["realplug"]
    assert (plugin.distribution, plugin.version) == ("test-l0-realplug", "0.3.1")
    assert plugin.registered == {"schedules": ["test-real-step"]}


def test_add_builtin_plugin_registers_a_module_even_with_autoload_off(
    tmp_path, monkeypatch, fresh_plugin_manager
):
    (tmp_path / "test_l0_sibling_builtins.py").write_text(
        "from l0_core import hookimpl\n\n"
        "@hookimpl\n"
        "def l0_register_losses(register):\n"
        "    register('test-sibling-loss', lambda e, t: (e - t) ** 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setattr(fresh_plugin_manager, "_BUILTIN_PLUGINS", ["l0_core.builtins"])
    add_builtin_plugin("test_l0_sibling_builtins")
    add_builtin_plugin("test_l0_sibling_builtins")  # idempotent
    assert fresh_plugin_manager._BUILTIN_PLUGINS.count("test_l0_sibling_builtins") == 1
    assert "test-sibling-loss" in available("losses")
    get_plugin_manager()
    add_builtin_plugin("test_l0_sibling_builtins")  # manager exists: still registered once
    assert [p.name for p in list_plugins()].count("test_l0_sibling_builtins") == 1


@pytest.mark.slow
def test_import_of_l0_core_builds_no_plugin_manager_and_reads_no_entry_points():
    import subprocess
    import sys

    code = (
        "import l0_core\n"
        "from l0_core.plugins import manager\n"
        "assert manager._pm is None, 'plugin manager built at import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_warning_is_emitted_by_the_builtins_alone(fresh_plugin_manager, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("gates", "schedules", "losses"):
            available(kind)


# -- plugins can't take the process down (issue 12) ---------------------------------------


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), ValueError("bad")])
def test_a_plugin_raising_any_base_exception_at_import_only_warns(fake_entry_points, exc):
    def broken():
        raise exc

    good = plugin_module("good_se", l0_register_schedules=schedules_hook(("test-good-se", half)))
    fake_entry_points.add("exiting-plugin", broken)
    fake_entry_points.add("good-plugin", lambda: good)
    with pytest.warns(
        L0PluginWarning,
        match=rf"l0 plugin 'exiting-plugin' .* failed to import and was skipped: "
        rf"{type(exc).__name__}",
    ):
        names = available("schedules")
    assert "test-good-se" in names
    assert isinstance(make_gate("hard_concrete", 2), HardConcrete)  # the process goes on


def test_a_plugin_hook_raising_system_exit_only_warns(fake_entry_points):
    def exiting(register):
        register("test-before-exit", half)
        raise SystemExit(3)

    fake_entry_points.add(
        "exit-hook", lambda: plugin_module("exit_hook", l0_register_schedules=exiting)
    )
    with pytest.warns(
        L0PluginWarning,
        match=r"l0 plugin 'exit-hook' failed in l0_register_schedules: SystemExit: 3",
    ):
        names = available("schedules")
    assert "test-before-exit" in names and "linear" in names


def test_keyboard_interrupt_in_a_plugin_still_interrupts(fake_entry_points):
    def interrupted():
        raise KeyboardInterrupt

    fake_entry_points.add("ctrl-c", interrupted)
    with pytest.raises(KeyboardInterrupt):
        available("gates")


@pytest.mark.parametrize(
    ("kind", "obj", "problem"),
    [
        ("gates", lambda *a, **k: None, "a gate must be a torch.nn.Module subclass, got function"),
        ("gates", int, "a gate must be a torch.nn.Module subclass, got class <class 'int'>"),
        ("schedules", 0.5, "a schedule must be callable, got float 0.5"),
        ("losses", "mse", "a loss must be callable, got str 'mse'"),
    ],
)
def test_a_registration_of_the_wrong_type_warns_and_lookup_names_the_plugin(kind, obj, problem):
    hook = {"gates": "l0_register_gates", "schedules": "l0_register_schedules"}.get(
        kind, "l0_register_losses"
    )

    class Plugin:
        pass

    def register_it(self, register):
        register("test-wrong-type", obj)

    setattr(Plugin, hook, hookimpl(register_it))
    name = register_plugin(Plugin(), name="wrong-type-plugin")
    try:
        expected = f"l0 plugin 'wrong-type-plugin' registered {kind[:-1] if kind != 'losses' else 'loss'} 'test-wrong-type', but {problem}"
        with pytest.warns(L0PluginWarning, match=re.escape(expected)):
            assert "test-wrong-type" not in available(kind)
        with pytest.raises(TypeError, match=re.escape(expected)):
            lookup(kind, "test-wrong-type")
    finally:
        unregister_plugin(name)
