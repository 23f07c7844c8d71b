"""``method="select"`` (the default with a ``target_count``): :func:`~l0_calibrate.selection.select_and_polish`.

Gate training picks the households, a discrete refinement exchanges them,
and the exact polish re-solves their weights. Needs every household in one
process.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..distributed_reducer import LocalReducer
from ..fitting import InfeasibleTargetWarning
from ..problem import Problem
from ..selection import select_and_polish
from .base import MethodOptions, Solution

__all__ = ["BAND", "SelectOptions", "run"]

#: Relative error every target should stay within when no exact solution exists.
BAND: float | None = 0.05


@dataclass
class SelectOptions(MethodOptions):
    """Options of ``method="select"``: :class:`MethodOptions` and these, with their defaults.

    ``None`` for ``lambda_dispersion``, ``max_weight_ratio`` and
    ``init_keep_prob`` means :func:`~l0_calibrate.selection.select_and_polish`'s
    own default (0.1, 10 and the automatic start).

    Attributes
    ----------
    init_keep_prob : float or None
        Initial gate location (``log_alpha = logit(p)``).
    lambda_dispersion : float or None
        Weight of the kept weights' CV^2.
    band : float or None, default 0.05
        See :data:`BAND`; None turns the band logic off.

    ``callbacks`` must stay None (the select pipeline has no callback hook);
    ``progress=None`` shows the bar only with ``verbose`` on a terminal.

    Examples
    --------
    >>> SelectOptions(target_count=5).polish, SelectOptions(target_count=5).band
    (True, 0.05)
    """

    init_keep_prob: float | None = None
    lambda_dispersion: float | None = None
    band: float | None = BAND

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.callbacks:
            raise ValueError(
                "callbacks need method='gates' (the select pipeline has no callback hook)"
            )


def run(problem: Problem, options: SelectOptions, reducer: LocalReducer) -> Solution:
    """Select ``options.target_count`` households of ``problem`` and polish their weights.

    Parameters
    ----------
    problem : Problem
        The validated problem (every household).
    options : SelectOptions
        The method's options.
    reducer : LocalReducer
        Must hold every household (``select`` does not shard).

    Returns
    -------
    Solution

    Examples
    --------
    >>> import torch
    >>> from l0_calibrate.problem import build_problem
    >>> X = (np.random.default_rng(0).random((3, 60)) < 0.5).astype(float)
    >>> p = build_problem(X, X.sum(axis=1), n_features=60, dtype=torch.float32, device="cpu")
    >>> sol = run(p, SelectOptions(target_count=12, epochs=100), LocalReducer(60))
    >>> int((sol.weights > 0).sum())
    12
    """
    if reducer.sharded:
        raise ValueError("method='select' needs all households in one process")
    if problem.infeasible.any():
        warnings.warn(
            f"{int(problem.infeasible.sum())} target(s) cannot be reached by non-negative weights (no household "
            f"contributes to them, or none with the target's sign): {', '.join(problem.infeasible_names[:10])}. "
            "They are left out and reported as infeasible.",
            InfeasibleTargetWarning,
            stacklevel=4,
        )
    optional = {
        "lambda_dispersion": options.lambda_dispersion,
        "max_weight_ratio": options.max_weight_ratio,
        "init_keep_prob": options.init_keep_prob,
    }
    res = select_and_polish(
        problem,  # its targets, loss weights and design weights
        target_count=options.target_count,
        distance=options.distance,
        lambda_distance=options.lambda_distance,
        epochs=options.epochs,
        lr=options.lr,
        polish=bool(options.polish),
        seed=options.seed,
        dtype=options.dtype,
        device=options.device,
        verbose_freq=options.verbose_freq,
        band=options.band,
        progress=options.progress
        if options.progress is not None
        else (None if options.verbose else False),
        **{k: v for k, v in optional.items() if v is not None},
    )
    stages = dict(res.diagnostics.get("stage_times", {}))
    history = list(res.history) + [
        {"epoch": float(options.epochs), "phase": name, "stage_seconds": secs}
        for name, secs in stages.items()
    ]
    bound = (
        "10 (the default)" if options.max_weight_ratio is None else repr(options.max_weight_ratio)
    )
    cause = (
        f"; {res.weights_at_bound} kept weight(s) sit at the weight-ratio bound max_weight_ratio={bound}: "
        "widen it (e.g. max_weight_ratio=None), keep more households, or pass design_weights"
        if res.weights_at_bound
        else "; keep more households or relax band"
    )
    return Solution(
        weights=np.asarray(res.weights, dtype=np.float64),
        history=history,
        diagnostics={
            "start_weight": res.diagnostics.get("start_weight", float("nan")),
            "weights_at_bound": int(res.weights_at_bound),
            "stage_devices": dict(res.diagnostics.get("stage_devices", {})),
        },
        stage_times=stages,
        epochs=options.epochs,
        unmet=np.asarray(res.unmet, dtype=np.int64),
        polish_error=None if res.polish is None else float(res.polish.max_abs_rel_error),
        unmet_cause=cause,
    )
