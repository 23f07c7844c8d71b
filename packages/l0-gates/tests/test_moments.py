"""Moment targets, raking calibration and subset error reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from l0_gates import moment_errors, moment_matrix, rake_weights
from l0_gates._data import as_table


def test_moment_matrix_totals_are_the_count_column_totals_centred_moments_and_category_counts():
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=(50, 2))
    cat = rng.integers(0, 3, 50)
    w = rng.uniform(0.5, 2.0, 50)
    m = moment_matrix(as_table(np.column_stack([x, cat]), categorical=[2]), torch.as_tensor(w))
    mean = w @ x / w.sum()
    sd = np.sqrt(w @ (x - mean) ** 2 / w.sum())
    z = (x - mean) / sd
    expected = np.concatenate(
        [
            [w.sum()],
            w @ x,
            [w @ (z[:, 0] ** 2), w @ (z[:, 0] * z[:, 1]), w @ (z[:, 1] ** 2)],
            np.bincount(cat, weights=w, minlength=3),
        ]
    )
    np.testing.assert_allclose(m.totals.numpy(), expected, rtol=1e-12)
    assert m.names[:4] == ["count", "total[0]", "total[1]", "moment2[0,0]"]


def test_diagonal_moments_match_only_squares():
    x = np.random.default_rng(1).normal(size=(30, 3))
    m = moment_matrix(as_table(x), torch.ones(30, dtype=torch.float64), moments="diagonal")
    assert [n for n in m.names if n.startswith("moment2")] == [
        "moment2[0,0]",
        "moment2[1,1]",
        "moment2[2,2]",
    ]


def test_calibrated_weights_reproduce_the_totals_and_stay_positive():
    rng = np.random.default_rng(2)
    sub = torch.as_tensor(np.column_stack([np.ones(40), rng.lognormal(size=(40, 3))]))
    totals = sub.sum(0) * torch.tensor([1.0, 1.1, 0.9, 1.05], dtype=torch.float64)
    w = rake_weights(sub, totals, torch.ones(40, dtype=torch.float64))
    np.testing.assert_allclose((sub.t() @ w).numpy(), totals.numpy(), rtol=1e-9)
    assert bool((w > 0).all())


def test_calibration_with_reachable_totals_returns_the_start_weights():
    sub = torch.rand(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    start = torch.full((20,), 2.0, dtype=torch.float64)
    w = rake_weights(sub, sub.t() @ start, start)
    np.testing.assert_allclose(w.numpy(), start.numpy(), rtol=1e-12)


def test_moment_errors_match_a_direct_numpy_computation():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.lognormal(size=100), "g": rng.choice(["x", "y"], 100)})
    idx = np.arange(0, 100, 4)
    w = rng.uniform(1, 5, 25)
    err = moment_errors(frame, idx, w)
    a = frame["a"].to_numpy()
    assert err["total"].item() == pytest.approx(abs(w @ a[idx] / a.sum() - 1), rel=1e-12)
    sub_mean = w @ a[idx] / w.sum()
    sub_var = w @ (a[idx] - sub_mean) ** 2 / w.sum()
    assert err["variance"].item() == pytest.approx(abs(sub_var / a.var() - 1), rel=1e-12)
    share_x = w[frame["g"].to_numpy()[idx] == "x"].sum() / w.sum()
    assert err["share"][0].item() == pytest.approx(
        abs(share_x - (frame["g"] == "x").mean()), rel=1e-12
    )


def test_moment_errors_reject_out_of_range_indices():
    with pytest.raises(ValueError, match=r"indices must be row positions in \[0, 9\]"):
        moment_errors(np.ones((10, 2)), [3, 10])
