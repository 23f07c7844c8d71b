"""The identity reducer: a fit whose household columns all live in this process.

See :mod:`l0_calibrate.distributed_reducer` for what a reducer does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from .distributed_shard import ColumnShard, _local_top_k

__all__ = ["LocalReducer"]


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
    group: Any = None
    noise = "global"

    def __init__(self, n_total: int) -> None:
        self.n_total = int(n_total)

    @property
    def world_size(self) -> int:
        """1: one process."""
        return 1

    @property
    def shard(self) -> ColumnShard:
        """All ``n_total`` columns (rank 0 of 1)."""
        return ColumnShard(self.n_total, 0, self.n_total)

    def model_seed(self, seed: int | None) -> int:
        """The seed of a model's generator: ``seed``, or a draw from torch's global generator."""
        if seed is not None:
            return int(seed)
        return int(torch.randint(0, 2**62, (1,)).item())

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` itself."""
        return tensor

    def reduce_op(self, tensor: Tensor, op: str) -> Tensor:
        """``tensor`` itself (``op`` is ``"SUM"``, ``"MAX"``...: one process has nothing to combine)."""
        return tensor

    def any(self, flag: bool) -> bool:
        """``bool(flag)``."""
        return bool(flag)

    def normal_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``n`` standard normal draws from ``generator``."""
        return torch.randn(n, generator=generator, device=device, dtype=dtype)

    def uniform_noise(
        self, n: int, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """``n`` uniform draws in ``[0, 1)`` from ``generator``."""
        return torch.rand(n, generator=generator, device=device, dtype=dtype)

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

    def reduce_problem(
        self,
        problem: Any,
        *,
        target_groups: Any = None,
        normalize_groups: bool = True,
        group_multipliers: Mapping[Hashable, float] | None = None,
    ) -> None:
        """Nothing to do: the problem is already whole."""

    def event_info(self) -> dict[str, Any]:
        """No extra keys for callback events."""
        return {}
