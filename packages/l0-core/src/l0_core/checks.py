"""Argument checks for every l0 package: one signature style, clear messages.

Every public entry point of l0-core, l0-nn, l0-gates and l0-calibrate checks
its arguments here, once, before any work starts. Each checker takes the
value first and the argument's name second, returns the normalised value, and
raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for a
value out of range. Messages name the argument, what it must be, what was
given and, through ``hint``, how to fix it.

Examples
--------
>>> check_int(3, "n_items", min_val=1)
3
>>> check_float(0.5, "temperature", min_val=0.0, include_boundaries="neither")
0.5
>>> check_float(-1.0, "temperature", min_val=0.0, include_boundaries="neither",
...             hint="pass e.g. temperature=0.5")
Traceback (most recent call last):
...
ValueError: temperature must be > 0.0, got -1.0; pass e.g. temperature=0.5
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, cast

import torch

__all__ = [
    "check_choice",
    "check_device",
    "check_dtype",
    "check_finite_tensor",
    "check_float",
    "check_generator",
    "check_int",
    "check_probability",
    "check_seed",
    "check_temperature",
    "renamed_keywords",
]

_F = TypeVar("_F", bound=Callable[..., Any])

Boundaries = Literal["both", "left", "right", "neither"]


def _suffix(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_range(
    value: float,
    name: str,
    min_val: float | None,
    max_val: float | None,
    include_boundaries: Boundaries,
    hint: str,
) -> None:
    if include_boundaries not in ("both", "left", "right", "neither"):
        raise ValueError(
            f"include_boundaries must be 'both', 'left', 'right' or 'neither', "
            f"got {include_boundaries!r}"
        )
    left_closed = include_boundaries in ("both", "left")
    right_closed = include_boundaries in ("both", "right")
    if min_val is not None:
        ok = value >= min_val if left_closed else value > min_val
        if not ok:
            op = ">=" if left_closed else ">"
            raise ValueError(f"{name} must be {op} {min_val}, got {value!r}{_suffix(hint)}")
    if max_val is not None:
        ok = value <= max_val if right_closed else value < max_val
        if not ok:
            op = "<=" if right_closed else "<"
            raise ValueError(f"{name} must be {op} {max_val}, got {value!r}{_suffix(hint)}")


def check_int(
    value: Any,
    name: str,
    *,
    min_val: int | None = None,
    max_val: int | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as an ``int`` if it is an integer within ``[min_val, max_val]``.

    Python and numpy integers are accepted; ``bool`` and floats are not (a float
    count is almost always a mistake, e.g. ``n * 0.1``).

    Parameters
    ----------
    value : Any
        The value to check.
    name : str
        The argument's name, used in the message.
    min_val, max_val : int, optional
        Inclusive bounds.
    hint : str, default ""
        How to fix a bad value, appended to the message.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If ``value`` lies outside the bounds.

    Examples
    --------
    >>> check_int(5, "epochs", min_val=1)
    5
    >>> check_int(2.5, "epochs")
    Traceback (most recent call last):
    ...
    TypeError: epochs must be an int, got float (2.5)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int, got {_type_name(value)} ({value!r}){_suffix(hint)}"
        )
    value = int(value)
    _check_range(value, name, min_val, max_val, "both", hint)
    return value


def check_float(
    value: Any,
    name: str,
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    include_boundaries: Boundaries = "both",
    allow_inf: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` as a ``float`` if it is a real number within the bounds.

    NaN is always refused; infinity only unless ``allow_inf=True``. 0-d tensors
    and numpy scalars are accepted.

    Parameters
    ----------
    value : Any
        The value to check.
    name : str
        The argument's name, used in the message.
    min_val, max_val : float, optional
        Bounds.
    include_boundaries : {"both", "left", "right", "neither"}, default "both"
        Which bounds are closed.
    allow_inf : bool, default False
        Accept ``±inf`` (still subject to the bounds).
    hint : str, default ""
        How to fix a bad value, appended to the message.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If ``value`` is NaN, infinite (unless allowed) or outside the bounds.

    Examples
    --------
    >>> check_float(1, "lr", min_val=0.0, include_boundaries="neither")
    1.0
    >>> check_float(float("nan"), "lr")
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number, got nan
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number, got {_type_name(value)} ({value!r}){_suffix(hint)}"
        )
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}{_suffix(hint)}")
    _check_range(value, name, min_val, max_val, include_boundaries, hint)
    return value


def check_temperature(value: Any, name: str = "temperature", *, hint: str = "") -> float:
    """Return ``value`` as a ``float`` if it is a usable Hard Concrete temperature (finite, > 0).

    Examples
    --------
    >>> check_temperature(2 / 3) == 2 / 3
    True
    >>> check_temperature(0, hint="use e.g. 2/3")
    Traceback (most recent call last):
    ...
    ValueError: temperature must be > 0.0, got 0.0; use e.g. 2/3
    """
    return check_float(value, name, min_val=0.0, include_boundaries="neither", hint=hint)


def check_probability(
    value: Any, name: str, *, include_boundaries: Boundaries = "neither", hint: str = ""
) -> float:
    """Return ``value`` as a ``float`` if it is a probability (open interval by default).

    Examples
    --------
    >>> check_probability(0.9, "init_prob_active")
    0.9
    >>> check_probability(1.0, "init_prob_active")
    Traceback (most recent call last):
    ...
    ValueError: init_prob_active must be < 1.0, got 1.0
    """
    return check_float(
        value, name, min_val=0.0, max_val=1.0, include_boundaries=include_boundaries, hint=hint
    )


def check_choice(value: Any, name: str, choices: Iterable[str], *, hint: str = "") -> str:
    """Return ``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("median", "estimator", ("median", "paper"))
    'median'
    >>> check_choice("mean", "estimator", ("median", "paper"))
    Traceback (most recent call last):
    ...
    ValueError: estimator must be one of ['median', 'paper'], got 'mean'
    """
    options = list(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}{_suffix(hint)}")
    return value


def check_seed(value: Any, name: str = "seed") -> int | None:
    """Return ``value`` if it is ``None`` or a non-negative ``int`` usable as a seed.

    Examples
    --------
    >>> check_seed(0)
    0
    >>> check_seed(None) is None
    True
    """
    if value is None:
        return None
    return check_int(value, name, min_val=0, max_val=2**63 - 1, hint=f"pass e.g. {name}=0")


def check_device(value: Any, name: str = "device") -> torch.device | None:
    """Return ``torch.device(value)`` if this torch build and machine can use it.

    ``None`` passes through (meaning: follow the inputs). A CUDA or MPS device
    on a machine without one is refused here, by name, instead of deep inside
    torch at the first allocation.

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    """
    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{name} must name a torch device such as 'cpu' or 'cuda', got {value!r} ({exc})"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={value!r} but this torch build or machine has no CUDA device; "
                f"pass {name}='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={value!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"pass {name}='cuda:0'"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name}={value!r} but MPS is not available here; pass {name}='cpu'")
    return device


def check_dtype(value: Any, name: str = "dtype", *, floating: bool = True) -> torch.dtype | None:
    """Return ``value`` if it is ``None`` or a (floating point) ``torch.dtype``.

    Examples
    --------
    >>> check_dtype(torch.float64)
    torch.float64
    """
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype such as torch.float32, got {value!r}")
    if floating and not value.is_floating_point:
        raise TypeError(f"{name} must be a floating point torch.dtype, got {value}")
    return value


def check_generator(
    value: Any, name: str = "generator", *, device: torch.device | str | None = None
) -> torch.Generator | None:
    """Return ``value`` if it is ``None`` or a ``torch.Generator`` on ``device``'s type.

    Examples
    --------
    >>> g = check_generator(torch.Generator().manual_seed(0))
    >>> g.device
    device(type='cpu')
    """
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator, got {_type_name(value)}; "
            "use torch.Generator().manual_seed(0)"
        )
    target = torch.device(device) if device is not None else torch.device("cpu")
    if value.device.type != target.type:
        raise ValueError(
            f"{name} lives on {value.device} but the work runs on {target}; "
            f"pass torch.Generator(device={target.type!r}).manual_seed(...)"
        )
    return value


def check_finite_tensor(value: torch.Tensor, name: str, *, hint: str = "") -> torch.Tensor:
    """Return ``value`` if every element is finite; otherwise name the first bad entry.

    Examples
    --------
    >>> check_finite_tensor(torch.tensor([1.0, float("inf")]), "targets")
    Traceback (most recent call last):
    ...
    ValueError: targets must be finite, but entry 1 is inf
    """
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            flat = int(bad.reshape(-1).nonzero()[0, 0].item())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), value.shape))
            where = index[0] if len(index) == 1 else index
            item = value.reshape(-1)[flat].item()
            raise ValueError(f"{name} must be finite, but entry {where} is {item}{_suffix(hint)}")
    return value


def renamed_keywords(**renames: str) -> Callable[[_F], _F]:
    """Keep old keyword spellings working as deprecated aliases of their new names.

    ``@renamed_keywords(old="new")`` on a function whose signature has
    ``new``: a call with ``old=value`` runs as ``new=value`` and emits a
    ``DeprecationWarning`` naming the new keyword; a call that passes both
    raises ``TypeError`` naming both. The signature (and
    ``inspect.signature``) shows the new names only.

    Parameters
    ----------
    **renames : str
        ``old_name="new_name"`` pairs.

    Returns
    -------
    callable
        A decorator.

    Examples
    --------
    >>> import warnings
    >>> @renamed_keywords(l0_lambda="lambda_l0")
    ... def penalty(*, lambda_l0=1e-3):
    ...     return lambda_l0
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     penalty(l0_lambda=0.5)
    0.5
    >>> print(caught[0].message)
    penalty(l0_lambda=...) is deprecated; pass lambda_l0=... (same meaning)
    >>> penalty(l0_lambda=0.5, lambda_l0=0.1)
    Traceback (most recent call last):
    ...
    TypeError: penalty() got both l0_lambda= and lambda_l0=; l0_lambda is the deprecated name of lambda_l0, pass only lambda_l0
    """
    for old, new in renames.items():
        if not isinstance(new, str) or not new.isidentifier() or new == old:
            raise ValueError(f"renamed_keywords({old}=...) needs a new keyword name, got {new!r}")

    def decorate(func: _F) -> _F:
        name = func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{name}() got both {old}= and {new}=; {old} is the deprecated name "
                        f"of {new}, pass only {new}"
                    )
                warnings.warn(
                    f"{name}({old}=...) is deprecated; pass {new}=... (same meaning)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return cast("_F", wrapper)

    return decorate
