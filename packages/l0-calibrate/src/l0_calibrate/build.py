"""The two ends of a calibration, shared by :func:`~l0_calibrate.calibrate` and the launcher.

:func:`build_problem` validates and converts this process's matrix once
(infeasibility decided over all ranks); :func:`build_result` turns a
method's :class:`~l0_calibrate.methods.Solution` into a
:class:`~l0_calibrate.CalibrationResult`, summing the estimates and the
diagnostics over the ranks through the reducer (the identity in one
process). Both are collective when the reducer is a
:class:`~l0_calibrate.distributed_reducer.ProcessGroupReducer`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .diagnostics import weight_diagnostics
from .distributed_reducer import LocalReducer, ProcessGroupReducer, stop_together
from .methods import Solution
from .problem import Problem
from .problem import build_problem as validated_problem
from .result import CalibrationResult, UnmetTargetWarning, mark_misses, target_table

__all__ = ["build_problem", "build_result", "n_local", "together"]


def together(sharded: bool, what: str) -> contextlib.AbstractContextManager[Any]:
    """Sharded: if one rank fails inside the block, every rank raises (no rank left waiting).

    Examples
    --------
    >>> with together(False, "checking"):
    ...     pass
    """
    return stop_together(what) if sharded else contextlib.nullcontext()


def n_local(reducer: LocalReducer) -> int:
    """Households held by this process.

    Examples
    --------
    >>> n_local(LocalReducer(4))
    4
    """
    return reducer.shard.n_local if isinstance(reducer, ProcessGroupReducer) else reducer.n_total


def _problem(
    matrix: Any, targets: Any, n_households: int, *, argument: str = "estimate_matrix",
    targets_argument: str = "targets", **options: Any,
) -> Problem:  # fmt: skip
    """The one place that validates and converts a caller's matrix into a problem."""
    return validated_problem(
        matrix, targets, n_features=n_households, matrix_argument=argument,
        targets_argument=targets_argument, **options,
    )  # fmt: skip


def build_problem(
    matrix: Any,
    targets: Any,
    reducer: LocalReducer,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    target_names: Sequence[str] | None = None,
    target_groups: Sequence[Hashable] | None = None,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
    design_weights: np.ndarray | None = None,
    argument: str = "estimate_matrix",
) -> Problem:
    """The problem of this process's households, with infeasibility decided over all ranks.

    ``design_weights`` are this process's, already checked (see :func:`~l0_calibrate.calibrate`).

    Examples
    --------
    >>> p = build_problem(np.eye(2), [1.0, 0.0], LocalReducer(2), dtype=torch.float64, device="cpu")
    >>> p.names, p.infeasible.tolist()
    (['target_0', 'target_1'], [False, False])
    """
    with together(reducer.sharded, "checking its estimate_matrix and targets"):
        problem = _problem(
            matrix, targets, n_local(reducer), dtype=dtype, device=device,
            target_groups=target_groups, normalize_groups=normalize_groups,
            group_multipliers=group_multipliers, target_names=target_names,
            design_weights=design_weights, argument=argument,
        )  # fmt: skip
    reducer.reduce_problem(
        problem,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
    )
    return problem


# ------------------------------------------------------------------ the result
def _sum(reducer: LocalReducer, values: np.ndarray) -> np.ndarray:
    """A float64 vector summed over the ranks (itself in one process)."""
    if not isinstance(reducer, ProcessGroupReducer):
        return values
    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64), device=reducer.device)
    return reducer.all_reduce_sum(t.clone()).cpu().numpy()


def _weight_diagnostics(
    reducer: LocalReducer, w: np.ndarray, design: np.ndarray | None
) -> dict[str, Any]:
    """:func:`~l0_calibrate.diagnostics.weight_diagnostics` over every rank's weights.

    Only the non-zero weights (and their design weights) are gathered; the
    household count and the design total are summed.
    """
    nz = w > 0
    pieces = reducer.all_gather_object((w[nz], None if design is None else design[nz]))
    kept = np.concatenate([p[0] for p in pieces])
    n_total = reducer.n_total
    if design is None:
        out: dict[str, Any] = weight_diagnostics(kept)
    else:
        d_kept = np.concatenate([p[1] for p in pieces])
        out = weight_diagnostics(kept, design_weights=d_kept)
        d_total = float(_sum(reducer, np.array([design.sum()]))[0])
        if kept.size:
            adj = kept / d_kept * (d_kept.sum() / d_total)
            out.update(min_adjustment=float(adj.min()), max_adjustment=float(adj.max()))
    out.update(n=int(n_total), sparsity=float(1.0 - kept.size / n_total))
    return out


def _mark_unmet(
    report: Any, solution: Solution, diagnostics: dict[str, Any], warn: bool, stacklevel: int
) -> bool:
    """``report["met"]`` and ``diagnostics["unmet_targets"]``; warn naming the unmet targets.

    Returns whether an :class:`UnmetTargetWarning` was issued.
    """
    infeasible = report["infeasible"].to_numpy(dtype=bool)
    met = np.ones(len(report), dtype=bool)
    if solution.unmet is not None:
        met[solution.unmet] = False
    met &= ~infeasible
    report["met"] = met
    unmet = report.loc[~met & ~infeasible, "name"].tolist()
    diagnostics["unmet_targets"] = unmet
    if not (unmet and solution.polish_error is not None and warn):
        return False
    n_bad = int(infeasible.sum())
    warnings.warn(
        f"{len(unmet)} target(s) not met after polishing (largest relative error "
        f"{solution.polish_error:.3g}): {', '.join(map(str, unmet[:10]))}"
        + (" ..." if len(unmet) > 10 else "") + solution.unmet_cause + ". See report['met']"
        + (f"; {n_bad} target(s) are infeasible (report['infeasible'])." if n_bad else "."),
        UnmetTargetWarning,
        stacklevel=stacklevel,
    )  # fmt: skip
    return True


def build_result(
    problem: Problem,
    solution: Solution,
    reducer: LocalReducer,
    *,
    labels: Any = None,
    holdout: tuple[Any, Any, Any] = (None, None, None),
    tolerance: float = 0.05,
    stacklevel: int = 3,
) -> CalibrationResult:
    """The :class:`~l0_calibrate.CalibrationResult` of a solution (collective when sharded).

    The report, the diagnostics and the holdout cover every rank's
    households; ``weights`` holds this process's. Warns (on rank 0) about
    missed, unmet and infeasible targets.

    Examples
    --------
    >>> from l0_calibrate.methods import Solution
    >>> p = build_problem(np.eye(2), [1.0, 2.0], LocalReducer(2), dtype=torch.float64, device="cpu")
    >>> build_result(p, Solution(np.array([1.0, 2.0])), LocalReducer(2)).n_active
    2
    """
    import pandas as pd

    w = solution.weights
    n_here = n_local(reducer)
    estimates = _sum(reducer, problem.estimates(w))
    report = target_table(
        estimates, problem.targets, problem.names, problem.groups, problem.infeasible
    )
    mark_misses(report, tolerance, warn=False)
    diagnostics = _weight_diagnostics(reducer, w, problem.design_weights)
    diagnostics["stage_times"] = dict(solution.stage_times)
    diagnostics.update(solution.diagnostics)
    warned = solution.unmet is not None and _mark_unmet(
        report, solution, diagnostics, reducer.is_main, stacklevel
    )
    if reducer.is_main and not warned:
        mark_misses(report, tolerance, stacklevel=stacklevel)
    shard = reducer.shard if isinstance(reducer, ProcessGroupReducer) else None
    if labels is None:
        start = 0 if shard is None else shard.start
        labels = (
            problem.household_index
            if problem.household_index is not None
            else pd.RangeIndex(start, start + n_here)
        )
    hold_m, hold_t, hold_names = holdout
    hold_report = None
    if hold_m is not None:
        hold = _problem(
            hold_m, hold_t, n_here, dtype=torch.float64, device="cpu", target_names=hold_names,
            argument="holdout_matrix", targets_argument="holdout_totals",
        )  # fmt: skip
        est = _sum(reducer, hold.estimates(w))
        hold_report = target_table(est, hold.targets, hold.names)
    history = [
        {k: v for k, v in h.items() if k not in ("weights", "model")} for h in solution.history
    ]
    return CalibrationResult(
        weights=pd.Series(w, index=labels, name="weight"),
        report=report,
        history=pd.DataFrame(history),
        diagnostics=diagnostics,
        holdout=hold_report,
        model=solution.model,
        shard=shard,
        world_size=1 if shard is None else shard.world_size,
        epochs=solution.epochs,
    )
