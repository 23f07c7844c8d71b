"""HybridGate: a learned take-all part plus a uniform random sample of the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from l0_gates import HybridGate, SampleGate

N, TARGET = 1000, 100


@pytest.fixture(scope="module")
def fitted():
    x = np.random.default_rng(0).lognormal(size=(N, 3))
    hybrid = HybridGate(N, l0_fraction=0.3, random_fraction=0.7, target_items=TARGET, seed=5)
    out = hybrid.select(x, random_seed=1)
    return x, hybrid, out


def test_exact_counts_of_learned_and_random_items_without_duplicates(fitted):
    x, hybrid, (selected, idx, types) = fitted
    assert (types == "l0").sum() == round(TARGET * 0.3) and (types == "random").sum() == round(
        TARGET * 0.7
    )
    assert np.all(np.diff(idx) > 0) and len(idx) == TARGET
    np.testing.assert_array_equal(selected, x[idx])


def test_types_mark_exactly_the_learned_and_the_random_items(fitted):
    _, hybrid, (_, idx, types) = fitted
    np.testing.assert_array_equal(idx[types == "l0"], hybrid.l0_indices.numpy())
    np.testing.assert_array_equal(idx[types == "random"], hybrid.random_indices.numpy())


def test_the_learned_part_is_the_sample_gate_selection_with_the_same_seed(fitted):
    x, hybrid, _ = fitted
    reference = SampleGate(N, 30, 0.25, seed=5).fit(x)
    assert torch.equal(hybrid.l0_indices, reference.indices_)


def test_design_weights_are_one_for_learned_items_and_the_inverse_sampling_rate_for_random_ones(
    fitted,
):
    _, hybrid, (_, _, types) = fitted
    w = hybrid.design_weights.numpy()
    assert np.all(w[types == "l0"] == 1.0)
    assert np.allclose(w[types == "random"], (N - 30) / 70)


def test_random_items_are_included_uniformly_and_totals_are_unbiased(fitted):
    x, hybrid, _ = fitted
    draws = 1000
    counts = np.zeros(N)
    estimates = []
    for s in range(draws):
        _, idx, types = hybrid.select(x, random_seed=100 + s)
        counts[idx[types == "random"]] += 1
        estimates.append(hybrid.estimate_total(x[:, 0]).item())
    rest = np.setdiff1d(np.arange(N), hybrid.l0_indices.numpy())
    rate = 70 / (N - 30)
    assert abs(counts[rest].mean() / draws - rate) < 1e-12  # exactly 70 of the rest every draw
    assert np.abs(counts[rest] / draws - rate).max() < 5 * np.sqrt(rate * (1 - rate) / draws)
    se = np.std(estimates) / np.sqrt(draws)
    assert abs(np.mean(estimates) - x[:, 0].sum()) < 4 * se


def test_random_seeds_reproduce_and_change_the_random_part(fitted):
    x, hybrid, (_, idx, _) = fitted
    _, again, _ = hybrid.select(x, random_seed=1)
    _, other, _ = hybrid.select(x, random_seed=2)
    np.testing.assert_array_equal(idx, again)
    assert not np.array_equal(idx, other)


def test_the_seed_example_runs_as_written():
    data = torch.rand(10000, 3, generator=torch.Generator().manual_seed(0)).exp()
    # Combine L0 selection with random sampling
    hybrid = HybridGate(
        n_items=10000,
        l0_fraction=0.25,  # 25% from L0
        random_fraction=0.75,  # 75% random
        target_items=1000,
    )
    selected, indices, types = hybrid.select(data)
    assert selected.shape == (1000, 3) and isinstance(indices, torch.Tensor)
    assert (types == "l0").sum() == 250 and (types == "random").sum() == 750


def test_fractions_adding_up_to_more_than_one_are_rejected():
    with pytest.raises(ValueError, match="l0_fraction \\+ random_fraction must be at most 1"):
        HybridGate(100, 0.5, 0.6, target_items=10)


def test_a_negative_fraction_is_rejected():
    with pytest.raises(ValueError, match="l0_fraction must be >= 0.0, got -0.1"):
        HybridGate(100, -0.1, 0.5, target_items=10)


def test_a_target_larger_than_the_number_of_items_is_rejected():
    with pytest.raises(ValueError, match="target_items must be at most n_items=100"):
        HybridGate(100, target_items=101)


def test_data_with_the_wrong_number_of_rows_is_rejected():
    with pytest.raises(ValueError, match="data has 50 rows but the gate was built for n_items=100"):
        HybridGate(100, target_items=10).select(np.ones((50, 2)))


def test_estimate_total_before_select_is_an_error():
    with pytest.raises(
        RuntimeError, match=r"estimate_total needs a selection: call select\(data\) first"
    ):
        HybridGate(100, target_items=10).estimate_total(np.ones(100))
