"""fit(): resumability, target_count, losses, schedules, callbacks, hooks and bad input."""

import io
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from calib_helpers import make_problem
from l0_calibrate import (
    Checkpoint,
    EarlyStopping,
    InfeasibleTargetWarning,
    SparseCalibrationWeights,
)
from l0_core import hookimpl, register_plugin, unregister_plugin


def _with_nan(dense):
    dense[2, 3] = np.nan
    return dense


FIT = dict(lambda_l0=0.001, lr=0.05, loss_type="relative", verbose_freq=20)


def test_resuming_from_a_checkpoint_at_half_time_equals_the_uninterrupted_run_bit_for_bit():
    M, y = make_problem(seed=3)
    kw = dict(
        FIT,
        target_count=20,
        temperature_schedule="cosine",
        final_temperature=0.3,
        schedule_epochs=80,
    )
    full = SparseCalibrationWeights(M.shape[1], seed=4, log_weight_jitter_sd=0.1)
    saved = {}

    def grab(event):
        if event["phase"] == "train" and event["epoch"] == 40:
            buf = io.BytesIO()
            torch.save(event["model"].state_dict(), buf)
            saved["ckpt"] = buf.getvalue()

    full.fit(M, y, epochs=80, callbacks=[grab], **kw)
    resumed = SparseCalibrationWeights(
        M.shape[1], seed=99
    )  # different seed: state must override it
    resumed.load_state_dict(torch.load(io.BytesIO(saved["ckpt"])))
    resumed.fit(M, y, epochs=40, **kw)
    assert torch.equal(full.log_weight, resumed.log_weight)
    assert torch.equal(full.log_alpha, resumed.log_alpha)
    assert resumed.epochs_trained == 80


def test_two_fit_calls_continue_like_one_call_with_the_summed_epochs():
    M, y = make_problem(seed=5)
    one = SparseCalibrationWeights(M.shape[1], seed=1, log_weight_jitter_sd=0.2)
    one.fit(M, y, epochs=60, **FIT)
    two = SparseCalibrationWeights(M.shape[1], seed=1, log_weight_jitter_sd=0.2)
    two.fit(M, y, epochs=25, **FIT)
    two.fit(M, y, epochs=35, **FIT)
    assert torch.equal(one.log_weight, two.log_weight)
    assert torch.equal(one.log_alpha, two.log_alpha)


def test_reset_optimizer_restarts_adam_like_the_published_package():
    M, y = make_problem(seed=5)
    a = SparseCalibrationWeights(M.shape[1], seed=1)
    a.fit(M, y, epochs=30, **FIT)
    b = SparseCalibrationWeights(M.shape[1], seed=1)
    b.fit(M, y, epochs=15, **FIT)
    b.reset_optimizer()
    b.fit(M, y, epochs=15, **FIT)
    assert not torch.equal(a.log_weight, b.log_weight)


def test_log_weight_jitter_is_applied_once():
    M, y = make_problem(seed=6)
    model = SparseCalibrationWeights(M.shape[1], seed=2, log_weight_jitter_sd=0.5)
    before = model.log_weight.detach().clone()
    model.fit(M, y, epochs=0)
    jittered = model.log_weight.detach().clone()
    model.fit(M, y, epochs=0)
    assert not torch.equal(before, jittered)
    assert torch.equal(jittered, model.log_weight.detach())


@pytest.mark.parametrize("count", [25, 0.25])
def test_target_count_ends_with_exactly_that_many_active_households(count):
    M, y = make_problem(n_targets=15, n_households=120, seed=7)
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    model.fit(M, y, lr=0.05, lambda_l0=0.0, epochs=200, loss_type="relative", target_count=count)
    expected = round(count * 120) if isinstance(count, float) else count  # 0.25 of 120 -> 30
    assert model.get_active_weights()["count"] == expected
    # the re-fit brings the kept households close to the targets
    assert model.history_[-1]["phase"] == "refit"
    assert model.history_[-1]["mean_rel_error"] < 0.05


def test_target_count_fit_keeps_the_kept_weights_and_the_estimates_consistent():
    M, y = make_problem(seed=8)
    model = SparseCalibrationWeights(M.shape[1], seed=0, dtype=torch.float64)
    model.fit(M, y, epochs=100, loss_type="relative", target_count=20, refit_epochs=0)
    w = model.get_weights(deterministic=True).detach().numpy()
    np.testing.assert_allclose(model.predict(M).numpy(), M.toarray() @ w, rtol=1e-10)
    assert int((w > 0).sum()) == 20


@pytest.mark.parametrize(
    "bad, message",
    [(0, "between 1 and 60"), (61, "between 1 and 60"), (1.5, r"fraction must lie in \(0, 1\]")],
)
def test_target_count_out_of_range_is_rejected_before_any_work(bad, message):
    M, y = make_problem()
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    before = model.log_alpha.detach().clone()
    with pytest.raises(ValueError, match=message):
        model.fit(M, y, target_count=bad)
    assert torch.equal(before, model.log_alpha.detach()) and model.epochs_trained == 0


def test_unknown_loss_name_is_an_error_not_a_silent_mse():
    M, y = make_problem()
    with pytest.raises(
        ValueError, match=r"unknown loss 'relativ' for loss_type; available: .*'relative'"
    ):
        SparseCalibrationWeights(M.shape[1]).fit(M, y, loss_type="relativ")


def test_a_loss_registered_by_a_plugin_is_used_by_name():
    calls = []

    def l1(estimate, target):
        calls.append(1)
        return (estimate - target).abs()

    class Plugin:
        @hookimpl
        def l0_register_losses(self, register):
            register("l1_test", l1)

    name = register_plugin(Plugin(), name="test-l1-loss")
    try:
        M, y = make_problem()
        SparseCalibrationWeights(M.shape[1], seed=0).fit(M, y, loss_type="l1_test", epochs=3)
    finally:
        unregister_plugin(name)
    assert len(calls) == 3


def test_temperature_schedule_by_name_reaches_final_temperature_and_unknown_names_fail():
    M, y = make_problem()
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    model.fit(M, y, epochs=30, temperature_schedule="linear", final_temperature=0.25, **FIT)
    assert model.beta == pytest.approx(0.25)
    betas = [h["beta"] for h in model.history_]
    assert betas[0] == pytest.approx(2 / 3 + (0.25 - 2 / 3) * 19 / 29)
    with pytest.raises(ValueError, match="unknown schedule 'zigzag'"):
        model.fit(M, y, temperature_schedule="zigzag", final_temperature=0.1)
    with pytest.raises(ValueError, match="temperature_schedule needs final_temperature"):
        model.fit(M, y, temperature_schedule="linear")


def test_callbacks_get_events_at_each_logging_step_and_can_stop_the_fit():
    M, y = make_problem()
    events = []

    def record(event):
        events.append(event)
        return event["epoch"] >= 40

    model = SparseCalibrationWeights(M.shape[1], seed=0)
    model.fit(M, y, epochs=200, callbacks=[record], **FIT)
    assert [e["epoch"] for e in events] == [20, 40]
    assert model.epochs_trained == 40
    e = events[-1]
    w = model.get_weights(deterministic=True).detach()
    assert torch.equal(e["weights"], w) and e["model"] is model
    pred = M.toarray() @ w.double().numpy()
    rel = np.abs(pred - y) / (np.abs(y) + 1)
    assert e["mean_rel_error"] == pytest.approx(rel.mean(), rel=1e-4)
    assert e["max_rel_error"] == pytest.approx(rel.max(), rel=1e-4)
    assert e["n_active"] == int((w > 0).sum())
    assert {"loss", "data_loss", "l0_loss", "l2_loss"} <= set(e)


def test_the_pluggy_calibration_log_hook_sees_the_same_events():
    seen = []

    class Logger:
        @hookimpl
        def l0_calibration_log(self, event):
            seen.append((event["epoch"], event["n_active"]))

    name = register_plugin(Logger(), name="test-calibration-log")
    try:
        M, y = make_problem()
        SparseCalibrationWeights(M.shape[1], seed=0).fit(M, y, epochs=40, **FIT)
    finally:
        unregister_plugin(name)
    assert [s[0] for s in seen] == [20, 40]


def test_early_stopping_and_checkpoint_callbacks(tmp_path):
    M, y = make_problem()
    stop = EarlyStopping(threshold=10.0)  # met at once
    ckpt = Checkpoint(tmp_path / "ckpt-{epoch}.pt")
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    model.fit(M, y, epochs=100, callbacks=[ckpt, stop], **FIT)
    assert stop.stopped_epoch == 20 and model.epochs_trained == 20
    state = torch.load(tmp_path / "ckpt-20.pt")
    assert torch.equal(state["log_weight"], model.log_weight.detach())


def test_verbose_logs_progress_through_logging(caplog):
    M, y = make_problem()
    with caplog.at_level("INFO", logger="l0_calibrate"):
        SparseCalibrationWeights(M.shape[1], seed=0).fit(
            M, y, epochs=40, verbose=True, verbose_freq=20
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "l0_calibrate"]
    assert len(lines) == 2 and "epoch    40" in lines[1] and "mean_rel_error" in lines[1]


def test_a_target_no_household_reaches_is_reported_by_name_and_the_rest_are_calibrated():
    M, y = make_problem(seed=9)
    M = sp.vstack([M, sp.csr_matrix((1, M.shape[1]))]).tocsc()
    y = np.append(y, 500.0)
    names = [f"t{i}" for i in range(M.shape[0] - 1)] + ["lonely"]
    model = SparseCalibrationWeights(M.shape[1], seed=0, init_keep_prob=0.9)
    with pytest.warns(InfeasibleTargetWarning, match="lonely"):
        model.fit(M, y, epochs=300, target_names=names, **dict(FIT, lambda_l0=0.0))
    assert model.infeasible_targets_ == ["lonely"]
    pred = model.predict(M).numpy()
    rel = np.abs(pred[:-1] - y[:-1]) / np.abs(y[:-1])
    assert rel.mean() < 0.02


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda M, y: (_with_nan(M.toarray()), y), "M contains 1 NaN"),
        (
            lambda M, y: (M, np.where(np.arange(len(y)) == 2, np.inf, y)),
            "y contains 1 NaN or infinite",
        ),
        (lambda M, y: (M, y[:-1]), "y has length 11 but 12 values are needed"),
        (lambda M, y: (M[:, :-1], y), "M has 59 household columns but the model has n_features=60"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(change, message):
    M, y = make_problem()
    M2, y2 = change(M, y)
    with pytest.raises(ValueError, match=message):
        SparseCalibrationWeights(60).fit(M2, y2)


def test_bad_scalar_options_are_rejected():
    M, y = make_problem()
    model = SparseCalibrationWeights(60)
    with pytest.raises(ValueError, match="lr must be > 0"):
        model.fit(M, y, lr=0.0)
    with pytest.raises(ValueError, match="lambda_l0 must be >= 0"):
        model.fit(M, y, lambda_l0=-1.0)
    with pytest.raises(ValueError, match="group_multipliers requires target_groups"):
        model.fit(M, y, group_multipliers={0: 2.0})
    with pytest.raises(ValueError, match="group_multipliers key 9 not found"):
        model.fit(M, y, target_groups=np.zeros(12, dtype=int), group_multipliers={9: 2.0})
    with pytest.raises(TypeError, match="callbacks must be callables"):
        model.fit(M, y, callbacks=[3])


def test_fit_never_modifies_the_callers_arrays():
    M, y = make_problem()
    dense = M.toarray()
    M_copy, dense_copy, y_copy = M.copy(), dense.copy(), y.copy()
    groups = np.arange(12) % 3
    for matrix in (M, dense):
        SparseCalibrationWeights(60, seed=0).fit(matrix, y, epochs=5, target_groups=groups)
    assert (M != M_copy).nnz == 0 and np.array_equal(dense, dense_copy)
    assert np.array_equal(y, y_copy) and np.array_equal(groups, np.arange(12) % 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calibration_converges_in_float32_and_float64(dtype):
    M, y = make_problem(seed=10)
    model = SparseCalibrationWeights(M.shape[1], seed=0, dtype=dtype, use_gates=False)
    model.fit(M, y, epochs=400, lambda_l0=0.0, lr=0.05, loss_type="relative")
    assert model.log_weight.dtype == dtype
    pred = M.toarray() @ model.get_weights(deterministic=True).detach().double().numpy()
    assert np.mean(np.abs(pred - y) / np.abs(y)) < 0.01


def test_a_microcalibrate_dataframe_is_read_households_by_targets_and_series_targets_align_by_name():
    M, y = make_problem()
    names = [f"v{i}" for i in range(12)]
    frame = pd.DataFrame(M.toarray().T, columns=names)
    targets = pd.Series(y, index=names)[::-1]  # reversed order: aligned by name
    a = SparseCalibrationWeights(60, seed=0)
    a.fit(frame, targets, epochs=30, **FIT)
    b = SparseCalibrationWeights(60, seed=0)
    b.fit(M, y, epochs=30, **FIT)
    torch.testing.assert_close(a.log_weight, b.log_weight)
    with pytest.raises(ValueError, match=r"y has no value for target\(s\) \['v3'\]"):
        SparseCalibrationWeights(60).fit(frame, targets.drop("v3"))


def test_a_prebuilt_sparse_operator_is_reused_and_gives_the_same_fit():
    from l0_core import SparseOperator

    M, y = make_problem()
    a = SparseCalibrationWeights(60, seed=0)
    a.fit(SparseOperator.from_any(M), y, epochs=20, **FIT)
    b = SparseCalibrationWeights(60, seed=0)
    b.fit(M, y, epochs=20, **FIT)
    assert torch.equal(a.log_weight, b.log_weight)


def test_polish_makes_the_kept_households_hit_the_targets_exactly():
    M, y = make_problem(n_targets=8, n_households=80, seed=12)
    model = SparseCalibrationWeights(80, seed=0, dtype=torch.float64)
    model.fit(M, y, epochs=150, loss_type="relative", lambda_l0=0.0, target_count=30, polish=True)
    pred = model.predict(M).numpy()
    assert model.get_active_weights()["count"] <= 30
    np.testing.assert_allclose(pred, y, rtol=1e-6)


def test_weight_penalties_are_added_to_the_gradient():
    M, y = make_problem()
    plain = SparseCalibrationWeights(60, seed=0)
    plain.fit(M, y, epochs=10, **FIT)
    spread = SparseCalibrationWeights(60, seed=0)
    spread.fit(M, y, epochs=10, lambda_dispersion=5.0, **FIT)
    assert not torch.equal(plain.log_weight, spread.log_weight)
    assert (
        math.isfinite(spread.history_[-1]["penalty_loss"])
        and spread.history_[-1]["penalty_loss"] > 0
    )


def test_log_freq_is_a_deprecated_spelling_of_verbose_freq():
    M, y = make_problem(seed=5)
    old = SparseCalibrationWeights(M.shape[1], seed=0)
    with pytest.warns(DeprecationWarning, match="verbose_freq"):
        old.fit(M, y, epochs=12, log_freq=4)
    new = SparseCalibrationWeights(M.shape[1], seed=0)
    new.fit(M, y, epochs=12, verbose_freq=4)
    assert [h["epoch"] for h in old.history_] == [h["epoch"] for h in new.history_] == [4, 8, 12]
    assert torch.equal(old.log_weight, new.log_weight)


def test_log_freq_and_verbose_freq_together_are_rejected():
    M, y = make_problem(seed=5)
    with pytest.raises(TypeError, match="both log_freq= and verbose_freq="):
        model = SparseCalibrationWeights(M.shape[1], seed=0)
        model.fit(M, y, epochs=2, log_freq=1, verbose_freq=1)


def test_beta_schedule_and_final_beta_are_deprecated_spellings_of_the_temperature_schedule():
    M, y = make_problem(seed=5)
    old = SparseCalibrationWeights(M.shape[1], seed=0)
    with pytest.warns(DeprecationWarning, match="temperature_schedule"):
        old.fit(M, y, epochs=12, beta_schedule="linear", final_temperature=0.3, **FIT)
    with pytest.warns(DeprecationWarning, match="final_temperature"):
        old.fit(M, y, epochs=12, temperature_schedule="linear", final_beta=0.3, **FIT)
    new = SparseCalibrationWeights(M.shape[1], seed=0)
    new.fit(M, y, epochs=12, temperature_schedule="linear", final_temperature=0.3, **FIT)
    new.fit(M, y, epochs=12, temperature_schedule="linear", final_temperature=0.3, **FIT)
    assert old.beta == new.beta == pytest.approx(0.3)
    assert torch.equal(old.log_weight, new.log_weight)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("beta_schedule", "temperature_schedule", "linear"), ("final_beta", "final_temperature", 0.3)],
)
def test_an_old_and_a_new_temperature_keyword_together_are_rejected(old, new, value):
    M, y = make_problem(seed=5)
    model = SparseCalibrationWeights(M.shape[1], seed=0)
    with pytest.raises(TypeError, match=f"both {old}= and {new}="):
        model.fit(M, y, epochs=2, **{old: value, new: value})
    assert model.epochs_trained == 0


def test_fit_warns_at_the_callers_line_through_its_keyword_wrapper():
    M = np.abs(np.random.default_rng(0).normal(size=(3, 40)))
    M[2] = 0.0  # no household reaches the last target
    with pytest.warns(InfeasibleTargetWarning) as caught:
        SparseCalibrationWeights(40, seed=0).fit(M, np.array([10.0, 10.0, 5.0]), epochs=2)
    assert [w.filename for w in caught] == [__file__]
