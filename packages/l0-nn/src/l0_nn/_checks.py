"""l0-nn's domain-specific argument checks, built on :mod:`l0_core.checks`.

The generic checks (ints, floats, probabilities, choices, devices) live in
``l0_core.checks``; this module only adds the convolution size tuples, the
factory-argument triple and ``gate_kwargs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from l0_core.checks import check_device, check_dtype, check_generator


def check_int_tuple(value: Any, name: str, minimum: int, size: int) -> tuple[int, ...]:
    """Normalise an ``int`` or ``size`` ints (each ``>= minimum``) to a ``size``-tuple.

    ``size`` is the convolution's number of spatial dimensions (1 or 2).
    """
    items = (value,) * size if isinstance(value, int) and not isinstance(value, bool) else value
    ok = (
        isinstance(items, (tuple, list))
        and len(items) == size
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
    )
    if not ok:
        several = {1: "a 1-tuple of one", 2: "a pair of them"}.get(size, f"{size} of them")
        raise ValueError(
            f"{name} must be an int >= {minimum} or {several}, got {value!r}; e.g. {name}=3"
        )
    return tuple(int(v) for v in items)


def check_factory(
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    generator: torch.Generator | None,
) -> torch.device | None:
    """Validate the ``device``/``dtype``/``generator`` factory arguments; return the device."""
    checked = check_device(device)
    check_dtype(dtype)
    check_generator(generator, device=checked)
    return checked


def check_gate_kwargs(gate_kwargs: Any) -> dict[str, Any]:
    """Return a copy of ``gate_kwargs`` (a mapping of extra gate keywords) or ``{}``."""
    if gate_kwargs is None:
        return {}
    if not isinstance(gate_kwargs, Mapping):
        raise TypeError(
            f"gate_kwargs must be a dict of extra gate keywords, got {type(gate_kwargs).__name__}; "
            "e.g. gate_kwargs={'stretch': 0.1}"
        )
    reserved = {
        "temperature",
        "init_prob_active",
        "init_mean",
        "device",
        "dtype",
        "generator",
    } & set(gate_kwargs)
    if reserved:
        raise ValueError(
            f"gate_kwargs may not set {sorted(reserved)}; pass them as the layer's own arguments "
            "(temperature=, init_sparsity=, device=, dtype=, generator=)"
        )
    return dict(gate_kwargs)
