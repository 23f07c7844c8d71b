"""FeatureGate: unsupervised column subset selection and supervised feature selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from l0_gates import FeatureGate

P_INF, P_RED, K = 12, 288, 15


@pytest.fixture(scope="module")
def redundant():
    """12 informative columns hidden among 288 noisy near-copies of 4 of them, and a fit."""
    rng = np.random.default_rng(0)
    inf = rng.standard_normal((300, P_INF))
    red = inf[:, rng.choice(4, size=P_RED)] + 0.05 * rng.standard_normal((300, P_RED))
    x = np.concatenate([inf, red], 1)
    perm = rng.permutation(x.shape[1])
    x = x[:, perm]
    informative = np.sort(np.argsort(perm)[:P_INF])
    gate = FeatureGate(P_INF + P_RED, K, seed=0)
    selected, cols = gate.select_features(x)
    return x, informative, gate, selected, cols


def recon_error(x, cols):
    """||X - X_S B||^2 / ||X||^2 for centred X and least-squares B (projection via numpy QR)."""
    xc = x - x.mean(0)
    q, _ = np.linalg.qr(xc[:, cols])
    return float(((xc - q @ (q.T @ xc)) ** 2).sum() / (xc**2).sum())


def test_exactly_max_features_sorted_columns_are_selected(redundant):
    x, _, _, selected, cols = redundant
    assert cols.shape == (K,) and np.all(np.diff(cols) > 0)
    np.testing.assert_array_equal(selected, x[:, cols])


def test_every_informative_direction_is_kept(redundant):
    # Each informative column, or a near-copy of it (|corr| > 0.95), is selected.
    x, informative, _, _, cols = redundant
    z = (x - x.mean(0)) / x.std(0)
    corr = np.abs(z[:, informative].T @ z[:, cols]) / len(x)
    assert (corr.max(1) > 0.95).all()


def test_reconstruction_error_is_within_ten_percent_of_pivoted_qr(redundant):
    x, _, gate, _, cols = redundant
    _, piv = scipy.linalg.qr(x - x.mean(0), pivoting=True, mode="r")
    qr_error = recon_error(x, np.sort(piv[:K]))
    assert recon_error(x, cols) <= 1.10 * qr_error
    assert gate.reconstruction_error_ == pytest.approx(recon_error(x, cols), rel=1e-6)


def test_reconstruction_error_is_five_times_below_a_random_choice(redundant):
    x, _, _, _, cols = redundant
    rng = np.random.default_rng(1)
    random_errors = [recon_error(x, rng.choice(x.shape[1], K, replace=False)) for _ in range(20)]
    assert 5 * recon_error(x, cols) < np.median(random_errors)


def test_feature_importance_is_the_probability_of_being_kept(redundant):
    _, _, gate, _, cols = redundant
    importance = gate.get_feature_importance()
    assert torch.equal(importance, gate.gates.prob_active().detach())
    others = np.setdiff1d(np.arange(P_INF + P_RED), cols)
    assert importance[cols].median() > importance[others].median()


@pytest.mark.slow
def test_linear_supervised_selection_finds_the_features_that_predict_y():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    y = 2 * x[:, 5] - x[:, 30] + 0.5 * x[:, 12] + 0.3 * torch.randn(300, generator=g)
    gate = FeatureGate(40, 3, seed=0).fit(x, y)
    assert gate.feature_indices_.tolist() == [5, 12, 30] and gate.task_ == "regression"
    residual = gate.predict(x) - y
    assert residual.square().mean() < 0.15  # noise variance 0.09


def test_classification_targets_are_detected_and_their_features_found():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 40, generator=g)
    labels = np.where((x[:, 5] - x[:, 30] + 0.5 * x[:, 12] > 0).numpy(), "yes", "no")
    gate = FeatureGate(40, 3, seed=0).fit(x.numpy(), labels)
    assert gate.task_ == "classification" and gate.feature_indices_.tolist() == [5, 12, 30]
    assert (gate.predict(x.numpy()) == labels).mean() > 0.9


@pytest.mark.slow
def test_the_mlp_finds_features_with_no_linear_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    y = x[:, 3] ** 2 + torch.sin(2 * x[:, 17]) + 0.1 * torch.randn(300, generator=g)
    assert abs(np.corrcoef(x[:, 3].numpy(), y.numpy())[0, 1]) < 0.1
    gate = FeatureGate(40, 2, seed=0).fit(x, y, model="mlp")
    assert gate.feature_indices_.tolist() == [3, 17]


def test_names_come_from_dataframe_columns():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((100, 2))
    frame = pd.DataFrame(
        np.concatenate([base, base + 0.01 * rng.standard_normal((100, 2))], 1), columns=list("abcd")
    )
    selected, names = FeatureGate(4, 2, seed=0).select_features_with_names(frame)
    assert isinstance(selected, pd.DataFrame) and list(selected.columns) == names
    assert sorted({n.replace("c", "a").replace("d", "b") for n in names}) == ["a", "b"]


def test_equal_seeds_give_bit_identical_selections():
    x = np.random.default_rng(3).standard_normal((80, 30))
    a = FeatureGate(30, 5, seed=4).fit(x, epochs=100)
    b = FeatureGate(30, 5, seed=4).fit(x, epochs=100)
    assert torch.equal(a.feature_indices_, b.feature_indices_)
    assert torch.equal(a.get_feature_importance(), b.get_feature_importance())


def test_a_plugin_gate_type_selects_by_name(logistic_gate_name):
    x = np.random.default_rng(4).standard_normal((60, 20))
    gate = FeatureGate(20, 4, gate=logistic_gate_name, seed=0).fit(x, epochs=100)
    assert type(gate.gates).__name__ == "LogisticGate" and gate.feature_indices_.numel() == 4


def test_the_seed_example_runs_as_written():
    data = torch.randn(60, 1000, generator=torch.Generator().manual_seed(0))
    # Select top features
    gate = FeatureGate(n_features=1000, max_features=50)
    selected_data, feature_indices = gate.select_features(data)
    # Get feature importance
    importance = gate.get_feature_importance()
    assert selected_data.shape == (60, 50) and importance.shape == (1000,)
    assert bool(((importance >= 0) & (importance <= 1)).all())


def test_data_with_the_wrong_number_of_features_is_rejected():
    with pytest.raises(ValueError, match="X has 9 features .* built for n_features=10"):
        FeatureGate(10, 2).fit(np.ones((20, 9)))


def test_nan_features_are_rejected():
    x = np.ones((20, 10))
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="X contains 1 NaN or infinite value"):
        FeatureGate(10, 2).fit(x)


@pytest.mark.parametrize("max_features", [0, -1])
def test_a_non_positive_max_features_is_rejected(max_features):
    with pytest.raises(ValueError, match=f"max_features must be >= 1, got {max_features}"):
        FeatureGate(10, max_features)


def test_a_target_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="y has 19 entries but X has 20 samples"):
        FeatureGate(10, 2).fit(np.ones((20, 10)), np.ones(19))


def test_an_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="task must be 'auto', 'regression' or 'classification'"):
        FeatureGate(10, 2).fit(np.ones((20, 10)), np.ones(20), task="ranking")


def test_non_numeric_dataframe_columns_are_rejected():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]})
    with pytest.raises(TypeError, match=r"X must have numeric columns only; \['b'\]"):
        FeatureGate(2, 1).fit(frame)


def test_feature_names_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="feature_names has 2 names but the gate has n_features=3"):
        FeatureGate(3, 1).select_features_with_names(np.ones((5, 3)), ["a", "b"])


def test_predict_without_a_supervised_fit_is_an_error():
    with pytest.raises(
        RuntimeError, match=r"predict needs a supervised fit: call fit\(X, y\) first"
    ):
        FeatureGate(3, 1).predict(np.ones((5, 3)))
