import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate.diagnostics import (
    error_summary,
    holdout_errors,
    target_report,
    weight_diagnostics,
)


def test_weight_diagnostics_match_hand_computations():
    w = np.array([0.0, 2.0, 4.0, 0.0, 6.0])
    diag = weight_diagnostics(w)
    x = np.array([2.0, 4.0, 6.0])
    assert diag["n_nonzero"] == 3
    assert diag["sparsity"] == pytest.approx(0.4)
    assert diag["total"] == pytest.approx(12.0)
    assert diag["kish_ess"] == pytest.approx(144.0 / 56.0)
    assert diag["design_effect"] == pytest.approx(1 + x.var() / x.mean() ** 2)
    assert diag["design_effect"] == pytest.approx(3 / diag["kish_ess"])
    assert (diag["min_weight"], diag["max_weight"]) == (2.0, 6.0)


def test_ratio_statistics_use_the_non_zero_weights_and_the_inflated_design_weights():
    w = torch.tensor([0.0, 3.0, 8.0, 0.0])
    d = pd.Series([1.0, 1.0, 2.0, 4.0])
    diag = weight_diagnostics(w, d)
    assert (diag["min_ratio"], diag["max_ratio"]) == (3.0, 4.0)
    # kept design weights sum to 3 of 8: inflation 8/3
    assert diag["min_adjustment"] == pytest.approx(3.0 * 3 / 8)
    assert diag["max_adjustment"] == pytest.approx(4.0 * 3 / 8)


def test_negative_weights_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        weight_diagnostics([1.0, -1.0])


def test_target_report_lists_relative_errors_and_groups():
    rep = target_report(
        [110.0, 45.0, 0.0], [100.0, 50.0, 0.0], names=["a", "b", "c"], groups=["x", "x", "y"]
    )
    assert list(rep.columns) == [
        "name",
        "target",
        "estimate",
        "rel_error",
        "abs_rel_error",
        "group",
    ]
    assert rep["rel_error"].tolist() == pytest.approx([0.1, -0.1, 0.0])
    assert rep["group"].tolist() == ["x", "x", "y"]


def test_a_missed_zero_target_has_infinite_relative_error():
    rep = target_report([1.0], [0.0])
    assert np.isinf(rep["abs_rel_error"].iloc[0])


def test_names_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="one entry per target"):
        target_report([1.0, 2.0], [1.0, 2.0], names=["only"])


def test_error_summary_matches_hand_computations():
    s = error_summary(target_report([1.0, 2.1, 2.5, 4.0], [1.0, 2.0, 2.0, 5.0]))
    errs = np.array([0.0, 0.05, 0.25, 0.2])
    assert s["mean_abs_rel_error"] == pytest.approx(errs.mean())
    assert s["median_abs_rel_error"] == pytest.approx(np.median(errs))
    assert s["max_abs_rel_error"] == pytest.approx(0.25)
    assert s["share_within"] == pytest.approx(0.5)


def test_holdout_errors_compare_weighted_totals_with_the_true_ones():
    H = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]]))
    rep = holdout_errors([2.0, 1.0, 1.0], H, [5.0, 3.0], names=["income", "age"])
    assert rep["estimate"].tolist() == pytest.approx([4.0, 4.0])
    assert rep["rel_error"].tolist() == pytest.approx([-0.2, 1 / 3])


def test_holdout_weights_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="weights must have length 3"):
        holdout_errors([1.0, 1.0], np.ones((1, 3)), [3.0])
