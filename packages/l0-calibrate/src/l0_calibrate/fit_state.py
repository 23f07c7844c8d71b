"""The training state a :class:`~l0_calibrate.SparseCalibrationWeights` carries between ``fit`` calls.

Everything a later ``fit`` continues from lives in one :class:`FitState`:
the Adam optimiser, the target-count controller and its warm-up schedule,
the temperature schedule, the epoch counter and the logged history. The
fit loop (:mod:`l0_calibrate.fitting`) reads and writes it; the model saves
it inside ``state_dict()`` (:meth:`FitState.as_dict`, serialised with
:func:`pack_fit_state`) so that a resumed fit is bit-identical on CPU.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from l0_core import TargetSparsityController, get_schedule
from torch import Tensor

__all__ = ["STATE_FORMAT", "FitState", "pack_fit_state", "unpack_fit_state"]

#: The ``format`` field a model writes into ``state_dict()["_extra_state"]`` (the checkpoint version).
STATE_FORMAT = 1


def pack_fit_state(state: dict[str, Any]) -> Tensor:
    """Serialise a fit-state dict into a ``uint8`` tensor (``torch.save`` bytes).

    Examples
    --------
    >>> t = pack_fit_state({"epoch": 3}); t.dtype, unpack_fit_state(t)
    (torch.uint8, {'epoch': 3})
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def unpack_fit_state(state: Any, source: str | None = None) -> Any:
    """Inverse of :func:`pack_fit_state` (read with ``weights_only=True``); a dict passes through.

    With ``source`` (e.g. the checkpoint file's name), unreadable bytes raise
    a ``ValueError`` naming it instead of torch's own error.

    Examples
    --------
    >>> unpack_fit_state({"epoch": 1})
    {'epoch': 1}
    """
    if not (isinstance(state, Tensor) and state.dtype == torch.uint8 and state.dim() == 1):
        return state
    raw = state.detach().cpu().numpy().tobytes()
    if source is None:
        return torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    try:
        return torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means unreadable bytes
        raise ValueError(
            f"{source}: its fit state ('_extra_state') cannot be read ({type(exc).__name__}); the "
            "file is corrupt: load an earlier checkpoint"
        ) from None


@dataclass
class FitState:
    """What one ``fit`` call hands to the next (and ``state_dict()`` saves).

    Attributes
    ----------
    epoch : int
        Training epochs run so far, over all ``fit`` calls.
    jittered : bool
        Whether the first fit's ``log_weight`` jitter was applied.
    optimizer : torch.optim.Optimizer or None
        Adam over ``(log_weight, log_alpha)``; None until the first fit (or
        after ``reset_optimizer``).
    pending_optimizer : dict or None
        A loaded optimiser state, applied when the next fit builds Adam.
    controller : TargetSparsityController or None
        The ``target_count`` controller of the last fit.
    pending_controller : dict or None
        A loaded controller state, applied by the next fit.
    count_schedule : dict or None
        The controller's warm-up (``target``, ``from``, ``start``, ``total``, ``scale``).
    schedule : dict or None
        The temperature schedule (``name``, ``initial``, ``final``, ``total``, ``start``).
    schedule_fn : callable or None
        That schedule's function (not saved; looked up by name on resume).
    history : list of dict
        One entry per logging step of every fit.

    Examples
    --------
    >>> state = FitState()
    >>> state.epoch, state.beta_at(0, 0.5)
    (0, 0.5)
    """

    epoch: int = 0
    jittered: bool = False
    optimizer: torch.optim.Optimizer | None = None
    pending_optimizer: dict[str, Any] | None = None
    controller: TargetSparsityController | None = None
    pending_controller: dict[str, Any] | None = None
    count_schedule: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    schedule_fn: Callable[[float, float, float], float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------ saving
    def as_dict(self, beta: float, generator: torch.Generator) -> dict[str, Any]:
        """The saved form (``torch.load(weights_only=True)`` reads it back), with the model's
        temperature and random generator.

        Examples
        --------
        >>> sorted(FitState().as_dict(0.5, torch.Generator()))[:3]
        ['beta', 'controller', 'epoch']
        """
        ctl = self.controller
        if ctl is not None:
            controller: dict[str, Any] | None = {
                "lr": ctl.lr,
                "lambda1": ctl.lambda1.clone(),
                "lambda2": ctl.lambda2.clone(),
                "schedule": dict(self.count_schedule or {}),
            }
        else:  # loaded and not fitted since: save what was loaded
            controller = self.pending_controller
        optimizer = self.optimizer.state_dict() if self.optimizer is not None else self.pending_optimizer
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "jittered": self.jittered,
            "beta": beta,
            "generator": generator.get_state(),
            "optimizer": optimizer,
            "schedule": None if self.schedule is None else dict(self.schedule),
            "controller": controller,
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, state: Any) -> FitState:
        """The state saved by :meth:`as_dict` (optimiser and controller pending until the next fit).

        Raises ``ValueError`` for a state another version wrote.

        Examples
        --------
        >>> saved = FitState(epoch=4).as_dict(0.5, torch.Generator())
        >>> FitState.from_dict(saved).epoch
        4
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "the state_dict's fit state was not written by this version of l0-calibrate"
            )
        controller = state["controller"]
        return cls(
            epoch=int(state["epoch"]),
            jittered=bool(state["jittered"]),
            pending_optimizer=state["optimizer"],
            pending_controller=controller,
            count_schedule=None if controller is None else dict(controller["schedule"]),
            schedule=None if state["schedule"] is None else dict(state["schedule"]),
            history=[dict(h) for h in state.get("history", [])],
        )

    def forget_optimizer(self) -> None:
        """Drop Adam's state (and any loaded one): the next fit starts the optimiser afresh.

        Examples
        --------
        >>> FitState().forget_optimizer()
        """
        self.optimizer = None
        self.pending_optimizer = None

    # --------------------------------------------------------- schedules
    def beta_at(self, epoch: int, beta: float) -> float:
        """The temperature at ``epoch`` under the schedule (``beta`` when there is none).

        Examples
        --------
        >>> s = FitState(schedule={"name": "linear", "initial": 1.0, "final": 0.5, "total": 3, "start": 0})
        >>> [s.beta_at(e, 1.0) for e in range(3)]
        [1.0, 0.75, 0.5]
        """
        sched = self.schedule
        if sched is None:
            return beta
        fn = self.schedule_fn
        if fn is None:
            if sched["name"] is None:
                raise ValueError(
                    "this model was checkpointed with a temperature_schedule given as a function; "
                    "pass the same function again as temperature_schedule= to continue it"
                )
            fn = self.schedule_fn = get_schedule(sched["name"])
        total = sched["total"]
        progress = 1.0 if total <= 1 else min(1.0, (epoch - sched["start"]) / (total - 1))
        if progress <= 0.0:
            return float(sched["initial"])
        if progress >= 1.0:
            return float(sched["final"])
        value = fn(progress, sched["initial"], sched["final"])
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"temperature_schedule returned {value!r} (a {type(value).__name__}) at epoch "
                f"{epoch}; it must return the temperature as a positive finite number"
            ) from None
        if not (math.isfinite(out) and out > 0):
            raise ValueError(
                f"temperature_schedule returned {out!r} at epoch {epoch} (progress {progress:.4g}, "
                f"from {sched['initial']:g} to {sched['final']:g}); the temperature must be a "
                "positive finite number: fix the schedule function"
            )
        return out

    def count_target(self, epoch: int, n_total: int) -> int:
        """The controller's target at ``epoch``: geometric from the starting count to the target.

        Examples
        --------
        >>> s = FitState(count_schedule={"target": 10, "from": 1000.0, "start": 0, "total": 2, "scale": None})
        >>> [s.count_target(e, 2000) for e in range(3)]
        [1000, 100, 10]
        """
        sched = self.count_schedule
        if sched is None:
            raise ValueError("no target_count schedule: the fit was not given target_count")
        n_final = sched["target"]
        total = sched["total"]
        progress = 1.0 if total <= 0 else min(1.0, (epoch - sched["start"]) / total)
        start = max(sched["from"], n_final)
        return max(1, min(n_total, int(round(start * (n_final / start) ** progress))))
