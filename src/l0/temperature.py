"""``l0.temperature``: the schedule of :mod:`l0.penalties` (0.6.2's meaning) and l0-core's helpers.

Examples
--------
>>> from l0.temperature import TemperatureScheduler
>>> TemperatureScheduler(initial_temp=1.0, final_temp=0.1, total_epochs=100).get_temperature(0)
1.0
"""

from l0_core.temperature import BUILTIN_SCHEDULES, ScheduleFn, get_schedule

from .penalties import TemperatureScheduler, update_temperatures

__all__ = [
    "BUILTIN_SCHEDULES",
    "ScheduleFn",
    "TemperatureScheduler",
    "get_schedule",
    "update_temperatures",
]
