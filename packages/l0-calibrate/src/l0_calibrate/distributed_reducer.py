"""What a calibration fit exchanges between processes: the reducer objects and the column layout.

The fit loop (:mod:`l0_calibrate.fitting`) asks a *reducer* for everything
that depends on more than this process's household columns:

``all_reduce_sum(tensor)``
    Sum a target-sized vector or a scalar over the processes (the partial
    estimates ``M_k w_k``, active counts, penalty values).
``any(flag)``
    True on every process when one of them says True (stopping early).
``normal_noise(n, ...)`` / ``gate_noise(buffer, generator)``
    This process's part of the random draws, arranged so that a sharded fit
    draws the same numbers as the single-process fit with the same seed.
``top_k_mask(scores, k)``
    The ``k`` largest scores over all processes (ties to the lower column).
``agree(...)`` / ``reduce_problem(...)``
    Every rank stops together when one rejected its arguments or the fit
    options differ between ranks; the check that every rank has the same
    targets, and targets infeasible on all ranks.
``local_part(value, argument)`` / ``all_gather_object(obj)``
    A per-household argument cut to this process's columns; small pieces
    (the polishing stage's kept columns) collected from every process.
``n_total``
    Number of household columns over all processes.

:class:`LocalReducer` is the identity (one process holds everything);
:class:`ProcessGroupReducer` does the same over a :mod:`torch.distributed`
process group. Only target-sized vectors and scalars cross the network.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RankLostError",
    "ColumnShard",
    "LocalReducer",
    "ProcessGroupReducer",
    "all_reduce_sum",
    "sortable_keys",
    "use_sharding",
]

NOISE_MODES = ("global", "local")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def group_initialized() -> bool:
    """True inside an initialised :mod:`torch.distributed` process group.

    Examples
    --------
    >>> group_initialized()
    False
    """
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def use_sharding(distributed: bool | None, group: Any = None) -> bool:
    """Whether a model or ``calibrate`` call should shard its columns over the process group.

    The rule behind the ``distributed=`` argument of
    :class:`~l0_calibrate.SparseCalibrationWeights` and
    :func:`~l0_calibrate.calibrate`:

    * ``None`` (default): shard exactly when an initialised process group has
      more than one rank; each rank then holds only its own columns.
    * ``False``: never shard (every rank runs its own, independent fit; for a
      process group started for other reasons, e.g. DDP, with the full matrix
      on every rank).
    * ``True``: shard; an initialised process group is required (a group of
      one rank gives the single-process result).

    Parameters
    ----------
    distributed : bool or None
        The caller's setting.
    group : ProcessGroup, optional
        Default: the whole world.

    Returns
    -------
    bool

    Examples
    --------
    >>> use_sharding(None), use_sharding(False)  # outside a process group
    (False, False)
    """
    if distributed is not None and not isinstance(distributed, (bool, np.bool_)):
        raise TypeError(
            f"distributed must be True, False or None (auto), got {type(distributed).__name__}"
        )
    if distributed is None:
        return _rank_and_size(group)[1] > 1
    if distributed and not group_initialized():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group, but none is "
            "initialised; launch with torchrun and call l0_calibrate.init_distributed() (or "
            "torch.distributed.init_process_group) first, or pass distributed=None to shard only "
            "inside a process group"
        )
    return bool(distributed)


def _collective_device(group: Any = None) -> torch.device:
    """Where small tensors for collectives live: the current CUDA device under NCCL, else CPU."""
    if group_initialized() and _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _rank_and_size(group: Any = None) -> tuple[int, int]:
    if not group_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


class RankLostError(RuntimeError):
    """A rank of a sharded fit stopped answering (frozen, killed or disconnected).

    Raised on the surviving ranks when a collective fails or times out
    (the process group's timeout: ``init_distributed(timeout_s=...)``,
    ``l0-calibrate run --timeout``).

    Attributes
    ----------
    lost_ranks : list of int
        The ranks that did not answer (best knowledge of this rank).
    checkpoint : str or None
        This rank's newest checkpoint, to resume from.
    """

    def __init__(self, message: str, lost_ranks: list[int], checkpoint: str | None) -> None:
        super().__init__(message)
        self.lost_ranks = lost_ranks
        self.checkpoint = checkpoint


#: Words of the errors torch.distributed raises when a peer is gone or silent.
_LOST_PEER_WORDS = ("timed out", "timeout", "connection", "closed", "reset by peer", "broken pipe")


def is_lost_peer_error(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer stops answering (timeout, closed socket).

    Examples
    --------
    >>> is_lost_peer_error(RuntimeError("Timed out waiting 3000ms for recv operation to complete"))
    True
    >>> is_lost_peer_error(ValueError("timed out"))
    False
    """
    if not isinstance(exc, RuntimeError) or isinstance(exc, RankLostError):
        return False
    text = str(exc).lower()
    return any(word in text for word in _LOST_PEER_WORDS)


def _raise_any_failure(failures: list[Any], what: str) -> None:
    """Raise a ValueError naming the first rank whose entry in ``failures`` is a message."""
    for rank, message in enumerate(failures):
        if message is not None:
            raise ValueError(
                f"rank {rank} {what} ({message}); every rank stops here -- fix that rank's input "
                "and launch again"
            )


class stop_together:
    """Context manager: if a rank fails inside the block, every rank of the group raises.

    Without it, a rank whose own input checks raise leaves the others waiting
    in their next collective until the process-group timeout. On leaving
    the block every rank takes part in one ``all_gather_object`` of "did I
    fail": the failing rank re-raises its error, the others raise a
    ``ValueError`` naming it. Outside a process group (or with one rank) it
    changes nothing. Only ``Exception`` subclasses are shared; a
    ``KeyboardInterrupt`` still stops this process alone.

    Parameters
    ----------
    what : str
        What the block does, for the message of the other ranks.
    group : ProcessGroup, optional
        Default: the whole world.

    Examples
    --------
    >>> with stop_together("reading the matrix"):
    ...     x = 1 + 1
    >>> x
    2
    """

    def __init__(self, what: str, group: Any = None) -> None:
        self.what = what
        self.group = group

    def __enter__(self) -> stop_together:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
        if kind is not None and not issubclass(kind, Exception):
            return False
        rank, world = _rank_and_size(self.group)
        if world == 1:
            return False
        mine = None if error is None else f"{type(error).__name__}: {error}"
        gathered: list[Any] = [None] * world
        _dist().all_gather_object(gathered, mine, group=self.group)
        if error is None:
            _raise_any_failure(gathered, f"failed {self.what}")
        return False  # with an error of its own, this rank re-raises it


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
    import hashlib

    arr = np.ascontiguousarray(values, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    h = hashlib.blake2b(np.int64(arr.size).tobytes() + arr.tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2


# --------------------------------------------------------- all-reduce sum
class _AllReduceSum(torch.autograd.Function):
    """Forward: sum over the ranks. Backward: the incoming gradient, unchanged.

    Every rank computes the same loss ``L(e)`` from the same reduced
    ``e = sum_k e_k``; the objective counts ``L`` once, and ``de/de_k = I``,
    so ``dL/de_k = dL/de`` -- the gradient each rank already holds. Summing
    the gradients over ranks as well would count the loss ``world_size``
    times.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(out, op=_dist().ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def all_reduce_sum(tensor: Tensor, group: Any = None) -> Tensor:
    """Differentiable sum of ``tensor`` over the ranks of ``group``; a new tensor.

    The backward pass returns the incoming gradient unchanged, which is the
    right gradient when every rank computes the same loss from the summed
    value (see :class:`ProcessGroupReducer`). Outside a process group (or
    with one rank) it returns ``tensor`` itself.

    Parameters
    ----------
    tensor : Tensor
        Same shape and dtype on every rank (CUDA tensors for NCCL).
    group : ProcessGroup, optional
        Default: the whole world.

    Returns
    -------
    Tensor

    Examples
    --------
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> all_reduce_sum(x) is x  # no process group: world size 1
    True
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if _rank_and_size(group)[1] == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)


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


# --------------------------------------------------------------- reducers
class LocalReducer:
    """The identity reducer of a fit whose columns all live in this process.

    Parameters
    ----------
    n_total : int
        Number of household columns.

    Examples
    --------
    >>> red = LocalReducer(3)
    >>> red.all_reduce_sum(torch.ones(2)).tolist(), red.top_k_mask(torch.tensor([0.1, 0.9, 0.5]), 2).tolist()
    ([1.0, 1.0], [False, True, True])
    """

    sharded = False
    is_main = True

    def __init__(self, n_total: int) -> None:
        self.n_total = int(n_total)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` itself."""
        return tensor

    def any(self, flag: bool) -> bool:
        """``bool(flag)``."""
        return bool(flag)

    def normal_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``n`` standard normal draws from ``generator``."""
        return torch.randn(n, generator=generator, device=device, dtype=dtype)

    def gate_noise(self, buffer: Tensor, generator: torch.Generator) -> Tensor | None:
        """None: the workspace draws its uniforms itself."""
        return None

    def top_k_mask(self, scores: Tensor, k: int) -> Tensor:
        """Mask of the ``k`` largest scores (ties to the lower index)."""
        return _local_top_k(scores, k)

    def agree(self, error: BaseException | None, options: dict[str, str]) -> None:
        """Re-raise this process's argument error, if any (one process: nothing to compare)."""
        if error is not None:
            raise error

    def local_part(self, value: Any, argument: str) -> Any:
        """``value`` unchanged: this process holds every household."""
        return value

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj]``: one process."""
        return [obj]

    def reduce_problem(self, problem: Any, **group_options: Any) -> None:
        """Nothing to do: the problem is already whole."""

    def event_info(self) -> dict[str, Any]:
        """No extra keys for callback events."""
        return {}


class ProcessGroupReducer(LocalReducer):
    """Reducer over a :mod:`torch.distributed` process group, for one :class:`ColumnShard`.

    Parameters
    ----------
    shard : ColumnShard
        This rank's columns.
    group : ProcessGroup, optional
        Default: the whole world.
    device : torch.device, optional
        Where scalar flags and counts are exchanged (a CUDA device for NCCL).
    noise : {"global", "local"}, default "global"
        ``"global"``: every rank draws the random numbers of all ``n_total``
        columns from the shared seed and keeps its slice, so the fit equals
        the single-process fit with the same seed at any world size (cost:
        ``n_total`` draws per rank per epoch, about 0.1 ms per 50M on a
        GPU). ``"local"``: each rank draws only its own columns from a
        stream seeded by the seed and its first column; cheaper on CPU but
        the result then depends on the layout.

    Attributes
    ----------
    bytes_reduced : int
        Bytes of tensors passed to all-reduce so far (the payload; a ring
        all-reduce sends about twice that per rank).
    calls : int
        Number of collective calls so far.

    Examples
    --------
    >>> red = ProcessGroupReducer(ColumnShard.even(4))  # outside a process group: world size 1
    >>> red.all_reduce_sum(torch.tensor([1.0, 2.0])).tolist(), red.bytes_reduced
    ([1.0, 2.0], 8)
    """

    sharded = True

    def __init__(
        self,
        shard: ColumnShard,
        group: Any = None,
        *,
        device: torch.device | str | None = None,
        noise: str = "global",
    ) -> None:
        if not isinstance(shard, ColumnShard):
            raise TypeError(f"shard must be a ColumnShard, got {type(shard).__name__}")
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {list(NOISE_MODES)}, got {noise!r}")
        rank, size = _rank_and_size(group)
        if (rank, size) != (shard.rank, shard.world_size):
            raise ValueError(
                f"shard is for rank {shard.rank} of {shard.world_size} but this process is rank {rank} "
                f"of {size}; build it with ColumnShard.even(n_total) inside the process group"
            )
        super().__init__(shard.n_total)
        self.shard = shard
        self.group = group
        self.device = torch.device(device) if device is not None else _collective_device(group)
        if size > 1 and _dist().get_backend(group) == "nccl" and self.device.type != "cuda":
            raise ValueError(
                f"the process group uses NCCL, which reduces CUDA tensors only, but device={self.device}; "
                "pass the rank's GPU, e.g. device=init_distributed().device"
            )
        self.noise = noise
        self.is_main = shard.rank == 0
        self.bytes_reduced = 0
        self.calls = 0
        self._buffer: Tensor | None = None

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self.shard.world_size

    def lost_ranks(self, wait_s: float = 2.0) -> list[int]:
        """After a failed collective: the ranks that did not fail too (so are frozen or gone).

        Every surviving rank marks itself in the process group's key-value
        store; after up to ``wait_s`` seconds the ranks without a mark are
        the lost ones. With two ranks the lost one is the other; when the
        store cannot be reached, every other rank is named.
        """
        import time
        from datetime import timedelta

        me = self.shard.rank
        others = [r for r in range(self.world_size) if r != me]
        if len(others) <= 1:
            return others
        try:
            store = _dist().distributed_c10d._get_default_store()
            store.set_timeout(timedelta(seconds=max(wait_s, 0.1)))
            prefix = "l0_calibrate/failed/"
            store.set(f"{prefix}{me}", "1")
            deadline = time.monotonic() + wait_s
            while True:
                seen = [r for r in others if store.check([f"{prefix}{r}"])]
                if len(seen) == len(others) or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            lost = [r for r in others if r not in seen]
            return lost or others
        except Exception:  # noqa: BLE001 - the store may be gone with the lost rank
            return others

    def _count(self, tensor: Tensor) -> None:
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        self.calls += 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over the ranks (differentiable, see :func:`all_reduce_sum`)."""
        self._count(tensor)
        if self.world_size == 1:
            return tensor
        return _AllReduceSum.apply(tensor, self.group)

    def _reduce_op(self, tensor: Tensor, op: str) -> Tensor:
        self._count(tensor)
        if self.world_size > 1:
            dist = _dist()
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op), group=self.group)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        return bool(self._reduce_op(t, "MAX").item())

    # -- random numbers
    def normal_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """This rank's slice of ``randn(n_total)`` (``"global"``) or ``n`` own draws (``"local"``)."""
        if self.noise == "local":
            return torch.randn(n, generator=generator, device=device, dtype=dtype)
        full = torch.randn(self.n_total, generator=generator, device=device, dtype=dtype)
        return full[self.shard.columns].clone()

    def gate_noise(self, buffer: Tensor, generator: torch.Generator) -> Tensor | None:
        """This rank's slice of the uniforms the single-process fit draws (``"global"``)."""
        if self.noise == "local":
            return None
        buf = self._buffer
        if buf is None or buf.device != buffer.device or buf.dtype != buffer.dtype:
            buf = self._buffer = torch.empty(self.n_total, device=buffer.device, dtype=buffer.dtype)
        buf.uniform_(0.0, 1.0, generator=generator)
        return buf[self.shard.columns]

    # -- exact global selection
    def _global_count(self, keys: Tensor, threshold: int) -> int:
        t = (keys >= threshold).sum().reshape(1).to(torch.int64)
        return int(self._reduce_op(t, "SUM").item())

    def top_k_mask(self, scores: Tensor, k: int) -> Tensor:
        """Mask of this rank's columns among the ``k`` largest scores of all ranks.

        Ties go to the lower global column, as in the single-process stable
        sort. A binary search on the float bits: about 64 scalar all-reduces.
        """
        if self.world_size == 1:
            return _local_top_k(scores, k)
        if not 1 <= k <= self.n_total:
            raise ValueError(f"k must lie in [1, {self.n_total}], got {k}")
        keys = sortable_keys(scores)
        bounds = torch.stack([-keys.min(), keys.max()]).to(self.device)
        lo_neg, hi = self._reduce_op(bounds, "MAX").tolist()
        lo = -lo_neg
        while lo < hi:  # largest threshold T with #(keys >= T) >= k
            mid = (lo + hi + 1) // 2
            if self._global_count(keys, mid) >= k:
                lo = mid
            else:
                hi = mid - 1
        above = keys > lo
        n_above = self._global_count(keys, lo + 1)
        equal = keys == lo
        per_rank = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        per_rank[self.shard.rank] = int(equal.sum().item())
        per_rank = self._reduce_op(per_rank, "SUM").tolist()
        need = k - n_above
        take = max(0, min(need - sum(per_rank[: self.shard.rank]), per_rank[self.shard.rank]))
        keep = above.clone()
        if take:
            keep[torch.nonzero(equal).flatten()[:take]] = True
        return keep

    # -- problem and options
    def agree(self, error: BaseException | None, options: dict[str, str]) -> None:
        """Make every rank stop together on bad arguments or options that differ (collective).

        Each rank passes the error its own argument checks raised (or None)
        and its fit options as strings. One ``all_gather_object`` later,
        every rank knows: a rank with an error re-raises it, the others raise
        a ``ValueError`` naming that rank and its message; when all checks
        passed but an option differs from rank 0's, every rank raises a
        ``ValueError`` listing the option's value per rank. Without this, a
        rank that raised would leave the others waiting in the next
        collective until the process-group timeout.
        """
        if self.world_size == 1:
            if error is not None:
                raise error
            return
        mine = None if error is None else f"{type(error).__name__}: {error}"
        gathered = self.all_gather_object((mine, options))
        if error is not None:
            raise error
        _raise_any_failure([failure for failure, _ in gathered], "rejected its fit arguments")
        reference = gathered[0][1]
        differ = sorted(
            name
            for _, opts in gathered[1:]
            for name in set(opts) | set(reference)
            if opts.get(name) != reference.get(name)
        )
        if differ:
            name = differ[0]
            values = ", ".join(
                f"rank {r}: {opts.get(name)}" for r, (_, opts) in enumerate(gathered)
            )
            raise ValueError(
                f"fit option {name} differs between the ranks ({values})"
                + (f"; also {sorted(set(differ) - {name})}" if len(set(differ)) > 1 else "")
                + ". Pass the same options on every rank: only the matrix and per-household "
                "arrays are split by column"
            )

    def local_part(self, value: Any, argument: str) -> Any:
        """A per-household argument cut to this rank's columns (see :func:`cut_to_shard`)."""
        return cut_to_shard(value, self.shard, argument)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (pickled; for small, variable-size pieces)."""
        self.calls += 1
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        _dist().all_gather_object(out, obj, group=self.group)
        return out

    def check_same_targets(self, targets: np.ndarray, loss_weights: np.ndarray) -> None:
        """Raise on every rank when the ranks were given different targets or target options.

        Exchanges two 64-bit digests (the targets with their length, and the
        loss weights that ``target_groups`` / ``normalize_groups`` /
        ``group_multipliers`` give), before any target-sized collective.
        """
        if self.world_size == 1:
            return
        digests = [_digest(targets), _digest(loss_weights)]
        t = torch.tensor(digests + [-v for v in digests], dtype=torch.int64, device=self.device)
        high = self._reduce_op(t, "MAX").tolist()
        same_targets = high[0] == digests[0] and high[2] == -digests[0]
        same_weights = high[1] == digests[1] and high[3] == -digests[1]
        if not same_targets:
            raise ValueError(
                "y (the targets) differs between the ranks: every rank must pass the same full "
                f"target vector (all {targets.shape[0]} values here, same order) -- only the matrix "
                "is split by household columns; load the targets identically on every rank"
            )
        if not same_weights:
            raise ValueError(
                "target_groups / normalize_groups / group_multipliers differ between the ranks: "
                "pass the same target options on every rank (only the matrix is split)"
            )

    def reduce_problem(
        self,
        problem: Any,
        *,
        target_groups: Any = None,
        normalize_groups: bool = True,
        group_multipliers: Mapping[Hashable, float] | None = None,
    ) -> None:
        """Recompute the infeasible targets (unreachable with the entries of *every* rank) and their loss weights."""
        from .inputs import group_weights

        weights, _ = group_weights(
            target_groups,
            problem.targets.shape[0],
            normalize_groups=normalize_groups,
            group_multipliers=group_multipliers,
        )
        weights = np.array(weights, dtype=np.float64, copy=True)
        self.check_same_targets(np.asarray(problem.targets, dtype=np.float64), weights)
        from .inputs import row_signs, unreachable

        signs = np.stack(row_signs(problem.op)).astype(np.int64)  # (2, n_targets): any > 0, any < 0
        signs = self._reduce_op(torch.as_tensor(signs, device=self.device), "MAX").cpu().numpy() > 0
        infeasible = unreachable(np.asarray(problem.targets), signs[0], signs[1])
        weights[infeasible] = 0.0
        problem.infeasible = infeasible
        problem.loss_weights = weights

    def event_info(self) -> dict[str, Any]:
        """``rank``, ``world_size`` and ``column_offset`` for callback events."""
        return {
            "rank": self.shard.rank,
            "world_size": self.world_size,
            "column_offset": self.shard.start,
        }
