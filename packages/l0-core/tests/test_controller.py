"""TargetSparsityController: reaching a target, multiplier updates, validation."""

from __future__ import annotations

import pytest
import torch
from l0_core import HardConcrete, TargetSparsityController, compute_l0_penalty


def train(gate, ctl, steps, lr=0.1):
    opt = torch.optim.Adam(gate.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ctl.penalty(compute_l0_penalty(gate)).backward()
        opt.step()
        ctl.step()


@pytest.mark.slow
def test_controller_drives_the_expected_count_to_a_target_count():
    torch.manual_seed(0)
    gate = HardConcrete(200, init_prob_active=0.9, generator=torch.Generator().manual_seed(0))
    ctl = TargetSparsityController(target=40, n_total=200, lr=0.05)
    train(gate, ctl, 800)
    assert abs(gate.l0_penalty().item() - 40) < 1


def test_controller_accepts_a_fraction_and_reaches_it():
    gate = HardConcrete(100, init_prob_active=0.2, generator=torch.Generator().manual_seed(1))
    ctl = TargetSparsityController(target=0.6, n_total=100)
    assert ctl.target_count == 60 and ctl.target_fraction == pytest.approx(0.6)
    train(gate, ctl, 800)
    assert abs(gate.l0_penalty().item() - 60) < 1


def test_penalty_is_lambda1_gap_plus_lambda2_gap_squared():
    ctl = TargetSparsityController(target=20, n_total=100)
    ctl.lambda1.fill_(0.7)
    ctl.lambda2.fill_(3.0)
    gap = 50 / 100 - 0.2
    assert ctl.penalty(torch.tensor(50.0)).item() == pytest.approx(0.7 * gap + 3.0 * gap**2)


def test_penalty_without_quadratic_term_is_linear_in_the_gap():
    ctl = TargetSparsityController(target=20, n_total=100, quadratic=False)
    ctl.lambda1.fill_(0.7)
    ctl.lambda2.fill_(3.0)
    assert ctl.penalty(torch.tensor(50.0)).item() == pytest.approx(0.7 * 0.3)


def test_step_is_gradient_ascent_on_the_multipliers_with_the_last_gap():
    ctl = TargetSparsityController(target=10, n_total=100, lr=0.5)
    ctl.penalty(torch.tensor(30.0))
    ctl.step()
    assert ctl.lambda1.item() == pytest.approx(0.5 * 0.2)
    assert ctl.lambda2.item() == pytest.approx(0.5 * 0.2**2)
    ctl.penalty(torch.tensor(5.0))
    ctl.step()
    assert ctl.lambda1.item() == pytest.approx(0.5 * 0.2 + 0.5 * (-0.05))


def test_penalty_gradient_pushes_the_expected_count_towards_the_target():
    ctl = TargetSparsityController(target=10, n_total=100)
    ctl.lambda1.fill_(1.0)
    s = torch.tensor(30.0, requires_grad=True)
    ctl.penalty(s).backward()
    assert s.grad.item() > 0  # gradient descent lowers s


def test_multipliers_are_saved_in_the_state_dict():
    ctl = TargetSparsityController(target=10, n_total=100)
    ctl.lambda1.fill_(0.25)
    other = TargetSparsityController(target=10, n_total=100)
    other.load_state_dict(ctl.state_dict())
    assert other.lambda1.item() == 0.25 and set(ctl.state_dict()) == {"lambda1", "lambda2"}


def test_step_before_penalty_raises_a_clear_error():
    with pytest.raises(RuntimeError, match=r"call penalty\(\) before step\(\)"):
        TargetSparsityController(1, 10).step()


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (0, ValueError, "target must be between 1 and 10"),
        (11, ValueError, "target must be between 1 and 10"),
        (1.5, ValueError, r"target as a fraction must lie in \(0, 1\]"),
        (0.0, ValueError, r"target as a fraction must lie in \(0, 1\]"),
        ("5", TypeError, "target must be an int count or a float fraction"),
        (True, TypeError, "target must be an int count or a float fraction"),
    ],
)
def test_bad_targets_raise_errors_naming_the_argument(target, error, message):
    with pytest.raises(error, match=message):
        TargetSparsityController(target, 10)


def test_resolve_target_uses_the_callers_argument_name():
    with pytest.raises(ValueError, match="target_count must be between 1 and 5"):
        TargetSparsityController.resolve_target(9, 5, argument="target_count")


def test_a_tiny_fraction_still_keeps_one_item():
    assert TargetSparsityController.resolve_target(0.001, 10) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_total": 0}, "n_total must be >= 1, got 0"),
        ({"n_total": 10, "lr": 0.0}, r"lr must be > 0\.0, got 0\.0"),
        ({"n_total": 10, "lr": float("inf")}, "lr must be a finite number, got inf"),
    ],
)
def test_bad_sizes_and_rates_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TargetSparsityController(1, **kwargs)


def trajectory(ctl, steps=1500):
    gate = HardConcrete(1000, init_prob_active=0.9, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        ctl.penalty(gate.l0_penalty()).backward()
        opt.step()
        ctl.step()
        counts.append(gate.l0_penalty().item())
    return counts


@pytest.mark.slow
def test_anti_windup_and_damping_stop_the_adam_overshoot():
    plain = trajectory(TargetSparsityController(100, 1000))
    tamed = trajectory(TargetSparsityController(100, 1000, reset_on_cross=True, damping=1.0))
    # the plain integral controller dives far below the target before coming back
    assert min(plain) < 20
    assert min(tamed) > 45
    # and settles tighter: after step 500 it stays within 1 of the target
    assert max(abs(c - 100) for c in tamed[500:]) < 1.0
    assert max(abs(c - 100) for c in plain[500:]) > 3.0


def test_reset_on_cross_zeroes_the_multipliers_when_the_gap_changes_sign():
    ctl = TargetSparsityController(50, 100, lr=0.1, reset_on_cross=True)
    ctl.penalty(torch.tensor(80.0))
    ctl.step()
    ctl.penalty(torch.tensor(70.0))
    ctl.step()
    assert ctl.lambda1.item() == pytest.approx(0.1 * (0.3 + 0.2))
    ctl.penalty(torch.tensor(40.0))  # gap -0.1: crossed, restart from zero then step
    ctl.step()
    assert ctl.lambda1.item() == pytest.approx(0.1 * -0.1)
    assert ctl.lambda2.item() == pytest.approx(0.1 * 0.01)


def test_damping_adds_a_proportional_term_treated_as_constant():
    ctl = TargetSparsityController(20, 100, quadratic=False, damping=2.0)
    ctl.lambda1.fill_(0.5)
    s = torch.tensor(50.0, requires_grad=True)
    term = ctl.penalty(s)
    gap = 0.3
    assert term.item() == pytest.approx((0.5 + 2.0 * gap) * gap)
    term.backward()
    # d/ds of (lambda1 + c * gap_const) * gap = (lambda1 + c * gap) / n_total
    assert s.grad.item() == pytest.approx((0.5 + 2.0 * gap) / 100)


def test_max_multiplier_clamps_both_multipliers():
    ctl = TargetSparsityController(1, 10, lr=10.0, max_multiplier=0.25)
    for _ in range(3):
        ctl.penalty(torch.tensor(10.0))
        ctl.step()
    assert ctl.lambda1.item() == pytest.approx(0.25)
    assert ctl.lambda2.item() == pytest.approx(0.25)


def test_set_target_moves_the_target_and_keeps_the_multipliers():
    ctl = TargetSparsityController(50, 100)
    ctl.lambda1.fill_(0.3)
    ctl.set_target(0.1)
    assert ctl.target_count == 10 and ctl.lambda1.item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="target must be between 1 and 100"):
        ctl.set_target(500)
    ctl.reset()
    assert ctl.lambda1.item() == 0.0
    with pytest.raises(RuntimeError, match="call penalty\\(\\) before step\\(\\)"):
        ctl.step()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"damping": -1.0}, ValueError, r"damping must be >= 0\.0, got -1\.0"),
        ({"damping": float("nan")}, ValueError, "damping must be a finite number, got nan"),
        ({"max_multiplier": 0.0}, ValueError, r"max_multiplier must be > 0\.0, got 0\.0"),
        ({"max_multiplier": float("inf")}, ValueError, "max_multiplier must be a finite number"),
        ({"reset_on_cross": 1}, TypeError, "reset_on_cross must be True or False"),
        ({"quadratic": "yes"}, TypeError, "quadratic must be True or False"),
    ],
)
def test_bad_controller_options_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        TargetSparsityController(1, 10, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_count_is_refused_by_name_and_leaves_the_multipliers_alone(bad):
    ctl = TargetSparsityController(5, 10)
    ctl.penalty(torch.tensor(8.0))
    ctl.step()
    before = (ctl.lambda1.item(), ctl.lambda2.item())
    with pytest.raises(ValueError, match=f"expected_active must be finite, got {bad}"):
        ctl.penalty(torch.tensor(bad))
    ctl.step()  # the last finite gap is reused, so the state stays finite
    assert ctl.lambda1.item() == pytest.approx(before[0] + ctl.lr * 0.3)
    assert torch.isfinite(ctl.lambda1) and torch.isfinite(ctl.lambda2)


def test_the_count_must_be_a_scalar_tensor():
    ctl = TargetSparsityController(5, 10)
    with pytest.raises(TypeError, match="expected_active must be a scalar torch.Tensor, got float"):
        ctl.penalty(5.0)
    with pytest.raises(ValueError, match=r"expected_active must be a scalar, got shape \(2,\)"):
        ctl.penalty(torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_count_is_compared_with_the_target_in_float32(dtype):
    ctl = TargetSparsityController(30_000, 100_000)
    count = torch.tensor(45_568.0, dtype=dtype)
    term = ctl.penalty(count)
    assert term.dtype == torch.float32
    assert ctl._last_gap == pytest.approx(count.double().item() / 100_000 - 0.3, abs=1e-9)
