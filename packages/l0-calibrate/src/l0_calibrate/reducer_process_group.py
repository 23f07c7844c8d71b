"""The reducer over a :mod:`torch.distributed` process group (one :class:`ColumnShard` per rank).

See :mod:`l0_calibrate.distributed_reducer` for what a reducer does.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .distributed_group import (
    RankLostError,
    _AllReduceSum,
    _collective_device,
    _dist,
    _raise_any_failure,
    _rank_and_size,
)
from .distributed_shard import ColumnShard, _digest, _local_top_k, cut_to_shard, sortable_keys
from .inputs import group_weights, row_signs, unreachable
from .reducer_local import LocalReducer

__all__ = ["NOISE_MODES", "ProcessGroupReducer"]

NOISE_MODES = ("global", "local")


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
        self._shard = shard
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
    def shard(self) -> ColumnShard:
        """This rank's columns."""
        return self._shard

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self._shard.world_size

    def lost_ranks(self, wait_s: float = 2.0) -> list[int]:
        """After a failed collective: the ranks that did not fail too (so are frozen or gone).

        Every surviving rank marks itself in the process group's key-value
        store; after up to ``wait_s`` seconds the ranks without a mark are
        the lost ones. With two ranks the lost one is the other; when the
        store cannot be reached, every other rank is named.
        """
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

    def lost_rank_error(self, exc: BaseException, checkpoint: str | None) -> RankLostError:
        """The error a surviving rank raises when a peer stopped answering in a collective.

        ``checkpoint`` is this rank's newest checkpoint of the fit (None when
        it wrote none); the message says how to resume from it.
        """
        lost = self.lost_ranks()
        who = ", ".join(str(r) for r in lost)
        resume = (
            f"resume every rank from its newest checkpoint (this rank's: {checkpoint!r}; "
            "ShardCheckpoint.latest(path_template, rank=r) finds each rank's)"
            if checkpoint is not None
            else "no checkpoint was written by this fit; pass callbacks=[ShardCheckpoint("
            "'ckpt/rank{rank}-{epoch}.pt', every=...)] to be able to resume"
        )
        return RankLostError(
            f"rank {self.shard.rank} lost rank(s) {who} of {self.world_size}: a collective failed "
            f"({str(exc).splitlines()[0][:200]}). The rank is frozen, killed or cut off (the wait is "
            f"bounded by the process-group timeout: init_distributed(timeout_s=...), l0-calibrate run "
            f"--timeout). Stop the job and {resume}",
            lost,
            checkpoint,
        )

    def _count(self, tensor: Tensor) -> None:
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        self.calls += 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over the ranks (differentiable, see :func:`all_reduce_sum`)."""
        self._count(tensor)
        if self.world_size == 1:
            return tensor
        return _AllReduceSum.apply(tensor, self.group)

    def model_seed(self, seed: int | None) -> int:
        """The seed of this rank's model generator (a collective call when ``seed`` is None).

        ``seed``, or rank 0's draw from torch's global generator, shared by all
        ranks; with ``noise="local"`` a per-rank stream derived from it and the
        rank's first column.
        """
        if seed is not None:
            shared = int(seed)
        else:
            drawn = int(torch.randint(0, 2**62, (1,)).item())
            if self.world_size == 1:
                shared = drawn
            else:
                t = torch.tensor(
                    [drawn if self.shard.rank == 0 else 0], dtype=torch.int64, device=self.device
                )
                shared = int(self.reduce_op(t, "SUM").item())
        if self.noise != "local":
            return shared
        state = np.random.SeedSequence([shared % 2**63, self.shard.start]).generate_state(
            1, np.uint64
        )
        return int(state[0] % np.uint64(2**63))

    def reduce_op(self, tensor: Tensor, op: str) -> Tensor:
        """All-reduce ``tensor`` in place with ``op`` (``"SUM"``, ``"MAX"``...); not differentiable."""
        self._count(tensor)
        if self.world_size > 1:
            dist = _dist()
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op), group=self.group)
        return tensor

    _reduce_op = reduce_op  # the earlier private name

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        return bool(self.reduce_op(t, "MAX").item())

    # -- random numbers
    def normal_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """This rank's slice of ``randn(n_total)`` (``"global"``) or ``n`` own draws (``"local"``)."""
        if self.noise == "local":
            return torch.randn(n, generator=generator, device=device, dtype=dtype)
        full = torch.randn(self.n_total, generator=generator, device=device, dtype=dtype)
        return full[self.shard.columns].clone()

    def uniform_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """This rank's slice of ``rand(n_total)`` (``"global"``) or ``n`` own draws (``"local"``)."""
        if self.noise == "local" or self.world_size == 1:
            return torch.rand(n, generator=generator, device=device, dtype=dtype)
        full = torch.rand(self.n_total, generator=generator, device=device, dtype=dtype)
        return full[self.shard.columns]

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
        return int(self.reduce_op(t, "SUM").item())

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
        lo_neg, hi = self.reduce_op(bounds, "MAX").tolist()
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
        counts = self.reduce_op(per_rank, "SUM").tolist()
        need = k - n_above
        take = max(0, min(need - sum(counts[: self.shard.rank]), counts[self.shard.rank]))
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
        high = self.reduce_op(t, "MAX").tolist()
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
        weights, _ = group_weights(
            target_groups,
            problem.targets.shape[0],
            normalize_groups=normalize_groups,
            group_multipliers=group_multipliers,
        )
        weights = np.array(weights, dtype=np.float64, copy=True)
        self.check_same_targets(np.asarray(problem.targets, dtype=np.float64), weights)
        local = np.stack(row_signs(problem.op)).astype(np.int64)  # (2, n_targets): any > 0, any < 0
        signs = self.reduce_op(torch.as_tensor(local, device=self.device), "MAX").cpu().numpy() > 0
        infeasible = unreachable(np.asarray(problem.targets), signs[0], signs[1])
        weights[infeasible] = 0.0
        # the Problem is frozen: its (per-call, unshared) arrays are updated in place
        problem.infeasible[:] = infeasible
        problem.loss_weights[:] = weights

    def event_info(self) -> dict[str, Any]:
        """``rank``, ``world_size`` and ``column_offset`` for callback events."""
        return {
            "rank": self.shard.rank,
            "world_size": self.world_size,
            "column_offset": self.shard.start,
        }
