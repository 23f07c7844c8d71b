"""Checkpoint files of a calibration model: written atomically, validated before loading, found by template.

:func:`atomic_save` writes a file so that a crash never leaves a partial
one; :func:`validate_state_dict` / :func:`load_checkpoint` check a
``state_dict`` (finite parameters of one length, this version's fit-state
format) before it is loaded; :func:`latest_checkpoint` finds the newest
valid file of a folder or of a ``{epoch}``/``{rank}`` path template. The
callbacks that write them are in :mod:`l0_calibrate.callbacks`.
"""

from __future__ import annotations

import os
import pickle
import re
import string
import warnings
import zipfile
from typing import Any

import torch

from .fit_state import STATE_FORMAT, unpack_fit_state

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "STATE_FORMAT",
    "atomic_save",
    "latest_checkpoint",
    "load_checkpoint",
    "validate_state_dict",
]

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
        extra = unpack_fit_state(extra, source)  # the fit state serialised into a byte tensor
    if extra is not None:
        version = extra.get("format") if isinstance(extra, dict) else None
        if version != STATE_FORMAT:
            raise ValueError(
                f"{source} has checkpoint format {version!r} but this version of l0-calibrate reads "
                f"format {STATE_FORMAT}"
            )
    return state


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
