"""Selection gates (re-exported from :mod:`l0_gates`).

l0-python 0.6 code such as ``from l0.gates import SampleGate, FeatureGate``
keeps working; ``HardConcrete`` is importable from here as it was.

Examples
--------
>>> from l0.gates import HardConcrete
>>> HardConcrete(2).shape
torch.Size([2])
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_gates", ("l0_core", ["HardConcrete"]))
