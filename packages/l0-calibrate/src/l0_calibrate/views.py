"""Views of the estimate matrix: a few columns gathered, exact products, and the whole-matrix conversions.

* :func:`gather_columns` -- some columns of an operator as small float64
  scipy rows (from its household-major copy, on its device);
* :func:`gathered_matvec` -- the float64 ``M @ w`` of an operator, by
  chunks of gathered columns;
* :func:`scipy_columns` -- some columns of a scipy matrix, whatever its format;
* :func:`operator_to_csr` / :func:`as_scipy_csr` -- the package's only
  conversions of a whole matrix to scipy CSR (full copies);
* :func:`relative_errors` -- ``(estimate - target) / |target|``.

:class:`l0_calibrate.problem.Problem` serves its views through these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator

__all__ = [
    "as_scipy_csr",
    "check_finite_array",
    "gather_columns",
    "gathered_matvec",
    "is_scipy",
    "operator_to_csr",
    "relative_errors",
    "scipy_columns",
]

#: Non-zeros gathered per chunk when a product runs over gathered columns.
_CHUNK_NNZ = 1 << 22


def relative_errors(estimates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(estimate - target) / |target|``; 0 where both are 0, +-inf where only the target is.

    Examples
    --------
    >>> relative_errors(np.array([1.1, 0.0, 2.0]), np.array([1.0, 0.0, 0.0])).round(6).tolist()
    [0.1, 0.0, inf]
    """
    diff = estimates - targets
    denom = np.abs(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), np.sign(diff) * np.inf)
    return np.where((denom == 0) & (diff == 0), 0.0, out)


def is_scipy(M: Any) -> bool:
    """True for a scipy.sparse matrix or array (without importing scipy).

    Examples
    --------
    >>> is_scipy(np.eye(2))
    False
    """
    return type(M).__module__.startswith("scipy.sparse") and hasattr(M, "tocsc")


def gather_columns(op: SparseOperator, idx: Any, row_scale: np.ndarray | None = None) -> Any:
    """Columns ``idx`` of ``op``'s matrix (rows scaled by ``row_scale``) as float64 scipy CSR rows.

    Returns a matrix of shape ``(len(idx), n_rows)`` (one row per gathered
    household), gathered from the operator's household-major copy on its
    device and moved to the CPU; the whole matrix is never copied.

    Examples
    --------
    >>> op = SparseOperator.from_any(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]]))
    >>> gather_columns(op, np.array([2, 0])).toarray().tolist()
    [[2.0, 1.0], [1.0, 0.0]]
    """
    import scipy.sparse as sp

    csr_t = op.csr_t
    dev = csr_t.device
    crow = csr_t.crow_indices().long()
    it = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=dev)
    starts = crow[it]
    lens = crow[it + 1] - starts
    new_crow = torch.zeros(it.numel() + 1, dtype=torch.long, device=dev)
    torch.cumsum(lens, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    pos = torch.arange(total, device=dev) + torch.repeat_interleave(starts - new_crow[:-1], lens)
    cols = csr_t.col_indices()[pos].long()
    vals = csr_t.values()[pos].to(torch.float64)
    if row_scale is not None:
        vals = vals * torch.as_tensor(row_scale, dtype=torch.float64, device=dev)[cols]
    return sp.csr_matrix(
        (vals.cpu().numpy(), cols.cpu().numpy(), new_crow.cpu().numpy()),
        shape=(it.numel(), op.shape[0]),
    )


def operator_to_csr(op: SparseOperator) -> Any:
    """The whole matrix of ``op`` as float64 scipy CSR (targets x households): a full copy.

    Examples
    --------
    >>> operator_to_csr(SparseOperator.from_any(np.eye(2))).toarray().tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    import scipy.sparse as sp

    t = op.csr_t.cpu()
    csr_t = sp.csr_matrix(
        (
            t.values().numpy().astype(np.float64),
            t.col_indices().numpy().astype(np.int64),
            t.crow_indices().numpy().astype(np.int64),
        ),
        shape=(op.shape[1], op.shape[0]),
    )
    return csr_t.T.tocsr()


def as_scipy_csr(matrix: Any, argument: str = "M") -> Any:
    """Any supported matrix (scipy.sparse, numpy, torch dense/sparse, SparseOperator) as scipy CSR float64.

    A full copy; the caller's object is not modified. The calibration
    pipeline does not call it on the estimate matrix (it reads
    :meth:`Problem.columns` views instead).

    Examples
    --------
    >>> as_scipy_csr(np.eye(2)).toarray().tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    import scipy.sparse as sp

    if sp.issparse(matrix):
        if matrix.ndim != 2:
            raise ValueError(f"{argument} must be 2-D, got shape {matrix.shape}")
        out = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        if out.nnz and not np.isfinite(out.data).all():
            raise ValueError(
                f"{argument} contains NaN or infinite values; replace them (e.g. with 0)"
            )
        return out
    op = SparseOperator.from_any(
        matrix, dtype=torch.float64, transpose_copy=False, argument=argument
    )
    return operator_to_csr(op)


def scipy_columns(M: Any, idx: np.ndarray) -> Any:
    """Columns ``idx`` of a scipy matrix as float64 CSR, without converting the whole matrix.

    CSR and CSC are sliced, COO is filtered by column; the rare formats
    (LIL, DOK, DIA, BSR) are read through CSC.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> scipy_columns(sp.coo_matrix(np.array([[1.0, 2.0, 3.0]])), np.array([2, 0])).toarray().tolist()
    [[3.0, 1.0]]
    """
    import scipy.sparse as sp

    fmt = M.format
    if fmt in ("csr", "csc"):
        return sp.csr_matrix(M[:, idx], dtype=np.float64)
    if fmt == "coo":
        pos = np.full(M.shape[1], -1, dtype=np.int64)
        pos[idx] = np.arange(idx.size)
        col = pos[M.col]
        keep = col >= 0
        return sp.csr_matrix(
            (np.asarray(M.data[keep], dtype=np.float64), (M.row[keep], col[keep])),
            shape=(M.shape[0], idx.size),
        )
    return sp.csr_matrix(M.tocsc()[:, idx], dtype=np.float64)  # dia, lil, dok, bsr: rare


def gathered_matvec(op: SparseOperator, w: np.ndarray) -> np.ndarray:
    """``M @ w`` in float64 from an operator of any precision, over the non-zero weights' columns.

    The columns are gathered in chunks of about ``_CHUNK_NNZ`` non-zeros, so
    no float64 copy of the whole matrix is made.

    Examples
    --------
    >>> op = SparseOperator.from_any(np.array([[1.0, 2.0], [0.0, 3.0]]))
    >>> gathered_matvec(op, np.array([1.0, 0.5])).tolist()
    [2.0, 1.5]
    """
    out = np.zeros(op.shape[0])
    nz = np.flatnonzero(w)
    nnz_col = op.column_nnz().cpu().numpy()[nz]
    bounds = np.searchsorted(
        np.cumsum(nnz_col), np.arange(_CHUNK_NNZ, nnz_col.sum() + 1, _CHUNK_NNZ)
    )
    for part in np.split(nz, bounds):
        if part.size:
            out += np.asarray(gather_columns(op, part).T @ w[part]).reshape(-1)
    return out


def check_finite_array(values: Any, argument: str) -> None:
    """Raise, naming ``argument``, when ``values`` holds NaN or infinity.

    Examples
    --------
    >>> check_finite_array(np.array([1.0, np.nan]), "M")
    Traceback (most recent call last):
    ...
    ValueError: M contains NaN or infinite values; replace them (e.g. with 0)
    """
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{argument} contains NaN or infinite values; replace them (e.g. with 0)")
