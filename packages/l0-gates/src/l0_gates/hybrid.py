"""``HybridGate``: a learned core of items plus a uniform random sample of the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from l0_core.checks import check_device, check_float, check_int, check_temperature
from torch import Tensor, nn

from ._data import as_index_output, resolve_seed, take_rows
from ._training import gate_generator
from .moments import _weights_or_ones
from .sample import SampleGate

__all__ = ["HybridGate"]


class HybridGate(nn.Module):
    """Combine a learned selection (:class:`SampleGate`) with uniform random sampling.

    :meth:`select` returns exactly ``round(target_items * l0_fraction)`` items
    chosen by a trained :class:`SampleGate` and
    ``round(target_items * random_fraction)`` items drawn uniformly without
    replacement from the remaining ones. The learned items are a take-all
    stratum and the random items a simple random sample of the rest, so the
    ``design_weights`` set by :meth:`select` (1 for a learned item, ``(n_items
    - n_l0) / n_random`` for a random one, times the items' own design
    weights) give unbiased (Horvitz-Thompson) totals.

    Parameters
    ----------
    n_items : int
        Number of items (rows of the data).
    l0_fraction : float, default 0.25
        Share of ``target_items`` chosen by the learned gate.
    random_fraction : float, default 0.75
        Share of ``target_items`` drawn at random; ``l0_fraction +
        random_fraction <= 1``.
    target_items : int, optional
        Total number of items to select; default ``max(1, int(0.2 *
        n_items))``.
    temperature : float, default 0.25
        Temperature of the learned gate.
    gate : str or type, default "hard_concrete"
        Registered gate type of the learned part.
    seed : int, optional
        Seed of the learned part and (unless ``select`` gets a
        ``random_seed``) of the random part.
    device : optional
        Device of the learned gate.

    Attributes
    ----------
    n_l0, n_random : int
        Sizes of the two parts.
    l0_gate : SampleGate or None
        The learned part (``None`` when ``n_l0 == 0``).
    design_weights : Tensor or None
        After :meth:`select`: float64 weights aligned with the returned
        indices, for unbiased estimates of totals.
    inclusion_probabilities : Tensor or None
        After :meth:`select`: each returned item's probability of selection
        given the learned part (1 for learned items).
    l0_indices, random_indices : Tensor or None
        After :meth:`select`: the two parts, sorted.

    Examples
    --------
    >>> import torch
    >>> data = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0))
    >>> hybrid = HybridGate(n_items=1000, l0_fraction=0.25, random_fraction=0.75,
    ...                     target_items=100, seed=0)
    >>> selected, indices, types = hybrid.select(data)
    >>> len(indices), int((types == "l0").sum()), int((types == "random").sum())
    (100, 25, 75)
    """

    def __init__(
        self,
        n_items: int,
        l0_fraction: float = 0.25,
        random_fraction: float = 0.75,
        target_items: int | None = None,
        temperature: float = 0.25,
        *,
        gate: str | type = "hard_concrete",
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        n = check_int(
            n_items,
            "n_items",
            min_val=1,
            hint="pass e.g. HybridGate(n_items=10000, target_items=1000)",
        )
        l0_fraction = check_float(l0_fraction, "l0_fraction", min_val=0.0, max_val=1.0)
        random_fraction = check_float(random_fraction, "random_fraction", min_val=0.0, max_val=1.0)
        if l0_fraction + random_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"l0_fraction + random_fraction must be at most 1, got {l0_fraction} + {random_fraction}"
                f" = {l0_fraction + random_fraction}; lower one of them"
            )
        if target_items is None:
            target_items = max(1, int(n * 0.2))
        target = check_int(
            target_items, "target_items", min_val=1, hint="pass e.g. target_items=1000"
        )
        if target > n:
            raise ValueError(f"target_items must be at most n_items={n}, got {target}")
        temperature = check_temperature(temperature, hint="pass e.g. 0.25")
        device = check_device(device)
        self.n_items = n
        self.l0_fraction = l0_fraction
        self.random_fraction = random_fraction
        self.target_items = target
        self.n_l0 = int(round(target * l0_fraction))
        self.n_random = int(round(target * random_fraction))
        if self.n_l0 + self.n_random > n:
            raise ValueError(
                f"round(target_items * l0_fraction) + round(target_items * random_fraction) = "
                f"{self.n_l0 + self.n_random} exceeds n_items={n}; lower target_items"
            )
        if self.n_l0 + self.n_random == 0:
            raise ValueError(
                f"target_items={target} with l0_fraction={l0_fraction} and random_fraction={random_fraction} "
                "selects no item; raise target_items or the fractions"
            )
        self.seed = resolve_seed(seed)
        self.l0_gate: SampleGate | None = (
            SampleGate(n, self.n_l0, temperature, gate=gate, seed=self.seed, device=device)
            if self.n_l0 > 0
            else None
        )
        self.design_weights: Tensor | None = None
        self.inclusion_probabilities: Tensor | None = None
        self.l0_indices: Tensor | None = None
        self.random_indices: Tensor | None = None

    def select(
        self, data: Any, random_seed: int | None = None, *, weights: Any = None
    ) -> tuple[Any, Any, np.ndarray]:
        """Select ``n_l0`` learned items and ``n_random`` random items of ``data``.

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(n_items, ...)`` rows.
        random_seed : int, optional
            Seed of the random part (default: derived from the gate's seed, so
            repeated calls give the same items).
        weights : array-like, optional
            Design weights of all items (default 1 each); the learned part is
            fitted to the weighted statistics and the design weights are
            multiplied by them.

        Returns
        -------
        selected
            Selected rows (same kind as ``data``), in index order.
        indices
            Sorted indices (LongTensor for tensor data, else numpy ``int64``).
        selection_type : ndarray of str
            ``"l0"`` or ``"random"`` for each returned item.

        Examples
        --------
        >>> import numpy as np
        >>> x = np.random.default_rng(0).lognormal(size=(300, 2))
        >>> h = HybridGate(300, 0.5, 0.5, target_items=40, seed=0)
        >>> sel, idx, types = h.select(x, random_seed=1)
        >>> bool((np.diff(idx) > 0).all()), sorted(set(types.tolist()))
        (True, ['l0', 'random'])
        """
        n_rows = data.shape[0] if hasattr(data, "shape") and len(data.shape) else None
        if n_rows != self.n_items:
            raise ValueError(
                f"data has {n_rows} rows but the gate was built for n_items={self.n_items}; "
                "build a HybridGate with n_items=len(data)"
            )
        rs = (
            self.seed + 1
            if random_seed is None
            else check_int(random_seed, "random_seed", min_val=0, hint="pass e.g. random_seed=0")
        )
        base = _weights_or_ones(weights, self.n_items, "weights")
        if self.l0_gate is not None:
            fitted = self.l0_gate._fitted_base
            if not self.l0_gate.is_fitted or fitted is None or not torch.equal(fitted, base):
                self.l0_gate.fit(data, weights)
            assert self.l0_gate.indices_ is not None
            l0_idx = self.l0_gate.indices_.cpu()
        else:
            l0_idx = torch.zeros(0, dtype=torch.long)
        rest = torch.ones(self.n_items, dtype=torch.bool)
        rest[l0_idx] = False
        pool = rest.nonzero().reshape(-1)
        perm = torch.randperm(pool.numel(), generator=gate_generator(rs, None))[: self.n_random]
        rand_idx = pool[perm].sort().values
        indices = torch.cat([l0_idx, rand_idx]).sort()
        order = indices.indices
        all_idx = indices.values
        is_l0 = torch.cat(
            [
                torch.ones(l0_idx.numel(), dtype=torch.bool),
                torch.zeros(rand_idx.numel(), dtype=torch.bool),
            ]
        )[order]
        prob_random = self.n_random / pool.numel() if pool.numel() else 1.0
        probs = torch.where(is_l0, torch.ones(()), torch.full((), prob_random)).to(torch.float64)
        self.inclusion_probabilities = probs
        self.design_weights = base[all_idx] / probs
        self.l0_indices = l0_idx
        self.random_indices = rand_idx
        types = np.where(is_l0.numpy(), "l0", "random").astype("<U6")
        return take_rows(data, all_idx), as_index_output(all_idx, data), types

    def estimate_total(self, values: Any) -> Tensor:
        """Unbiased estimate of ``sum(weights * values)`` over all items from the last selection.

        Parameters
        ----------
        values : array-like
            ``(n_items, ...)`` values of every item (only the selected ones
            are read) or ``(n_selected, ...)`` values of the selected items.

        Returns
        -------
        Tensor
            float64 estimate(s) of the total(s).

        Examples
        --------
        >>> import torch
        >>> x = torch.arange(100.0)
        >>> h = HybridGate(100, 0.0, 1.0, target_items=100, seed=0)
        >>> _ = h.select(x)
        >>> h.estimate_total(x).item()
        4950.0
        """
        if self.design_weights is None or self.l0_indices is None or self.random_indices is None:
            raise RuntimeError("estimate_total needs a selection: call select(data) first")
        v = torch.as_tensor(
            np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values),
            dtype=torch.float64,
        )
        n_sel = self.design_weights.numel()
        if v.shape[0] == self.n_items:
            idx = torch.cat([self.l0_indices, self.random_indices]).sort().values
            v = v[idx]
        elif v.shape[0] != n_sel:
            raise ValueError(
                f"values must have {self.n_items} (all items) or {n_sel} (selected items) rows, got {v.shape[0]}"
            )
        return torch.tensordot(self.design_weights, v, dims=1)

    def get_penalty(self) -> Tensor:
        """L0 penalty of the learned part (0 when there is none).

        Examples
        --------
        >>> HybridGate(100, 0.5, 0.5, target_items=20, seed=0).get_penalty().item() > 0
        True
        """
        if self.l0_gate is None:
            return torch.zeros(())
        return self.l0_gate.get_penalty()

    def extra_repr(self) -> str:
        return (
            f"n_items={self.n_items}, n_l0={self.n_l0}, n_random={self.n_random}, seed={self.seed}"
        )
