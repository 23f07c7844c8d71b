"""An example third-party l0 plugin.

It adds the gate type ``"straight_through"`` (:class:`StraightThroughGate`)
and the temperature schedule ``"plateau_cosine"`` (:func:`plateau_cosine`).
Once the package is installed, every l0 package finds both by name through
the ``l0`` entry point declared in ``pyproject.toml``; nothing needs to be
imported by hand.

Examples
--------
>>> from l0_core import make_gate
>>> gate = make_gate("straight_through", 8, init_prob_active=0.9)
>>> type(gate).__name__
'StraightThroughGate'
"""

from .gate import StraightThroughGate
from .schedule import plateau_cosine

__version__ = "0.1.0"

__all__ = ["StraightThroughGate", "__version__", "plateau_cosine"]
