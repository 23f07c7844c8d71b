"""Built-in losses of l0-calibrate, registered through the public ``l0_register_losses`` hook."""

from __future__ import annotations

from l0_core import hookimpl

from .losses import BUILTIN_LOSSES


@hookimpl
def l0_register_losses(register) -> None:  # noqa: ANN001 - pluggy passes a callable
    for name, fn in BUILTIN_LOSSES.items():
        register(name, fn)
