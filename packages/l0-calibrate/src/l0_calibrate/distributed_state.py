"""Checkpoints of column-sharded fits: one file per rank, and conversion between world sizes.

A :class:`~l0_calibrate.ShardedCalibrationWeights` ``state_dict()`` is the
single-process format (parameters, optimiser, generator, schedule and
controller state) for the rank's columns, plus the layout under
``_extra_state["shard"]``. At world size 1 it loads into a plain
:class:`~l0_calibrate.SparseCalibrationWeights` and the other way round.

To resume with a different number of ranks, merge the ranks' files with
:func:`consolidate_state_dicts` (a single-process checkpoint) and cut that
for the new layout with :func:`shard_state_dict`. Adam's state is per
household, and with ``noise="global"`` every rank's generator is the
single-process one, so the resumed fit continues exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .callbacks import _SavingCallback, latest_checkpoint
from .distributed_reducer import ColumnShard, group_initialized
from .fit_state import unpack_fit_state

__all__ = ["ShardCheckpoint", "consolidate_state_dicts", "shard_state_dict"]

logger = logging.getLogger("l0_calibrate")

_EXTRA = "_extra_state"


def _layout(state: dict[str, Any], argument: str) -> dict[str, Any]:
    extra = state.get(_EXTRA) if isinstance(state, dict) else None
    if not isinstance(extra, dict) or "shard" not in extra:
        raise ValueError(
            f"{argument} is not a sharded checkpoint (no _extra_state['shard']); pass the state_dict() "
            "of each rank's ShardedCalibrationWeights"
        )
    return extra["shard"]


def _per_column(value: Any, n: int) -> bool:
    return isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == n


def _merge(values: Sequence[Any], sizes: Sequence[int]) -> Any:
    """Concatenate per-column tensors; keep the first of anything else."""
    if all(_per_column(v, n) for v, n in zip(values, sizes, strict=True)):
        return torch.cat([v.detach() for v in values]).clone()
    first = values[0]
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values], sizes) for k in first}
    return first.clone() if isinstance(first, Tensor) else first


def _cut(value: Any, columns: slice, n_total: int) -> Any:
    if _per_column(value, n_total):
        return value.detach()[columns].clone()
    if isinstance(value, dict):
        return {k: _cut(v, columns, n_total) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, columns, n_total) for v in value]
    return value.clone() if isinstance(value, Tensor) else value


def consolidate_state_dicts(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge every rank's ``state_dict()`` into one single-process checkpoint.

    Parameters
    ----------
    states : list of dict
        One ``state_dict()`` per rank, any order, covering all columns once.

    Returns
    -------
    dict
        Loads into ``SparseCalibrationWeights(n_total, ...)`` and continues
        the fit; or cut it again with :func:`shard_state_dict`.

    Examples
    --------
    >>> from l0_calibrate.distributed import ShardedCalibrationWeights
    >>> parts = [ShardedCalibrationWeights(5, seed=0, shard=ColumnShard(5, a, b)).state_dict()
    ...          for a, b in ((0, 2), (2, 5))]
    >>> consolidate_state_dicts(parts)["log_alpha"].shape
    torch.Size([5])
    """
    if isinstance(states, dict) or not isinstance(states, Sequence) or not states:
        raise TypeError("states must be a non-empty list of per-rank state dicts")
    layouts = [_layout(s, f"states[{i}]") for i, s in enumerate(states)]
    order = sorted(range(len(states)), key=lambda i: layouts[i]["start"])
    layouts = [layouts[i] for i in order]
    states = [states[i] for i in order]
    n_total = layouts[0]["n_total"]
    pos = 0
    for lay in layouts:
        if lay["n_total"] != n_total or lay["start"] != pos:
            raise ValueError(
                f"the checkpoints do not tile [0, {n_total}) exactly once: columns "
                f"[{lay['start']}, {lay['stop']}) of {lay['n_total']} follow column {pos}; pass one file per rank"
            )
        pos = lay["stop"]
    if pos != n_total:
        raise ValueError(
            f"the checkpoints cover columns [0, {pos}) of {n_total}; a rank's file is missing"
        )
    if any(lay.get("noise", "global") != "global" for lay in layouts) and len(states) > 1:
        raise ValueError(
            "these checkpoints were written with noise='local', whose random streams are per rank; "
            "resume them with the same world size, or use gather_weights for the weights"
        )
    sizes = [lay["stop"] - lay["start"] for lay in layouts]
    out: dict[str, Any] = {}
    for key in states[0]:
        if key == _EXTRA:
            continue
        out[key] = _merge([s[key] for s in states], sizes)
    extra = {k: v for k, v in states[0][_EXTRA].items() if k != "shard"}
    optim = [s[_EXTRA].get("optimizer") for s in states]
    if any(o is None for o in optim):
        extra["optimizer"] = None
    else:
        extra["optimizer"] = {
            "state": {
                pid: _merge([o["state"][pid] for o in optim], sizes) for pid in optim[0]["state"]
            },
            "param_groups": [dict(g) for g in optim[0]["param_groups"]],
        }
    extra["generator"] = extra["generator"].clone()
    extra["history"] = [dict(h) for h in extra.get("history", [])]
    out[_EXTRA] = extra
    return out


def shard_state_dict(state: dict[str, Any], shard: ColumnShard) -> dict[str, Any]:
    """Cut a single-process checkpoint (or a consolidated one) to one rank's columns.

    Parameters
    ----------
    state : dict
        ``SparseCalibrationWeights(n_total).state_dict()`` or the output of
        :func:`consolidate_state_dicts`. Not modified.
    shard : ColumnShard
        The rank's layout (``model.shard``).

    Returns
    -------
    dict
        Loads into the rank's ``ShardedCalibrationWeights``.

    Examples
    --------
    >>> from l0_calibrate.weights import SparseCalibrationWeights
    >>> full = SparseCalibrationWeights(5, seed=0).state_dict()
    >>> part = shard_state_dict(full, ColumnShard(5, 1, 3, rank=0, world_size=2))
    >>> bool(torch.equal(part["log_alpha"], full["log_alpha"][1:3]))
    True
    """
    if not isinstance(shard, ColumnShard):
        raise TypeError(f"shard must be a ColumnShard, got {type(shard).__name__}")
    if not isinstance(state, dict) or "log_alpha" not in state:
        raise TypeError("state must be a SparseCalibrationWeights state_dict()")
    extra = unpack_fit_state(state.get(_EXTRA))  # a plain model's state is a packed tensor
    if isinstance(extra, dict) and "shard" in extra:
        lay = extra["shard"]
        if (lay["start"], lay["stop"]) != (0, lay["n_total"]):
            raise ValueError(
                "state holds only columns "
                f"[{lay['start']}, {lay['stop']}) of {lay['n_total']}; merge the ranks' checkpoints with "
                "consolidate_state_dicts first"
            )
    n_total = int(state["log_alpha"].shape[0])
    if n_total != shard.n_total:
        raise ValueError(
            f"state holds {n_total} households but the shard is laid out for {shard.n_total}"
        )
    out = {k: _cut(v, shard.columns, n_total) for k, v in state.items() if k != _EXTRA}
    if isinstance(extra, dict):
        # Only the optimiser's state is per household (the generator's state is a byte vector
        # that must never be cut, whatever its length).
        new_extra = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in extra.items()}
        new_extra["optimizer"] = _cut(extra.get("optimizer"), shard.columns, n_total)
        new_extra["history"] = [dict(h) for h in extra.get("history", [])]
        new_extra["shard"] = {**shard.as_dict(), "noise": "global"}
        out[_EXTRA] = new_extra
    return out


class ShardCheckpoint(_SavingCallback):
    """Callback that saves each rank's ``state_dict()`` to its own file during a fit.

    Parameters
    ----------
    path : str or os.PathLike
        File name with ``{rank}`` (required when several ranks write) and
        optionally ``{epoch}``, e.g. ``"ckpt/rank{rank}-epoch{epoch}.pt"``.
    every : int, optional
        Save at logging steps whose epoch is a multiple of ``every``
        (default: every logging step).
    keep : int, optional
        With ``{epoch}`` in ``path``: keep only each rank's newest ``keep``
        files (default: all).

    Files are written atomically (a temporary file in the same folder,
    fsync, rename), so a rank killed mid-write leaves its previous file
    intact; the template and its folder are checked at construction.
    :meth:`latest` finds a rank's newest valid file.

    Examples
    --------
    >>> import tempfile
    >>> ckpt = ShardCheckpoint(os.path.join(tempfile.mkdtemp(), "r{rank}-e{epoch}.pt"), every=100)
    >>> ckpt.every
    100
    """

    _fields: dict[str, int] = {"epoch": 0, "rank": 0}
    _example = "rank{rank}-{epoch}.pt"

    def _check_path(self) -> None:
        if "{rank" not in self.path and group_initialized():
            import torch.distributed as dist

            if dist.get_world_size() > 1:
                raise ValueError(_no_rank_field(self.path))

    def _path_for(self, epoch: int, model: Any) -> str:
        shard = getattr(model, "shard", None)
        rank = shard.rank if shard is not None else 0
        if shard is not None and shard.world_size > 1 and "{rank" not in self.path:
            raise ValueError(_no_rank_field(self.path))
        return self.path.format(epoch=epoch, rank=rank)

    @staticmethod
    def latest(where: str | os.PathLike, rank: int = 0) -> str:
        """Path of rank ``rank``'s newest valid checkpoint of a template (or in a folder).

        Examples
        --------
        >>> import tempfile
        >>> ShardCheckpoint.latest(os.path.join(tempfile.mkdtemp(), "r{rank}-{epoch}.pt"), rank=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: no valid checkpoint in '...r{rank}-{epoch}.pt'
        """
        return latest_checkpoint(where, rank=rank)


def _no_rank_field(path: str) -> str:
    return (
        f"ShardCheckpoint path {path!r} has no '{{rank}}' field, so the ranks would "
        "overwrite each other's files; add one, e.g. 'ckpt-rank{rank}.pt'"
    )
