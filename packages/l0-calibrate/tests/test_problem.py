"""The frozen Problem: one conversion of the caller's matrix per calibrate() call, lazy views."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterator

import l0_calibrate.problem as problem_module
import l0_calibrate.views as views_module
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate import calibrate
from l0_calibrate.diagnostics import holdout_errors, problem_report, target_report
from l0_calibrate.polish import polish_weights
from l0_calibrate.problem import Problem, build_problem, prepare_problem
from l0_calibrate.selection import select_and_polish
from l0_core import SparseOperator


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count every conversion of a matrix: a new operator, an operator copy, a whole scipy copy."""
    counts: Counter[str] = Counter()
    from_any = SparseOperator.from_any.__func__  # type: ignore[attr-defined]
    to = SparseOperator.to
    to_csr = problem_module.operator_to_csr

    def counting_from_any(cls, matrix, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = from_any(cls, matrix, *args, **kwargs)
        if out is not matrix:
            counts["operator"] += 1
        return out

    def counting_to(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts["operator copy"] += 1
        return to(self, *args, **kwargs)

    def counting_to_csr(op):  # type: ignore[no-untyped-def]
        counts["scipy copy"] += 1
        return to_csr(op)

    monkeypatch.setattr(SparseOperator, "from_any", classmethod(counting_from_any))
    monkeypatch.setattr(SparseOperator, "to", counting_to)
    monkeypatch.setattr(problem_module, "operator_to_csr", counting_to_csr)
    monkeypatch.setattr(views_module, "operator_to_csr", counting_to_csr)
    yield counts


def _survey(n_targets: int = 40, n: int = 600, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Cells x households with an exact positive solution (targets = M @ w_true)."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, n_targets - 1, n)
    dense = np.zeros((n_targets, n))
    dense[cell, np.arange(n)] = rng.integers(1, 4, n)
    dense[-1] = rng.lognormal(0.0, 1.0, n)  # one skewed amount row over all households
    w_true = rng.lognormal(0.0, 0.3, n) * 50
    M = sp.csr_matrix(dense)
    return M, M @ w_true


def test_default_select_with_polish_and_repair_converts_the_matrix_once(conversions):
    M, t = _survey()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate(M, t, target_count=45, epochs=60, max_weight_ratio=2.0)
    stages = res.diagnostics["stage_times"]
    assert {"gates", "refine", "polish", "repair"} <= set(stages), stages
    assert dict(conversions) == {"operator": 1}


def test_default_select_with_the_whitened_metric_converts_once(conversions):
    M, t = _survey(n_targets=6, n=500, seed=1)
    res = calibrate(M, t, target_count=100, epochs=60)
    assert res.report["abs_rel_error"].max() < 1e-6
    assert dict(conversions) == {"operator": 1}


def test_gates_with_polish_converts_the_matrix_once(conversions):
    M, t = _survey(n_targets=8, n=400, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate(M, t, target_count=100, method="gates", epochs=50)
    assert res.model is not None and res.model.polish_result_ is not None
    assert dict(conversions) == {"operator": 1}


def test_gates_without_a_count_converts_once_too(conversions):
    M, t = _survey(n_targets=8, n=300, seed=3)
    calibrate(M, t, epochs=20)
    assert dict(conversions) == {"operator": 1}


def test_select_and_polish_on_a_problem_uses_its_operator(conversions):
    M, t = _survey(n_targets=10, n=300, seed=4)
    problem = build_problem(M, t)
    assert dict(conversions) == {"operator": 1}
    res = select_and_polish(problem, None, 60, epochs=30)
    assert dict(conversions) == {"operator": 1}
    assert res.polish is not None and res.polish.converged
    np.testing.assert_allclose(M @ res.weights, t, rtol=1e-8)


def test_polish_weights_reads_only_the_kept_columns(conversions):
    M, t = _survey(n_targets=5, n=200, seed=5)
    sup = np.arange(0, 200, 2)
    direct = polish_weights(M, M[:, sup] @ np.full(sup.size, 3.0), sup)
    op = SparseOperator.from_any(M, dtype=torch.float64)
    conversions.clear()
    via_op = polish_weights(op, M[:, sup] @ np.full(sup.size, 3.0), sup)
    assert not conversions  # an operator's columns are gathered, not converted
    np.testing.assert_allclose(direct.weights, via_op.weights, rtol=1e-12)
    assert direct.converged


def test_problem_views_match_the_matrix():
    rng = np.random.default_rng(6)
    dense = rng.random((5, 30)) * (rng.random((5, 30)) < 0.4)
    for M in (
        sp.csr_matrix(dense),
        sp.csc_matrix(dense),
        sp.coo_matrix(dense),
        dense,
        torch.tensor(dense),
    ):
        p = build_problem(M, dense.sum(axis=1))
        idx = np.array([29, 3, 7])
        np.testing.assert_allclose(p.columns(idx).toarray(), dense[:, idx], rtol=1e-6)
        w = rng.random(30)
        np.testing.assert_allclose(p.estimates(w), dense @ w, rtol=1e-6)
    exact = build_problem(
        sp.csr_matrix(dense), dense.sum(axis=1)
    )  # float32 operator, float64 views
    w = rng.random(30)
    assert exact.op.dtype == torch.float32 and exact.columns_dtype == torch.float64
    np.testing.assert_array_equal(exact.estimates(w), sp.csr_matrix(dense) @ w)
    # a dense float64 tensor is sliced (its float64 values); a float32 one is read from the operator
    assert build_problem(torch.tensor(dense), dense.sum(axis=1)).columns_dtype == torch.float64
    single = build_problem(torch.tensor(dense, dtype=torch.float32), dense.sum(axis=1))
    assert single.columns_dtype == torch.float32


def test_estimates_of_a_float32_operator_are_summed_in_float64_in_chunks(monkeypatch):
    monkeypatch.setattr(views_module, "_CHUNK_NNZ", 7)
    rng = np.random.default_rng(7)
    dense = (rng.random((4, 50)) * (rng.random((4, 50)) < 0.5)).astype(np.float32)
    p = build_problem(torch.tensor(dense), np.ones(4))
    w = np.where(rng.random(50) < 0.5, rng.random(50), 0.0)
    np.testing.assert_allclose(p.estimates(w), dense.astype(np.float64) @ w, rtol=1e-12)


def test_csr64_is_built_at_most_once(conversions):
    p = build_problem(torch.eye(3), np.ones(3))
    first = p.csr64()
    assert p.csr64() is first
    assert conversions["scipy copy"] == 1
    np.testing.assert_array_equal(first.toarray(), np.eye(3))


def test_the_problem_is_frozen_and_prepare_problem_is_its_old_name():
    p = prepare_problem(np.eye(2), [1.0, 2.0], n_features=2, dtype=torch.float64, device=None)
    assert isinstance(p, Problem)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.targets = np.zeros(2)  # type: ignore[misc]
    assert p.n_targets == 2 and p.n_households == 2 and p.household_labels == [0, 1]


def test_build_problem_checks_and_aligns_design_weights():
    import pandas as pd

    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0]}, index=["x", "y"])
    p = build_problem(frame, [3.0, 1.0], design_weights=pd.Series({"y": 2.0, "x": 1.0}))
    assert p.design_weights is not None and p.design_weights.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="design_weights must be positive"):
        build_problem(frame, [3.0, 1.0], design_weights=[1.0, 0.0])


def test_reports_read_the_problem():
    M = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    p = build_problem(M, [3.0, 1.0], target_names=["a", "b"], target_groups=["g", "h"])
    rep = problem_report(p, [1.0, 1.0, 5.0])
    assert rep["name"].tolist() == ["a", "b"] and rep["group"].tolist() == ["g", "h"]
    assert rep["estimate"].tolist() == [3.0, 0.0] and rep["infeasible"].tolist() == [False, True]
    assert target_report(p.estimates(np.ones(3)), p)["abs_rel_error"].tolist() == [0.0, 1.0]
    hold = holdout_errors([1.0, 0.0, 2.0], sp.coo_matrix(np.array([[1.0, 5.0, 1.0]])), [4.0])
    assert hold["rel_error"].round(12).tolist() == [-0.25]
