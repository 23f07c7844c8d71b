"""Make gates by registered name (plugins included)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

from .gate import is_gate
from .plugins import lookup

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
        ``temperature``, ``init_prob_active`` (the initial probability that a
        gate is non-zero), ``device``, ``dtype``, ``generator`` and any extra
        keyword the gate type accepts.

    Notes
    -----
    A gate class written for the old contract, whose constructor takes
    ``init_mean`` (meaning the open probability) but not
    ``init_prob_active``, still works: the value is passed as ``init_mean``
    with a ``DeprecationWarning`` asking the gate's author to rename it.

    Examples
    --------
    >>> make_gate("hard_concrete", 5, init_prob_active=0.9).shape
    torch.Size([5])
    """
    cls = get_gate_class(gate)
    if "init_prob_active" in kwargs and _takes_only_init_mean(cls):
        kwargs = dict(kwargs)
        kwargs["init_mean"] = kwargs.pop("init_prob_active")
        warnings.warn(
            f"gate type {gate!r} ({cls.__module__}.{cls.__qualname__}) takes init_mean, not "
            "init_prob_active; l0-core passed the open probability as init_mean. Rename the "
            "constructor's argument to init_prob_active (the gate contract of l0-core)",
            DeprecationWarning,
            stacklevel=2,
        )
    module = cls(*shape, **kwargs)
    if not is_gate(module):
        raise TypeError(
            f"gate type {gate!r} built a {type(module).__name__}, which does not implement "
            "the l0_core.Gate protocol (forward, l0_penalty, prob_active, temperature)"
        )
    return module


def _takes_only_init_mean(cls: type) -> bool:
    """Whether ``cls(...)`` accepts ``init_mean`` but neither ``init_prob_active`` nor ``**kw``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: pass keywords as they are
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return False
    return "init_mean" in params and "init_prob_active" not in params
