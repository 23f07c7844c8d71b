"""l0: L0 regularization with Hard Concrete gates for PyTorch.

This is the facade of the ``l0-python`` distribution. Every name that
l0-python 0.6.2 published keeps its 0.6.2 meaning here and at its 0.6 module
path (``l0.distributions``, ``l0.layers``, ``l0.penalties``, ``l0.gates``,
``l0.sparse``, ``l0.calibration``): constructors, defaults, attributes and
numbers. Everything else of l0-core, l0-nn, l0-gates and l0-calibrate is
re-exported unchanged, so ``from l0 import SparseOperator, calibrate`` works
too. The project's own, newer API lives in those packages
(``from l0_core import HardConcrete`` etc.); see docs/migrating.md for the
differences.

Examples
--------
>>> import l0
>>> gates = l0.HardConcrete(10, temperature=0.25, init_mean=0.999)
>>> gates().shape, round(gates.get_penalty().item(), 2)
(torch.Size([10]), 9.99)
>>> l0.calibration.SparseCalibrationWeights is l0.SparseCalibrationWeights
True
"""

from __future__ import annotations

import importlib

from . import (  # noqa: F401  (this project's extra paths)
    calibration,
    distributions,
    gates,
    hard_concrete,
    layers,
    penalties,
    sparse,
    temperature,
)

_SUBPACKAGES = ("l0_core", "l0_nn", "l0_gates", "l0_calibrate")

#: The 0.6.2 names, each from the facade module that keeps its 0.6.2 meaning.
PUBLISHED_API: dict[str, str] = {
    "HardConcrete": "distributions",
    "L0Linear": "layers",
    "L0Conv2d": "layers",
    "L0DepthwiseConv2d": "layers",
    "SparseMLP": "layers",
    "prune_model": "layers",
    "SparseL0Linear": "sparse",
    "SparseCalibrationWeights": "calibration",
    "L0Gate": "gates",
    "SampleGate": "gates",
    "FeatureGate": "gates",
    "HybridGate": "gates",
    "compute_l0_penalty": "penalties",
    "compute_l2_penalty": "penalties",
    "compute_l0l2_penalty": "penalties",
    "get_sparsity_stats": "penalties",
    "get_active_parameter_count": "penalties",
    "TemperatureScheduler": "penalties",
    "update_temperatures": "penalties",
    "PenaltyTracker": "penalties",
}

__all__: list[str] = list(PUBLISHED_API)
for _name in _SUBPACKAGES:
    _mod = importlib.import_module(_name)
    for _attr in getattr(_mod, "__all__", ()):
        if _attr.startswith("__") or _attr in PUBLISHED_API:
            continue
        globals()[_attr] = getattr(_mod, _attr)
        if _attr not in __all__:
            __all__.append(_attr)
for _attr, _module in PUBLISHED_API.items():
    globals()[_attr] = getattr(globals()[_module], _attr)
__all__ += ["calibration", "distributions", "gates", "layers", "penalties", "sparse"]

__version__ = "1.0.0"
del _name, _mod, _attr, _module
