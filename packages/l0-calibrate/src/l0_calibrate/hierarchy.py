"""Hierarchical (geographic) consistency of targets: districts add up to states, states to the nation.

Official targets often come at several levels from different sources, so
the district totals of a variable do not add up to its state total. No
weights can then match both exactly. This module describes the hierarchy
and either reconciles the targets (so they add up and an exact solution can
exist) or penalises the inconsistency of a vector of estimates.

Interface
---------
``Hierarchy``
    Dataclass: ``parent`` (int array, one entry per target, ``-1`` for a
    top-level target), ``depth`` (0 at the top), ``A`` (scipy CSR,
    ``n_groups x n_targets``: row ``g`` has a 1 for every child of the
    group's parent) and ``parent_index`` (int array, ``n_groups``: the
    target index of each group's parent). ``A @ x - x[parent_index]`` is the
    vector of consistency gaps of any per-target vector ``x``.
``build_hierarchy(parent)``
    From a parent index per target (``-1`` or ``None`` for none).
``hierarchy_from_geography(variables, geographies, geo_parent)``
    From a variable name and a geography per target plus a map
    ``{geography: parent geography or None}``: each target's parent is the
    target of the same variable in the parent geography.
``reconcile_targets(targets, hierarchy)``
    Top-down proportional reconciliation: children are scaled so they add
    up to their (already reconciled) parent. Returns a new array.
``hierarchy_penalty(estimates, A, parent_index, parent_values=None)``
    Differentiable mean squared *relative* gap between each parent and the
    sum of its children (torch); add it to a fit loss to push lower-level
    estimates to add up to the higher-level ones.
``consistency_report(values, hierarchy, names=None)``
    A pandas table of the gaps, one row per parent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator, sparse_matvec
from torch import Tensor

__all__ = [
    "Hierarchy",
    "build_hierarchy",
    "consistency_report",
    "hierarchy_from_geography",
    "hierarchy_penalty",
    "reconcile_targets",
]


@dataclass
class Hierarchy:
    """A forest over the targets: each target has at most one parent.

    Attributes
    ----------
    parent : numpy.ndarray of int
        Parent target of each target, ``-1`` for none.
    depth : numpy.ndarray of int
        0 for top-level targets, parent's depth + 1 otherwise.
    A : scipy.sparse.csr_matrix
        ``(n_groups, n_targets)`` aggregation matrix: row ``g`` sums the
        children of target ``parent_index[g]``.
    parent_index : numpy.ndarray of int
        Parent target of each group (one group per target that has children).
    """

    parent: np.ndarray
    depth: np.ndarray
    A: Any
    parent_index: np.ndarray

    @property
    def n_targets(self) -> int:
        """Number of targets covered."""
        return int(self.parent.size)

    def gaps(self, values: Any) -> np.ndarray:
        """``sum(children) - parent`` for every group.

        Examples
        --------
        >>> build_hierarchy([-1, 0, 0]).gaps([10.0, 4.0, 5.0]).tolist()
        [-1.0]
        """
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if x.size != self.n_targets:
            raise ValueError(f"values must have length {self.n_targets}, got {x.size}")
        return np.asarray(self.A @ x).ravel() - x[self.parent_index]


def build_hierarchy(parent: Sequence[int | None] | np.ndarray) -> Hierarchy:
    """Hierarchy from the parent index of each target.

    Parameters
    ----------
    parent : sequence of int or None
        ``parent[i]`` is the index of target ``i``'s parent, or ``-1``/``None``.

    Returns
    -------
    Hierarchy

    Examples
    --------
    >>> h = build_hierarchy([-1, 0, 0, 1, 1])   # nation, 2 states, 2 districts of state 1
    >>> h.parent_index.tolist(), h.depth.tolist()
    ([0, 1], [0, 1, 1, 2, 2])
    >>> h.A.toarray().tolist()
    [[0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0]]
    """
    import scipy.sparse as sp

    par = np.array([-1 if p is None else p for p in parent], dtype=object)
    try:
        par = par.astype(np.int64)
    except (TypeError, ValueError):
        raise TypeError("parent must hold integer target indices or None") from None
    n = par.size
    if ((par < -1) | (par >= n)).any():
        bad = int(np.flatnonzero((par < -1) | (par >= n))[0])
        raise ValueError(f"parent[{bad}] = {par[bad]} is not a target index in [0, {n}) or -1")
    if (par == np.arange(n)).any():
        bad = int(np.flatnonzero(par == np.arange(n))[0])
        raise ValueError(f"parent[{bad}] points to itself; use -1 for a top-level target")
    depth = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        path = []
        j = i
        while j != -1 and depth[j] < 0:
            if j in path:
                raise ValueError(
                    f"parent has a cycle through target {j}; a hierarchy must be a tree"
                )
            path.append(j)
            j = int(par[j])
        base = -1 if j == -1 else int(depth[j])
        for k, node in enumerate(reversed(path)):
            depth[node] = base + 1 + k
    parents = np.unique(par[par >= 0])
    group_of = {int(p): g for g, p in enumerate(parents)}
    children = np.flatnonzero(par >= 0)
    rows = np.array([group_of[int(par[c])] for c in children], dtype=np.int64)
    A = sp.csr_matrix((np.ones(children.size), (rows, children)), shape=(parents.size, n))
    return Hierarchy(parent=par, depth=depth, A=A, parent_index=parents.astype(np.int64))


def hierarchy_from_geography(
    variables: Sequence[str],
    geographies: Sequence[str],
    geo_parent: Mapping[str, str | None],
) -> Hierarchy:
    """Hierarchy linking each target to the same variable one geographic level up.

    Parameters
    ----------
    variables : sequence of str
        Variable of each target (e.g. ``"population"``).
    geographies : sequence of str
        Geography of each target (e.g. ``"US"``, ``"CA"``, ``"CA-01"``).
    geo_parent : mapping
        Parent geography of each geography (``None`` or absent at the top).

    Returns
    -------
    Hierarchy

    Examples
    --------
    >>> h = hierarchy_from_geography(
    ...     ["pop", "pop", "pop", "income"], ["US", "CA", "NY", "US"], {"CA": "US", "NY": "US"})
    >>> h.parent.tolist()
    [-1, 0, 0, -1]
    """
    if len(variables) != len(geographies):
        raise ValueError(
            f"variables and geographies must have one entry per target, got {len(variables)} and {len(geographies)}"
        )
    index: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(variables, geographies, strict=True)):
        if key in index:
            raise ValueError(
                f"target {i} repeats (variable, geography) = {key}; each pair must be unique"
            )
        index[key] = i
    parent = []
    for var, geo in zip(variables, geographies, strict=True):
        up = geo_parent.get(geo)
        parent.append(index.get((var, up), -1) if up is not None else -1)
    return build_hierarchy(parent)


def reconcile_targets(targets: Any, hierarchy: Hierarchy) -> np.ndarray:
    """Scale children so they add up to their parent, top level first (proportional, top-down).

    A parent whose children add up to 0 has its value shared equally among
    them. The input is not modified.

    Parameters
    ----------
    targets : array-like
        One value per target of the hierarchy.
    hierarchy : Hierarchy

    Returns
    -------
    numpy.ndarray
        Reconciled targets: ``hierarchy.gaps(result)`` is 0 (up to round-off).

    Examples
    --------
    >>> h = build_hierarchy([-1, 0, 0])
    >>> reconcile_targets([10.0, 3.0, 2.0], h).tolist()
    [10.0, 6.0, 4.0]
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(
            f"hierarchy must be a Hierarchy (see build_hierarchy), got {type(hierarchy).__name__}"
        )
    t = np.array(targets, dtype=np.float64).reshape(-1)
    if t.size != hierarchy.n_targets:
        raise ValueError(
            f"targets must have length {hierarchy.n_targets} to match the hierarchy, got {t.size}"
        )
    if not np.isfinite(t).all():
        raise ValueError("targets contain NaN or infinite values; replace them first")
    A = hierarchy.A.tocsr()
    order = np.argsort(hierarchy.depth[hierarchy.parent_index], kind="stable")
    for g in order:
        kids = A.indices[A.indptr[g] : A.indptr[g + 1]]
        p = hierarchy.parent_index[g]
        s = t[kids].sum()
        if s != 0:
            t[kids] *= t[p] / s
        else:
            t[kids] = t[p] / kids.size
    return t


def hierarchy_penalty(
    estimates: Tensor,
    A: Any,
    parent_index: Any,
    parent_values: Tensor | None = None,
) -> Tensor:
    """Mean squared relative gap between each parent and the sum of its children (differentiable).

    ``gap_g = (sum_{c child of p_g} est_c - ref_g) / |ref_g|`` with
    ``ref = estimates[parent_index]`` (or ``parent_values``, e.g. the parent
    targets); the denominator carries no gradient.

    Parameters
    ----------
    estimates : Tensor
        One estimate per target (1-D).
    A : scipy.sparse matrix, torch tensor or l0_core.SparseOperator
        Aggregation matrix ``(n_groups, n_targets)`` (``Hierarchy.A``); pass
        ``SparseOperator.from_any(h.A)`` once to avoid converting each call.
    parent_index : array-like of int
        ``Hierarchy.parent_index``.
    parent_values : Tensor, optional
        Values the children should add up to, one per group.

    Returns
    -------
    Tensor
        Scalar (0 when there are no groups).

    Examples
    --------
    >>> h = build_hierarchy([-1, 0, 0])
    >>> est = torch.tensor([10.0, 4.0, 5.0], requires_grad=True)
    >>> round(hierarchy_penalty(est, h.A, h.parent_index).item(), 6)   # ((9 - 10) / 10)^2
    0.01
    """
    if not isinstance(estimates, Tensor) or estimates.dim() != 1:
        raise TypeError("estimates must be a 1-D torch.Tensor")
    op = SparseOperator.from_any(A, dtype=estimates.dtype, device=estimates.device, argument="A")
    if op.shape[1] != estimates.numel():
        raise ValueError(
            f"A has {op.shape[1]} columns but estimates has {estimates.numel()} entries; "
            "build A from the same list of targets"
        )
    idx = torch.as_tensor(np.asarray(parent_index, dtype=np.int64), device=estimates.device)
    if idx.numel() != op.shape[0]:
        raise ValueError(
            f"parent_index must have one entry per row of A ({op.shape[0]}), got {idx.numel()}"
        )
    if idx.numel() == 0:
        return estimates.sum() * 0
    sums = sparse_matvec(op, estimates)
    ref = estimates[idx] if parent_values is None else parent_values.to(estimates)
    if ref.shape != sums.shape:
        raise ValueError(f"parent_values must have {sums.numel()} entries, got {tuple(ref.shape)}")
    denom = ref.detach().abs().clamp_min(torch.finfo(estimates.dtype).tiny)
    gap = (sums - ref) / denom
    return (gap * gap).mean()


def consistency_report(
    values: Any, hierarchy: Hierarchy, names: Sequence[str] | None = None
) -> Any:
    """Table of parent values, children sums and gaps, one row per parent.

    Examples
    --------
    >>> consistency_report([10.0, 4.0, 5.0], build_hierarchy([-1, 0, 0]))["rel_gap"].tolist()
    [-0.1]
    """
    import pandas as pd

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    gaps = hierarchy.gaps(x)
    parents = x[hierarchy.parent_index]
    label = [str(names[i]) if names is not None else f"target_{i}" for i in hierarchy.parent_index]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(parents != 0, gaps / np.abs(parents), np.where(gaps == 0, 0.0, np.inf))
    return pd.DataFrame(
        {
            "parent": label,
            "parent_value": parents,
            "children_sum": parents + gaps,
            "gap": gaps,
            "rel_gap": rel,
            "n_children": np.diff(hierarchy.A.tocsr().indptr),
        }
    )
