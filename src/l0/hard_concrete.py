"""The Hard Concrete distribution (re-exported from :mod:`l0_core.hard_concrete`).

Examples
--------
>>> from l0.hard_concrete import HardConcrete
>>> HardConcrete(n_items=4, temperature=0.25, init_mean=0.999)().shape
torch.Size([4])
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_core.hard_concrete")
