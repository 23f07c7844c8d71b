"""Balance a support across independent groups of targets before its polish.

The gate ranking spreads kept households roughly in proportion to the
population, but the calibration needs them in proportion to the *targets*:
a small district with 30 targets and 20 kept households has too few
unknowns to meet its own targets within the weight bounds, and one such
district makes the whole exact calibration infeasible (at 15,000 targets x
1,000,000 households, 5 of 446 districts; the polish then falls back to its
penalised solve, the cover linear programme and the repair, which at that
size take hours).

:func:`balance_support` finds the independent groups of narrow targets
(:func:`~l0_calibrate.polish_blocks.row_blocks`), checks each group's
targets on the kept households that touch them (a small dense calibration
per group: necessary for the whole to be feasible), and for every group
that fails adds its best-ranked households from outside the support (about
doubling its kept households, up to three times) while removing as many of
the worst-ranked households of groups with room to spare, re-checking the
groups they left. The count is kept; a support whose groups all pass is
returned unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .polish_blocks import RowBlocks, row_blocks
from .polish_dual import _newton
from .problem import Problem

__all__ = ["balance_support"]

logger = logging.getLogger("l0_calibrate.selection")

#: A group may give up households only while it keeps this many per target row
#: (one round each, from the first: the later rounds only if room was short).
_SPARE_RATIOS = (3.0, 2.0, 1.5)
#: Rounds of additions per failing group (each adds about as many households as it had).
_ADD_ROUNDS = 4
#: Candidates gathered per batch (columns of the problem, in gate rank order).
_CHUNK = 20_000


class _Groups:
    """The support's columns scaled by row, and checks of single groups on them."""

    def __init__(
        self, Xs: Any, ts: np.ndarray, q: np.ndarray, blocks: RowBlocks, kind: str,
        lo: float, hi: float, tol: float,
    ) -> None:  # fmt: skip
        self.Xs, self.ts, self.q, self.blocks = Xs, ts, q, blocks
        self.kind, self.lo, self.hi, self.tol = kind, lo, hi, tol
        row_group = np.full(Xs.shape[0], -1, dtype=np.int64)
        row_group[blocks.narrow] = np.repeat(np.arange(blocks.n_groups), blocks.sizes)
        self.row_group = row_group
        coo = Xs.tocoo()
        hg = np.full(Xs.shape[1], -1, dtype=np.int64)
        np.maximum.at(hg, coo.col, row_group[coo.row])
        self.household_group = hg  # -1: touches wide rows only

    def feasible(self, b: int, extra: Any = None, extra_q: Any = None, drop: Any = None) -> bool:
        """Whether group ``b``'s targets can hold on its kept households (plus ``extra`` columns)."""
        import scipy.sparse as sp

        rows = self.blocks.group(b)
        sub = self.Xs[rows]
        cols = np.unique(sub.indices)
        if drop is not None and drop.size:
            cols = np.setdiff1d(cols, drop, assume_unique=True)
        A, q = sub[:, cols], self.q[cols]
        if extra is not None and extra.shape[1]:
            A, q = sp.hstack([A, extra]).tocsr(), np.concatenate([q, extra_q])
        if A.shape[1] == 0:
            return False
        _, _, _, ok = _newton(
            sp.csr_matrix(A), self.ts[rows], q, self.kind, self.lo, self.hi, 60, self.tol,
            stall_tol=max(self.tol, 1e-7),
        )  # fmt: skip
        return bool(ok)


def balance_support(
    problem: Problem,
    sup: np.ndarray,
    order: np.ndarray,
    t: np.ndarray,
    scale: np.ndarray,
    d: np.ndarray,
    *,
    kind: str,
    lo: float,
    hi: float,
    tol: float,
) -> tuple[np.ndarray, dict[str, int]]:
    """Move kept households into groups of targets that cannot be met, keeping the count.

    Parameters
    ----------
    problem : Problem
        The problem (only the support's and some candidates' columns are read).
    sup : numpy.ndarray
        Sorted kept households.
    order : numpy.ndarray
        All households ranked best first (candidates are taken in this order).
    t, scale, d : numpy.ndarray
        Targets, their row scale and the design weights.
    kind, lo, hi, tol :
        Calibration distance, weight-ratio bounds and tolerance of the polish.

    Returns
    -------
    support : numpy.ndarray
        Sorted, of the same size as ``sup``.
    stats : dict
        ``groups`` checked, ``failing`` before, ``fixed`` after, ``moved`` households.

    Examples
    --------
    >>> import scipy.sparse as sp, torch
    >>> from l0_calibrate.problem import build_problem
    >>> M = sp.random(60, 400, density=0.02, random_state=1, format="csr")
    >>> M.data[:] = 1.0
    >>> p = build_problem(M, M @ np.ones(400), dtype=torch.float64)
    >>> sup = np.arange(100)
    >>> new, stats = balance_support(p, sup, np.arange(400), p.targets, np.abs(p.targets) + 1.0,
    ...                              np.ones(400), kind="chi2", lo=0.0, hi=np.inf, tol=1e-9)
    >>> new.size == sup.size, stats["failing"] >= stats["fixed"]
    (True, True)
    """
    import scipy.sparse as sp

    stats = {"groups": 0, "failing": 0, "fixed": 0, "moved": 0}
    X = problem.columns(sup)
    inv_scale = 1.0 / scale
    Xs = X.multiply(inv_scale[:, None]).tocsr()
    blocks = row_blocks(Xs)
    if blocks is None:
        return sup, stats
    ts = t * inv_scale
    factor = float(d.sum() / d[sup].sum())
    groups = _Groups(Xs, ts, d[sup] * factor, blocks, kind, lo, hi, tol)
    stats["groups"] = blocks.n_groups
    failing = [b for b in range(blocks.n_groups) if not groups.feasible(b)]
    stats["failing"] = len(failing)
    if not failing:
        return sup, stats

    # Candidates touching the failing groups, in rank order.
    n_cols = problem.n_households
    in_sup = np.zeros(n_cols, dtype=bool)
    in_sup[sup] = True
    bad_rows = np.concatenate([blocks.group(b) for b in failing])
    # Households touching a failing group: the non-zeros of M' r for positive
    # r on its rows (one product with the operator; irrational-looking values
    # so that mixed-sign entries do not cancel), taken in rank order.
    r = np.zeros(problem.n_targets)
    r[bad_rows] = 1.0 + np.modf(np.arange(1, bad_rows.size + 1) * 0.6180339887498949)[0]
    op = problem.op
    touch = op.rmatvec(torch.as_tensor(r, dtype=op.dtype, device=op.device)).cpu().numpy() != 0
    outside = order[touch[order] & ~in_sup[order]]
    starts = np.concatenate([[0], np.cumsum([blocks.sizes[b] for b in failing])])
    at = {b: np.arange(starts[i], starts[i + 1]) for i, b in enumerate(failing)}
    kept = np.bincount(groups.household_group[groups.household_group >= 0], minlength=blocks.n_groups)
    want = {b: _ADD_ROUNDS * max(int(kept[b]), int(blocks.sizes[b])) for b in failing}
    found: dict[int, list[tuple[np.ndarray, Any]]] = {b: [] for b in failing}
    have = dict.fromkeys(failing, 0)
    row_group = groups.row_group
    for start in range(0, outside.size, _CHUNK):
        if all(have[b] >= want[b] for b in failing):
            break
        idx = outside[start : start + _CHUNK]
        sub = problem.columns(idx)[bad_rows].multiply(inv_scale[bad_rows][:, None]).tocsc()
        coo = sub.tocoo()
        cg = np.full(idx.size, -1, dtype=np.int64)
        np.maximum.at(cg, coo.col, row_group[bad_rows][coo.row])
        for b in failing:
            take = np.flatnonzero(cg == b)[: want[b] - have[b]]
            if take.size:
                found[b].append((idx[take], sub[:, take]))
                have[b] += take.size

    added: list[np.ndarray] = []
    for b in failing:
        if not found[b]:
            continue
        cand = np.concatenate([c for c, _ in found[b]])
        cols = sp.hstack([m for _, m in found[b]]).tocsc()
        # Rows of the failing groups only: keep the part of the candidates' columns on group b.
        cols_b = cols[at[b]]
        step = max(int(kept[b]), int(blocks.sizes[b]))
        for batch in range(1, _ADD_ROUNDS + 1):
            n = min(cand.size, batch * step)
            if groups.feasible(b, cols_b[:, :n], d[cand[:n]] * factor):
                stats["fixed"] += 1
                added.append(cand[:n])
                logger.debug("balance: group %d (%d rows, %d kept) met with %d more", b,
                             blocks.sizes[b], kept[b], n)
                break
        else:
            added.append(cand)
            logger.debug("balance: group %d (%d rows, %d kept) not met with %d more", b,
                         blocks.sizes[b], kept[b], cand.size)
    if not added:
        return sup, stats
    add = np.concatenate(added)

    # Remove as many of the worst-ranked kept households, from groups with room to spare.
    rank = np.empty(n_cols, dtype=np.int64)
    rank[order] = np.arange(order.size)
    worst_first = np.argsort(-rank[sup], kind="stable")  # positions in sup
    hg = groups.household_group
    frozen = np.zeros(blocks.n_groups, dtype=bool)
    frozen[failing] = True
    left = kept.copy()
    gone = np.zeros(sup.size, dtype=bool)
    for spare in _SPARE_RATIOS:
        floor = np.ceil(spare * blocks.sizes).astype(np.int64)
        need = add.size - int(gone.sum())
        if need <= 0:
            break
        taken: list[int] = []
        # At most a tenth of a group's households per round: spread the removals.
        quota = np.maximum(np.ceil(0.1 * left), 1).astype(np.int64)
        for pos in worst_first:
            if len(taken) >= need:
                break
            g = hg[pos]
            if gone[pos] or (g >= 0 and (frozen[g] or quota[g] == 0 or left[g] - 1 < floor[g])):
                continue
            taken.append(int(pos))
            if g >= 0:
                left[g] -= 1
                quota[g] -= 1
        if not taken:
            continue
        # Re-check the groups that gave households; restore and freeze any that now fail.
        taken_arr = np.asarray(taken, dtype=np.int64)
        for g in np.unique(hg[taken_arr]):
            if g < 0:
                continue
            poss = taken_arr[hg[taken_arr] == g]
            if groups.feasible(int(g), drop=poss):
                gone[poss] = True
            else:
                left[g] += poss.size
                frozen[g] = True
        gone[taken_arr[hg[taken_arr] < 0]] = True
    n_removed = int(gone.sum())
    if n_removed < add.size:  # not enough room: add only the best-ranked ones
        add = add[np.argsort(rank[add], kind="stable")[:n_removed]]
    stats["moved"] = int(add.size)
    new = np.sort(np.concatenate([sup[~gone], add]))
    if new.size != sup.size:  # pragma: no cover - bookkeeping guard
        raise RuntimeError(f"balance changed the count from {sup.size} to {new.size}")
    logger.info(
        "select: %d of %d target groups could not be met on their kept households; "
        "%d fixed by moving %d households",
        stats["failing"], stats["groups"], stats["fixed"], stats["moved"],
    )  # fmt: skip
    return new, stats
