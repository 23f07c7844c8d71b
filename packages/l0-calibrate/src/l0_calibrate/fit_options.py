"""The options of :meth:`SparseCalibrationWeights.fit` and their checks, before any training.

:class:`FitOptions` holds the keyword-only options beyond the published
ones; :func:`validate_fit` checks every argument once (raising a clear error
naming it), builds the :class:`~l0_calibrate.inputs.Problem` and resolves
``target_count`` and the re-fit length; :func:`weight_penalties` turns the
penalty options into the terms the fit loop adds to its gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from l0_core import TargetSparsityController, get_schedule, median_gate_limits
from l0_core.checks import check_float, check_int
from torch import Tensor

from . import regularizers as reg
from .callbacks import Callback
from .distributed_reducer import LocalReducer
from .inputs import (
    align_to_labels,
    as_vector,
)
from .losses import WeightPenalty, get_loss
from .problem import Problem, prepare_problem

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = [
    "DEFAULT_REFIT_EPOCHS",
    "design_weights_of",
    "FitDivergedError",
    "FitOptions",
    "InfeasibleTargetWarning",
    "max_selection_beta",
    "reducer_of",
    "shared_options",
    "validate_fit",
    "weight_penalties",
]


#: Epochs of the weight re-fit after the exact selection of ``target_count`` households.
DEFAULT_REFIT_EPOCHS = 200

#: Below this many non-zeros plus households a CPU fit runs on one thread (``num_threads=None``).
SMALL_PROBLEM = 2_000_000


class InfeasibleTargetWarning(UserWarning):
    """A target that non-negative weights cannot reach (no household contributes, or none with its sign)."""


class FitDivergedError(FloatingPointError):
    """The loss, the weights or the controller became NaN or infinite during a fit.

    The model is restored to its last finite state (see ``epoch``) before
    this is raised, so it can be saved, inspected or fitted again with
    other settings.

    Attributes
    ----------
    epoch : int
        Epochs trained in the restored state.
    """

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def max_selection_beta(gamma: float, zeta: float, bound: float) -> float:
    """Largest temperature at which the exact selection can fully open and fully close a gate.

    A gate is exactly 0 when ``log_alpha <= beta * log(-gamma / zeta)`` and
    exactly 1 when ``log_alpha >= beta * log((1 - gamma) / (zeta - 1))``;
    with ``|log_alpha| <= bound`` both need ``beta`` below this value.

    Examples
    --------
    >>> round(max_selection_beta(-0.1, 1.1, 20.0), 2)
    8.34
    """
    off, on = median_gate_limits(1.0, gamma, zeta)
    return bound / max(-off, on)


@dataclass
class FitOptions:
    """Keyword-only options of ``fit`` beyond the published ones (see ``fit``'s docstring)."""

    target_count: int | float | None = None
    refit_epochs: int | None = None
    count_lr: float = 0.5
    count_warmup: float = 0.5
    temperature_schedule: str | Callable[[float, float, float], float] | None = None
    final_temperature: float | None = None
    schedule_epochs: int | None = None
    callbacks: Sequence[Callback] | None = None
    progress: bool | None = None
    target_names: Sequence[str] | None = None
    design_weights: Any = None
    lambda_distance: float = 0.0
    distance: str = "chi2"
    lambda_dispersion: float = 0.0
    max_weight_ratio: Any = None
    lambda_ratio: float = 1.0
    polish: bool = False
    num_threads: int | None = None


def reducer_of(model: Any) -> LocalReducer:
    """The model's reducer (``model.reducer``), or the single-process identity for a model without one.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> reducer_of(SparseCalibrationWeights(3)).n_total
    3
    """
    red = getattr(model, "reducer", None)
    return red if isinstance(red, LocalReducer) else LocalReducer(model.n_features)


def design_weights_of(model: SparseCalibrationWeights, opts: FitOptions) -> Tensor:
    """This process's positive reference (design) weights: ``design_weights`` or the initial weights.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> design_weights_of(SparseCalibrationWeights(2, init_weights=3.0), FitOptions()).tolist()
    [3.0, 3.0]
    """
    if opts.design_weights is None:
        return model.initial_weights.clamp_min(1e-8)
    red = reducer_of(model)
    value = red.local_part(opts.design_weights, "design_weights")
    d = torch.as_tensor(as_vector(value, "design_weights", model.n_features), device=model.device)
    d = d.to(model.log_weight.dtype)
    if bool((d <= 0).any()):
        raise ValueError("design_weights must be positive; drop zero-weight households first")
    return d


def weight_penalties(
    model: SparseCalibrationWeights, opts: FitOptions, target_count: int | None
) -> list[tuple[float, WeightPenalty]]:
    """The penalties on ``w`` asked for by the options (calibration distance, dispersion, ratio).

    Each is ``(weight, function of w)``; sharded, the functions all-reduce
    their sums over households so every rank evaluates the single-process value.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> model = SparseCalibrationWeights(4)
    >>> weight_penalties(model, FitOptions(), None)
    []
    >>> [lam for lam, _ in weight_penalties(model, FitOptions(lambda_dispersion=0.5), None)]
    [0.5]
    """
    wants = (
        opts.lambda_distance > 0 or opts.lambda_dispersion > 0 or opts.max_weight_ratio is not None
    )
    if not wants:
        return []
    red = reducer_of(model)
    d = design_weights_of(model, opts)
    # Kept households carry the population: measure against design weights inflated
    # by n / target_count (l0_calibrate.regularizers.inflate_design_weights on average).
    ref = d * (red.n_total / target_count) if target_count else d
    if opts.max_weight_ratio is not None:
        reg.ratio_bounds(opts.max_weight_ratio)  # validates before work starts
    # sharded: each penalty's sums over households are all-reduced, so every rank
    # evaluates the single-process formula on all households (and gets its gradient)
    reduce = red.all_reduce_sum if red.sharded else None
    out: list[tuple[float, WeightPenalty]] = []
    if opts.lambda_distance > 0:
        kind = opts.distance
        out.append(
            (
                opts.lambda_distance,
                lambda w: reg.calibration_distance(w, ref, kind, active_only=True, reduce=reduce),
            )
        )
    if opts.lambda_dispersion > 0:
        out.append(
            (
                opts.lambda_dispersion,
                lambda w: reg.dispersion_penalty(w, reference=ref, reduce=reduce),
            )
        )
    if opts.max_weight_ratio is not None:
        bound = opts.max_weight_ratio
        out.append(
            (opts.lambda_ratio, lambda w: reg.ratio_bound_penalty(w, ref, bound, reduce=reduce))
        )
    return out


# --------------------------------------------------------------- validation
def validate_fit(
    model: SparseCalibrationWeights, args: dict[str, Any], opts: FitOptions
) -> tuple[Problem, Callable, int | None, int]:
    """Check every argument of ``fit`` once; the problem, the loss, the target count and the re-fit epochs.

    ``args`` holds the published arguments (and ``M``, ``y``); checked values
    replace the given ones in ``args`` and ``opts``. Each bad value raises a
    ``ValueError`` or ``TypeError`` naming the argument.

    Examples
    --------
    >>> import numpy as np
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> args = dict(M=np.eye(2), y=[1.0, 2.0], lambda_l0=0.01, lambda_l2=0.0, lr=0.1, epochs=5,
    ...             loss_type="mse", verbose_freq=1, target_groups=None, normalize_groups=True,
    ...             group_multipliers=None)
    >>> problem, loss, count, refit = validate_fit(SparseCalibrationWeights(2), args, FitOptions(target_count=1))
    >>> problem.targets.tolist(), count, refit
    ([1.0, 2.0], 1, 200)
    """
    args["lambda_l0"] = check_float(args["lambda_l0"], "lambda_l0", min_val=0.0)
    args["lambda_l2"] = check_float(args["lambda_l2"], "lambda_l2", min_val=0.0)
    args["lr"] = check_float(args["lr"], "lr", min_val=0.0, include_boundaries="right")
    args["epochs"] = check_int(args["epochs"], "epochs", min_val=0)
    args["verbose_freq"] = check_int(args["verbose_freq"], "verbose_freq", min_val=1)
    if opts.num_threads is not None:
        opts.num_threads = check_int(opts.num_threads, "num_threads", min_val=1)
    opts.count_lr = check_float(opts.count_lr, "count_lr", min_val=0.0, include_boundaries="right")
    opts.count_warmup = check_float(opts.count_warmup, "count_warmup", min_val=0.0)
    if opts.count_warmup > 1:
        raise ValueError(
            f"count_warmup is a fraction of epochs in [0, 1], got {opts.count_warmup!r}"
        )
    for name in ("lambda_distance", "lambda_dispersion", "lambda_ratio"):
        setattr(opts, name, check_float(getattr(opts, name), name, min_val=0.0))
    loss_fn = get_loss(args["loss_type"], "loss_type")
    if opts.temperature_schedule is not None:
        get_schedule(opts.temperature_schedule)  # unknown name -> ValueError listing them
        if opts.final_temperature is None:
            raise ValueError(
                "temperature_schedule needs final_temperature, the temperature to reach at the end"
            )
        opts.final_temperature = check_float(
            opts.final_temperature, "final_temperature", min_val=0.0, include_boundaries="right"
        )
    if opts.schedule_epochs is not None:
        opts.schedule_epochs = check_int(opts.schedule_epochs, "schedule_epochs", min_val=1)
    red = reducer_of(model)
    target_count = None
    if opts.target_count is not None:
        if not model.use_gates:
            raise ValueError("target_count needs gates; the model was built with use_gates=False")
        # counts households over all ranks when the columns are sharded
        target_count = TargetSparsityController.resolve_target(
            opts.target_count, red.n_total, argument="target_count"
        )
        limit = max_selection_beta(model.gamma, model.zeta, model.LOG_ALPHA_BOUND)
        for name, value in (("beta", model.beta), ("final_temperature", opts.final_temperature)):
            if value is not None and value >= limit:
                raise ValueError(
                    f"{name}={value:g} is too hot for target_count: with gamma={model.gamma:g}, "
                    f"zeta={model.zeta:g} and log_alpha bounded by {model.LOG_ALPHA_BOUND:g}, a gate "
                    f"can only be closed exactly at a temperature below {limit:.4g}, so the fit could "
                    f"not keep exactly {target_count} households; pass {name} < {limit:.4g} (e.g. "
                    "the default 2/3)"
                )
    refit = opts.refit_epochs
    if refit is None:
        refit = DEFAULT_REFIT_EPOCHS if target_count is not None else 0
    refit = check_int(refit, "refit_epochs", min_val=0)
    if opts.callbacks is not None:
        opts.callbacks = list(opts.callbacks)
        for cb in opts.callbacks:
            if not callable(cb):
                raise TypeError(
                    f"callbacks must be callables taking the event dict, got {type(cb).__name__}"
                )
    problem = prepare_problem(
        args["M"],
        args["y"],
        n_features=model.n_features,
        dtype=model.log_weight.dtype,
        device=model.log_weight.device,
        target_groups=args["target_groups"],
        normalize_groups=args["normalize_groups"],
        group_multipliers=args["group_multipliers"],
        target_names=opts.target_names,
    )
    if opts.design_weights is not None and not red.sharded:
        # a Series is aligned to the households: the DataFrame's index, else 0..n-1
        labels = problem.household_index
        opts.design_weights = align_to_labels(
            opts.design_weights,
            list(labels) if labels is not None else list(range(model.n_features)),
            "design_weights",
            "the households",
        )
    return problem, loss_fn, target_count, refit


def shared_options(args: dict[str, Any], opts: FitOptions) -> dict[str, str]:
    """The fit options every rank of a sharded fit must agree on, as comparable strings.

    Examples
    --------
    >>> args = dict(lambda_l0=0.01, lambda_l2=0.0, lr=0.1, epochs=5, loss_type="mse")
    >>> shared_options(args, FitOptions())["epochs"]
    '5'
    """

    def show(value: Any) -> str:
        if callable(value) and not isinstance(value, (int, float, str)):
            return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
        return repr(value)

    names = ("lambda_l0", "lambda_l2", "lr", "epochs", "loss_type")
    shared = {name: show(args[name]) for name in names}
    for name in (
        "target_count", "refit_epochs", "count_lr", "count_warmup", "temperature_schedule",
        "final_temperature", "schedule_epochs", "lambda_distance", "distance", "lambda_dispersion", "max_weight_ratio",
        "lambda_ratio", "polish",
    ):  # fmt: skip
        shared[name] = show(getattr(opts, name))
    return shared
