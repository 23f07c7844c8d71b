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
import torch
from torch import Tensor

from .regularizers import RatioBound, _check_distance, inflate_design_weights, ratio_bounds

__all__ = ["PolishResult", "as_scipy_csr", "polish_weights", "relative_errors"]

logger = logging.getLogger(__name__)

_DENSE_HESSIAN_MAX = 3000
_STALL_ITERS = 30
_BAND_OUTER = 1e-6


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
def as_scipy_csr(matrix: Any, argument: str = "M") -> Any:
    """Any supported matrix (scipy.sparse, numpy, torch dense/sparse, SparseOperator) as scipy CSR float64.

    The caller's object is not modified.

    Examples
    --------
    >>> as_scipy_csr(np.eye(2)).toarray().tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    import scipy.sparse as sp
    from l0_core import SparseOperator

    if sp.issparse(matrix):
        if matrix.ndim != 2:
            raise ValueError(f"{argument} must be 2-D, got shape {matrix.shape}")
        out = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        if out.nnz and not np.isfinite(out.data).all():
            raise ValueError(
                f"{argument} contains NaN or infinite values; replace them (e.g. with 0)"
            )
        return out
    op = SparseOperator.from_any(
        matrix, dtype=torch.float64, transpose_copy=False, argument=argument
    )
    return _operator_to_csr(op)


def _operator_to_csr(op: Any) -> Any:
    import scipy.sparse as sp

    t = op.csr_t.cpu()
    csr_t = sp.csr_matrix(
        (
            t.values().numpy().astype(np.float64),
            t.col_indices().numpy().astype(np.int64),
            t.crow_indices().numpy().astype(np.int64),
        ),
        shape=(op.shape[1], op.shape[0]),
    )
    return csr_t.T.tocsr()


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


def relative_errors(estimates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(estimate - target) / |target|``; 0 where both are 0, +-inf where only the target is.

    Examples
    --------
    >>> relative_errors(np.array([1.1, 0.0, 2.0]), np.array([1.0, 0.0, 0.0])).round(6).tolist()
    [0.1, 0.0, inf]
    """
    diff = estimates - targets
    denom = np.abs(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), np.sign(diff) * np.inf)
    return np.where((denom == 0) & (diff == 0), 0.0, out)


# ------------------------------------------------------- dual functions
def _ratio(u: np.ndarray, kind: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """``r = F(u)`` clipped to [lo, hi] and its derivative (0 where clipped)."""
    if kind == "chi2":
        raw = 1.0 + u
        d_raw = np.ones_like(u)
    else:
        raw = np.exp(np.minimum(u, 700.0))
        d_raw = raw
    r = np.clip(raw, lo, hi)
    inside = (raw > lo) & (raw < hi)
    return r, np.where(inside, d_raw, 0.0)


def _conjugate(u: np.ndarray, r: np.ndarray, kind: str) -> np.ndarray:
    """``G*(u) = u r - G(r)`` at ``r = F(u)`` (convex, C1 in u)."""
    if kind == "chi2":
        g = 0.5 * (r - 1.0) ** 2
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rlogr = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0)
        g = rlogr - r + 1.0
    return u * r - g


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
    M : scipy.sparse matrix, numpy array, torch tensor or l0_core.SparseOperator
        Estimate matrix, shape ``(n_targets, n_cols)``: ``M @ w`` are the
        weighted estimates. Not modified.
    targets : array-like
        Target totals, length ``n_targets``.
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
    X_full = as_scipy_csr(M, "M")
    n_targets, n_cols = X_full.shape
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

    return _polish_support(
        X_full[:, sup].tocsr(),
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


def _polish_support(
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
    """:func:`polish_weights` on the kept columns only.

    ``X`` is the float64 scipy CSR matrix of the kept households' columns
    (``n_targets x len(sup)``), ``q`` their reference weights; no copy of
    the whole matrix is needed (the select pipeline gathers these columns
    from its operator).
    """
    # Row scale: |t_i|, or for a zero target the row's size at the reference weights.
    row_size = np.asarray(abs(X) @ q).ravel()
    scale = np.where(np.abs(t) > 0, np.abs(t), np.where(row_size > 0, row_size, 1.0))
    empty_rows = (X.getnnz(axis=1) == 0) & (t != 0)
    active = ~empty_rows
    Xs = (X[active].T.multiply(1.0 / scale[active])).T.tocsr()
    ts = t[active] / scale[active]

    rows = _independent_rows(Xs, q)
    lam_rows, r, n_iter, ok = _newton(Xs[rows], ts[rows], q, kind, lo, hi, max_iter, tol)
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


def _newton(
    Xs: Any,
    ts: np.ndarray,
    q: np.ndarray,
    kind: str,
    lo: float,
    hi: float,
    max_iter: int,
    tol: float,
    rho: np.ndarray | None = None,
    lam0: np.ndarray | None = None,
    band: np.ndarray | None = None,
    outer: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Damped Newton on the dual ``phi(lam) = sum q G*(Xs' lam) - lam' ts + sum H(lam_i)``.

    ``rho = None`` is exact calibration (``H = 0``); a positive ``rho`` is
    the dual of penalised calibration
    ``sum q G(r) + sum_i h_i(e_i)``, ``e = Xs w - ts``, which always has a
    solution: ``h_i(e) = e^2 / (2 rho_i)`` (``H = rho lam^2 / 2``), or with
    a ``band`` ``h_i(e) = e^2 / (2 rho_i) + (|e| - band_i)_+^2 / (2 outer rho_i)``,
    a steep extra penalty on the part of an error beyond the band (``H`` is
    then a piecewise quadratic, C1, see :func:`_band_penalty`).
    """
    m = Xs.shape[0]
    lam = np.zeros(m) if lam0 is None else lam0.copy()
    XsT = Xs.T.tocsr()
    pen = np.zeros(m) if rho is None else rho

    def penalty(lam_: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if band is None or rho is None:
            return 0.5 * float(np.dot(pen, lam_ * lam_)), pen * lam_, pen
        return _band_penalty(lam_, pen, band, outer)

    def evaluate(lam_: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore"):
            u = XsT @ lam_
            r_, dr_ = _ratio(u, kind, lo, hi)
            phi = float(np.dot(q, _conjugate(u, r_, kind)) - np.dot(lam_, ts) + penalty(lam_)[0])
        return (phi if math.isfinite(phi) else math.inf), r_, dr_

    phi, r, dr = evaluate(lam)
    mu = 1e-10
    best, best_it = math.inf, 0
    for it in range(max_iter + 1):
        _, pen_grad, pen_hess = penalty(lam)
        g = Xs @ (q * r) - ts + pen_grad
        gmax = float(np.max(np.abs(g))) if m else 0.0
        # Penalised: lam grows like residual / rho and round-off with it.
        tol_eff = tol if rho is None else tol + 1e-14 * float(np.max(np.abs(lam), initial=0.0))
        if gmax <= tol_eff:
            return lam, r, it, True
        if it == max_iter:
            break
        if gmax < 0.5 * best:
            best, best_it = gmax, it
        elif rho is None and it - best_it >= _STALL_ITERS:  # no progress: likely infeasible
            return lam, r, it, False
        D = q * dr
        if m <= _DENSE_HESSIAN_MAX:
            XD = Xs.multiply(D).tocsr()
            H = np.asarray((XD @ XsT).todense())
            H[np.diag_indices(m)] += pen_hess
            shift = mu * max(float(np.max(np.diag(H))), 1e-300)
            step = _solve_psd(H, -g, shift)
        else:
            step = _cg_step(Xs, XsT, D, pen_hess, g, mu)
        slope = float(np.dot(g, step))
        if not np.isfinite(slope) or slope >= 0:  # not a descent direction: use the gradient
            step, slope = -g, -float(np.dot(g, g))
        alpha = 1.0
        improved = False
        for _ in range(40):
            cand = lam + alpha * step
            phi_c, r_c, dr_c = evaluate(cand)
            # Armijo on phi, or (where phi's changes drown in round-off near the
            # optimum) a clear decrease of the gradient.
            armijo = phi_c <= phi + 1e-4 * alpha * slope
            if not armijo and math.isfinite(phi_c) and phi_c <= phi + 1e-12 * (1.0 + abs(phi)):
                g_c = Xs @ (q * r_c) - ts + penalty(cand)[1]
                armijo = np.max(np.abs(g_c)) < 0.5 * np.max(np.abs(g))
            if armijo:
                lam, phi, r, dr = cand, phi_c, r_c, dr_c
                improved = True
                break
            alpha *= 0.5
        if not improved:
            if mu >= 1e2:
                return lam, r, it + 1, False
            mu *= 100.0
        else:
            mu = max(mu / 10.0, 1e-12)
        # Exact mode: multipliers running off mean the constraints cannot hold.
        if not np.all(np.isfinite(lam)) or (rho is None and np.max(np.abs(lam)) > 1e12):
            return lam, r, it + 1, False
    return lam, r, max_iter, False


def _band_penalty(
    lam: np.ndarray, rho: np.ndarray, band: np.ndarray, outer: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Conjugate ``H`` of ``h(e) = e^2 / (2 rho) + (|e| - band)_+^2 / (2 sigma)``, ``sigma = outer rho``.

    ``H'(lam)`` is the error ``e`` at which ``h'(e) = lam``: ``rho lam`` up to
    the knot ``|lam| = band / rho``, then ``band + rho' (|lam| - knot)`` with
    the flat slope ``rho' = rho sigma / (rho + sigma)``. Returns the value,
    the gradient and the (diagonal) second derivative.
    """
    sigma = outer * rho
    flat = rho * sigma / (rho + sigma)
    knot = band / rho
    a = np.abs(lam)
    beyond = np.maximum(a - knot, 0.0)
    inside = a <= knot
    val = np.where(
        inside, 0.5 * rho * a * a, 0.5 * rho * knot * knot + band * beyond + 0.5 * flat * beyond**2
    )
    grad = np.sign(lam) * np.where(inside, rho * a, band + flat * beyond)
    hess = np.where(inside, rho, flat)
    return float(val.sum()), grad, hess


def _independent_rows(Xs: Any, q: np.ndarray) -> np.ndarray:
    """Indices of a maximal set of linearly independent constraint rows (pivoted Cholesky).

    Redundant targets (a total next to the categories that add up to it)
    make the Newton system singular; they are solved through the
    independent ones and checked afterwards. Above ``_DENSE_HESSIAN_MAX``
    rows all are kept (the CG solver tolerates a singular system).
    """
    m = Xs.shape[0]
    if m == 0 or m > _DENSE_HESSIAN_MAX:
        return np.arange(m)
    from scipy.linalg import lapack

    G = np.asarray((Xs.multiply(q) @ Xs.T).todense())
    d = np.sqrt(np.clip(np.diag(G), 1e-300, None))
    C = G / d[:, None] / d[None, :]
    _, piv, rank, info = lapack.dpstrf(C, lower=1, tol=1e-10)
    return np.sort(piv[:rank] - 1)


def _solve_psd(H: np.ndarray, rhs: np.ndarray, shift: float) -> np.ndarray:
    import scipy.linalg as sla

    A = H + shift * np.eye(H.shape[0])
    try:
        c = sla.cho_factor(A, lower=True, check_finite=False)
        return sla.cho_solve(c, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, rhs, rcond=None)[0]


def _cg_step(
    Xs: Any, XsT: Any, D: np.ndarray, pen: np.ndarray, g: np.ndarray, mu: float
) -> np.ndarray:
    from scipy.sparse.linalg import LinearOperator, cg

    m = Xs.shape[0]
    diag = np.asarray(Xs.multiply(Xs).multiply(D).sum(axis=1)).ravel() + pen
    shift = mu * max(float(diag.max()), 1e-300)

    def hv(x: np.ndarray) -> np.ndarray:
        return Xs @ (D * (XsT @ x)) + (pen + shift) * x

    A = LinearOperator((m, m), matvec=hv, dtype=np.float64)
    precond = LinearOperator((m, m), matvec=lambda x: x / (diag + shift), dtype=np.float64)
    sol, _ = cg(A, -g, M=precond, rtol=1e-10, maxiter=500)
    return sol


def _penalised(
    Xs: Any,
    ts: np.ndarray,
    q: np.ndarray,
    v: np.ndarray,
    kind: str,
    lo: float,
    hi: float,
    ridge: float,
    max_iter: int,
    tol: float,
    band: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Penalised calibration by continuation: ``rho`` from 1e-1 down to ``ridge``, warm-started.

    Minimises ``ridge * sum q G(w/q) / sum q + sum v_i e_i^2 / 2`` (``e`` the
    relative errors) under the bounds; targets with ``v_i = 0`` are ignored.
    With ``band`` (per target, in the same scaled units as ``e``) the part
    of an error beyond ``band_i`` costs ``1 / _BAND_OUTER`` times more, so
    every target is kept within its band whenever the bounds allow it.
    """
    keep = v > 0
    Xk, tk, vk = Xs[keep], ts[keep], v[keep]
    bk = None if band is None else band[keep]
    total_q = float(q.sum())
    lam = np.zeros(int(keep.sum()))
    levels = []
    level = 1e-1
    while level > ridge * 1.0001:
        levels.append(level)
        level /= 10.0
    levels.append(ridge)
    iters = 0
    r = np.clip(np.ones_like(q), lo, hi)
    for level in levels:
        rho = level / (total_q * vk)
        lam_new, r_new, it, _ = _newton(Xk, tk, q, kind, lo, hi, max_iter, tol, rho=rho, lam0=lam)
        iters += it
        if np.all(np.isfinite(r_new)):
            lam, r = lam_new, r_new
    if bk is not None:
        # Steepen the penalty beyond the band step by step from the plain
        # solution; a step whose Newton solve fails (very ill-conditioned
        # when the band cannot hold) is not taken, nor any steeper one.
        e = np.asarray(Xk @ (q * r)).ravel() - tk
        if np.any(np.abs(e) > bk):
            outer = 1e-1
            while outer >= _BAND_OUTER * 0.999:
                lam_new, r_new, it, ok = _newton(
                    Xk, tk, q, kind, lo, hi, max_iter, tol, rho=rho, lam0=lam, band=bk, outer=outer
                )
                iters += it
                if not (ok and np.all(np.isfinite(r_new))):
                    break
                lam, r = lam_new, r_new
                outer /= 10.0
    full = np.zeros(ts.size)
    full[keep] = lam
    return full, r, iters
