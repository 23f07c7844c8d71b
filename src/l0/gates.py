"""``l0.gates``: selection gates (l0-gates) with l0-python 0.6.2's return conventions.

``L0Gate``, ``SampleGate``, ``FeatureGate`` and ``HybridGate`` are
:mod:`l0_gates`'s classes (same constructors as 0.6.2, plus ``seed=`` and
friends), with two 0.6.2 conventions restored here: ``gate.temperature`` reads
back exactly the float that was set, and ``select_weighted_samples`` returns
only rows with a positive weight. ``HardConcrete`` is
:class:`l0.distributions.HardConcrete`, as in 0.6.2.

Examples
--------
>>> from l0.gates import L0Gate
>>> gate = L0Gate(100, temperature=0.3, init_mean=0.7)
>>> gate.temperature
0.3
"""

from __future__ import annotations

import math
from typing import Any

import l0_gates
import numpy as np
import torch

from ._compat import reexport
from .distributions import HardConcrete

__all__ = ["FeatureGate", "HardConcrete", "HybridGate", "L0Gate", "SampleGate"]


class _ExactTemperature:
    """``temperature`` reads back the float last set (the gate stores it in its dtype)."""

    _exact_temperature: float | None = None

    @property
    def temperature(self) -> float:
        stored = super().temperature  # type: ignore[misc]
        exact = self._exact_temperature
        if exact is not None and np.float32(exact) == np.float32(stored):
            return exact
        return stored

    def set_temperature(self, temperature: float) -> None:
        super().set_temperature(temperature)  # type: ignore[misc]
        self._exact_temperature = float(temperature)


def _remember(gate: Any, temperature: Any) -> None:
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        gate._exact_temperature = float(temperature)


class L0Gate(_ExactTemperature, l0_gates.L0Gate):
    """:class:`l0_gates.L0Gate` with 0.6.2's ``init_mean`` (the logit mean) and exact temperature.

    The gates start with ``logits = log(init_mean / (1 - init_mean))`` (plus
    l0-gates' small jitter), as in 0.6.2; l0-gates' own ``L0Gate`` takes the
    open probability, ``init_prob_active``, instead (there ``init_mean`` is
    deprecated, with this meaning).

    Examples
    --------
    >>> g = L0Gate(10, temperature=0.3); g.set_temperature(0.7); g.temperature
    0.7
    """

    def __init__(self, size: int, temperature: float = 0.5, init_mean: float = 0.5, **kw: Any):
        # 0.6.2's init_mean is the logit mean (logits = logit(init_mean)); l0-gates takes
        # the probability that a gate is open, so pass the probability those logits give.
        if not (isinstance(init_mean, float | int) and 0 < init_mean < 1):
            # l0-gates rejects the bad value with a message naming init_mean
            super().__init__(size, temperature, init_mean=init_mean, **kw)
        try:
            shift = float(temperature) * math.log(0.1 / 1.1)
        except (TypeError, ValueError):  # l0-gates rejects the temperature first
            shift = 0.0
        logit = math.log(init_mean) - math.log1p(-init_mean)
        prob = min(1.0 / (1.0 + math.exp(-(logit - shift))), 1.0 - 1e-9)
        super().__init__(size, temperature, prob, **kw)
        self.init_mean = float(init_mean)
        _remember(self, temperature)


class SampleGate(_ExactTemperature, l0_gates.SampleGate):
    """:class:`l0_gates.SampleGate`; ``select_weighted_samples`` keeps positive weights only.

    Examples
    --------
    >>> x = torch.rand(200, 2, generator=torch.Generator().manual_seed(0))
    >>> sel, w, idx = SampleGate(200, 20, seed=0).select_weighted_samples(x, torch.rand(200))
    >>> bool((w > 0).all()), len(w) == len(idx) == len(sel)
    (True, True)
    """

    def __init__(
        self, n_samples: int, target_samples: int, temperature: float = 0.25, **kw: Any
    ) -> None:
        super().__init__(n_samples, target_samples, temperature, **kw)
        _remember(self, temperature)
        # 0.6.2's attribute: the mean it passed on to L0Gate (target_samples / n_samples).
        self.init_mean = target_samples / n_samples

    def select_weighted_samples(self, data: Any, weights: Any = None) -> tuple[Any, Any, Any]:
        """Selected rows, their (positive) weights and their indices (0.6.2: weight > 0)."""
        selected, w, indices = super().select_weighted_samples(data, weights)
        values = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        keep = values > 0
        if keep.all():
            return selected, w, indices
        return _rows(selected, keep), _rows(w, keep), _rows(indices, keep)


def _rows(obj: Any, keep: np.ndarray) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[torch.as_tensor(keep, device=obj.device)]
    if hasattr(obj, "iloc"):
        return obj.iloc[keep]
    return obj[keep]


class FeatureGate(_ExactTemperature, l0_gates.FeatureGate):
    """:class:`l0_gates.FeatureGate` whose ``temperature`` reads back exactly.

    Examples
    --------
    >>> FeatureGate(n_features=100, max_features=10, temperature=0.1).temperature
    0.1
    """

    def __init__(
        self, n_features: int, max_features: int, temperature: float = 0.1, **kw: Any
    ) -> None:
        super().__init__(n_features, max_features, temperature, **kw)
        _remember(self, temperature)
        # 0.6.2's attribute: the mean it passed on to L0Gate.
        self.init_mean = min(max_features / n_features, 0.99)


HybridGate = l0_gates.HybridGate

# Everything else of l0-gates (MomentTargets, rake_weights, ...) stays importable from here.
_extra = [n for n in reexport({}, "l0_gates") if n not in __all__]
for _name in _extra:
    globals()[_name] = getattr(l0_gates, _name)
__all__ += _extra
del _name
