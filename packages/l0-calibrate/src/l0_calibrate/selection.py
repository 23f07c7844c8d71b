"""Select ``target_count`` households with L0 gates, then polish their weights to the targets.

:func:`select_and_polish` is the quality pipeline of l0-calibrate:

1. **Gate training.** Every household ``k`` has a Hard Concrete gate
   ``z_k`` (and, with ``learn_adjustments=True``, a log-adjustment
   ``theta_k``, else 0); its weight is

       w_k = d_k * exp(theta_k) * z_k * c,    c = sum(d) / sum(d * z)  (no gradient)

   so the open gates always carry the population total (a ratio estimator)
   whatever the current sparsity. The loss is the weighted mean squared
   *relative* target error, plus ``lambda_dispersion`` times the ``CV^2``
   of the non-zero weights (design effect minus 1), plus
   ``lambda_distance`` times the calibration distance of the kept weights
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
from l0_core import SparseOperator, TargetSparsityController, prob_active_for_init_mean
from l0_core.checks import check_float, check_probability, renamed_keywords

from .diagnostics import weight_diagnostics
from .hierarchy import Hierarchy, reconcile_targets
from .polish import PolishResult, _as_vector, _check_band
from .problem import Problem, problem_from_operator
from .regularizers import RatioBound, _check_distance, inflate_design_weights, ratio_bounds
from .selection_gates import _project_count as _project_count  # re-exported (tests, old path)
from .selection_gates import train_gates
from .selection_pipeline import SupportSearch
from .selection_refine import _WHITEN_MAX_ENTRIES
from .selection_refine import _swap_refine as _swap_refine  # re-exported (tests, old path)
from .selection_repair import _cover_seed as _cover_seed  # re-exported (tests, old path)
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
        ``polish``, and ``cover``/``repair`` when they ran),
        ``stage_devices`` (where each stage ran: the operator's device,
        ``"cpu"``, or ``"cuda:0+cpu"`` for the refinement's products on the
        device and its exchanges on the CPU) and
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


def _differs(op: SparseOperator, dtype: torch.dtype | None, device: Any) -> bool:
    """True when ``dtype`` or ``device`` (None: any) asks for another operator than ``op``."""
    if dtype is not None and op.dtype != dtype:
        return True
    if device is None:
        return False
    want = torch.device(device)
    return want.type != op.device.type or (want.index is not None and want.index != op.device.index)


@renamed_keywords(
    dispersion_weight="lambda_dispersion",
    distance_weight="lambda_distance",
    log_every="verbose_freq",
)
def select_and_polish(
    M: Any,
    targets: Any = None,
    target_count: int | float | None = None,
    *,
    design_weights: Any = None,
    target_weights: Any = None,
    distance: str = "raking",
    max_weight_ratio: RatioBound = 10.0,
    lambda_dispersion: float = 0.1,
    lambda_distance: float = 0.0,
    epochs: int = 1000,
    lr: float = 0.2,
    temperature: float = 2.0 / 3.0,
    final_temperature: float | None = 0.05,
    learn_adjustments: bool = False,
    init_keep_prob: float | None = None,
    hierarchy: Hierarchy | None = None,
    polish: bool = True,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    refine_swaps: int | None = None,
    balance_metric: str = "auto",
    band: float | None = 0.05,
    cover: bool | None = None,
    repair_moves: int = 40,
    verbose_freq: int = 100,
    progress: bool | None = False,
) -> SelectionResult:
    """Choose ``target_count`` households by L0 gate training, then polish their weights.

    Parameters
    ----------
    M : Problem or matrix
        A :class:`~l0_calibrate.problem.Problem` (built once by
        :func:`~l0_calibrate.problem.build_problem`: its operator is used as
        is, and it supplies the defaults of ``targets``, ``target_weights``
        and ``design_weights``), or an estimate matrix ``(n_targets,
        n_cols)`` (scipy.sparse, numpy, torch or
        :class:`l0_core.SparseOperator`), converted once; ``M @ w`` are the
        estimates. Every later stage reads the kept or candidate columns
        only, never a copy of the whole matrix.
    targets : array-like, optional
        Target totals, length ``n_targets`` (required with a matrix).
    target_count : int or float
        Households to keep: a count ``>= 1`` or a fraction in ``(0, 1]`` (required).
    design_weights : array-like, optional
        Positive design weights. Default: one common weight derived from the
        data, the geometric median over the targets of ``t_i / (M 1)_i`` (so
        that the whole file carries the scale of the targets; 1 when no
        target is positive); see ``diagnostics["start_weight"]``.
    target_weights : array-like, optional
        Non-negative importance of each target in the fit (default 1).
    distance : {"raking", "chi2"}, default "raking"
        Calibration distance used when polishing (and by ``lambda_distance``).
    max_weight_ratio : float, (lo, hi) or None, default 10
        Bounds on each kept weight relative to its inflated design weight
        ``q_k = d_k * sum(d) / sum_kept(d)`` (see
        :mod:`l0_calibrate.regularizers`), enforced by the polish. Without
        design weights ``d`` is the common starting weight derived from the
        data, so the bound is relative to the scale of the targets. Targets
        a bound keeps out of reach are listed in ``SelectionResult.unmet``
        (with ``weights_at_bound``) and logged as a warning.
    lambda_dispersion : float, default 0.1
        Weight of the ``CV^2`` (design effect - 1) of the kept weights.
    lambda_distance : float, default 0
        Weight of the calibration distance of the kept weights from their
        inflated design weights during selection.
    epochs : int, default 1000
        Gate-training steps.
    lr : float, default 0.2
        Adam learning rate.
    temperature : float, default 2/3
        Hard Concrete temperature at the start.
    final_temperature : float or None, default 0.05
        Temperature reached at the last epoch (geometric annealing); None
        keeps ``temperature``.
    learn_adjustments : bool, default False
        Also learn a log-adjustment per household during gate training
        (else the kept households carry equal adjustments).
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
        Precision and device of the gate training (default: float32 on the
        matrix's device; for a Problem, its operator's).
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
    verbose_freq : int, default 100
        Epochs between ``logging`` records and history rows.
    dispersion_weight, distance_weight, log_every
        Deprecated spellings of ``lambda_dispersion``, ``lambda_distance``
        and ``verbose_freq`` (a ``DeprecationWarning``; passing both
        spellings of one raises ``TypeError``).
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
    if isinstance(M, Problem):
        problem, op = M, M.op
        targets = problem.targets if targets is None else targets
        target_weights = problem.loss_weights if target_weights is None else target_weights
        design_weights = problem.design_weights if design_weights is None else design_weights
        if _differs(op, dtype, device):
            op = op.to(device=device, dtype=dtype)  # another precision or device than the problem's
        t_np = _as_vector(targets, "targets", op.shape[0])
    else:
        op = SparseOperator.from_any(M, dtype=dtype or torch.float32, device=device, argument="M")
        t_np = _as_vector(targets, "targets", op.shape[0])
        problem = problem_from_operator(op, t_np, source=M)
    n_targets, n_cols = op.shape
    dtype = op.dtype
    if target_count is None:
        raise ValueError(
            "target_count is required: the number (int) or fraction (float) of households to keep"
        )
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
        ("lambda_dispersion", lambda_dispersion, True),
        ("lambda_distance", lambda_distance, True),
        ("lr", lr, False),
        ("temperature", temperature, False),
    ):
        check_float(value, name, min_val=0.0, include_boundaries="both" if zero_ok else "right")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(verbose_freq, bool) or not isinstance(verbose_freq, int) or verbose_freq < 1:
        raise ValueError(f"verbose_freq must be a positive integer, got {verbose_freq!r}")
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
        init_prob_active = prob_active_for_init_mean(init_keep_prob, temperature)
    if hierarchy is not None:
        t_np = reconcile_targets(t_np, hierarchy)

    dev = op.device
    clock = StageClock(progress, total=epochs + 4, desc="select", device=dev)
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

    order, theta, history = train_gates(
        op,
        t,
        scale,
        v,
        d,
        count,
        epochs=epochs,
        lr=lr,
        temperature=temperature,
        final_temperature=final_temperature,
        init_prob_active=init_prob_active,
        learn_adjustments=learn_adjustments,
        lambda_dispersion=lambda_dispersion,
        lambda_distance=lambda_distance,
        kind=kind,
        generator=generator,
        clock=clock,
        where=where,
        verbose_freq=verbose_freq,
    )
    metric = balance_metric
    if metric == "auto":
        small = n_targets * n_cols <= _WHITEN_MAX_ENTRIES
        metric = "whitened" if small and count >= 10 * n_targets else "relative"
    lo_b, hi_b = ratio_bounds(max_weight_ratio)
    search = SupportSearch(
        problem, t_np, d_np, v_np, scale.double().cpu().numpy(), order, count,
        kind=kind, lo=lo_b, hi=hi_b, band=band, metric=metric, refine_swaps=refine_swaps,
        repair_moves=repair_moves, clock=clock,
    )  # fmt: skip
    support, result = search.run(cover=cover, polish=polish)
    with torch.no_grad():
        sup_t = torch.as_tensor(support, device=dev)
        fit_w = (d[sup_t] * torch.exp(theta[sup_t])).double().cpu().numpy()
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
    diagnostics: dict[str, Any] = dict(weight_diagnostics(weights, d_np))
    diagnostics["stage_times"] = dict(clock.times)
    diagnostics["stage_devices"] = dict(clock.devices)
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
