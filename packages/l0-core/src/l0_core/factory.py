"""Make gates by registered name (plugins included)."""

from __future__ import annotations

from typing import Any

import torch

from .gate import is_gate

__all__ = ["get_gate_class", "make_gate"]


def get_gate_class(gate: str | type) -> type:
    """Return the gate class registered under ``gate`` (or ``gate`` itself if a class).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the available gate types.

    Examples
    --------
    >>> get_gate_class("hard_concrete").__name__
    'HardConcrete'
    """
    if isinstance(gate, type):
        return gate
    from .plugins import lookup

    return lookup("gates", gate, argument="gate")


def make_gate(gate: str | type, *shape: int, **kwargs: Any) -> torch.nn.Module:
    """Construct a gate of the registered type ``gate`` with the given shape.

    Parameters
    ----------
    gate : str or type
        Registered gate name (``"hard_concrete"`` or a plugin's) or a class.
    *shape : int
        Gate shape.
    **kwargs
        ``temperature``, ``init_mean``, ``device``, ``dtype``, ``generator``
        and any extra keyword the gate type accepts.

    Examples
    --------
    >>> make_gate("hard_concrete", 5, init_mean=0.9).shape
    torch.Size([5])
    """
    cls = get_gate_class(gate)
    module = cls(*shape, **kwargs)
    if not is_gate(module):
        raise TypeError(
            f"gate type {gate!r} built a {type(module).__name__}, which does not implement "
            "the l0_core.Gate protocol (forward, l0_penalty, prob_active, temperature)"
        )
    return module
