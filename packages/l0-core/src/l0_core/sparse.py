"""A differentiable sparse matrix-vector product shared by the l0 packages.

:class:`SparseOperator` holds a matrix ``M`` of shape ``(n_rows, n_cols)``
(targets x households in calibration, samples x features in regression)
in compressed form with int32 indices where they fit, and computes
``M @ w`` and ``M.T @ r`` with :func:`torch.sparse` CSR kernels, which are
multi-threaded on CPU (MKL) and use cuSPARSE on CUDA.

Layout. PyTorch's CSR kernels are fast only in the row-gather direction:
``CSR(A) @ x``. The household-major copy ``CSR(M.T)`` (equivalently
``CSC(M)``) serves the gradient ``M.T @ r``; the forward product ``M @ w``
is served by a target-major copy ``CSR(M)`` when ``transpose_copy=True``
(the default), or by a scatter-add over the household-major copy when
``False`` (half the memory, several times slower on CPU). Both copies are
read once, sequentially, per product, so an epoch reads the same number of
bytes as a single copy read twice. Building the second copy and the
scatter-add both work in chunks of households, so their temporaries stay a
few hundred MB at any size (no ``nnz``-long int64 array is kept).

No cache is keyed on shape: every operator is built from the matrix it is
given, and :func:`sparse_matvec` takes the operator explicitly.

The conversion of the caller's matrix (scipy, torch, numpy) is
:mod:`l0_core._sparse_build`; scipy is imported only when a scipy matrix is
passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np  # noqa: F401  (the examples below use np)
import torch
from torch import Tensor

from ._sparse_build import csr_from_matrix, csr_tensor
from .checks import check_device, check_dtype

__all__ = ["SparseOperator", "as_sparse_operator", "sparse_matvec"]

#: Non-zeros per chunk when building the second copy or scattering (bounds temporaries).
_CHUNK_NNZ = 1 << 22
#: Households per block of the target-major copy on CPU (w's slice, 1 MiB in float32, stays in L2).
FORWARD_BLOCK_COLS = 1 << 18


class SparseOperator:
    """A fixed sparse matrix ``M`` with fast ``M @ w`` and ``M.T @ r`` products.

    Build it with :meth:`from_any` (or :func:`as_sparse_operator`); use it
    through :func:`sparse_matvec` for autograd.

    Parameters
    ----------
    csr_t : Tensor
        ``CSR(M.T)``, shape ``(n_cols, n_rows)`` (household-major).
    csr : Tensor or None
        ``CSR(M)``, shape ``(n_rows, n_cols)``, or None for the low-memory mode.

    Attributes
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` of ``M``.
    nnz : int
        Stored non-zeros.

    Examples
    --------
    >>> import torch
    >>> M = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    >>> op = SparseOperator.from_any(M)
    >>> op.matvec(torch.tensor([1.0, 1.0, 1.0])).tolist()
    [3.0, 3.0]
    >>> op.rmatvec(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 6.0, 2.0]
    """

    def __init__(
        self,
        csr_t: Tensor,
        csr: Tensor | None = None,
        csr_blocks: list[tuple[int, Tensor]] | None = None,
    ) -> None:
        if csr_t.layout != torch.sparse_csr:
            raise TypeError("csr_t must be a torch.sparse_csr tensor of M.T")
        self.csr_t = csr_t
        n_cols, n_rows = csr_t.shape
        self.shape = (int(n_rows), int(n_cols))
        #: The target-major copy as ``[(first_column, CSR(M[:, first:first + width])), ...]``.
        self.csr_blocks: list[tuple[int, Tensor]] | None = csr_blocks
        if csr is not None:
            self.csr = csr

    @property
    def csr(self) -> Tensor | None:
        """``CSR(M)`` when the target-major copy is one block (else None; see ``csr_blocks``)."""
        blocks = self.csr_blocks
        if blocks is not None and len(blocks) == 1:
            return blocks[0][1]
        return None

    @csr.setter
    def csr(self, value: Tensor | None) -> None:
        self.csr_blocks = None if value is None else [(0, value)]

    @property
    def has_forward_copy(self) -> bool:
        """True when the target-major copy (for a gather-speed ``M @ w``) is stored."""
        return self.csr_blocks is not None

    def build_forward_copy(self) -> None:
        """Build the target-major copy from ``csr_t`` (column blocks on CPU, one block on CUDA).

        On CPU the copy is cut into blocks of ``FORWARD_BLOCK_COLS`` households
        so that each block's slice of ``w`` stays in cache during the gather;
        at millions of households that is several times faster than one CSR(M).

        Examples
        --------
        >>> op = SparseOperator.from_any(np.eye(3), transpose_copy=False)
        >>> op.build_forward_copy(); op.has_forward_copy
        True
        """
        n_cols = self.shape[1]
        width = n_cols if self.device.type != "cpu" else FORWARD_BLOCK_COLS
        if n_cols <= width:
            self.csr_blocks = [(0, self._transpose_csr())]
            return
        crow = self.csr_t.crow_indices()
        col, vals = self.csr_t.col_indices(), self.csr_t.values()
        blocks = []
        for h0 in range(0, n_cols, width):
            h1 = min(n_cols, h0 + width)
            a, b = int(crow[h0].item()), int(crow[h1].item())
            sub = SparseOperator(
                csr_tensor(
                    crow[h0 : h1 + 1] - crow[h0], col[a:b], vals[a:b], (h1 - h0, self.shape[0])
                )
            )
            blocks.append((h0, sub._transpose_csr()))
        self.csr_blocks = blocks

    # ------------------------------------------------------------------ build
    @classmethod
    def from_any(
        cls,
        matrix: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        transpose_copy: bool = True,
        argument: str = "M",
    ) -> SparseOperator:
        """Build an operator from scipy.sparse, torch (sparse or dense) or numpy input.

        Parameters
        ----------
        matrix : scipy.sparse matrix/array, torch.Tensor, numpy.ndarray or SparseOperator
            The matrix ``M`` of shape ``(n_rows, n_cols)``. It is not modified.
        dtype : torch.dtype, default torch.float32
            Value dtype of the stored matrix.
        device : optional
            Device to store it on (default: the input's device, else CPU).
        transpose_copy : bool, default True
            Keep the target-major copy for a fast forward product.
        argument : str, default "M"
            Name used in error messages.

        Returns
        -------
        SparseOperator

        Examples
        --------
        >>> import numpy as np
        >>> SparseOperator.from_any(np.eye(3)).shape
        (3, 3)
        """
        dtype = check_dtype(dtype) or torch.float32
        device = check_device(device)
        if isinstance(matrix, SparseOperator):
            op = matrix
            if op.csr_t.dtype != dtype or (
                device is not None and op.device != torch.device(device)
            ):
                return op.to(device=device, dtype=dtype)
            return op
        csr_t, csr = csr_from_matrix(matrix, dtype, argument, transpose_copy, FORWARD_BLOCK_COLS)
        target = torch.device(device) if device is not None else csr_t.device
        if csr_t.device != target:
            csr_t = csr_t.to(target)
        op = cls(csr_t)
        if csr is not None:
            op.csr_blocks = [(h0, t.to(target)) for h0, t in csr]
        if transpose_copy and not op.has_forward_copy:
            op.build_forward_copy()
        return op

    def _household_chunks(self) -> Any:
        """Yield ``(h0, h1, a, b)``: household range ``[h0, h1)`` and its non-zeros ``[a, b)``.

        Chunks hold about ``_CHUNK_NNZ`` non-zeros (at least one household), so
        per-chunk temporaries stay small whatever the matrix size.
        """
        crow = self.csr_t.crow_indices()
        n_cols = self.shape[1]
        nnz = self.nnz
        if nnz <= _CHUNK_NNZ:
            yield 0, n_cols, 0, nnz
            return
        wanted = torch.arange(_CHUNK_NNZ, nnz, _CHUNK_NNZ, device=crow.device, dtype=crow.dtype)
        cuts = sorted({0, n_cols, *torch.searchsorted(crow, wanted).tolist()})
        starts = crow[torch.tensor(cuts, device=crow.device)].tolist()  # one host sync
        for h0, h1, a, b in zip(cuts[:-1], cuts[1:], starts[:-1], starts[1:], strict=False):
            if b > a:
                yield h0, h1, a, b

    def _chunk_households(self, h0: int, h1: int, a: int, b: int) -> Tensor:
        """Household index (int64) of each non-zero in ``[a, b)``."""
        crow = self.csr_t.crow_indices()
        counts = (crow[h0 + 1 : h1 + 1] - crow[h0:h1]).to(torch.int64)
        return torch.repeat_interleave(
            torch.arange(h0, h1, device=crow.device), counts, output_size=b - a
        )

    def _transpose_csr(self) -> Tensor:
        """Build CSR(M) from CSR(M.T): a stable counting sort on the target index, by chunks."""
        col = self.csr_t.col_indices()  # target (row of M) index of each non-zero
        vals = self.csr_t.values()
        n_rows = self.shape[0]
        dev = col.device
        counts = torch.zeros(n_rows, dtype=torch.int64, device=dev)
        for _, _, a, b in self._household_chunks():
            counts += torch.bincount(col[a:b].to(torch.int64), minlength=n_rows)
        indptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=dev)
        torch.cumsum(counts, 0, out=indptr[1:])
        del counts
        out_idx = torch.empty(self.nnz, dtype=col.dtype, device=dev)
        out_val = torch.empty_like(vals)
        cursor = indptr[:-1].clone()  # next free slot of each target
        for h0, h1, a, b in self._household_chunks():
            tgt = col[a:b].to(torch.int64)
            order = torch.sort(tgt, stable=True).indices  # households stay ascending per target
            tgt_sorted = tgt[order]
            uniq, group = torch.unique_consecutive(tgt_sorted, return_counts=True)
            first = torch.cumsum(group, 0) - group
            rank = torch.arange(tgt.numel(), device=dev) - torch.repeat_interleave(
                first, group, output_size=tgt.numel()
            )
            pos = cursor[tgt_sorted] + rank
            out_idx[pos] = self._chunk_households(h0, h1, a, b)[order].to(col.dtype)
            out_val[pos] = vals[a:b][order]
            cursor[uniq] += group
        return csr_tensor(indptr, out_idx, out_val, self.shape)

    # ------------------------------------------------------------ properties
    @property
    def nnz(self) -> int:
        """Stored non-zeros."""
        return int(self.csr_t.values().numel())

    @property
    def dtype(self) -> torch.dtype:
        """Value dtype."""
        return self.csr_t.dtype

    @property
    def device(self) -> torch.device:
        """Device holding the matrix."""
        return self.csr_t.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored copies (indices and values).

        Examples
        --------
        >>> SparseOperator.from_any(np.eye(2), transpose_copy=False).nbytes  # 3 + 2 int32 indices, 2 float32
        28
        """
        total = 0
        for t in [self.csr_t, *(b for _, b in self.csr_blocks or [])]:
            for part in (t.crow_indices(), t.col_indices(), t.values()):
                total += part.numel() * part.element_size()
        return total

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SparseOperator:
        """Copy to another device and/or value dtype.

        Examples
        --------
        >>> SparseOperator.from_any(np.eye(2)).to(dtype=torch.float64).dtype
        torch.float64
        """

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return csr_tensor(
                t.crow_indices().to(device),
                t.col_indices().to(device),
                t.values().to(device=device, dtype=dtype or t.dtype),
                (int(t.shape[0]), int(t.shape[1])),
            )

        blocks = (
            None
            if self.csr_blocks is None
            else [(h0, moved) for h0, t in self.csr_blocks if (moved := move(t)) is not None]
        )
        csr_t = move(self.csr_t)
        assert csr_t is not None  # csr_t is never None
        return SparseOperator(csr_t, csr_blocks=blocks)

    def column_nnz(self) -> Tensor:
        """Non-zeros per column of ``M`` (per household).

        Examples
        --------
        >>> SparseOperator.from_any(np.array([[1.0, 0.0], [2.0, 0.0]])).column_nnz().tolist()
        [2, 0]
        """
        crow = self.csr_t.crow_indices()
        return (crow[1:] - crow[:-1]).to(torch.int64)

    def row_nnz(self) -> Tensor:
        """Non-zeros per row of ``M`` (per target).

        Examples
        --------
        >>> SparseOperator.from_any(np.array([[1.0, 0.0], [2.0, 0.0]])).row_nnz().tolist()
        [1, 1]
        """
        counts = torch.zeros(self.shape[0], dtype=torch.int64, device=self.device)
        if self.csr_blocks is not None:
            for _, block in self.csr_blocks:
                crow = block.crow_indices()
                counts += (crow[1:] - crow[:-1]).to(torch.int64)
            return counts
        col = self.csr_t.col_indices()
        for _, _, a, b in self._household_chunks():  # no nnz-long int64 temporary
            counts += torch.bincount(col[a:b].to(torch.int64), minlength=self.shape[0])
        return counts

    def to_dense(self) -> Tensor:
        """Dense ``M`` (for small matrices and tests).

        Examples
        --------
        >>> SparseOperator.from_any(np.eye(2)).to_dense().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        return self.csr_t.to_dense().t().contiguous()

    def select_columns(self, columns: Tensor) -> SparseOperator:
        """A new operator on the given columns of ``M`` (households), in the given order.

        Examples
        --------
        >>> op = SparseOperator.from_any(np.array([[1.0, 2.0, 3.0]]))
        >>> op.select_columns(torch.tensor([2, 0])).to_dense().tolist()
        [[3.0, 1.0]]
        """
        columns = torch.as_tensor(columns, device=self.device).to(torch.int64)
        crow = self.csr_t.crow_indices().to(torch.int64)
        starts, ends = crow[columns], crow[columns + 1]
        counts = ends - starts
        indptr = torch.zeros(columns.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        total = int(indptr[-1].item())
        offsets = torch.arange(total, device=self.device) - torch.repeat_interleave(
            indptr[:-1], counts
        )
        src = torch.repeat_interleave(starts, counts) + offsets
        csr_t = csr_tensor(
            indptr,
            self.csr_t.col_indices().to(torch.int64)[src],
            self.csr_t.values()[src],
            (columns.numel(), self.shape[0]),
        )
        op = SparseOperator(csr_t)
        if self.has_forward_copy:
            op.build_forward_copy()
        return op

    # -------------------------------------------------------------- products
    def _check_vec(self, x: Tensor, n: int, argument: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{argument} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2) or x.shape[0] != n:
            raise ValueError(
                f"{argument} must have shape ({n},) or ({n}, k) to match the matrix "
                f"of shape {self.shape}, got {tuple(x.shape)}"
            )
        if x.device != self.device:
            raise ValueError(
                f"{argument} is on {x.device} but the matrix is on {self.device}; "
                "move one of them with .to()"
            )

    def matvec(self, w: Tensor) -> Tensor:
        """``M @ w`` (no autograd; see :func:`sparse_matvec`).

        Examples
        --------
        >>> SparseOperator.from_any(np.eye(2)).matvec(torch.ones(2)).tolist()
        [1.0, 1.0]
        """
        self._check_vec(w, self.shape[1], "w")
        x = w.to(self.dtype)
        if self.csr_blocks is not None:
            if len(self.csr_blocks) == 1:
                out = self.csr_blocks[0][1] @ x
            else:
                out = x.new_zeros((self.shape[0], *x.shape[1:]))
                for h0, block in self.csr_blocks:
                    out += block @ x[h0 : h0 + block.shape[1]]
        else:
            vals = self.csr_t.values()
            col = self.csr_t.col_indices()
            out = x.new_zeros((self.shape[0], *x.shape[1:]))
            for h0, h1, a, b in self._household_chunks():
                xs = x[self._chunk_households(h0, h1, a, b)]
                contrib = xs.mul_(vals[a:b] if x.dim() == 1 else vals[a:b, None])
                out.index_add_(0, col[a:b], contrib)
        return out.to(w.dtype)

    def rmatvec(self, r: Tensor) -> Tensor:
        """``M.T @ r`` (no autograd).

        Examples
        --------
        >>> SparseOperator.from_any(np.eye(2)).rmatvec(torch.ones(2)).tolist()
        [1.0, 1.0]
        """
        self._check_vec(r, self.shape[0], "r")
        return (self.csr_t @ r.to(self.dtype)).to(r.dtype)

    def __matmul__(self, w: Tensor) -> Tensor:
        return sparse_matvec(self, w)

    def __repr__(self) -> str:
        mode = "two copies" if self.has_forward_copy else "household-major only"
        return f"SparseOperator(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, device={self.device}, {mode})"


class _SparseMatvec(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, op: SparseOperator) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op.matvec(w)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        grad_w = ctx.op.rmatvec(grad_out.contiguous()) if ctx.needs_input_grad[0] else None
        return grad_w, None


def sparse_matvec(op: SparseOperator, w: Tensor) -> Tensor:
    """Differentiable ``M @ w`` whose gradient ``M.T @ grad`` reuses the stored matrix.

    Parameters
    ----------
    op : SparseOperator
        The matrix.
    w : Tensor
        Shape ``(n_cols,)`` or ``(n_cols, k)``.

    Returns
    -------
    Tensor
        Shape ``(n_rows,)`` or ``(n_rows, k)``.

    Examples
    --------
    >>> op = SparseOperator.from_any(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    >>> w = torch.ones(2, requires_grad=True)
    >>> sparse_matvec(op, w).sum().backward()
    >>> w.grad.tolist()
    [3.0, 1.0]
    """
    return _SparseMatvec.apply(w, op)


def as_sparse_operator(matrix: Any, **kwargs: Any) -> SparseOperator:
    """Shorthand for :meth:`SparseOperator.from_any`.

    Examples
    --------
    >>> as_sparse_operator(np.eye(2)).nnz
    2
    """
    return SparseOperator.from_any(matrix, **kwargs)
