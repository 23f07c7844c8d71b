"""Cover seed and repair of the select pipeline, on a candidate pool of columns.

* :func:`_cover_seed` -- the households of a sparse basic solution of the
  linear programme "every target within the band" (scipy's HiGHS);
* :func:`_repair` -- exchanges aimed at the target furthest outside the
  band, each kept only if the polished excess shrinks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from .polish import PolishResult

__all__: list[str] = []

logger = logging.getLogger("l0_calibrate.selection")

#: Candidate pool of the cover LP and the repair, in multiples of ``target_count`` ...
_POOL_FACTOR = 4
#: ... and at least this many households beyond it.
_POOL_MIN = 30_000
#: Refused repair exchanges in a row after which the repair stops.
_REPAIR_PATIENCE = 8


def _cover_seed(
    X: Any,
    ts: np.ndarray,
    d: np.ndarray,
    count: int,
    band: float,
    hi: float,
    q: np.ndarray | None = None,
) -> np.ndarray:
    """Households of a sparse basic solution that keeps every target within ``band``.

    Solves the linear programme ``minimise sum_k c_k w_k / q_k`` subject to
    ``ts - band <= X w <= ts + band`` (``X`` row-scaled so the band is in
    relative terms) and ``0 <= w_k <= hi q_k`` over *all* households, with
    ``q_k = d_k sum(d) / (count mean(d))`` the weight a kept household would
    carry, by the HiGHS dual simplex; then once more with
    ``c_k = 1 / (w_k + q_k / 10)`` (a reweighted-L1 step towards fewer
    households). A basic solution has at most as many non-zeros as tight
    constraints, typically far fewer than the targets when the band leaves
    slack. Its households cover every cell with about the right weight, so
    a support that contains them can keep every target within the band.
    ``band = 0`` asks for an exact solution. Returns the sorted indices (at
    most ``count``: the largest weights; for ``band = 0`` none if the basic
    solution needs more than ``count``), or an empty array when the band
    cannot hold even with every household. ``q`` overrides the reference
    weights (when ``X`` holds only some households' columns).
    """
    import scipy.sparse as sp
    from scipy.optimize import linprog

    n = X.shape[1]
    if q is None:
        q = d * d.sum() / (count * d.mean())
    A = sp.vstack([X, -X]).tocsr()
    b = np.concatenate([ts + band, -(ts - band)])
    bounds = np.column_stack([np.zeros(n), hi * q if math.isfinite(hi) else np.full(n, np.inf)])
    cost = 1.0 / q
    w = None
    for _ in range(2):
        res = linprog(cost, A_ub=A, b_ub=b, bounds=bounds, method="highs-ds")
        if res.status != 0:
            if w is None:
                logger.info(
                    "select: no weights keep every target within %g (%s)", band, res.message
                )
                return np.zeros(0, dtype=np.int64)
            break
        w = res.x
        cost = 1.0 / (w + 0.1 * q)
    assert w is not None
    nz = np.flatnonzero(w > 1e-9 * q)
    if nz.size > count:
        nz = nz[np.argsort(-w[nz] / q[nz], kind="stable")[:count]]
        return np.sort(nz) if band > 0 else np.zeros(0, dtype=np.int64)
    return np.sort(nz)


def _repair(
    M: Any,
    t: np.ndarray,
    support: np.ndarray,
    polish_fn: Any,
    result: PolishResult,
    band: float,
    d: np.ndarray,
    max_moves: int,
) -> tuple[np.ndarray, PolishResult, int]:
    """Exchange households until every target is within ``band`` after polishing (or no move helps).

    Each move looks at the target furthest outside the band. If it is
    over-estimated, a kept household of its cell leaves (the one whose
    removal most reduces the squared relative errors elsewhere) and the
    best household outside the cell joins; if under-estimated, the best
    household of its cell joins and the best kept household outside it
    leaves. "Best" is the first-order change of the sum of squared relative
    errors at the reference weight. The exchange is kept only if the
    polished total excess ``sum (|e| - band)_+`` shrinks; a target whose
    move was refused is not tried again, and after ``_REPAIR_PATIENCE``
    refusals in a row the repair stops (each try costs a polish).
    """
    A = M.tocsc()
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(t) > 0, 1.0 / np.where(np.abs(t) > 0, np.abs(t), 1.0), 0.0)
    A = (A.T.multiply(inv)).T.tocsc()
    AT = A.T.tocsr()
    rows = A.tocsr()
    col_sq = np.asarray(A.multiply(A).sum(axis=0)).ravel()
    n = A.shape[1]

    def excess(res: PolishResult) -> float:
        e = np.abs(np.nan_to_num(res.rel_error, posinf=1e6, neginf=1e6))
        return float(np.maximum(e - band, 0.0).sum())

    tried: set[int] = set()
    moves = refused = 0
    current = excess(result)
    for _ in range(max_moves):
        if refused >= _REPAIR_PATIENCE:
            break
        e = np.nan_to_num(result.rel_error, posinf=1e6, neginf=-1e6)
        gap = np.abs(e) - band
        gap[list(tried)] = -np.inf
        i = int(np.argmax(gap))
        if gap[i] <= 1e-9:
            break
        tried.add(i)
        mask = np.zeros(n, dtype=bool)
        mask[support] = True
        q = d * d.sum() / d[mask].sum()
        g = np.asarray(AT @ e).ravel()  # sum_j a_jk e_j
        add_score = 2.0 * q * g + q * q * col_sq  # change of sum e^2 when k joins
        w = result.weights
        drop_score = -2.0 * w * g + w * w * col_sq  # ... when kept k leaves
        in_cell = np.zeros(n, dtype=bool)
        in_cell[rows.indices[rows.indptr[i] : rows.indptr[i + 1]]] = True
        if e[i] > 0:
            leave_pool = np.flatnonzero(mask & in_cell)
            join_pool = np.flatnonzero(~mask & ~in_cell)
        else:
            leave_pool = np.flatnonzero(mask & ~in_cell)
            join_pool = np.flatnonzero(~mask & in_cell)
        if leave_pool.size == 0 or join_pool.size == 0:
            continue
        k = leave_pool[np.argmin(drop_score[leave_pool])]
        j = join_pool[np.argmin(add_score[join_pool])]
        cand = np.sort(np.append(support[support != k], j))
        res = polish_fn(cand)
        new = excess(res)
        if new < current - 1e-12:
            support, result, current = cand, res, new
            moves += 1
            refused = 0
            tried.discard(i)
        else:
            refused += 1
    return support, result, moves
