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
from ..stages import StageClock
from ..weights import SparseCalibrationWeights
from .base import DEVICE, DTYPE, SEED, Solution

__all__ = ["GatesOptions", "run", "start_weight"]


@dataclass
class GatesOptions:
    """Options of ``method="gates"``, with their defaults (the ones :func:`~l0_calibrate.calibrate` uses).

    Attributes
    ----------
    target_count : int, float or None
        Households to keep (a count, or a fraction < 1); None: as many as the L0 penalty leaves.
    design_weights : numpy.ndarray or None
        Positive starting weights of this process's households; None: one
        common weight derived from the data (:func:`start_weight`).
    loss : str or callable, default "relative"
        Calibration loss (see :func:`l0_calibrate.get_loss`).
    epochs : int, default 1000
        Gate-training epochs.
    lr : float, default 0.05
        Adam learning rate.
    lambda_l0 : float or None
        L0 penalty; None: 0 with a ``target_count`` (the count is enforced
        exactly), else 0.01.
    lambda_l2 : float, default 0
        L2 penalty on the weights.
    init_keep_prob : float, default 0.5
        Initial probability that a gate is open.
    polish : bool or None
        Exact re-calibration of the kept households; None: with a ``target_count``.
    distance : str, default "raking"
        Calibration distance of the polish and of ``lambda_distance``.
    lambda_distance, lambda_dispersion : float, default 0
        Weights of the distance from the design weights and of the weights' CV^2.
    max_weight_ratio : float, (lo, hi) or None
        Bounds on ``w / d``; None: unbounded.
    beta_schedule, final_beta : optional
        Temperature schedule of the gates.
    callbacks : sequence of callables, optional
        Called with an event dict at every logging step.
    log_freq : int, default 100
        Epochs between logging steps.
    verbose : bool, default False
        Log the steps.
    progress : bool or None
        tqdm bar (None: with ``verbose``).
    seed : int or None, default 0
        Seed of the gate noise.
    device, dtype
        Where and in which precision to train (default CPU, float32).
    target_groups, normalize_groups, group_multipliers
        The target grouping of the loss (as given to ``calibrate``).

    Examples
    --------
    >>> GatesOptions(target_count=10).lambda_l0, GatesOptions().lambda_l0
    (0.0, 0.01)
    """

    target_count: int | float | None = None
    design_weights: np.ndarray | None = None
    loss: str | Callable[..., Any] = "relative"
    epochs: int = 1000
    lr: float = 0.05
    lambda_l0: float | None = None
    lambda_l2: float = 0.0
    init_keep_prob: float = 0.5
    polish: bool | None = None
    distance: str = "raking"
    lambda_distance: float = 0.0
    lambda_dispersion: float = 0.0
    max_weight_ratio: Any = None
    beta_schedule: str | Callable[..., float] | None = None
    final_beta: float | None = None
    callbacks: Sequence[Callable[[dict], Any]] | None = None
    log_freq: int = 100
    verbose: bool = False
    progress: bool | None = None
    seed: int | None = SEED
    device: str | torch.device = DEVICE
    dtype: torch.dtype = DTYPE
    target_groups: Sequence[Hashable] | None = None
    normalize_groups: bool = True
    group_multipliers: Mapping[Hashable, float] | None = None

    def __post_init__(self) -> None:
        if self.lambda_l0 is None:
            self.lambda_l0 = 0.0 if self.target_count is not None else 0.01
        if self.polish is None:
            self.polish = self.target_count is not None


def start_weight(problem: Any, reducer: LocalReducer) -> float:
    """One weight for every household: the median of ``target_i / (M 1)_i`` over positive rows.

    The row sums are added up over the ranks, so every rank gets the
    single-process value.

    Examples
    --------
    >>> from l0_calibrate.inputs import prepare_problem
    >>> p = prepare_problem(np.array([[1.0, 1.0]]), [10.0], n_features=2, dtype=torch.float64, device="cpu")
    >>> round(start_weight(p, LocalReducer(2)), 9)
    5.0
    """
    op64 = problem.op.to(dtype=torch.float64)
    ones = torch.ones(op64.shape[1], dtype=torch.float64, device=op64.device)
    with torch.no_grad():
        row_sums = op64.matvec(ones)
        if isinstance(reducer, ProcessGroupReducer):
            row_sums = reducer.all_reduce_sum(row_sums.to(reducer.device))
        row_sums = row_sums.cpu().numpy()
    targets = np.asarray(problem.targets, dtype=np.float64)
    ok = (row_sums > 0) & (targets > 0)
    if not ok.any():
        return 1.0
    return float(np.exp(np.median(np.log(targets[ok] / row_sums[ok]))))


def _model(n_local: int, options: GatesOptions, reducer: LocalReducer) -> SparseCalibrationWeights:
    """The model for this process's households: sharded over the reducer's group, or plain."""
    init = options.design_weights if options.design_weights is not None else 1.0
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


def run(problem: Any, options: GatesOptions, reducer: LocalReducer) -> Solution:
    """Train the gates on ``problem`` (this process's households) and return the weights.

    Parameters
    ----------
    problem : Problem
        The validated problem (operator, targets, names, loss weights).
    options : GatesOptions
        The method's options.
    reducer : LocalReducer or ProcessGroupReducer
        Sums over the ranks (the identity in one process).

    Returns
    -------
    Solution

    Examples
    --------
    >>> from l0_calibrate.inputs import prepare_problem
    >>> p = prepare_problem(np.eye(2), [1.0, 2.0], n_features=2, dtype=torch.float32, device="cpu")
    >>> sol = run(p, GatesOptions(epochs=300, polish=True), LocalReducer(2))
    >>> np.round(sol.weights, 4).tolist(), sol.stage_times.keys() >= {"prepare", "fit"}
    ([1.0, 2.0], True)
    """
    clock = StageClock()
    clock.start("prepare")
    model = _model(problem.op.shape[1], options, reducer)
    if options.design_weights is None:
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
        verbose_freq=options.log_freq,
        target_groups=options.target_groups,
        normalize_groups=options.normalize_groups,
        group_multipliers=options.group_multipliers,
        target_count=options.target_count,
        beta_schedule=options.beta_schedule,
        final_beta=options.final_beta,
        callbacks=options.callbacks,
        progress=options.progress,
        target_names=problem.names,
        design_weights=options.design_weights,
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
