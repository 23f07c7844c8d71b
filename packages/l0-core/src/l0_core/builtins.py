"""Built-in gates and schedules of l0-core, registered through the public hooks."""

from __future__ import annotations

from .hard_concrete import HardConcrete
from .plugins.hookspecs import hookimpl
from .temperature import BUILTIN_SCHEDULES


@hookimpl
def l0_register_gates(register) -> None:
    register("hard_concrete", HardConcrete)


@hookimpl
def l0_register_schedules(register) -> None:
    for name, fn in BUILTIN_SCHEDULES.items():
        register(name, fn)
