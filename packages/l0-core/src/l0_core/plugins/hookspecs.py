"""Hook specifications of the ``l0`` pluggy project.

Every hook is prefixed ``l0_``. The ``l0_register_*`` hooks receive a
``register(name, obj)`` callable; a plugin calls it once per thing it adds.
Names are unique per kind: a second registration of a taken name is
ignored with a warning that names both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["hookspec", "hookimpl", "L0HookSpecs", "PROJECT_NAME"]

PROJECT_NAME = "l0"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Any], None]


class L0HookSpecs:
    """The hooks a plugin may implement (all optional)."""

    @hookspec
    def l0_register_gates(self, register: Register) -> None:
        """Register gate types.

        Called once whenever the gate registry is (re)built, i.e. on the
        first lookup after the set of plugins changed.

        ``register(name, cls)`` accepts an ``nn.Module`` subclass
        implementing :class:`l0_core.Gate` whose constructor accepts
        ``(*shape, temperature=..., init_prob_active=..., device=...,
        dtype=..., generator=...)``, ``init_prob_active`` being the initial
        probability that a gate is non-zero. Users then pass ``gate="name"`` to any l0 class
        that makes gates.
        """

    @hookspec
    def l0_register_schedules(self, register: Register) -> None:
        """Register temperature schedules.

        ``register(name, fn)`` accepts a function
        ``fn(progress: float, initial: float, final: float) -> float`` with
        ``progress`` in ``[0, 1]``; it should return ``initial`` at 0 and
        ``final`` at 1. Users pass ``schedule="name"`` to
        :class:`l0_core.TemperatureScheduler` and to fitting functions.
        """

    @hookspec
    def l0_register_losses(self, register: Register) -> None:
        """Register calibration loss functions.

        ``register(name, fn)`` accepts
        ``fn(estimate: Tensor, target: Tensor) -> Tensor`` returning the
        per-target loss (same shape as ``target``); l0-calibrate averages
        it with the target-group weights. Users pass ``loss_type="name"``.
        """

    @hookspec
    def l0_calibration_log(self, event: dict) -> None:
        """Observe a calibration at each logging step.

        Called by l0-calibrate with a dict holding ``epoch``, the loss parts,
        ``mean_rel_error``, ``max_rel_error``, ``n_active`` and ``weights``
        (a detached tensor). Return value is ignored; to stop a fit early use
        the ``callbacks=`` argument of ``fit``.
        """
