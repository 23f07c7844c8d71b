"""Temperature schedules (re-exported from :mod:`l0_core.temperature`).

Examples
--------
>>> from l0.temperature import TemperatureScheduler
>>> TemperatureScheduler(initial_temp=1.0, final_temp=0.1, total_epochs=100).get_temperature(0)
1.0
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_core.temperature")
