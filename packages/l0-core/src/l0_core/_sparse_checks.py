"""Index validation for sparse inputs, run before scipy or torch walk the indices.

scipy's conversions and torch's sparse kernels trust ``indptr``/``indices``;
an out-of-range, negative or non-monotone entry ends the process (SIGSEGV or
a malloc abort) instead of raising. These checks are O(nnz) and name the
argument and the bad entry.

Examples
--------
>>> import numpy as np, scipy.sparse as sp
>>> m = sp.csr_matrix((np.ones(1), np.array([5]), np.array([0, 1])), shape=(1, 3))
>>> check_scipy_indices(m, "M")
Traceback (most recent call last):
...
ValueError: M is not a valid sparse matrix: its column indices contain the index 5, out of range for size 3; rebuild it from valid (row, column, value) triplets
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_scipy_indices", "check_torch_indices"]


def _index_error(argument: str, what: str, detail: str) -> ValueError:
    return ValueError(
        f"{argument} is not a valid sparse matrix: {what} {detail}; "
        "rebuild it from valid (row, column, value) triplets"
    )


def _check_range_of(idx: Any, bound: int, argument: str, what: str) -> None:
    """Every entry of ``idx`` (numpy array or tensor) lies in ``[0, bound)``."""
    if len(idx) == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0:
        raise _index_error(argument, what, f"contain the negative index {lo}")
    if hi >= bound:
        raise _index_error(argument, what, f"contain the index {hi}, out of range for size {bound}")


def _check_compressed(
    indptr: Any, indices: Any, n_major: int, n_minor: int, argument: str, names: tuple[str, str]
) -> None:
    """Check a CSR/CSC triple (``indptr``, ``indices``) before any library walks it."""
    ptr_name, idx_name = names
    if len(indptr) != n_major + 1:
        raise _index_error(
            argument, ptr_name, f"has length {len(indptr)}, expected {n_major + 1} for this shape"
        )
    if int(indptr[0]) != 0 or int(indptr[-1]) > len(indices):
        raise _index_error(
            argument,
            ptr_name,
            f"must start at 0 and end at most at {len(indices)}, "
            f"got {int(indptr[0])}..{int(indptr[-1])}",
        )
    steps = indptr[1:] - indptr[:-1]
    if len(steps) and int(steps.min()) < 0:
        raise _index_error(argument, ptr_name, "is not non-decreasing")
    _check_range_of(indices[: int(indptr[-1])], n_minor, argument, idx_name)


def check_scipy_indices(matrix: Any, argument: str) -> None:
    """Refuse out-of-range or negative indices before scipy's C code reads them (it may crash)."""
    n_rows, n_cols = matrix.shape
    fmt = getattr(matrix, "format", None)
    if fmt == "coo":
        if len(matrix.row) != len(matrix.col) or len(matrix.row) != len(matrix.data):
            raise _index_error(argument, "row, col and data", "have different lengths")
        _check_range_of(matrix.row, n_rows, argument, "its row indices")
        _check_range_of(matrix.col, n_cols, argument, "its column indices")
    elif fmt in ("csr", "csc"):
        major, minor = (n_rows, n_cols) if fmt == "csr" else (n_cols, n_rows)
        names = ("its indptr", "its column indices" if fmt == "csr" else "its row indices")
        if len(matrix.indices) != len(matrix.data):
            raise _index_error(argument, "indices and data", "have different lengths")
        _check_compressed(matrix.indptr, matrix.indices, major, minor, argument, names)


def check_torch_indices(matrix: Tensor, argument: str) -> None:
    """The same checks for torch COO/CSR/CSC tensors (built without invariant checks)."""
    n_rows, n_cols = matrix.shape
    if matrix.layout == torch.sparse_coo:
        idx = matrix._indices()
        if idx.numel():
            _check_range_of(idx[0], n_rows, argument, "its row indices")
            _check_range_of(idx[1], n_cols, argument, "its column indices")
    elif matrix.layout == torch.sparse_csr:
        _check_compressed(
            matrix.crow_indices(),
            matrix.col_indices(),
            n_rows,
            n_cols,
            argument,
            ("its crow_indices", "its col_indices"),
        )
    elif matrix.layout == torch.sparse_csc:
        _check_compressed(
            matrix.ccol_indices(),
            matrix.row_indices(),
            n_cols,
            n_rows,
            argument,
            ("its ccol_indices", "its row_indices"),
        )
