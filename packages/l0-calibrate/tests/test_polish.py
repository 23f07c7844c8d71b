import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate.polish import polish_weights
from l0_core import SparseOperator
from scipy.optimize import linprog


def feasible_problem(seed=0, n=300, m=8, lift=1.05):
    rng = np.random.default_rng(seed)
    X = (rng.random((m, n)) < 0.5) * rng.uniform(0.5, 2.0, (m, n))
    X[0] = 1.0  # a population count
    t = X @ (rng.uniform(0.8, 1.2, n) * lift)
    return X, t


def test_chi2_polish_equals_the_closed_form_greg_weights():
    X, t = feasible_problem()
    support = np.arange(0, 300, 3)
    res = polish_weights(sp.csr_matrix(X), t, support, distance="chi2")
    Xs = X[:, support]
    q = np.full(support.size, 300 / support.size)
    lam = np.linalg.solve((Xs * q) @ Xs.T, t - Xs @ q)
    greg = q * (1 + Xs.T @ lam)
    assert res.converged and res.method == "newton"
    np.testing.assert_allclose(res.weights[support], greg, rtol=1e-7)


def test_raking_polish_matches_iterative_proportional_fitting_on_two_margins():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3, 400), rng.integers(0, 4, 400)
    X = np.vstack([np.eye(3)[a].T, np.eye(4)[b].T])
    t = np.concatenate([[120.0, 150.0, 130.0], [90.0, 110.0, 100.0, 100.0]])
    res = polish_weights(X, t, np.arange(400), distance="raking")
    w = np.ones(400)  # IPF, written out independently
    for _ in range(500):
        w *= (t[:3] / np.bincount(a, w, 3))[a]
        w *= (t[3:] / np.bincount(b, w, 4))[b]
    assert res.converged
    np.testing.assert_allclose(res.weights, w, rtol=1e-8)


def test_polished_targets_are_exact_and_zero_outside_the_support():
    X, t = feasible_problem(seed=2)
    support = np.arange(1, 300, 2)
    res = polish_weights(X, t, support, distance="raking", max_weight_ratio=4)
    assert res.converged
    assert np.max(np.abs(X @ res.weights / t - 1)) < 1e-9
    outside = np.setdiff1d(np.arange(300), support)
    assert np.all(res.weights[outside] == 0)
    assert not res.infeasible.any()


@pytest.mark.parametrize("distance", ["chi2", "raking"])
def test_bounds_on_the_ratio_to_the_inflated_design_weight_are_respected(distance):
    X, t = feasible_problem(seed=3, lift=1.15)
    support = np.arange(0, 300, 2)
    q = 300 / support.size
    lp = linprog(
        np.zeros(support.size),
        A_eq=X[:, support] * q,
        b_eq=t,
        bounds=[(1 / 1.3, 1.3)] * support.size,
    )
    assert lp.status == 0  # an independent check that the bounded problem is feasible
    res = polish_weights(X, t, support, distance=distance, max_weight_ratio=1.3)
    ratio = res.weights[support] / q
    assert res.converged
    assert ratio.min() >= 1 / 1.3 - 1e-12 and ratio.max() <= 1.3 + 1e-12
    assert np.max(np.abs(res.rel_error)) < 1e-9


def test_infeasible_bounds_fall_back_to_the_closest_bounded_fit_and_flag_targets():
    X, t = feasible_problem(seed=4, lift=1.5)
    support = np.arange(0, 300, 2)
    q = 300 / support.size
    lp = linprog(
        np.zeros(support.size),
        A_eq=X[:, support] * q,
        b_eq=t,
        bounds=[(1 / 1.2, 1.2)] * support.size,
    )
    assert lp.status == 2  # infeasible, independently
    res = polish_weights(X, t, support, distance="chi2", max_weight_ratio=1.2)
    assert not res.converged and res.method == "penalised"
    assert res.infeasible.any()
    ratio = res.weights[support] / q
    assert ratio.min() >= 1 / 1.2 - 1e-12 and ratio.max() <= 1.2 + 1e-12
    # The fallback pushes every ratio to the upper bound here: all targets need +50%.
    assert np.all(res.rel_error < 0)


def test_fallback_relative_errors_are_close_to_bounded_least_squares():
    from scipy.optimize import lsq_linear

    X, t = feasible_problem(seed=5, m=12, n=40)
    t = t * np.random.default_rng(0).uniform(0.7, 1.3, t.size)  # inconsistent targets
    support = np.arange(0, 40, 4)
    q = 4.0
    A = X[:, support] * q / t[:, None]
    ls = lsq_linear(A, np.ones(t.size), bounds=(0.2, 5.0))
    res = polish_weights(X, t, support, distance="chi2", max_weight_ratio=5, ridge=1e-8, band=None)
    ours = np.sum(res.rel_error**2)
    best = np.sum((A @ ls.x - 1) ** 2)
    assert not res.converged
    assert ours <= best * 1.001 + 1e-12


def band_problem(seed=0, m=40, n=120, k=30, pert=0.045):
    """More targets than kept households (no exact fit), targets within 4.5% of a bounded weighting."""
    rng = np.random.default_rng(seed)
    X = (rng.random((m, n)) < 0.3) * rng.uniform(0.5, 2.0, (m, n))
    X[0] = 1.0
    support = np.arange(0, n, n // k)
    w0 = np.zeros(n)
    w0[support] = (n / k) * rng.uniform(0.5, 2.0, k)
    t = X @ w0 * (1 + rng.uniform(-pert, pert, m))
    return X, t, support


def band_lp(X, t, support, q, band, ratio):
    """Independent check: is there a bounded weighting with every target within the band?"""
    A = X[:, support] * q
    return linprog(
        np.zeros(support.size),
        A_ub=np.vstack([A, -A]),
        b_ub=np.concatenate([t * (1 + band), -t * (1 - band)]),
        bounds=[(1 / ratio, ratio)] * support.size,
    )


@pytest.mark.parametrize("distance,seed", [("chi2", 0), ("raking", 0), ("raking", 3)])
def test_band_fallback_keeps_every_target_within_the_band_when_the_lp_says_it_can(distance, seed):
    X, t, support = band_problem(seed)
    q = 120 / support.size
    assert band_lp(X, t, support, q, 0.0, 3.0).status == 2  # no exact fit
    assert band_lp(X, t, support, q, 0.05, 3.0).status == 0  # but a 5% band is feasible
    v = np.ones(t.size)
    v[1] = 1e-3  # least squares then sacrifices target 1
    kw = dict(distance=distance, max_weight_ratio=3, target_weights=v)
    plain = polish_weights(X, t, support, band=None, **kw)
    res = polish_weights(X, t, support, band=0.05, **kw)
    assert not res.converged and res.method == "penalised"
    assert np.max(np.abs(plain.rel_error)) > 0.05  # least squares alone leaves a target outside
    assert np.max(np.abs(res.rel_error)) <= 0.05 + 1e-4
    ratio = res.weights[support] / q
    assert ratio.min() >= 1 / 3 - 1e-12 and ratio.max() <= 3 + 1e-12


def test_an_infeasible_band_still_returns_bounded_weights_no_worse_than_least_squares_beyond_it():
    X, t, support = band_problem()
    q = 120 / support.size
    band = 0.01
    assert band_lp(X, t, support, q, band, 3.0).status == 2  # the band cannot hold
    plain = polish_weights(X, t, support, distance="chi2", max_weight_ratio=3, band=None)
    res = polish_weights(X, t, support, distance="chi2", max_weight_ratio=3, band=band)
    ratio = res.weights[support] / q
    assert ratio.min() >= 1 / 3 - 1e-12 and ratio.max() <= 3 + 1e-12

    def excess(r):
        return np.sum(np.maximum(np.abs(r.rel_error) - band, 0.0) ** 2)

    assert excess(res) <= excess(plain) + 1e-12
    assert res.infeasible.any()


def test_an_exact_fit_ignores_the_band():
    X, t = feasible_problem(seed=2)
    support = np.arange(1, 300, 2)
    a = polish_weights(X, t, support, distance="raking", max_weight_ratio=4, band=0.05)
    b = polish_weights(X, t, support, distance="raking", max_weight_ratio=4, band=None)
    assert a.converged and a.method == "newton"
    np.testing.assert_array_equal(a.weights, b.weights)


@pytest.mark.parametrize("band", [0.0, -0.1, float("nan"), "5%", True])
def test_a_bad_band_is_rejected(band):
    X, t = feasible_problem()
    with pytest.raises(ValueError, match="band"):
        polish_weights(X, t, np.arange(50), band=band)


def test_a_target_no_kept_household_contributes_to_is_reported_and_the_rest_are_exact():
    X, t = feasible_problem(seed=6)
    X[5, :150] = 0.0
    t[5] = 10.0
    res = polish_weights(X, t, np.arange(150), distance="raking")
    assert not res.converged
    assert res.infeasible.tolist() == [i == 5 for i in range(8)]
    assert np.max(np.abs(np.delete(res.rel_error, 5))) < 1e-9


def test_every_matrix_type_gives_the_same_weights():
    X, t = feasible_problem(seed=7)
    support = np.arange(0, 300, 5)
    ref = polish_weights(X, t, support).weights
    for M in (sp.csc_matrix(X), torch.tensor(X), SparseOperator.from_any(X, dtype=torch.float64)):
        np.testing.assert_allclose(polish_weights(M, t, support).weights, ref, rtol=1e-10)


def test_a_boolean_support_mask_equals_the_index_list():
    X, t = feasible_problem(seed=8)
    mask = np.zeros(300, dtype=bool)
    mask[::4] = True
    np.testing.assert_array_equal(
        polish_weights(X, t, mask).weights, polish_weights(X, t, np.flatnonzero(mask)).weights
    )


def test_init_weights_are_the_reference_the_polish_stays_close_to():
    X, t = feasible_problem(seed=9)
    init = np.zeros(300)
    init[:100] = np.linspace(1.0, 5.0, 100)
    init[:100] *= t[0] / init.sum()
    res = polish_weights(X, t, np.arange(100), init_weights=init, distance="chi2")
    Xs, q = X[:, :100], init[:100]
    lam = np.linalg.solve((Xs * q) @ Xs.T, t - Xs @ q)
    np.testing.assert_allclose(res.weights[:100], q * (1 + Xs.T @ lam), rtol=1e-7)


def test_inputs_are_not_modified():
    X, t = feasible_problem(seed=10)
    X0, t0 = X.copy(), t.copy()
    d = np.ones(300)
    polish_weights(X, t, np.arange(100), design_weights=d, max_weight_ratio=3)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(d, np.ones(300))


def test_repeated_support_indices_are_rejected():
    X, t = feasible_problem()
    with pytest.raises(ValueError, match="repeated household indices"):
        polish_weights(X, t, [0, 1, 1])


def test_support_out_of_range_is_rejected():
    X, t = feasible_problem()
    with pytest.raises(ValueError, match=r"support indices must lie in \[0, 300\)"):
        polish_weights(X, t, [0, 300])


def test_unknown_distance_is_rejected():
    X, t = feasible_problem()
    with pytest.raises(ValueError, match="distance must be one of"):
        polish_weights(X, t, [0, 1], distance="logit")


def test_targets_of_the_wrong_length_are_rejected():
    X, t = feasible_problem()
    with pytest.raises(ValueError, match="targets must have length 8"):
        polish_weights(X, t[:3], [0, 1])


def test_non_positive_init_weights_on_the_support_are_rejected():
    X, t = feasible_problem()
    with pytest.raises(ValueError, match="init_weights must be positive on the support"):
        polish_weights(X, t, [0, 1], init_weights=np.zeros(300))
