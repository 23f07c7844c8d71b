"""HardConcrete: the sampling distribution, gradients, construction and state."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from l0_core import HardConcrete, hard_concrete_sample, log_alpha_for_prob_active

GAMMA, ZETA = -0.1, 1.1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def analytic_cdf(t: float, log_alpha: float, beta: float) -> float:
    """P(z <= t) for 0 <= t < 1, derived from z = clamp(s (zeta - gamma) + gamma)."""
    threshold = (t - GAMMA) / (ZETA - GAMMA)  # s <= threshold
    return sigmoid(beta * logit(threshold) - log_alpha)


def analytic_mean(log_alpha: float, beta: float) -> float:
    """E[z] = integral over [0, 1] of P(z > t), by the trapezoid rule on a fine grid."""
    grid = np.linspace(0.0, 1.0, 20001)[:-1]
    survival = np.array([1.0 - analytic_cdf(t, log_alpha, beta) for t in grid])
    survival = np.append(survival, 1.0 - analytic_cdf(1.0 - 1e-12, log_alpha, beta))
    return float(((survival[1:] + survival[:-1]) / 2).sum() / 20000)


LOG_ALPHAS = [-2.0, -0.5, 0.0, 0.7, 2.5]
BETA = 2.0 / 3.0
N_DRAWS = 200_000


@pytest.fixture(scope="module")
def samples():
    """N_DRAWS samples of a gate with one column per log_alpha in LOG_ALPHAS (float64)."""
    gen = torch.Generator().manual_seed(1234)
    la = torch.tensor(LOG_ALPHAS, dtype=torch.float64).expand(N_DRAWS, -1)
    return hard_concrete_sample(la, BETA, GAMMA, ZETA, generator=gen)


@pytest.mark.parametrize("column", range(len(LOG_ALPHAS)))
def test_monte_carlo_frequency_of_exact_zeros_matches_analytic_p_zero(samples, column):
    la = LOG_ALPHAS[column]
    expected = sigmoid(BETA * math.log(-GAMMA / ZETA) - la)
    observed = (samples[:, column] == 0).double().mean().item()
    se = math.sqrt(expected * (1 - expected) / N_DRAWS)
    assert abs(observed - expected) < 5 * se + 1e-4


@pytest.mark.parametrize("column", range(len(LOG_ALPHAS)))
def test_monte_carlo_frequency_of_exact_ones_matches_analytic_p_one(samples, column):
    la = LOG_ALPHAS[column]
    expected = sigmoid(la - BETA * math.log((1 - GAMMA) / (ZETA - 1)))
    observed = (samples[:, column] == 1).double().mean().item()
    se = math.sqrt(expected * (1 - expected) / N_DRAWS)
    assert abs(observed - expected) < 5 * se + 1e-4


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_monte_carlo_cdf_inside_the_unit_interval_matches_analytic_cdf(samples, t):
    for column, la in enumerate(LOG_ALPHAS):
        expected = analytic_cdf(t, la, BETA)
        observed = (samples[:, column] <= t).double().mean().item()
        se = math.sqrt(expected * (1 - expected) / N_DRAWS)
        assert abs(observed - expected) < 5 * se + 1e-4, (la, t)


def test_monte_carlo_mean_matches_numerically_integrated_mean(samples):
    for column, la in enumerate(LOG_ALPHAS):
        expected = analytic_mean(la, BETA)
        col = samples[:, column]
        se = col.std().item() / math.sqrt(N_DRAWS)
        assert abs(col.mean().item() - expected) < 5 * se, la


def test_expected_l0_penalty_matches_monte_carlo_count_of_nonzero_gates():
    gen = torch.Generator().manual_seed(7)
    gate = HardConcrete(40, temperature=0.5, init_prob_active=0.5, init_std=1.5, generator=gen)
    gate.train()
    counts = torch.stack([(gate() > 0).sum() for _ in range(5000)]).double()
    expected = gate.l0_penalty().item()
    hand = sum(sigmoid(a - 0.5 * math.log(-GAMMA / ZETA)) for a in gate.log_alpha.detach().tolist())
    assert expected == pytest.approx(hand, rel=1e-5)
    se = counts.std().item() / math.sqrt(len(counts))
    assert abs(counts.mean().item() - expected) < 5 * se


def test_prob_methods_agree_with_the_closed_forms():
    gate = HardConcrete(5, temperature=0.3, stretch=0.2, init_std=0.0, dtype=torch.float64)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64))
    gamma, zeta = -0.2, 1.2
    for i, la in enumerate(gate.log_alpha.tolist()):
        assert gate.prob_active()[i].item() == pytest.approx(
            sigmoid(la - 0.3 * math.log(-gamma / zeta)), abs=1e-12
        )
        assert gate.prob_zero()[i].item() == pytest.approx(
            1 - sigmoid(la - 0.3 * math.log(-gamma / zeta)), abs=1e-12
        )
        assert gate.prob_one()[i].item() == pytest.approx(
            sigmoid(la - 0.3 * math.log((1 - gamma) / (zeta - 1))), abs=1e-12
        )


def test_stretch_sets_gamma_and_zeta():
    gate = HardConcrete(3, stretch=0.25)
    assert (gate.gamma, gate.zeta) == (-0.25, 1.25)


def test_samples_lie_in_the_unit_interval_and_hit_both_end_points():
    gen = torch.Generator().manual_seed(0)
    z = hard_concrete_sample(torch.zeros(10_000), 0.5, GAMMA, ZETA, generator=gen)
    assert z.min().item() == 0.0 and z.max().item() == 1.0
    assert ((z > 0) & (z < 1)).any()


def test_same_generator_seed_gives_bit_identical_gates_and_samples():
    def build():
        gate = HardConcrete(50, generator=torch.Generator().manual_seed(3))
        return gate.log_alpha.detach().clone(), gate.sample().detach()

    (la1, z1), (la2, z2) = build(), build()
    assert torch.equal(la1, la2) and torch.equal(z1, z2)


def test_init_prob_active_is_the_exact_initial_probability_of_a_nonzero_gate():
    for beta in (0.1, 2 / 3, 1.5):
        gate = HardConcrete(4, temperature=beta, init_prob_active=0.999, init_std=0.0)
        assert torch.allclose(gate.prob_active(), torch.full((4,), 0.999), atol=1e-6)


def test_log_alpha_for_prob_active_inverts_prob_active():
    la = log_alpha_for_prob_active(0.2, 0.4)
    assert sigmoid(la - 0.4 * math.log(-GAMMA / ZETA)) == pytest.approx(0.2, abs=1e-12)


def test_log_alpha_for_prob_active_rejects_probabilities_outside_zero_one():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        log_alpha_for_prob_active(1.0, 0.5)


def test_init_std_jitters_log_alpha_around_the_init_prob_active_value():
    gen = torch.Generator().manual_seed(0)
    gate = HardConcrete(20_000, temperature=0.5, init_prob_active=0.3, init_std=0.05, generator=gen)
    centre = log_alpha_for_prob_active(0.3, 0.5)
    assert gate.log_alpha.mean().item() == pytest.approx(centre, abs=0.003)
    assert gate.log_alpha.std().item() == pytest.approx(0.05, rel=0.03)


def test_second_size_gives_a_two_dimensional_gate():
    gate = HardConcrete(4, 3)
    assert gate.log_alpha.shape == (4, 3)
    assert gate().shape == (4, 3) and gate.eval()().shape == (4, 3)
    assert gate.n_items == 4 and gate.shape == torch.Size([4, 3])


def test_eval_gate_is_the_temperature_aware_median_of_the_samples():
    gen = torch.Generator().manual_seed(11)
    gate = HardConcrete(6, temperature=0.4, init_std=0.0, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-1.0, -0.2, 0.0, 0.1, 0.3, 1.0], dtype=torch.float64))
    la = gate.log_alpha.detach().expand(40_000, -1)
    draws = hard_concrete_sample(la, gate.temperature, gate.gamma, gate.zeta, generator=gen)
    median = draws.median(dim=0).values
    assert torch.allclose(gate.eval()(), median, atol=0.01)


def test_eval_gate_is_exactly_zero_iff_prob_active_is_at_most_one_half():
    gate = HardConcrete(
        200, temperature=0.25, init_prob_active=0.5, init_std=2.0, dtype=torch.float64
    )
    gate.eval()
    det = gate()
    assert torch.equal(det == 0, gate.prob_active() <= 0.5)
    assert gate.num_active() == int((gate.prob_active() > 0.5).sum())


def test_paper_estimator_ignores_the_temperature_and_keeps_gates_that_are_usually_zero():
    gate = HardConcrete(1, temperature=0.1, init_std=0.0, estimator="paper")
    with torch.no_grad():
        gate.log_alpha.fill_(-1.0)
    assert gate.prob_active().item() < 0.5
    expected = min(1.0, max(0.0, sigmoid(-1.0) * (ZETA - GAMMA) + GAMMA))
    assert gate.deterministic().item() == pytest.approx(expected, abs=1e-6)
    assert gate.deterministic().item() > 0


def test_num_active_sparsity_and_active_indices_describe_the_eval_gate():
    gate = HardConcrete(5, init_std=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0, -5.0]))
    assert gate.num_active() == 2
    assert gate.sparsity() == pytest.approx(0.6)
    assert gate.active_indices().tolist() == [0, 2]


def test_active_indices_of_a_two_dimensional_gate_are_index_pairs():
    gate = HardConcrete(2, 2, init_std=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))
    assert gate.active_indices().tolist() == [[0, 0], [1, 1]]


def test_training_mode_sample_is_differentiable_in_log_alpha():
    gate = HardConcrete(100, init_prob_active=0.5, generator=torch.Generator().manual_seed(0))
    gate.train()
    gate().sum().backward()
    grad = gate.log_alpha.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).any()
    assert (grad >= 0).all()  # every sample is non-decreasing in its own log_alpha


def test_sample_gradient_matches_a_finite_difference_with_the_same_noise():
    la = torch.tensor([-0.3, 0.2, 0.8], dtype=torch.float64, requires_grad=True)

    def draw(x):
        return hard_concrete_sample(x, 0.5, GAMMA, ZETA, torch.Generator().manual_seed(5))

    draw(la).sum().backward()
    h = 1e-6
    for i in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[i] = h
        with torch.no_grad():
            fd = (draw(la + step) - draw(la - step))[i].item() / (2 * h)
        assert la.grad[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_l0_penalty_gradient_is_p_times_one_minus_p():
    gate = HardConcrete(6, init_prob_active=0.5, init_std=1.0, dtype=torch.float64)
    gate.l0_penalty().backward()
    p = gate.prob_active().detach()
    assert torch.allclose(gate.log_alpha.grad, p * (1 - p), atol=1e-12)


def test_state_dict_round_trip_restores_log_alpha_and_temperature():
    gate = HardConcrete(8, temperature=0.25, init_prob_active=0.9, init_std=0.5)
    gate.set_temperature(0.125)
    assert set(gate.state_dict()) == {"log_alpha", "temperature"}
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    other = HardConcrete(8)
    other.load_state_dict(torch.load(buf))
    assert other.temperature.item() == 0.125
    assert torch.equal(other.log_alpha, gate.log_alpha)
    assert torch.equal(other.eval()(), gate.eval()())
    assert torch.equal(other.prob_active(), gate.prob_active())


def test_set_temperature_changes_prob_active_through_the_buffer():
    gate = HardConcrete(3, temperature=1.0, init_std=0.0)
    before = gate.prob_active().clone()
    gate.set_temperature(0.1)
    la = gate.log_alpha[0].item()
    assert gate.prob_active()[0].item() == pytest.approx(
        sigmoid(la - 0.1 * math.log(-GAMMA / ZETA)), abs=1e-6
    )
    assert not torch.allclose(before, gate.prob_active())


def test_reset_parameters_restores_the_initial_probability():
    gate = HardConcrete(4, init_prob_active=0.7, init_std=0.0)
    with torch.no_grad():
        gate.log_alpha.fill_(-9.0)
    gate.reset_parameters()
    assert torch.allclose(gate.prob_active(), torch.full((4,), 0.7), atol=1e-6)


def test_extra_repr_names_shape_temperature_and_estimator():
    text = repr(HardConcrete(3, 2, temperature=0.5))
    assert "3, 2" in text and "temperature=0.5" in text and "estimator='median'" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_items": 0}, ValueError, "n_items must be >= 1, got 0"),
        ({"n_items": 2.5}, TypeError, r"n_items must be an int, got float \(2\.5\)"),
        ({"n_items": True}, TypeError, r"n_items must be an int, got bool \(True\)"),
        ({"n_items": 3, "temperature": 0.0}, ValueError, r"temperature must be > 0\.0, got 0\.0"),
        ({"n_items": 3, "temperature": "hot"}, TypeError, "temperature must be a number"),
        ({"n_items": 3, "stretch": -0.1}, ValueError, r"stretch must be > 0\.0, got -0\.1"),
        ({"n_items": 3, "init_prob_active": 1.0}, ValueError, "init_prob_active must lie strictly"),
        ({"n_items": 3, "init_prob_active": 0.0}, ValueError, "init_prob_active must lie strictly"),
        ({"n_items": 3, "init_std": -1.0}, ValueError, "init_std must be >= 0"),
        (
            {"n_items": 3, "estimator": "mean"},
            ValueError,
            r"estimator must be one of \['median', 'paper'\]",
        ),
        ({"n_items": 3, "dtype": torch.int64}, TypeError, "dtype must be a floating point"),
    ],
)
def test_bad_constructor_arguments_raise_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        HardConcrete(**kwargs)


def test_bad_second_size_names_more_dims():
    with pytest.raises(ValueError, match=r"more_dims\[0\] must be >= 1, got 0"):
        HardConcrete(3, 0)


def test_set_temperature_rejects_non_positive_values():
    with pytest.raises(ValueError, match=r"temperature must be > 0\.0, got -1\.0"):
        HardConcrete(2).set_temperature(-1.0)
