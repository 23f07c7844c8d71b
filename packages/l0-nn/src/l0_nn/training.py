"""Helpers a training loop needs: optimizer groups with a gate learning rate, per-layer stats."""

from __future__ import annotations

from typing import Any

import torch
from l0_core import deterministic_gates, is_gate, is_gated_layer, iter_gates
from l0_core.checks import check_float
from torch import nn

from .base import L0Layer

__all__ = ["gate_parameters", "weight_parameters", "param_groups", "layer_sparsity_stats"]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that belong to gate modules (e.g. every Hard Concrete ``log_alpha``).

    Examples
    --------
    >>> from l0_nn import L0Linear
    >>> [p.shape for p in gate_parameters(L0Linear(3, 2))]
    [torch.Size([3])]
    """
    _check_model(model)
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for _name, gate in iter_gates(model):
        for p in gate.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that is not a gate parameter.

    Examples
    --------
    >>> from l0_nn import L0Linear
    >>> [tuple(p.shape) for p in weight_parameters(L0Linear(3, 2))]
    [(2, 3), (2,)]
    """
    gate_ids = {id(p) for p in gate_parameters(model)}
    return [p for p in model.parameters() if id(p) not in gate_ids]


def param_groups(
    model: nn.Module,
    *,
    lr: float = 1e-3,
    gate_lr: float = 0.05,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weights at ``lr``, gate parameters at ``gate_lr``.

    Gate logits need a much larger step than weights: at a weight learning
    rate of ``1e-3`` they barely move in a few epochs. Weight decay is never
    applied to gate parameters (the L0 penalty regularises them).

    Parameters
    ----------
    model : torch.nn.Module
        Model with gated layers.
    lr : float, default 1e-3
        Learning rate of every non-gate parameter.
    gate_lr : float, default 0.05
        Learning rate of the gate parameters.
    weight_decay : float, default 0.0
        Weight decay of the non-gate parameters.

    Returns
    -------
    list of dict
        Pass to any ``torch.optim`` optimizer. Empty groups are left out.

    Examples
    --------
    >>> from l0_nn import SparseMLP
    >>> model = SparseMLP(8, 16, 2)
    >>> opt = torch.optim.Adam(param_groups(model, lr=1e-3, gate_lr=0.1))
    >>> [g["lr"] for g in opt.param_groups]
    [0.001, 0.1]
    """
    _check_model(model)
    lr = check_float(lr, "lr", min_val=0.0)
    gate_lr = check_float(gate_lr, "gate_lr", min_val=0.0)
    weight_decay = check_float(weight_decay, "weight_decay", min_val=0.0)
    weights = weight_parameters(model)
    gates = gate_parameters(model)
    if not weights and not gates:
        raise ValueError("model has no parameters to optimise")
    groups = [
        {"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
        {"params": gates, "lr": gate_lr, "weight_decay": 0.0, "name": "gates"},
    ]
    return [g for g in groups if g["params"]]


def _has_l0_layer(module: nn.Module) -> bool:
    return any(isinstance(m, L0Layer) for m in module.modules())


@torch.no_grad()
def _gate_row(gates: list[nn.Module]) -> dict[str, Any]:
    total, active, expected = 0, 0, 0.0
    for g in gates:
        total += int(g.prob_active().numel())
        active += int((deterministic_gates(g) > 0).sum().item())
        expected += float(g.prob_active().sum().item())
    return {
        "total_gates": total,
        "active_gates": active,
        "expected_active": expected,
        "sparsity": 1.0 - active / total if total else 0.0,
    }


@torch.no_grad()
def layer_sparsity_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per gated layer: gate type, granularity, gate counts and parameter counts.

    Unlike :func:`l0_core.get_sparsity_stats`, which stops at the outermost
    gated module, this reports every l0-nn layer inside composite gated
    models such as :class:`~l0_nn.SparseMLP`. Other gated layers and
    stand-alone gates are reported as one row each.

    Returns
    -------
    dict
        ``name -> {"type", "gate_type", "granularity", "total_gates",
        "active_gates", "expected_active", "sparsity", "total_params",
        "active_params"}`` (the last two for gated layers only;
        ``active_params`` counts the layer's own gates, not upstream ones).

    Examples
    --------
    >>> from l0_nn import SparseMLP
    >>> stats = layer_sparsity_stats(SparseMLP(4, 3, 2, init_sparsity=0.01))
    >>> stats["fc1"]["active_gates"], stats["fc2"]["total_params"]
    (4, 8)
    """
    _check_model(model)
    out: dict[str, dict[str, Any]] = {}

    def walk(module: nn.Module, name: str) -> None:
        if isinstance(module, L0Layer):
            row = {
                "type": type(module).__name__,
                "gate_type": module.gate_type,
                "granularity": module.granularity,
                **_gate_row([module.gates]),
                "total_params": module.parameter_count(),
                "active_params": module.active_parameter_count(),
            }
            out[name or type(module).__name__] = row
            return
        if (is_gated_layer(module) and not _has_l0_layer(module)) or is_gate(module):
            gates = [module] if is_gate(module) else [m for _, m in iter_gates(module)]
            row = {"type": type(module).__name__, "gate_type": None, "granularity": None}
            row.update(_gate_row(gates))
            if is_gated_layer(module):
                row["total_params"] = int(module.parameter_count())
                row["active_params"] = int(module.active_parameter_count())
            out[name or type(module).__name__] = row
            return
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return out
