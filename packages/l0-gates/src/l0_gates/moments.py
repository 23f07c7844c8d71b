"""What a representative subset must reproduce, and how well a subset does.

:func:`moment_matrix` turns a table into one column per statistic that is
additive over rows (count, column totals, centred second moments, category
counts), so that a weighted subset reproduces a statistic exactly when
``weights @ M[subset] == base_weights @ M``. :func:`rake_weights` finds such
weights (entropy raking), and :func:`moment_errors` reports how far a subset
with weights is from the full data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._data import Table, as_table, data_kind, to_float_tensor

__all__ = ["MomentTargets", "moment_errors", "moment_matrix", "rake_weights"]

logger = logging.getLogger("l0_gates")

Moments = Literal["auto", "full", "diagonal"]

#: Number of numeric columns up to which ``moments="auto"`` matches all cross moments.
AUTO_FULL_MAX_COLUMNS = 20


@dataclass
class MomentTargets:
    """Row-additive statistics of a table and their full-data totals.

    Attributes
    ----------
    matrix : Tensor
        ``(n_rows, n_stats)`` float64; statistic ``j`` of a weighted subset is
        ``weights @ matrix[subset, j]``.
    totals : Tensor
        ``(n_stats,)`` full-data values ``base_weights @ matrix``.
    scale : Tensor
        ``(n_stats,)`` positive scale of each statistic (the weighted total of
        its absolute values), used to make errors relative.
    names : list of str
        A label per statistic.

    Examples
    --------
    >>> import torch
    >>> from l0_gates._data import as_table
    >>> table = as_table(torch.tensor([[1.0], [3.0]]))
    >>> t = moment_matrix(table, torch.ones(2, dtype=torch.float64), moments="diagonal")
    >>> t.names, t.totals.tolist()  # rows, column total, centred square
    (['count', 'total[0]', 'moment2[0,0]'], [2.0, 4.0, 2.0])
    """

    matrix: Tensor
    totals: Tensor
    scale: Tensor
    names: list[str]


def _check_moments(moments: str) -> str:
    if moments not in ("auto", "full", "diagonal"):
        raise ValueError(f"moments must be 'auto', 'full' or 'diagonal', got {moments!r}")
    return moments


def moment_matrix(table: Table, base_weights: Tensor, moments: Moments = "auto") -> MomentTargets:
    """Build the statistics a representative subset must reproduce.

    Parameters
    ----------
    table : Table
        Numeric columns and category codes (see ``l0_gates._data.as_table``).
    base_weights : Tensor
        ``(n_rows,)`` non-negative design weights of the full data.
    moments : {"auto", "full", "diagonal"}
        Second moments to match: all centred cross products (``"full"``),
        only centred squares (``"diagonal"``), or full up to
        20 numeric columns (``"auto"``).

    Returns
    -------
    MomentTargets

    Examples
    --------
    >>> import numpy as np
    >>> t = as_table(np.array([[1.0], [2.0], [3.0]]))
    >>> m = moment_matrix(t, torch.ones(3))
    >>> m.names, [round(v, 6) for v in m.totals.tolist()]
    (['count', 'total[0]', 'moment2[0,0]'], [3.0, 6.0, 3.0])
    """
    _check_moments(moments)
    x = table.numeric
    w = base_weights.to(device=x.device, dtype=torch.float64)
    n, d = x.shape
    wsum = w.sum()
    cols = [torch.ones(n, 1, dtype=torch.float64, device=x.device)]
    names = ["count"]
    if d:
        cols.append(x)
        names += [f"total[{c}]" for c in table.numeric_names]
        mean = (w @ x) / wsum
        centred = x - mean
        var = (w @ centred.square()) / wsum
        keep = (var > 1e-12 * (mean.square() + 1.0)).nonzero().reshape(-1).tolist()
        if keep:
            z = centred[:, keep] / var[keep].sqrt()
            kn = [table.numeric_names[j] for j in keep]
            full = moments == "full" or (moments == "auto" and len(keep) <= AUTO_FULL_MAX_COLUMNS)
            if full:
                iu = torch.triu_indices(len(keep), len(keep), device=x.device)
                cols.append(z[:, iu[0]] * z[:, iu[1]])
                names += [f"moment2[{kn[a]},{kn[b]}]" for a, b in iu.t().tolist()]
            else:
                cols.append(z.square())
                names += [f"moment2[{c},{c}]" for c in kn]
    for codes, cname in zip(table.categories, table.category_names, strict=True):
        levels = int(codes.max().item()) + 1
        onehot = torch.nn.functional.one_hot(codes.to(x.device), levels).to(torch.float64)
        present = (w @ onehot) > 0
        cols.append(onehot[:, present])
        names += [f"share[{cname}={lvl}]" for lvl in present.nonzero().reshape(-1).tolist()]
    matrix = torch.cat(cols, dim=1)
    scale = w @ matrix.abs()
    nonzero = scale > 0
    if not bool(nonzero.all()):
        matrix = matrix[:, nonzero]
        names = [nm for nm, keep in zip(names, nonzero.tolist(), strict=True) if keep]
        scale = scale[nonzero]
    return MomentTargets(matrix, w @ matrix, scale, names)


def rake_weights(
    matrix: Tensor,
    totals: Tensor,
    start: Tensor,
    scale: Tensor | None = None,
    *,
    max_iter: int = 100,
    ridge: float = 1e-10,
) -> Tensor:
    """Non-negative weights closest to ``start`` (in entropy) that reproduce ``totals``.

    Solves ``min sum w log(w / start) - w + start`` subject to
    ``matrix.T @ w = totals`` (raking, Deville & Sarndal 1992) by Newton's
    method on the dual, ``w = start * exp(matrix_scaled @ lam)``. A tiny ridge
    on ``lam`` keeps the solve finite when the constraints cannot all be met
    (e.g. a category absent from the subset); the weights then match as well
    as they can.

    Parameters
    ----------
    matrix : Tensor
        ``(k, m)`` statistics of the subset rows.
    totals : Tensor
        ``(m,)`` values to reproduce.
    start : Tensor
        ``(k,)`` positive starting weights.
    scale : Tensor, optional
        ``(m,)`` positive scale per statistic (default: ``totals.abs()``, or 1).
    max_iter : int, default 100
        Newton iterations at most.
    ridge : float, default 1e-10
        Ridge on the dual variables, relative to the mean Hessian diagonal.

    Returns
    -------
    Tensor
        ``(k,)`` float64 weights.

    Examples
    --------
    >>> m = torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> w = rake_weights(m, torch.tensor([4.0, 8.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    >>> [round(v, 6) for v in w.tolist()]
    [2.0, 2.0]
    """
    g_mat = matrix.to(torch.float64)
    tot = totals.to(device=g_mat.device, dtype=torch.float64)
    d = start.to(device=g_mat.device, dtype=torch.float64)
    if scale is None:
        scale = torch.where(tot.abs() > 0, tot.abs(), torch.ones_like(tot))
    s = scale.to(device=g_mat.device, dtype=torch.float64)
    g_mat = g_mat / s
    tot = tot / s
    m = g_mat.shape[1]
    eye = torch.eye(m, dtype=torch.float64, device=g_mat.device)
    h0 = (g_mat * d[:, None]).t() @ g_mat
    mu = ridge * float(torch.diagonal(h0).mean().clamp_min(1e-300))
    lam = torch.zeros(m, dtype=torch.float64, device=g_mat.device)

    def objective(lam_: Tensor) -> Tensor:
        return (d * torch.exp(g_mat @ lam_)).sum() - tot @ lam_ + 0.5 * mu * (lam_ @ lam_)

    f = objective(lam)
    for _ in range(max_iter):
        w = d * torch.exp(g_mat @ lam)
        grad = g_mat.t() @ w - tot + mu * lam
        hess = (g_mat * w[:, None]).t() @ g_mat + mu * eye
        step = torch.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if not decrement > 1e-24:
            break
        a = 1.0
        while True:
            cand = lam - a * step
            fc = objective(cand)
            if bool(torch.isfinite(fc)) and float(fc) <= float(f) - 1e-4 * a * decrement:
                break
            a *= 0.5
            if a < 1e-12:
                break
        if a < 1e-12:
            break
        stalled = float(f) - float(fc) <= 1e-13 * max(1.0, abs(float(f)))
        lam, f = cand, fc
        if stalled:  # no further progress: the totals are met, or as close as they can be
            break
    return d * torch.exp(g_mat @ lam)


def moment_errors(
    data: Any,
    indices: Any,
    weights: Any = None,
    *,
    base_weights: Any = None,
    categorical: list | tuple | None = None,
) -> dict[str, Tensor]:
    """Relative errors of a weighted subset on column totals, variances and category shares.

    Parameters
    ----------
    data : Tensor, ndarray or DataFrame
        The full data, ``(n_rows, ...)``.
    indices : array-like of int
        Rows of the subset.
    weights : array-like, optional
        Weights of the subset rows; default: every row weighs
        ``sum(base_weights) / len(indices)`` (a uniform random sample's
        expansion weight).
    base_weights : array-like, optional
        Design weights of the full data (default 1 per row).
    categorical : list, optional
        Columns to treat as categories (see :meth:`SampleGate.fit`).

    Returns
    -------
    dict of str to Tensor
        ``"total"``: ``|subset total / full total - 1|`` per numeric column;
        ``"variance"``: the same for weighted variances; ``"share"``: absolute
        error of each category level's weighted share.

    Examples
    --------
    >>> x = torch.arange(10.0).reshape(10, 1)
    >>> e = moment_errors(x, torch.arange(0, 10, 2))
    >>> round(e["total"].item(), 4)
    0.1111
    """
    table = as_table(data, "data", categorical=categorical)
    n = table.n_rows
    idx = torch.as_tensor(_as_numpy_like(indices), dtype=torch.long).reshape(-1)
    if idx.numel() == 0 or int(idx.min()) < -n or int(idx.max()) >= n:
        raise ValueError(f"indices must be row positions in [0, {n - 1}], got {idx.tolist()[:10]}")
    w0 = _weights_or_ones(base_weights, n, "base_weights")
    if weights is None:
        w = torch.full((idx.numel(),), float(w0.sum()) / idx.numel(), dtype=torch.float64)
    else:
        w = to_float_tensor(_as_numpy_like(weights), "weights").reshape(-1).cpu()
        if w.numel() != idx.numel():
            raise ValueError(
                f"weights has {w.numel()} entries but indices has {idx.numel()}; pass one weight per selected row"
            )
    x = table.numeric.cpu()
    out: dict[str, Tensor] = {}
    full_tot = w0 @ x
    sub_tot = w @ x[idx]
    out["total"] = (sub_tot / full_tot - 1).abs()
    full_mean = full_tot / w0.sum()
    sub_mean = sub_tot / w.sum()
    full_var = (w0 @ (x - full_mean).square()) / w0.sum()
    sub_var = (w @ (x[idx] - sub_mean).square()) / w.sum()
    out["variance"] = (sub_var / full_var - 1).abs()
    shares = []
    for codes in table.categories:
        codes = codes.cpu()
        levels = int(codes.max()) + 1
        full_share = torch.zeros(levels, dtype=torch.float64).index_add_(0, codes, w0) / w0.sum()
        sub_share = torch.zeros(levels, dtype=torch.float64).index_add_(0, codes[idx], w) / w.sum()
        shares.append((sub_share - full_share).abs())
    out["share"] = torch.cat(shares) if shares else torch.zeros(0, dtype=torch.float64)
    return out


def _as_numpy_like(values: Any) -> Any:
    if isinstance(values, Tensor):
        return values.detach().cpu()
    if type(values).__module__.split(".")[0] == "pandas":
        return values.to_numpy()
    return values


def _weights_or_ones(weights: Any, n: int, argument: str) -> Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    if not isinstance(weights, (Tensor, list, tuple)):
        data_kind(weights, argument)  # raises TypeError for unsupported types
    w = to_float_tensor(_as_numpy_like(weights), argument).reshape(-1).cpu()
    if w.numel() != n:
        raise ValueError(
            f"{argument} has {w.numel()} entries but the data has {n} rows; pass one weight per row"
        )
    if bool((w < 0).any()):
        raise ValueError(
            f"{argument} must be non-negative; found {int((w < 0).sum())} negative value(s)"
        )
    if not float(w.sum()) > 0:
        raise ValueError(f"{argument} must have a positive sum; all weights are zero")
    return w
