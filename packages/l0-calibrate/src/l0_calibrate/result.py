"""What :func:`l0_calibrate.calibrate` returns: :class:`CalibrationResult`, its report and its warnings.

One result type for every way a calibration runs: one process, one rank of
a process group (``shard`` set: ``weights`` holds this rank's households)
and a launch over several local processes (:func:`l0_calibrate.run_distributed`:
the gathered weights of all ranks, ``world_size`` > 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .diagnostics import target_report

if TYPE_CHECKING:
    from .distributed_reducer import ColumnShard

__all__ = [
    "CalibrationResult",
    "ShardedCalibrationResult",
    "TargetMissWarning",
    "UnmetTargetWarning",
    "mark_misses",
    "target_table",
]


class TargetMissWarning(UserWarning):
    """The calibrated weights miss some targets by more than the tolerance (or cannot reach them)."""


class UnmetTargetWarning(TargetMissWarning):
    """Some targets could not be met exactly by the kept households (often: a weight bound).

    A subclass of :class:`TargetMissWarning`, so one filter covers both.
    """


def _names(names: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
    stacklevel : int, default 3
        Passed to :func:`warnings.warn`.

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
                f"(worst {worst:.3g}): {_names(names)}"
            )
        if infeasible.any():
            names = report.loc[infeasible, "name"].tolist()
            parts.append(
                f"{len(names)} target(s) are infeasible (no non-negative weights reach them): "
                + _names(names)
            )
        warnings.warn(
            "; ".join(parts)
            + ". See result.report (columns 'missed' and 'infeasible'); more epochs, a larger "
            "target_count, design_weights on the targets' scale or a looser max_weight_ratio may help.",
            TargetMissWarning,
            stacklevel=stacklevel,
        )
    return report


def target_table(
    estimates: np.ndarray,
    targets: np.ndarray,
    names: Sequence[str],
    groups: Any = None,
    infeasible: np.ndarray | None = None,
) -> Any:
    """The per-target report: ``name, target, estimate, rel_error, abs_rel_error, group[, infeasible]``.

    Parameters
    ----------
    estimates, targets : numpy.ndarray
        ``M @ w`` and the targets, one per target.
    names : sequence of str
        Target names.
    groups : sequence, optional
        A group label per target (default: the name).
    infeasible : numpy.ndarray of bool, optional
        Adds the ``infeasible`` column.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> rep = target_table(np.array([11.0, 0.0]), np.array([10.0, 5.0]), ["a", "b"],
    ...                    infeasible=np.array([False, True]))
    >>> rep["rel_error"].round(6).tolist(), rep["infeasible"].tolist()
    ([0.1, -1.0], [False, True])
    """
    report = target_report(estimates, targets, names=names, groups=groups)
    if infeasible is not None:
        report["infeasible"] = np.asarray(infeasible, dtype=bool)
    return report


@dataclass(repr=False)
class CalibrationResult:
    """What :func:`~l0_calibrate.calibrate` (and :func:`~l0_calibrate.run_distributed`) returns.

    Attributes
    ----------
    weights : pandas.Series
        One weight per household (0 for dropped ones), indexed like the
        households (the DataFrame's index, ``household_index`` or their
        column numbers). On a rank of a sharded run (``shard`` set) only
        this rank's households; :func:`l0_calibrate.gather_weights` collects
        them on rank 0.
    report : pandas.DataFrame
        One row per target: ``name, target, estimate, rel_error,
        abs_rel_error, group, infeasible, missed`` with ``rel_error = (estimate -
        target) / |target|``; ``missed`` marks feasible targets whose
        ``abs_rel_error`` exceeds ``calibrate``'s ``tolerance``. Over all
        households (all ranks).
    history : pandas.DataFrame
        One row per logging step (epoch, phase, loss parts, errors, active count).
    diagnostics : dict
        Weight diagnostics over all households: non-zeros, design effect,
        Kish effective sample size, weight and ratio extremes, plus the stage
        times (``"stage_times"``) and the method's own entries.
    holdout : pandas.DataFrame or None
        The report for the holdout variables, when given.
    model : SparseCalibrationWeights or None
        The fitted model of ``method="gates"`` (``state_dict()`` to
        checkpoint, ``fit()`` to continue); None for ``method="select"`` and
        for a result sent back by :func:`~l0_calibrate.run_distributed`.
    shard : ColumnShard or None
        This rank's households when ``weights`` holds one rank's share (a
        sharded :func:`calibrate` inside a process group); None when
        ``weights`` holds every household.
    world_size : int, default 1
        Processes that ran the calibration.
    epochs : int or None
        Gate-training epochs run.

    Examples
    --------
    >>> from l0_calibrate import calibrate
    >>> res = calibrate(np.array([[1.0, 1.0], [1.0, 3.0]]), [2.0, 4.0], epochs=300, seed=0)
    >>> res.n_active, res.world_size, res.shard is None
    (2, 1, True)
    """

    weights: Any
    report: Any
    history: Any
    diagnostics: dict[str, Any] = field(default_factory=dict)
    holdout: Any = None
    model: Any = None
    shard: ColumnShard | None = None
    world_size: int = 1
    epochs: int | None = None

    @property
    def n_active(self) -> int:
        """Number of households with a non-zero weight (over all ranks)."""
        if self.shard is not None and "n_nonzero" in self.diagnostics:
            return int(self.diagnostics["n_nonzero"])
        return int((self.weights.to_numpy() > 0).sum())

    @property
    def estimates(self) -> np.ndarray:
        """``M @ weights`` over all households, one per target (the report's ``estimate``)."""
        return self.report["estimate"].to_numpy(dtype=np.float64)

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
        >>> from l0_calibrate import calibrate
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
        >>> from l0_calibrate import calibrate
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
        ax1.set_ylabel(
            "relative error (|est - t| / (|t| + 1))" if "mean_rel_error" in curves else "loss"
        )
        ax1.set_title("convergence")
        ax2 = ax1.twinx()
        count = "n_active" if "n_active" in h.columns else "expected_active"
        if len(h) and count in h.columns:
            ax2.plot(
                h["epoch"], h[count], color="grey", linestyle="--", label=count.replace("_", " ")
            )
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
        where = ""
        if self.shard is not None and self.shard.world_size > 1:
            sh = self.shard
            where = f"rank={sh.rank}/{sh.world_size}, columns=[{sh.start}, {sh.stop}), "
        elif self.world_size > 1:
            where = f"world_size={self.world_size}, "
        return (
            f"CalibrationResult({where}n_active={int(s['n_active'])}, targets={len(self.report)}, "
            f"mean_abs_rel_error={s['mean_abs_rel_error']:.3g}, max_abs_rel_error={s['max_abs_rel_error']:.3g}"
            + (f", design_effect={s['design_effect']:.3g}" if "design_effect" in s else "")
            + ")"
        )


#: The name a sharded ``calibrate()`` result had before there was one result type: the same class.
ShardedCalibrationResult = CalibrationResult
