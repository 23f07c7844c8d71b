"""L0 and L2 penalties, sparsity statistics and a penalty tracker.

Gated modules are found through the :class:`~l0_core.Gate` and
:class:`~l0_core.GatedLayer` protocols, never by attribute names. The walk
stops at the first gated layer or gate on each branch, so a layer's own
``l0_penalty()`` (which usually delegates to its gate) is never counted
twice.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_float, renamed_keywords
from .gate import deterministic_gates, is_gate, is_gated_layer
from .precision import accumulation_dtype

__all__ = [
    "PenaltyTracker",
    "compute_l0_penalty",
    "compute_l0l2_penalty",
    "compute_l2_penalty",
    "get_active_parameter_count",
    "get_sparsity_stats",
    "iter_gated_modules",
]


def iter_gated_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for the outermost gated layers and gates of ``model``.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> m = nn.Sequential(nn.Linear(2, 2), HardConcrete(2))
    >>> [n for n, _ in iter_gated_modules(m)]
    ['1']
    """
    if is_gated_layer(model) or is_gate(model):
        yield prefix, model
        return
    for name, child in model.named_children():
        yield from iter_gated_modules(child, f"{prefix}.{name}" if prefix else name)


def _zero(model: nn.Module) -> Tensor:
    """A scalar zero to accumulate penalties in (float32 for a half-precision model)."""
    for p in model.parameters():
        return p.new_zeros((), dtype=accumulation_dtype(p.dtype))
    for b in model.buffers():
        return (
            b.new_zeros((), dtype=torch.get_default_dtype())
            if not b.is_floating_point()
            else b.new_zeros((), dtype=accumulation_dtype(b.dtype))
        )
    return torch.zeros(())


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network (or gate) whose penalty you want"
        )


def compute_l0_penalty(model: nn.Module) -> Tensor:
    """Expected number of non-zero gates in ``model`` (differentiable).

    Parameters
    ----------
    model : torch.nn.Module
        A gate, a gated layer, or any module containing them.

    Returns
    -------
    Tensor
        Scalar on the model's device; 0 when the model has no gates.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> m = nn.ModuleList([HardConcrete(4, init_prob_active=0.5, init_std=0.0), nn.Linear(3, 3)])
    >>> round(compute_l0_penalty(m).item(), 4)
    2.0
    """
    _check_model(model)
    total = _zero(model)
    for _name, module in iter_gated_modules(model):
        total = total + module.l0_penalty()
    return total


def compute_l2_penalty(model: nn.Module) -> Tensor:
    """The paper's expected L2 penalty of every gated layer in ``model``.

    Each gated weight group's squared norm is weighted by the probability
    that its gate is active (Louizos et al., 2017, eq. 13 without the 1/2
    factor convention, see the layer's ``l2_penalty``). Gate logits are never
    penalised; plain (ungated) layers contribute nothing.

    Examples
    --------
    >>> compute_l2_penalty(nn.Linear(2, 2)).item()
    0.0
    """
    _check_model(model)
    total = _zero(model)
    for _name, module in iter_gated_modules(model):
        if is_gated_layer(module):
            total = total + module.l2_penalty()
    return total


@renamed_keywords(l0_lambda="lambda_l0", l2_lambda="lambda_l2")
def compute_l0l2_penalty(
    model: nn.Module, lambda_l0: float = 1e-3, lambda_l2: float = 1e-4
) -> Tensor:
    """``lambda_l0 * L0 + lambda_l2 * L2``, the combined penalty to add to a loss.

    Parameters
    ----------
    model : torch.nn.Module
        A model with gated layers or gates.
    lambda_l0 : float, default 1e-3
        Weight of the expected L0 norm (sparsity strength), >= 0.
    lambda_l2 : float, default 1e-4
        Weight of the expected L2 norm of the gated weights, >= 0.
    l0_lambda, l2_lambda : float, optional
        Deprecated spellings of ``lambda_l0`` and ``lambda_l2`` (a
        ``DeprecationWarning``; passing both spellings raises ``TypeError``).

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> g = HardConcrete(10, init_prob_active=0.5, init_std=0.0)
    >>> round(compute_l0l2_penalty(g, lambda_l0=0.1, lambda_l2=1.0).item(), 4)
    0.5
    """
    lambda_l0 = check_float(lambda_l0, "lambda_l0", min_val=0.0, hint="e.g. lambda_l0=1e-3")
    lambda_l2 = check_float(lambda_l2, "lambda_l2", min_val=0.0, hint="e.g. lambda_l2=1e-4")
    _check_model(model)
    total = _zero(model)
    if lambda_l0:
        total = total + lambda_l0 * compute_l0_penalty(model)
    if lambda_l2:
        total = total + lambda_l2 * compute_l2_penalty(model)
    return total


def _gates_of(module: nn.Module) -> list[nn.Module]:
    if is_gate(module):
        return [module]
    return [m for m in module.modules() if is_gate(m)]


@torch.no_grad()
def get_sparsity_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per gated module: gate counts, expected and deterministic activity, parameters.

    Returns
    -------
    dict
        ``name -> {"total_gates", "active_gates", "expected_active",
        "sparsity", "total_params", "active_params"}``; the parameter
        entries are present for gated layers only. ``sparsity`` is the
        fraction of gates that are exactly 0 in eval mode.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> stats = get_sparsity_stats(nn.ModuleDict({"g": HardConcrete(4, init_prob_active=0.99)}))
    >>> stats["g"]["active_gates"], stats["g"]["sparsity"]
    (4, 0.0)
    """
    _check_model(model)
    out: dict[str, dict[str, float]] = {}
    for name, module in iter_gated_modules(model):
        gates = _gates_of(module)
        total = sum(g.prob_active().numel() for g in gates)
        active = sum(int((deterministic_gates(g) > 0).sum().item()) for g in gates)
        expected = float(sum(g.prob_active().sum().item() for g in gates))
        entry: dict[str, float] = {
            "total_gates": total,
            "active_gates": active,
            "expected_active": expected,
            "sparsity": 1.0 - active / total if total else 0.0,
        }
        if is_gated_layer(module):
            entry["total_params"] = int(module.parameter_count())
            entry["active_params"] = int(module.active_parameter_count())
        out[name or type(module).__name__] = entry
    return out


def get_active_parameter_count(model: nn.Module) -> int:
    """Parameters that remain once deterministic gates are applied.

    Gated layers report their own active count; gate logits are not
    counted; every other parameter counts in full.

    Examples
    --------
    >>> get_active_parameter_count(nn.Linear(3, 2))
    8
    """
    _check_model(model)

    def walk(module: nn.Module) -> int:
        if is_gated_layer(module):
            return int(module.active_parameter_count())
        if is_gate(module):
            return 0
        own = sum(p.numel() for p in module.parameters(recurse=False))
        return own + sum(walk(child) for child in module.children())

    return walk(model)


class PenaltyTracker:
    """Record penalties and metrics during training, then summarise or export them.

    Examples
    --------
    >>> t = PenaltyTracker()
    >>> t.log(0, l0=10.0, loss=1.0)
    >>> t.log(1, l0=8.0, loss=0.5)
    >>> t.stats("l0")["mean"]
    9.0
    >>> t.history["loss"]
    [1.0, 0.5]
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def log(self, step: int, /, **values: float | Tensor) -> None:
        """Record ``values`` (floats or scalar tensors) at ``step``.

        Examples
        --------
        >>> PenaltyTracker().log(3, l0=torch.tensor(2.0))
        """
        if not values:
            raise ValueError("log() needs at least one value, e.g. tracker.log(epoch, l0=penalty)")
        row: dict[str, float] = {"step": int(step)}
        for key, value in values.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"value {key!r} must be a scalar, got shape {tuple(value.shape)}"
                    )
                value = value.detach().item()
            row[key] = float(value)
        self.records.append(row)

    def log_model(self, step: int, model: nn.Module, **extra: float | Tensor) -> None:
        """Record the L0 and L2 penalties, active gates and sparsity of ``model``.

        Examples
        --------
        >>> from l0_core import HardConcrete
        >>> t = PenaltyTracker(); t.log_model(0, HardConcrete(2)); sorted(t.history)[:2]
        ['active_gates', 'l0']
        """
        with torch.no_grad():
            stats = get_sparsity_stats(model)
            total = sum(s["total_gates"] for s in stats.values())
            active = sum(s["active_gates"] for s in stats.values())
            self.log(
                step,
                l0=compute_l0_penalty(model),
                l2=compute_l2_penalty(model),
                active_gates=active,
                sparsity=1.0 - active / total if total else 0.0,
                **extra,
            )

    @property
    def history(self) -> dict[str, list[float]]:
        """``name -> values`` in logging order (``step`` included).

        Examples
        --------
        >>> PenaltyTracker().history
        {}
        """
        out: dict[str, list[float]] = {}
        for row in self.records:
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out

    def stats(self, name: str) -> dict[str, float]:
        """Mean, std, min, max and last value of one logged quantity.

        Examples
        --------
        >>> t = PenaltyTracker(); t.log(0, a=1.0); t.stats("a")["last"]
        1.0
        """
        values = [row[name] for row in self.records if name in row]
        if not values:
            known = sorted({k for row in self.records for k in row})
            raise KeyError(f"nothing logged under {name!r}; logged names: {known}")
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        return {
            "mean": mean,
            "std": math.sqrt(var),
            "min": min(values),
            "max": max(values),
            "last": values[-1],
            "count": len(values),
        }

    def to_dataframe(self):
        """The records as a pandas DataFrame (requires pandas).

        Examples
        --------
        >>> t = PenaltyTracker(); t.log(0, a=1.0); t.to_dataframe().shape
        (1, 2)
        """
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on environment
            raise ImportError(
                "PenaltyTracker.to_dataframe needs pandas: pip install pandas "
                "(or use to_csv, which needs nothing)"
            ) from exc
        return pd.DataFrame.from_records(self.records)

    def to_csv(self, path: str | Path) -> None:
        """Write the records to a CSV file (one row per ``log`` call).

        Examples
        --------
        >>> import tempfile, os
        >>> t = PenaltyTracker(); t.log(0, a=1.0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     t.to_csv(os.path.join(d, "h.csv"))
        """
        names: list[str] = []
        for row in self.records:
            names.extend(k for k in row if k not in names)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=names)
            writer.writeheader()
            writer.writerows(self.records)

    def __len__(self) -> int:
        return len(self.records)
