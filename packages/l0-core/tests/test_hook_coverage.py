"""Every hook specification has a test and an entry in docs/plugins.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from l0_core.plugins import L0HookSpecs

TESTS = Path(__file__).resolve().parent
DOCS = TESTS.parents[2] / "docs" / "plugins.md"
HOOKS = sorted(name for name in vars(L0HookSpecs) if name.startswith("l0_"))


def collect_test_names() -> set[str]:
    names: set[str] = set()
    for path in TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names.update(n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    return names


def test_the_hook_specs_are_the_four_documented_hooks():
    assert HOOKS == [
        "l0_calibration_log",
        "l0_register_gates",
        "l0_register_losses",
        "l0_register_schedules",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_named_after_it(hook):
    assert any(hook in name for name in collect_test_names()), (
        f"write a test whose name contains {hook}"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_in_docs_plugins(hook):
    headings = [line for line in DOCS.read_text().splitlines() if line.startswith("#")]
    assert any(hook in line for line in headings), f"docs/plugins.md needs a heading for {hook}"
