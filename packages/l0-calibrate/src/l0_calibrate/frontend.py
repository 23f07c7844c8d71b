"""``calibrate(estimate_matrix, targets, target_count=...) -> CalibrationResult``: the one front end.

The same code runs in one process and on every rank of a process group:

1. the reducer is resolved once (:class:`~l0_calibrate.distributed_reducer.LocalReducer`
   or :class:`~l0_calibrate.distributed_reducer.ProcessGroupReducer`, by
   :func:`~l0_calibrate.distributed_reducer.use_sharding`); a path is read
   through :func:`~l0_calibrate.distributed_io.load_columns` (all households,
   or this rank's share);
2. the problem is built once (:func:`l0_calibrate.build.build_problem`);
3. the method runs: ``METHODS[method].run(problem, options, reducer)``
   (:mod:`l0_calibrate.methods`), its options built once from the keywords;
4. :func:`l0_calibrate.build.build_result` turns the solution into a
   :class:`~l0_calibrate.CalibrationResult`, summing estimates and
   diagnostics over the ranks through the same reducer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from l0_core.checks import check_device, check_float, renamed_keywords

from .build import build_problem, build_result, n_local, together
from .distributed_io import load_columns, matrix_shape
from .distributed_reducer import (
    ColumnShard,
    LocalReducer,
    ProcessGroupReducer,
    use_sharding,
)
from .inputs import (
    align_to_labels,
    as_matrix,
    as_vector,
    check_matrix_shape,
    check_model_dtype,
    is_dataframe,
)
from .losses import get_loss
from .methods import METHODS, Method
from .methods.base import DEVICE, DTYPE, SEED
from .methods.select import BAND
from .result import CalibrationResult, TargetMissWarning, UnmetTargetWarning, mark_misses

__all__ = [
    "CalibrationResult",
    "TargetMissWarning",
    "UnmetTargetWarning",
    "calibrate",
    "mark_misses",
]

#: Keywords passed to the method even when None (None means something there).
_ALWAYS = frozenset({"seed", "band"})


@renamed_keywords(
    log_freq="verbose_freq", beta_schedule="temperature_schedule", final_beta="final_temperature"
)
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
    temperature_schedule: str | Callable | None = None,
    final_temperature: float | None = None,
    holdout_matrix: Any = None,
    holdout_totals: Any = None,
    holdout_names: Sequence[str] | None = None,
    callbacks: Sequence[Callable[[dict], Any]] | None = None,
    verbose_freq: int | None = None,
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
    temperature_schedule, final_temperature : optional
        Temperature schedule of the gates (``method="gates"``), as in
        ``SparseCalibrationWeights.fit``; ``beta_schedule`` and ``final_beta``,
        their deprecated spellings, warn.
    holdout_matrix, holdout_totals, holdout_names : optional
        Variables that were *not* targets (same orientation as
        ``estimate_matrix``) and their true totals: reported in ``holdout``.
    callbacks, verbose_freq, verbose, progress
        Monitoring, as in ``SparseCalibrationWeights.fit`` (``log_freq``,
        the deprecated spelling of ``verbose_freq``, warns). With
        ``method="select"`` the bar spans the whole pipeline (epochs, then
        one step per stage). Either method logs each stage's start, end and
        time on the ``l0_calibrate`` logger and records the times in
        ``diagnostics["stage_times"]`` (the select stages also as ``phase``
        rows of ``history``); ``diagnostics["stage_devices"]`` says where
        each select stage ran (a stage on the CPU during a GPU run is also
        logged once, with its reason).
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
    where = check_device(device)
    if loss is not None:
        get_loss(loss, "loss")  # an unknown name raises here, whichever method runs
    tolerance = check_float(tolerance, "tolerance", min_val=0.0, hint="pass e.g. tolerance=0.05")
    sharded = use_sharding(distributed)
    matrix, reducer = _read(estimate_matrix, sharded)
    n_here = n_local(reducer)
    with together(sharded, "checking its calibrate arguments"):
        entry = _method(method, target_count, sharded)
        if (holdout_matrix is None) != (holdout_totals is None):
            raise ValueError("pass both holdout_matrix and holdout_totals, or neither")
    with together(sharded, "checking its design_weights"):
        labels = _labels(matrix, household_index, reducer, n_here)
        design = _design_weights(design_weights, labels, reducer, n_here)
    keywords.update(dtype=dtype, device=where)
    options = _options(entry, keywords)
    problem = build_problem(
        matrix, targets, reducer, dtype=dtype, device=where or "cpu", target_names=target_names,
        target_groups=target_groups, normalize_groups=normalize_groups,
        group_multipliers=group_multipliers, design_weights=design,
    )  # fmt: skip
    solution = entry.run(problem, options, reducer)
    return build_result(
        problem, solution, reducer, labels=labels,
        holdout=(holdout_matrix, holdout_totals, holdout_names), tolerance=tolerance, stacklevel=5,
    )  # fmt: skip


# ------------------------------------------------------------------ the steps
def _read(estimate_matrix: Any, sharded: bool) -> tuple[Any, LocalReducer]:
    """The matrix of this process's households (read from a path) and the reducer over them."""
    if isinstance(estimate_matrix, (str, os.PathLike)):
        with together(sharded, "reading its columns of estimate_matrix"):
            n_file = matrix_shape(estimate_matrix, argument="estimate_matrix")[1]
            shard = ColumnShard.even(n_file) if sharded else ColumnShard(n_file, 0, n_file)
            matrix = load_columns(estimate_matrix, shard, argument="estimate_matrix")
        return matrix, ProcessGroupReducer(shard) if sharded else LocalReducer(n_file)
    with together(sharded, "checking its calibrate arguments"):
        n_households = _n_households(estimate_matrix)
    if not sharded:
        return estimate_matrix, LocalReducer(n_households)
    return estimate_matrix, ProcessGroupReducer(ColumnShard.from_local_count(n_households))


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

        if len(household_index) not in (n_local, reducer.n_total):
            raise ValueError(
                f"household_index has {len(household_index)} labels but there are {n_local} households"
            )
        return pd.Index(reducer.local_part(household_index, "household_index"))
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
