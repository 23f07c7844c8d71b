"""Temperature schedules for Hard Concrete gates."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from .checks import check_float, check_int, renamed_keywords
from .gate import is_gate, set_gate_temperature
from .plugins import lookup

__all__ = [
    "BUILTIN_SCHEDULES",
    "ScheduleFn",
    "TemperatureScheduler",
    "get_schedule",
    "update_temperatures",
]

ScheduleFn = Callable[[float, float, float], float]


def _constant(progress: float, initial: float, final: float) -> float:
    return initial


def _linear(progress: float, initial: float, final: float) -> float:
    return initial + (final - initial) * progress


def _exponential(progress: float, initial: float, final: float) -> float:
    if progress >= 1.0:
        return final
    return initial * (final / initial) ** progress


def _cosine(progress: float, initial: float, final: float) -> float:
    if progress >= 1.0:
        return final
    return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: The schedules l0-core registers (through the same hook as plugins).
BUILTIN_SCHEDULES: dict[str, ScheduleFn] = {
    "constant": _constant,
    "linear": _linear,
    "exponential": _exponential,
    "cosine": _cosine,
}


def get_schedule(schedule: str | ScheduleFn) -> ScheduleFn:
    """Return a schedule function given its registered name (or a callable).

    Parameters
    ----------
    schedule : str or callable
        A name registered through ``l0_register_schedules`` (built-ins:
        ``constant``, ``linear``, ``exponential``, ``cosine``) or a function
        ``(progress, initial, final) -> temperature``.

    Examples
    --------
    >>> get_schedule("cosine")(0.0, 1.0, 0.1)
    1.0
    """
    if callable(schedule):
        return schedule
    return lookup("schedules", schedule, argument="schedule")


class TemperatureScheduler:
    """Anneal the gate temperature from ``initial_temperature`` to ``final_temperature``.

    Parameters
    ----------
    initial_temperature : float, default 1.0
        Temperature at epoch 0.
    final_temperature : float, default 0.1
        Temperature from epoch ``total_epochs - 1`` on (so a loop over
        ``range(total_epochs)`` ends exactly at ``final_temperature``), and
        constant after.
    total_epochs : int, default 100
        Length of the schedule.
    schedule : str or callable, default "exponential"
        Registered schedule name (plugins included) or a function
        ``(progress in [0, 1], initial, final) -> temperature``.
    anneal_epochs : int, optional
        Deprecated, l0-python 0.6's length: the final temperature is reached
        at epoch ``anneal_epochs``, i.e. ``total_epochs = anneal_epochs + 1``
        (translated, with a ``DeprecationWarning``).
    initial_temp, final_temp : float, optional
        Deprecated spellings of ``initial_temperature`` and
        ``final_temperature`` (a ``DeprecationWarning``; passing both
        spellings of one raises ``TypeError``). The attributes
        ``initial_temp`` and ``final_temp`` stay readable (the ``l0``
        facade's l0-python 0.6.2 scheduler uses them).

    Examples
    --------
    >>> s = TemperatureScheduler(initial_temperature=1.0, final_temperature=0.1, total_epochs=100)
    >>> s.get_temperature(0), round(s.get_temperature(99), 10), s.get_temperature(500)
    (1.0, 0.1, 0.1)
    """

    @renamed_keywords(initial_temp="initial_temperature", final_temp="final_temperature")
    def __init__(
        self,
        initial_temperature: float = 1.0,
        final_temperature: float = 0.1,
        total_epochs: int = 100,
        schedule: str | ScheduleFn = "exponential",
        *,
        anneal_epochs: int | None = None,
    ) -> None:
        if anneal_epochs is not None:
            if total_epochs != 100:
                raise TypeError(
                    "pass total_epochs or anneal_epochs (l0-python 0.6's name), not both; "
                    "total_epochs = anneal_epochs + 1"
                )
            anneal_epochs = check_int(anneal_epochs, "anneal_epochs", min_val=0, hint="e.g. 100")
            total_epochs = anneal_epochs + 1
            warnings.warn(
                f"TemperatureScheduler(anneal_epochs={anneal_epochs}) is deprecated; use "
                f"total_epochs={total_epochs} (the final temperature at epoch total_epochs - 1)",
                DeprecationWarning,
                stacklevel=3,  # __init__ <- its renamed_keywords wrapper <- the caller
            )
        self.initial_temperature = check_float(
            initial_temperature,
            "initial_temperature",
            min_val=0.0,
            include_boundaries="neither",
            hint="e.g. 1.0",
        )
        self.final_temperature = check_float(
            final_temperature,
            "final_temperature",
            min_val=0.0,
            include_boundaries="neither",
            hint="e.g. 0.1",
        )
        self.total_epochs = check_int(total_epochs, "total_epochs", min_val=1, hint="e.g. 100")
        if not isinstance(schedule, str) and not callable(schedule):
            raise TypeError(
                f"schedule must be a registered schedule name or a function "
                f"(progress, initial, final) -> temperature, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self._fn = get_schedule(schedule)

    @property
    def initial_temp(self) -> float:
        """``initial_temperature`` under its l0-python 0.6.2 name.

        Examples
        --------
        >>> TemperatureScheduler(initial_temperature=2.0).initial_temp
        2.0
        """
        return self.initial_temperature

    @initial_temp.setter
    def initial_temp(self, value: float) -> None:
        self.initial_temperature = value

    @property
    def final_temp(self) -> float:
        """``final_temperature`` under its l0-python 0.6.2 name.

        Examples
        --------
        >>> TemperatureScheduler(final_temperature=0.2).final_temp
        0.2
        """
        return self.final_temperature

    @final_temp.setter
    def final_temp(self, value: float) -> None:
        self.final_temperature = value

    def progress(self, epoch: int) -> float:
        """Fraction of the schedule done at ``epoch``, in ``[0, 1]``.

        Examples
        --------
        >>> TemperatureScheduler(total_epochs=11).progress(5)
        0.5
        """
        epoch = check_int(epoch, "epoch", min_val=0)
        if self.total_epochs == 1:
            return 1.0
        return min(1.0, epoch / (self.total_epochs - 1))

    def get_temperature(self, epoch: int) -> float:
        """Temperature at ``epoch`` (exact end points, constant after the end).

        Examples
        --------
        >>> TemperatureScheduler(1.0, 0.5, 3, schedule="linear").get_temperature(1)
        0.75
        """
        p = self.progress(epoch)
        if p <= 0.0:
            return self.initial_temperature
        if p >= 1.0:
            return self.final_temperature
        value = self._fn(p, self.initial_temperature, self.final_temperature)
        try:
            temp = float(value)
        except (TypeError, ValueError):
            temp = math.nan
        if not (math.isfinite(temp) and temp > 0):
            raise ValueError(
                f"temperature schedule {self.schedule!r} returned {value!r} at epoch {epoch} "
                f"(progress {p:.4g}); a schedule must return a positive finite temperature"
            )
        return temp

    def __repr__(self) -> str:
        return (
            f"TemperatureScheduler(initial_temperature={self.initial_temperature}, "
            f"final_temperature={self.final_temperature}, total_epochs={self.total_epochs}, "
            f"schedule={self.schedule!r})"
        )


def update_temperatures(
    model: torch.nn.Module, temp: float | None = None, *, temperature: float | None = None
) -> int:
    """Set the temperature of every gate inside ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; gates are found through the :class:`~l0_core.Gate`
        protocol (nested gates included).
    temp : float
        New temperature (> 0).
    temperature : float, optional
        Deprecated: l0-python 0.6's name of ``temp`` (same meaning; warns).

    Returns
    -------
    int
        Number of gates updated.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> model = torch.nn.ModuleList([HardConcrete(3), HardConcrete(2)])
    >>> update_temperatures(model, 0.2)
    2
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network (or gate) whose gates should change temperature"
        )
    if temperature is not None:
        if temp is not None:
            raise TypeError("pass temp or temperature (its l0-python 0.6 name), not both")
        warnings.warn(
            "update_temperatures(..., temperature=...) is deprecated; use "
            "update_temperatures(model, temp) (same meaning)",
            DeprecationWarning,
            stacklevel=2,
        )
        temp = temperature
    if temp is None:
        raise TypeError("update_temperatures() needs the new temperature, e.g. (model, 0.1)")
    gates = [m for m in model.modules() if is_gate(m)]
    for gate in gates:
        set_gate_temperature(gate, temp)
    return len(gates)
