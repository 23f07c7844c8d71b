import math

import numpy as np
import pytest
import torch
from l0_calibrate.regularizers import (
    calibration_distance,
    clip_weight_ratio,
    dispersion_penalty,
    inflate_design_weights,
    ratio_bound_penalty,
    ratio_bounds,
)

W = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.float64)
D = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)


def test_chi2_distance_is_the_design_weighted_half_squared_ratio_gap():
    r = (W / D).numpy()
    expected = float((D.numpy() * (r - 1) ** 2 / 2).sum())
    assert calibration_distance(W, D, "chi2", normalize=False).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_normalised_distance_is_the_raw_sum_divided_by_the_design_total():
    raw = calibration_distance(W, D, "raking", normalize=False).item()
    assert calibration_distance(W, D, "raking").item() == pytest.approx(raw / 6.0, rel=1e-12)


def test_raking_distance_matches_w_log_w_over_d_minus_w_plus_d():
    w, d = W.numpy(), D.numpy()
    expected = float((w * np.log(w / d) - w + d).sum())
    assert calibration_distance(W, D, "raking", normalize=False).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_raking_distance_of_a_zero_weight_is_its_design_weight_with_finite_gradient():
    w = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([3.0, 1.0], dtype=torch.float64)
    value = calibration_distance(w, d, "raking", normalize=False)
    value.backward()
    assert value.item() == pytest.approx(3.0)
    assert torch.isfinite(w.grad).all()


def test_chi2_gradient_is_ratio_gap_over_design_total():
    w = W.clone().requires_grad_(True)
    calibration_distance(w, D, "chi2").backward()
    expected = (W / D - 1) / D.sum()
    assert torch.allclose(w.grad, expected, rtol=1e-12)


def test_active_only_ignores_dropped_households():
    w = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    d = torch.tensor([5.0, 1.0, 1.0], dtype=torch.float64)
    kept = calibration_distance(w[1:], d[1:], "chi2")
    assert calibration_distance(w, d, "chi2", active_only=True).item() == pytest.approx(
        kept.item(), rel=1e-12
    )


def test_unknown_distance_is_rejected_by_name():
    with pytest.raises(ValueError, match="kind must be one of"):
        calibration_distance(W, D, "hellinger")


def test_design_weights_of_another_shape_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        calibration_distance(W, D[:3])


def test_non_positive_design_weights_are_rejected():
    with pytest.raises(ValueError, match="positive finite"):
        calibration_distance(W, torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))


def test_dispersion_penalty_is_the_population_cv_squared_of_the_non_zero_weights():
    w = torch.tensor([0.0, 1.0, 2.0, 6.0, 0.0], dtype=torch.float64)
    x = np.array([1.0, 2.0, 6.0])
    assert dispersion_penalty(w).item() == pytest.approx(x.var() / x.mean() ** 2, rel=1e-12)


def test_dispersion_penalty_with_a_reference_measures_the_adjustment_spread():
    ref = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert dispersion_penalty(ref * 3.0, reference=ref).item() == pytest.approx(0.0, abs=1e-12)


def test_ratio_bounds_accept_a_number_a_pair_or_none():
    assert ratio_bounds(5) == (0.2, 5.0)
    assert ratio_bounds((0.0, math.inf)) == (0.0, math.inf)
    assert ratio_bounds(None) == (0.0, math.inf)


def test_a_ratio_not_above_one_is_rejected():
    with pytest.raises(ValueError, match="must be > 1"):
        ratio_bounds(0.5)


def test_a_pair_excluding_one_is_rejected():
    with pytest.raises(ValueError, match="0 <= lo <= 1 <= hi"):
        ratio_bounds((1.5, 3.0))


def test_inflated_design_weights_carry_the_population_total():
    d = np.array([1.0, 2.0, 3.0, 4.0])
    q = inflate_design_weights(d, np.array([False, True, False, True]))
    assert q.sum() == pytest.approx(d.sum())
    assert q[0] / q[1] == pytest.approx(2.0 / 4.0)


def test_clipping_keeps_zeros_and_bounds_the_rest():
    w = torch.tensor([0.0, 0.25, 3.0, 100.0])
    ref = torch.full((4,), 2.0)
    out = clip_weight_ratio(w, ref, 4)
    assert out.tolist() == [0.0, 0.5, 3.0, 8.0]
    assert w.tolist() == [0.0, 0.25, 3.0, 100.0]


def test_ratio_bound_penalty_is_the_mean_squared_excess_over_kept_weights():
    w = torch.tensor([0.0, 0.1, 3.0, 20.0])
    ref = torch.full((4,), 2.0)
    # ratios 0.05 (below 0.25 by 0.2), 1.5 (inside), 10 (above 4 by 6) over 3 kept weights
    expected = (0.2**2 + 6.0**2) / 3
    assert ratio_bound_penalty(w, ref, 4).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "penalty",
    [
        lambda w, q, reduce: calibration_distance(w, q, "raking", active_only=True, reduce=reduce),
        lambda w, q, reduce: calibration_distance(w, q, "chi2", reduce=reduce),
        lambda w, q, reduce: dispersion_penalty(w, reference=q, reduce=reduce),
        lambda w, q, reduce: ratio_bound_penalty(w, q, 3.0, reduce=reduce),
    ],
)
def test_reduce_combines_the_sums_of_two_halves_into_the_whole(penalty):
    # what a column-sharded fit does: each part's sums, all-reduced, then the formula
    g = torch.Generator().manual_seed(0)
    w = torch.rand(40, generator=g, dtype=torch.float64) * 8
    w[::5] = 0.0
    q = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    seen: list[torch.Tensor] = []

    def keep(sums: torch.Tensor) -> torch.Tensor:
        seen.append(sums.detach().clone())
        return sums

    penalty(w[25:], q[25:], keep)
    combined = penalty(w[:25], q[:25], lambda sums: sums + seen[0])
    whole = penalty(w, q, None)
    assert combined.item() == pytest.approx(whole.item(), rel=1e-12)
    assert penalty(w[:25], q[:25], None).item() != pytest.approx(whole.item(), rel=1e-6)
