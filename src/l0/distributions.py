"""l0-python 0.6 import path of :class:`HardConcrete` (now in :mod:`l0_core`).

``from l0.distributions import HardConcrete`` keeps working.

Examples
--------
>>> from l0.distributions import HardConcrete
>>> HardConcrete(3).l0_penalty().shape
torch.Size([])
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_core.hard_concrete")
