"""Diagnostics for a set of calibration weights: target fit, weight spread, holdout accuracy.

* :func:`weight_diagnostics` -- how many households are kept and how evenly
  they are weighted: Kish's effective sample size ``(sum w)^2 / sum w^2`` and
  design effect ``1 + CV^2 = n * sum w^2 / (sum w)^2`` over the ``n``
  non-zero weights, extremes of ``w`` and of ``w / d``.
* :func:`target_report` -- one row per target: estimate, relative error.
* :func:`error_summary` -- mean, median and max absolute relative error and
  the share of targets within a tolerance (10% by default).
* :func:`holdout_errors` -- the same report for variables that were *not*
  targets, the honest measure of how well the kept households describe the
  population.

Relative error is ``(estimate - target) / |target|``; a zero target gives
0 when the estimate is also 0 and ``+-inf`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .problem import Problem, column_view
from .views import relative_errors

__all__ = [
    "error_summary",
    "holdout_errors",
    "problem_report",
    "target_report",
    "weight_diagnostics",
]


def _vector(x: Any, argument: str, n: int | None = None) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):
        x = x.to_numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{argument} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"{argument} must have length {n} to match, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{argument} contains NaN or infinite values; replace them first")
    return arr


def weight_diagnostics(weights: Any, design_weights: Any = None) -> dict[str, float]:
    """Summary statistics of a weight vector.

    Parameters
    ----------
    weights : array-like (numpy, torch, pandas Series)
        Non-negative weights, one per household (zeros = dropped).
    design_weights : array-like or Problem, optional
        Positive design weights, same length; adds the ratio statistics. A
        :class:`~l0_calibrate.problem.Problem` gives its design weights (if any).

    Returns
    -------
    dict
        ``n`` (households), ``n_nonzero``, ``sparsity`` (share of zeros),
        ``total`` (sum of weights), ``mean_weight`` / ``min_weight`` /
        ``max_weight`` (over non-zero weights), ``cv`` (population
        coefficient of variation of the non-zero weights),
        ``design_effect`` (``1 + cv^2``), ``kish_ess`` (``(sum w)^2 / sum w^2``);
        with ``design_weights`` also ``min_ratio`` / ``max_ratio``
        (``w / d`` over non-zero weights) and ``min_adjustment`` /
        ``max_adjustment`` (``w / q`` with ``q`` the design weights inflated
        to the population total over the kept households).

    Examples
    --------
    >>> diag = weight_diagnostics([0.0, 1.0, 3.0])
    >>> diag["n_nonzero"], diag["design_effect"], diag["kish_ess"]
    (2, 1.25, 1.6)
    """
    if isinstance(design_weights, Problem):
        design_weights = design_weights.design_weights
    w = _vector(weights, "weights")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    nz = w > 0
    k = int(nz.sum())
    out: dict[str, float] = {
        "n": int(w.size),
        "n_nonzero": k,
        "sparsity": float(1.0 - k / w.size) if w.size else 0.0,
        "total": float(w.sum()),
    }
    if k == 0:
        nan = float("nan")
        out.update(
            mean_weight=nan, min_weight=nan, max_weight=nan, cv=nan, design_effect=nan, kish_ess=0.0
        )
    else:
        x = w[nz]
        mean = x.mean()
        cv = float(x.std() / mean)
        out.update(
            mean_weight=float(mean),
            min_weight=float(x.min()),
            max_weight=float(x.max()),
            cv=cv,
            design_effect=float(k * np.dot(x, x) / x.sum() ** 2),
            kish_ess=float(x.sum() ** 2 / np.dot(x, x)),
        )
    if design_weights is not None:
        d = _vector(design_weights, "design_weights", w.size)
        if (d <= 0).any():
            raise ValueError("design_weights must be positive")
        if k:
            ratio = w[nz] / d[nz]
            adj = ratio * (d[nz].sum() / d.sum())
            out.update(
                min_ratio=float(ratio.min()),
                max_ratio=float(ratio.max()),
                min_adjustment=float(adj.min()),
                max_adjustment=float(adj.max()),
            )
        else:
            nan = float("nan")
            out.update(min_ratio=nan, max_ratio=nan, min_adjustment=nan, max_adjustment=nan)
    return out


def target_report(
    estimates: Any,
    targets: Any,
    names: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
) -> Any:
    """Per-target table of estimates and relative errors.

    Parameters
    ----------
    estimates, targets : array-like
        Same length ``n_targets``. ``targets`` may be a
        :class:`~l0_calibrate.problem.Problem`: its targets, and its names
        and groups unless given.
    names : sequence of str, optional
        Target names (default ``"target_0"``, ...).
    groups : sequence, optional
        A group label per target (default: the name).

    Returns
    -------
    pandas.DataFrame
        Columns ``name, target, estimate, rel_error, abs_rel_error, group``.

    Examples
    --------
    >>> rep = target_report([11.0, 20.0], [10.0, 20.0], names=["a", "b"])
    >>> rep["rel_error"].round(6).tolist()
    [0.1, 0.0]
    """
    import pandas as pd

    if isinstance(targets, Problem):
        names = targets.names if names is None else names
        groups = (
            (None if targets.groups is None else list(targets.groups)) if groups is None else groups
        )
        targets = targets.targets
    t = _vector(targets, "targets")
    est = _vector(estimates, "estimates", t.size)
    if names is None:
        names = [f"target_{i}" for i in range(t.size)]
    names = [str(n) for n in names]
    if len(names) != t.size:
        raise ValueError(f"names must have one entry per target ({t.size}), got {len(names)}")
    if groups is None:
        groups = names
    groups = list(groups)
    if len(groups) != t.size:
        raise ValueError(f"groups must have one entry per target ({t.size}), got {len(groups)}")
    rel = relative_errors(est, t)
    return pd.DataFrame(
        {
            "name": names,
            "target": t,
            "estimate": est,
            "rel_error": rel,
            "abs_rel_error": np.abs(rel),
            "group": groups,
        }
    )


def error_summary(report: Any, *, within: float = 0.1) -> dict[str, float]:
    """Mean, median and max absolute relative error and the share within ``within``.

    Parameters
    ----------
    report : pandas.DataFrame or array-like
        A :func:`target_report` / :func:`holdout_errors` table, or relative errors.
    within : float, default 0.1
        Tolerance for ``share_within`` (0.1 = 10%).

    Returns
    -------
    dict
        ``n``, ``mean_abs_rel_error``, ``median_abs_rel_error``,
        ``max_abs_rel_error``, ``share_within``.

    Examples
    --------
    >>> s = error_summary([0.0, 0.05, -0.2])
    >>> round(s["mean_abs_rel_error"], 6), round(s["share_within"], 6)
    (0.083333, 0.666667)
    """
    if not (isinstance(within, (int, float)) and within > 0):
        raise ValueError(f"within must be a positive number, got {within!r}")
    if hasattr(report, "columns"):
        if "abs_rel_error" not in report.columns:
            raise ValueError("report must have an 'abs_rel_error' column (see target_report)")
        err = np.asarray(report["abs_rel_error"], dtype=np.float64)
    else:
        err = np.abs(np.asarray(report, dtype=np.float64).reshape(-1))
    if err.size == 0:
        nan = float("nan")
        return {
            "n": 0,
            "mean_abs_rel_error": nan,
            "median_abs_rel_error": nan,
            "max_abs_rel_error": nan,
            "share_within": nan,
        }
    return {
        "n": int(err.size),
        "mean_abs_rel_error": float(err.mean()),
        "median_abs_rel_error": float(np.median(err)),
        "max_abs_rel_error": float(err.max()),
        "share_within": float((err <= within).mean()),
    }


def holdout_errors(
    weights: Any,
    holdout_matrix: Any,
    holdout_totals: Any,
    names: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
) -> Any:
    """Relative errors on variables that were not calibration targets.

    Parameters
    ----------
    weights : array-like
        Weights, length ``n_cols``.
    holdout_matrix : matrix (scipy.sparse, numpy, torch, SparseOperator)
        Shape ``(n_holdouts, n_cols)``, oriented like the estimate matrix.
    holdout_totals : array-like
        True totals of the holdout variables, length ``n_holdouts``.
    names, groups : optional
        As in :func:`target_report`.

    Returns
    -------
    pandas.DataFrame
        As :func:`target_report`.

    Examples
    --------
    >>> H = np.array([[1.0, 2.0, 3.0]])
    >>> holdout_errors([1.0, 1.0, 1.0], H, [5.0])["rel_error"].round(6).tolist()
    [0.2]
    """
    (n_rows, n_cols), columns, _ = column_view(holdout_matrix, "holdout_matrix")
    w = _vector(weights, "weights", n_cols)
    totals = _vector(holdout_totals, "holdout_totals", n_rows)
    nz = np.flatnonzero(w)  # only the kept households' columns are read
    return target_report(
        np.asarray(columns(nz) @ w[nz]).ravel(), totals, names=names, groups=groups
    )


def problem_report(problem: Problem, weights: Any) -> Any:
    """:func:`target_report` of ``weights`` on a :class:`~l0_calibrate.problem.Problem`, with ``infeasible``.

    The estimates are the exact float64 ``M @ w`` of the caller's matrix
    (:meth:`Problem.estimates <l0_calibrate.problem.Problem.estimates>`);
    names and groups are the problem's.

    Examples
    --------
    >>> import torch
    >>> from l0_calibrate.problem import build_problem
    >>> p = build_problem(np.array([[1.0, 1.0], [0.0, 0.0]]), [2.0, 1.0], dtype=torch.float64)
    >>> problem_report(p, [1.0, 1.0])[["name", "abs_rel_error", "infeasible"]].values.tolist()
    [['target_0', 0.0, False], ['target_1', 1.0, True]]
    """
    rep = target_report(
        problem.estimates(_vector(weights, "weights", problem.n_households)), problem
    )
    rep["infeasible"] = problem.infeasible
    return rep
