"""SampleGate: learned, weighted subsets that reproduce the full data's statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from l0_gates import SampleGate, moment_matrix, rake_weights
from l0_gates._data import as_table

N, K = 2000, 200


@pytest.fixture(scope="module")
def survey():
    """Skewed data (4 log-normal columns + a rare-level category) and a fitted gate."""
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((N, 4)) @ np.linalg.cholesky(0.5 * np.eye(4) + 0.5).T
    x = np.exp(latent * np.linspace(0.6, 1.4, 4))
    cat = rng.choice(5, size=N, p=[0.6, 0.3, 0.08, 0.015, 0.005])
    x[:, 0] *= 1 + cat
    data = np.concatenate([x, cat[:, None]], 1)
    gate = SampleGate(N, K, seed=0).fit(data, categorical=[4])
    return x, cat, data, gate


def weighted_errors(x, cat, idx, w):
    """Independent numpy computation of the relative errors a subset makes."""
    tot = np.abs(w @ x[idx] / x.sum(0) - 1)
    mean = w @ x[idx] / w.sum()
    var = np.abs((w @ (x[idx] - mean) ** 2) / w.sum() / x.var(0) - 1)
    share = np.abs(
        np.bincount(cat[idx], weights=w, minlength=5) / w.sum()
        - np.bincount(cat, minlength=5) / len(cat)
    )
    return tot.max(), var.max(), share.max()


def random_subsets(draws=20, seed=1):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(N, K, replace=False)) for _ in range(draws)]


def stratified_subset(cat, rng):
    sizes = np.bincount(cat, minlength=5)
    alloc = np.maximum(1, np.round(K * sizes / N)).astype(int)
    alloc[0] += K - alloc.sum()
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(cat == h), alloc[h], replace=False) for h in range(5)]
    )
    w = np.concatenate([np.full(alloc[h], sizes[h] / alloc[h]) for h in range(5)])
    return idx, w


def test_exactly_target_samples_sorted_distinct_rows_are_selected(survey):
    _, _, data, gate = survey
    selected, indices = gate.select_samples(data)
    assert indices.shape == (K,)
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(selected, data[indices])


def test_selected_rows_with_their_weights_reproduce_totals_variances_and_shares(survey):
    x, cat, data, gate = survey
    _, w, idx = gate.select_weighted_samples(data)
    tot, var, share = weighted_errors(x, cat, idx, w)
    assert tot < 1e-6 and var < 1e-6 and share < 1e-6
    assert (w > 0).all()


def test_subset_error_is_ten_times_below_uniform_random_and_below_stratified(survey):
    x, cat, data, gate = survey
    idx, w = gate.indices_.numpy(), gate.weights_.numpy()
    learned = max(weighted_errors(x, cat, idx, w)[:2])
    uniform = np.median(
        [max(weighted_errors(x, cat, s, np.full(K, N / K))[:2]) for s in random_subsets()]
    )
    rng = np.random.default_rng(2)
    strat = np.median(
        [max(weighted_errors(x, cat, *stratified_subset(cat, rng))[:2]) for _ in range(20)]
    )
    assert learned * 10 < uniform
    assert learned < strat


def test_the_learned_subset_is_balanced_before_any_reweighting(survey):
    # The training objective: mean squared relative imbalance of the statistics under
    # plain expansion weights N/K. Random subsets of the same size are far worse.
    x, cat, data, gate = survey
    targets = moment_matrix(as_table(data, categorical=[4]), torch.ones(N, dtype=torch.float64))
    g = (targets.matrix / targets.scale).numpy()
    goal = (targets.totals / targets.scale).numpy()

    def imbalance(idx):
        return float(np.mean((g[idx].sum(0) * N / K - goal) ** 2))

    learned = imbalance(gate.indices_.numpy())
    assert learned * 3 < np.median([imbalance(s) for s in random_subsets()])


def test_the_learned_subset_needs_less_dispersed_weights_than_calibrated_random_subsets(survey):
    x, cat, data, gate = survey
    targets = moment_matrix(as_table(data, categorical=[4]), torch.ones(N, dtype=torch.float64))
    start = torch.full((K,), N / K, dtype=torch.float64)
    cvs = []
    for s in random_subsets(draws=10):
        w = rake_weights(targets.matrix[s], targets.totals, start, targets.scale).numpy()
        cvs.append(w.std() / w.mean())
    learned = gate.weights_.numpy()
    assert learned.std() / learned.mean() < 0.5 * np.median(cvs)


def test_every_rare_category_level_is_represented(survey):
    _, cat, _, gate = survey
    assert set(cat[gate.indices_.numpy()]) == set(range(5))


def test_a_dataframe_gives_a_dataframe_and_weights_as_a_series_with_category_shares_matched():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "income": rng.lognormal(10, 1, 600),
            "size": rng.integers(1, 6, 600),
            "region": pd.Categorical(
                rng.choice(["north", "south", "east"], 600, p=[0.7, 0.25, 0.05])
            ),
        }
    )
    original = frame.copy()
    gate = SampleGate(600, 60, seed=0)
    selected, weights, idx = gate.select_weighted_samples(frame)
    assert isinstance(selected, pd.DataFrame) and list(selected.index) == list(frame.index[idx])
    assert isinstance(weights, pd.Series) and weights.index.equals(selected.index)
    shares = weights.groupby(selected["region"], observed=True).sum() / weights.sum()
    full = frame["region"].value_counts(normalize=True)
    assert np.allclose(shares.sort_index(), full.sort_index(), atol=1e-6)
    assert np.isclose((weights * selected["income"]).sum(), frame["income"].sum(), rtol=1e-6)
    pd.testing.assert_frame_equal(frame, original)


def test_tensors_give_tensors_and_long_indices():
    data = torch.rand(300, 3, generator=torch.Generator().manual_seed(0))
    selected, idx = SampleGate(300, 30, seed=0).fit(data, epochs=150).select_samples(data)
    assert isinstance(selected, torch.Tensor) and idx.dtype == torch.long
    assert torch.equal(selected, data[idx])


def test_design_weights_are_reproduced_by_the_subset():
    rng = np.random.default_rng(4)
    x = rng.lognormal(size=(400, 2))
    design = rng.uniform(0.5, 3.0, 400)
    gate = SampleGate(400, 40, seed=0).fit(x, design, epochs=150)
    _, w, idx = gate.select_weighted_samples(x, design)
    assert np.allclose(w @ x[idx], design @ x, rtol=1e-6)
    assert np.isclose(w.sum(), design.sum(), rtol=1e-6)


def test_equal_seeds_give_bit_identical_selections_and_weights():
    x = np.random.default_rng(5).lognormal(size=(300, 3))
    a = SampleGate(300, 30, seed=11).fit(x, epochs=150)
    b = SampleGate(300, 30, seed=11).fit(x, epochs=150)
    c = SampleGate(300, 30, seed=12).fit(x, epochs=150)
    assert torch.equal(a.indices_, b.indices_) and torch.equal(a.weights_, b.weights_)
    assert not torch.equal(a.indices_, c.indices_)


def test_a_target_equal_to_n_keeps_every_row_with_its_design_weight():
    x = np.random.default_rng(6).normal(size=(50, 2))
    selected, w, idx = SampleGate(50, 50, seed=0).select_weighted_samples(x)
    np.testing.assert_array_equal(idx, np.arange(50))
    assert np.allclose(w, 1.0)


def test_a_fractional_target_selects_that_share_of_rows():
    x = np.random.default_rng(7).lognormal(size=(400, 2))
    gate = SampleGate(400, 0.05, seed=0)
    assert gate.target_samples == 20
    assert gate.fit(x, epochs=150).select_samples(x)[1].shape == (20,)


def test_a_plugin_gate_type_selects_by_name(logistic_gate_name):
    x = np.random.default_rng(8).lognormal(size=(300, 2))
    gate = SampleGate(300, 30, gate=logistic_gate_name, seed=0)
    _, idx = gate.fit(x, epochs=150).select_samples(x)
    assert type(gate.gates).__name__ == "LogisticGate" and len(np.unique(idx)) == 30


def test_the_seed_example_runs_as_written():
    data = torch.rand(10000, 4, generator=torch.Generator().manual_seed(0)).exp()
    # Select 1,000 households from 10,000
    gate = SampleGate(n_samples=10000, target_samples=1000)
    selected_data, indices = gate.select_samples(data)
    assert selected_data.shape == (1000, 4) and len(torch.unique(indices)) == 1000


def test_data_with_a_different_number_of_rows_is_rejected():
    with pytest.raises(
        ValueError, match="data has 99 rows but the gate was built for n_samples=100"
    ):
        SampleGate(100, 10).select_samples(np.ones((99, 2)))


def test_nan_in_the_data_is_rejected_before_fitting():
    x = np.ones((100, 2))
    x[5, 1] = np.nan
    gate = SampleGate(100, 10)
    with pytest.raises(
        ValueError, match=r"data contains 1 NaN or infinite value\(s\) \(first at index \(5, 1\)\)"
    ):
        gate.fit(x)
    assert not gate.is_fitted


@pytest.mark.parametrize("target", [0, 101, -5])
def test_a_target_outside_one_to_n_is_rejected(target):
    with pytest.raises(ValueError, match="target_samples must be between 1 and 100"):
        SampleGate(100, target)


@pytest.mark.parametrize("n", [0, -10])
def test_a_non_positive_number_of_samples_is_rejected(n):
    with pytest.raises(ValueError, match=f"n_samples must be >= 1, got {n}"):
        SampleGate(n, 1)


def test_negative_design_weights_are_rejected():
    w = np.ones(100)
    w[3] = -1
    with pytest.raises(ValueError, match="weights must be non-negative"):
        SampleGate(100, 10).fit(np.ones((100, 2)), w)


def test_design_weights_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="weights has 99 entries but the data has 100 rows"):
        SampleGate(100, 10).fit(np.ones((100, 2)), np.ones(99))


def test_an_unsupported_data_type_is_rejected():
    with pytest.raises(TypeError, match="data must be a torch.Tensor, a numpy.ndarray or a pandas"):
        SampleGate(3, 1).fit([[1.0], [2.0], [3.0]])


def test_an_unknown_moments_option_is_rejected():
    with pytest.raises(ValueError, match="moments must be 'auto', 'full' or 'diagonal'"):
        SampleGate(10, 2).fit(np.ones((10, 2)), moments="third")
