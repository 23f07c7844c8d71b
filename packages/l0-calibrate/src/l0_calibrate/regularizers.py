"""Weight regularisers for calibration: stay close to the design weights, keep weights even.

Survey calibration (Deville & Särndal 1992) looks for weights ``w`` that
reproduce known totals while staying close to the design (initial) weights
``d``; "close" is measured by a *calibration distance* on the ratio
``r = w / d``. Sparse calibration drops most households, so the kept ones
must also stay close to each other: the design effect ``1 + CV^2`` of the
non-zero weights measures how much precision the spread of the weights
costs.

Public functions
----------------
``calibration_distance(w, d, kind="chi2")``
    Differentiable scalar distance between ``w`` and ``d``:

    * ``"chi2"``   -- ``sum_k d_k * (r_k - 1)^2 / 2``
    * ``"raking"`` -- ``sum_k d_k * (r_k log r_k - r_k + 1)``
      ``= sum_k (w_k log(w_k/d_k) - w_k + d_k)``

    Normalisation: by default the sum is divided by ``sum_k d_k``, so the
    value is the design-weighted *mean* per-unit distance and does not grow
    with the population size (pass ``normalize=False`` for the raw sum).
    Both distances are 0 exactly when ``w == d`` and behave like
    ``(r - 1)^2 / 2`` near it.
``dispersion_penalty(w)``
    ``CV^2`` of the non-zero weights (``= design effect - 1``, Kish 1965).
``ratio_bounds``, ``inflate_design_weights``, ``clip_weight_ratio``, ``ratio_bound_penalty``
    The ``max_weight_ratio`` bounds on ``w / d``.

Bounds convention. ``max_weight_ratio=R`` (a number ``> 1``) bounds the
ratio of each *kept* weight to its reference weight to ``[1/R, R]``; a
pair ``(lo, hi)`` with ``0 <= lo <= 1 <= hi`` gives the interval directly.
When households are dropped, the reference is the design weight *inflated*
so that the kept households carry the population total
(:func:`inflate_design_weights`: ``q_k = d_k * sum(d) / sum_{kept} d``);
without dropping (all kept) the reference is ``d`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DISTANCES",
    "calibration_distance",
    "clip_weight_ratio",
    "dispersion_penalty",
    "inflate_design_weights",
    "ratio_bound_penalty",
    "ratio_bounds",
]

DISTANCES = ("chi2", "raking")

RatioBound = Union[float, int, Sequence[float], None]


def _check_distance(kind: str, argument: str = "kind") -> str:
    if kind not in DISTANCES:
        raise ValueError(
            f"{argument} must be one of {list(DISTANCES)}, got {kind!r}; "
            "'chi2' is the linear (GREG) calibration distance, 'raking' the multiplicative one"
        )
    return kind


def _check_pair(w: Tensor, d: Tensor) -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not isinstance(d, Tensor):
        raise TypeError(f"d must be a torch.Tensor, got {type(d).__name__}")
    if w.shape != d.shape:
        raise ValueError(
            f"w and d must have the same shape, got {tuple(w.shape)} and {tuple(d.shape)}; "
            "pass one design weight per weight"
        )
    if d.numel() and not bool((d > 0).all()) or not bool(torch.isfinite(d).all()):
        raise ValueError(
            "d must hold positive finite design weights; drop households with a zero "
            "design weight before calibrating"
        )


def calibration_distance(
    w: Tensor,
    d: Tensor,
    kind: str = "chi2",
    *,
    active_only: bool = False,
    normalize: bool = True,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Calibration distance between weights ``w`` and design weights ``d`` (differentiable).

    Parameters
    ----------
    w : Tensor
        Weights (``>= 0``), any shape.
    d : Tensor
        Positive design (reference) weights, same shape as ``w``.
    kind : {"chi2", "raking"}, default "chi2"
        ``"chi2"``: ``sum d (w/d - 1)^2 / 2`` (linear / GREG calibration).
        ``"raking"``: ``sum w log(w/d) - w + d`` (multiplicative calibration;
        a zero weight contributes its limit ``d``).
    active_only : bool, default False
        Sum only over non-zero ``w`` (households that a gate keeps); the
        dropped ones are not "shrunk", they are out of the sample. The
        normalising total is then the ``d`` of the kept units.
    normalize : bool, default True
        Divide by ``sum(d)`` (over the summed units), giving a mean distance
        per unit of design weight; ``False`` returns the raw sum.
    reduce : callable, optional
        Applied to the stacked sums over units before the formula (e.g. an
        all-reduce over the ranks of a column-sharded fit, so that every
        rank gets the penalty of all households); None: this ``w`` is all.

    Returns
    -------
    Tensor
        Scalar with ``w``'s dtype and device.

    Examples
    --------
    >>> w = torch.tensor([1.0, 2.0, 4.0]); d = torch.tensor([1.0, 1.0, 2.0])
    >>> round(calibration_distance(w, d, "chi2", normalize=False).item(), 6)
    1.5
    >>> round(calibration_distance(w, w, "raking").item(), 6)
    0.0
    """
    _check_distance(kind)
    _check_pair(w, d)
    d = d.to(device=w.device, dtype=w.dtype)
    r = w / d
    if kind == "chi2":
        per_unit = 0.5 * (r - 1.0) ** 2
    else:
        positive = r > 0
        safe = torch.where(positive, r, torch.ones_like(r))
        rlogr = torch.where(positive, safe * torch.log(safe), torch.zeros_like(r))
        per_unit = rlogr - r + 1.0
    if active_only:
        mask = (w != 0).to(w.dtype)
        total = (d * per_unit * mask).sum()
        norm = (d * mask).sum()
    else:
        total = (d * per_unit).sum()
        norm = d.sum()
    if reduce is not None:
        total, norm = reduce(torch.stack([total, norm]))
    if not normalize:
        return total
    return total / norm.clamp_min(torch.finfo(w.dtype).tiny)


def dispersion_penalty(
    w: Tensor,
    *,
    reference: Tensor | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Squared coefficient of variation of the non-zero weights (design effect minus 1).

    For the ``n`` non-zero entries ``x`` of ``w`` (or of ``w / reference``),
    returns ``n * sum(x^2) / sum(x)^2 - 1``, the population ``CV^2`` of ``x``;
    Kish's design effect due to weighting is ``1 + CV^2``. Zero entries
    (dropped households) do not count, so the penalty pulls the *kept*
    weights together rather than toward zero. Gradients flow through the
    non-zero entries; the count ``n`` is treated as a constant.

    Parameters
    ----------
    w : Tensor
        Non-negative weights, 1-D.
    reference : Tensor, optional
        Positive reference weights (e.g. design weights); the dispersion of
        the adjustment ``w / reference`` is measured instead.
    reduce : callable, optional
        Applied to the stacked sums over units before the formula (e.g. an
        all-reduce over the ranks of a column-sharded fit, so that every
        rank gets the penalty of all households); None: this ``w`` is all.

    Returns
    -------
    Tensor
        Scalar (0 when all non-zero entries are equal, or when fewer than one
        entry is non-zero).

    Examples
    --------
    >>> round(dispersion_penalty(torch.tensor([1.0, 3.0, 0.0])).item(), 6)
    0.25
    >>> dispersion_penalty(torch.tensor([2.0, 2.0, 0.0])).item()
    0.0
    """
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 1:
        raise ValueError(f"w must be 1-D, got shape {tuple(w.shape)}")
    x = w
    if reference is not None:
        _check_pair(w, reference)
        x = w / reference.to(device=w.device, dtype=w.dtype)
    n = (x != 0).sum().to(w.dtype)
    s1 = x.sum()
    s2 = (x * x).sum()
    if reduce is not None:
        n, s1, s2 = reduce(torch.stack([n, s1, s2]))
    if float(n.item()) < 1 or float(s1.detach().abs().item()) == 0.0:
        return (x * 0).sum()
    return n * s2 / (s1 * s1) - 1.0


def ratio_bounds(
    max_weight_ratio: RatioBound, *, argument: str = "max_weight_ratio"
) -> tuple[float, float]:
    """Interval ``(lo, hi)`` allowed for ``w / reference`` by a ``max_weight_ratio`` setting.

    Parameters
    ----------
    max_weight_ratio : float, (lo, hi) or None
        ``R > 1`` gives ``(1/R, R)``; a pair gives itself (``0 <= lo <= 1 <= hi``,
        ``hi`` may be ``inf``); ``None`` gives ``(0, inf)`` (only non-negativity).
    argument : str
        Name used in error messages.

    Returns
    -------
    tuple of float

    Examples
    --------
    >>> ratio_bounds(4)
    (0.25, 4.0)
    >>> ratio_bounds((0.5, 3))
    (0.5, 3.0)
    >>> ratio_bounds(None)
    (0.0, inf)
    """
    if max_weight_ratio is None:
        return 0.0, math.inf
    if isinstance(max_weight_ratio, bool):
        raise TypeError(f"{argument} must be a number > 1 or a pair (lo, hi), got a bool")
    if isinstance(max_weight_ratio, (int, float, np.integer, np.floating)):
        r = float(max_weight_ratio)
        if not (r > 1.0) or math.isnan(r):
            raise ValueError(
                f"{argument} must be > 1 (weights may move between 1/R and R times their "
                f"reference), got {max_weight_ratio!r}; e.g. max_weight_ratio=5"
            )
        return 1.0 / r, r
    try:
        lo, hi = (float(v) for v in max_weight_ratio)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(
            f"{argument} must be a number > 1, a pair (lo, hi) or None, got {max_weight_ratio!r}"
        ) from None
    if not (0.0 <= lo <= 1.0 <= hi) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"{argument}=(lo, hi) needs 0 <= lo <= 1 <= hi so that the reference weights "
            f"themselves are allowed, got ({lo}, {hi})"
        )
    return lo, hi


def _as_float64(x: Any, argument: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{argument} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{argument} contains NaN or infinite values; replace them first")
    return arr


def inflate_design_weights(design_weights: Any, support: Any) -> np.ndarray:
    """Design weights of the kept households, scaled up to carry the whole population total.

    ``q_k = d_k * sum(d) / sum_{j in support} d_j`` for ``k`` in ``support``:
    the reference weights that calibration distances and ``max_weight_ratio``
    bounds are measured against once households have been dropped.

    Parameters
    ----------
    design_weights : array-like
        Positive design weights of all households, length ``n``.
    support : array-like of int or bool
        Kept households: indices, or a boolean mask of length ``n``.

    Returns
    -------
    numpy.ndarray
        Length ``len(support)`` (indices) or ``mask.sum()``, float64.

    Examples
    --------
    >>> inflate_design_weights([1.0, 1.0, 2.0, 4.0], [0, 2]).tolist()
    [2.6666666666666665, 5.333333333333333]
    """
    d = _as_float64(design_weights, "design_weights")
    if (d <= 0).any():
        raise ValueError("design_weights must be positive; drop zero-weight households first")
    sup = np.asarray(support)
    if sup.dtype == bool:
        if sup.shape != d.shape:
            raise ValueError(
                f"support as a boolean mask must have length {d.size}, got {sup.shape}"
            )
        sup = np.flatnonzero(sup)
    if sup.size == 0:
        raise ValueError("support is empty; keep at least one household")
    kept = d[sup.astype(np.int64)]
    return kept * (d.sum() / kept.sum())


def clip_weight_ratio(w: Any, reference: Any, max_weight_ratio: RatioBound) -> Any:
    """Clip non-zero weights into ``[lo * reference, hi * reference]`` (zeros stay zero).

    Works on torch tensors (returns a tensor, differentiable where not
    clipped) and numpy arrays (returns a new array); the input is not modified.

    Examples
    --------
    >>> clip_weight_ratio(np.array([0.0, 1.0, 10.0]), np.array([2.0, 2.0, 2.0]), 4).tolist()
    [0.0, 1.0, 8.0]
    """
    lo, hi = ratio_bounds(max_weight_ratio)
    if isinstance(w, Tensor):
        ref = torch.as_tensor(reference, dtype=w.dtype, device=w.device)
        clipped = torch.minimum(torch.maximum(w, lo * ref), hi * ref)
        return torch.where(w != 0, clipped, torch.zeros_like(w))
    w_arr = np.asarray(w, dtype=np.float64)
    ref_arr = np.asarray(reference, dtype=np.float64)
    out = np.clip(w_arr, lo * ref_arr, hi * ref_arr)
    return np.where(w_arr != 0, out, 0.0)


def ratio_bound_penalty(
    w: Tensor,
    reference: Tensor,
    max_weight_ratio: RatioBound,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Squared hinge on ``w / reference`` leaving ``[lo, hi]``, mean over non-zero weights.

    A differentiable way to enforce ``max_weight_ratio`` during gate training
    (polishing enforces it exactly).

    Examples
    --------
    >>> w = torch.tensor([0.0, 1.0, 10.0]); q = torch.full((3,), 2.0)
    >>> round(ratio_bound_penalty(w, q, 4).item(), 6)   # (10/2 - 4)^2 / 2 kept
    0.5
    """
    _check_pair(w, reference)
    lo, hi = ratio_bounds(max_weight_ratio)
    r = w / reference.to(device=w.device, dtype=w.dtype)
    mask = (w != 0).to(w.dtype)
    over = torch.relu(r - hi) if math.isfinite(hi) else torch.zeros_like(r)
    under = torch.relu(lo - r)
    total = ((over * over + under * under) * mask).sum()
    n = mask.sum()
    if reduce is not None:
        total, n = reduce(torch.stack([total, n]))
    return total / n.clamp_min(1.0)
