"""Penalties and the penalty tracker (re-exported from :mod:`l0_core.penalties`).

As in l0-python 0.6, ``TemperatureScheduler`` and ``update_temperatures`` can
also be imported from here.

Examples
--------
>>> from l0.penalties import compute_l0l2_penalty, TemperatureScheduler
>>> from l0 import HardConcrete
>>> round(compute_l0l2_penalty(HardConcrete(10, init_std=0.0), l0_lambda=1.0).item(), 3)
5.0
"""

from ._compat import reexport

__all__ = reexport(
    globals(),
    "l0_core.penalties",
    ("l0_core.temperature", ["TemperatureScheduler", "update_temperatures"]),
)
