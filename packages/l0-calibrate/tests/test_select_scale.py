"""The scalable select pipeline: column access, batched refinement, stage times, derived start weight."""

import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate import UnmetTargetWarning, calibrate
from l0_calibrate.columns import OperatorColumns, ScipyColumns
from l0_calibrate.frontend import TargetMissWarning
from l0_calibrate.selection import _project_count, _swap_refine, select_and_polish
from l0_core import HardConcrete, SparseOperator


def sample(seed=0, n=600):
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 4, n)
    region = rng.integers(0, 3, n)
    income = rng.lognormal(3, 0.6, n)
    M = np.vstack([np.ones(n), np.eye(4)[age].T, np.eye(3)[region].T, income])
    return M


def test_operator_columns_match_the_dense_matrix():
    rng = np.random.default_rng(1)
    M = sp.random(30, 200, density=0.1, random_state=2, format="csr") * 5.0
    s = rng.uniform(0.5, 2.0, 30)
    dense = M.toarray() * s[:, None]
    cols = OperatorColumns(SparseOperator.from_any(M, dtype=torch.float64), s)
    w, r = rng.random(200), rng.random(30)
    assert np.allclose(cols.matvec(w), dense @ w)
    assert np.allclose(cols.rmatvec(r), dense.T @ r)
    assert np.allclose(cols.col_sq, (dense**2).sum(axis=0))
    idx = np.array([7, 3, 150, 3])
    assert np.allclose(cols.fetch(idx).toarray(), dense[:, idx].T)
    ref = ScipyColumns(sp.csr_matrix(dense))
    assert np.allclose(ref.fetch(idx).toarray(), dense[:, idx].T)
    assert np.allclose(ref.col_sq, cols.col_sq)


def _imbalance(X, ts, d, support):
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[support] = True
    c = d.sum() / d[mask].sum()
    r = X @ np.where(mask, c * d, 0.0) - ts
    return float(r @ r)


def _greedy_all_pairs(X, ts, d, support, locked):
    """Reference: apply the best of *all* single exchanges until none improves (dense, exhaustive)."""
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[support] = True
    c = d.sum() / d[mask].sum()
    cd = c * d
    while True:
        r = X @ np.where(mask, cd, 0.0) - ts
        K = np.flatnonzero(mask & ~np.isin(np.arange(X.shape[1]), locked))
        J = np.flatnonzero(~mask)
        XK, XJ = X[:, K] * cd[K], X[:, J] * cd[J]
        base = r @ r
        # |r - XK_k + XJ_j|^2 - |r|^2 for every pair
        gain = (
            (-2 * (XK.T @ r) + (XK**2).sum(0))[:, None]
            + (2 * (XJ.T @ r) + (XJ**2).sum(0))[None, :]
            - 2 * XK.T @ XJ
        )
        a, b = np.unravel_index(np.argmin(gain), gain.shape)
        if gain[a, b] >= -1e-9 * base:
            return np.flatnonzero(mask)
        mask[K[a]], mask[J[b]] = False, True


def test_the_batched_refinement_reaches_the_exhaustive_greedy_imbalance():
    M = sample()
    t = M.sum(axis=1) * 0.1 * np.array([1.0, 0.8, 1.2, 1.0, 1.0, 0.9, 1.1, 1.0, 1.05])
    X = M / t[:, None]
    ts = np.ones(M.shape[0])
    d = np.ones(M.shape[1])
    rng = np.random.default_rng(3)
    start = np.sort(rng.choice(M.shape[1], 60, replace=False))
    locked = start[:5]
    cols = OperatorColumns(SparseOperator.from_any(M, dtype=torch.float64), 1.0 / t)
    sup, swaps, passes = _swap_refine(cols, ts, d, start, 500, locked=locked, pool=32)
    assert sup.size == 60 and np.unique(sup).size == 60
    assert set(locked) <= set(sup)
    assert swaps > 0 and passes >= 2  # the pool (32) is smaller than the free set: several passes
    before, after = _imbalance(X, ts, d, start), _imbalance(X, ts, d, sup)
    reference = _imbalance(X, ts, d, _greedy_all_pairs(X, ts, d, start, locked))
    assert after < before
    assert after <= 1.5 * reference + 1e-12
    # the scipy access path gives the same refinement
    sup2, _, _ = _swap_refine(
        ScipyColumns(sp.csr_matrix(X)), ts, d, start, 500, locked=locked, pool=32
    )
    assert _imbalance(X, ts, d, sup2) <= 1.5 * reference + 1e-12


def test_the_count_projection_puts_the_expected_open_gates_on_the_count():
    gate = HardConcrete(5000, init_prob_active=0.3)
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    _project_count(gate, 250)
    shift = gate.temperature.item() * np.log(-gate.gamma / gate.zeta)
    expected = torch.sigmoid(gate.log_alpha - shift).sum().item()
    assert abs(expected - 250) <= 0.25


def test_population_totals_without_design_weights_are_reached():
    # A sample of 600 households standing for a population 51 times larger:
    # the starting weight comes from the data, so the default 10x bound holds.
    M = sample()
    targets = M.sum(axis=1) * 51.0
    res = calibrate(M, targets, target_count=60, epochs=200)
    assert res.report["abs_rel_error"].max() < 1e-6
    assert bool(res.report["met"].all()) and res.diagnostics["unmet_targets"] == []
    assert 40.0 < res.diagnostics["start_weight"] < 65.0
    w = res.weights.to_numpy()
    assert abs(w.sum() / targets[0] - 1.0) < 1e-6  # the first row counts households
    q = res.diagnostics["start_weight"] * M.shape[1] / 60
    assert (w[w > 0] / q).max() <= 10.0 + 1e-9


def test_a_bound_that_keeps_a_target_out_of_reach_is_named():
    M = sample()
    targets = M.sum(axis=1) * 2.0
    targets[-1] *= 40.0  # the income total alone 40 times higher: no 2x bound reaches it
    with pytest.warns(UnmetTargetWarning, match=r"target_8.*max_weight_ratio=2"):
        res = calibrate(M, targets, target_count=60, epochs=100, max_weight_ratio=2.0)
    assert res.diagnostics["unmet_targets"][-1] == "target_8"
    assert not res.report["met"].iloc[-1]
    assert res.diagnostics["weights_at_bound"] > 0
    assert res.report["abs_rel_error"].iloc[-1] > 0.5


def test_an_unmet_target_gives_one_warning_that_a_miss_filter_also_catches():
    M = sample()
    targets = M.sum(axis=1) * 2.0
    targets[-1] *= 40.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = calibrate(M, targets, target_count=60, epochs=100, max_weight_ratio=2.0)
    misses = [w for w in caught if issubclass(w.category, TargetMissWarning)]
    assert len(misses) == 1 and misses[0].category is UnmetTargetWarning
    assert bool(res.report["missed"].iloc[-1])  # beyond the 5% tolerance as well
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=TargetMissWarning)
        calibrate(M, targets, target_count=60, epochs=100, max_weight_ratio=2.0)


@pytest.mark.slow
def test_stage_times_are_logged_and_recorded(caplog):
    M = sample()
    with caplog.at_level(logging.INFO, logger="l0_calibrate"):
        res = calibrate(M, M.sum(axis=1), target_count=60, epochs=50)
    times = res.diagnostics["stage_times"]
    assert {"gates", "refine", "polish"} <= set(times)
    assert all(v >= 0 for v in times.values())
    for name in ("gates", "refine", "polish"):
        assert any(f"stage {name}: start" in r.getMessage() for r in caplog.records)
        assert any(f"stage {name}: end after" in r.getMessage() for r in caplog.records)
    phases = res.history.dropna(subset=["stage_seconds"])
    assert list(phases["phase"]) == list(times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gates = calibrate(M, M.sum(axis=1), target_count=60, epochs=50, method="gates")
    assert {"prepare", "fit"} <= set(gates.diagnostics["stage_times"])


def test_select_and_polish_records_the_start_weight_and_meets_scaled_targets():
    M = sample(seed=4)
    res = select_and_polish(M, M.sum(axis=1) * 20.0, 50, epochs=100)
    assert res.unmet.size == 0 and res.polish.converged
    assert np.allclose(M @ res.weights, M.sum(axis=1) * 20.0, rtol=1e-8)
    assert np.allclose(res.design_weights, res.diagnostics["start_weight"])
