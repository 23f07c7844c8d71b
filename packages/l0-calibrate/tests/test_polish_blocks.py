"""The block structure of nested targets: partition, block Schur solves, balance of a support."""

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate import calibrate, polish_dual
from l0_calibrate.polish import polish_weights
from l0_calibrate.polish_blocks import BlockSchur, row_blocks
from l0_calibrate.problem import build_problem
from l0_calibrate.selection_balance import balance_support


def nested(seed=0, districts=12, per_district=40, rows_per_district=4, n_wide=3):
    """Districts of households: wide rows (totals over everyone) and a few count rows per district.

    Returns ``(M, w_true, district)``: every household is in one district;
    the targets ``M @ w_true`` are feasible.
    """
    rng = np.random.default_rng(seed)
    n = districts * per_district
    district = np.repeat(np.arange(districts), per_district)
    wide = rng.lognormal(0.0, 0.5, (n_wide, n))
    wide[0] = 1.0
    local = np.zeros((districts * rows_per_district, n))
    for j in range(rows_per_district):
        has = rng.random(n) < (1.0 if j == 0 else 0.5)
        local[district * rows_per_district + j, np.arange(n)] = has * rng.integers(1, 4, n)
    M = sp.csr_matrix(np.vstack([wide, local]))
    w_true = rng.lognormal(0.0, 0.2, n)
    return M, w_true, district


def test_row_blocks_finds_the_wide_rows_and_one_group_per_district():
    M, _, _ = nested()
    blocks = row_blocks(M)
    assert blocks.wide.tolist() == [0, 1, 2]
    groups = sorted(tuple(sorted(blocks.group(b).tolist())) for b in range(blocks.n_groups))
    expected = sorted(tuple(range(3 + 4 * k, 3 + 4 * k + 4)) for k in range(12))
    assert groups == expected
    assert row_blocks(M, max_block=3) is None  # a district's 4 rows do not fit


@pytest.mark.parametrize("seed", [0, 1])
def test_the_block_factorisation_solves_the_newton_system_exactly(seed):
    M, _, _ = nested(seed)
    rng = np.random.default_rng(seed)
    D = rng.uniform(0.1, 3.0, M.shape[1])
    D[rng.random(M.shape[1]) < 0.2] = 0.0  # clipped weights
    a = rng.uniform(1e-3, 1e-2, M.shape[0])
    H = (M.multiply(D) @ M.T).toarray() + np.diag(a)
    y = rng.normal(size=M.shape[0])
    x = BlockSchur(M, row_blocks(M)).factor(D, a).solve(y)
    np.testing.assert_allclose(x, np.linalg.solve(H, y), rtol=1e-7, atol=1e-9)


def test_a_singular_system_still_factorises_and_solves_consistent_right_hand_sides():
    M, _, _ = nested()
    M = sp.vstack([M, M[3] + M[7]]).tocsr()  # a target that is the sum of two others
    D = np.ones(M.shape[1])
    H = (M.multiply(D) @ M.T).toarray()
    y = H @ np.random.default_rng(0).normal(size=M.shape[0])  # in the range of H
    x = BlockSchur(M, row_blocks(M)).factor(D, np.zeros(M.shape[0])).solve(y)
    np.testing.assert_allclose(H @ x, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


@pytest.mark.parametrize("distance", ["chi2", "raking"])
def test_the_block_path_gives_the_dense_paths_weights(monkeypatch, distance):
    M, w, _ = nested(2)
    t = M @ w
    dense = polish_weights(M, t, np.arange(M.shape[1]), distance=distance, max_weight_ratio=4)
    calls = []
    real = BlockSchur.factor

    def counted(self, D, a):
        calls.append(1)
        return real(self, D, a)

    monkeypatch.setattr(polish_dual, "_DENSE_HESSIAN_MAX", 10)
    monkeypatch.setattr(BlockSchur, "factor", counted)
    block = polish_weights(M, t, np.arange(M.shape[1]), distance=distance, max_weight_ratio=4)
    assert calls, "the block Schur path was not taken"
    assert dense.converged and block.converged and block.method == "newton"
    np.testing.assert_allclose(block.weights, dense.weights, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(M @ block.weights, t, rtol=1e-8)


def test_an_infeasible_system_on_the_block_path_is_detected_and_falls_back(monkeypatch):
    M, w, _ = nested(3)
    t = M @ w
    t[5] *= 50.0  # one district count no kept household can reach within the bounds
    monkeypatch.setattr(polish_dual, "_DENSE_HESSIAN_MAX", 10)
    res = polish_weights(M, t, np.arange(M.shape[1]), max_weight_ratio=4)
    assert res.method == "penalised" and not res.converged
    assert bool(res.infeasible[5])
    ratio = res.weights  # the reference weights are 1 (no design weights, every household kept)
    assert ratio.min() >= 0.25 - 1e-9 and ratio.max() <= 4 + 1e-9


def thin_district_support(seed=0):
    """A support of 30% of each district, but only 3 households (fewer than its 4 targets) in district 0."""
    M, w, district = nested(seed, districts=10, per_district=40)
    rng = np.random.default_rng(seed)
    M = M.tolil()
    for j in range(4):  # district 0: every household counts in its 4 rows (values 1..3)
        M[3 + j, :40] = rng.integers(1, 4, 40).astype(float)
    M = M.tocsr()
    sup = []
    for k in range(10):
        members = np.flatnonzero(district == k)
        sup.append(rng.choice(members, 3 if k == 0 else 12, replace=False))
    sup = np.sort(np.concatenate(sup))
    return M, M @ w, sup, district


def test_balance_moves_households_into_a_district_that_cannot_meet_its_targets():
    M, t, sup, district = thin_district_support()
    before = polish_weights(M, t, sup, max_weight_ratio=10, distance="raking")
    assert not before.converged  # 4 targets, 3 households: no exact solution
    p = build_problem(M, t, dtype=torch.float64)
    order = np.arange(M.shape[1])  # rank: index order
    new, stats = balance_support(
        p, sup, order, t, np.abs(t), np.ones(M.shape[1]),
        kind="raking", lo=0.1, hi=10.0, tol=1e-9,
    )  # fmt: skip
    assert new.size == sup.size and np.unique(new).size == new.size
    assert stats["failing"] == 1 and stats["fixed"] == 1 and stats["moved"] > 0
    added, removed = np.setdiff1d(new, sup), np.setdiff1d(sup, new)
    assert set(district[added]) == {0}  # households moved into district 0 ...
    assert 0 not in set(district[removed])  # ... from the others
    in0 = np.flatnonzero(district == 0)
    best_outside = in0[~np.isin(in0, sup)][: added.size]  # best-ranked first
    assert added.tolist() == best_outside.tolist()
    after = polish_weights(M, t, new, max_weight_ratio=10, distance="raking")
    assert after.converged and after.max_abs_rel_error < 1e-8


def test_balance_leaves_a_support_whose_groups_all_pass_unchanged():
    M, w, district = nested(4)
    t = M @ w
    sup = np.flatnonzero(np.arange(M.shape[1]) % 2 == 0)
    p = build_problem(M, t, dtype=torch.float64)
    new, stats = balance_support(
        p, sup, np.arange(M.shape[1]), t, np.abs(t), np.ones(M.shape[1]),
        kind="chi2", lo=0.0, hi=np.inf, tol=1e-9,
    )  # fmt: skip
    assert new is sup and stats == {"groups": 12, "failing": 0, "fixed": 0, "moved": 0}


def test_the_default_calibrate_runs_and_records_the_balance_stage(caplog):
    M, w, _ = nested(5, districts=10, per_district=60)
    with caplog.at_level(logging.INFO, logger="l0_calibrate"):
        res = calibrate(M, M @ w, target_count=200, epochs=60, seed=0)
    assert "balance" in res.diagnostics["stage_times"]
    assert any("stage balance: start" in r.getMessage() for r in caplog.records)
    assert res.n_active == 200
    assert res.report["abs_rel_error"].max() < 1e-6  # exact


def _short_survey():
    """40 cells, 600 households, a bound of 2 and 45 kept: the polish is not exact (cover and repair run)."""
    rng = np.random.default_rng(0)
    cell = rng.integers(0, 39, 600)
    dense = np.zeros((40, 600))
    dense[cell, np.arange(600)] = rng.integers(1, 4, 600)
    dense[-1] = rng.lognormal(0.0, 1.0, 600)
    M = sp.csr_matrix(dense)
    return M, M @ (rng.lognormal(0.0, 0.3, 600) * 50)


def test_large_fallbacks_are_bounded_the_cover_skipped_and_the_repair_tries_capped(monkeypatch, caplog):
    import warnings

    from l0_calibrate import selection_pipeline as pipeline

    M, t = _short_survey()
    tries = []
    real_repair = pipeline._repair

    def counting_repair(*args):
        tries.append(args[-1])
        return real_repair(*args)

    monkeypatch.setattr(pipeline, "_repair", counting_repair)
    monkeypatch.setattr(pipeline, "_COVER_MAX_NNZ", 10)  # every linear programme counts as too large
    monkeypatch.setattr(pipeline, "_REPAIR_WORK", 1)  # every support counts as huge
    with caplog.at_level(logging.INFO, logger="l0_calibrate"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate(M, t, target_count=45, epochs=60, max_weight_ratio=2.0, seed=0)
    stages = res.diagnostics["stage_times"]
    assert "cover" not in stages and "repair" in stages
    assert any("cover seed skipped" in r.getMessage() for r in caplog.records)
    assert tries == [pipeline._REPAIR_MIN_TRIES]
    monkeypatch.setattr(pipeline, "_COVER_MAX_NNZ", 10**9)
    monkeypatch.setattr(pipeline, "_REPAIR_WORK", 10**12)
    tries.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate(M, t, target_count=45, epochs=60, max_weight_ratio=2.0, seed=0)
    assert "cover" in res.diagnostics["stage_times"] and tries == [40]  # the default repair_moves
