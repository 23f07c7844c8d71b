"""The select pipeline's stages at scale: inexact-Newton CG polish, count projection, stage devices, narrowed input."""

import logging

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from l0_calibrate import calibrate, polish_dual
from l0_calibrate.inputs import as_matrix
from l0_calibrate.polish import polish_weights
from l0_calibrate.problem import build_problem
from l0_calibrate.selection import _project_count, select_and_polish
from l0_calibrate.selection_pipeline import SupportSearch
from l0_calibrate.stages import StageClock
from l0_core import HardConcrete, SparseOperator
from l0_core._sparse_build import narrowed_csr


def nested_problem(seed=0, n=3000, n_states=4, n_districts=24, n_vars=6):
    """Nation, state and district rows of a few variables (state rows add up to the nation's)."""
    rng = np.random.default_rng(seed)
    district = rng.integers(0, n_districts, n)
    state = district % n_states
    has = rng.random((n, n_vars)) < 0.5
    has[:, 0] = True
    vals = np.where(has, rng.lognormal(2.0, 1.0, (n, n_vars)), 0.0)
    vals[:, 0] = 1.0
    rows = [vals.T]
    rows.append(np.vstack([vals.T * (state == s) for s in range(n_states)]))
    rows.append(np.vstack([vals[:, 0] * (district == k) for k in range(n_districts)]))
    X = np.vstack(rows)
    w_true = rng.lognormal(0.0, 0.3, n)
    return X, X @ w_true


@pytest.fixture(params=["block Schur", "Jacobi"])
def cg_only(monkeypatch, request):
    """Every polish takes the inexact-Newton CG path (as above ``_DENSE_HESSIAN_MAX`` rows).

    Preconditioned by the block factorisation of the nested rows, or (as for
    a matrix without that structure) by the diagonal.
    """
    monkeypatch.setattr(polish_dual, "_DENSE_HESSIAN_MAX", 0)
    if request.param == "Jacobi":
        monkeypatch.setattr(polish_dual, "row_blocks", lambda *args, **kwargs: None)


def test_the_cg_polish_equals_the_closed_form_greg_weights_with_dependent_rows(cg_only):
    X, t = nested_problem()
    support = np.arange(0, X.shape[1], 4)
    res = polish_weights(sp.csr_matrix(X), t, support, distance="chi2")
    Xs = X[:, support]
    q = np.full(support.size, X.shape[1] / support.size)
    # Independent: GREG on a basis of the rows (the state rows add up to the nation's).
    _, _, piv = sla.qr(
        (Xs * np.sqrt(q)).T / np.abs(t), pivoting=True, mode="economic"
    )
    rank = np.linalg.matrix_rank((Xs * np.sqrt(q)) / np.abs(t)[:, None])
    rows = np.sort(piv[:rank])
    lam = np.linalg.solve((Xs[rows] * q) @ Xs[rows].T, t[rows] - Xs[rows] @ q)
    greg = q * (1 + Xs[rows].T @ lam)
    assert rank < X.shape[0]  # the system is singular: CG must cope
    assert res.converged and res.method == "newton"
    np.testing.assert_allclose(res.weights[support], greg, rtol=1e-7)
    assert np.abs(res.rel_error).max() <= 1e-9


def test_the_cg_polish_matches_iterative_proportional_fitting(cg_only):
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3, 400), rng.integers(0, 4, 400)
    X = np.vstack([np.eye(3)[a].T, np.eye(4)[b].T])
    t = np.concatenate([[120.0, 150.0, 130.0], [90.0, 110.0, 100.0, 100.0]])
    res = polish_weights(X, t, np.arange(400), distance="raking")
    w = np.ones(400)
    for _ in range(500):
        w *= (t[:3] / np.bincount(a, w, 3))[a]
        w *= (t[3:] / np.bincount(b, w, 4))[b]
    assert res.converged
    np.testing.assert_allclose(res.weights, w, rtol=1e-8)


def test_the_cg_and_dense_polishes_agree_on_a_bounded_raking(monkeypatch):
    X, t = nested_problem(seed=3)
    support = np.arange(1, X.shape[1], 3)
    kw = dict(distance="raking", max_weight_ratio=3.0)
    dense = polish_weights(X, t, support, **kw)
    monkeypatch.setattr(polish_dual, "_DENSE_HESSIAN_MAX", 0)
    cg = polish_weights(X, t, support, **kw)
    assert dense.converged and cg.converged
    np.testing.assert_allclose(cg.weights, dense.weights, rtol=1e-6, atol=1e-9)


def test_the_cg_steps_are_inexact_far_from_the_solution(monkeypatch, cg_only):
    X, t = nested_problem(seed=5)
    support = np.arange(0, X.shape[1], 2)
    rtols = []
    real = polish_dual._cg_step

    def spy(*args, **kwargs):
        rtols.append(kwargs["rtol"])
        return real(*args, **kwargs)

    monkeypatch.setattr(polish_dual, "_cg_step", spy)
    res = polish_weights(X, t, support, distance="raking")
    assert res.converged and np.abs(res.rel_error).max() <= 1e-9
    assert rtols[0] == polish_dual._CG_FORCING_MAX  # loose at the start
    assert min(rtols) < 1e-3 * rtols[0]  # tighter as the gradient shrinks


def test_the_count_projection_with_a_scratch_buffer_matches_and_takes_few_passes():
    gate = HardConcrete(20000, init_prob_active=0.3)
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    other = HardConcrete(20000, init_prob_active=0.3)
    with torch.no_grad():
        other.log_alpha.copy_(gate.log_alpha)
    buf = torch.empty_like(gate.log_alpha.detach())
    _project_count(gate, 1000, buf)
    _project_count(other, 1000)
    assert torch.equal(gate.log_alpha, other.log_alpha)
    shift = gate.temperature.item() * np.log(-gate.gamma / gate.zeta)
    assert abs(torch.sigmoid(gate.log_alpha - shift).sum().item() - 1000) <= 1.0
    with torch.no_grad():  # a small optimiser-like step: one or two passes put it back
        gate.log_alpha.add_(0.05 * torch.randn(20000, generator=torch.Generator().manual_seed(1)))
    assert _project_count(gate, 1000, buf) <= 3
    assert abs(torch.sigmoid(gate.log_alpha - shift).sum().item() - 1000) <= 1.0


def test_stage_devices_are_recorded_and_cpu_stages_of_an_accelerator_run_are_logged_once(caplog):
    X, t = nested_problem(n=800, n_districts=8)
    p = build_problem(X, t, dtype=torch.float64)
    clock = StageClock(device="cuda:0")  # as if the pipeline computed on a GPU
    search = SupportSearch(
        p, p.targets, np.ones(800), np.ones(t.size), np.abs(t), np.arange(800), 200,
        kind="raking", lo=0.1, hi=10.0, band=0.05, metric="relative", refine_swaps=50,
        repair_moves=0, clock=clock,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="l0_calibrate"):
        search.run(cover=None, polish=True)
        search.polish_on(np.arange(200))  # a second polish: no second notice
    assert clock.devices["refine"] == "cpu" and clock.devices["polish"] == "cpu"
    notices = [r.getMessage() for r in caplog.records if "on the CPU (compute device cuda:0)" in r.getMessage()]
    assert sum("stage polish runs wholly" in m for m in notices) == 1
    assert sum("stage refine runs" in m for m in notices) == 1


def test_a_cpu_run_records_its_stage_devices_without_cpu_notices(caplog):
    X, t = nested_problem(n=800, n_districts=8)
    with caplog.at_level(logging.INFO, logger="l0_calibrate"):
        res = calibrate(X, t, target_count=200, epochs=30)
    devices = res.diagnostics["stage_devices"]
    assert devices["gates"] == "cpu" and devices["polish"] == "cpu"
    assert set(devices) <= set(res.diagnostics["stage_times"])
    assert not any("on the CPU (compute device" in r.getMessage() for r in caplog.records)
    assert res.report["abs_rel_error"].mean() <= 1e-6


def test_a_float64_csr_input_is_narrowed_without_copying_its_indices_or_changing_the_operator():
    X, _ = nested_problem(n=500, n_districts=8)
    M = sp.csr_matrix(X)
    before = (M.data.copy(), M.indices.copy(), M.indptr.copy())
    N = narrowed_csr(M, torch.float32)  # what l0-core does to a float64 CSR input first
    assert N.dtype == np.float32 and np.shares_memory(N.indices, M.indices)
    assert narrowed_csr(M, torch.float64) is M and narrowed_csr(M.tocsc(), torch.float32).format == "csc"
    op, _, _ = as_matrix(M, dtype=torch.float32, device=None)
    ref = SparseOperator.from_any(M, dtype=torch.float32)
    w = torch.rand(500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(op.matvec(w), ref.matvec(w))
    assert torch.equal(op.rmatvec(torch.ones(X.shape[0])), ref.rmatvec(torch.ones(X.shape[0])))
    for a, b in zip(before, (M.data, M.indices, M.indptr), strict=True):
        np.testing.assert_array_equal(a, b)
    bad = M.copy()
    bad.data[0] = 1e300  # overflows float32: still reported as a non-finite matrix
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_matrix(bad, dtype=torch.float32, device=None)


def test_select_meets_nested_targets_exactly_with_a_low_design_effect(cg_only):
    X, t = nested_problem(seed=2)
    res = select_and_polish(sp.csr_matrix(X), t, 300, epochs=150)
    assert res.polish.converged and res.unmet.size == 0
    assert np.abs(X @ res.weights / t - 1).max() <= 1e-8  # independent of the report
    w = res.weights[res.support]
    assert w.size * (w**2).sum() / w.sum() ** 2 < 1.5
