"""``fit(..., polish=True)``: the exact re-calibration of the kept households at the end of a fit.

After the gates have chosen the households, :func:`polish_in_fit` re-solves
their weights exactly on the targets (:func:`l0_calibrate.polish.polish_weights`)
and writes them back into the model's parameters. Sharded, the kept
columns are small, so every rank gathers all of them, runs the same
deterministic solve and keeps its own part.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from l0_core import fused_median_gates, median_gate_limits
from torch import Tensor

from .distributed_reducer import LocalReducer
from .fit_options import FitOptions, design_weights_of
from .polish import polish_weights
from .problem import Problem
from .views import gather_columns

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = ["polish_in_fit"]


@torch.no_grad()
def polish_in_fit(
    model: SparseCalibrationWeights, problem: Problem, opts: FitOptions, red: LocalReducer
) -> None:
    """Re-solve the kept households' weights exactly and set ``model.polish_result_``.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> from l0_calibrate.problem import prepare_problem
    >>> model = SparseCalibrationWeights(2, init_keep_prob=0.999, seed=0)
    >>> pb = prepare_problem(np.eye(2), [2.0, 3.0], n_features=2, dtype=torch.float32, device="cpu")
    >>> polish_in_fit(model, pb, FitOptions(), model.reducer)
    >>> [round(v, 3) for v in model.get_weights(deterministic=True).tolist()]
    [2.0, 3.0]
    """
    w = model._deterministic_weights()
    support = torch.nonzero(w > 0).flatten().cpu().numpy()
    if red.sharded:
        _polish_sharded(model, problem, opts, red, support)
        return
    if support.size == 0:
        return
    design = opts.design_weights
    if design is None:
        design = model.initial_weights.clamp_min(1e-8).cpu().numpy()
    res = polish_weights(
        problem.op,
        problem.targets,
        support,
        design_weights=design,
        distance=opts.distance,
        max_weight_ratio=opts.max_weight_ratio,
        target_weights=problem.loss_weights,
    )
    model.polish_result_ = res
    _apply_polish(model, support, torch.as_tensor(res.weights[support]))


def _apply_polish(model: SparseCalibrationWeights, support: Any, new_w_support: Tensor) -> None:
    """Set the weights of the kept households (local indices ``support``) to the polished ones."""
    m = model
    new_w = new_w_support.to(device=m.device, dtype=m.log_weight.dtype)
    gates = fused_median_gates(m.log_alpha, **m._gate_kw())
    sup = torch.as_tensor(support, device=m.device, dtype=torch.int64)
    keep = new_w > 0
    pos = sup[keep]
    m.log_weight[pos] = torch.log(new_w[keep] / gates[pos])
    dropped = sup[~keep]
    off = median_gate_limits(m.beta, m.gamma, m.zeta)[0] - 0.5
    m.log_alpha[dropped] = torch.clamp(m.log_alpha[dropped], max=off)


def _polish_sharded(
    model: SparseCalibrationWeights,
    problem: Problem,
    opts: FitOptions,
    red: LocalReducer,
    support: Any,
) -> None:
    """Polishing over ranks: the kept columns are small, so every rank gathers all of them.

    Each rank sends its kept columns of ``M`` (float64, in global column
    order), their reference weights and its sum of reference weights;
    every rank then runs the same deterministic
    :func:`~l0_calibrate.polish.polish_weights` on the gathered columns,
    with the single-process reference weights ``q_k = d_k * sum(d) /
    sum_{kept} d``, and keeps its own part of the solution.
    """
    import scipy.sparse as sp

    op = problem.op
    d = design_weights_of(model, opts).to("cpu", torch.float64).numpy()
    rows = gather_columns(op, support)  # kept households x targets, float64 (no whole copy)
    pieces = red.all_gather_object((rows, d[support], float(d.sum())))
    sizes = [p[0].shape[0] for p in pieces]
    if sum(sizes) == 0:
        return
    X = sp.vstack([p[0] for p in pieces], format="csr").T.tocsr()
    kept = np.concatenate([p[1] for p in pieces])
    q = kept * (float(np.sum([p[2] for p in pieces])) / kept.sum())
    res = polish_weights(
        X,
        problem.targets,
        np.arange(kept.size),
        init_weights=q,
        distance=opts.distance,
        max_weight_ratio=opts.max_weight_ratio,
        target_weights=problem.loss_weights,
    )
    rank = red.shard.rank
    offset = sum(sizes[:rank])
    mine = res.weights[offset : offset + sizes[rank]]
    local = np.zeros(model.n_features)
    local[support] = mine
    model.polish_result_ = dataclasses.replace(res, weights=local)
    if support.size:
        _apply_polish(model, support, torch.as_tensor(mine))
