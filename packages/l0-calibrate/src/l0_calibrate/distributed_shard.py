"""The column layout of a sharded fit: which household columns a rank holds.

:class:`ColumnShard` says ``[start, stop)`` of ``n_total``; :func:`cut_to_shard`
cuts a per-household argument to it; :func:`sortable_keys` orders floats as
integers for the exact top-k over ranks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .distributed_group import _collective_device, _dist, _rank_and_size

__all__ = ["ColumnShard", "check_saved_layout", "cut_to_shard", "sortable_keys"]


# ------------------------------------------------------------------ layout
@dataclass(frozen=True)
class ColumnShard:
    """The household columns ``[start, stop)`` of ``n_total`` held by one rank.

    Parameters
    ----------
    n_total : int
        Household columns over all ranks.
    start, stop : int
        This rank's columns, ``0 <= start < stop <= n_total``.
    rank, world_size : int, default 0, 1
        This rank and the number of ranks.

    Examples
    --------
    >>> shard = ColumnShard.even(10, rank=1, world_size=3)
    >>> shard.start, shard.stop, shard.n_local
    (4, 7, 3)
    """

    n_total: int
    start: int
    stop: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("n_total", "start", "stop", "rank", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(
                    f"ColumnShard {name} must be an integer, got {type(value).__name__}"
                )
        if not 0 <= self.start < self.stop <= self.n_total:
            raise ValueError(
                f"ColumnShard needs 0 <= start < stop <= n_total, got start={self.start}, "
                f"stop={self.stop}, n_total={self.n_total}; every rank must hold at least one column"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"ColumnShard rank must lie in [0, world_size), got {self.rank} of {self.world_size}"
            )

    @property
    def n_local(self) -> int:
        """Number of columns on this rank."""
        return self.stop - self.start

    @property
    def columns(self) -> slice:
        """``slice(start, stop)``, to cut this rank's part out of a global vector."""
        return slice(self.start, self.stop)

    @classmethod
    def even(
        cls,
        n_total: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        group: Any = None,
    ) -> ColumnShard:
        """Contiguous, nearly equal blocks (the first ``n_total % world_size`` ranks get one more).

        ``rank`` and ``world_size`` default to those of the process group
        (0 and 1 outside one).

        Examples
        --------
        >>> [ColumnShard.even(7, rank=r, world_size=3).columns for r in range(3)]
        [slice(0, 3, None), slice(3, 5, None), slice(5, 7, None)]
        """
        g_rank, g_size = _rank_and_size(group)
        rank = g_rank if rank is None else rank
        world_size = g_size if world_size is None else world_size
        if isinstance(n_total, bool) or not isinstance(n_total, (int, np.integer)):
            raise TypeError(f"n_total must be an integer, got {type(n_total).__name__}")
        if (
            isinstance(world_size, bool)
            or not isinstance(world_size, (int, np.integer))
            or world_size < 1
        ):
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if n_total < world_size:
            raise ValueError(
                f"n_total={n_total} household columns cannot be split over {world_size} ranks: every "
                "rank needs at least one column; use fewer processes"
            )
        base, extra = divmod(int(n_total), int(world_size))
        start = rank * base + min(rank, extra)
        stop = start + base + (1 if rank < extra else 0)
        return cls(int(n_total), int(start), int(stop), int(rank), int(world_size))

    @classmethod
    def from_local_count(
        cls, n_local: int, *, group: Any = None, device: Any = None
    ) -> ColumnShard:
        """The layout given each rank's own column count, in rank order (a collective call).

        Examples
        --------
        >>> ColumnShard.from_local_count(5)  # outside a process group: world size 1
        ColumnShard(n_total=5, start=0, stop=5, rank=0, world_size=1)
        """
        if isinstance(n_local, bool) or not isinstance(n_local, (int, np.integer)) or n_local < 1:
            raise ValueError(
                f"n_local must be a positive integer (this rank's columns), got {n_local!r}"
            )
        rank, size = _rank_and_size(group)
        if size == 1:
            return cls(int(n_local), 0, int(n_local), 0, 1)
        counts = torch.zeros(size, dtype=torch.int64, device=device or _collective_device(group))
        counts[rank] = int(n_local)
        _dist().all_reduce(counts, group=group)
        counts_l = counts.tolist()
        start = sum(counts_l[:rank])
        return cls(int(sum(counts_l)), int(start), int(start + n_local), rank, size)

    def as_dict(self) -> dict[str, int]:
        """Plain-dict form, as stored in checkpoints."""
        return {
            "n_total": self.n_total,
            "start": self.start,
            "stop": self.stop,
            "rank": self.rank,
            "world_size": self.world_size,
        }


def cut_to_shard(value: Any, shard: ColumnShard, argument: str) -> Any:
    """A per-household argument cut to ``shard``'s columns; scalars and None pass through.

    An array of ``shard.n_total`` values (all households) is cut to the
    shard's slice (a copy); one of ``shard.n_local`` values (this rank's
    households already) is returned as is. Anything else raises.

    Examples
    --------
    >>> cut_to_shard(np.arange(4.0), ColumnShard.even(4, rank=1, world_size=2), "w").tolist()
    [2.0, 3.0]
    """
    if value is None or isinstance(value, (bool, int, float, np.integer, np.floating)):
        return value
    arr = value.detach() if isinstance(value, Tensor) else np.asarray(value)
    n = arr.shape[0] if arr.ndim == 1 else -1
    if n == shard.n_total:
        part = arr[shard.columns]
        return part.clone() if isinstance(part, Tensor) else np.array(part, copy=True)
    if n == shard.n_local:
        return value
    raise ValueError(
        f"{argument} must hold one value per household: {shard.n_total} values (all columns; this "
        f"rank keeps [{shard.start}, {shard.stop})) or {shard.n_local} (this rank's columns); "
        f"got shape {tuple(arr.shape)}"
    )


def _digest(values: np.ndarray) -> int:
    """A 62-bit digest of a float64 vector and its length (same bits -> same digest)."""
    arr = np.ascontiguousarray(values, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    h = hashlib.blake2b(np.int64(arr.size).tobytes() + arr.tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2


# ------------------------------------------------------------ top-k keys
def sortable_keys(x: Tensor) -> Tensor:
    """int64 keys with the order of the floats in ``x`` (``-0.0`` equal to ``0.0``).

    Lets an exact k-th-largest search run on integers, with counts as the
    only thing exchanged between ranks.

    Examples
    --------
    >>> sortable_keys(torch.tensor([-2.0, -1.0, -0.0, 0.0, 3.5])).argsort().tolist()
    [0, 1, 2, 3, 4]
    """
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    x = x.detach() + 0.0  # -0.0 + 0.0 == +0.0
    if x.dtype == torch.float64:
        bits, width = x.view(torch.int64), 64
    elif x.dtype == torch.float32:
        bits, width = x.view(torch.int32).to(torch.int64), 32
    elif x.dtype in (torch.float16, torch.bfloat16):
        bits, width = x.view(torch.int16).to(torch.int64), 16
    else:
        return sortable_keys(x.to(torch.float64))
    low = (1 << (width - 1)) - 1  # all bits but the sign
    return torch.where(bits < 0, bits ^ low, bits)


def _local_top_k(scores: Tensor, k: int) -> Tensor:
    """The ``k`` largest scores, ties to the lower index (stable descending argsort)."""
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    keep[order[:k]] = True
    return keep


def check_saved_layout(saved: dict[str, Any] | None, shard: ColumnShard, noise: str) -> None:
    """Raise unless a checkpoint's layout (``saved``, None for a single-process one) fits ``shard``.

    Examples
    --------
    >>> check_saved_layout(None, ColumnShard(4, 0, 4), "global")  # one rank: fine
    """
    if saved is None:
        if shard.world_size != 1:
            raise ValueError(
                "this is a single-process checkpoint but the model holds columns "
                f"[{shard.start}, {shard.stop}) of {shard.n_total}; cut it with "
                "l0_calibrate.shard_state_dict(state, model.shard) first"
            )
        return
    if (saved["n_total"], saved["start"], saved["stop"]) != (
        shard.n_total,
        shard.start,
        shard.stop,
    ):
        raise ValueError(
            f"this checkpoint holds columns [{saved['start']}, {saved['stop']}) of {saved['n_total']} "
            f"but this rank holds [{shard.start}, {shard.stop}) of {shard.n_total}; resume with the "
            "same world size, or merge the ranks' checkpoints with consolidate_state_dicts and "
            "cut them again with shard_state_dict"
        )
    if saved.get("noise", "global") != noise:
        raise ValueError(
            f"this checkpoint was written with noise={saved.get('noise')!r} but the model uses "
            f"noise={noise!r}; build the model with the same noise mode"
        )
