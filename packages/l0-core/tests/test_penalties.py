"""Penalties, sparsity statistics and parameter counts against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import (
    HardConcrete,
    compute_l0_penalty,
    compute_l0l2_penalty,
    compute_l2_penalty,
    get_active_parameter_count,
    get_sparsity_stats,
    iter_gated_modules,
    iter_gates,
)
from torch import nn


def set_log_alpha(gate: HardConcrete, values) -> None:
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(values, dtype=gate.log_alpha.dtype))


def prob(la: float, beta: float = 2 / 3) -> float:
    return 1 / (1 + math.exp(-(la - beta * math.log(0.1 / 1.1))))


FIRST, BODY, MASK = [3.0, -3.0, 0.5, -0.5], [1.0, -4.0], [2.0, 2.0, -2.0, -2.0, 0.0]


def n_open(las) -> int:
    """Gates whose eval value is non-zero: exactly those with P(active) > 1/2."""
    return sum(prob(a) > 0.5 for a in las)


@pytest.fixture
def model(row_gated_linear):
    """Two gated layers, a bare gate, an ungated linear and a ReLU."""
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {
            "first": row_gated_linear(3, 4, dtype=torch.float64),
            "body": nn.Sequential(nn.ReLU(), row_gated_linear(4, 2, dtype=torch.float64)),
            "mask": HardConcrete(5, dtype=torch.float64),
            "plain": nn.Linear(2, 2, dtype=torch.float64),
        }
    )
    set_log_alpha(net["first"].gate, FIRST)
    set_log_alpha(net["body"][1].gate, BODY)
    set_log_alpha(net["mask"], MASK)
    return net


def test_l0_penalty_sums_each_gate_once_by_hand(model):
    las = FIRST + BODY + MASK
    assert compute_l0_penalty(model).item() == pytest.approx(sum(prob(a) for a in las), abs=1e-12)


def test_walk_stops_at_the_outermost_gated_module(model):
    names = [name for name, _ in iter_gated_modules(model)]
    assert names == ["first", "body.1", "mask"]
    assert [name for name, _ in iter_gates(model)] == ["first.gate", "body.1.gate", "mask"]


def test_l2_penalty_weights_each_row_norm_by_its_gate_probability(model):
    expected = 0.0
    for layer, las in ((model["first"], FIRST), (model["body"][1], BODY)):
        w, b = layer.linear.weight.detach(), layer.linear.bias.detach()
        for row, la in enumerate(las):
            sq = sum(v * v for v in w[row].tolist()) + b[row].item() ** 2
            expected += sq * prob(la)
    assert compute_l2_penalty(model).item() == pytest.approx(expected, rel=1e-12)


def test_l2_penalty_ignores_gate_logits_and_ungated_layers():
    model = nn.ModuleList([HardConcrete(3, init_prob_active=0.9), nn.Linear(4, 4)])
    assert compute_l2_penalty(model).item() == 0.0


def test_l0l2_penalty_is_the_weighted_sum_of_both_parts(model):
    l0, l2 = compute_l0_penalty(model).item(), compute_l2_penalty(model).item()
    combined = compute_l0l2_penalty(model, lambda_l0=0.3, lambda_l2=0.02).item()
    assert combined == pytest.approx(0.3 * l0 + 0.02 * l2, rel=1e-12)


def test_l0l2_penalty_default_strengths_are_1e_3_and_1e_4(model):
    l0, l2 = compute_l0_penalty(model).item(), compute_l2_penalty(model).item()
    assert compute_l0l2_penalty(model).item() == pytest.approx(1e-3 * l0 + 1e-4 * l2, rel=1e-12)


def test_penalties_are_differentiable_in_log_alpha_and_weights(model):
    compute_l0l2_penalty(model, lambda_l0=1.0, lambda_l2=1.0).backward()
    assert model["first"].gate.log_alpha.grad is not None
    assert model["first"].linear.weight.grad is not None
    assert model["plain"].weight.grad is None


def test_penalties_of_a_model_without_gates_are_zero_on_its_device_and_dtype():
    model = nn.Linear(2, 2, dtype=torch.float64)
    for value in (
        compute_l0_penalty(model),
        compute_l2_penalty(model),
        compute_l0l2_penalty(model),
    ):
        assert value.item() == 0.0 and value.dtype == torch.float64


@pytest.mark.parametrize(
    "penalty",
    [
        compute_l0_penalty,
        compute_l2_penalty,
        compute_l0l2_penalty,
        get_sparsity_stats,
        get_active_parameter_count,
    ],
)
def test_penalty_functions_reject_a_non_module(penalty):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        penalty([1, 2, 3])


@pytest.mark.parametrize("name", ["lambda_l0", "lambda_l2"])
@pytest.mark.parametrize(
    ("value", "error", "problem"),
    [
        (-1.0, ValueError, r"must be >= 0\.0, got -1\.0"),
        (float("nan"), ValueError, "must be a finite number, got nan"),
        ("big", TypeError, "must be a number, got str"),
    ],
)
def test_l0l2_penalty_rejects_bad_strengths(model, name, value, error, problem):
    with pytest.raises(error, match=f"{name} {problem}"):
        compute_l0l2_penalty(model, **{name: value})


@pytest.mark.parametrize(("old", "new"), [("l0_lambda", "lambda_l0"), ("l2_lambda", "lambda_l2")])
def test_l0l2_penalty_old_strength_spelling_warns_and_means_the_same(model, old, new):
    expected = compute_l0l2_penalty(model, **{new: 0.3}).item()
    with pytest.warns(DeprecationWarning, match=new):
        got = compute_l0l2_penalty(model, **{old: 0.3}).item()
    assert got == expected


@pytest.mark.parametrize(("old", "new"), [("l0_lambda", "lambda_l0"), ("l2_lambda", "lambda_l2")])
def test_l0l2_penalty_rejects_both_spellings_of_a_strength(model, old, new):
    with pytest.raises(TypeError, match=f"both {old}= and {new}="):
        compute_l0l2_penalty(model, **{old: 0.3, new: 0.3})


def test_sparsity_stats_count_gates_active_gates_and_parameters(model):
    stats = get_sparsity_stats(model)
    assert list(stats) == ["first", "body.1", "mask"]
    first = stats["first"]
    assert first["total_gates"] == 4 and first["active_gates"] == n_open(FIRST) == 3
    assert first["sparsity"] == pytest.approx(1 - 3 / 4)
    assert first["expected_active"] == pytest.approx(sum(prob(a) for a in FIRST))
    assert first["total_params"] == 4 * 3 + 4 and first["active_params"] == 3 * (3 + 1)
    assert stats["body.1"]["active_gates"] == n_open(BODY) == 1
    assert stats["body.1"]["active_params"] == 1 * (4 + 1)
    mask = stats["mask"]
    assert mask["active_gates"] == n_open(MASK) == 3 and mask["sparsity"] == pytest.approx(0.4)
    assert "total_params" not in mask


def test_sparsity_stats_of_a_bare_gate_use_its_class_name():
    assert list(get_sparsity_stats(HardConcrete(3))) == ["HardConcrete"]


def test_active_parameter_count_counts_active_rows_and_ungated_layers_but_no_gate_logits(model):
    # first: open rows x (3 + 1); body.1: open rows x (4 + 1); plain: 2 x 2 + 2; mask: 0
    expected = n_open(FIRST) * 4 + n_open(BODY) * 5 + 6
    assert get_active_parameter_count(model) == expected == 23


def test_active_parameter_count_falls_when_gates_close(model):
    before = get_active_parameter_count(model)
    set_log_alpha(model["first"].gate, [-5.0] * 4)
    assert get_active_parameter_count(model) == before - n_open(FIRST) * 4
