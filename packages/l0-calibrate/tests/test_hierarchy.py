import numpy as np
import pytest
import torch
from l0_calibrate.hierarchy import (
    build_hierarchy,
    consistency_report,
    hierarchy_from_geography,
    hierarchy_penalty,
    reconcile_targets,
)
from l0_calibrate.selection import select_and_polish

# nation (0) -> states 1, 2 -> districts 3, 4 (of state 1) and 5, 6 (of state 2)
PARENT = [-1, 0, 0, 1, 1, 2, 2]


def test_aggregation_matrix_sums_each_parents_children():
    h = build_hierarchy(PARENT)
    assert h.parent_index.tolist() == [0, 1, 2]
    assert h.depth.tolist() == [0, 1, 1, 2, 2, 2, 2]
    dense = h.A.toarray()
    assert dense.tolist() == [
        [0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 1],
    ]


def test_a_cycle_is_rejected():
    with pytest.raises(ValueError, match="cycle"):
        build_hierarchy([1, 2, 0])


def test_a_parent_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"parent\[1\] = 9 is not a target index"):
        build_hierarchy([-1, 9])


def test_geography_builder_links_the_same_variable_one_level_up():
    h = hierarchy_from_geography(
        ["pop", "pop", "pop", "pop", "inc"],
        ["US", "CA", "CA-1", "NY", "CA"],
        {"CA": "US", "NY": "US", "CA-1": "CA"},
    )
    assert h.parent.tolist() == [-1, 0, 1, 0, -1]


def test_reconciliation_scales_children_to_their_reconciled_parent_top_down():
    t = np.array([100.0, 30.0, 50.0, 10.0, 20.0, 25.0, 35.0])
    out = reconcile_targets(t, build_hierarchy(PARENT))
    # states scaled by 100/80; districts then scaled to the new state totals
    expected = [100.0, 37.5, 62.5, 12.5, 25.0, 62.5 * 25 / 60, 62.5 * 35 / 60]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert t[1] == 30.0  # the input is untouched


def test_reconciled_targets_have_no_gaps():
    rng = np.random.default_rng(0)
    h = build_hierarchy(PARENT)
    out = reconcile_targets(rng.uniform(1, 10, 7), h)
    np.testing.assert_allclose(h.gaps(out), 0.0, atol=1e-12)


def test_penalty_is_the_mean_squared_relative_gap_and_pushes_children_toward_the_parent():
    h = build_hierarchy(PARENT)
    est = torch.tensor(
        [100.0, 40.0, 50.0, 20.0, 20.0, 25.0, 25.0], dtype=torch.float64, requires_grad=True
    )
    value = hierarchy_penalty(est, h.A, h.parent_index)
    gaps = np.array([(90 - 100) / 100, (40 - 40) / 40, (50 - 50) / 50])
    assert value.item() == pytest.approx(np.mean(gaps**2), rel=1e-12)
    value.backward()
    assert est.grad[1].item() < 0  # raising a state closes the nation gap


def test_penalty_is_zero_for_consistent_estimates():
    h = build_hierarchy(PARENT)
    est = torch.tensor([100.0, 40.0, 60.0, 15.0, 25.0, 30.0, 30.0])
    assert hierarchy_penalty(est, h.A, h.parent_index).item() == 0.0


def test_consistency_report_lists_each_parents_gap():
    rep = consistency_report([100.0, 40.0, 50.0, 20.0, 20.0, 25.0, 25.0], build_hierarchy(PARENT))
    assert rep["gap"].tolist() == [-10.0, 0.0, 0.0]
    assert rep["n_children"].tolist() == [2, 2, 2]


def test_hierarchical_option_makes_polished_lower_levels_add_up_to_the_higher_ones():
    rng = np.random.default_rng(3)
    n = 600
    district = rng.integers(0, 4, n)  # districts 0,1 in state A; 2,3 in state B
    state = district // 2
    rows = [np.ones(n), (state == 0) * 1.0, (state == 1) * 1.0] + [
        (district == k) * 1.0 for k in range(4)
    ]
    M = np.vstack(rows)
    truth = M.sum(axis=1)
    inconsistent = truth * np.array(
        [1.0, 1.0, 1.0, 1.1, 0.9, 1.05, 1.0]
    )  # districts off by up to 10%
    h = build_hierarchy([-1, 0, 0, 1, 1, 2, 2])
    res = select_and_polish(M, inconsistent, 120, hierarchy=h, epochs=50, seed=0)
    est = M @ res.weights
    assert res.polish.converged
    np.testing.assert_allclose(h.gaps(est), 0.0, atol=1e-6 * truth[0])
    np.testing.assert_allclose(est, reconcile_targets(inconsistent, h), rtol=1e-8)
