"""Low-rank sketches and exact reconstruction errors for column subset selection."""

from __future__ import annotations

import torch
from torch import Tensor

from ._training import gate_generator

__all__ = ["column_sketch", "reconstruction_error"]


def column_sketch(
    x: Tensor, rank: int, *, seed: int, power_iterations: int = 4
) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` sketch ``(S V^T, S)`` of ``x`` with the column geometry of ``x``.

    ``x^T x`` is approximated by ``R^T R`` with ``R = S V^T`` (``rank`` rows,
    one column per column of ``x``), so least-squares reconstructions of the
    columns of ``x`` from a subset of them are approximated on ``R``. The SVD
    is exact when ``rank >= min(x.shape)`` and randomised (seeded range
    finder with power iterations) otherwise.

    Parameters
    ----------
    x : Tensor
        ``(n, p)`` float64 data.
    rank : int
        Rows of the sketch.
    seed : int
        Seed of the randomised range finder.
    power_iterations : int, default 4
        Power iterations of the range finder.

    Returns
    -------
    sketch : Tensor
        ``(r, p)`` with ``r = min(rank, n, p)``.
    singular_values : Tensor
        ``(r,)``.

    Examples
    --------
    >>> x = torch.randn(30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> r, s = column_sketch(x, 8, seed=0)
    >>> torch.allclose(r.t() @ r, x.t() @ x)
    True
    """
    n, p = x.shape
    r = min(rank, n, p)
    if r >= min(n, p) or min(n, p) <= 2 * r + 20:
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        return s[:r, None] * vh[:r], s[:r]
    gen = gate_generator(seed, x.device)
    omega = torch.randn(p, r + 10, generator=gen, dtype=x.dtype, device=x.device)
    q, _ = torch.linalg.qr(x @ omega)
    for _ in range(power_iterations):
        q, _ = torch.linalg.qr(x.t() @ q)
        q, _ = torch.linalg.qr(x @ q)
    _, s, vh = torch.linalg.svd(q.t() @ x, full_matrices=False)
    return s[:r, None] * vh[:r], s[:r]


def reconstruction_error(x: Tensor, columns: Tensor) -> float:
    """``||x - x_S B||_F^2 / ||x||_F^2`` with the least-squares ``B`` (``S = columns``).

    Examples
    --------
    >>> x = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0]], dtype=torch.float64)
    >>> round(reconstruction_error(x, torch.tensor([0, 2])), 12), round(reconstruction_error(x, torch.tensor([0, 1])), 4)
    (0.0, 0.0077)
    """
    x = x.to(torch.float64)
    total = float(x.square().sum())
    if total == 0.0:
        return 0.0
    sub = x[:, columns.to(x.device)]
    q, rr = torch.linalg.qr(sub)
    diag = rr.diagonal().abs()
    keep = diag > diag.max().clamp_min(1e-300) * 1e-12 if diag.numel() else diag.bool()
    q = q[:, keep]
    resid = x - q @ (q.t() @ x)
    return max(0.0, float(resid.square().sum()) / total)


def redundancy_guarded_top_k(x: Tensor, order: Tensor, k: int, tol: float = 1e-2) -> Tensor:
    """Walk columns in ``order`` and keep the first ``k`` that add a new direction.

    A candidate is skipped while the columns already kept reconstruct all but
    a fraction ``tol`` of its energy (a near-duplicate of a kept column);
    skipped candidates fill the remaining places, in order, if fewer than
    ``k`` columns pass. The result is sorted.

    Parameters
    ----------
    x : Tensor
        ``(n, p)`` data (centred as for the reconstruction).
    order : Tensor
        All ``p`` column indices, best first.
    k : int
        Number of columns to keep.
    tol : float, default 1e-2
        Unexplained energy fraction below which a candidate is redundant.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    >>> redundancy_guarded_top_k(x, torch.tensor([0, 1, 2]), 2).tolist()
    [0, 2]
    """
    x = x.to(torch.float64)
    norms = x.square().sum(0)
    basis = torch.zeros(x.shape[0], 0, dtype=x.dtype, device=x.device)
    kept: list[int] = []
    skipped: list[int] = []
    for j in order.tolist():
        if len(kept) == k:
            break
        col = x[:, j]
        if float(norms[j]) == 0.0:
            skipped.append(j)
            continue
        resid = col - basis @ (basis.t() @ col)
        if len(kept) >= x.shape[0] or float(resid.square().sum()) <= tol * float(norms[j]):
            skipped.append(j)
            continue
        resid = resid - basis @ (basis.t() @ resid)  # re-orthogonalise
        basis = torch.cat([basis, (resid / resid.norm())[:, None]], dim=1)
        kept.append(j)
    kept += skipped[: k - len(kept)]
    return torch.as_tensor(sorted(kept), dtype=torch.long, device=order.device)
