"""One frozen calibration problem: the caller's matrix validated and converted once, with lazy views.

:func:`build_problem` checks a matrix, its targets and the group settings
and converts the matrix *once* into an :class:`l0_core.SparseOperator` on
the compute device and dtype. Every later stage (gate training, the select
pipeline's refinement, cover and repair, the polish, the report) reads the
:class:`Problem` it returns and never converts or copies the whole matrix
again:

* ``problem.op`` -- the operator (products on the device);
* ``problem.columns(idx)`` -- the kept households' columns as a small
  float64 scipy CSR matrix: sliced from the caller's scipy/numpy matrix
  (its float64 values kept) or gathered from the operator;
* ``problem.estimates(w)`` -- the exact float64 ``M @ w`` for the report,
  from the caller's matrix where it can be read without a copy;
* ``problem.csr64()`` -- the whole matrix as float64 scipy CSR, built at
  most once, for callers that really need all of it.

:func:`~l0_calibrate.views.as_scipy_csr` and
:func:`~l0_calibrate.views.operator_to_csr` (re-exported here) are the
package's only conversions to a whole scipy matrix;
:func:`~l0_calibrate.views.gather_columns` is the gather of a few columns
from an operator.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator

from .inputs import (
    _is_series,
    align_to_labels,
    as_matrix,
    as_vector,
    check_matrix_shape,
    group_weights,
    is_dataframe,
    row_signs,
    unreachable,
)
from .views import (
    as_scipy_csr,
    check_finite_array,
    gather_columns,
    gathered_matvec,
    is_scipy,
    operator_to_csr,
    relative_errors,
    scipy_columns,
)

__all__ = [
    "Problem",
    "as_scipy_csr",
    "build_problem",
    "column_view",
    "gather_columns",
    "operator_to_csr",
    "prepare_problem",
    "problem_from_operator",
    "relative_errors",
]


def column_view(
    M: Any, argument: str = "M"
) -> tuple[tuple[int, int], Callable[[np.ndarray], Any], torch.dtype]:
    """Shape, a gatherer of columns as float64 scipy CSR ``(n_targets, len(idx))``, and its precision.

    For the stages that read a few columns of a matrix a caller passed
    directly (a :class:`Problem`, an operator, a scipy or numpy matrix:
    validated, never copied whole; a torch tensor is converted once).

    Examples
    --------
    >>> shape, cols, dtype = column_view(np.array([[1.0, 2.0, 3.0]]))
    >>> shape, cols(np.array([2, 0])).toarray().tolist(), dtype
    ((1, 3), [[3.0, 1.0]], torch.float64)
    """
    import scipy.sparse as sp

    if isinstance(M, Problem):
        return (M.n_targets, M.n_households), M.columns, M.columns_dtype
    if isinstance(M, SparseOperator):
        op = M
    elif sp.issparse(M):
        if M.ndim != 2:
            raise ValueError(f"{argument} must be 2-D, got shape {M.shape}")
        if M.format not in ("csr", "csc", "coo"):
            M = sp.csr_matrix(M)  # lil, dok, dia, bsr: rare formats, read through CSR
        dt = np.dtype(M.dtype)
        if not (np.issubdtype(dt, np.number) or np.issubdtype(dt, np.bool_)) or np.issubdtype(
            dt, np.complexfloating
        ):
            raise TypeError(f"{argument} must be real and numeric, got dtype {dt}")
        check_finite_array(M.data, argument)
        src = M
        return (
            (int(M.shape[0]), int(M.shape[1])),
            lambda idx: scipy_columns(src, idx),
            torch.float64,
        )
    elif (
        isinstance(M, np.ndarray)
        and M.ndim == 2
        and np.issubdtype(M.dtype, np.number)
        and not np.issubdtype(M.dtype, np.complexfloating)
    ):
        check_finite_array(M, argument)
        arr = M
        return (
            (int(M.shape[0]), int(M.shape[1])),
            lambda idx: sp.csr_matrix(np.asarray(arr[:, idx], dtype=np.float64)),
            torch.float64,
        )
    else:
        op = SparseOperator.from_any(
            M, dtype=torch.float64, transpose_copy=False, argument=argument
        )
    return op.shape, lambda idx: gather_columns(op, idx).T.tocsr(), op.dtype


@dataclass(frozen=True, eq=False)
class Problem:
    """A validated calibration problem: the operator, targets, names, loss weights, infeasible rows.

    Built once per call by :func:`build_problem` (or, for a bare operator,
    :func:`problem_from_operator`); frozen. Views of the matrix are built
    lazily and cached (:meth:`csr64`, :meth:`row_sums`).

    Attributes
    ----------
    op : l0_core.SparseOperator
        The estimate matrix (targets x households) on the compute device and dtype.
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
        Targets that non-negative weights cannot reach: a non-zero value that
        no household contributes to, a negative value whose row holds no
        negative entry, or a positive one whose row holds no positive entry.
    source : object
        The caller's matrix (not copied, not modified): the float64 values
        the exact views read. ``op`` itself when the caller passed an operator.
    design_weights : numpy.ndarray or None
        Positive design weights, one per household, when given.

    Examples
    --------
    >>> p = build_problem(np.array([[1.0, 2.0], [0.0, 1.0]]), [3.0, 1.0], dtype=torch.float32)
    >>> p.n_targets, p.n_households, p.estimates(np.ones(2)).tolist()
    (2, 2, [3.0, 1.0])
    >>> p.columns(np.array([1])).toarray().tolist()
    [[2.0], [1.0]]
    """

    op: SparseOperator
    targets: np.ndarray
    names: list[str]
    household_index: Any
    loss_weights: np.ndarray
    groups: np.ndarray | None
    infeasible: np.ndarray
    source: Any = field(default=None, repr=False)
    design_weights: np.ndarray | None = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def n_targets(self) -> int:
        """Number of targets (rows)."""
        return int(self.op.shape[0])

    @property
    def n_households(self) -> int:
        """Number of households (columns)."""
        return int(self.op.shape[1])

    @property
    def infeasible_names(self) -> list[str]:
        """Names of the infeasible targets."""
        return [self.names[i] for i in np.flatnonzero(self.infeasible)]

    @property
    def household_labels(self) -> list[Any]:
        """The household labels: the DataFrame's index, else ``0..n-1``."""
        if self.household_index is not None:
            return list(self.household_index)
        return list(range(self.n_households))

    # ------------------------------------------------------------ views
    def _exact_source(self) -> Any:
        """The caller's matrix when its (float64) values can be sliced directly, else None."""
        src = self.source
        if is_scipy(src) or (isinstance(src, np.ndarray) and src.ndim == 2):
            return src
        return None

    def _dense_float64_tensor(self) -> torch.Tensor | None:
        """The caller's matrix when it is a dense float64 tensor (sliced directly), else None."""
        src = self.source
        if (
            isinstance(src, torch.Tensor)
            and src.layout == torch.strided
            and src.dtype == torch.float64
            and src.dim() == 2
        ):
            return src.detach()
        return None

    @property
    def columns_dtype(self) -> torch.dtype:
        """Precision of the values :meth:`columns` returns (float64 when read from the caller's matrix)."""
        if (
            self._exact_source() is not None
            or is_dataframe(self.source)
            or self._dense_float64_tensor() is not None
        ):
            return torch.float64
        return self.op.dtype

    def columns(self, idx: Any) -> Any:
        """Columns ``idx`` as float64 scipy CSR of shape ``(n_targets, len(idx))``: a view of the kept ones.

        Read from the caller's scipy or numpy matrix (its float64 values
        kept) or gathered from the operator; the whole matrix is never copied.
        """
        idx = np.asarray(idx, dtype=np.int64)
        src = self._exact_source()
        if src is not None:
            if is_scipy(src):
                return scipy_columns(src, idx)
            import scipy.sparse as sp

            return sp.csr_matrix(np.asarray(src[:, idx], dtype=np.float64))
        if is_dataframe(self.source):
            import scipy.sparse as sp

            values = self.source.iloc[idx].to_numpy(dtype=np.float64)
            return sp.csr_matrix(values.T)
        dense = self._dense_float64_tensor()
        if dense is not None:
            import scipy.sparse as sp

            return sp.csr_matrix(dense[:, torch.as_tensor(idx, device=dense.device)].cpu().numpy())
        return gather_columns(self.op, idx).T.tocsr()

    def estimates(self, w: Any) -> np.ndarray:
        """The exact float64 estimates ``M @ w`` (the caller's values, not the float32 operator's).

        Read from the caller's matrix without a copy where possible (scipy,
        numpy, a float64 tensor, a DataFrame of one dtype); otherwise from
        the operator in float64, gathering the columns of the non-zero
        weights chunk by chunk.
        """
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size != self.n_households:
            raise ValueError(f"w has length {w.size}, expected {self.n_households} households")
        src = self.source
        if self._exact_source() is not None:
            return np.asarray(src @ w, dtype=np.float64).reshape(-1)
        if is_dataframe(src):
            nz = np.flatnonzero(w)
            if nz.size < 0.5 * w.size:
                return np.asarray(src.iloc[nz].to_numpy(dtype=np.float64).T @ w[nz]).reshape(-1)
            return np.asarray(src.to_numpy(dtype=np.float64).T @ w).reshape(-1)
        if isinstance(src, torch.Tensor) and src.dtype == torch.float64 and src.dim() == 2:
            wt = torch.as_tensor(w, device=src.device)
            if src.layout in (torch.strided, torch.sparse_coo, torch.sparse_csr):
                return (src.detach() @ wt.unsqueeze(1)).to_dense().reshape(-1).cpu().numpy()
        if self.op.dtype == torch.float64:
            return self.op.matvec(torch.as_tensor(w, device=self.op.device)).cpu().numpy()
        return gathered_matvec(self.op, w)

    def row_sums(self) -> np.ndarray:
        """Exact float64 ``M @ 1`` (cached)."""
        if "row_sums" not in self._cache:
            self._cache["row_sums"] = self.estimates(np.ones(self.n_households))
        return self._cache["row_sums"]  # type: ignore[no-any-return]

    def csr64(self) -> Any:
        """The whole matrix as float64 scipy CSR, built at most once (cached): prefer :meth:`columns`."""
        if "csr64" not in self._cache:
            src = self._exact_source()
            if src is not None and is_scipy(src):
                import scipy.sparse as sp

                self._cache["csr64"] = sp.csr_matrix(src, dtype=np.float64)
            else:
                self._cache["csr64"] = operator_to_csr(self.op)
        return self._cache["csr64"]


def problem_from_operator(
    op: SparseOperator, targets: np.ndarray, *, source: Any = None
) -> Problem:
    """A :class:`Problem` around an operator already built (default names, unit loss weights).

    For direct callers of :func:`l0_calibrate.selection.select_and_polish` and
    :func:`l0_calibrate.polish.polish_weights` who pass a matrix; ``source``
    is the caller's matrix (default: ``op``).

    Examples
    --------
    >>> p = problem_from_operator(SparseOperator.from_any(np.eye(2)), np.array([1.0, 0.0]))
    >>> p.names, p.infeasible.tolist()
    (['target_0', 'target_1'], [False, False])
    """
    t = np.asarray(targets, dtype=np.float64)
    has_pos, has_neg = row_signs(op)
    return Problem(
        op=op,
        targets=t,
        names=[f"target_{i}" for i in range(t.size)],
        household_index=None,
        loss_weights=np.ones(t.size),
        groups=None,
        infeasible=unreachable(t, has_pos, has_neg),
        source=op if source is None else source,
    )


def _target_names(
    M: Any, names: list[str] | None, target_names: Any, n_targets: int, arg: str
) -> list[str] | None:
    if target_names is not None:
        given = [str(t) for t in target_names]
        if len(given) != n_targets:
            raise ValueError(
                f"target_names has {len(given)} names but {arg} has {n_targets} targets"
            )
        if names is not None and given != names:
            raise ValueError(
                "target_names differs from the DataFrame's column names; pass one of them"
            )
        names = given
    if names is not None:
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"target names must be unique, but {dup[:5]} appear more than once; rename or drop "
                "the duplicates"
            )
    return names


def _align_targets(
    y: Any, names: list[str] | None, matrix_argument: str, targets_argument: str
) -> Any:
    """A Series of targets aligned by name to ``names`` (a list in their order); anything else unchanged."""
    if not _is_series(y):
        return y
    index = [str(i) for i in y.index]
    dup = sorted({i for i in index if index.count(i) > 1})
    if dup:
        raise ValueError(
            f"{targets_argument} has duplicate label(s) {dup[:5]}; give each target one value"
        )
    if names is None:
        return y
    missing = [n for n in names if n not in set(index)]
    unknown = sorted(set(index) - set(names))
    if missing or unknown:
        parts = []
        if unknown:
            parts.append(
                f"names {len(unknown)} target(s) that match no column of {matrix_argument}: "
                f"{unknown[:5]}" + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            )
        if missing:
            parts.append(
                f"has no value for target(s) {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                + f" (columns of {matrix_argument})"
            )
        raise ValueError(
            f"{targets_argument} " + " and ".join(parts) + "; every target needs exactly one "
            "column and every column one target: add the missing ones or drop the extra ones"
        )
    lookup = dict(zip(index, y.to_numpy(), strict=False))
    return [lookup[name] for name in names]


def build_problem(
    M: Any,
    y: Any,
    *,
    n_features: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    target_groups: Any = None,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
    target_names: Any = None,
    design_weights: Any = None,
    household_index: Any = None,
    matrix_argument: str = "M",
    targets_argument: str = "y",
) -> Problem:
    """Validate a matrix, its targets and group settings and convert the matrix once into a :class:`Problem`.

    Targets given as a pandas Series are aligned by name to the columns of a
    DataFrame matrix (or to ``target_names``). ``design_weights`` (a Series
    is aligned to ``household_index``, else the DataFrame's index, else
    ``0..n-1``) must be positive.

    Parameters
    ----------
    M : matrix or pandas.DataFrame
        ``(n_targets, n_households)`` (scipy.sparse, numpy, torch,
        :class:`l0_core.SparseOperator`) or a DataFrame of households x targets.
    y : array-like or pandas.Series
        One target per row.
    n_features : int, optional
        Required household count.
    dtype, device : optional
        Precision and device of the operator.

    Returns
    -------
    Problem

    Examples
    --------
    >>> p = build_problem(np.array([[1.0, 0.0], [0.0, 0.0]]), [2.0, 3.0], n_features=2,
    ...                   dtype=torch.float64, device=None)
    >>> p.infeasible.tolist(), p.names
    ([False, True], ['target_0', 'target_1'])
    """
    op, names, hh_index = as_matrix(M, dtype=dtype, device=device, argument=matrix_argument)
    n_targets, n_cols = op.shape
    check_matrix_shape(n_targets, n_cols, matrix_argument, frame=is_dataframe(M))
    if n_features is not None and n_cols != n_features:
        raise ValueError(
            f"{matrix_argument} has {n_cols} household columns but the model has n_features="
            f"{n_features}; {matrix_argument} must be (n_targets, n_households)"
            + (" (a DataFrame is households x targets)" if is_dataframe(M) else "")
        )
    names = _target_names(M, names, target_names, n_targets, matrix_argument)
    y = _align_targets(y, names, matrix_argument, targets_argument)
    targets = as_vector(
        y, targets_argument, n_targets, what=f"one per row of {matrix_argument}, its targets"
    )
    if names is None:
        names = [f"target_{i}" for i in range(n_targets)]
    weights, labels = group_weights(
        target_groups,
        n_targets,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
    )
    has_pos, has_neg = row_signs(op)
    infeasible = unreachable(targets, has_pos, has_neg)
    if infeasible.any():
        weights = weights.copy()
        weights[infeasible] = 0.0
    design = None
    if design_weights is not None:
        if household_index is not None:
            labels_hh = list(household_index)
        elif hh_index is not None:
            labels_hh = list(hh_index)
        else:
            labels_hh = list(range(n_cols))
        aligned = align_to_labels(design_weights, labels_hh, "design_weights", "the households")
        design = as_vector(aligned, "design_weights", n_cols, what="one per household")
        if (design <= 0).any():
            raise ValueError("design_weights must be positive; drop zero-weight households first")
    return Problem(
        op=op,
        targets=targets,
        names=names,
        household_index=hh_index,
        loss_weights=weights,
        groups=labels,
        infeasible=infeasible,
        source=M,
        design_weights=design,
    )


#: The earlier name of :func:`build_problem` (same arguments).
prepare_problem = build_problem
