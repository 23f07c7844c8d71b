"""Discrete refinement of the select pipeline: exchanges of kept and dropped households.

:func:`_swap_refine` minimises the imbalance of a fixed-size support at
deterministic gates (the gate-training loss, or its Mahalanobis form from
:func:`_whiten`), in passes linear in the non-zeros, over a column source
of :mod:`l0_calibrate.columns`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__: list[str] = []

#: Most entries of the dense rotated matrix of the whitened metric.
_WHITEN_MAX_ENTRIES = 50_000_000
#: Candidates of each side gathered per refinement pass.
_REFINE_POOL = 1024
#: Below this ``nnz * refine_swaps`` the pool is every household (each exchange
#: then updates every score exactly: the plain best-exchange descent).
_FULL_POOL_WORK = 2_000_000_000
#: Most refinement passes (each one product with the matrix and one with its transpose).
_REFINE_PASSES = 100
#: An exchange must lower the squared imbalance by this fraction of it.
_REFINE_RTOL = 1e-9


#: Households per gathered block when the whitened rows are built.
_WHITEN_BLOCK = 1 << 15


def _whiten(
    columns: Callable[[np.ndarray], Any],
    n_cols: int,
    row_w: np.ndarray,
    ts: np.ndarray,
    d: np.ndarray,
) -> tuple[Any, np.ndarray]:
    """Rotate the constraint rows so Euclidean imbalance is the Mahalanobis one.

    ``X = diag(row_w) M`` is read block by block through ``columns`` (a
    gatherer of float64 columns, e.g. :meth:`Problem.columns
    <l0_calibrate.problem.Problem.columns>`), so the whole matrix is never
    copied. With ``G = X diag(d) X' / sum(d)`` (the population second
    moments of the scaled rows) and ``W`` its inverse square root (on its
    range), the squared norm of ``W (X w - t)`` is, to first order, the
    ``CV^2`` of the adjustments a chi-square calibration must make to fix
    the imbalance (``lambda' T lambda`` with ``lambda = T^-1 (t - X w)``):
    minimising it minimises the design effect after polishing. Returns the
    dense rotated rows ``W X`` (as CSR) and ``W ts``.
    """
    import scipy.sparse as sp

    blocks = [np.arange(a, min(a + _WHITEN_BLOCK, n_cols)) for a in range(0, n_cols, _WHITEN_BLOCK)]

    def scaled(idx: np.ndarray) -> Any:
        return sp.csr_matrix(columns(idx).T.multiply(row_w)).tocsc()  # households x targets

    m = row_w.size
    G = np.zeros((m, m))
    for idx in blocks:
        XT = scaled(idx)
        G += np.asarray((XT.T.multiply(d[idx]) @ XT).todense())
    G /= d.sum()
    ev, V = np.linalg.eigh(G)
    keep = ev > ev.max(initial=0.0) * 1e-10
    W = (V[:, keep] / np.sqrt(ev[keep])).T
    out = np.empty((W.shape[0], n_cols))
    for idx in blocks:
        out[:, idx] = np.asarray(scaled(idx) @ W.T).T
    return sp.csr_matrix(out), W @ ts


def _swap_refine(
    cols: Any,
    ts: np.ndarray,
    d: np.ndarray,
    support: np.ndarray,
    max_swaps: int,
    n_candidates: int = 16,
    locked: np.ndarray | None = None,
    pool: int = _REFINE_POOL,
    max_passes: int = _REFINE_PASSES,
) -> tuple[np.ndarray, int, int]:
    """Exchange kept and dropped households while the equal-adjustment fit improves.

    Minimises ``|| X (c d 1_S) - ts ||^2`` over supports ``S`` of fixed size
    (``X``, served by ``cols`` (:mod:`l0_calibrate.columns`), already carries
    the row scaling and target weights; ``c`` is the ratio that makes the
    kept design weights carry the population total), which is the
    gate-training loss at deterministic gates. A cell no kept household
    covers has error -1, so exchanges also fill empty cells. Households in
    ``locked`` are never removed.

    Work in passes, each linear in the non-zeros: one product ``X.T @ r``
    scores every single removal and addition; the ``pool`` best of each are
    gathered (a small CSR matrix of their columns); then exchanges run
    inside the pool, each one evaluating the ``n_candidates^2`` best pairs
    exactly and applying the best improving one, with the residual and the
    pool's scores updated exactly by one sparse product with the pool
    (``O(pool x nnz per column)``). A pass ends when no pair in the pool
    improves; the refinement ends after a pass without an exchange, after
    ``max_passes`` passes or after ``max_swaps`` exchanges. Returns the
    support, the exchanges made and the passes run.
    """
    n = cols.n_cols
    col_sq = cols.col_sq
    mask = np.zeros(n, dtype=bool)
    mask[support] = True
    locked_mask = np.zeros(n, dtype=bool)
    if locked is not None:
        locked_mask[locked] = True
    c = d.sum() / d[mask].sum()
    cd = c * d
    r = cols.matvec(np.where(mask, cd, 0.0)) - ts
    swaps = passes = 0
    while swaps < max_swaps and passes < max_passes:
        passes += 1
        g = cols.rmatvec(r)
        kept = np.flatnonzero(mask & ~locked_mask)
        free = np.flatnonzero(~mask)
        if kept.size == 0 or free.size == 0:
            break
        out = -2.0 * cd[kept] * g[kept] + cd[kept] ** 2 * col_sq[kept]
        inn = 2.0 * cd[free] * g[free] + cd[free] ** 2 * col_sq[free]
        nk, nj = min(pool, kept.size), min(pool, free.size)
        K = kept[np.argpartition(out, nk - 1)[:nk]] if nk < kept.size else kept
        J = free[np.argpartition(inn, nj - 1)[:nj]] if nj < free.size else free
        P = np.concatenate([K, J])
        CT = cols.fetch(P)  # pool columns as rows
        gP = g[P].copy()
        cdP, sqP = cd[P], col_sq[P]
        in_sup = np.zeros(P.size, dtype=bool)
        in_sup[: K.size] = True
        made = 0
        rr = float(r @ r)
        while swaps < max_swaps:
            o = np.where(in_sup, -2.0 * cdP * gP + cdP * cdP * sqP, np.inf)
            i = np.where(in_sup, np.inf, 2.0 * cdP * gP + cdP * cdP * sqP)
            na, nb = min(n_candidates, int(in_sup.sum())), min(n_candidates, int((~in_sup).sum()))
            if na == 0 or nb == 0:
                break
            a_idx = np.argpartition(o, na - 1)[:na]
            b_idx = np.argpartition(i, nb - 1)[:nb]
            cross = (CT[a_idx] @ CT[b_idx].T).toarray()
            pair = (
                o[a_idx][:, None]
                + i[b_idx][None, :]
                - 2.0 * np.outer(cdP[a_idx], cdP[b_idx]) * cross
            )
            a, b = np.unravel_index(np.argmin(pair), pair.shape)
            if not pair[a, b] < -_REFINE_RTOL * max(rr, 1e-300):
                break
            ka, jb = a_idx[a], b_idx[b]
            delta = (CT[jb] * cdP[jb] - CT[ka] * cdP[ka]).tocsr()
            r[delta.indices] += delta.data
            gP += np.asarray(CT @ delta.T.toarray()).ravel()
            rr = float(r @ r)
            in_sup[ka], in_sup[jb] = False, True
            swaps += 1
            made += 1
        mask[P] = in_sup
        if made == 0:
            break
    return np.flatnonzero(mask), swaps, passes
