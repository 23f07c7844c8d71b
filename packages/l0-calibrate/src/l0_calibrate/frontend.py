"""``calibrate(estimate_matrix, targets, target_count=...) -> CalibrationResult``: the one front end.

The same code runs in one process and on every rank of a process group:

1. the reducer is resolved once (:class:`~l0_calibrate.distributed_reducer.LocalReducer`
   or :class:`~l0_calibrate.distributed_reducer.ProcessGroupReducer`, by
   :func:`~l0_calibrate.distributed_reducer.use_sharding`); a path is read
   through :func:`~l0_calibrate.distributed_io.load_columns` (all households,
   or this rank's share);
2. the problem is built once (:func:`build_problem`);
3. the method runs: ``METHODS[method].run(problem, options, reducer)``
   (:mod:`l0_calibrate.methods`), its options built once from the keywords;
4. :func:`build_result` turns the solution into a
   :class:`~l0_calibrate.CalibrationResult`, summing estimates and
   diagnostics over the ranks through the same reducer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator
from l0_core.checks import check_device, check_float

from .diagnostics import weight_diagnostics
from .distributed_io import load_columns, matrix_shape
from .distributed_reducer import (
    ColumnShard,
    LocalReducer,
    ProcessGroupReducer,
    stop_together,
    use_sharding,
)
from .inputs import (
    align_to_labels,
    as_matrix,
    as_vector,
    check_matrix_shape,
    check_model_dtype,
    is_dataframe,
    prepare_problem,
)
from .losses import get_loss
from .methods import METHODS, Method, Solution
from .methods.base import DEVICE, DTYPE, SEED
from .methods.select import BAND
from .result import (
    CalibrationResult,
    TargetMissWarning,
    UnmetTargetWarning,
    mark_misses,
    target_table,
)

__all__ = [
    "CalibrationResult",
    "TargetMissWarning",
    "UnmetTargetWarning",
    "build_problem",
    "build_result",
    "calibrate",
    "mark_misses",
]

#: Keywords passed to the method even when None (None means something there).
_ALWAYS = frozenset({"seed", "band"})


def calibrate(
    estimate_matrix: Any,
    targets: Any,
    *,
    target_count: int | float | None = None,
    target_names: Sequence[str] | None = None,
    target_groups: Sequence[Hashable] | None = None,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
    design_weights: Any = None,
    household_index: Any = None,
    loss: str | Callable | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    lambda_l0: float | None = None,
    lambda_l2: float | None = None,
    init_keep_prob: float | None = None,
    polish: bool | None = None,
    distance: str | None = None,
    lambda_distance: float | None = None,
    lambda_dispersion: float | None = None,
    max_weight_ratio: Any = None,
    band: float | None = BAND,
    method: str | None = None,
    beta_schedule: str | Callable | None = None,
    final_beta: float | None = None,
    holdout_matrix: Any = None,
    holdout_totals: Any = None,
    holdout_names: Sequence[str] | None = None,
    callbacks: Sequence[Callable[[dict], Any]] | None = None,
    log_freq: int | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    seed: int | None = SEED,
    device: str | torch.device = DEVICE,
    dtype: torch.dtype = DTYPE,
    distributed: bool | None = None,
    tolerance: float = 0.05,
) -> CalibrationResult:
    """Calibrate sparse household weights to targets and report how well they match.

    Parameters
    ----------
    estimate_matrix : matrix, pandas.DataFrame or path
        Either ``(n_targets, n_households)`` (scipy.sparse, numpy, torch,
        :class:`l0_core.SparseOperator`) or a DataFrame of households x
        targets (microcalibrate's layout; its columns name the targets and
        its index the households). Not modified. Or a path to an ``.npz``,
        ``.npy``, ``.parquet`` or ``.csv`` file
        (:func:`l0_calibrate.load_columns`; sharded, each rank reads only its
        share).
    targets : array-like or pandas.Series
        One value per target. A Series is aligned by name to a DataFrame's
        columns (or ``target_names``): a target without a column, a column
        without a target and duplicate labels all raise, naming them.
        Targets that non-negative weights cannot reach (no household
        contributes, or a negative value on a non-negative row) are kept
        in the report as ``infeasible`` and named in a warning.
    target_count : int or float, optional
        Number (int) or fraction (float) of households to keep; exact.
    target_names, target_groups : optional
        Names and group labels of the targets (groups weight the loss as in
        ``SparseCalibrationWeights.fit``).
    normalize_groups, group_multipliers : optional
        As in ``SparseCalibrationWeights.fit``.
    design_weights : array-like or pandas.Series, optional
        Positive initial (design) weights; default: one common weight, the
        median ratio of each target to its unweighted column sum. A Series
        is aligned by its index to the households (``household_index``, the
        DataFrame's index, else 0..n-1) and raises when the labels differ.
        With ``method="select"`` the default common weight is the geometric
        median over the targets of ``target_i / (M 1)_i`` (the weight at
        which the whole file reproduces the scale of the targets: a sample
        of 2,000 households standing for 100,000 starts near 50), and
        ``max_weight_ratio`` bounds each kept weight relative to this
        starting weight inflated to the population total over the kept
        households (``start * n_households / target_count``), not relative
        to 1. When a bound keeps targets out of reach, an
        :class:`UnmetTargetWarning` names them, the report's ``met`` column
        is False for them, and ``diagnostics`` carries ``unmet_targets``
        (names), ``weights_at_bound`` and ``start_weight``.
    household_index : sequence, optional
        Labels of the households for ``weights`` (default: the DataFrame's
        index, else 0..n-1).
    loss : str or callable, optional
        Loss name (see :mod:`l0_calibrate.losses`) or function (``"gates"``;
        default ``"relative"``).
    epochs, lr : int, float, optional
        Adam epochs and learning rate of the gate training (default 1000 and
        0.05). Every ``None`` below means the method's default, written once
        in its options class (:class:`l0_calibrate.methods.GatesOptions`,
        :class:`l0_calibrate.methods.SelectOptions`).
    lambda_l0 : float, optional
        L0 strength; default 0 with ``target_count`` (the controller sets
        it) and 0.01 without.
    lambda_l2 : float, optional
        As in :class:`SparseCalibrationWeights` (default 0).
    init_keep_prob : float, optional
        Initial gate location (default: the method's own; 0.5 for ``"gates"``).
    polish : bool, optional
        Re-solve the kept households' weights exactly on the targets
        (default: on when ``target_count`` is given).
    distance : {"raking", "chi2"}, optional
        Calibration distance of the polishing stage (and of
        ``lambda_distance``). Raking keeps every kept weight positive, so the
        polished result has exactly ``target_count`` households; chi2 may set
        some to 0.
    lambda_distance, lambda_dispersion, max_weight_ratio
        Weight regularisation (see ``SparseCalibrationWeights.fit``). None
        means the method's default (``"gates"``: none; ``"select"``: the
        defaults of :func:`l0_calibrate.selection.select_and_polish`).
    band : float or None, default 0.05
        ``method="select"`` only: when the kept households cannot match every
        target exactly, keep each target within this relative band whenever
        the bounds allow (a linear-programming cover seeds the selection and
        exchanges repair targets outside the band); None falls back to plain
        least squares. See :func:`l0_calibrate.selection.select_and_polish`.
    method : {"select", "gates"}, optional
        A name in :data:`l0_calibrate.methods.METHODS`. ``"select"``
        (default when ``target_count`` is given, in one process): gate selection with a
        dispersion penalty, exact top-``target_count`` and bounded polishing
        (:func:`l0_calibrate.selection.select_and_polish`), the
        low-design-effect pipeline. ``"gates"``: the fast, resumable
        :class:`SparseCalibrationWeights` engine (callbacks, progress bar,
        ``model`` in the result), then polishing.
    beta_schedule, final_beta : optional
        Temperature schedule.
    holdout_matrix, holdout_totals, holdout_names : optional
        Variables that were *not* targets (same orientation as
        ``estimate_matrix``) and their true totals: reported in ``holdout``.
    callbacks, log_freq, verbose, progress
        Monitoring, as in ``SparseCalibrationWeights.fit``. With
        ``method="select"`` the bar spans the whole pipeline (epochs, then
        one step per stage). Either method logs each stage's start, end and
        time on the ``l0_calibrate`` logger and records the times in
        ``diagnostics["stage_times"]`` (the select stages also as ``phase``
        rows of ``history``).
    seed : int or None, default 0
        Seed of the gates' noise (None: from torch's global generator).
    device, dtype
        Where and in which precision to compute.
    distributed : bool or None, default None
        Column sharding over :mod:`torch.distributed`. ``None``: shard
        exactly when a process group with more than one rank is initialised;
        ``False``: never (an independent fit on every rank); ``True``: shard,
        raising without a process group. Sharded, ``estimate_matrix`` is
        this rank's households (or a path to a file of all of them, of which
        each rank reads its even share), every rank passes the same
        ``targets``, ``method`` defaults to ``"gates"`` (``"select"`` needs
        all households in one process), and the result holds this rank's
        weights (``result.shard``) with report and diagnostics over all
        ranks (:func:`l0_calibrate.gather_weights` collects the weights on
        rank 0). The reducer (``LocalReducer`` or ``ProcessGroupReducer``)
        is chosen once here; every later step is the same code.
    tolerance : float, default 0.05
        Largest relative error at which a target counts as reached. Targets
        missed by more are marked in the report's ``missed`` column and
        named, with the infeasible ones, in a :class:`TargetMissWarning`
        (``result.reached`` is then False; ``l0-calibrate run`` exits with
        status 3 unless ``--allow-miss``).

    Returns
    -------
    CalibrationResult

    Examples
    --------
    >>> import pandas as pd
    >>> households = pd.DataFrame({"people": [1, 2, 3, 4, 2], "income": [10.0, 30.0, 20.0, 50.0, 25.0]},
    ...                           index=["a", "b", "c", "d", "e"])
    >>> res = calibrate(households, pd.Series({"people": 9.0, "income": 80.0}), target_count=3, epochs=300)
    >>> res.n_active
    3
    >>> bool(res.report["abs_rel_error"].max() < 1e-3)
    True
    """
    keywords = dict(locals())
    dtype = check_model_dtype(dtype)
    device = check_device(device)
    if loss is not None:
        get_loss(loss, "loss")  # an unknown name raises here, whichever method runs
    tolerance = check_float(tolerance, "tolerance", min_val=0.0, hint="pass e.g. tolerance=0.05")
    sharded = use_sharding(distributed)
    matrix, reducer = _read(estimate_matrix, sharded)
    n_local = _n_local(reducer)
    with _together(sharded, "checking its calibrate arguments"):
        entry = _method(method, target_count, sharded)
        if (holdout_matrix is None) != (holdout_totals is None):
            raise ValueError("pass both holdout_matrix and holdout_totals, or neither")
    with _together(sharded, "checking its design_weights"):
        labels = _labels(matrix, household_index, reducer, n_local)
        design = _design_weights(design_weights, labels, reducer, n_local)
    keywords.update(design_weights=design, dtype=dtype, device=device)
    options = _options(entry, keywords)
    problem = build_problem(
        matrix, targets, reducer, dtype=dtype, device=device, target_names=target_names,
        target_groups=target_groups, normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
    )  # fmt: skip
    solution = entry.run(problem, options, reducer)
    return build_result(
        matrix, problem, solution, reducer, design_weights=design, labels=labels,
        holdout=(holdout_matrix, holdout_totals, holdout_names), tolerance=tolerance, stacklevel=4,
    )  # fmt: skip


# ------------------------------------------------------------------ the steps
def _together(sharded: bool, what: str) -> contextlib.AbstractContextManager[Any]:
    """Sharded: if one rank fails inside the block, every rank raises (no rank left waiting)."""
    return stop_together(what) if sharded else contextlib.nullcontext()


def _n_local(reducer: LocalReducer) -> int:
    """Households held by this process."""
    return reducer.shard.n_local if isinstance(reducer, ProcessGroupReducer) else reducer.n_total


def _read(estimate_matrix: Any, sharded: bool) -> tuple[Any, LocalReducer]:
    """The matrix of this process's households (read from a path) and the reducer over them."""
    if isinstance(estimate_matrix, (str, os.PathLike)):
        with _together(sharded, "reading its columns of estimate_matrix"):
            n_file = matrix_shape(estimate_matrix, argument="estimate_matrix")[1]
            shard = ColumnShard.even(n_file) if sharded else ColumnShard(n_file, 0, n_file)
            matrix = load_columns(estimate_matrix, shard, argument="estimate_matrix")
        return matrix, ProcessGroupReducer(shard) if sharded else LocalReducer(n_file)
    with _together(sharded, "checking its calibrate arguments"):
        n_local = _n_households(estimate_matrix)
    if not sharded:
        return estimate_matrix, LocalReducer(n_local)
    return estimate_matrix, ProcessGroupReducer(ColumnShard.from_local_count(n_local))


def _n_households(M: Any) -> int:
    """Household count of a matrix argument (a DataFrame's rows, else the columns), checked."""
    if isinstance(M, (list, tuple)):
        as_matrix(M, dtype=torch.float64, device="cpu", argument="estimate_matrix")  # raises
    shape = getattr(M, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            "estimate_matrix must be a 2-D matrix (numpy, scipy.sparse, torch, SparseOperator), a "
            f"DataFrame of households x targets or a file path; got {type(M).__name__}"
            + (f" of shape {tuple(shape)}" if shape is not None else "")
        )
    n_targets, n = (shape[1], shape[0]) if is_dataframe(M) else (shape[0], shape[1])
    check_matrix_shape(int(n_targets), int(n), "estimate_matrix", frame=is_dataframe(M))
    return int(n)


def _method(method: Any, target_count: Any, sharded: bool) -> Method:
    """The method's entry: ``select`` with a count in one process, else ``gates``; unknown names raise."""
    if method is None:
        method = "select" if target_count is not None and not sharded else "gates"
    entry = METHODS.get(method) if isinstance(method, str) else None
    if entry is None:
        raise ValueError(f"method must be {' or '.join(map(repr, METHODS))}, got {method!r}")
    if sharded and not entry.shards:
        shards = [name for name, m in METHODS.items() if m.shards]
        raise ValueError(
            f"method={method!r} needs all households in one process and cannot run column-sharded; "
            f"pass method={shards[0]!r} (the default inside a process group), or distributed=False to "
            f"run an independent {method} fit on every rank"
        )
    return entry


def _options(entry: Method, keywords: Mapping[str, Any]) -> Any:
    """The method's options object: the keywords it takes, None meaning its default."""
    names = {f.name for f in dataclasses.fields(entry.options)}
    given = {k: v for k, v in keywords.items() if k in names and (v is not None or k in _ALWAYS)}
    return entry.options(**given)


def _labels(M: Any, household_index: Any, reducer: LocalReducer, n_local: int) -> Any:
    """This process's household labels (``household_index``, the DataFrame's index, or column numbers)."""
    if household_index is not None:
        import pandas as pd

        labels = pd.Index(reducer.local_part(np.asarray(household_index), "household_index"))
        if len(labels) != n_local:
            raise ValueError(
                f"household_index has {len(labels)} labels but there are {n_local} households"
            )
        return pd.Index(household_index) if not isinstance(reducer, ProcessGroupReducer) else labels
    if is_dataframe(M):
        return M.index
    return None


def _design_weights(
    design_weights: Any, labels: Any, reducer: LocalReducer, n_local: int
) -> np.ndarray | None:
    """This process's design weights: cut to its households, aligned to their labels, checked."""
    if design_weights is None:
        return None
    local = reducer.local_part(design_weights, "design_weights")
    if labels is None:
        start = reducer.shard.start if isinstance(reducer, ProcessGroupReducer) else 0
        labels = range(start, start + n_local)
    local = align_to_labels(local, labels, "design_weights", "the households")
    init = as_vector(local, "design_weights", n_local, what="one per household")
    if (init <= 0).any():
        raise ValueError("design_weights must be positive; drop zero-weight households first")
    return init


def _problem(
    matrix: Any, targets: Any, n_local: int, *, argument: str = "estimate_matrix",
    targets_argument: str = "targets", **options: Any,
) -> Any:  # fmt: skip
    """The one place that validates and converts a caller's matrix into a problem."""
    return prepare_problem(
        matrix, targets, n_features=n_local, matrix_argument=argument,
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
    argument: str = "estimate_matrix",
) -> Any:
    """The problem of this process's households, with infeasibility decided over all ranks.

    Examples
    --------
    >>> p = build_problem(np.eye(2), [1.0, 0.0], LocalReducer(2), dtype=torch.float64, device="cpu")
    >>> p.names, p.infeasible.tolist()
    (['target_0', 'target_1'], [False, False])
    """
    with _together(reducer.sharded, "checking its estimate_matrix and targets"):
        problem = _problem(
            matrix, targets, _n_local(reducer), dtype=dtype, device=device,
            target_groups=target_groups, normalize_groups=normalize_groups,
            group_multipliers=group_multipliers, target_names=target_names, argument=argument,
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


def _exact_estimates(matrix: Any, problem: Any, w: np.ndarray) -> np.ndarray:
    """``M @ w`` in float64 from the caller's matrix (not its float32 copy), for the report."""
    if problem.op.dtype == torch.float64:
        op = problem.op
    elif is_dataframe(matrix):
        return matrix.to_numpy(dtype=np.float64).T @ w
    else:
        op = SparseOperator.from_any(matrix, dtype=torch.float64, transpose_copy=False)
    return op.matvec(torch.as_tensor(w, device=op.device)).cpu().numpy()


def _weight_diagnostics(reducer: LocalReducer, w: np.ndarray, design: np.ndarray | None) -> dict[str, Any]:
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


def _mark_unmet(report: Any, solution: Solution, diagnostics: dict[str, Any], warn: bool) -> bool:
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
        stacklevel=4,
    )  # fmt: skip
    return True


def build_result(
    matrix: Any,
    problem: Any,
    solution: Solution,
    reducer: LocalReducer,
    *,
    design_weights: np.ndarray | None = None,
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
    >>> build_result(np.eye(2), p, Solution(np.array([1.0, 2.0])), LocalReducer(2)).n_active
    2
    """
    import pandas as pd

    w = solution.weights
    n_local = _n_local(reducer)
    estimates = _sum(reducer, _exact_estimates(matrix, problem, w))
    report = target_table(estimates, problem.targets, problem.names, problem.groups, problem.infeasible)
    mark_misses(report, tolerance, warn=False)
    diagnostics = _weight_diagnostics(reducer, w, design_weights)
    diagnostics["stage_times"] = dict(solution.stage_times)
    diagnostics.update(solution.diagnostics)
    warned = solution.unmet is not None and _mark_unmet(report, solution, diagnostics, reducer.is_main)
    if reducer.is_main and not warned:
        mark_misses(report, tolerance, stacklevel=stacklevel)
    shard = reducer.shard if isinstance(reducer, ProcessGroupReducer) else None
    if labels is None:
        start = 0 if shard is None else shard.start
        labels = problem.household_index if problem.household_index is not None else pd.RangeIndex(start, start + n_local)
    hold_m, hold_t, hold_names = holdout
    hold_report = None
    if hold_m is not None:
        hold = _problem(
            hold_m, hold_t, n_local, dtype=torch.float64, device="cpu", target_names=hold_names,
            argument="holdout_matrix", targets_argument="holdout_totals",
        )  # fmt: skip
        est = _sum(reducer, hold.op.matvec(torch.as_tensor(w)).numpy())
        hold_report = target_table(est, hold.targets, hold.names)
    history = [{k: v for k, v in h.items() if k not in ("weights", "model")} for h in solution.history]
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
