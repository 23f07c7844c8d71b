"""The pandas front end: ``calibrate(estimate_matrix, targets, target_count=...) -> CalibrationResult``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from l0_core.checks import check_device, check_float

from .inputs import (
    align_to_labels,
    as_matrix,
    as_vector,
    check_matrix_shape,
    check_model_dtype,
    is_dataframe,
)
from .problem import Problem, prepare_problem
from .weights import SparseCalibrationWeights

__all__ = ["CalibrationResult", "TargetMissWarning", "UnmetTargetWarning", "calibrate", "mark_misses"]

logger = logging.getLogger("l0_calibrate")


class TargetMissWarning(UserWarning):
    """The calibrated weights miss some targets by more than the tolerance (or cannot reach them)."""


def mark_misses(report: Any, tolerance: float, *, warn: bool = True, stacklevel: int = 3) -> Any:
    """Add the ``missed`` column to a target report and warn when a target is missed or infeasible.

    A feasible target is *missed* when its ``abs_rel_error`` exceeds
    ``tolerance``; infeasible targets (which no weights can reach) are
    named in the same warning.

    Parameters
    ----------
    report : pandas.DataFrame
        A report with ``name``, ``abs_rel_error`` and ``infeasible`` columns; changed in place.
    tolerance : float
        Largest relative error that still counts as reached.
    warn : bool, default True
        Issue a :class:`TargetMissWarning` naming the targets.

    Returns
    -------
    pandas.DataFrame
        ``report``.

    Examples
    --------
    >>> import pandas as pd
    >>> rep = pd.DataFrame({"name": ["a", "b"], "abs_rel_error": [0.001, 0.3], "infeasible": [False, False]})
    >>> mark_misses(rep, 0.05, warn=False)["missed"].tolist()
    [False, True]
    """
    import warnings

    infeasible = report["infeasible"].to_numpy(dtype=bool)
    err = report["abs_rel_error"].to_numpy(dtype=np.float64)
    missed = ~infeasible & ~(err <= tolerance * (1 + 1e-9) + 1e-12)  # NaN counts as missed
    report["missed"] = missed
    if warn and (missed.any() or infeasible.any()):
        parts = []
        if missed.any():
            names = report.loc[missed, "name"].tolist()
            worst = float(np.nanmax(np.where(missed, err, np.nan)))
            parts.append(
                f"{len(names)} target(s) missed by more than {tolerance:.3g} relative error "
                f"(worst {worst:.3g}): {', '.join(map(str, names[:10]))}"
                + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            )
        if infeasible.any():
            names = report.loc[infeasible, "name"].tolist()
            parts.append(
                f"{len(names)} target(s) are infeasible (no non-negative weights reach them): "
                + ", ".join(map(str, names[:10]))
                + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            )
        warnings.warn(
            "; ".join(parts)
            + ". See result.report (columns 'missed' and 'infeasible'); more epochs, a larger "
            "target_count, design_weights on the targets' scale or a looser max_weight_ratio may help.",
            TargetMissWarning,
            stacklevel=stacklevel,
        )
    return report


def _relative_errors(estimates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    diff = estimates - targets
    denom = np.abs(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), np.sign(diff) * np.inf)
    return np.where((denom == 0) & (diff == 0), 0.0, out)


def _report(estimates: np.ndarray, targets: np.ndarray, names: list[str], groups: Any) -> Any:
    """Per-target table (the issue-5 diagnostics module's layout when it is installed)."""
    import pandas as pd

    try:
        from .diagnostics import target_report

        return target_report(estimates, targets, names=names, groups=groups)
    except ImportError:  # pragma: no cover - diagnostics ships with the package
        rel = _relative_errors(estimates, targets)
        return pd.DataFrame(
            {
                "name": names,
                "target": targets,
                "estimate": estimates,
                "rel_error": rel,
                "abs_rel_error": np.abs(rel),
                "group": list(groups) if groups is not None else names,
            }
        )


@dataclass
class CalibrationResult:
    """What :func:`calibrate` returns.

    Attributes
    ----------
    weights : pandas.Series
        One weight per household (0 for dropped ones), indexed like the
        households (the DataFrame's index, ``household_index`` or 0..n-1).
    report : pandas.DataFrame
        One row per target: ``name, target, estimate, rel_error,
        abs_rel_error, group, infeasible, missed`` with ``rel_error = (estimate -
        target) / |target|``; ``missed`` marks feasible targets whose
        ``abs_rel_error`` exceeds ``calibrate``'s ``tolerance``.
    history : pandas.DataFrame
        One row per logging step (epoch, phase, loss parts, errors, active count).
    diagnostics : dict
        Weight diagnostics: non-zeros, design effect, Kish effective sample
        size, weight and ratio extremes, plus the target error summary.
    holdout : pandas.DataFrame or None
        The report for the holdout variables, when given.
    model : SparseCalibrationWeights
        The fitted model (``state_dict()`` to checkpoint, ``fit()`` to continue).
    """

    weights: Any
    report: Any
    history: Any
    diagnostics: dict[str, Any] = field(default_factory=dict)
    holdout: Any = None
    model: SparseCalibrationWeights | None = None

    @property
    def n_active(self) -> int:
        """Number of households with a non-zero weight."""
        return int((self.weights.to_numpy() > 0).sum())

    @property
    def infeasible_targets(self) -> list[str]:
        """Names of the targets that no household contributes to."""
        return self.report.loc[self.report["infeasible"], "name"].tolist()

    @property
    def missed_targets(self) -> list[str]:
        """Names of the feasible targets missed by more than the tolerance."""
        if "missed" not in self.report:
            return []
        return self.report.loc[self.report["missed"], "name"].tolist()

    @property
    def reached(self) -> bool:
        """True when every target is feasible and within the tolerance."""
        return not self.missed_targets and not self.infeasible_targets

    def summary(self) -> dict[str, float]:
        """Headline numbers: active count, target errors, design effect.

        Examples
        --------
        >>> res = calibrate(np.array([[1.0, 1.0], [1.0, 3.0]]), [2.0, 4.0], epochs=300, seed=0)
        >>> res.summary()["n_active"], res.summary()["share_within_10pct"]
        (2.0, 1.0)
        """
        ok = ~self.report["infeasible"].to_numpy()
        err = self.report["abs_rel_error"].to_numpy()[ok]
        out = {
            "n_active": float(self.n_active),
            "mean_abs_rel_error": float(np.mean(err)) if err.size else 0.0,
            "median_abs_rel_error": float(np.median(err)) if err.size else 0.0,
            "max_abs_rel_error": float(np.max(err)) if err.size else 0.0,
            "share_within_10pct": float(np.mean(err <= 0.1)) if err.size else 1.0,
            "n_infeasible": float((~ok).sum()),
            "n_missed": float(self.report["missed"].sum()) if "missed" in self.report else 0.0,
        }
        for key in ("design_effect", "kish_ess"):
            if key in self.diagnostics:
                out[key] = float(self.diagnostics[key])
        return out

    def plot(self, *, bins: int = 30) -> Any:
        """Convergence (errors and active count per logging step) and the histogram of target errors.

        Needs matplotlib (``pip install l0-calibrate[plot]``).

        Returns
        -------
        matplotlib.figure.Figure

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> res = calibrate(np.array([[1.0, 1.0], [1.0, 3.0]]), [2.0, 4.0], epochs=200, seed=0)
        >>> len(res.plot().axes)
        3
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("plot() needs matplotlib: pip install 'l0-calibrate[plot]'") from exc
        fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(11, 4))
        h = self.history
        curves = [c for c in ("mean_rel_error", "max_rel_error", "fit_loss") if c in h.columns]
        for c in curves if len(h) else []:
            ax1.semilogy(h["epoch"], h[c].clip(lower=1e-12), label=c.replace("_", " "))
        if curves and len(h):
            ax1.legend(loc="upper left")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("relative error (|est - t| / (|t| + 1))" if "mean_rel_error" in curves else "loss")
        ax1.set_title("convergence")
        ax2 = ax1.twinx()
        count = "n_active" if "n_active" in h.columns else "expected_active"
        if len(h) and count in h.columns:
            ax2.plot(h["epoch"], h[count], color="grey", linestyle="--", label=count.replace("_", " "))
        ax2.set_ylabel("active households")
        ok = ~self.report["infeasible"].to_numpy()
        err = self.report["abs_rel_error"].to_numpy()[ok]
        err = err[np.isfinite(err)]
        ax3.hist(100 * err, bins=bins)
        ax3.set_xlabel("|relative error| per target (%)")
        ax3.set_ylabel("targets")
        ax3.set_title(f"{self.n_active} households, {len(err)} targets")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"CalibrationResult(n_active={int(s['n_active'])}, targets={len(self.report)}, "
            f"mean_abs_rel_error={s['mean_abs_rel_error']:.3g}, max_abs_rel_error={s['max_abs_rel_error']:.3g}"
            + (f", design_effect={s['design_effect']:.3g}" if "design_effect" in s else "")
            + ")"
        )


def _auto_init_weight(problem: Problem) -> float:
    """One weight for every household: the median of ``target_i / (M 1)_i`` over positive rows."""
    row_sums = problem.row_sums()
    ok = (row_sums > 0) & (problem.targets > 0)
    if not ok.any():
        return 1.0
    return float(np.exp(np.median(np.log(problem.targets[ok] / row_sums[ok]))))


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


def _household_labels(M: Any, household_index: Any, n: int) -> Any:
    """The labels per-household Series are aligned to."""
    if household_index is not None:
        return list(household_index)
    if is_dataframe(M):
        return list(M.index)
    return list(range(n))


def _exact_estimates(estimate_matrix: Any, problem: Problem, w: np.ndarray) -> np.ndarray:
    """``M @ w`` in float64 from the caller's matrix (not its float32 copy), for the report."""
    return problem.estimates(w)


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
    loss: str | Callable = "relative",
    epochs: int = 1000,
    lr: float = 0.05,
    lambda_l0: float | None = None,
    lambda_l2: float = 0.0,
    init_keep_prob: float | None = None,
    polish: bool | None = None,
    distance: str = "raking",
    lambda_distance: float = 0.0,
    lambda_dispersion: float | None = None,
    max_weight_ratio: Any = None,
    band: float | None = 0.05,
    method: str | None = None,
    beta_schedule: str | Callable | None = None,
    final_beta: float | None = None,
    holdout_matrix: Any = None,
    holdout_totals: Any = None,
    holdout_names: Sequence[str] | None = None,
    callbacks: Sequence[Callable[[dict], Any]] | None = None,
    log_freq: int = 100,
    verbose: bool = False,
    progress: bool | None = None,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
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
    loss : str or callable, default "relative"
        Loss name (see :mod:`l0_calibrate.losses`) or function.
    epochs, lr : int, float
        Adam epochs and learning rate of the gate training.
    lambda_l0 : float, optional
        L0 strength; default 0 with ``target_count`` (the controller sets
        it) and 0.01 without.
    lambda_l2 : float
        As in :class:`SparseCalibrationWeights`.
    init_keep_prob : float, optional
        Initial gate location (default: the method's own; 0.5 for ``"gates"``).
    polish : bool, optional
        Re-solve the kept households' weights exactly on the targets
        (default: on when ``target_count`` is given).
    distance : {"raking", "chi2"}, default "raking"
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
        ``"select"`` (default when ``target_count`` is given and
        :mod:`l0_calibrate.selection` is installed): gate selection with a
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
        weights with report and diagnostics over all ranks
        (:func:`l0_calibrate.distributed_calibrate.calibrate_sharded`;
        :func:`l0_calibrate.gather_weights` collects the weights on rank 0).
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
    options = dict(locals())  # the arguments, for the sharded path
    from .distributed_reducer import use_sharding
    from .losses import get_loss

    dtype = check_model_dtype(dtype)
    device = check_device(device)
    get_loss(loss, "loss")  # an unknown name raises here, whichever method runs
    tolerance = check_float(tolerance, "tolerance", min_val=0.0, hint="pass e.g. tolerance=0.05")
    options.update(dtype=dtype, device=device, tolerance=tolerance)

    if use_sharding(distributed):
        from .distributed_calibrate import calibrate_sharded

        return calibrate_sharded(**options)
    if isinstance(estimate_matrix, (str, os.PathLike)):  # a file: read every household
        from .distributed_io import load_columns, matrix_shape
        from .distributed_reducer import ColumnShard

        n_file = matrix_shape(estimate_matrix)[1]
        estimate_matrix = load_columns(estimate_matrix, ColumnShard(n_file, 0, n_file))
    n_households = _n_households(estimate_matrix)
    if design_weights is not None:
        design_weights = align_to_labels(
            design_weights,
            _household_labels(estimate_matrix, household_index, n_households),
            "design_weights",
            "the households",
        )
        init = as_vector(design_weights, "design_weights", n_households, what="one per household")
        if (init <= 0).any():
            raise ValueError("design_weights must be positive; drop zero-weight households first")
    else:
        init = None
    if method is None:
        method = "gates"
        if target_count is not None:
            try:
                from . import selection  # noqa: F401

                method = "select"
            except ImportError:  # pragma: no cover - selection ships with the package
                pass
    if method not in ("select", "gates"):
        raise ValueError(f"method must be 'select' or 'gates', got {method!r}")
    if lambda_l0 is None:
        lambda_l0 = 0.0 if target_count is not None else 0.01
    if polish is None:
        polish = target_count is not None
    if method == "select":
        return _calibrate_select(
            estimate_matrix, targets, target_count=target_count, target_names=target_names,
            target_groups=target_groups, normalize_groups=normalize_groups,
            group_multipliers=group_multipliers, design_weights=init, household_index=household_index,
            epochs=epochs, lr=lr, init_keep_prob=init_keep_prob, polish=polish, distance=distance,
            lambda_distance=lambda_distance, lambda_dispersion=lambda_dispersion,
            max_weight_ratio=max_weight_ratio, band=band,
            holdout=(holdout_matrix, holdout_totals, holdout_names),
            callbacks=callbacks, seed=seed, device=device, dtype=dtype, log_freq=log_freq,
            n_households=n_households, tolerance=tolerance,
            progress=progress if progress is not None else (None if verbose else False),
        )
    from .stages import StageClock

    clock = StageClock()
    clock.start("prepare")
    model = SparseCalibrationWeights(
        n_households,
        init_keep_prob=0.5 if init_keep_prob is None else init_keep_prob,
        init_weights=init if init is not None else 1.0,
        seed=seed,
        device=device,
        dtype=dtype,
        distributed=False,
    )
    problem = prepare_problem(
        estimate_matrix,
        targets,
        n_features=n_households,
        dtype=dtype,
        device=device,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
        target_names=target_names,
        matrix_argument="estimate_matrix",
        targets_argument="targets",
    )
    if init is None:
        with torch.no_grad():
            scale = _auto_init_weight(problem)
            model.log_weight.fill_(float(np.log(scale + 1e-8)))
            model.initial_weights.fill_(scale)
    if holdout_matrix is not None or holdout_totals is not None:
        if holdout_matrix is None or holdout_totals is None:
            raise ValueError("pass both holdout_matrix and holdout_totals, or neither")
    clock.stop("prepare")
    clock.start("fit", "gate engine and its polish")
    model.fit(
        problem.op,
        problem.targets,
        lambda_l0=lambda_l0,
        lambda_l2=lambda_l2,
        lr=lr,
        epochs=epochs,
        loss_type=loss,
        verbose=verbose,
        verbose_freq=log_freq,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
        target_count=target_count,
        beta_schedule=beta_schedule,
        final_beta=final_beta,
        callbacks=callbacks,
        progress=progress,
        target_names=problem.names,
        design_weights=None if init is None else init,
        lambda_distance=lambda_distance,
        distance=distance,
        lambda_dispersion=0.0 if lambda_dispersion is None else lambda_dispersion,
        max_weight_ratio=max_weight_ratio,
        polish=polish,
    )
    clock.stop("fit")
    w = model._deterministic_weights().detach().to("cpu", torch.float64).numpy()
    out = _result(
        estimate_matrix, problem, w, init, household_index, n_households,
        (holdout_matrix, holdout_totals, holdout_names), model.history_, model, tolerance,
    )
    out.diagnostics["stage_times"] = dict(clock.times)
    return out


def _result(
    estimate_matrix: Any,
    problem: Any,
    w: np.ndarray,
    init: np.ndarray | None,
    household_index: Any,
    n_households: int,
    holdout_args: tuple,
    history: list,
    model: SparseCalibrationWeights | None,
    tolerance: float = 0.05,
    stacklevel: int = 4,
    warn_misses: bool = True,
) -> CalibrationResult:
    import pandas as pd

    estimates = _exact_estimates(estimate_matrix, problem, w)
    report = _report(estimates, problem.targets, problem.names, problem.groups)
    report["infeasible"] = problem.infeasible
    mark_misses(report, tolerance, warn=warn_misses, stacklevel=stacklevel)
    index = household_index if household_index is not None else problem.household_index
    if index is not None and len(index) != n_households:
        raise ValueError(f"household_index has {len(index)} labels but there are {n_households} households")
    weights = pd.Series(w, index=index if index is not None else pd.RangeIndex(n_households), name="weight")
    diagnostics: dict[str, Any] = {}
    try:
        from .diagnostics import weight_diagnostics

        diagnostics.update(weight_diagnostics(w, design_weights=init))
    except ImportError:  # pragma: no cover
        pass
    holdout = None
    holdout_matrix, holdout_totals, holdout_names = holdout_args
    if holdout_matrix is not None:
        hold = prepare_problem(
            holdout_matrix,
            holdout_totals,
            n_features=n_households,
            dtype=torch.float64,
            device="cpu",
            target_names=holdout_names,
            matrix_argument="holdout_matrix",
            targets_argument="holdout_totals",
        )
        est = hold.op.matvec(torch.as_tensor(w)).numpy()
        holdout = _report(est, hold.targets, hold.names, None)
    return CalibrationResult(
        weights=weights,
        report=report,
        history=pd.DataFrame([{k: v for k, v in h.items() if k not in ("weights", "model")} for h in history]),
        diagnostics=diagnostics,
        holdout=holdout,
        model=model,
    )


def _calibrate_select(estimate_matrix: Any, targets: Any, **kw: Any) -> CalibrationResult:
    """``method="select"``: :func:`l0_calibrate.selection.select_and_polish`, reported like the rest."""
    import warnings

    from .fitting import InfeasibleTargetWarning
    from .selection import select_and_polish

    if kw["callbacks"]:
        raise ValueError("callbacks need method='gates' (the select pipeline has no callback hook)")
    hold_m, hold_t, _ = kw["holdout"]
    if (hold_m is None) != (hold_t is None):
        raise ValueError("pass both holdout_matrix and holdout_totals, or neither")
    problem = prepare_problem(
        estimate_matrix, targets, n_features=kw["n_households"], dtype=kw["dtype"], device=kw["device"],
        target_groups=kw["target_groups"], normalize_groups=kw["normalize_groups"],
        group_multipliers=kw["group_multipliers"], target_names=kw["target_names"],
        matrix_argument="estimate_matrix", targets_argument="targets",
    )
    if problem.infeasible.any():
        warnings.warn(
            f"{int(problem.infeasible.sum())} target(s) cannot be reached by non-negative weights (no household "
            f"contributes to them, or none with the target's sign): {', '.join(problem.infeasible_names[:10])}. "
            "They are left out and reported as infeasible.",
            InfeasibleTargetWarning,
            stacklevel=3,
        )
    options: dict[str, Any] = {}
    if kw["lambda_dispersion"] is not None:
        options["dispersion_weight"] = kw["lambda_dispersion"]
    if kw["max_weight_ratio"] is not None:
        options["max_weight_ratio"] = kw["max_weight_ratio"]
    if kw["init_keep_prob"] is not None:
        options["init_keep_prob"] = kw["init_keep_prob"]
    res = select_and_polish(
        problem,
        problem.targets,
        kw["target_count"],
        design_weights=kw["design_weights"],
        target_weights=problem.loss_weights,
        distance=kw["distance"],
        distance_weight=kw["lambda_distance"],
        epochs=kw["epochs"],
        lr=kw["lr"],
        polish=kw["polish"],
        seed=kw["seed"],
        dtype=kw["dtype"],
        device=kw["device"],
        log_every=kw["log_freq"],
        band=kw["band"],
        progress=kw["progress"],
        **options,
    )
    stages = res.diagnostics.get("stage_times", {})
    history = list(res.history) + [
        {"epoch": float(kw["epochs"]), "phase": name, "stage_seconds": secs} for name, secs in stages.items()
    ]
    out = _result(
        estimate_matrix, problem, np.asarray(res.weights, dtype=np.float64), kw["design_weights"],
        kw["household_index"], kw["n_households"], kw["holdout"], history, None, kw["tolerance"],
        stacklevel=5, warn_misses=False,
    )
    # One warning per call: the unmet-target warning (exactness, with its cause) when the
    # polish left targets unmet, otherwise the tolerance-based miss/infeasible warning.
    if not _report_unmet(out, res, problem, kw["max_weight_ratio"]):
        mark_misses(out.report, kw["tolerance"], stacklevel=4)
    return out


class UnmetTargetWarning(TargetMissWarning):
    """Some targets could not be met exactly by the kept households (often: a weight bound).

    A subclass of :class:`TargetMissWarning`, so one filter covers both.
    """


def _report_unmet(out: CalibrationResult, res: Any, problem: Any, max_weight_ratio: Any) -> bool:
    """Record stage times, the starting weight and the unmet targets; warn naming the unmet ones.

    ``report["met"]`` is False for a target missed by more than 1e-6
    (relative) after polishing, ``diagnostics["unmet_targets"]`` lists their
    names and ``diagnostics["weights_at_bound"]`` counts the kept weights at
    a ``max_weight_ratio`` bound.
    """
    import warnings

    out.diagnostics["stage_times"] = dict(res.diagnostics.get("stage_times", {}))
    out.diagnostics["start_weight"] = res.diagnostics.get("start_weight", float("nan"))
    met = np.ones(len(out.report), dtype=bool)
    met[res.unmet] = False
    met &= ~out.report["infeasible"].to_numpy()
    out.report["met"] = met
    unmet = out.report.loc[~met & ~out.report["infeasible"].to_numpy(), "name"].tolist()
    out.diagnostics["unmet_targets"] = unmet
    out.diagnostics["weights_at_bound"] = int(res.weights_at_bound)
    if unmet and res.polish is not None:
        bound = "10 (the default)" if max_weight_ratio is None else repr(max_weight_ratio)
        cause = (
            f"; {res.weights_at_bound} kept weight(s) sit at the weight-ratio bound max_weight_ratio={bound}: "
            "widen it (e.g. max_weight_ratio=None), keep more households, or pass design_weights"
            if res.weights_at_bound
            else "; keep more households or relax band"
        )
        warnings.warn(
            f"{len(unmet)} target(s) not met after polishing (largest relative error "
            f"{res.polish.max_abs_rel_error:.3g}): {', '.join(map(str, unmet[:10]))}"
            + (" ..." if len(unmet) > 10 else "") + cause + ". See report['met']"
            + (
                f"; {int(out.report['infeasible'].sum())} target(s) are infeasible (report['infeasible'])."
                if bool(out.report["infeasible"].any())
                else "."
            ),
            UnmetTargetWarning,
            stacklevel=4,
        )
        return True
    return False
