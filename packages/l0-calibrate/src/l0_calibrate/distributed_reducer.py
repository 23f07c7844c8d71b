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

:class:`LocalReducer` (:mod:`~l0_calibrate.reducer_local`) is the identity
(one process holds everything); :class:`ProcessGroupReducer`
(:mod:`~l0_calibrate.reducer_process_group`) does the same over a
:mod:`torch.distributed` process group. Only target-sized vectors and scalars
cross the network. :func:`model_reducer` picks one when a model is built.
The group helpers (:mod:`~l0_calibrate.distributed_group`) and the column
layout (:mod:`~l0_calibrate.distributed_shard`) are re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .distributed_group import (
    RankLostError,
    all_reduce_sum,
    group_initialized,
    is_lost_peer_error,
    stop_together,
    use_sharding,
)
from .distributed_shard import ColumnShard, cut_to_shard, sortable_keys
from .reducer_local import LocalReducer
from .reducer_process_group import NOISE_MODES, ProcessGroupReducer

__all__ = [
    "NOISE_MODES",
    "ColumnShard",
    "LocalReducer",
    "ProcessGroupReducer",
    "RankLostError",
    "all_reduce_sum",
    "cut_to_shard",
    "group_initialized",
    "is_lost_peer_error",
    "model_reducer",
    "sortable_keys",
    "stop_together",
    "use_sharding",
]


def model_reducer(
    n_features: int,
    *,
    distributed: bool | None = None,
    device: torch.device | str | None = None,
    shard: ColumnShard | None = None,
    group: Any = None,
    noise: str = "global",
    always_shard: bool = False,
) -> LocalReducer:
    """The reducer a calibration model uses, resolved once when it is built.

    ``SparseCalibrationWeights(n_features, distributed=...)`` follows
    :func:`use_sharding`: outside a process group (or with
    ``distributed=False``) a :class:`LocalReducer` over ``n_features``
    columns; inside one, a :class:`ProcessGroupReducer` whose layout is every
    rank's ``n_features`` (this rank's column count) in rank order.
    ``always_shard=True`` (``ShardedCalibrationWeights``) always gives a
    :class:`ProcessGroupReducer` with ``n_features`` the total count and
    ``shard`` (default: the even split) this rank's part.

    Examples
    --------
    >>> type(model_reducer(4)).__name__, type(model_reducer(4, always_shard=True)).__name__
    ('LocalReducer', 'ProcessGroupReducer')
    """
    if always_shard:
        if distributed is not None:
            if distributed is False or not isinstance(distributed, (bool, np.bool_)):
                raise ValueError(
                    f"ShardedCalibrationWeights always shards; got distributed={distributed!r}. "
                    "Use SparseCalibrationWeights(..., distributed=False) for an unsharded model"
                )
            use_sharding(True, group)  # raises outside a process group
        if shard is None:
            shard = ColumnShard.even(n_features, group=group)
        elif not isinstance(shard, ColumnShard):
            raise TypeError(f"shard must be a ColumnShard, got {type(shard).__name__}")
        elif shard.n_total != n_features:
            raise ValueError(
                f"shard covers {shard.n_total} columns in total but n_features={n_features}; "
                "pass the total number of households as n_features"
            )
    elif use_sharding(distributed, group):
        # n_features is this rank's column count; the layout is every rank's, in rank order
        shard = ColumnShard.from_local_count(n_features, group=group)
    else:
        return LocalReducer(n_features)
    return ProcessGroupReducer(shard, group, device=device, noise=noise)
