"""Callbacks for calibration fits, and the dispatch to the ``l0_calibration_log`` plugin hook.

At every logging step (every ``log_freq`` epochs and at the last epoch) a fit
builds one *event* dict and hands it to the plugin hook
``l0_calibration_log(event=...)`` and then to each callback of
``callbacks=``. A callback is any callable ``cb(event)``; returning ``True``
stops the fit after that step (the model keeps the state it has then).

Event keys: ``epoch`` (epochs completed), ``phase`` (``"train"`` or
``"refit"``), ``loss``, ``data_loss``, ``l0_loss``, ``l2_loss``,
``penalty_loss`` (the extra weight penalties), ``mean_rel_error``,
``max_rel_error`` (``|estimate - target| / (|target| + 1)`` over the
calibrated targets, deterministic gates), ``n_active``, ``beta``,
``elapsed_s``, ``weights`` (detached tensor of the deterministic weights) and
``model`` (the :class:`~l0_calibrate.SparseCalibrationWeights`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "dispatch_event"]

logger = logging.getLogger(__name__)

Callback = Callable[[dict], Any]


def dispatch_event(event: dict, callbacks: Iterable[Callback] = ()) -> bool:
    """Call the plugin hook, then each callback; True when one asks to stop.

    Examples
    --------
    >>> dispatch_event({"epoch": 1}, [lambda e: e["epoch"] >= 1])
    True
    """
    from l0_core import get_plugin_manager

    get_plugin_manager().hook.l0_calibration_log(event=event)
    stop = False
    for cb in callbacks:
        if cb(event) is True:
            stop = True
    return stop


class EarlyStopping:
    """Stop when a monitored value is good enough or has stopped improving.

    Parameters
    ----------
    monitor : str, default "mean_rel_error"
        Event key to watch (lower is better).
    threshold : float, optional
        Stop as soon as the value is ``<= threshold``.
    patience : int, optional
        Stop after this many logging steps without an improvement larger
        than ``min_delta``.
    min_delta : float, default 0.0
        Smallest decrease that counts as an improvement.

    Examples
    --------
    >>> stop = EarlyStopping(threshold=0.01)
    >>> stop({"mean_rel_error": 0.5}), stop({"mean_rel_error": 0.005})
    (False, True)
    """

    def __init__(
        self,
        monitor: str = "mean_rel_error",
        threshold: float | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
    ) -> None:
        if threshold is None and patience is None:
            raise ValueError("EarlyStopping needs a threshold, a patience, or both")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        self.monitor = monitor
        self.threshold = threshold
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.bad_steps = 0
        self.stopped_epoch: int | None = None

    def __call__(self, event: dict) -> bool:
        if self.monitor not in event:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which the event lacks; keys: {sorted(event)}")
        value = float(event[self.monitor])
        stop = False
        if self.threshold is not None and value <= self.threshold:
            stop = True
        if value < self.best - self.min_delta:
            self.best = value
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            if self.patience is not None and self.bad_steps >= self.patience:
                stop = True
        if stop:
            self.stopped_epoch = event.get("epoch")
        return stop


class Checkpoint:
    """Save ``model.state_dict()`` (optimiser and RNG state included) during a fit.

    Parameters
    ----------
    path : str or os.PathLike
        File to write; may contain ``{epoch}`` to keep one file per save.
    every : int, optional
        Save at logging steps whose epoch is a multiple of ``every``
        (default: every logging step).

    Examples
    --------
    >>> import tempfile, os
    >>> ckpt = Checkpoint(os.path.join(tempfile.mkdtemp(), "w-{epoch}.pt"), every=500)
    >>> ckpt.every
    500
    """

    def __init__(self, path: str | os.PathLike, every: int | None = None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.path = os.fspath(path)
        self.every = every
        self.saved: list[str] = []

    def __call__(self, event: dict) -> None:
        import torch

        epoch = int(event["epoch"])
        if self.every is not None and epoch % self.every:
            return None
        path = self.path.format(epoch=epoch)
        torch.save(event["model"].state_dict(), path)
        self.saved.append(path)
        logger.debug("checkpoint written to %s at epoch %d", path, epoch)
        return None
