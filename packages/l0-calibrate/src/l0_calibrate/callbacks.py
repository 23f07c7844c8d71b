"""Callbacks for calibration fits, and the dispatch to the ``l0_calibration_log`` plugin hook.

At every logging step (every ``verbose_freq`` epochs and at the last epoch) a fit
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

from l0_core import get_plugin_manager
from l0_core.checks import check_int

from .checkpoint_files import (
    CHECKPOINT_SUFFIXES,
    STATE_FORMAT,
    _check_template,
    atomic_save,
    latest_checkpoint,
    load_checkpoint,
    validate_state_dict,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "STATE_FORMAT",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "atomic_save",
    "dispatch_event",
    "latest_checkpoint",
    "load_checkpoint",
    "validate_state_dict",
]

logger = logging.getLogger(__name__)

Callback = Callable[[dict], Any]


def dispatch_event(event: dict, callbacks: Iterable[Callback] = ()) -> bool:
    """Call the plugin hook, then each callback; True when one asks to stop.

    Examples
    --------
    >>> dispatch_event({"epoch": 1}, [lambda e: e["epoch"] >= 1])
    True
    """
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
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
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
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which the event lacks; keys: {sorted(event)}"
            )
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


class _SavingCallback:
    """What :class:`Checkpoint` and :class:`~l0_calibrate.ShardCheckpoint` share.

    The arguments are checked and the path template (with the fields in
    ``_fields``) is tried at construction; each call at a saving epoch writes
    the model's ``state_dict()`` atomically to :meth:`_path_for` and keeps the
    newest ``keep`` files.
    """

    _fields: dict[str, int]
    _example: str

    def __init__(
        self, path: str | os.PathLike, every: int | None = None, *, keep: int | None = None
    ) -> None:
        if every is not None:
            check_int(every, "every", min_val=1, hint="pass e.g. every=100 (epochs)")
        if keep is not None:
            check_int(keep, "keep", min_val=1, hint="pass e.g. keep=3, or None to keep every file")
        self.path = os.fspath(path)
        _check_template(self.path, self._fields, type(self).__name__)
        self._check_path()
        if keep is not None and "{epoch" not in self.path:
            raise ValueError(
                f"keep={keep} needs one file per save: put '{{epoch}}' in the path (e.g. "
                f"'{self._example}'); {self.path!r} is overwritten at every save"
            )
        self.every = every
        self.keep = keep
        self.saved: list[str] = []

    def _check_path(self) -> None:
        """Further checks of ``self.path`` at construction (none here)."""

    def _path_for(self, epoch: int, model: Any) -> str:
        return self.path.format(epoch=epoch)

    def __call__(self, event: dict) -> None:
        epoch = int(event["epoch"])
        if self.every is not None and epoch % self.every:
            return None
        model = event["model"]
        path = self._path_for(epoch, model)
        atomic_save(model.state_dict(), path)
        _remember(self.saved, path, self.keep)
        logger.debug("%s written to %s at epoch %d", type(self).__name__, path, epoch)
        return None


class Checkpoint(_SavingCallback):
    """Save ``model.state_dict()`` (optimiser and RNG state included) during a fit, crash-safely.

    Every file is written atomically (:func:`atomic_save`: a temporary file
    in the same folder, fsync, rename), so a process killed mid-write
    leaves the previous checkpoint intact. The files are plain
    ``state_dict()`` s: ``model.load_state_dict(torch.load(path))`` still
    works, and :meth:`load` / :meth:`latest` / :meth:`resume` validate
    them first.

    Parameters
    ----------
    path : str or os.PathLike
        File to write; may contain ``{epoch}`` to keep one file per save.
        The template and its folder are checked here, before any work.
    every : int, optional
        Save at logging steps whose epoch is a multiple of ``every``
        (default: every logging step).
    keep : int, optional
        With ``{epoch}`` in ``path``: keep only the newest ``keep`` files this
        callback wrote (older ones are deleted after a newer one is
        complete). Default: keep all.

    Examples
    --------
    >>> import tempfile, os
    >>> ckpt = Checkpoint(os.path.join(tempfile.mkdtemp(), "w-{epoch}.pt"), every=500, keep=3)
    >>> ckpt.every, ckpt.keep
    (500, 3)
    """

    _fields: dict[str, int] = {"epoch": 0}
    _example = "ckpt-{epoch}.pt"

    @staticmethod
    def load(path: str | os.PathLike, *, n_features: int | None = None) -> dict[str, Any]:
        """Read and validate one checkpoint file (see :func:`load_checkpoint`).

        Examples
        --------
        >>> Checkpoint.load("missing.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint file 'missing.pt' does not exist
        """
        return load_checkpoint(path, n_features=n_features)

    @staticmethod
    def latest(where: str | os.PathLike, *, n_features: int | None = None) -> str:
        """Path of the newest valid checkpoint in a folder or of a template (see :func:`latest_checkpoint`).

        Examples
        --------
        >>> import tempfile
        >>> Checkpoint.latest(os.path.join(tempfile.mkdtemp(), "w-{epoch}.pt"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: no valid checkpoint in '...w-{epoch}.pt'
        """
        return latest_checkpoint(where, n_features=n_features)

    def resume(self, model: Any) -> str | None:
        """Load the newest valid checkpoint of this callback's path into ``model``; its path, or None.

        Call it before ``fit`` to continue a run that was interrupted; with
        no checkpoint yet it does nothing and returns None.

        Examples
        --------
        >>> import tempfile
        >>> from l0_calibrate import SparseCalibrationWeights
        >>> Checkpoint(os.path.join(tempfile.mkdtemp(), "w-{epoch}.pt")).resume(SparseCalibrationWeights(3)) is None
        True
        """
        try:
            path = latest_checkpoint(self.path, n_features=getattr(model, "n_features", None))
        except FileNotFoundError:
            return None
        model.load_state_dict(load_checkpoint(path))
        return path


def _remember(saved: list[str], path: str, keep: int | None) -> None:
    """Record a written file; delete the oldest ones beyond ``keep``."""
    if path in saved:
        saved.remove(path)
    saved.append(path)
    while keep is not None and len(saved) > keep:
        old = saved.pop(0)
        try:
            os.remove(old)
        except FileNotFoundError:
            pass
