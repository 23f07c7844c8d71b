"""The discrete stages of the select pipeline after gate training: refine, polish, cover seed, repair.

:class:`SupportSearch` holds what these stages share (the problem, the
ranking of the gates, design and target weights, the bounds) and runs them
in the order of :func:`l0_calibrate.selection.select_and_polish`:

1. the ``count`` best-ranked households, refined by exchanges
   (:func:`~l0_calibrate.selection_refine._swap_refine`);
2. a balance across independent groups of targets
   (:func:`~l0_calibrate.selection_balance.balance_support`: households
   moved into any district whose own targets cannot be met);
3. their polish (:func:`~l0_calibrate.polish.polish_columns` on the kept
   columns, :meth:`Problem.columns <l0_calibrate.problem.Problem.columns>`);
4. when that is not exact, a cover seed
   (:func:`~l0_calibrate.selection_repair._cover_seed`) and a second support;
5. repair exchanges (:func:`~l0_calibrate.selection_repair._repair`) on a
   candidate pool, whose polishes slice the pool's gathered columns.

Every stage reads columns of the :class:`~l0_calibrate.problem.Problem`
(a view of the kept or candidate households); none copies the whole matrix.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .columns import OperatorColumns, ScipyColumns
from .polish import PolishResult, polish_columns
from .problem import Problem
from .regularizers import inflate_design_weights
from .selection_balance import balance_support
from .selection_refine import _FULL_POOL_WORK, _REFINE_POOL, _swap_refine, _whiten
from .selection_repair import _POOL_FACTOR, _POOL_MIN, _cover_seed, _repair
from .stages import StageClock

__all__ = ["SupportSearch"]

#: The cover seed's linear programme is skipped above this many non-zeros.
_COVER_MAX_NNZ = 10_000_000
#: Repair tries: at most ``_REPAIR_WORK`` / (the support's non-zeros), at least
#: ``_REPAIR_MIN_TRIES`` (each try polishes the whole support again): all 40 up to
#: about 500,000 non-zeros, 5 at 15,000 x 1,000,000 keeping 50,000.
_REPAIR_WORK = 20_000_000
_REPAIR_MIN_TRIES = 4

logger = logging.getLogger("l0_calibrate.selection")


class SupportSearch:
    """The stages that turn a ranking of households into a polished support of ``count``.

    Parameters
    ----------
    problem : Problem
        The problem (its columns are read, never copied whole).
    t, d, v : numpy.ndarray
        Targets (after any reconciliation), design weights, target weights.
    scale : numpy.ndarray
        Row scale of the relative errors (``|t|``, or the row's size).
    order : numpy.ndarray
        Households ranked by gate logit, best first.
    count : int
        Households to keep.
    kind, lo, hi, band :
        Calibration distance, weight-ratio bounds and band of the polish.
    metric : {"whitened", "relative"}
        Imbalance the refinement minimises.
    refine_swaps, repair_moves : int
        Most exchanges of the refinement and tries of the repair.
    clock : StageClock
        Stage timer (and progress bar).

    Examples
    --------
    >>> from l0_calibrate.problem import build_problem
    >>> M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    >>> p = build_problem(M, [2.0, 5.0], dtype=torch.float64)
    >>> search = SupportSearch(p, p.targets, np.ones(4), np.ones(2), np.abs(p.targets),
    ...                        np.arange(4), 2, kind="chi2", lo=0.0, hi=np.inf, band=0.05,
    ...                        metric="relative", refine_swaps=4, repair_moves=0,
    ...                        clock=StageClock(False))
    >>> support, result = search.run(cover=None, polish=True)
    >>> support.size, bool(result.converged)
    (2, True)
    """

    def __init__(
        self,
        problem: Problem,
        t: np.ndarray,
        d: np.ndarray,
        v: np.ndarray,
        scale: np.ndarray,
        order: np.ndarray,
        count: int,
        *,
        kind: str,
        lo: float,
        hi: float,
        band: float | None,
        metric: str,
        refine_swaps: int,
        repair_moves: int,
        clock: StageClock,
    ) -> None:
        self.problem, self.t, self.d, self.v, self.sc = problem, t, d, v, scale
        self.order, self.count, self.n_cols = order, count, problem.n_households
        self.kind, self.lo, self.hi, self.band = kind, lo, hi, band
        self.metric, self.refine_swaps, self.repair_moves = metric, refine_swaps, repair_moves
        self.clock = clock
        dev = problem.op.device
        self.where = f"on {dev}" if dev.type != "cpu" else "on cpu"
        self.refine_cols: Any = None
        row_w = np.sqrt(v / v.sum()) / scale
        self.refine_t = row_w * t
        if refine_swaps > 0:
            if metric == "whitened":  # small problems only: a dense rotation of the rows
                X_w, self.refine_t = _whiten(problem.columns, self.n_cols, row_w, self.refine_t, d)
                self.refine_cols = ScipyColumns(X_w)
            else:
                self.refine_cols = OperatorColumns(problem.op, row_w)
        # Columns gathered from a float32 operator carry float32 round-off: the
        # targets (and dependent rows such as a total beside its parts) are then
        # consistent to about 1e-7 only, so "exact" is judged at that precision.
        self.polish_tol = 1e-9 if problem.columns_dtype == torch.float64 else 2e-7

    def _nnz_per_household(self) -> float:
        """Mean non-zeros of a household's column: the size of a block of gathered columns."""
        return self.problem.op.nnz / max(self.n_cols, 1)

    # ----------------------------------------------------------- stages
    def pool(self, sup: np.ndarray) -> np.ndarray:
        """Candidates of the cover and the repair: ``sup``, then the best-ranked gates.

        At most ``_POOL_FACTOR * count`` households (all of them when fewer),
        so the linear programme and the repair's scoring work on a gathered
        block of columns, never on a copy of the whole matrix.
        """
        n_cols, count = self.n_cols, self.count
        size = min(n_cols, max(_POOL_FACTOR * count, count + _POOL_MIN))
        if size >= n_cols:
            return np.arange(n_cols)
        is_sup = np.zeros(n_cols, dtype=bool)
        is_sup[sup] = True
        rest = self.order[~is_sup[self.order]][: size - sup.size]
        return np.sort(np.concatenate([sup, rest]))

    def build(self, seed_set: np.ndarray) -> np.ndarray:
        """The seed households, the best-ranked gates up to ``count``, then the refinement."""
        order, count = self.order, self.count
        if seed_set.size:
            is_seed = np.zeros(self.n_cols, dtype=bool)
            is_seed[seed_set] = True
            rest = order[~is_seed[order]][: count - seed_set.size]
            sup = np.sort(np.concatenate([seed_set, rest]))
        else:
            sup = np.sort(order[:count])
        cols = self.refine_cols
        if cols is not None:
            dev = str(self.problem.op.device)
            if isinstance(cols, OperatorColumns):
                note = (
                    f"{self.metric} metric: the products with the whole matrix on {dev}, the "
                    "exchanges inside a gathered candidate pool in scipy on the CPU"
                )
                where = dev if dev == "cpu" else f"{dev}+cpu"
            else:
                note = f"{self.metric} metric: the dense rotated rows in scipy on the CPU"
                where = "cpu"
            with self.clock.stage("refine", note, device=where):
                sup, n_swaps, n_passes = _swap_refine(
                    cols,
                    self.refine_t,
                    self.d,
                    sup,
                    self.refine_swaps,
                    locked=seed_set if seed_set.size else None,
                    pool=self.n_cols
                    if cols.nnz * self.refine_swaps <= _FULL_POOL_WORK
                    else _REFINE_POOL,
                )
            logger.info(
                "select: %d swaps in %d passes refined the support (%s metric)",
                n_swaps,
                n_passes,
                self.metric,
            )
        return sup

    def seed(self, sup: np.ndarray) -> np.ndarray:
        """An exact basic solution if it fits in ``count`` households, else a band-feasible one."""
        assert self.band is not None
        d, sc = self.d, self.sc
        cand = self.pool(sup)
        per_household = self._nnz_per_household()
        if cand.size * per_household > _COVER_MAX_NNZ:
            # HiGHS's simplex on tens of millions of non-zeros takes hours; at this
            # size the balance stage and the band-penalised polish are the fallback.
            logger.info(
                "select: cover seed skipped: its linear programme would hold about %.0fM "
                "non-zeros (more than %.0fM)", cand.size * per_household / 1e6, _COVER_MAX_NNZ / 1e6,
            )  # fmt: skip
            return np.zeros(0, dtype=np.int64)
        with self.clock.stage(
            "cover", "scipy's HiGHS linear programme on a candidate pool (CPU only)", device="cpu"
        ):
            X_rel = (self.problem.columns(cand).T.multiply(1.0 / sc)).T.tocsr()
            q_c = d[cand] * d.sum() / (self.count * d.mean())
            for b in (0.0, float(self.band)):
                found = _cover_seed(X_rel, self.t / sc, d[cand], self.count, b, self.hi, q=q_c)
                if found.size:
                    logger.info(
                        "select: a basic solution within %g seeds %d households", b, found.size
                    )
                    return cand[found]
        return cand[found]

    def balance(self, sup: np.ndarray) -> np.ndarray:
        """:func:`~l0_calibrate.selection_balance.balance_support` on ``sup`` (a stage)."""
        with self.clock.stage(
            "balance", "a small dense calibration per group of targets in scipy", device="cpu"
        ):
            return balance_support(
                self.problem, sup, self.order, self.t, self.sc, self.d,
                kind=self.kind, lo=self.lo, hi=self.hi, tol=self.polish_tol,
            )[0]  # fmt: skip

    def polish_on(self, sup: np.ndarray, X: Any = None) -> PolishResult:
        """Polish the support ``sup`` (its columns ``X`` when already gathered)."""
        with self.clock.stage(
            "polish", "dual Newton in scipy float64 on the kept columns", device="cpu"
        ):
            return polish_columns(
                self.problem.columns(sup) if X is None else X,
                self.t,
                sup,
                self.n_cols,
                inflate_design_weights(self.d, sup),
                self.v,
                kind=self.kind,
                lo=self.lo,
                hi=self.hi,
                band=self.band,
                tol=self.polish_tol,
            )

    def repair(self, sup: np.ndarray, res: PolishResult) -> tuple[np.ndarray, PolishResult, int]:
        """:func:`_repair` on the columns of a candidate pool (indices local to it).

        The pool's columns are gathered once; every try's polish slices its
        support out of them.
        """
        assert self.band is not None
        cand = self.pool(sup)
        full: dict[int, PolishResult] = {}

        def local(r: PolishResult) -> PolishResult:
            out = PolishResult(**{**r.__dict__, "weights": r.weights[cand]})
            full[id(out)] = r
            return out

        X_csc = self.problem.columns(cand).tocsc()  # one gather; each try slices it
        d = self.d
        d_loc = d[cand] * (d.sum() / d[cand].sum())
        # Each try is a polish of the whole support: bound the tries by its size.
        sup_nnz = self._nnz_per_household() * sup.size
        tries = int(min(self.repair_moves, max(_REPAIR_MIN_TRIES, _REPAIR_WORK // max(sup_nnz, 1.0))))
        sup_loc, res_loc, moves = _repair(
            X_csc,
            self.t,
            np.searchsorted(cand, sup),
            lambda s_loc: local(self.polish_on(cand[s_loc], X_csc[:, s_loc].tocsr())),
            local(res),
            float(self.band),
            d_loc,
            tries,
        )
        return cand[sup_loc], full[id(res_loc)], moves

    def outside(self, res: PolishResult) -> int:
        """Targets outside the band after ``res`` (0 without a band)."""
        band = self.band
        return int(np.sum(~(np.abs(res.rel_error) <= band))) if band is not None else 0

    def quality(self, res: PolishResult) -> tuple[int, float]:
        """Targets outside the band, then the mean absolute relative error (smaller is better)."""
        err = np.abs(np.nan_to_num(res.rel_error, posinf=1e6, neginf=1e6))
        return self.outside(res), float(err.mean()) if err.size else 0.0

    # ------------------------------------------------------------- flow
    def run(self, *, cover: bool | None, polish: bool) -> tuple[np.ndarray, PolishResult | None]:
        """Build, polish, seed if not exact, repair; return the support and its polish."""
        band, clock = self.band, self.clock
        empty = np.zeros(0, dtype=np.int64)
        seeded = bool(cover) and band is not None
        support = self.build(self.seed(empty) if seeded else empty)
        clock.tick()
        result: PolishResult | None = None
        if not polish:
            return support, result
        support = self.balance(support)
        result = self.polish_on(support)
        clock.tick()
        if cover is None and band is not None and not result.converged:
            # Not exact: rebuild around a basic solution (exact if it fits in
            # ``count`` households, else within the band) and keep whichever
            # support leaves fewer targets outside the band (then: the
            # smaller mean error).
            logger.info(
                "select: polish not exact (%d outside the band); seeding", self.outside(result)
            )
            seed_set = self.seed(support)
            if seed_set.size:
                candidate = self.build(seed_set)
                cand_res = self.polish_on(candidate)
                if self.quality(cand_res) < self.quality(result):
                    support, result = candidate, cand_res
        clock.tick()
        if (
            band is not None
            and self.repair_moves > 0
            and not result.converged
            and self.outside(result) > 0
        ):
            with clock.stage(
                "repair", "exchanges on a candidate pool, one scipy polish each", device="cpu"
            ):
                support, result, n_moves = self.repair(support, result)
            logger.info("select: %d exchanges brought targets into the band", n_moves)
        return support, result
