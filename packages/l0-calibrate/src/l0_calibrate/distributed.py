"""Column-sharded calibration on :mod:`torch.distributed`.

When the household columns do not fit one process (tens of millions once
geography is cloned), split them over several: each rank holds its block of
columns of ``M`` (household-major), its weights, gates and Adam state. Per
epoch a rank computes its partial estimates ``M_k w_k``; the target-sized
sum ``M w = sum_k M_k w_k`` is all-reduced, every rank evaluates the same
loss on it, and the gradient ``M_k^T r`` stays local. The target-count
controller and the penalties use all-reduced counts. Only target-sized
vectors and scalars cross the network.

With the default ``noise="global"`` every rank draws the random numbers of
*all* columns from the shared seed and keeps its slice, so a fit on any
number of ranks gives the weights of the single-process fit with the same
seed (up to the order of floating point sums).

Typical use, launched with ``torchrun --nproc-per-node N script.py``: the
plain API shards by itself inside a process group of several ranks
(``distributed=None``; pass ``distributed=False`` to opt out)::

    from l0_calibrate import SparseCalibrationWeights, gather_weights, init_distributed

    ctx = init_distributed()                       # gloo on CPU, NCCL on GPUs
    M_local = ...                                  # this rank's household columns
    model = SparseCalibrationWeights(M_local.shape[1], seed=0, device=ctx.device)
    model.fit(M_local, targets, target_count=50_000, epochs=1000, polish=True)
    weights = gather_weights(model)                # full vector on rank 0, None elsewhere

:class:`ShardedCalibrationWeights` takes the *total* household count and
an explicit layout instead (e.g. ``ShardedCalibrationWeights(n_total)`` with
``fit("matrix.npz", ...)``, which reads only this rank's columns).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import numpy as np
import torch
from l0_core import GAMMA, ZETA
from l0_core.checks import check_float, check_int
from torch import Tensor

from .distributed_group import _dist, group_initialized
from .distributed_reducer import ColumnShard, LocalReducer, ProcessGroupReducer, model_reducer
from .weights import SparseCalibrationWeights

__all__ = [
    "DistributedContext",
    "ShardedCalibrationWeights",
    "gather_weights",
    "init_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the process group.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of ranks, rank on this host.
    device : torch.device
        The device this rank should compute on (``cuda:<local_rank>`` with NCCL).
    backend : str
        ``"nccl"``, ``"gloo"``, or ``"none"`` outside a process group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def init_distributed(
    backend: str | None = None,
    *,
    device: torch.device | str | None = None,
    timeout_s: float = 1800.0,
) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (set by ``torchrun``). Without them (a plain ``python``
    run) no group is created and the context says world size 1, so the same
    script also runs on one process. Calling it inside an existing group
    only describes that group.

    Parameters
    ----------
    backend : {"nccl", "gloo"}, optional
        Default: ``"nccl"`` when NCCL is available and this host has a GPU
        for each of its processes (``LOCAL_WORLD_SIZE``), else ``"gloo"`` on
        CPU (two processes on a one-GPU machine use gloo).
    device : torch.device or str, optional
        Override the compute device (default ``cuda:<LOCAL_RANK>`` for NCCL,
        else CPU).
    timeout_s : float, default 1800
        Timeout of collective operations, in seconds.

    Returns
    -------
    DistributedContext

    Examples
    --------
    >>> ctx = init_distributed()  # not launched by torchrun: one process
    >>> ctx.world_size, ctx.backend
    (1, 'none')
    """
    if backend is not None and backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"backend must be 'nccl' or 'gloo' (or None to choose), got {backend!r}")
    check_float(timeout_s, "timeout_s", min_val=0.0, include_boundaries="right")
    dist = _dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not group_initialized():
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            dev = torch.device(device) if device is not None else torch.device("cpu")
            return DistributedContext(0, 1, 0, dev, "none")
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed; install a build with it")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if backend is None:
            # NCCL needs one GPU per process on this host; with fewer, stay on CPU with gloo
            use_nccl = dist.is_nccl_available() and gpus >= max(local_world, local_rank + 1)
            backend = "nccl" if use_nccl else "gloo"
        if backend == "nccl":
            if local_rank >= gpus:
                raise ValueError(
                    f"backend='nccl' needs one GPU per process, but local rank {local_rank} has none "
                    f"({gpus} GPU(s) visible on this host); launch at most {gpus} process(es) per "
                    "host (torchrun --nproc-per-node) or pass backend='gloo'"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=float(timeout_s)))
    used = dist.get_backend()
    if device is not None:
        dev = torch.device(device)
    elif used == "nccl":
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, str(used))


class ShardedCalibrationWeights(SparseCalibrationWeights):
    """:class:`SparseCalibrationWeights` that always shards, laid out from the *total* household count.

    ``SparseCalibrationWeights(n_local, ...)`` inside a process group of
    several ranks already shards (from this rank's column count; the layout
    is every rank's count, in rank order). This subclass only changes how
    the model is built: it takes the *total* number of households, an
    optional explicit ``shard`` (default: the even split), ``group`` and
    ``noise``, and shards even in a group of one rank (outside a process
    group it is the whole problem). It keeps the columns
    ``shard.start:shard.stop``. ``fit`` takes this rank's columns of ``M``
    (or a path to an ``.npz``/``.parquet``/``.npy``/``.csv`` file, of
    which it reads only those columns) and the full target vector, and
    runs the same fit as the single-process model, exchanging only
    target-sized vectors.

    ``forward``/``predict`` (estimates over all ranks), ``get_sparsity`` and
    ``fit`` are *collective*: call them on every rank. The per-household
    methods (``get_weights``, ``get_deterministic_gates``,
    ``get_active_weights``) and the penalties (``get_l0_penalty``,
    ``get_l2_penalty``) return this rank's part; sum a penalty over the
    ranks with ``model.reducer.all_reduce_sum``.

    Parameters
    ----------
    n_features : int
        Number of households over all ranks.
    beta, gamma, zeta, init_keep_prob, init_weights, log_weight_jitter_sd, log_alpha_jitter_sd, device, use_gates, seed
        As for :class:`SparseCalibrationWeights`. Per-household arrays may
        hold all ``n_features`` values (each rank keeps its slice) or this
        rank's ``shard.n_local``. ``seed=None`` uses rank 0's draw on every rank.
    dtype : torch.dtype, default torch.float32
        Parameter and matrix dtype.
    shard : ColumnShard, optional
        This rank's columns (default ``ColumnShard.even(n_features)``, contiguous
        near-equal blocks in rank order).
    group : ProcessGroup, optional
        Default: the whole world.
    noise : {"global", "local"}, default "global"
        How random numbers are drawn; ``"global"`` reproduces the
        single-process fit at any world size (see :class:`ProcessGroupReducer`).
    distributed : bool or None, default None
        ``None`` or ``True`` (``True`` raises outside a process group);
        ``False`` is refused -- use ``SparseCalibrationWeights(...,
        distributed=False)`` for an unsharded model.

    Attributes
    ----------
    n_features : int
        Columns on this rank (what ``M`` passed to ``fit`` must have).
    n_total : int
        Columns over all ranks.
    shard : ColumnShard
        This rank's layout.

    Examples
    --------
    Outside a process group the model is the whole problem (world size 1):

    >>> M = np.array([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0]])
    >>> model = ShardedCalibrationWeights(4, init_keep_prob=0.9, seed=0)
    >>> _ = model.fit(M, [6.0, 9.0], lambda_l0=0.001, lr=0.05, epochs=100, loss_type="relative")
    >>> twin = SparseCalibrationWeights(4, init_keep_prob=0.9, seed=0)
    >>> _ = twin.fit(M, [6.0, 9.0], lambda_l0=0.001, lr=0.05, epochs=100, loss_type="relative")
    >>> bool(torch.equal(model.log_weight, twin.log_weight))
    True
    """

    def __init__(
        self,
        n_features: int,
        beta: float = 2 / 3,
        gamma: float = GAMMA,
        zeta: float = ZETA,
        init_keep_prob: float | np.ndarray = 0.5,
        init_weights: float | np.ndarray | None = None,
        log_weight_jitter_sd: float = 0.0,
        log_alpha_jitter_sd: float = 0.01,
        device: str | torch.device = "cpu",
        use_gates: bool = True,
        seed: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        shard: ColumnShard | None = None,
        group: Any = None,
        noise: str = "global",
        distributed: bool | None = None,
    ) -> None:
        self._layout = (shard, group, noise)
        super().__init__(
            n_features,
            beta,
            gamma,
            zeta,
            init_keep_prob,
            init_weights,
            log_weight_jitter_sd,
            log_alpha_jitter_sd,
            device,
            use_gates,
            seed,
            dtype=dtype,
            distributed=distributed,
        )

    def _resolve_reducer(
        self, n_features: int, distributed: bool | None, device: str | torch.device
    ) -> LocalReducer:
        """Always a :class:`ProcessGroupReducer`: ``n_features`` is the total, cut by ``shard`` (default: even)."""
        shard, group, noise = self._layout
        return model_reducer(
            n_features,
            distributed=distributed,
            device=device,
            shard=shard,
            group=group,
            noise=noise,
            always_shard=True,
        )

    @property
    def reducer(self) -> ProcessGroupReducer:
        """The reducer this model's fits use (its ``bytes_reduced`` counts the traffic)."""
        return cast(ProcessGroupReducer, self._reducer)


@torch.no_grad()
def gather_weights(
    model: SparseCalibrationWeights | Any, dst: int = 0, *, deterministic: bool = True
) -> Tensor | Any | None:
    """All ranks' weights, in global column order, on rank ``dst`` (None elsewhere); collective.

    Parameters
    ----------
    model : SparseCalibrationWeights, ShardedCalibrationWeights or CalibrationResult
        A model (sharded or not; an unsharded one returns its own weights),
        or what :func:`l0_calibrate.calibrate` returned: then the result is
        a pandas Series of all households' weights with their labels.
    dst : int, default 0
        Rank (within the model's group) that receives the weights.
    deterministic : bool, default True
        Test-time gates (as used for the final weights).

    Returns
    -------
    Tensor of shape ``(n_total,)`` (a pandas Series for a calibrate result) on
    ``dst``, None on the other ranks.

    Examples
    --------
    >>> gather_weights(ShardedCalibrationWeights(3, init_weights=2.0, init_keep_prob=0.999)).tolist()
    [2.0, 2.0, 2.0]
    """
    if not isinstance(model, SparseCalibrationWeights) and hasattr(model, "weights"):
        # a calibrate() result (duck-typed, so that this layer needs no result type)
        return _gather_result_weights(model, dst)
    if not isinstance(model, SparseCalibrationWeights):
        raise TypeError(
            "model must be a SparseCalibrationWeights or a CalibrationResult, got "
            f"{type(model).__name__}"
        )
    w = model.get_weights(deterministic=deterministic).detach()
    red = model.reducer
    if not isinstance(red, ProcessGroupReducer) or red.world_size == 1:
        return w.clone()
    check_int(dst, "dst", min_val=0)
    if dst >= red.world_size:
        raise ValueError(f"dst must be a rank below world_size={red.world_size}, got {dst}")
    shard, dist = model.shard, _dist()
    layout = torch.zeros(2 * red.world_size, dtype=torch.int64, device=red.device)
    layout[2 * shard.rank] = shard.start
    layout[2 * shard.rank + 1] = shard.n_local
    counts = red.reduce_op(layout, "SUM").tolist()
    starts, sizes = counts[0::2], counts[1::2]
    width = max(sizes)
    padded = w.new_zeros(width)
    padded[: shard.n_local] = w
    global_dst = dst if red.group is None else dist.get_global_rank(red.group, dst)
    if shard.rank != dst:
        dist.gather(padded, None, dst=global_dst, group=red.group)
        return None
    parts = [torch.empty_like(padded) for _ in range(red.world_size)]
    dist.gather(padded, parts, dst=global_dst, group=red.group)
    out = w.new_empty(model.n_total)
    for start, size, part in zip(starts, sizes, parts, strict=True):
        out[start : start + size] = part[:size]
    return out


def _gather_result_weights(result: Any, dst: int) -> Any:
    """The weights Series of every rank's calibrate result, concatenated in rank order on ``dst``."""
    import pandas as pd

    shard = getattr(result, "shard", None)
    if shard is None or shard.world_size == 1:
        return result.weights.copy()
    red = result.model.reducer
    check_int(dst, "dst", min_val=0)
    if dst >= red.world_size:
        raise ValueError(f"dst must be a rank below world_size={red.world_size}, got {dst}")
    dist = _dist()
    global_dst = dst if red.group is None else dist.get_global_rank(red.group, dst)
    parts: list[Any] | None = [None] * red.world_size if shard.rank == dst else None
    dist.gather_object(result.weights, parts, dst=global_dst, group=red.group)
    if parts is None:
        return None
    return pd.concat(parts)
