"""Shared fixtures for the l0-core tests."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
from l0_core import HardConcrete
from l0_core.plugins import manager
from torch import Tensor, nn


@pytest.fixture
def fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Make the next ``get_plugin_manager()`` build a new manager (restored afterwards).

    Entry points are read again when the new manager is built, so a test can
    monkeypatch ``importlib.metadata.entry_points`` or the environment first.
    """
    monkeypatch.setattr(manager, "_pm", None)
    monkeypatch.setattr(manager, "_cache", {})
    monkeypatch.setattr(manager, "_dists", {})
    return manager


class FakeEntryPoint:
    """Stands in for ``importlib.metadata.EntryPoint`` (name, value, dist, load)."""

    def __init__(
        self,
        name: str,
        loader: Callable[[], Any],
        dist_name: str = "fake-dist",
        version: str = "9.9.9",
    ) -> None:
        self.name = name
        self.value = f"fake_module_{name}:plugin"
        self.group = "l0"
        self._loader = loader
        self.dist = type("Dist", (), {"name": dist_name, "version": version})()

    def load(self) -> Any:
        return self._loader()


class _EntryPointList(list):
    """A list of fake entry points that also records the groups asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str | None] = []

    def add(
        self,
        name: str,
        loader: Callable[[], Any],
        dist_name: str = "fake-dist",
        version: str = "9.9.9",
    ) -> None:
        """Append an entry point called ``name`` whose ``load()`` calls ``loader``."""
        self.append(FakeEntryPoint(name, loader, dist_name, version))


@pytest.fixture
def fake_entry_points(
    monkeypatch: pytest.MonkeyPatch, fresh_plugin_manager: ModuleType
) -> _EntryPointList:
    """Install a list of fake entry points for the group ``l0``; returns the list to fill."""
    import importlib.metadata

    points = _EntryPointList()
    calls = points.calls

    def entry_points(**params: Any) -> list[FakeEntryPoint]:
        calls.append(params.get("group"))
        if params.get("group") == "l0":
            return list(points)
        return []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return points


class RowGatedLinear(nn.Module):
    """A minimal GatedLayer: one Hard Concrete gate per output row of a linear layer.

    ``l2_penalty`` is the paper's expected L2: the squared norm of each row
    (weights and bias entry) times the probability that its gate is active.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init_prob_active: float = 0.5,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, dtype=dtype)
        self.gate = HardConcrete(
            out_features, init_prob_active=init_prob_active, dtype=dtype, generator=generator
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) * self.gate()

    def l0_penalty(self) -> Tensor:
        return self.gate.l0_penalty()

    def l2_penalty(self) -> Tensor:
        row_sq = self.linear.weight.pow(2).sum(1) + self.linear.bias.pow(2)
        return (row_sq * self.gate.prob_active()).sum()

    def active_parameter_count(self) -> int:
        active_rows = int((self.gate.deterministic() > 0).sum())
        return active_rows * (self.linear.in_features + 1)

    def parameter_count(self) -> int:
        return self.linear.weight.numel() + self.linear.bias.numel()


@pytest.fixture
def row_gated_linear() -> type[RowGatedLinear]:
    return RowGatedLinear


class FloatTemperatureGate(nn.Module):
    """A gate whose temperature is a plain float attribute (allowed by the protocol)."""

    def __init__(self, n: int, temperature: float = 0.5) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n))
        self.temperature = temperature

    def forward(self) -> Tensor:
        return torch.sigmoid(self.logits / self.temperature)

    def prob_active(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def l0_penalty(self) -> Tensor:
        return self.prob_active().sum()


@pytest.fixture
def float_temperature_gate() -> type[FloatTemperatureGate]:
    return FloatTemperatureGate
