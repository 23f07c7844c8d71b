"""``l0.penalties``: penalties, temperature schedule and tracker with l0-python 0.6.2's meaning.

The functions here count what 0.6.2 counted: every module with a
``get_l0_penalty()`` method (the layers of :mod:`l0.layers`, of
:mod:`l0_nn`, :class:`l0.sparse.SparseL0Linear`, ...) contributes its
expected number of open gates, and the L2 penalty is the sum of squares of
every trainable parameter whose name contains ``"weight"``. l0-core's own
versions, which find gates through the :class:`l0_core.Gate` protocol and
report exact (deterministic) counts, are :mod:`l0_core.penalties`.

Examples
--------
>>> import torch
>>> from l0.layers import L0Linear
>>> from l0.penalties import compute_l0_penalty
>>> model = torch.nn.Sequential(L0Linear(4, 3), torch.nn.ReLU(), L0Linear(3, 1))
>>> expected = model[0].get_l0_penalty() + model[2].get_l0_penalty()
>>> bool(torch.allclose(compute_l0_penalty(model), expected))
True
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from l0_core import penalties as _core_penalties
from l0_core import temperature as _core_temperature
from l0_core.gate import is_gate
from torch import Tensor, nn

__all__ = [
    "PenaltyTracker",
    "TemperatureScheduler",
    "compute_l0_penalty",
    "compute_l0l2_penalty",
    "compute_l2_penalty",
    "get_active_parameter_count",
    "get_sparsity_stats",
    "update_temperatures",
]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network whose penalty you want"
        )


def _zero(model: nn.Module) -> Tensor:
    for p in model.parameters():
        return p.new_zeros(())
    return torch.zeros(())


def compute_l0_penalty(model: nn.Module) -> Tensor:
    """Sum of ``get_l0_penalty()`` over every module of ``model`` that has it.

    A gate that is not part of such a module (e.g. a bare
    :class:`~l0.distributions.HardConcrete`) adds its expected number of open
    gates; 0.6.2 ignored it.

    Examples
    --------
    >>> from l0.layers import L0Linear
    >>> layer = L0Linear(2, 2)
    >>> bool(torch.equal(compute_l0_penalty(layer), layer.get_l0_penalty()))
    True
    """
    _check_model(model)
    total = _zero(model)

    def walk(module: nn.Module, covered: bool) -> None:
        nonlocal total
        if hasattr(module, "get_l0_penalty"):
            total = total + module.get_l0_penalty()
            covered = True
        elif not covered and is_gate(module):
            # A gate outside any layer (0.6.2 counted nothing for it).
            total = total + module.prob_active().sum()
            covered = True
        for child in module.children():
            walk(child, covered)

    walk(model, False)
    return total


def compute_l2_penalty(model: nn.Module) -> Tensor:
    """Sum of squares of every trainable parameter whose name contains ``"weight"``.

    As in 0.6.2 this includes the gate logits of per-weight gates
    (``weight_gates.qz_logits``).

    Examples
    --------
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> bool(torch.allclose(compute_l2_penalty(lin), (lin.weight ** 2).sum()))
    True
    """
    _check_model(model)
    total = _zero(model)
    for name, param in model.named_parameters():
        if "weight" in name and param.requires_grad:
            total = total + (param**2).sum()
    return total


def compute_l0l2_penalty(
    model: nn.Module, l0_lambda: float = 1e-3, l2_lambda: float = 1e-4
) -> Tensor:
    """``l0_lambda * compute_l0_penalty(model) + l2_lambda * compute_l2_penalty(model)``.

    Examples
    --------
    >>> from l0.layers import L0Linear
    >>> m = L0Linear(3, 2)
    >>> want = 1.0 * compute_l0_penalty(m) + 0.5 * compute_l2_penalty(m)
    >>> bool(torch.allclose(compute_l0l2_penalty(m, 1.0, 0.5), want))
    True
    """
    return l0_lambda * compute_l0_penalty(model) + l2_lambda * compute_l2_penalty(model)


@torch.no_grad()
def get_sparsity_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module with ``get_sparsity`` and ``get_l0_penalty``: expected sparsity and counts.

    Returns
    -------
    dict
        ``name -> {"sparsity", "active_params", "total_params"}``: the
        module's ``get_sparsity()``, its expected number of open gates and
        its weight count.

    Examples
    --------
    >>> from l0.layers import L0Linear
    >>> stats = get_sparsity_stats(torch.nn.ModuleDict({"fc": L0Linear(4, 2)}))
    >>> stats["fc"]["total_params"]
    8
    """
    _check_model(model)
    stats: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "get_sparsity") and hasattr(module, "get_l0_penalty")):
            continue
        active = float(module.get_l0_penalty().item())
        sparsity = module.get_sparsity()
        weight = getattr(module, "weight", None)
        gates = getattr(module, "gates", None)
        if isinstance(weight, Tensor):
            total: float = weight.numel()
        elif gates is not None and hasattr(gates, "gate_size"):
            total = math.prod(gates.gate_size)
        else:
            total = active / (1.0 - sparsity) if sparsity < 1.0 else float("nan")
        stats[name] = {"sparsity": sparsity, "active_params": active, "total_params": total}
    return stats


def get_active_parameter_count(model: nn.Module) -> int:
    """Sum over modules with ``get_l0_penalty`` of ``int(expected open gates)``.

    Examples
    --------
    >>> from l0.layers import L0Linear
    >>> layer = L0Linear(10, 10)
    >>> get_active_parameter_count(layer) == int(layer.get_l0_penalty().item())
    True
    """
    _check_model(model)
    with torch.no_grad():
        return sum(
            int(m.get_l0_penalty().item()) for m in model.modules() if hasattr(m, "get_l0_penalty")
        )


class TemperatureScheduler(_core_temperature.TemperatureScheduler):
    """Temperature annealing with l0-python 0.6.2's ``anneal_epochs`` and defaults.

    ``get_temperature(epoch)`` is ``initial_temp`` at epoch 0 and
    ``final_temp`` from epoch ``anneal_epochs`` on. l0-core's
    ``total_epochs=`` (final temperature at epoch ``total_epochs - 1``) is
    accepted instead of ``anneal_epochs``; ``total_epochs=n`` is
    ``anneal_epochs=n - 1``.

    Parameters
    ----------
    initial_temp : float, default 2.0
    final_temp : float, default 0.1
    anneal_epochs : int, default 100
    schedule : {"exponential", "linear", "cosine"} or any registered schedule
    total_epochs : int, optional
        l0-core's spelling of the length; exclusive with ``anneal_epochs``.

    Examples
    --------
    >>> s = TemperatureScheduler(initial_temp=2.0, final_temp=0.1, anneal_epochs=100)
    >>> s.get_temperature(0), s.get_temperature(100), s.get_temperature(150)
    (2.0, 0.1, 0.1)
    >>> TemperatureScheduler(1.0, 0.1, total_epochs=100).get_temperature(99)
    0.1
    """

    def __init__(
        self,
        initial_temp: float = 2.0,
        final_temp: float = 0.1,
        anneal_epochs: int | None = None,
        schedule: str = "exponential",
        *,
        total_epochs: int | None = None,
    ) -> None:
        if anneal_epochs is not None and total_epochs is not None:
            raise TypeError(
                "pass anneal_epochs (final temperature at that epoch) or total_epochs "
                "(final temperature at total_epochs - 1), not both"
            )
        if total_epochs is None:
            if anneal_epochs is None:
                anneal_epochs = 100
            if isinstance(anneal_epochs, bool) or not isinstance(anneal_epochs, int):
                raise TypeError(f"anneal_epochs must be an int, got {anneal_epochs!r}")
            if anneal_epochs < 0:
                raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs!r}")
            total_epochs = anneal_epochs + 1
        super().__init__(initial_temp, final_temp, total_epochs, schedule)
        self.anneal_epochs = self.total_epochs - 1

    def __repr__(self) -> str:
        return (
            f"TemperatureScheduler(initial_temp={self.initial_temp}, final_temp={self.final_temp}, "
            f"anneal_epochs={self.anneal_epochs}, schedule={self.schedule!r})"
        )


def update_temperatures(model: nn.Module, temperature: float) -> None:
    """Set the temperature of every gate inside ``model`` (0.6.2: returns nothing).

    Examples
    --------
    >>> from l0.layers import L0Linear
    >>> layer = L0Linear(2, 2)
    >>> update_temperatures(layer, 0.2)
    >>> layer.weight_gates.temperature
    0.2
    """
    _core_temperature.update_temperatures(model, temperature)


class PenaltyTracker(_core_penalties.PenaltyTracker):
    """Metric history in l0-python 0.6.2's style, plus l0-core's step-indexed records.

    ``log(name, value)`` appends one value (0.6.2); ``log(step, **values)``
    records a step (l0-core). ``history`` maps names to their values.

    Examples
    --------
    >>> t = PenaltyTracker()
    >>> for i in range(3):
    ...     t.log("l0", float(i))
    >>> t.get_history("l0"), t.get_stats("l0")["mean"], t.get_stats("none")
    ([0.0, 1.0, 2.0], 1.0, {})
    """

    def log(self, name: str | int, value: float | Tensor | None = None, /, **values: Any) -> None:  # type: ignore[override]
        """``log(name, value)`` (0.6.2) or ``log(step, **values)`` (l0-core).

        Examples
        --------
        >>> t = PenaltyTracker(); t.log("a", 1.0); t.log(1, a=2.0); t.get_history("a")
        [1.0, 2.0]
        """
        if isinstance(name, str):
            if values or value is None:
                raise TypeError("log(name, value) takes exactly one value, e.g. log('l0', 3.0)")
            if isinstance(value, Tensor):
                value = value.detach().item()
            self.records.append({name: value})
            return
        if value is not None:
            raise TypeError("log(step, **values) takes named values, e.g. log(0, l0=3.0)")
        super().log(name, **values)

    @property
    def history(self) -> defaultdict[str, list[float]]:  # type: ignore[override]
        """``name -> values`` in logging order (a ``defaultdict(list)``)."""
        out: defaultdict[str, list[float]] = defaultdict(list)
        out.update(super().history)
        return out

    def get_history(self, name: str) -> list[float]:
        """Values logged under ``name`` (empty list if none).

        Examples
        --------
        >>> PenaltyTracker().get_history("x")
        []
        """
        return self.history[name]

    def get_stats(self, name: str) -> dict[str, float]:
        """``{"mean", "std", "min", "max", "last"}`` of ``name``; ``{}`` if nothing was logged.

        Examples
        --------
        >>> t = PenaltyTracker(); t.log("a", 1.0); t.log("a", 3.0); t.get_stats("a")["std"]
        1.0
        """
        if not self.get_history(name):
            return {}
        stats = dict(self.stats(name))
        stats.pop("count", None)
        return stats

    def clear(self) -> None:
        """Forget everything logged.

        Examples
        --------
        >>> t = PenaltyTracker(); t.log("a", 1.0); t.clear(); len(t)
        0
        """
        self.records.clear()

    def save_to_csv(self, filepath: str | Path) -> None:
        """Write one column per name (0.6.2's layout), atomically.

        Examples
        --------
        >>> import os, tempfile
        >>> t = PenaltyTracker(); t.log("a", 1.0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     t.save_to_csv(os.path.join(d, "h.csv"))
        ...     open(os.path.join(d, "h.csv")).read().split()
        ['a', '1.0']
        """
        history = self.history
        names = list(history)
        rows = max((len(v) for v in history.values()), default=0)
        path = Path(filepath)
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(names)
                for i in range(rows):
                    writer.writerow([history[n][i] if i < len(history[n]) else "" for n in names])
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def plot_history(
        self, metrics: list[str] | None = None, save_path: str | None = None
    ) -> None:  # pragma: no cover - needs matplotlib
        """Plot each metric's history (needs matplotlib), optionally saving the figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("plot_history needs matplotlib: pip install matplotlib") from exc
        history = self.history
        metrics = metrics or list(history)
        fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 4 * len(metrics)), squeeze=False)
        for i, metric in enumerate(metrics):
            axes[i, 0].plot(history[metric])
            axes[i, 0].set_title(metric)
        fig.tight_layout()
        if save_path:
            fig.savefig(save_path)
        else:
            plt.show()
