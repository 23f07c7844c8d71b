"""``method="gates"``: :class:`~l0_calibrate.SparseCalibrationWeights` trained by the fused gate engine.

Runs in one process or column-sharded over a process group (the reducer
decides); with the same seed both give the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..distributed import ShardedCalibrationWeights
from ..distributed_reducer import LocalReducer, ProcessGroupReducer
from ..problem import Problem
from ..stages import StageClock
from ..weights import SparseCalibrationWeights
from .base import MethodOptions, Solution

__all__ = ["GatesOptions", "run", "start_weight"]


@dataclass
class GatesOptions(MethodOptions):
    """Options of ``method="gates"``: :class:`MethodOptions` and these, with their defaults.

    Attributes
    ----------
    loss : str or callable, default "relative"
        Calibration loss (see :func:`l0_calibrate.get_loss`).
    lambda_l0 : float or None
        L0 penalty; None: 0 with a ``target_count`` (the count is enforced
        exactly), else 0.01.
    lambda_l2 : float, default 0
        L2 penalty on the weights.
    init_keep_prob : float, default 0.5
        Initial probability that a gate is open.
    lambda_dispersion : float, default 0
        Weight of the weights' CV^2.
    temperature_schedule, final_temperature : optional
        Temperature schedule of the gates.
    target_groups, normalize_groups, group_multipliers
        The target grouping of the loss (as given to ``calibrate``).

    Without ``problem.design_weights`` every household starts at
    :func:`start_weight`; ``max_weight_ratio=None`` leaves the weights unbounded.

    Examples
    --------
    >>> GatesOptions(target_count=10).lambda_l0, GatesOptions().lambda_l0
    (0.0, 0.01)
    """

    loss: str | Callable[..., Any] = "relative"
    lambda_l0: float | None = None
    lambda_l2: float = 0.0
    init_keep_prob: float = 0.5
    lambda_dispersion: float = 0.0
    temperature_schedule: str | Callable[..., float] | None = None
    final_temperature: float | None = None
    target_groups: Sequence[Hashable] | None = None
    normalize_groups: bool = True
    group_multipliers: Mapping[Hashable, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_l0 is None:
            self.lambda_l0 = 0.0 if self.target_count is not None else 0.01


def start_weight(problem: Problem, reducer: LocalReducer) -> float:
    """One weight for every household: the median of ``target_i / (M 1)_i`` over positive rows.

    The row sums are added up over the ranks, so every rank gets the
    single-process value.

    Examples
    --------
    >>> from l0_calibrate.problem import build_problem
    >>> p = build_problem(np.array([[1.0, 1.0]]), [10.0], n_features=2, dtype=torch.float64, device="cpu")
    >>> round(start_weight(p, LocalReducer(2)), 9)
    5.0
    """
    row_sums = problem.row_sums()
    if isinstance(reducer, ProcessGroupReducer):
        local = torch.as_tensor(row_sums, dtype=torch.float64, device=reducer.device)
        with torch.no_grad():
            row_sums = reducer.all_reduce_sum(local.clone()).cpu().numpy()
    targets = np.asarray(problem.targets, dtype=np.float64)
    ok = (row_sums > 0) & (targets > 0)
    if not ok.any():
        return 1.0
    return float(np.exp(np.median(np.log(targets[ok] / row_sums[ok]))))


def _model(
    n_local: int, design: np.ndarray | None, options: GatesOptions, reducer: LocalReducer
) -> SparseCalibrationWeights:
    """The model for this process's households: sharded over the reducer's group, or plain."""
    init = design if design is not None else 1.0
    common: dict[str, Any] = dict(
        init_keep_prob=options.init_keep_prob,
        init_weights=init,
        seed=options.seed,
        device=options.device,
        dtype=options.dtype,
    )
    if isinstance(reducer, ProcessGroupReducer):
        return ShardedCalibrationWeights(
            reducer.shard.n_total, shard=reducer.shard, group=reducer.group, **common
        )
    return SparseCalibrationWeights(n_local, distributed=False, **common)


def run(problem: Problem, options: GatesOptions, reducer: LocalReducer) -> Solution:
    """Train the gates on ``problem`` (this process's households) and return the weights.

    Parameters
    ----------
    problem : Problem
        The validated problem (operator, targets, names, loss weights, design weights).
    options : GatesOptions
        The method's options.
    reducer : LocalReducer or ProcessGroupReducer
        Sums over the ranks (the identity in one process).

    Returns
    -------
    Solution

    Examples
    --------
    >>> from l0_calibrate.problem import build_problem
    >>> p = build_problem(np.eye(2), [1.0, 2.0], n_features=2, dtype=torch.float32, device="cpu")
    >>> sol = run(p, GatesOptions(epochs=300, polish=True), LocalReducer(2))
    >>> np.round(sol.weights, 4).tolist(), sol.stage_times.keys() >= {"prepare", "fit"}
    ([1.0, 2.0], True)
    """
    clock = StageClock()
    clock.start("prepare")
    design = problem.design_weights
    model = _model(problem.n_households, design, options, reducer)
    if design is None:
        scale = start_weight(problem, reducer)
        with torch.no_grad():
            model.log_weight.fill_(float(np.log(scale + 1e-8)))
            model.get_buffer("initial_weights").fill_(scale)
    clock.stop("prepare")
    clock.start("fit", "gate engine and its polish")
    model.fit(
        problem.op,
        problem.targets,
        lambda_l0=0.0 if options.lambda_l0 is None else options.lambda_l0,
        lambda_l2=options.lambda_l2,
        lr=options.lr,
        epochs=options.epochs,
        loss_type=options.loss,
        verbose=options.verbose,
        verbose_freq=options.verbose_freq,
        target_groups=options.target_groups,
        normalize_groups=options.normalize_groups,
        group_multipliers=options.group_multipliers,
        target_count=options.target_count,
        temperature_schedule=options.temperature_schedule,
        final_temperature=options.final_temperature,
        callbacks=options.callbacks,
        progress=options.progress,
        target_names=problem.names,
        design_weights=design,
        lambda_distance=options.lambda_distance,
        distance=options.distance,
        lambda_dispersion=options.lambda_dispersion,
        max_weight_ratio=options.max_weight_ratio,
        polish=bool(options.polish),
    )
    clock.stop("fit")
    weights = model._deterministic_weights().detach().to("cpu", torch.float64).numpy()
    return Solution(
        weights=weights,
        history=list(model.history_),
        model=model,
        stage_times=dict(clock.times),
        epochs=model.epochs_trained,
    )
