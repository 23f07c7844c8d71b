"""L0 layers (re-exported from :mod:`l0_nn`).

l0-python 0.6 code such as ``from l0.layers import L0Linear, prune_model``
keeps working.

Examples
--------
>>> import l0.layers
>>> set(l0.layers.__all__) <= set(__import__("l0_nn").__all__)
True
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_nn")
