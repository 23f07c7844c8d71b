"""Accumulation precision: sums over many gates never overflow half precision.

A float16 sum of more than 65,504 probabilities is ``inf`` and bfloat16 keeps
only 8 bits of mantissa, so penalties and counts over half-precision gates
accumulate in float32 (the result is float32; autograd casts the gradient
back to the parameters' dtype).

Examples
--------
>>> import torch
>>> accumulation_dtype(torch.float16), accumulation_dtype(torch.float64)
(torch.float32, torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accumulation_dtype", "accumulate_sum"]

_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype sums of ``dtype`` values are accumulated in (float32 for half types).

    Examples
    --------
    >>> accumulation_dtype(torch.bfloat16)
    torch.float32
    """
    return torch.float32 if dtype in _HALF else dtype


def accumulate_sum(values: Tensor, dim: int | None = None) -> Tensor:
    """``values.sum(dim)`` accumulated (and returned) in :func:`accumulation_dtype`.

    Examples
    --------
    >>> accumulate_sum(torch.full((70000,), 1.0, dtype=torch.float16)).item()
    70000.0
    """
    dtype = accumulation_dtype(values.dtype)
    if dim is None:
        return values.sum(dtype=dtype)
    return values.sum(dim, dtype=dtype)
