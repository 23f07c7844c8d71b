"""Every l0-core call shown in the seed documentation works as written."""

from __future__ import annotations

import pytest
import torch
from l0_core import (
    HardConcrete,
    TemperatureScheduler,
    compute_l0_penalty,
    compute_l0l2_penalty,
    compute_l2_penalty,
    update_temperatures,
)
from torch import nn

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gates_for_household_weights_by_position_start_almost_all_open(dtype):
    household_weights = torch.ones(500, dtype=dtype)
    gates = HardConcrete(
        len(household_weights), temperature=0.25, init_prob_active=0.999, dtype=dtype
    )
    assert gates.prob_active().float().mean().item() == pytest.approx(0.999, abs=2e-3)
    assert gates.num_active() == 500


@pytest.mark.parametrize("dtype", DTYPES)
def test_gates_by_keyword_produce_probabilities_that_mask_the_weights(dtype):
    households = list(range(300))
    weights = torch.rand(300, generator=torch.Generator().manual_seed(0)).to(dtype)
    gates = HardConcrete(
        n_items=len(households), temperature=0.25, init_prob_active=0.999, dtype=dtype
    )
    probs = gates()
    assert probs.shape == (300,) and probs.dtype == dtype
    assert probs.min().item() >= 0 and probs.max().item() <= 1
    masked_weights = weights * probs
    assert masked_weights.shape == weights.shape and torch.isfinite(masked_weights).all()
    assert (probs == 1).float().mean().item() > 0.9  # init_prob_active=0.999 at temperature 0.25


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_scheduler_with_update_temperatures_loop(dtype):
    model = nn.Sequential(nn.Linear(4, 4, dtype=dtype), HardConcrete(4, dtype=dtype))
    scheduler = TemperatureScheduler(
        initial_temperature=1.0,  # Start relaxed
        final_temperature=0.1,  # End sparse
        total_epochs=100,
    )
    temps = []
    for epoch in range(100):
        temp = scheduler.get_temperature(epoch)
        update_temperatures(model, temp)
        temps.append(model[1].temperature.float().item())
    assert temps[0] == 1.0
    assert temps[-1] == pytest.approx(0.1, rel=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l0l2_penalty_with_the_documented_strengths_is_added_to_a_task_loss(dtype):
    model = nn.ModuleDict(
        {"gate": HardConcrete(50, dtype=dtype), "head": nn.Linear(3, 1, dtype=dtype)}
    )
    penalty = compute_l0l2_penalty(
        model,
        lambda_l0=1e-3,  # Sparsity strength
        lambda_l2=1e-4,  # Weight regularization
    )
    expected = 1e-3 * compute_l0_penalty(model) + 1e-4 * compute_l2_penalty(model)
    # half precision accumulates in float32 (issue 12)
    assert penalty.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    assert penalty.float().item() == pytest.approx(expected.float().item(), rel=1e-2)
    task_loss = model["head"](torch.ones(2, 3, dtype=dtype)).pow(2).mean()
    loss = task_loss + penalty
    loss.backward()
    assert model["gate"].log_alpha.grad is not None
