"""Polishing: re-solve the weights on a fixed set of households so the targets hold exactly.

Once a selection has chosen which households keep a non-zero weight (the
*support*), :func:`polish_weights` recomputes their weights by bounded
calibration (Deville & Särndal 1992; Deville, Särndal & Sautory 1993):

    minimise   sum_k q_k G(w_k / q_k)
    subject to sum_k M[i, k] w_k = t_i          for every target i
               lo <= w_k / q_k <= hi

where ``q`` are the reference weights (the caller's ``init_weights`` on the
support, else the design weights inflated to the population total, see
:func:`l0_calibrate.regularizers.inflate_design_weights`), ``G`` the
``"chi2"`` or ``"raking"`` distance and ``(lo, hi)`` the
``max_weight_ratio`` interval. The problem is solved through its convex dual
by a damped (semismooth) Newton method on the Lagrange multipliers: the
weights are ``w_k = q_k F(x_k' lambda)`` with ``F = clip(1 + u)`` (chi2) or
``clip(exp(u))`` (raking). Rows are scaled by ``|t_i|`` so that the
stopping rule ``max_i |estimate_i / t_i - 1| <= tol`` is in relative terms.

When the constraints cannot all hold (more targets than households, a cell
no kept household belongs to, bounds too tight), the Newton iteration does
not converge and a *penalised* calibration takes over: it minimises the
weighted squared *relative* errors plus a small calibration-distance ridge
under the same bounds (the same dual Newton method with a quadratic term,
by continuation on the ridge). With ``band`` (default 5%) the part of an
error beyond the band is penalised a million times more steeply, so every
target stays within ``+-band`` whenever the bounds allow it (the dual term
becomes a piecewise quadratic, and the steep part is introduced step by
step). Every target still missed by more than ``infeasible_tol`` is flagged
in ``PolishResult.infeasible``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from .polish_dual import _independent_rows, _newton, _penalised
from .problem import Problem, column_view
from .regularizers import RatioBound, _check_distance, inflate_design_weights, ratio_bounds
from .views import as_scipy_csr, relative_errors

__all__ = ["PolishResult", "as_scipy_csr", "polish_weights", "polish_columns", "relative_errors"]

logger = logging.getLogger(__name__)


@dataclass
class PolishResult:
    """Outcome of :func:`polish_weights`.

    Attributes
    ----------
    weights : numpy.ndarray
        Full-length weights (``n_cols``), 0 outside the support.
    converged : bool
        True when every target is met within ``tol`` (relative).
    estimates : numpy.ndarray
        ``M @ weights`` for every target.
    rel_error : numpy.ndarray
        ``(estimates - targets) / |targets|`` (``0`` where both are 0,
        ``+-inf`` where only the target is 0).
    infeasible : numpy.ndarray of bool
        Targets missed by more than ``infeasible_tol`` after polishing.
    method : str
        ``"newton"`` (exact dual solve) or ``"penalised"`` (fallback).
    n_iter : int
        Newton iterations used.
    multipliers : numpy.ndarray
        Lagrange multipliers of the (row-scaled) constraints; empty after the fallback.
    """

    weights: np.ndarray
    converged: bool
    estimates: np.ndarray
    rel_error: np.ndarray
    infeasible: np.ndarray
    method: str = "newton"
    n_iter: int = 0
    multipliers: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def max_abs_rel_error(self) -> float:
        """Largest absolute relative error (0 for no targets)."""
        return float(np.max(np.abs(self.rel_error))) if self.rel_error.size else 0.0


# ---------------------------------------------------------------- inputs
def _as_vector(x: Any, argument: str, n: int | None = None) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.array(x, dtype=np.float64).reshape(-1) if np.ndim(x) <= 1 else None
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a 1-D array of numbers") from None
    if arr is None:
        raise ValueError(f"{argument} must be 1-D, got shape {np.shape(x)}")
    if n is not None and arr.size != n:
        raise ValueError(f"{argument} must have length {n}, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{argument} contains NaN or infinite values; replace them first")
    return arr


def _support_indices(support: Any, n_cols: int) -> np.ndarray:
    if isinstance(support, Tensor):
        support = support.detach().cpu().numpy()
    sup = np.asarray(support)
    if sup.dtype == bool:
        if sup.shape != (n_cols,):
            raise ValueError(
                f"support as a boolean mask must have length n_cols={n_cols}, got shape {sup.shape}"
            )
        sup = np.flatnonzero(sup)
    if sup.ndim != 1 or (sup.size and not np.issubdtype(sup.dtype, np.integer)):
        raise TypeError("support must be a 1-D array of household indices or a boolean mask")
    if sup.size == 0:
        raise ValueError("support is empty; keep at least one household")
    if sup.min() < 0 or sup.max() >= n_cols:
        raise ValueError(f"support indices must lie in [0, {n_cols}), got {sup.min()}..{sup.max()}")
    if np.unique(sup).size != sup.size:
        raise ValueError("support contains repeated household indices; pass each household once")
    return sup.astype(np.int64)


def _check_band(band: Any) -> None:
    """Validate a relative error band: a positive finite number, or None for no band."""
    if band is not None and not (
        isinstance(band, (int, float))
        and not isinstance(band, bool)
        and math.isfinite(band)
        and band > 0
    ):
        raise ValueError(
            f"band must be a positive relative error (e.g. 0.05 for 5%) or None, got {band!r}"
        )


def polish_weights(
    M: Any,
    targets: Any,
    support: Any,
    *,
    design_weights: Any = None,
    init_weights: Any = None,
    distance: str = "chi2",
    max_weight_ratio: RatioBound = None,
    target_weights: Any = None,
    max_iter: int = 100,
    tol: float = 1e-9,
    infeasible_tol: float = 1e-6,
    ridge: float = 1e-4,
    band: float | None = 0.05,
) -> PolishResult:
    """Re-solve the weights of the households in ``support`` so the targets hold exactly.

    Parameters
    ----------
    M : Problem, scipy.sparse matrix, numpy array, torch tensor or l0_core.SparseOperator
        Estimate matrix, shape ``(n_targets, n_cols)``: ``M @ w`` are the
        weighted estimates. Not modified, and never copied whole: only the
        support's columns are read (a torch tensor is converted once). A
        :class:`~l0_calibrate.problem.Problem` also supplies the defaults of
        ``targets``, ``target_weights`` (its loss weights) and ``design_weights``.
    targets : array-like or None
        Target totals, length ``n_targets`` (None: the Problem's).
    support : array-like of int or bool
        Households allowed a non-zero weight (indices or a mask of length ``n_cols``).
    design_weights : array-like, optional
        Positive design weights of all ``n_cols`` households (default 1).
    init_weights : array-like, optional
        Reference weights ``q`` to stay close to, length ``n_cols`` (only the
        support is read; those entries must be positive). Default: the design
        weights inflated to the population total,
        ``q_k = d_k * sum(d) / sum_{support} d``.
    distance : {"chi2", "raking"}, default "chi2"
        Calibration distance (see :mod:`l0_calibrate.regularizers`).
    max_weight_ratio : float, (lo, hi) or None
        Bounds on ``w / q`` for the kept households; ``None`` only requires
        ``w >= 0``.
    target_weights : array-like, optional
        Non-negative importance of each target in the least-squares fallback
        (the exact solve meets all targets regardless); default 1.
    max_iter : int, default 100
        Newton iterations before falling back.
    tol : float, default 1e-9
        Convergence: largest absolute relative target error.
    infeasible_tol : float, default 1e-6
        A target whose final absolute relative error exceeds this is flagged.
    ridge : float, default 1e-4
        Weight of the calibration-distance term (mean distance per unit of
        reference weight) against the sum of weighted squared relative
        errors in the fallback; smaller fits the targets more closely.
    band : float or None, default 0.05
        Fallback only: the part of a relative error beyond ``band`` is
        penalised a million times more steeply than the error inside it, so
        that when no exact solution exists the fallback still keeps *every*
        target within ``+-band`` whenever the bounds allow it, and otherwise
        the excesses are as small as possible (the squared relative errors
        are minimised inside the band). ``None``: plain weighted squared
        relative errors (which may leave a few targets far off to fit the
        rest more closely). A zero target's band is relative to its row's
        size at the reference weights.

    Returns
    -------
    PolishResult

    Examples
    --------
    >>> M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    >>> res = polish_weights(M, [10.0, 27.0], [0, 2, 3])
    >>> res.converged, float(res.weights[1])
    (True, 0.0)
    >>> np.allclose(M @ res.weights, [10.0, 27.0])
    True
    """
    kind = _check_distance(distance, "distance")
    lo, hi = ratio_bounds(max_weight_ratio)
    (n_targets, n_cols), columns, _ = column_view(M, "M")
    if isinstance(M, Problem):
        targets = M.targets if targets is None else targets
        target_weights = M.loss_weights if target_weights is None else target_weights
        design_weights = M.design_weights if design_weights is None else design_weights
    t = _as_vector(targets, "targets", n_targets)
    sup = _support_indices(support, n_cols)
    if design_weights is None:
        d = np.ones(n_cols)
    else:
        d = _as_vector(design_weights, "design_weights", n_cols)
        if (d <= 0).any():
            raise ValueError("design_weights must be positive; drop zero-weight households first")
    if init_weights is None:
        q = inflate_design_weights(d, sup)
    else:
        q = _as_vector(init_weights, "init_weights", n_cols)[sup]
        if (q <= 0).any():
            raise ValueError(
                "init_weights must be positive on the support (they are the reference weights "
                "to stay close to); pass support=np.flatnonzero(init_weights > 0)"
            )
    if target_weights is None:
        v = np.ones(n_targets)
    else:
        v = _as_vector(target_weights, "target_weights", n_targets)
        if (v < 0).any():
            raise ValueError("target_weights must be non-negative")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    for name, val in (("tol", tol), ("infeasible_tol", infeasible_tol), ("ridge", ridge)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a positive number, got {val!r}")
    _check_band(band)

    return polish_columns(
        columns(sup),
        t,
        sup,
        n_cols,
        q,
        v,
        kind=kind,
        lo=lo,
        hi=hi,
        max_iter=max_iter,
        tol=tol,
        infeasible_tol=infeasible_tol,
        ridge=ridge,
        band=band,
    )


def polish_columns(
    X: Any,
    t: np.ndarray,
    sup: np.ndarray,
    n_cols: int,
    q: np.ndarray,
    v: np.ndarray,
    *,
    kind: str,
    lo: float,
    hi: float,
    max_iter: int = 100,
    tol: float = 1e-9,
    infeasible_tol: float = 1e-6,
    ridge: float = 1e-4,
    band: float | None = 0.05,
) -> PolishResult:
    """:func:`polish_weights` on the kept columns only, without argument checks.

    ``X`` is the float64 scipy CSR matrix of the kept households' columns
    (``n_targets x len(sup)``, e.g. :meth:`Problem.columns
    <l0_calibrate.problem.Problem.columns>`), ``q`` their reference weights
    and ``v`` the target weights; no copy of the whole matrix is needed.
    ``kind`` is ``"chi2"`` or ``"raking"`` and ``(lo, hi)`` the bounds on
    ``w / q``; the other arguments are those of :func:`polish_weights`.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 4.0]]))
    >>> res = polish_columns(X, np.array([10.0, 25.0]), np.array([0, 3]), 4, np.ones(2), np.ones(2),
    ...                      kind="chi2", lo=0.0, hi=np.inf)
    >>> res.weights.round(6).tolist(), res.converged
    ([5.0, 0.0, 0.0, 5.0], True)
    """
    # Row scale: |t_i|, or for a zero target the row's size at the reference weights.
    row_size = np.asarray(abs(X) @ q).ravel()
    scale = np.where(np.abs(t) > 0, np.abs(t), np.where(row_size > 0, row_size, 1.0))
    empty_rows = (X.getnnz(axis=1) == 0) & (t != 0)
    active = ~empty_rows
    Xs = (X[active].T.multiply(1.0 / scale[active])).T.tocsr()
    ts = t[active] / scale[active]

    rows = _independent_rows(Xs, q)
    # Round-off floor: at tens of thousands of rows the gradient can stall a
    # little above ``tol``; a stall within ``min(infeasible_tol, 100 tol)`` counts.
    lam_rows, r, n_iter, ok = _newton(
        Xs[rows], ts[rows], q, kind, lo, hi, max_iter, tol,
        stall_tol=min(infeasible_tol, 100.0 * tol),
    )
    lam = np.zeros(ts.size)
    lam[rows] = lam_rows
    if ok:  # the dropped (dependent) rows hold too only if they were consistent
        ok = bool(np.max(np.abs(Xs @ (q * r) - ts), initial=0.0) <= infeasible_tol)
    method = "newton"
    if not ok:
        logger.info(
            "polish: exact calibration not reached in %d iterations; penalised fallback", n_iter
        )
        band_s = None if band is None else np.full(ts.size, float(band))
        lam, r, extra = _penalised(
            Xs, ts, q, v[active], kind, lo, hi, ridge, max_iter, tol, band=band_s
        )
        n_iter += extra
        method = "penalised"
    w_sup = q * r
    weights = np.zeros(n_cols)
    weights[sup] = w_sup
    estimates = np.asarray(X @ w_sup).ravel()
    rel = relative_errors(estimates, t)
    infeasible = np.abs(rel) > infeasible_tol
    converged = bool(ok and not empty_rows.any())
    multipliers = np.zeros(t.size)
    multipliers[active] = lam
    return PolishResult(
        weights=weights,
        converged=converged,
        estimates=estimates,
        rel_error=rel,
        infeasible=infeasible,
        method=method,
        n_iter=n_iter,
        multipliers=multipliers,
    )


#: The earlier (private) name of :func:`polish_columns`.
_polish_support = polish_columns
