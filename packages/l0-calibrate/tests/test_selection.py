import numpy as np
import pytest
import scipy.sparse as sp
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


def test_a_negative_lambda_dispersion_is_rejected():
    M, t = problem(5, n=100)
    with pytest.raises(ValueError, match="lambda_dispersion must be >= 0"):
        select_and_polish(M, t, 10, lambda_dispersion=-1.0)


@pytest.mark.parametrize(
    ("old", "new", "bad", "message"),
    [
        ("dispersion_weight", "lambda_dispersion", -1.0, "lambda_dispersion must be >= 0"),
        ("distance_weight", "lambda_distance", -1.0, "lambda_distance must be >= 0"),
        ("log_every", "verbose_freq", 0, "verbose_freq must be a positive integer"),
    ],
)
def test_old_select_keywords_warn_and_reach_the_new_ones(old, new, bad, message):
    M, t = problem(5, n=100)
    # the bad value, given under the old name, is checked as the new keyword's
    with pytest.warns(DeprecationWarning, match=new), pytest.raises(ValueError, match=message):
        select_and_polish(M, t, 10, **{old: bad})


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("dispersion_weight", "lambda_dispersion", 0.1),
        ("distance_weight", "lambda_distance", 0.0),
        ("log_every", "verbose_freq", 100),
    ],
)
def test_old_and_new_select_keyword_together_are_rejected(old, new, value):
    M, t = problem(5, n=100)
    with pytest.raises(TypeError, match=f"both {old}= and {new}="):
        select_and_polish(M, t, 10, **{old: value, new: value})


def cells_problem(seed=0, n=1500):
    """Counts in 86 cells of three skewed categories and their crossings (some cells of 5 people)."""
    rng = np.random.default_rng(seed)
    a = rng.choice(5, n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    b = rng.choice(6, n, p=[0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
    c = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    rows = [np.ones(n)]
    for codes, k in ((a, 5), (b, 6), (c, 4), (a * 6 + b, 30), (a * 4 + c, 20), (b * 4 + c, 24)):
        for g in range(k):
            r = (codes == g).astype(float)
            if r.sum() >= 5:
                rows.append(r)
    X = np.vstack(rows)
    return X, X.sum(axis=1)


def test_with_more_targets_than_a_small_sample_covers_every_target_stays_within_the_band():
    X, t = cells_problem()
    kw = dict(epochs=100, max_weight_ratio=5, seed=0)
    plain = select_and_polish(X, t, 60, band=None, **kw)
    res = select_and_polish(X, t, 60, band=0.05, **kw)
    assert np.max(np.abs(plain.polish.rel_error)) > 0.05  # small cells missed without the band
    assert np.max(np.abs(res.polish.rel_error)) <= 0.05 + 1e-4
    assert res.support.size == 60 and np.count_nonzero(res.weights) == 60
    q = X.shape[1] / 60  # inflated design weight: all households carry 1
    ratio = res.weights[res.support] / q
    assert ratio.min() >= 1 / 5 - 1e-9 and ratio.max() <= 5 + 1e-9


def test_the_cover_seed_admits_weights_within_the_band_checked_by_an_lp():
    from l0_calibrate.selection import _cover_seed
    from scipy.optimize import linprog

    X, t = cells_problem(1)
    n, count, band = X.shape[1], 60, 0.05
    Xr = X / t[:, None]
    seed = _cover_seed(sp.csr_matrix(Xr), np.ones(t.size), np.ones(n), count, band, 5.0)
    assert 0 < seed.size <= count
    A = Xr[:, seed]
    lp = linprog(
        np.zeros(seed.size),
        A_ub=np.vstack([A, -A]),
        b_ub=np.concatenate([np.full(t.size, 1 + band), np.full(t.size, -(1 - band))]),
        bounds=(0, 5.0 * n / count),
    )
    assert lp.status == 0


def test_an_impossible_band_gives_no_seed():
    from l0_calibrate.selection import _cover_seed

    X = sp.csr_matrix(np.array([[1.0, 1.0, 1.0]]))
    # every household may carry at most 1.1 q = 1.1: the total 1 cannot drop to 0.5 +- 0.05
    assert _cover_seed(X, np.array([10.0]), np.ones(3), 3, 0.05, 1.1).size == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(band=0.0), "band"),
        (dict(band="5%"), "band"),
        (dict(cover="yes"), "cover"),
        (dict(repair_moves=-1), "repair_moves"),
    ],
)
def test_bad_band_options_are_rejected(kwargs, match):
    M, t = problem(5, n=100)
    with pytest.raises(ValueError, match=match):
        select_and_polish(M, t, 10, **kwargs)
