"""l0: L0 regularization with Hard Concrete gates for PyTorch.

This is the facade of the ``l0-python`` distribution: it re-exports the
public API of l0-core, l0-nn, l0-gates and l0-calibrate, so
``from l0 import HardConcrete, L0Linear, SampleGate, SparseCalibrationWeights``
works once ``pip install l0-python`` has installed them all.

Examples
--------
>>> from l0 import HardConcrete, TemperatureScheduler
>>> HardConcrete(n_items=10, temperature=0.25, init_mean=0.999)().shape
torch.Size([10])
"""

from __future__ import annotations

import importlib

_SUBPACKAGES = ("l0_core", "l0_nn", "l0_gates", "l0_calibrate")

__all__: list[str] = []
for _name in _SUBPACKAGES:
    _mod = importlib.import_module(_name)
    for _attr in getattr(_mod, "__all__", ()):
        if _attr.startswith("__"):
            continue
        globals()[_attr] = getattr(_mod, _attr)
        if _attr not in __all__:
            __all__.append(_attr)

__version__ = "1.0.0"
del _name, _mod
