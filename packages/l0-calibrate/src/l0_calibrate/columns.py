"""Column access for the select pipeline without copying the whole matrix.

The discrete stages of :func:`l0_calibrate.selection.select_and_polish`
(swap refinement, polish, repair) need three things from the estimate
matrix ``M`` (targets x households), each with the rows scaled by a vector
``s`` (the refinement's relative, weighted errors):

* the products ``(s * M) @ w`` and ``(s * M).T @ r`` -- one pass over the
  non-zeros, on the operator's device (:class:`l0_core.SparseOperator`);
* the squared column norms ``sum_i (s_i M_ik)^2`` -- one chunked pass;
* a few columns (the candidates of an exchange, the kept households of a
  polish) as a small scipy matrix in float64 on the CPU -- a gather of
  their rows from the operator's household-major copy.

:class:`OperatorColumns` serves them from the operator the gate training
already holds, so no float64 or scipy copy of the whole matrix is made;
:class:`ScipyColumns` serves a (small) scipy matrix, such as the whitened
rows of the Mahalanobis metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .views import gather_columns

__all__ = ["OperatorColumns", "ScipyColumns"]

_CHUNK_ROWS_NNZ = 1 << 20


class OperatorColumns:
    """Row-scaled column access to a :class:`l0_core.SparseOperator`.

    Parameters
    ----------
    op : l0_core.SparseOperator
        The matrix ``M`` (targets x households); its device is used for the
        products.
    row_scale : numpy.ndarray, optional
        ``s``, one positive factor per target (default 1).

    Examples
    --------
    >>> from l0_core import SparseOperator
    >>> M = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    >>> cols = OperatorColumns(SparseOperator.from_any(M, dtype=torch.float64), np.array([1.0, 0.5]))
    >>> cols.matvec(np.ones(3)).tolist(), cols.col_sq.tolist()
    ([3.0, 2.0], [1.0, 2.25, 4.25])
    >>> cols.fetch(np.array([2])).toarray().tolist()
    [[2.0, 0.5]]
    """

    def __init__(self, op: Any, row_scale: np.ndarray | None = None):
        self.op = op
        self.n_rows, self.n_cols = op.shape
        self.nnz = int(op.nnz)
        self.scale = np.ones(self.n_rows) if row_scale is None else np.asarray(row_scale, float)
        self._scale_t = torch.as_tensor(self.scale, dtype=op.dtype, device=op.device)
        self._col_sq: np.ndarray | None = None

    def matvec(self, w: np.ndarray) -> np.ndarray:
        """``(s * M) @ w`` in float64 on the CPU (computed on the operator's device)."""
        wt = torch.as_tensor(w, dtype=self.op.dtype, device=self.op.device)
        return (self.op.matvec(wt) * self._scale_t).double().cpu().numpy()

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """``(s * M).T @ r`` in float64 on the CPU (computed on the operator's device)."""
        rt = torch.as_tensor(r, dtype=self.op.dtype, device=self.op.device) * self._scale_t
        return self.op.rmatvec(rt).double().cpu().numpy()

    @property
    def col_sq(self) -> np.ndarray:
        """Squared norms of the scaled columns (one chunked pass, cached)."""
        if self._col_sq is None:
            csr_t = self.op.csr_t
            crow = csr_t.crow_indices()
            cols = csr_t.col_indices()
            vals = csr_t.values()
            s2 = self._scale_t.to(torch.float64) ** 2
            out = torch.zeros(self.n_cols, dtype=torch.float64, device=vals.device)
            start = 0
            crow_cpu = crow.cpu()
            while start < self.n_cols:
                stop = int(
                    torch.searchsorted(crow_cpu, crow_cpu[start] + _CHUNK_ROWS_NNZ, right=True)
                )
                stop = min(max(stop - 1, start + 1), self.n_cols)
                a, b = int(crow_cpu[start]), int(crow_cpu[stop])
                if b > a:
                    v = vals[a:b].to(torch.float64)
                    part = v * v * s2[cols[a:b].long()]
                    lens = (crow[start + 1 : stop + 1] - crow[start:stop]).long()
                    ids = torch.repeat_interleave(
                        torch.arange(start, stop, device=vals.device), lens
                    )
                    out.index_add_(0, ids, part)
                start = stop
            self._col_sq = out.cpu().numpy()
        return self._col_sq

    def fetch(self, idx: np.ndarray) -> Any:
        """Columns ``idx`` of ``s * M`` as a scipy CSR matrix of shape ``(len(idx), n_rows)``, float64."""
        return gather_columns(self.op, idx, self.scale)


class ScipyColumns:
    """The same access to a scipy matrix (already scaled), e.g. the whitened rows.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> cols = ScipyColumns(sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])))
    >>> cols.rmatvec(np.ones(2)).tolist(), cols.fetch(np.array([1])).toarray().tolist()
    ([1.0, 3.0, 3.0], [[0.0, 3.0]])
    """

    def __init__(self, X: Any):
        self.X = X.tocsr()
        self._T = self.X.T.tocsr()
        self.n_rows, self.n_cols = X.shape
        self.nnz = int(self.X.nnz)
        self.col_sq = np.asarray(self.X.multiply(self.X).sum(axis=0)).ravel()

    def matvec(self, w: np.ndarray) -> np.ndarray:
        """``X @ w``."""
        return np.asarray(self.X @ w).ravel()

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """``X.T @ r``."""
        return np.asarray(self._T @ r).ravel()

    def fetch(self, idx: np.ndarray) -> Any:
        """Columns ``idx`` as a CSR matrix of shape ``(len(idx), n_rows)``."""
        return self._T[np.asarray(idx, dtype=np.int64)]
