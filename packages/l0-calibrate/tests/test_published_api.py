"""The published l0-python 0.6.2 API of SparseCalibrationWeights."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from calib_helpers import dense_reference_fit, make_problem
from l0_calibrate import SparseCalibrationWeights


def test_fit_matches_an_independent_dense_autograd_run_of_the_published_loop():
    M, y = make_problem(seed=1)
    model = SparseCalibrationWeights(M.shape[1], seed=7, dtype=torch.float64)
    la0, lw0 = model.log_alpha.detach().clone(), model.log_weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    gen.set_state(model._generator.get_state())
    model.fit(M, y, lambda_l0=0.05, lambda_l2=1e-4, lr=0.02, epochs=40, loss_type="relative")
    lw_ref, la_ref = dense_reference_fit(
        M, y, epochs=40, lr=0.02, lambda_l0=0.05, lambda_l2=1e-4, loss="relative",
        log_alpha=la0, log_weight=lw0, generator=gen,
    )
    torch.testing.assert_close(model.log_weight.detach(), lw_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.log_alpha.detach(), la_ref, rtol=1e-9, atol=1e-9)


def test_mse_fit_with_groups_matches_the_dense_loop_with_published_group_weights():
    M, y = make_problem(seed=2, orders=1)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    model = SparseCalibrationWeights(M.shape[1], seed=3, dtype=torch.float64)
    la0, lw0 = model.log_alpha.detach().clone(), model.log_weight.detach().clone()
    gen = torch.Generator()
    gen.set_state(model._generator.get_state())
    model.fit(M, y, lr=0.01, epochs=25, target_groups=groups, group_multipliers={2: 3.0})
    counts = np.bincount(groups)
    gw = (1.0 / counts[groups]) * np.where(groups == 2, 3.0, 1.0)
    lw_ref, _ = dense_reference_fit(
        M, y, epochs=25, lr=0.01, lambda_l0=0.01, lambda_l2=0.0, loss="mse",
        log_alpha=la0, log_weight=lw0, generator=gen, group_weights=gw,
    )
    torch.testing.assert_close(model.log_weight.detach(), lw_ref, rtol=1e-8, atol=1e-8)


def test_init_keep_prob_sets_log_alpha_to_its_logit_as_published():
    model = SparseCalibrationWeights(5, init_keep_prob=0.8, log_alpha_jitter_sd=0.0)
    assert torch.allclose(model.log_alpha, torch.full((5,), math.log(0.8 / 0.2)))
    gates = model.get_deterministic_gates()
    expected = torch.sigmoid(torch.tensor(math.log(4.0) / (2 / 3))) * 1.2 - 0.1
    assert torch.allclose(gates, torch.full((5,), float(expected)))


def test_init_weights_scalar_and_array_give_exp_log_weight():
    a = SparseCalibrationWeights(3, init_weights=2.5)
    b = SparseCalibrationWeights(3, init_weights=np.array([1.0, 2.0, 3.0]))
    assert torch.allclose(torch.exp(a.log_weight), torch.full((3,), 2.5))
    assert torch.allclose(torch.exp(b.log_weight), torch.tensor([1.0, 2.0, 3.0]))


def test_l0_penalty_is_the_sum_of_probabilities_of_non_zero_gates():
    model = SparseCalibrationWeights(4, beta=0.5, log_alpha_jitter_sd=0.0)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 2.0]))
    expected = torch.sigmoid(torch.tensor([-3.0, -1.0, 0.0, 2.0]) - 0.5 * math.log(0.1 / 1.1)).sum()
    assert model.get_l0_penalty().item() == pytest.approx(expected.item(), rel=1e-6)


def test_l2_penalty_is_the_sum_of_squared_ungated_weights():
    model = SparseCalibrationWeights(3, init_weights=np.array([1.0, 2.0, 3.0]), init_keep_prob=0.01)
    assert model.get_l2_penalty().item() == pytest.approx(14.0, rel=1e-5)


def test_active_weights_sparsity_and_deterministic_weights_agree():
    model = SparseCalibrationWeights(4, log_alpha_jitter_sd=0.0, init_weights=2.0)
    with torch.no_grad():
        model.log_alpha.copy_(torch.tensor([-5.0, 5.0, -0.5, 0.5]))
    active = model.get_active_weights()
    gates = torch.sigmoid(torch.tensor([-5.0, 5.0, -0.5, 0.5]) / (2 / 3)) * 1.2 - 0.1
    expected = (2.0 * gates.clamp(0, 1)).numpy()
    assert active["count"] == int((expected > 0).sum()) == 3
    assert active["indices"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(active["values"].numpy(), expected[expected > 0], rtol=1e-5)
    assert model.get_sparsity() == pytest.approx(0.25)


def test_predict_equals_the_dense_product_with_deterministic_weights():
    M, _ = make_problem(seed=4)
    model = SparseCalibrationWeights(M.shape[1], seed=1, dtype=torch.float64, init_keep_prob=0.7)
    w = model.get_weights(deterministic=True).detach().numpy()
    np.testing.assert_allclose(model.predict(M).numpy(), M.toarray() @ w, rtol=1e-12)


def test_forward_is_differentiable_in_both_parameters():
    M, _ = make_problem(seed=5)
    model = SparseCalibrationWeights(M.shape[1], seed=2)
    model(M).sum().backward()
    assert model.log_weight.grad is not None and model.log_alpha.grad is not None
    assert float(model.log_alpha.grad.abs().sum()) > 0


def test_use_gates_false_gives_plain_positive_weights():
    model = SparseCalibrationWeights(3, init_weights=2.0, use_gates=False)
    assert torch.allclose(model.get_weights(), torch.full((3,), 2.0))
    assert model.get_sparsity() == 0.0


def test_seed_makes_two_models_identical_and_different_seeds_differ():
    a, b, c = (SparseCalibrationWeights(20, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.log_alpha, b.log_alpha)
    assert not torch.equal(a.log_alpha, c.log_alpha)


def test_global_torch_seed_still_makes_unseeded_models_repeatable():
    torch.manual_seed(11)
    a = SparseCalibrationWeights(20)
    torch.manual_seed(11)
    b = SparseCalibrationWeights(20)
    assert torch.equal(a.log_alpha, b.log_alpha)


def test_state_dict_keeps_the_published_parameter_names():
    keys = list(SparseCalibrationWeights(3).state_dict())
    assert keys[:2] == ["log_weight", "log_alpha"]


def test_a_published_style_state_dict_without_fit_state_loads():
    model = SparseCalibrationWeights(3)
    plain = {"log_weight": torch.zeros(3), "log_alpha": torch.ones(3)}
    model.load_state_dict(plain)
    assert torch.equal(model.log_alpha.detach(), torch.ones(3))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_features": 0}, ValueError, "n_features must be >= 1"),
        ({"n_features": 3, "beta": 0.0}, ValueError, "beta must be > 0"),
        ({"n_features": 3, "gamma": 0.1}, ValueError, "gamma must be a negative"),
        ({"n_features": 3, "zeta": 0.9}, ValueError, "zeta must be a number > 1"),
        ({"n_features": 3, "init_weights": [1.0, -1.0, 2.0]}, ValueError, "init_weights must be non-negative"),
        ({"n_features": 3, "init_weights": [1.0, np.nan, 2.0]}, ValueError, "init_weights contains NaN"),
        ({"n_features": 3, "init_weights": [1.0, 2.0]}, ValueError, r"init_weights array must have shape \(3,\)"),
        ({"n_features": 3, "init_keep_prob": 1.5}, ValueError, "init_keep_prob must lie in"),
        ({"n_features": 3, "log_alpha_jitter_sd": -1.0}, ValueError, "log_alpha_jitter_sd must be >= 0"),
    ],
)
def test_bad_constructor_arguments_raise_errors_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        SparseCalibrationWeights(**kwargs)


def test_constructor_does_not_modify_the_callers_arrays():
    init = np.array([1.0, 2.0, 3.0])
    keep = np.array([0.2, 0.0, 1.0])
    SparseCalibrationWeights(3, init_weights=init, init_keep_prob=keep)
    assert init.tolist() == [1.0, 2.0, 3.0] and keep.tolist() == [0.2, 0.0, 1.0]


def test_accepts_every_matrix_format():
    M, y = make_problem(seed=6)
    model = SparseCalibrationWeights(M.shape[1], seed=0, dtype=torch.float64, init_keep_prob=0.9)
    dense = M.toarray()
    ref = dense @ model.get_weights(deterministic=True).detach().numpy()
    for fmt in (M, sp.csr_array(M), M.tocoo(), dense, torch.tensor(dense), torch.tensor(dense).to_sparse()):
        np.testing.assert_allclose(model.predict(fmt).numpy(), ref, rtol=1e-10)


def test_the_constructor_signature_shows_the_published_keywords_and_the_class_is_never_swapped():
    import inspect

    from l0_calibrate import ShardedCalibrationWeights
    from l0_calibrate.distributed_reducer import LocalReducer, ProcessGroupReducer

    names = list(inspect.signature(SparseCalibrationWeights).parameters)
    assert names[:11] == [
        "n_features", "beta", "gamma", "zeta", "init_keep_prob", "init_weights",
        "log_weight_jitter_sd", "log_alpha_jitter_sd", "device", "use_gates", "seed",
    ]  # fmt: skip
    assert names[11:] == ["dtype", "distributed"]
    # no __new__: the class is what was asked for; the reducer decides the behaviour
    assert "__new__" not in vars(SparseCalibrationWeights)
    plain, sharded = SparseCalibrationWeights(4), ShardedCalibrationWeights(4)
    assert type(plain) is SparseCalibrationWeights and type(plain.reducer) is LocalReducer
    assert type(sharded) is ShardedCalibrationWeights
    assert type(sharded.reducer) is ProcessGroupReducer
    assert (plain.n_total, plain.shard.start, plain.shard.stop) == (4, 0, 4)


def test_the_fit_state_lives_in_one_object_and_round_trips_through_the_state_dict():
    from l0_calibrate.fit_state import FitState, unpack_fit_state

    M, y = make_problem(seed=4)
    model = SparseCalibrationWeights(M.shape[1], seed=1)
    model.fit(M, y, epochs=12, verbose_freq=4, target_count=10, refit_epochs=0)
    state = model._fit_state
    assert isinstance(state, FitState)
    assert (state.epoch, len(state.history)) == (12, 3)
    assert state.optimizer is not None and state.controller is not None
    assert model.history_ is state.history and model.epochs_trained == 12
    twin = SparseCalibrationWeights(M.shape[1], seed=9)
    twin.load_state_dict(model.state_dict())
    assert (twin._fit_state.epoch, twin._fit_state.count_schedule) == (12, state.count_schedule)
    assert twin._fit_state.pending_optimizer is not None  # applied by the next fit
    # saved again before any fit, the loaded optimiser and controller state are kept
    again, first = unpack_fit_state(twin.get_extra_state()), unpack_fit_state(model.get_extra_state())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(again["optimizer"]["state"][0][key], first["optimizer"]["state"][0][key])
    assert torch.equal(again["controller"]["lambda1"], first["controller"]["lambda1"])
