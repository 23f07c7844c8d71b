import numpy as np
import pytest
from l0_calibrate.diagnostics import weight_diagnostics
from l0_calibrate.polish import polish_weights
from l0_calibrate.selection import select_and_polish


def problem(seed=0, n=800):
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 5, n)
    region = rng.integers(0, 3, n)
    income = rng.lognormal(3, 0.6, n)
    M = np.vstack(
        [np.ones(n), np.eye(5)[age].T, np.eye(3)[region].T, income, income * (region == 0)]
    )
    return M, M.sum(axis=1)


def test_selection_keeps_exactly_the_target_count_and_matches_the_targets():
    M, t = problem()
    res = select_and_polish(M, t, 80, epochs=100, seed=0)
    assert int((res.weights > 0).sum()) == 80
    assert res.support.size == 80
    assert res.polish.converged
    assert np.max(np.abs(M @ res.weights / t - 1)) < 1e-8


def test_the_same_seed_gives_identical_weights():
    M, t = problem(1)
    a = select_and_polish(M, t, 60, epochs=60, seed=3)
    b = select_and_polish(M, t, 60, epochs=60, seed=3)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_selected_households_need_smaller_adjustments_than_a_random_subset():
    M, t = problem(2)
    res = select_and_polish(M, t, 60, epochs=150, seed=0)
    rng = np.random.default_rng(0)
    random_deffs = []
    for _ in range(5):
        sup = np.sort(rng.choice(M.shape[1], 60, replace=False))
        w = polish_weights(M, t, sup, distance="raking", max_weight_ratio=10).weights
        random_deffs.append(weight_diagnostics(w)["design_effect"])
    assert res.diagnostics["design_effect"] < min(random_deffs)


def test_a_fractional_target_count_is_a_share_of_the_households():
    M, t = problem(3, n=400)
    res = select_and_polish(M, t, 0.1, epochs=30, seed=0)
    assert res.support.size == 40


def test_without_polish_the_gate_weights_are_returned_on_the_support():
    M, t = problem(4, n=300)
    res = select_and_polish(M, t, 30, epochs=30, polish=False, seed=0)
    assert res.polish is None
    np.testing.assert_allclose(res.weights[res.support], res.fit_weights)
    assert res.weights.sum() == pytest.approx(300.0)


def test_a_target_count_above_the_households_is_rejected():
    M, t = problem(5, n=100)
    with pytest.raises(ValueError, match="target_count"):
        select_and_polish(M, t, 500)


def test_a_negative_dispersion_weight_is_rejected():
    M, t = problem(5, n=100)
    with pytest.raises(ValueError, match="dispersion_weight must be >= 0"):
        select_and_polish(M, t, 10, dispersion_weight=-1.0)
