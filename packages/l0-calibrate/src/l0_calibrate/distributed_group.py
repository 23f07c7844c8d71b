"""The process group underneath a sharded fit: is one initialised, should a model shard, and
how ranks fail together.

``use_sharding`` is the rule behind every ``distributed=`` argument;
``stop_together`` and ``RankLostError`` make an error on one rank an error on
every rank (instead of a hang until the process-group timeout);
``all_reduce_sum`` is the differentiable sum over ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RankLostError",
    "all_reduce_sum",
    "group_initialized",
    "is_lost_peer_error",
    "stop_together",
    "use_sharding",
]


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

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is not None and not issubclass(kind, Exception):
            return None
        rank, world = _rank_and_size(self.group)
        if world == 1:
            return None
        mine = None if error is None else f"{type(error).__name__}: {error}"
        gathered: list[Any] = [None] * world
        _dist().all_gather_object(gathered, mine, group=self.group)
        if error is None:
            _raise_any_failure(gathered, f"failed {self.what}")
        return None  # with an error of its own, this rank re-raises it


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
