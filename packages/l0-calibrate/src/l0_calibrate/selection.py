"""Select ``target_count`` households with L0 gates, then polish their weights to the targets.

:func:`select_and_polish` is the quality pipeline of l0-calibrate:

1. **Gate training.** Every household ``k`` has a Hard Concrete gate
   ``z_k`` (and, with ``learn_adjustments=True``, a log-adjustment
   ``theta_k``, else 0); its weight is

       w_k = d_k * exp(theta_k) * z_k * c,    c = sum(d) / sum(d * z)  (no gradient)

   so the open gates always carry the population total (a ratio estimator)
   whatever the current sparsity. The loss is the weighted mean squared
   *relative* target error, plus ``dispersion_weight`` times the ``CV^2``
   of the non-zero weights (design effect minus 1), plus
   ``distance_weight`` times the calibration distance of the kept weights
   from ``d * c``. With equal adjustments (the default) the loss is the
   imbalance of the kept set at near-equal weights: the gates look for a
   balanced sample. After every optimiser step all gate logits are shifted
   by one constant so that the expected number of open gates is exactly
   ``target_count`` (a projection; what is learned is the ranking). The
   temperature is annealed geometrically to ``final_temperature``.
2. **Exact count.** The ``target_count`` households with the largest gate
   logits are kept.
3. **Discrete refinement.** Exchanges of a kept and a dropped household
   while the imbalance at deterministic gates shrinks (the gate-training
   loss, or its Mahalanobis form, which is what the polish must correct:
   see ``balance_metric``).
4. **Polish.** :func:`l0_calibrate.polish.polish_weights` re-solves their
   weights by bounded calibration so the targets hold exactly where that is
   feasible, and as closely as possible where not (penalised least squares
   on the relative errors, with a steep penalty beyond ``band``, 5% by
   default, so that every target stays within the band when it can).
5. **Cover seed** (only when that polish is not exact, typically many
   targets per kept household): a linear programme over *all* households
   (every target exact, or if that needs more than ``target_count``
   households within the band; weights within the upper bound) has a
   sparse basic solution; its households are kept, the gates fill the
   remaining places, the refinement and the polish run again, and the
   seeded support is used if it leaves fewer targets outside the band (or
   as many with a smaller mean error).
6. **Repair.** While a target is outside the band, exchange a household of
   its cell (or into its cell) for the best one elsewhere, re-polish, and
   keep the exchange if the excess beyond the band shrinks.

Optional hierarchical consistency (:mod:`l0_calibrate.hierarchy`): targets
are reconciled top-down before fitting, so that lower-level targets add up
to their parents and an exact solution can exist.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from l0_core import HardConcrete, SparseOperator, TargetSparsityController, sparse_matvec
from l0_core.checks import check_probability
from l0_core.hard_concrete import prob_active_for_log_alpha

from .columns import OperatorColumns, ScipyColumns
from .diagnostics import weight_diagnostics
from .hierarchy import Hierarchy, reconcile_targets
from .polish import PolishResult, _as_vector, _check_band, _polish_support
from .regularizers import (
    RatioBound,
    _check_distance,
    calibration_distance,
    dispersion_penalty,
    inflate_design_weights,
    ratio_bounds,
)
from .stages import StageClock

__all__ = ["SelectionResult", "select_and_polish"]

logger = logging.getLogger(__name__)


@dataclass
class SelectionResult:
    """Outcome of :func:`select_and_polish`.

    Attributes
    ----------
    weights : numpy.ndarray
        Final weights, length ``n_cols`` (exactly ``target_count`` non-zero
        unless polishing sets some to 0 at a lower bound of 0).
    support : numpy.ndarray
        Indices of the selected households (sorted).
    polish : PolishResult or None
        The polishing outcome (None when ``polish=False``).
    fit_weights : numpy.ndarray
        Weights on the support at the end of gate training, before polishing.
    targets : numpy.ndarray
        The targets actually fitted (after reconciliation when a hierarchy is given).
    history : list of dict
        Per logging step: epoch, fit loss, dispersion, expected active count.
    diagnostics : dict
        :func:`l0_calibrate.diagnostics.weight_diagnostics` of ``weights``,
        plus ``stage_times`` (seconds per stage: ``gates``, ``refine``,
        ``polish``, and ``cover``/``repair`` when they ran) and
        ``start_weight`` (the common starting weight derived from the data
        when no design weights were given, else NaN).
    unmet : numpy.ndarray
        Indices of the targets missed by more than 1e-6 (relative) after
        polishing: empty when every target is met.
    weights_at_bound : int
        Kept households whose weight sits at a ``max_weight_ratio`` bound
        when some target is unmet (a bound that keeps the targets out of
        reach; widen it or pass ``design_weights``).
    design_weights : numpy.ndarray
        The design weights used (the given ones, or the common starting weight).
    """

    weights: np.ndarray
    support: np.ndarray
    polish: PolishResult | None
    fit_weights: np.ndarray
    targets: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    unmet: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    weights_at_bound: int = 0
    design_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))


@torch.no_grad()
def _project_count(gate: HardConcrete, count: int) -> None:
    """Shift all gate logits by one constant so the expected number of open gates is ``count``.

    Solves ``sum_k sigmoid(log_alpha_k + delta - shift) = count`` for
    ``delta`` by safeguarded Newton steps (the sum is increasing in
    ``delta``); the relative order of the gates, which is what the fit
    learns, is unchanged.
    """
    la = gate.log_alpha
    lo, hi = -60.0, 60.0
    delta = 0.0
    shift = float(gate.temperature.item()) * math.log(-gate.gamma / gate.zeta)
    for _ in range(60):
        p = torch.sigmoid(la + (delta - shift))
        total, slope = torch.stack([p.sum(), (p * (1 - p)).sum()]).tolist()
        gap = total - count
        if abs(gap) < 1e-3 * max(count, 1):
            break
        if gap > 0:
            hi = delta
        else:
            lo = delta
        step = delta - gap / slope if slope > 0 else (lo + hi) / 2
        delta = step if lo < step < hi else (lo + hi) / 2
    la.add_(delta)


class _Adam:
    """Adam (Kingma & Ba 2015) with torch's default constants, the same update as ``torch.optim.Adam``.

    Written out because ``torch.optim`` imports ``torch._dynamo`` when an
    optimiser is built, which costs seconds (more than a small selection).
    """

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        bc1, bc2 = 1.0 - b1**self.t, math.sqrt(1.0 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2).add_(1e-8), value=-self.lr / bc1)


_WHITEN_MAX_ENTRIES = 50_000_000
#: Candidates of each side gathered per refinement pass.
_REFINE_POOL = 1024
#: Below this ``nnz * refine_swaps`` the pool is every household (each exchange
#: then updates every score exactly: the plain best-exchange descent).
_FULL_POOL_WORK = 2_000_000_000
#: Most refinement passes (each one product with the matrix and one with its transpose).
_REFINE_PASSES = 100
#: Below this many non-zeros the gate training runs on one CPU thread.
_SMALL_NNZ = 1 << 20
#: Candidate pool of the cover LP and the repair, in multiples of ``target_count`` ...
_POOL_FACTOR = 4
#: ... and at least this many households beyond it.
_POOL_MIN = 30_000
#: Refused repair exchanges in a row after which the repair stops.
_REPAIR_PATIENCE = 8
#: An exchange must lower the squared imbalance by this fraction of it.
_REFINE_RTOL = 1e-9


def _whiten(X: Any, ts: np.ndarray, d: np.ndarray) -> tuple[Any, np.ndarray]:
    """Rotate the constraint rows so Euclidean imbalance is the Mahalanobis one.

    With ``G = X diag(d) X' / sum(d)`` (the population second moments of
    the scaled rows) and ``W`` its inverse square root (on its range), the
    squared norm of ``W (X w - t)`` is, to first order, the ``CV^2`` of the
    adjustments a chi-square calibration must make to fix the imbalance
    (``lambda' T lambda`` with ``lambda = T^-1 (t - X w)``): minimising it
    minimises the design effect after polishing. Returns dense rows.
    """
    import scipy.sparse as sp

    G = np.asarray((X.multiply(d) @ X.T).todense()) / d.sum()
    ev, V = np.linalg.eigh(G)
    keep = ev > ev.max(initial=0.0) * 1e-10
    W = (V[:, keep] / np.sqrt(ev[keep])).T
    return sp.csr_matrix(np.asarray(X.T @ W.T).T), W @ ts


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


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def select_and_polish(
    M: Any,
    targets: Any,
    target_count: int | float,
    *,
    design_weights: Any = None,
    target_weights: Any = None,
    distance: str = "raking",
    max_weight_ratio: RatioBound = 10.0,
    dispersion_weight: float = 0.1,
    distance_weight: float = 0.0,
    epochs: int = 1000,
    lr: float = 0.2,
    temperature: float = 2.0 / 3.0,
    final_temperature: float | None = 0.05,
    learn_adjustments: bool = False,
    init_keep_prob: float | None = None,
    hierarchy: Hierarchy | None = None,
    polish: bool = True,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    refine_swaps: int | None = None,
    balance_metric: str = "auto",
    band: float | None = 0.05,
    cover: bool | None = None,
    repair_moves: int = 40,
    log_every: int = 100,
    progress: bool | None = False,
) -> SelectionResult:
    """Choose ``target_count`` households by L0 gate training, then polish their weights.

    Parameters
    ----------
    M : matrix
        Estimate matrix ``(n_targets, n_cols)`` (scipy.sparse, numpy, torch
        or :class:`l0_core.SparseOperator`); ``M @ w`` are the estimates.
    targets : array-like
        Target totals, length ``n_targets``.
    target_count : int or float
        Households to keep: a count ``>= 1`` or a fraction in ``(0, 1]``.
    design_weights : array-like, optional
        Positive design weights. Default: one common weight derived from the
        data, the geometric median over the targets of ``t_i / (M 1)_i`` (so
        that the whole file carries the scale of the targets; 1 when no
        target is positive); see ``diagnostics["start_weight"]``.
    target_weights : array-like, optional
        Non-negative importance of each target in the fit (default 1).
    distance : {"raking", "chi2"}, default "raking"
        Calibration distance used when polishing (and by ``distance_weight``).
    max_weight_ratio : float, (lo, hi) or None, default 10
        Bounds on each kept weight relative to its inflated design weight
        ``q_k = d_k * sum(d) / sum_kept(d)`` (see
        :mod:`l0_calibrate.regularizers`), enforced by the polish. Without
        design weights ``d`` is the common starting weight derived from the
        data, so the bound is relative to the scale of the targets. Targets
        a bound keeps out of reach are listed in ``SelectionResult.unmet``
        (with ``weights_at_bound``) and logged as a warning.
    dispersion_weight : float, default 0.1
        Weight of the ``CV^2`` (design effect - 1) of the kept weights.
    distance_weight : float, default 0
        Weight of the calibration distance of the kept weights from their
        inflated design weights during selection.
    epochs : int, default 600
        Gate-training steps.
    lr : float, default 0.05
        Adam learning rate.
    temperature : float, default 0.5
        Hard Concrete temperature.
    init_keep_prob : float, optional
        Initial gate location with :class:`SparseCalibrationWeights`' (and
        l0-python 0.6.2's) meaning: ``log_alpha = logit(init_keep_prob)``.
        Default: the location at which a gate is open with probability twice
        the target fraction, at most 0.5. (The count projection then shifts
        all locations together so that the expected count is ``count``.)
    hierarchy : Hierarchy, optional
        Reconcile the targets top-down first (see :mod:`l0_calibrate.hierarchy`).
    polish : bool, default True
        Run :func:`l0_calibrate.polish.polish_weights` on the selected households.
    seed : int or None, default 0
        Seed of the gate noise; a seed makes CPU results bit-identical.
    dtype, device : optional
        Precision and device of the gate training.
    refine_swaps : int, optional
        Most exchanges of the discrete refinement (default ``2 * target_count``;
        0 turns it off).
    balance_metric : {"auto", "whitened", "relative"}, default "auto"
        Imbalance the refinement minimises. ``"relative"``: the weighted sum
        of squared relative target errors (the gate-training loss).
        ``"whitened"``: the Mahalanobis imbalance, which is what a
        chi-square polish has to correct, so it minimises the design effect
        after polishing (ignores ``target_weights``). ``"auto"`` picks
        ``"whitened"`` when ``target_count >= 10 * n_targets`` (an exact
        polish is then usually feasible) and the dense rotated matrix is
        small enough, else ``"relative"`` (which keeps small cells covered).
    band : float or None, default 0.05
        Relative error every target should stay within when no exact
        solution exists on the kept households: passed to
        :func:`l0_calibrate.polish.polish_weights` (its fallback keeps every
        target within the band whenever the bounds allow it), used by the
        cover seed and by the repair exchanges. ``None`` turns all three off
        (plain least-squares fallback).
    cover : bool or None, default None
        Seed the support with the households of a sparse basic solution of
        the linear programme "every target within ``band``, ``0 <= w <=
        hi q``" over all households (scipy's HiGHS), so that every cell is
        covered by households that can carry it; they are kept through the
        refinement and the remaining ``target_count`` places are filled by
        the gates. The programme is first solved exactly (no band); that
        seed is used if it needs at most ``target_count`` households, else
        the band one. ``None`` (automatic): polish the gate selection first
        and seed only if that polish is not exact (typically many targets
        per kept household, where small cells end up empty or overfull),
        keeping the seeded support if it leaves fewer targets outside the
        band, or as many with a smaller mean relative error.
    repair_moves : int, default 40
        Most tries of a household exchange after the polish, each aimed at
        the target furthest outside ``band`` and kept only if the polished
        excess beyond the band shrinks (one polish per try). 0 turns it off.
    log_every : int, default 100
        Epochs between ``logging`` records and history rows.
    progress : bool or None, default False
        One tqdm bar over the whole pipeline (the epochs, then one step per
        later stage); None: only when stderr is a terminal. Every stage
        also logs its start, end and time on the ``l0_calibrate`` logger,
        and ``diagnostics["stage_times"]`` keeps the times.

    Returns
    -------
    SelectionResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = (rng.random((5, 400)) < 0.4).astype(float)
    >>> res = select_and_polish(X, X.sum(axis=1), 40, epochs=150)
    >>> int((res.weights > 0).sum()), res.polish.converged
    (40, True)
    >>> bool(np.allclose(X @ res.weights, X.sum(axis=1)))
    True
    """
    kind = _check_distance(distance, "distance")
    ratio_bounds(max_weight_ratio)
    op = SparseOperator.from_any(M, dtype=dtype, device=device, argument="M")
    n_targets, n_cols = op.shape
    t_np = _as_vector(targets, "targets", n_targets)
    count = TargetSparsityController.resolve_target(target_count, n_cols, argument="target_count")
    d_np = (
        np.ones(n_cols)
        if design_weights is None
        else _as_vector(design_weights, "design_weights", n_cols)
    )
    if (d_np <= 0).any():
        raise ValueError("design_weights must be positive; drop zero-weight households first")
    v_np = (
        np.ones(n_targets)
        if target_weights is None
        else _as_vector(target_weights, "target_weights", n_targets)
    )
    if (v_np < 0).any() or v_np.sum() <= 0:
        raise ValueError("target_weights must be non-negative with a positive sum")
    for name, value, zero_ok in (
        ("dispersion_weight", dispersion_weight, True),
        ("distance_weight", distance_weight, True),
        ("lr", lr, False),
        ("temperature", temperature, False),
    ):
        _check_positive(name, value, zero_ok)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    if balance_metric not in ("auto", "whitened", "relative"):
        raise ValueError(
            f"balance_metric must be 'auto', 'whitened' or 'relative', got {balance_metric!r}"
        )
    _check_band(band)
    if cover is not None and not isinstance(cover, bool):
        raise ValueError(f"cover must be True, False or None (automatic), got {cover!r}")
    if isinstance(repair_moves, bool) or not isinstance(repair_moves, int) or repair_moves < 0:
        raise ValueError(f"repair_moves must be a non-negative integer, got {repair_moves!r}")
    if refine_swaps is None:
        refine_swaps = 2 * count
    if isinstance(refine_swaps, bool) or not isinstance(refine_swaps, int) or refine_swaps < 0:
        raise ValueError(f"refine_swaps must be a non-negative integer, got {refine_swaps!r}")
    if init_keep_prob is None:
        init_prob_active = min(0.5, 2.0 * count / n_cols)
    else:
        init_keep_prob = check_probability(
            init_keep_prob, "init_keep_prob", hint="pass e.g. init_keep_prob=0.5"
        )
        init_prob_active = prob_active_for_log_alpha(
            math.log(init_keep_prob / (1.0 - init_keep_prob)), temperature
        )
    if hierarchy is not None:
        t_np = reconcile_targets(t_np, hierarchy)

    clock = StageClock(progress, total=epochs + 4, desc="select")
    dev = op.device
    where = f"on {dev}" if dev.type != "cpu" else "on cpu"
    generator = torch.Generator(device=dev)
    if seed is not None:
        generator.manual_seed(int(seed))
    else:
        generator.seed()
    t = torch.as_tensor(t_np, dtype=dtype, device=dev)
    if design_weights is None:
        d_np = np.full(n_cols, _common_weight(op, t_np))
        logger.info("select: no design weights; common starting weight %.6g", d_np[0])
    row_size = op.matvec(torch.as_tensor(d_np, dtype=dtype, device=dev)).abs()
    scale = torch.where(
        t.abs() > 0, t.abs(), torch.where(row_size > 0, row_size, torch.ones_like(t))
    )
    v = torch.as_tensor(v_np / v_np.sum(), dtype=dtype, device=dev)
    d = torch.as_tensor(d_np, dtype=dtype, device=dev)
    total_d = d.sum()

    gate = HardConcrete(
        n_cols,
        temperature=temperature,
        init_prob_active=init_prob_active,
        device=dev,
        dtype=dtype,
        generator=generator,
    )
    theta = torch.nn.Parameter(torch.zeros(n_cols, device=dev, dtype=dtype))
    _project_count(gate, count)
    opt = _Adam([gate.log_alpha, theta] if learn_adjustments else [gate.log_alpha], lr=lr)
    history: list[dict[str, float]] = []
    gate.train()
    threads = torch.get_num_threads()
    if dev.type == "cpu" and op.nnz < _SMALL_NNZ:
        torch.set_num_threads(1)  # small products: threads only add synchronisation
    with clock.stage("gates", where):
        try:
            for epoch in range(epochs):
                if final_temperature is not None and epochs > 1:
                    frac = epoch / (epochs - 1)
                    gate.set_temperature(temperature * (final_temperature / temperature) ** frac)
                opt.zero_grad(set_to_none=True)
                z = gate()
                base = d * z
                c = (total_d / base.sum().clamp_min(torch.finfo(dtype).tiny)).detach()
                w = base * torch.exp(theta) * c
                est = sparse_matvec(op, w)
                rel = (est - t) / scale
                fit = (v * rel * rel).sum()
                loss = fit
                disp = dispersion_penalty(w) if dispersion_weight > 0 else fit.new_zeros(())
                if dispersion_weight > 0:
                    loss = loss + dispersion_weight * disp
                if distance_weight > 0:
                    loss = loss + distance_weight * calibration_distance(
                        w, d * c, kind, active_only=True
                    )
                loss.backward()
                opt.step()
                _project_count(gate, count)
                clock.tick()
                if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
                    row = {
                        "epoch": float(epoch + 1),
                        "fit_loss": float(fit.item()),
                        "dispersion": float(disp.item()),
                        "expected_active": float(gate.l0_penalty().item()),
                    }
                    history.append(row)
                    logger.info(
                        "select epoch %d: fit %.3e dispersion %.3f expected active %.0f",
                        epoch + 1,
                        row["fit_loss"],
                        row["dispersion"],
                        row["expected_active"],
                    )
        finally:
            torch.set_num_threads(threads)

    with torch.no_grad():
        order = torch.argsort(gate.log_alpha.detach(), descending=True, stable=True).cpu().numpy()
    sc = scale.double().cpu().numpy()
    metric = balance_metric
    if metric == "auto":
        small = n_targets * n_cols <= _WHITEN_MAX_ENTRIES
        metric = "whitened" if small and count >= 10 * n_targets else "relative"
    row_w = np.sqrt(v_np / v_np.sum()) / sc
    refine_cols: Any = None
    refine_t = row_w * t_np
    if refine_swaps > 0:
        if metric == "whitened":  # small problems only: a dense rotation of the rows
            from .polish import as_scipy_csr

            X_w = (as_scipy_csr(_matrix_for_scipy(M, op), "M").T.multiply(row_w)).T.tocsr()
            X_w, refine_t = _whiten(X_w, refine_t, d_np)
            refine_cols = ScipyColumns(X_w)
        else:
            refine_cols = OperatorColumns(op, row_w)
    lo_b, hi_b = ratio_bounds(max_weight_ratio)

    def pool(sup: np.ndarray) -> np.ndarray:
        """Candidates of the cover and the repair: ``sup``, then the best-ranked gates.

        At most ``_POOL_FACTOR * count`` households (all of them when fewer),
        so the linear programme and the repair's scoring work on a gathered
        block of columns, never on a copy of the whole matrix.
        """
        size = min(n_cols, max(_POOL_FACTOR * count, count + _POOL_MIN))
        if size >= n_cols:
            return np.arange(n_cols)
        is_sup = np.zeros(n_cols, dtype=bool)
        is_sup[sup] = True
        rest = order[~is_sup[order]][: size - sup.size]
        return np.sort(np.concatenate([sup, rest]))

    def build(seed_set: np.ndarray) -> np.ndarray:
        """The seed households, the best-ranked gates up to ``count``, then the refinement."""
        if seed_set.size:
            is_seed = np.zeros(n_cols, dtype=bool)
            is_seed[seed_set] = True
            rest = order[~is_seed[order]][: count - seed_set.size]
            sup = np.sort(np.concatenate([seed_set, rest]))
        else:
            sup = np.sort(order[:count])
        if refine_cols is not None:
            note = f"{metric} metric, products {where}"
            with clock.stage("refine", note):
                sup, n_swaps, n_passes = _swap_refine(
                    refine_cols,
                    refine_t,
                    d_np,
                    sup,
                    refine_swaps,
                    locked=seed_set if seed_set.size else None,
                    pool=n_cols
                    if refine_cols.nnz * refine_swaps <= _FULL_POOL_WORK
                    else _REFINE_POOL,
                )
            logger.info(
                "select: %d swaps in %d passes refined the support (%s metric)",
                n_swaps,
                n_passes,
                metric,
            )
        return sup

    def seed(sup: np.ndarray) -> np.ndarray:
        """An exact basic solution if it fits in ``count`` households, else a band-feasible one."""
        assert band is not None
        with clock.stage("cover", "on cpu: scipy HiGHS linear programme on a candidate pool"):
            cand = pool(sup)
            X_rel = (_kept_columns(M, op, cand).T.multiply(1.0 / sc)).T.tocsr()
            q_c = d_np[cand] * d_np.sum() / (count * d_np.mean())
            for b in (0.0, float(band)):
                found = _cover_seed(X_rel, t_np / sc, d_np[cand], count, b, hi_b, q=q_c)
                if found.size:
                    logger.info(
                        "select: a basic solution within %g seeds %d households", b, found.size
                    )
                    return cand[found]
        return cand[found]

    def repair(sup: np.ndarray, res: PolishResult) -> tuple[np.ndarray, PolishResult, int]:
        """:func:`_repair` on the columns of a candidate pool (indices local to it)."""
        cand = pool(sup)
        full: dict[int, PolishResult] = {}

        def local(r: PolishResult) -> PolishResult:
            out = PolishResult(**{**r.__dict__, "weights": r.weights[cand]})
            full[id(out)] = r
            return out

        d_loc = d_np[cand] * (d_np.sum() / d_np[cand].sum())
        sup_loc, res_loc, moves = _repair(
            _kept_columns(M, op, cand),
            t_np,
            np.searchsorted(cand, sup),
            lambda s_loc: local(polish_on(cand[s_loc])),
            local(res),
            float(band),
            d_loc,
            repair_moves,
        )
        return cand[sup_loc], full[id(res_loc)], moves

    def quality(res: PolishResult) -> tuple[int, float]:
        err = np.abs(np.nan_to_num(res.rel_error, posinf=1e6, neginf=1e6))
        return outside(res), float(err.mean()) if err.size else 0.0

    # Columns gathered from a float32 operator carry float32 round-off: the
    # targets (and dependent rows such as a total beside its parts) are then
    # consistent to about 1e-7 only, so "exact" is judged at that precision.
    polish_tol = 1e-9 if _kept_columns_dtype(M, op) == torch.float64 else 2e-7

    def polish_on(sup: np.ndarray) -> PolishResult:
        with clock.stage("polish", "on cpu: dual Newton on the kept columns"):
            return _polish_support(
                _kept_columns(M, op, sup),
                t_np,
                sup,
                n_cols,
                inflate_design_weights(d_np, sup),
                v_np,
                kind=kind,
                lo=lo_b,
                hi=hi_b,
                band=band,
                tol=polish_tol,
            )

    def outside(res: PolishResult) -> int:
        return int(np.sum(~(np.abs(res.rel_error) <= band))) if band is not None else 0

    seeded = bool(cover) and band is not None
    support = build(seed(np.zeros(0, dtype=np.int64)) if seeded else np.zeros(0, dtype=np.int64))
    clock.tick()
    result: PolishResult | None = None
    if polish:
        result = polish_on(support)
        clock.tick()
        if cover is None and band is not None and not result.converged:
            # Not exact: rebuild around a basic solution (exact if it fits in
            # ``count`` households, else within the band) and keep whichever
            # support leaves fewer targets outside the band (then: the
            # smaller mean error).
            logger.info("select: polish not exact (%d outside the band); seeding", outside(result))
            seed_set = seed(support)
            if seed_set.size:
                candidate = build(seed_set)
                cand_res = polish_on(candidate)
                if quality(cand_res) < quality(result):
                    support, result = candidate, cand_res
        clock.tick()
        if band is not None and repair_moves > 0 and not result.converged and outside(result) > 0:
            with clock.stage("repair", "on cpu: exchanges, one polish each"):
                support, result, n_moves = repair(support, result)
            logger.info("select: %d exchanges brought targets into the band", n_moves)
    with torch.no_grad():
        sup_t = torch.as_tensor(support, device=dev)
        fit_w = (d[sup_t] * torch.exp(theta.detach()[sup_t])).double().cpu().numpy()
        fit_w *= d_np.sum() / fit_w.sum()
    weights = np.zeros(n_cols)
    weights[support] = fit_w
    unmet = np.zeros(0, dtype=np.int64)
    at_bound = 0
    if result is not None:
        weights = result.weights
        unmet = np.flatnonzero(result.infeasible)
        if unmet.size:
            ratio = weights[support] / inflate_design_weights(d_np, support)
            tight = np.zeros(support.size, dtype=bool)
            if math.isfinite(hi_b):
                tight |= ratio >= hi_b * (1 - 1e-6)
            if lo_b > 0:
                tight |= ratio <= lo_b * (1 + 1e-6)
            at_bound = int(tight.sum())
            logger.warning(
                "select: %d target(s) not met after polishing (max relative error %.3g); "
                "%d kept weight(s) sit at the max_weight_ratio bound %s",
                unmet.size,
                result.max_abs_rel_error,
                at_bound,
                (lo_b, hi_b),
            )
    clock.close()
    diagnostics = weight_diagnostics(weights, d_np)
    diagnostics["stage_times"] = dict(clock.times)
    diagnostics["start_weight"] = float(d_np.mean()) if design_weights is None else float("nan")
    return SelectionResult(
        weights=weights,
        support=support,
        polish=result,
        fit_weights=fit_w,
        targets=t_np,
        history=history,
        diagnostics=diagnostics,
        unmet=unmet,
        weights_at_bound=at_bound,
        design_weights=d_np,
    )


def _matrix_for_scipy(M: Any, op: Any) -> Any:
    """The caller's matrix where scipy can read it directly (float64 values kept), else the operator."""
    return op if isinstance(M, torch.Tensor) else M


def _kept_columns(M: Any, op: Any, sup: np.ndarray) -> Any:
    """Columns ``sup`` of ``M`` as float64 scipy CSR (targets x kept), without copying the whole matrix.

    A scipy or numpy matrix is sliced directly (its float64 values kept);
    otherwise the columns are gathered from the operator's household-major
    copy (on its device, then moved to the CPU).
    """
    import scipy.sparse as sp

    if sp.issparse(M):
        fmt = M.format
        sub = M[:, sup] if fmt in ("csr", "csc") else M.tocsc()[:, sup]
        return sp.csr_matrix(sub, dtype=np.float64)
    if isinstance(M, np.ndarray) and M.ndim == 2:
        return sp.csr_matrix(np.asarray(M[:, sup], dtype=np.float64))
    return OperatorColumns(op).fetch(sup).T.tocsr()


def _kept_columns_dtype(M: Any, op: Any) -> torch.dtype:
    """Precision of the values :func:`_kept_columns` gathers."""
    import scipy.sparse as sp

    if sp.issparse(M) or (isinstance(M, np.ndarray) and M.ndim == 2):
        return torch.float64
    return op.dtype


def _common_weight(op: Any, t: np.ndarray) -> float:
    """One starting weight for every household when no design weights are given.

    The geometric median of ``t_i / (M 1)_i`` over the targets where both
    are positive: the weight at which the whole file reproduces the scale
    of the targets (a sample of 2,000 households standing for a population
    of 100,000 gets about 50). 1 when no target is positive.
    """
    ones = torch.ones(op.shape[1], dtype=op.dtype, device=op.device)
    sums = op.matvec(ones).double().cpu().numpy()
    ok = (sums > 0) & (t > 0)
    if not ok.any():
        return 1.0
    return float(np.exp(np.median(np.log(t[ok] / sums[ok]))))
