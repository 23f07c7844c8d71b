"""Validation and conversion of what callers pass to the calibration functions.

Everything here copies: the caller's arrays, matrices and frames are never
modified, and every check runs before any work starts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator
from l0_core.checks import check_dtype, check_float

__all__ = [
    "as_matrix",
    "as_vector",
    "check_model_dtype",
    "align_to_labels",
    "check_matrix_shape",
    "group_weights",
    "is_dataframe",
    "row_signs",
    "unreachable",
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


def check_model_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if calibration can compute in it: float32 or float64.

    float16 and bfloat16 are refused by name: their sparse products are not
    implemented on CPU, and sums over many households overflow (float16 tops
    out at 65,504) or lose the precision the targets need.

    Examples
    --------
    >>> check_model_dtype(torch.float64)
    torch.float64
    >>> check_model_dtype(torch.float16)
    Traceback (most recent call last):
    ...
    TypeError: dtype=torch.float16 is not supported for calibration (half precision overflows and loses the precision of population totals); pass dtype=torch.float32 or torch.float64
    """
    dtype = check_dtype(dtype, name)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name}={dtype} is not supported for calibration (half precision overflows and loses the "
            "precision of population totals); pass dtype=torch.float32 or torch.float64"
        )
    return dtype


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
        _check_frame(M, argument)
        names = [str(c) for c in M.columns]
        values = M.to_numpy(dtype=np.float64, copy=True).T
        op = SparseOperator.from_any(values, dtype=dtype, device=device, argument=argument)
        return op, names, M.index
    if isinstance(M, (list, tuple)):
        raise TypeError(
            f"{argument} is a {type(M).__name__}; pass a numpy array (np.asarray({argument})), a "
            "scipy.sparse matrix, a torch tensor, an l0_core.SparseOperator or a pandas DataFrame "
            "of households x targets"
        )
    if isinstance(M, SparseOperator):
        return SparseOperator.from_any(M, dtype=dtype, device=device, argument=argument), None, None
    # l0-core narrows a float64 CSR input to float32 values before transposing it.
    return SparseOperator.from_any(M, dtype=dtype, device=device, argument=argument), None, None


def _check_frame(M: Any, argument: str) -> None:
    """A DataFrame of households x targets: unique, numeric target columns, at least one."""
    if M.shape[1] == 0:
        raise ValueError(
            f"{argument} (a DataFrame of households x targets) has 0 target columns; a CSV written "
            "with another separator (e.g. ';') reads as one text column: pass sep=';' to "
            "pandas.read_csv"
        )
    labels = [str(c) for c in M.columns]
    dup = sorted({c for c in labels if labels.count(c) > 1})
    if dup:
        raise ValueError(
            f"{argument} has duplicate column name(s) {dup[:5]}; each column is one target, so "
            "rename or drop the duplicates"
        )
    text = [
        str(c)
        for c, dt in M.dtypes.items()
        if not (
            isinstance(dt, np.dtype)
            and (np.issubdtype(dt, np.number) or np.issubdtype(dt, np.bool_))
        )
        and not _is_numeric_extension(dt)
    ]
    if text:
        shown = ", ".join(repr(c) for c in text[:5]) + (
            f" and {len(text) - 5} more" if len(text) > 5 else ""
        )
        raise TypeError(
            f"{argument} (a DataFrame of households x targets) has column(s) {shown} holding text "
            "or other non-numeric values; drop or encode them (every column is a target)"
        )


def _is_numeric_extension(dt: Any) -> bool:
    """pandas' nullable numeric dtypes (Int64, Float64, boolean)."""
    kind = getattr(dt, "kind", "")
    return not isinstance(dt, np.dtype) and kind in ("i", "u", "f", "b")


def align_to_labels(value: Any, labels: Any, argument: str, what: str) -> Any:
    """A pandas Series reordered to ``labels`` (exactly those, each once); anything else unchanged.

    Parameters
    ----------
    value : Any
        A Series (aligned) or anything else (returned as is: taken by position).
    labels : sequence
        The labels the values must match, in order.
    argument : str
        Name used in error messages.
    what : str
        What the labels are (e.g. "the households of estimate_matrix"), for messages.

    Examples
    --------
    >>> import pandas as pd
    >>> align_to_labels(pd.Series({"b": 2.0, "a": 1.0}), ["a", "b"], "design_weights", "households").tolist()
    [1.0, 2.0]
    """
    if not _is_series(value):
        return value
    index = list(value.index)
    keys = [str(i) for i in index]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(
            f"{argument} has duplicate label(s) {dup[:5]}; give each of {what} one value"
        )
    wanted = [str(x) for x in labels]
    missing = [w for w in wanted if w not in set(keys)]
    extra = sorted(set(keys) - set(wanted))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no value for {len(missing)} of {what} (e.g. {missing[:5]})")
        if extra:
            parts.append(f"{len(extra)} label(s) that match none of them (e.g. {extra[:5]})")
        raise ValueError(
            f"{argument} is a Series aligned by its index, but it has "
            + " and ".join(parts)
            + f"; index it by {what}, or pass .to_numpy() to take the values in order"
        )
    lookup = dict(zip(keys, value.to_numpy(), strict=True))
    import pandas as pd

    return pd.Series(
        [lookup[w] for w in wanted], index=list(labels), name=value.name, dtype=value.dtype
    )


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
            weights[mask] *= check_float(mult, f"group_multipliers[{gid!r}]", min_val=0.0)
    return np.asarray(weights, dtype=np.float64), labels


def check_matrix_shape(
    n_targets: int, n_households: int, argument: str, *, frame: bool = False
) -> None:
    """Refuse a matrix with no household column or no target row, by name.

    Examples
    --------
    >>> check_matrix_shape(2, 0, "M")
    Traceback (most recent call last):
    ...
    ValueError: the matrix M has 0 household columns; pass (n_targets, n_households) with at least one household
    """
    if n_households == 0:
        layout = "a DataFrame with one row per household" if frame else "(n_targets, n_households)"
        raise ValueError(
            f"the matrix {argument} has 0 household columns; pass {layout} with at least one household"
        )
    if n_targets == 0:
        layout = "a DataFrame with one column per target" if frame else "(n_targets, n_households)"
        raise ValueError(
            f"the matrix {argument} has 0 targets; pass {layout} with at least one target"
        )


#: Non-zeros per chunk of :func:`row_signs`.
_SIGN_CHUNK = 1 << 20


def row_signs(op: SparseOperator) -> tuple[np.ndarray, np.ndarray]:
    """Per target row: whether some entry is positive, and whether some entry is negative.

    Examples
    --------
    >>> pos, neg = row_signs(SparseOperator.from_any(np.array([[1.0, -1.0], [0.0, 2.0], [0.0, 0.0]])))
    >>> pos.tolist(), neg.tolist()
    ([True, True, False], [True, False, False])
    """
    t = op.csr_t  # households x targets
    values = t.values()
    cols = t.col_indices()
    n = op.shape[0]
    pos = torch.zeros(n, dtype=torch.bool, device=values.device)
    neg = torch.zeros(n, dtype=torch.bool, device=values.device)
    for a in range(0, values.numel(), _SIGN_CHUNK):  # no nnz-long int64 temporaries
        v, c = values[a : a + _SIGN_CHUNK], cols[a : a + _SIGN_CHUNK]
        pos[c[v > 0].to(torch.int64)] = True
        neg[c[v < 0].to(torch.int64)] = True
    return pos.cpu().numpy(), neg.cpu().numpy()


def unreachable(targets: np.ndarray, has_pos: np.ndarray, has_neg: np.ndarray) -> np.ndarray:
    """Targets no non-negative weights can reach: a positive (negative) value without a positive (negative) entry.

    Examples
    --------
    >>> unreachable(np.array([1.0, -1.0, 0.0]), np.array([True, True, False]), np.array([False] * 3)).tolist()
    [False, True, False]
    """
    return ((targets > 0) & ~has_pos) | ((targets < 0) & ~has_neg)
