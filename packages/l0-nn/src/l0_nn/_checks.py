"""Argument checks shared by the l0-nn layers (clear messages, raised before any work)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def check_positive_int(name: str, value: Any, example: str) -> int:
    """Return ``value`` if it is a positive ``int``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}; {example}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}; {example}")
    return value


def check_non_negative_int(name: str, value: Any, example: str) -> int:
    """Return ``value`` if it is an ``int >= 0``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__}; {example}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}; {example}")
    return value


def check_positive_float(name: str, value: Any, example: str) -> float:
    """Return ``float(value)`` if it is a positive finite number; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}; {example}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; {example}")
    return value


def check_probability(name: str, value: Any, example: str) -> float:
    """Return ``float(value)`` if it lies strictly between 0 and 1; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}; {example}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}; {example}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; raise otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int_tuple(name: str, value: Any, minimum: int, size: int) -> tuple[int, ...]:
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
) -> None:
    """Validate the ``device``/``dtype``/``generator`` factory arguments."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "use torch.Generator().manual_seed(0)"
            )
        target = torch.device(device) if device is not None else torch.device("cpu")
        if generator.device.type != target.type:
            raise ValueError(
                f"generator lives on {generator.device} but the layer is created on {target}; "
                f"pass torch.Generator(device={target.type!r}).manual_seed(...)"
            )


def check_gate_kwargs(gate_kwargs: Any) -> dict[str, Any]:
    """Return a copy of ``gate_kwargs`` (a mapping of extra gate keywords) or ``{}``."""
    if gate_kwargs is None:
        return {}
    if not isinstance(gate_kwargs, Mapping):
        raise TypeError(
            f"gate_kwargs must be a dict of extra gate keywords, got {type(gate_kwargs).__name__}; "
            "e.g. gate_kwargs={'stretch': 0.1}"
        )
    reserved = {"temperature", "init_mean", "device", "dtype", "generator"} & set(gate_kwargs)
    if reserved:
        raise ValueError(
            f"gate_kwargs may not set {sorted(reserved)}; pass them as the layer's own arguments "
            "(temperature=, init_sparsity=, device=, dtype=, generator=)"
        )
    return dict(gate_kwargs)
