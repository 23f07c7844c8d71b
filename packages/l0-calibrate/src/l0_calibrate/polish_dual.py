"""The dual Newton solver behind :mod:`l0_calibrate.polish`: exact, penalised and band-penalised calibration.

Bounded calibration ``minimise sum_k q_k G(w_k / q_k)`` subject to
``Xs w = ts`` (rows scaled so errors are relative) is solved through its
convex dual by a damped (semismooth) Newton method on the Lagrange
multipliers ``lam``: the weights are ``w_k = q_k F(x_k' lam)`` with
``F = clip(1 + u)`` (chi2) or ``clip(exp(u))`` (raking).

* :func:`_newton` -- the damped Newton iteration (dense Cholesky up to
  ``_DENSE_HESSIAN_MAX`` rows, preconditioned CG above: by the block Schur
  factorisation of :mod:`l0_calibrate.polish_blocks` where the targets
  split into wide rows and small independent groups, else by Jacobi),
  exact or with a quadratic (optionally band-shaped) penalty on the errors;
* :func:`_band_penalty` -- the conjugate of the band penalty;
* :func:`_penalised` -- the least-squares fallback by continuation on the ridge,
  then the band steepened step by step;
* :func:`_independent_rows` -- a maximal set of independent constraint rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .polish_blocks import BlockSchur, row_blocks

__all__: list[str] = []

#: Dense Newton systems (Cholesky, O(m^3)) up to this many rows; above, inexact
#: Newton steps by CG, linear in the kept columns' non-zeros per iteration
#: (at 2,000 rows and 5,000 kept households CG is already 3x faster).
_DENSE_HESSIAN_MAX = 1000
#: Forcing terms of the inexact Newton steps above ``_DENSE_HESSIAN_MAX`` rows:
#: CG stops at ``rtol = clip(_CG_FORCING * max|g|, _CG_RTOL_MIN, _CG_FORCING_MAX)``.
_CG_FORCING = 1.0
_CG_FORCING_MAX = 0.1
_CG_RTOL_MIN = 1e-10
#: Most CG iterations per Newton step.
_CG_MAXITER = 500
#: CG iterations allowed with the previous step's block factorisation before
#: it is recomputed (a factorisation costs about as much as 100 iterations).
_CG_REUSE_ITERS = 25
#: Most CG iterations with a fresh block factorisation (it is exact: more
#: means the system is inconsistent, i.e. the constraints cannot hold).
_CG_BLOCK_MAXITER = 50
#: Newton steps without halving the gradient after which exact calibration is
#: declared infeasible (Jacobi CG: inexact steps; exact factorisations: fewer).
_STALL_ITERS = 30
_STALL_ITERS_EXACT = 10
_BAND_OUTER = 1e-6


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
    stall_tol: float | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Damped Newton on the dual ``phi(lam) = sum q G*(Xs' lam) - lam' ts + sum H(lam_i)``.

    ``rho = None`` is exact calibration (``H = 0``); a positive ``rho`` is
    the dual of penalised calibration
    ``sum q G(r) + sum_i h_i(e_i)``, ``e = Xs w - ts``, which always has a
    solution: ``h_i(e) = e^2 / (2 rho_i)`` (``H = rho lam^2 / 2``), or with
    a ``band`` ``h_i(e) = e^2 / (2 rho_i) + (|e| - band_i)_+^2 / (2 outer rho_i)``,
    a steep extra penalty on the part of an error beyond the band (``H`` is
    then a piecewise quadratic, C1, see :func:`_band_penalty`).

    ``stall_tol``: when the iteration stops making progress (round-off) with
    the largest gradient entry at most this, the solve counts as converged.
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
    blocks = row_blocks(Xs) if m > _DENSE_HESSIAN_MAX else None
    schur = None if blocks is None else BlockSchur(Xs, blocks)
    pre: list[BlockSchur | None] = [None]
    stall = _STALL_ITERS if schur is None else _STALL_ITERS_EXACT
    near = stall_tol if stall_tol is not None else -1.0
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
        elif gmax <= near and it - best_it >= 2:  # at the round-off floor
            return lam, r, it, True
        elif rho is None and it - best_it >= stall:  # no progress: likely infeasible
            return lam, r, it, False
        D = q * dr
        if m <= _DENSE_HESSIAN_MAX:
            XD = Xs.multiply(D).tocsr()
            H = np.asarray((XD @ XsT).todense())
            H[np.diag_indices(m)] += pen_hess
            shift = mu * max(float(np.max(np.diag(H))), 1e-300)
            step = _solve_psd(H, -g, shift)
        else:
            # Inexact Newton (Eisenstat & Walker 1996): a loose CG solve far from
            # the solution, tighter as the gradient shrinks (superlinear
            # convergence at a fraction of the CG iterations of a full solve).
            eta = min(_CG_FORCING_MAX, max(_CG_RTOL_MIN, _CG_FORCING * gmax))
            step = _cg_step(Xs, XsT, D, pen_hess, g, mu, rtol=eta, schur=schur, pre=pre)
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
            if gmax <= near:  # no descent left at the round-off floor
                return lam, r, it + 1, True
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
    Xs: Any,
    XsT: Any,
    D: np.ndarray,
    pen: np.ndarray,
    g: np.ndarray,
    mu: float,
    rtol: float = _CG_RTOL_MIN,
    schur: BlockSchur | None = None,
    pre: list[BlockSchur | None] | None = None,
) -> np.ndarray:
    """A Newton step ``(Xs D Xs' + pen + shift) step = -g`` by preconditioned CG to ``rtol``.

    Each CG iteration is two sparse products with the kept columns (linear
    in their non-zeros). The preconditioner is the block factorisation
    ``schur`` when given (``pre[0]`` holds the last one: it is reused while
    CG converges within ``_CG_REUSE_ITERS`` iterations, else refactorised),
    else the diagonal (Jacobi); at most ``_CG_MAXITER`` iterations.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    m = Xs.shape[0]
    diag = np.asarray(Xs.multiply(Xs).multiply(D).sum(axis=1)).ravel() + pen
    shift = mu * max(float(diag.max()), 1e-300)

    def hv(x: np.ndarray) -> np.ndarray:
        return Xs @ (D * (XsT @ x)) + (pen + shift) * x

    A = LinearOperator((m, m), matvec=hv, dtype=np.float64)
    if schur is not None:
        held: list[BlockSchur | None] = pre if pre is not None else [None]
        last = held[0]
        if last is not None:
            reuse = LinearOperator((m, m), matvec=last.solve, dtype=np.float64)
            sol, info = cg(A, -g, M=reuse, rtol=rtol, maxiter=_CG_REUSE_ITERS)
            if info == 0:
                return sol
        try:
            fresh = schur.factor(D, pen + shift + np.zeros(m))
        except np.linalg.LinAlgError:
            held[0] = None
        else:
            held[0] = fresh
            precond = LinearOperator((m, m), matvec=fresh.solve, dtype=np.float64)
            return cg(A, -g, M=precond, rtol=rtol, maxiter=_CG_BLOCK_MAXITER)[0]
    precond = LinearOperator((m, m), matvec=lambda x: x / (diag + shift), dtype=np.float64)
    sol, _ = cg(A, -g, M=precond, rtol=rtol, maxiter=_CG_MAXITER)
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
