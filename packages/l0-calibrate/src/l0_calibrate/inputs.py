"""Validation and conversion of what callers pass to the calibration functions.

Everything here copies: the caller's arrays, matrices and frames are never
modified, and every check runs before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator

__all__ = [
    "Problem",
    "as_matrix",
    "as_vector",
    "check_nonneg_float",
    "check_positive_int",
    "group_weights",
    "is_dataframe",
    "prepare_problem",
]


def is_dataframe(obj: Any) -> bool:
    """True for a pandas DataFrame (without importing pandas).

    Examples
    --------
    >>> is_dataframe([[1.0]])
    False
    """
    return type(obj).__name__ == "DataFrame" and type(obj).__module__.startswith("pandas")


def _is_series(obj: Any) -> bool:
    return type(obj).__name__ == "Series" and type(obj).__module__.startswith("pandas")


def check_positive_int(value: Any, argument: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise naming ``argument``.

    Examples
    --------
    >>> check_positive_int(5, "epochs")
    5
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{argument} must be >= {minimum}, got {value!r}")
    return int(value)


def check_nonneg_float(value: Any, argument: str, *, positive: bool = False) -> float:
    """Return ``float(value)`` if finite and ``>= 0`` (``> 0`` if ``positive``).

    Examples
    --------
    >>> check_nonneg_float(0.5, "lr", positive=True)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{argument} must be {kind} finite number, got {value!r}")
    return value


def as_vector(
    x: Any,
    argument: str,
    n: int | None = None,
    *,
    nonnegative: bool = False,
    what: str = "",
) -> np.ndarray:
    """A float64 copy of a 1-D array-like, checked for shape and finiteness.

    Parameters
    ----------
    x : array-like, torch.Tensor or pandas.Series
        The values.
    argument : str
        Name used in error messages.
    n : int, optional
        Required length.
    nonnegative : bool, default False
        Reject negative entries.
    what : str, optional
        What the length must match, for the message (e.g. "the number of targets").

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> as_vector([1, 2], "targets").tolist()
    [1.0, 2.0]
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    elif _is_series(x):
        arr = x.to_numpy()
    else:
        arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{argument} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{argument} must be real, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float64, copy=True).reshape(-1) if arr.ndim <= 1 else arr
    if arr.ndim != 1:
        raise ValueError(f"{argument} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{argument} has length {arr.shape[0]} but {n} values are needed{suffix}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{argument} contains {int(bad.sum())} NaN or infinite value(s) (positions {first}); "
            "replace or drop them before calling"
        )
    if nonnegative and (arr < 0).any():
        first = np.flatnonzero(arr < 0)[:5].tolist()
        raise ValueError(
            f"{argument} must be non-negative; {int((arr < 0).sum())} value(s) are negative "
            f"(positions {first})"
        )
    return arr


def as_matrix(
    M: Any,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None,
    argument: str = "M",
) -> tuple[SparseOperator, list[str] | None, Any]:
    """The estimate matrix as a :class:`~l0_core.SparseOperator` (targets x households).

    A pandas DataFrame is read in microcalibrate's orientation: one row per
    household, one column per target (its name). Everything else is taken as
    ``(n_targets, n_households)``.

    Returns
    -------
    (operator, target_names or None, household_index or None)

    Examples
    --------
    >>> op, names, index = as_matrix(np.eye(2), dtype=torch.float32, device=None)
    >>> op.shape, names, index
    ((2, 2), None, None)
    """
    if is_dataframe(M):
        non_numeric = [c for c, dt in M.dtypes.items() if not (np.issubdtype(dt, np.number) or np.issubdtype(dt, np.bool_))]
        if non_numeric:
            raise TypeError(
                f"{argument} (a DataFrame of households x targets) has non-numeric column(s) "
                f"{non_numeric[:5]}; drop or encode them"
            )
        names = [str(c) for c in M.columns]
        values = M.to_numpy(dtype=np.float64, copy=True).T
        op = SparseOperator.from_any(values, dtype=dtype, device=device, argument=argument)
        return op, names, M.index
    if isinstance(M, SparseOperator):
        return SparseOperator.from_any(M, dtype=dtype, device=device, argument=argument), None, None
    return SparseOperator.from_any(M, dtype=dtype, device=device, argument=argument), None, None


def group_weights(
    target_groups: Any,
    n_targets: int,
    *,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-target loss weights from group labels (the published rule).

    With groups and ``normalize_groups``, each target of a group of size
    ``k`` gets ``1 / k`` so every group counts equally; multipliers then
    scale whole groups. Without groups every target gets 1.

    Returns
    -------
    (weights, labels or None)

    Examples
    --------
    >>> group_weights(["a", "a", "b"], 3)[0].tolist()
    [0.5, 0.5, 1.0]
    """
    if group_multipliers is not None and target_groups is None:
        raise ValueError("group_multipliers requires target_groups to be set")
    if target_groups is None:
        return np.ones(n_targets), None
    labels = target_groups.to_numpy() if _is_series(target_groups) else target_groups
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n_targets:
        raise ValueError(
            f"target_groups must hold one group label per target: expected shape ({n_targets},), "
            f"got {labels.shape}"
        )
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError("target_groups contains NaN or infinite labels")
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse] if normalize_groups else np.ones(n_targets)
    if group_multipliers is not None:
        if not isinstance(group_multipliers, Mapping):
            raise TypeError("group_multipliers must be a dict {group label: multiplier}")
        for gid, mult in group_multipliers.items():
            mask = labels == gid
            if not np.any(mask):
                raise ValueError(f"group_multipliers key {gid!r} not found in target_groups")
            weights = weights.copy()
            weights[mask] *= check_nonneg_float(mult, f"group_multipliers[{gid!r}]")
    return np.asarray(weights, dtype=np.float64), labels


class Problem:
    """A validated calibration problem: operator, targets, names, loss weights, infeasible rows.

    Attributes
    ----------
    op : l0_core.SparseOperator
        The estimate matrix (targets x households).
    targets : numpy.ndarray
        Float64 copy of the targets.
    names : list of str
        Target names (``"target_<i>"`` when none were given).
    household_index : pandas.Index or None
        Household labels when the matrix was a DataFrame.
    loss_weights : numpy.ndarray
        Per-target weight in the loss (group rule; 0 for infeasible targets).
    groups : numpy.ndarray or None
        Group label per target.
    infeasible : numpy.ndarray of bool
        Targets with a non-zero value that no household contributes to.
    """

    def __init__(
        self,
        op: SparseOperator,
        targets: np.ndarray,
        names: list[str],
        household_index: Any,
        loss_weights: np.ndarray,
        groups: np.ndarray | None,
        infeasible: np.ndarray,
    ) -> None:
        self.op = op
        self.targets = targets
        self.names = names
        self.household_index = household_index
        self.loss_weights = loss_weights
        self.groups = groups
        self.infeasible = infeasible

    @property
    def infeasible_names(self) -> list[str]:
        """Names of the infeasible targets."""
        return [self.names[i] for i in np.flatnonzero(self.infeasible)]


def prepare_problem(
    M: Any,
    y: Any,
    *,
    n_features: int | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    target_groups: Any = None,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
    target_names: Any = None,
    matrix_argument: str = "M",
    targets_argument: str = "y",
) -> Problem:
    """Validate and convert a matrix, its targets and group settings into a :class:`Problem`.

    Targets given as a pandas Series are aligned by name to the columns of a
    DataFrame matrix (or to ``target_names``).

    Examples
    --------
    >>> p = prepare_problem(np.array([[1.0, 0.0], [0.0, 0.0]]), [2.0, 3.0], n_features=2,
    ...                     dtype=torch.float64, device=None)
    >>> p.infeasible.tolist(), p.names
    ([False, True], ['target_0', 'target_1'])
    """
    op, names, hh_index = as_matrix(M, dtype=dtype, device=device, argument=matrix_argument)
    n_targets, n_cols = op.shape
    if n_features is not None and n_cols != n_features:
        raise ValueError(
            f"{matrix_argument} has {n_cols} household columns but the model has n_features="
            f"{n_features}; {matrix_argument} must be (n_targets, n_households)"
            + (" (a DataFrame is households x targets)" if is_dataframe(M) else "")
        )
    if target_names is not None:
        given = [str(t) for t in target_names]
        if len(given) != n_targets:
            raise ValueError(
                f"target_names has {len(given)} names but {matrix_argument} has {n_targets} targets"
            )
        if names is not None and given != names:
            raise ValueError("target_names differs from the DataFrame's column names; pass one of them")
        names = given
    if _is_series(y) and names is not None:
        index = [str(i) for i in y.index]
        missing = sorted(set(names) - set(index))
        if missing:
            raise ValueError(
                f"{targets_argument} has no value for target(s) {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        lookup = dict(zip(index, y.to_numpy(), strict=False))
        y = [lookup[name] for name in names]
    targets = as_vector(
        y, targets_argument, n_targets, what=f"one per row of {matrix_argument}, its targets"
    )
    if names is None:
        names = [f"target_{i}" for i in range(n_targets)]
    weights, labels = group_weights(
        target_groups, n_targets, normalize_groups=normalize_groups, group_multipliers=group_multipliers
    )
    empty = (op.row_nnz() == 0).cpu().numpy()
    infeasible = empty & (targets != 0)
    if infeasible.any():
        weights = weights.copy()
        weights[infeasible] = 0.0
    return Problem(op, targets, names, hh_index, weights, labels, infeasible)
