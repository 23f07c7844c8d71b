"""``calibrate(...)`` inside a process group: each rank passes its households, gets its weights.

:func:`l0_calibrate.calibrate` hands over to :func:`calibrate_sharded` when
it runs sharded (``distributed=None`` inside a process group of several
ranks, or ``distributed=True``). The fit is the column-sharded
:class:`~l0_calibrate.ShardedCalibrationWeights` fit (the gate engine,
``method="gates"``), which with the same seed gives the weights of the
single-process ``calibrate(..., method="gates")``; the report, the
diagnostics and the history are computed over all ranks and are the same on
every rank, while ``weights`` holds this rank's households only
(:func:`l0_calibrate.gather_weights` collects them on rank 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .distributed_reducer import ColumnShard, ProcessGroupReducer, cut_to_shard, stop_together
from .frontend import CalibrationResult, _exact_estimates, _report, mark_misses
from .inputs import as_vector, is_dataframe
from .problem import prepare_problem

__all__ = ["ShardedCalibrationResult", "calibrate_sharded"]


@dataclass(repr=False)
class ShardedCalibrationResult(CalibrationResult):
    """What :func:`~l0_calibrate.calibrate` returns on each rank of a sharded run.

    As :class:`~l0_calibrate.CalibrationResult`, except that ``weights`` holds
    this rank's households (indexed by their labels, or by their global
    column numbers ``shard.start .. shard.stop - 1``) and ``model`` is the
    rank's :class:`~l0_calibrate.ShardedCalibrationWeights`. ``report``,
    ``history``, ``diagnostics``, ``holdout``, :attr:`n_active` and
    :meth:`summary` cover all ranks and are the same on every rank.

    Attributes
    ----------
    shard : ColumnShard
        This rank's households.
    n_active_total : int
        Households with a non-zero weight over all ranks.

    Examples
    --------
    >>> from l0_calibrate import calibrate
    >>> res = calibrate(np.eye(2), [1.0, 2.0], epochs=5, distributed=None)  # no process group
    >>> isinstance(res, ShardedCalibrationResult)
    False
    """

    shard: ColumnShard | None = None
    n_active_total: int = 0

    @property
    def n_active(self) -> int:
        """Number of households with a non-zero weight, over all ranks."""
        return int(self.n_active_total)

    def __repr__(self) -> str:
        s = self.shard
        where = (
            "" if s is None else f"rank={s.rank}/{s.world_size}, columns=[{s.start}, {s.stop}), "
        )
        return "Sharded" + super().__repr__().replace(
            "CalibrationResult(", "CalibrationResult(" + where, 1
        )


def _reduce(red: ProcessGroupReducer, values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over the ranks."""
    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64), device=red.device).clone()
    return red._reduce_op(t, "SUM").cpu().numpy()


def _sharded_diagnostics(
    red: ProcessGroupReducer, w: np.ndarray, init: np.ndarray | None, n_total: int
) -> dict[str, Any]:
    """:func:`l0_calibrate.diagnostics.weight_diagnostics` over all ranks' weights.

    Only the non-zero weights (and their design weights) are gathered; the
    household count and the design total are all-reduced.
    """
    try:
        from .diagnostics import weight_diagnostics
    except ImportError:  # pragma: no cover - diagnostics ships with the package
        return {}
    nz = w > 0
    pieces = red.all_gather_object((w[nz], None if init is None else init[nz]))
    kept = np.concatenate([p[0] for p in pieces])
    if init is None:
        out = weight_diagnostics(kept)
    else:
        d_kept = np.concatenate([p[1] for p in pieces])
        out = weight_diagnostics(kept, design_weights=d_kept)
        d_total = float(_reduce(red, np.array([init.sum()]))[0])
        if kept.size:
            adj = kept / d_kept * (d_kept.sum() / d_total)
            out.update(min_adjustment=float(adj.min()), max_adjustment=float(adj.max()))
    out.update(n=int(n_total), sparsity=float(1.0 - kept.size / n_total))
    return out


def calibrate_sharded(
    estimate_matrix: Any,
    targets: Any,
    *,
    target_count: int | float | None = None,
    target_names: Sequence[str] | None = None,
    target_groups: Sequence[Hashable] | None = None,
    normalize_groups: bool = True,
    group_multipliers: Mapping[Hashable, float] | None = None,
    design_weights: Any = None,
    household_index: Any = None,
    loss: str | Callable = "relative",
    epochs: int = 1000,
    lr: float = 0.05,
    lambda_l0: float | None = None,
    lambda_l2: float = 0.0,
    init_keep_prob: float | None = None,
    polish: bool | None = None,
    distance: str = "raking",
    lambda_distance: float = 0.0,
    lambda_dispersion: float | None = None,
    max_weight_ratio: Any = None,
    band: float | None = 0.05,
    method: str | None = None,
    beta_schedule: str | Callable | None = None,
    final_beta: float | None = None,
    holdout_matrix: Any = None,
    holdout_totals: Any = None,
    holdout_names: Sequence[str] | None = None,
    callbacks: Sequence[Callable[[dict], Any]] | None = None,
    log_freq: int = 100,
    verbose: bool = False,
    progress: bool | None = None,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    distributed: bool | None = True,
    tolerance: float = 0.05,
) -> ShardedCalibrationResult:
    """Column-sharded :func:`~l0_calibrate.calibrate`: call it on every rank (collective).

    Arguments as for :func:`l0_calibrate.calibrate`, with these differences:

    Parameters
    ----------
    estimate_matrix : matrix, pandas.DataFrame or path
        This rank's households: ``(n_targets, n_local)`` or a DataFrame of
        ``n_local`` households x targets; the layout is every rank's count in
        rank order. Or a path (``.npz``, ``.npy``, ``.parquet``, ``.csv``)
        to a file of *all* households: its household count is the total and
        each rank reads only its share of the even split
        (:meth:`ColumnShard.even`).
    targets, target_names, target_groups, normalize_groups, group_multipliers
        The full, identical target options on every rank (a rank with
        different ones makes every rank raise a ``ValueError``).
    design_weights, household_index : array-like, optional
        This rank's values (``n_local``) or all households' (each rank keeps
        its slice).
    method : {None, "gates"}
        Only the gate engine runs sharded; ``"select"`` raises.
    band : float or None
        Used by ``method="select"`` only; ignored here.
    holdout_matrix : matrix, optional
        This rank's households of the holdout variables.
    distributed : bool or None
        Kept for the signature of ``calibrate``; this function always shards.

    Returns
    -------
    ShardedCalibrationResult

    Examples
    --------
    Run under ``torchrun --nproc-per-node 2``; each rank passes its columns:

    >>> import torch.distributed as dist  # doctest: +SKIP
    >>> dist.init_process_group("gloo")  # doctest: +SKIP
    >>> M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])  # doctest: +SKIP
    >>> part = M[:, :2] if dist.get_rank() == 0 else M[:, 2:]  # doctest: +SKIP
    >>> res = calibrate(part, [4.0, 10.0], target_count=2, epochs=300)  # doctest: +SKIP
    >>> res.n_active, len(res.weights)  # doctest: +SKIP
    (2, 2)
    """
    import pandas as pd

    from .distributed import ShardedCalibrationWeights

    shard: ColumnShard | None = None
    # a rank whose own arguments fail must not leave the others waiting in a collective
    with stop_together("checking its calibrate arguments"):
        if method not in (None, "gates"):
            if method == "select":
                raise ValueError(
                    "method='select' needs all households in one process and cannot run column-sharded; "
                    "pass method='gates' (the default inside a process group), or distributed=False to "
                    "run an independent select fit on every rank"
                )
            raise ValueError(f"method must be 'select' or 'gates', got {method!r}")
        if (holdout_matrix is None) != (holdout_totals is None):
            raise ValueError("pass both holdout_matrix and holdout_totals, or neither")
        if lambda_l0 is None:
            lambda_l0 = 0.0 if target_count is not None else 0.01
        if polish is None:
            polish = target_count is not None

        if isinstance(estimate_matrix, (str, os.PathLike)):
            from .distributed_io import load_columns, matrix_shape

            shard = ColumnShard.even(matrix_shape(estimate_matrix)[1])
            estimate_matrix = load_columns(estimate_matrix, shard)
        else:
            n_local = int(
                estimate_matrix.shape[0] if is_dataframe(estimate_matrix) else estimate_matrix.shape[1]
            )
    if shard is None:
        shard = ColumnShard.from_local_count(n_local)
    n_local, n_total = shard.n_local, shard.n_total
    init = None
    with stop_together("checking its design_weights"):
        if design_weights is not None:
            local = cut_to_shard(design_weights, shard, "design_weights")
            init = as_vector(local, "design_weights", n_local, what="one per household")
            if (init <= 0).any():
                raise ValueError("design_weights must be positive; drop zero-weight households first")
    model = ShardedCalibrationWeights(
        n_total,
        init_keep_prob=0.5 if init_keep_prob is None else init_keep_prob,
        init_weights=init if init is not None else 1.0,
        seed=seed,
        device=device,
        dtype=dtype,
        shard=shard,
    )
    red = model.reducer
    problem = prepare_problem(
        estimate_matrix,
        targets,
        n_features=n_local,
        dtype=dtype,
        device=device,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
        target_names=target_names,
        matrix_argument="estimate_matrix",
        targets_argument="targets",
    )
    # same targets everywhere (else every rank raises), infeasible over all ranks
    red.reduce_problem(
        problem,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
    )
    if init is None:  # calibrate's common starting weight, from row sums over all ranks
        op64 = problem.op.to(dtype=torch.float64)
        row_sums = _reduce(
            red,
            op64.matvec(torch.ones(n_local, dtype=torch.float64, device=op64.device)).cpu().numpy(),
        )
        ok = (row_sums > 0) & (problem.targets > 0)
        scale = (
            float(np.exp(np.median(np.log(problem.targets[ok] / row_sums[ok]))))
            if ok.any()
            else 1.0
        )
        with torch.no_grad():
            model.log_weight.fill_(float(np.log(scale + 1e-8)))
            model.initial_weights.fill_(scale)
    model.fit(
        problem.op,
        problem.targets,
        lambda_l0=lambda_l0,
        lambda_l2=lambda_l2,
        lr=lr,
        epochs=epochs,
        loss_type=loss,
        verbose=verbose,
        verbose_freq=log_freq,
        target_groups=target_groups,
        normalize_groups=normalize_groups,
        group_multipliers=group_multipliers,
        target_count=target_count,
        beta_schedule=beta_schedule,
        final_beta=final_beta,
        callbacks=callbacks,
        progress=progress,
        target_names=problem.names,
        design_weights=init,
        lambda_distance=lambda_distance,
        distance=distance,
        lambda_dispersion=0.0 if lambda_dispersion is None else lambda_dispersion,
        max_weight_ratio=max_weight_ratio,
        polish=polish,
    )
    w = model._deterministic_weights().detach().to("cpu", torch.float64).numpy()
    estimates = _reduce(red, _exact_estimates(estimate_matrix, problem, w))
    report = _report(estimates, problem.targets, problem.names, problem.groups)
    report["infeasible"] = problem.infeasible
    mark_misses(report, tolerance, warn=red.is_main, stacklevel=3)
    if household_index is not None:
        index = pd.Index(cut_to_shard(np.asarray(household_index), shard, "household_index"))
    elif problem.household_index is not None:
        index = problem.household_index
    else:
        index = pd.RangeIndex(shard.start, shard.stop)
    weights = pd.Series(w, index=index, name="weight")
    diagnostics = _sharded_diagnostics(red, w, init, n_total)
    holdout = None
    if holdout_matrix is not None:
        hold = prepare_problem(
            holdout_matrix,
            holdout_totals,
            n_features=n_local,
            dtype=torch.float64,
            device="cpu",
            target_names=holdout_names,
            matrix_argument="holdout_matrix",
            targets_argument="holdout_totals",
        )
        est = _reduce(red, hold.op.matvec(torch.as_tensor(w)).numpy())
        holdout = _report(est, hold.targets, hold.names, None)
    history = pd.DataFrame(
        [{k: v for k, v in h.items() if k not in ("weights", "model")} for h in model.history_]
    )
    if "n_nonzero" in diagnostics:
        n_active = int(diagnostics["n_nonzero"])
    else:  # pragma: no cover - diagnostics ships with the package
        n_active = int(_reduce(red, np.array([float((w > 0).sum())]))[0])
    return ShardedCalibrationResult(
        weights=weights,
        report=report,
        history=history,
        diagnostics=diagnostics,
        holdout=holdout,
        model=model,
        shard=shard,
        n_active_total=n_active,
    )
