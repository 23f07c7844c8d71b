"""The hook implementations that the ``l0`` entry point points at.

l0-core calls each hook with a ``register(name, obj)`` function the first time
a gate or schedule is looked up by name.
"""

from __future__ import annotations

from l0_core import hookimpl

from .gate import StraightThroughGate
from .schedule import plateau_cosine


@hookimpl
def l0_register_gates(register) -> None:
    """Add the ``"straight_through"`` gate type."""
    register("straight_through", StraightThroughGate)


@hookimpl
def l0_register_schedules(register) -> None:
    """Add the ``"plateau_cosine"`` temperature schedule."""
    register("plateau_cosine", plateau_cosine)
