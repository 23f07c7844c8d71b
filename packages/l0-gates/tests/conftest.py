"""Shared fixtures: skewed survey-like data, redundant columns and a plugin gate type."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from l0_core import hookimpl, register_plugin, unregister_plugin
from torch import nn

CATEGORY_SHARES = [0.6, 0.3, 0.08, 0.015, 0.005]

# The suite runs on small shared machines: one intra-op thread avoids oversubscription.
torch.set_num_threads(1)


def skewed_data(n: int, seed: int = 0, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Correlated log-normal columns and a category with rare levels (0.5% and 1.5%)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, d)) @ np.linalg.cholesky(0.5 * np.eye(d) + 0.5).T
    x = np.exp(latent * np.linspace(0.6, 1.4, d))
    cat = rng.choice(len(CATEGORY_SHARES), size=n, p=CATEGORY_SHARES)
    x[:, 0] *= 1 + cat
    return x, cat


def redundant_columns(
    n: int, n_inf: int, n_red: int, n_base: int, sigma: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n_inf`` independent columns hidden among noisy copies of ``n_base`` of them (shuffled)."""
    rng = np.random.default_rng(seed)
    inf = rng.standard_normal((n, n_inf))
    red = inf[:, rng.choice(n_base, size=n_red)] + sigma * rng.standard_normal((n, n_red))
    x = np.concatenate([inf, red], 1)
    perm = rng.permutation(x.shape[1])
    return x[:, perm], np.sort(np.argsort(perm)[:n_inf])


class LogisticGate(nn.Module):
    """A minimal third-party gate: relaxed Bernoulli in training, hard 0/1 in eval."""

    def __init__(
        self, n, temperature=0.5, init_prob_active=0.5, device=None, dtype=None, generator=None
    ):
        super().__init__()
        logit = math.log(init_prob_active) - math.log1p(-init_prob_active)
        self.logits = nn.Parameter(torch.full((n,), logit, device=device, dtype=dtype))
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device))
        self.generator = generator

    def prob_active(self):
        return torch.sigmoid(self.logits)

    def l0_penalty(self):
        return self.prob_active().sum()

    def forward(self):
        if not self.training:
            return (self.logits > 0).to(self.logits.dtype)
        u = torch.rand(self.logits.shape, generator=self.generator, dtype=self.logits.dtype)
        u = u.clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((self.logits + torch.log(u) - torch.log1p(-u)) / self.temperature)


class _Plugin:
    @hookimpl
    def l0_register_gates(self, register):
        register("logistic_test_gate", LogisticGate)


@pytest.fixture
def logistic_gate_name() -> Iterator[str]:
    name = register_plugin(_Plugin(), name="l0-gates-test-plugin")
    try:
        yield "logistic_test_gate"
    finally:
        unregister_plugin(name)


@pytest.fixture
def make_skewed() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return skewed_data


@pytest.fixture
def make_redundant() -> Callable[..., Any]:
    return redundant_columns
