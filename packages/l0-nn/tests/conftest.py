"""Shared helpers for the l0-nn tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from l0_nn import L0Layer


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run with one intra-op thread (sparse CSR kernels stall on a busy 2-core box), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomise_gates(model: torch.nn.Module, seed: int = 0, scale: float = 3.0) -> None:
    """Give every l0-nn layer random gate logits, so that some groups are removed and some kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, L0Layer):
                la = module.gates.log_alpha
                la.copy_(torch.randn(la.shape, generator=g, dtype=la.dtype) * scale)


def hard_concrete_prob_active(log_alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(z != 0) from the paper, computed independently of l0-core: sigmoid(a - beta*log(-gamma/zeta))."""
    gamma, zeta = -0.1, 1.1
    return torch.sigmoid(log_alpha - temperature * torch.log(torch.tensor(-gamma / zeta)))
