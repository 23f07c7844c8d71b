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

from l0_core.checks import check_int

__all__ = [
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


#: The ``format`` field a model writes into ``state_dict()["_extra_state"]`` (the checkpoint version).
STATE_FORMAT = 1

_EXTRA = "_extra_state"


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj)`` to ``path`` so that a crash never leaves a partial file there.

    The bytes go to a temporary file in the same folder, which is flushed
    and fsynced, then renamed over ``path`` (:func:`os.replace`, atomic on
    POSIX and Windows). A process killed at any moment leaves either the
    previous file or the new one, never a truncated one; a leftover
    temporary file (a name starting with ``.`` and holding ``.tmp-``) is
    ignored by :meth:`Checkpoint.latest`.

    Examples
    --------
    >>> import tempfile, torch
    >>> p = atomic_save({"x": torch.ones(2)}, os.path.join(tempfile.mkdtemp(), "a.pt"))
    >>> torch.load(p)["x"].tolist()
    [1.0, 1.0]
    """
    import torch

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return path
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - platform dependent
        pass
    finally:
        os.close(fd)
    return path


def validate_state_dict(
    state: Any, source: str = "state_dict", *, n_features: int | None = None
) -> dict[str, Any]:
    """Check a :class:`SparseCalibrationWeights` checkpoint before it is loaded; return it.

    Checks that ``log_weight`` and ``log_alpha`` are finite 1-D floating
    point tensors of one length (``n_features`` when given) and that the
    fit state, when present, carries this version's ``format`` field. Each
    problem raises ``ValueError`` naming ``source`` and the key.

    Examples
    --------
    >>> import torch
    >>> validate_state_dict({"log_weight": torch.zeros(2), "log_alpha": torch.tensor([0.0, float("nan")])})
    Traceback (most recent call last):
    ...
    ValueError: state_dict: 'log_alpha' holds 1 NaN or infinite value(s) (first at index 1); the checkpoint comes from a diverged fit or a corrupted file: load an earlier one
    """
    import torch

    if not isinstance(state, dict):
        raise ValueError(
            f"{source} is not a state dict (got {type(state).__name__}); save model.state_dict()"
        )
    length = None
    for key in ("log_weight", "log_alpha"):
        if key not in state:
            raise ValueError(
                f"{source} has no {key!r}; it is not a SparseCalibrationWeights checkpoint"
            )
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 1:
            what = (
                f"a {value.dim()}-D {value.dtype} tensor"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise ValueError(f"{source}: {key!r} must be a 1-D floating point tensor, got {what}")
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{source}: {key!r} holds {int(bad.sum())} NaN or infinite value(s) (first at index "
                f"{first}); the checkpoint comes from a diverged fit or a corrupted file: load an earlier one"
            )
        if length is not None and value.shape[0] != length:
            raise ValueError(
                f"{source}: 'log_alpha' has {value.shape[0]} entries but 'log_weight' has {length}"
            )
        length = value.shape[0]
    if n_features is not None and length != n_features:
        raise ValueError(
            f"{source} holds {length} households but the model has n_features={n_features}"
        )
    extra = state.get(_EXTRA)
    if isinstance(extra, torch.Tensor) and extra.dtype == torch.uint8 and extra.dim() == 1:
        extra = _unpack(extra, source)  # the fit state serialised into a byte tensor
    if extra is not None:
        version = extra.get("format") if isinstance(extra, dict) else None
        if version != STATE_FORMAT:
            raise ValueError(
                f"{source} has checkpoint format {version!r} but this version of l0-calibrate reads "
                f"format {STATE_FORMAT}"
            )
    return state


def _unpack(raw: Any, source: str) -> Any:
    """A fit state stored as the bytes of ``torch.save(dict)`` in a uint8 tensor."""
    import io

    import torch

    try:
        return torch.load(
            io.BytesIO(raw.detach().cpu().numpy().tobytes()), weights_only=True, map_location="cpu"
        )
    except Exception as exc:  # noqa: BLE001 - any failure means unreadable bytes
        raise ValueError(
            f"{source}: its fit state ('_extra_state') cannot be read ({type(exc).__name__}); the "
            "file is corrupt: load an earlier checkpoint"
        ) from None


def load_checkpoint(
    path: str | os.PathLike, *, n_features: int | None = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read and validate a checkpoint file written by :class:`Checkpoint` (or ``torch.save(model.state_dict())``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the file for a truncated or corrupt one, or one that fails
    :func:`validate_state_dict`.

    Examples
    --------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "bad.pt")
    >>> _ = open(p, "wb").write(b"not a checkpoint")
    >>> load_checkpoint(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: checkpoint file '...bad.pt' is truncated or corrupt (...); load an earlier checkpoint, e.g. Checkpoint.latest(folder)
    """
    import pickle
    import zipfile

    import torch

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"checkpoint file {p!r} does not exist")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ValueError(
            f"checkpoint file {p!r} is truncated or corrupt ({reason}); load an earlier checkpoint, "
            "e.g. Checkpoint.latest(folder)"
        ) from exc
    return validate_state_dict(state, f"checkpoint file {p!r}", n_features=n_features)


def _check_template(path: str, fields: dict[str, int], what: str) -> None:
    """The path template formats with ``fields`` and its folder exists and is writable."""
    try:
        sample = path.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{what} path {path!r} is not a valid template ({type(exc).__name__}: {exc}); it may use "
            + ", ".join("{" + f + "}" for f in fields)
            + " and nothing else (double other braces: '{{' and '}}')"
        ) from None
    folder = os.path.dirname(os.path.abspath(sample))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{what} folder {folder!r} does not exist; create it before the fit (os.makedirs)"
        )
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{what} folder {folder!r} is not writable")


def _template_regex(path: str) -> Any:
    """A regex matching the file names of a template, with groups for its numeric fields."""
    import re
    import string

    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(os.path.basename(path)):
        out.append(re.escape(literal))
        if field is not None:
            out.append(f"(?P<{field}>\\d+)" if field in ("epoch", "rank") else ".*")
    return re.compile("".join(out) + "$")


#: File endings :func:`latest_checkpoint` considers in a folder (a template matches any name).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _candidates(where: str, rank: int | None = None) -> list[str]:
    """Files of a folder or a template, newest first (by epoch when the template has one)."""
    if os.path.isdir(where):
        names = [
            os.path.join(where, n)
            for n in os.listdir(where)
            if not n.startswith(".")
            and n.lower().endswith(CHECKPOINT_SUFFIXES)
            and os.path.isfile(os.path.join(where, n))
        ]
        return sorted(names, key=lambda p: (os.path.getmtime(p), p), reverse=True)
    folder = os.path.dirname(os.path.abspath(where))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no checkpoint folder {folder!r}")
    pattern = _template_regex(where)
    found = []
    for n in os.listdir(folder):
        m = pattern.match(n)
        if n.startswith(".") and not os.path.basename(where).startswith("."):
            continue
        if m is None:
            continue
        groups = m.groupdict()
        if rank is not None and "rank" in groups and int(groups["rank"]) != rank:
            continue
        epoch = int(groups["epoch"]) if "epoch" in groups else -1
        p = os.path.join(folder, n)
        found.append((epoch, os.path.getmtime(p), p))
    return [p for _, _, p in sorted(found, reverse=True)]


def latest_checkpoint(
    where: str | os.PathLike, *, n_features: int | None = None, rank: int | None = None
) -> str:
    """Path of the newest checkpoint under ``where`` that loads and validates.

    ``where`` is a folder (its ``.pt``, ``.pth`` and ``.ckpt`` files, newest
    modification first) or a path template with ``{epoch}`` (and ``{rank}``): the highest epoch first.
    Truncated, corrupt or non-finite files are skipped with a warning.

    Examples
    --------
    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: no valid checkpoint in '...'
    """
    import warnings

    where = os.fspath(where)
    skipped = []
    for p in _candidates(where, rank):
        try:
            load_checkpoint(p, n_features=n_features)
        except ValueError as exc:
            skipped.append(p)
            warnings.warn(f"skipping checkpoint {p!r}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        return p
    raise FileNotFoundError(
        f"no valid checkpoint in {where!r}"
        + (f" (skipped {len(skipped)} invalid file(s))" if skipped else "")
    )


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
