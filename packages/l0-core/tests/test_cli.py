"""The ``l0 plugins`` console command and ``python -m l0_core plugins``."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from l0_core import hookimpl, register_plugin, unregister_plugin
from l0_core.cli import main


def test_main_plugins_lists_builtins_with_distribution_version_and_registrations(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    version = importlib.metadata.version("l0-core")
    assert f"l0_core.builtins (l0-core {version})" in out
    assert "    gates: hard_concrete" in out
    assert "    schedules: constant, cosine, exponential, linear" in out


def test_main_plugins_shows_an_in_process_plugin_and_one_that_registers_nothing(capsys):
    class Quiet:
        @hookimpl
        def l0_calibration_log(self, event):
            pass

    name = register_plugin(Quiet(), name="test-quiet")
    try:
        main(["plugins"])
        out = capsys.readouterr().out
    finally:
        unregister_plugin(name)
    assert "test-quiet\n    (registers nothing)\n" in out


def test_main_without_a_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: l0" in capsys.readouterr().err


def _env():
    env = dict(os.environ)
    env.pop("L0_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


@pytest.mark.slow
def test_python_dash_m_l0_core_plugins_prints_the_builtins():
    result = subprocess.run(
        [sys.executable, "-m", "l0_core", "plugins"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    assert "l0_core.builtins" in result.stdout and "hard_concrete" in result.stdout


@pytest.mark.slow
def test_l0_console_script_is_installed_and_lists_plugins():
    script = Path(sys.executable).with_name("l0")
    assert script.exists(), f"the l0 console script should be installed next to {sys.executable}"
    result = subprocess.run(
        [str(script), "plugins"], capture_output=True, text=True, env=_env(), check=True
    )
    assert "gates: hard_concrete" in result.stdout


def test_plugins_command_imports_the_installed_family_packages_first(tmp_path, monkeypatch, capsys):
    import l0_core.cli as cli

    (tmp_path / "fake_l0_family.py").write_text(
        "from l0_core import hookimpl, register_plugin\n"
        "class Schedules:\n"
        "    @hookimpl\n"
        "    def l0_register_schedules(self, register):\n"
        "        register('fake_family_schedule', lambda p, t0, t1: t0)\n"
        "register_plugin(Schedules(), name='fake-family')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_FAMILY", ("not_installed_l0_sibling", "fake_l0_family"))
    try:
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
    finally:
        unregister_plugin("fake-family")
        sys.modules.pop("fake_l0_family", None)
    assert "fake-family\n    schedules: fake_family_schedule\n" in out
