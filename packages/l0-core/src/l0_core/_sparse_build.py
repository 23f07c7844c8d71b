"""Conversion of a caller's matrix into the CSR tensors of a :class:`~l0_core.sparse.SparseOperator`.

scipy.sparse matrices go through scipy's O(nnz) conversions (CSC of ``M`` is
CSR of ``M.T``), torch tensors (dense, COO, CSR, CSC) and numpy arrays
through torch's. Every result is a new tensor owned by the operator (the
caller's arrays are copied, never modified); values are checked to be
finite and indices to be valid before any kernel walks them.

scipy is imported only when a scipy matrix is passed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._sparse_checks import check_scipy_indices, check_torch_indices

__all__ = [
    "check_finite",
    "csr_from_matrix",
    "csr_from_scipy",
    "narrowed_csr",
    "csr_from_torch",
    "csr_tensor",
    "index_dtype",
    "is_scipy_sparse",
]

_INT32_MAX = 2**31 - 1


def is_scipy_sparse(obj: Any) -> bool:
    """True for a scipy.sparse matrix or array (without importing scipy for anything else).

    Examples
    --------
    >>> is_scipy_sparse(np.eye(2))
    False
    """
    mod = type(obj).__module__
    if not mod.startswith("scipy.sparse"):
        return False
    import scipy.sparse as sp

    return sp.issparse(obj)


def index_dtype(nnz: int, *dims: int) -> torch.dtype:
    """int32 when every index and count fits, else int64.

    Examples
    --------
    >>> index_dtype(10, 3, 4)
    torch.int32
    """
    return torch.int32 if max(nnz, *dims) <= _INT32_MAX else torch.int64


def csr_tensor(indptr: Tensor, indices: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor with :func:`index_dtype` indices (invariants are checked by the callers).

    Examples
    --------
    >>> t = csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.ones(2), (2, 2))
    >>> t.to_dense().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    idx_dtype = index_dtype(values.numel(), *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            indptr.to(idx_dtype),
            indices.to(idx_dtype),
            values,
            size=size,
            check_invariants=False,
        )


def check_finite(values: Tensor, argument: str) -> None:
    """Raise ``ValueError`` naming ``argument`` if ``values`` holds NaN or infinity (chunked).

    Examples
    --------
    >>> check_finite(torch.tensor([1.0, float("nan")]), "M")
    Traceback (most recent call last):
    ...
    ValueError: M contains 1 NaN or infinite value(s); replace them (e.g. with 0) before calling
    """
    flat = values.reshape(-1)
    n_bad = 0
    for start in range(0, flat.numel(), 1 << 24):  # chunks: no nnz-sized temporary
        n_bad += int((~torch.isfinite(flat[start : start + (1 << 24)])).sum().item())
    if n_bad:
        raise ValueError(
            f"{argument} contains {n_bad} NaN or infinite value(s); "
            "replace them (e.g. with 0) before calling"
        )


def narrowed_csr(matrix: Any, dtype: torch.dtype) -> Any:
    """A float64 scipy CSR ``matrix`` with its values cast to float32, sharing its index arrays.

    For a float32 operator the conversion then transposes float32 values: no
    whole float64 intermediate (the CSC copy of a CSR input and its column
    blocks, 12 bytes per non-zero each) is made. The caller's matrix is not
    modified; any other input (another dtype or format; a CSC matrix is
    already the operator's layout) is returned as is. A value beyond float32's
    range becomes inf and is reported by the finiteness check.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> M = sp.csr_matrix(np.array([[1.0, 0.0], [0.5, 2.0]]))
    >>> N = narrowed_csr(M, torch.float32)
    >>> N.dtype, bool(np.shares_memory(N.indices, M.indices)), N.toarray().tolist()
    (dtype('float32'), True, [[1.0, 0.0], [0.5, 2.0]])
    >>> narrowed_csr(M, torch.float64) is M
    True
    """
    if dtype != torch.float32 or getattr(matrix, "format", None) != "csr":
        return matrix
    if matrix.dtype != np.float64 or matrix.ndim != 2:
        return matrix
    with np.errstate(over="ignore"):
        data = matrix.data.astype(np.float32)
    return type(matrix)((data, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)


def csr_from_scipy(
    matrix: Any, dtype: torch.dtype, argument: str, transpose_copy: bool, block_cols: int
) -> tuple[Tensor, list[tuple[int, Tensor]] | None]:
    """CSR(M.T) and, with ``transpose_copy``, the blocks of CSR(M), from scipy's O(nnz) conversions.

    The blocks of CSR(M) are ``block_cols`` households wide. Arrays scipy
    creates here are owned by the operator and wrapped without a copy; arrays
    of the caller's matrix are always copied.
    """
    if matrix.ndim != 2:
        raise ValueError(f"{argument} must be 2-D, got shape {matrix.shape}")
    data_dtype = np.dtype(matrix.dtype)
    if not (np.issubdtype(data_dtype, np.number) or np.issubdtype(data_dtype, np.bool_)):
        raise TypeError(f"{argument} must be numeric, got dtype {data_dtype}")
    if np.issubdtype(data_dtype, np.complexfloating):
        raise TypeError(f"{argument} must be real, got dtype {data_dtype}")
    check_scipy_indices(matrix, argument)
    matrix = narrowed_csr(matrix, dtype)

    def callers(arr: np.ndarray) -> bool:
        return any(
            isinstance(a, np.ndarray) and a.size and np.shares_memory(arr, a)
            for a in (
                getattr(matrix, name, None) for name in ("data", "indices", "indptr", "row", "col")
            )
        )

    # CSR of M.T is CSC of M. tocsc() returns the caller's object when it is
    # already CSC; it is copied before any in-place canonicalisation.
    csc = matrix.tocsc()
    if not csc.has_canonical_format:
        if csc is matrix or callers(csc.data):
            csc = csc.copy()
        csc.sum_duplicates()  # also sorts the indices
    n_rows, n_cols = csc.shape
    idx_dtype = index_dtype(csc.nnz, n_rows, n_cols)

    def tensor(arr: np.ndarray, dt: torch.dtype) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.dtype == dt and not callers(arr):
            return t  # a fresh scipy array: owned, no copy needed
        return t.to(dtype=dt, copy=True)

    def build(m: Any, shape: tuple[int, int]) -> Tensor:
        values = tensor(m.data, dtype)
        check_finite(values, argument)
        return csr_tensor(tensor(m.indptr, idx_dtype), tensor(m.indices, idx_dtype), values, shape)

    csr_t = build(csc, (n_cols, n_rows))
    blocks = None
    if transpose_copy:
        # O(nnz) transpositions in scipy (indices come out sorted), by column blocks
        blocks = []
        for h0 in range(0, n_cols, block_cols):
            h1 = min(n_cols, h0 + block_cols)
            part = (csc[:, h0:h1] if (h0, h1) != (0, n_cols) else csc).tocsr()
            blocks.append((h0, build(part, (n_rows, h1 - h0))))
            del part
    return csr_t, blocks


def csr_from_torch(matrix: Tensor, dtype: torch.dtype, argument: str) -> Tensor:
    """CSR(M.T) of a dense or sparse (COO, CSR, CSC) torch matrix ``M``, as a new tensor."""
    if matrix.dim() != 2:
        raise ValueError(f"{argument} must be 2-D, got shape {tuple(matrix.shape)}")
    n_rows, n_cols = matrix.shape
    if matrix.layout == torch.strided:
        if not (matrix.is_floating_point() or not matrix.is_complex()):
            raise TypeError(f"{argument} must be real, got dtype {matrix.dtype}")
        check_finite(matrix.to(dtype), argument)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            csr_t = matrix.detach().t().to(dtype).to_sparse_csr()
    elif matrix.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
        mt = matrix.detach()
        check_torch_indices(mt, argument)
        if mt.layout == torch.sparse_coo:
            mt = mt.coalesce()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            csc = mt.to_sparse_csc() if mt.layout != torch.sparse_csc else mt
        values = csc.values().to(dtype)
        check_finite(values, argument)
        return csr_tensor(
            csc.ccol_indices().to(torch.int64),
            csc.row_indices().to(torch.int64),
            values.clone() if values.data_ptr() == csc.values().data_ptr() else values,
            (n_cols, n_rows),
        )
    else:
        raise TypeError(f"{argument} has unsupported layout {matrix.layout}")
    return csr_tensor(
        csr_t.crow_indices().to(torch.int64),
        csr_t.col_indices().to(torch.int64),
        csr_t.values(),
        (n_cols, n_rows),
    )


def csr_from_matrix(
    matrix: Any, dtype: torch.dtype, argument: str, transpose_copy: bool, block_cols: int
) -> tuple[Tensor, list[tuple[int, Tensor]] | None]:
    """CSR(M.T) and (scipy input with ``transpose_copy`` only) the column blocks of CSR(M).

    Parameters
    ----------
    matrix : scipy.sparse matrix/array, torch.Tensor or numpy.ndarray
        The matrix ``M``; not modified.
    dtype : torch.dtype
        float32 or float64 value dtype.
    argument : str
        Name used in error messages.
    transpose_copy : bool
        Also build the target-major blocks (scipy input; torch input builds
        them from CSR(M.T) in :class:`~l0_core.sparse.SparseOperator`).
    block_cols : int
        Households per block of the target-major copy.

    Returns
    -------
    tuple
        ``(csr_t, blocks)``, ``blocks`` a list of ``(first_column, CSR)`` or None.

    Examples
    --------
    >>> csr_t, blocks = csr_from_matrix(np.eye(2), torch.float32, "M", True, 1 << 18)
    >>> csr_t.shape, blocks
    (torch.Size([2, 2]), None)
    """
    if dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"dtype={dtype} is not supported for a SparseOperator (torch has no half-precision "
            "sparse matrix-vector product on CPU); pass dtype=torch.float32 (a float16 "
            f"{argument} is converted) or torch.float64"
        )
    if is_scipy_sparse(matrix):
        return csr_from_scipy(matrix, dtype, argument, transpose_copy, block_cols)
    if isinstance(matrix, Tensor):
        return csr_from_torch(matrix, dtype, argument), None
    if isinstance(matrix, np.ndarray) or hasattr(matrix, "__array__"):
        arr = np.asarray(matrix)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{argument} must be numeric, got dtype {arr.dtype}")
        return csr_from_torch(torch.from_numpy(np.ascontiguousarray(arr)), dtype, argument), None
    hint = (
        f"; convert it with numpy.asarray({argument}, dtype=float)"
        if isinstance(matrix, (list, tuple))
        else ""
    )
    raise TypeError(
        f"{argument} must be a scipy.sparse matrix or array, a torch tensor (dense, COO, "
        f"CSR or CSC) or a numpy array; got {type(matrix).__name__}{hint}"
    )
