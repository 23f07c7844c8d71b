"""calibrate() and CalibrationResult."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from calib_helpers import make_problem
from l0_calibrate import CalibrationResult, calibrate


def frame_problem(seed=0):
    M, y = make_problem(n_targets=10, n_households=150, per_col=4, seed=seed)
    names = [f"var{i}" for i in range(M.shape[0])]
    index = pd.Index([f"hh{j}" for j in range(M.shape[1])], name="household")
    return pd.DataFrame(M.toarray().T, columns=names, index=index), pd.Series(y, index=names)


def test_calibrate_returns_weights_indexed_like_the_households_and_a_report_per_target():
    frame, targets = frame_problem()
    res = calibrate(frame, targets, target_count=40, epochs=200, method="gates")
    assert isinstance(res, CalibrationResult)
    assert res.weights.index.equals(frame.index)
    assert res.n_active == 40
    assert list(res.report["name"]) == list(frame.columns)
    est = frame.to_numpy().T @ res.weights.to_numpy()
    np.testing.assert_allclose(res.report["estimate"], est, rtol=1e-10)
    np.testing.assert_allclose(
        res.report["rel_error"],
        (est - targets.to_numpy()) / targets.to_numpy(),
        rtol=1e-6,
        atol=1e-12,
    )


def test_calibrate_with_a_count_is_exact_on_feasible_targets_by_default():
    frame, targets = frame_problem(seed=1)
    res = calibrate(frame, targets, target_count=40, epochs=100)  # default method: select + polish
    assert res.n_active == 40
    assert res.summary()["max_abs_rel_error"] < 1e-5
    assert res.summary()["share_within_10pct"] == 1.0


def test_history_has_one_row_per_logging_step():
    frame, targets = frame_problem()
    res = calibrate(
        frame, targets, target_count=30, epochs=200, verbose_freq=50, polish=False, method="gates"
    )
    train = res.history[res.history["phase"] == "train"]
    assert train["epoch"].tolist() == [50, 100, 150, 200]
    assert {"mean_rel_error", "max_rel_error", "n_active", "loss"} <= set(res.history.columns)


def test_infeasible_targets_are_flagged_in_the_report_by_name():
    frame, targets = frame_problem()
    frame = frame.assign(ghost=0.0)
    targets = pd.concat([targets, pd.Series({"ghost": 10.0})])
    with pytest.warns(UserWarning, match="ghost"):
        res = calibrate(frame, targets, target_count=40, epochs=150, method="gates")
    assert res.infeasible_targets == ["ghost"]
    ok = res.report[~res.report["infeasible"]]
    assert ok["abs_rel_error"].max() < 1e-5


def test_holdout_errors_are_reported_for_variables_that_were_not_targets():
    frame, targets = frame_problem()
    holdout = frame[["var0"]].rename(columns={"var0": "copy"}) * 2
    res = calibrate(
        frame,
        targets,
        target_count=40,
        epochs=150,
        method="gates",
        holdout_matrix=holdout,
        holdout_totals=pd.Series({"copy": 2 * targets["var0"]}),
    )
    assert res.holdout["name"].tolist() == ["copy"]
    assert abs(res.holdout["rel_error"].iloc[0]) < 1e-5


def test_design_weights_start_the_fit_and_diagnostics_report_their_ratios():
    frame, targets = frame_problem()
    d = np.full(len(frame), 3.0)
    res = calibrate(frame, targets, target_count=50, epochs=100, design_weights=d, method="gates")
    diag = res.diagnostics
    w = res.weights.to_numpy()
    nz = w[w > 0]
    assert diag["n_nonzero"] == 50
    assert diag["design_effect"] == pytest.approx(len(nz) * (nz**2).sum() / nz.sum() ** 2)
    assert diag["max_ratio"] == pytest.approx(nz.max() / 3.0)


def test_calibrate_does_not_modify_its_inputs():
    frame, targets = frame_problem()
    f0, t0 = frame.copy(), targets.copy()
    calibrate(frame, targets, target_count=20, epochs=20, method="gates")
    pd.testing.assert_frame_equal(frame, f0)
    pd.testing.assert_series_equal(targets, t0)


def test_calibrate_is_repeatable_with_a_seed():
    frame, targets = frame_problem()
    a = calibrate(frame, targets, target_count=20, epochs=50, seed=3, method="gates")
    b = calibrate(frame, targets, target_count=20, epochs=50, seed=3, method="gates")
    pd.testing.assert_series_equal(a.weights, b.weights)


def test_calibrate_accepts_a_scipy_matrix_with_names_and_float64():
    M, y = make_problem(seed=4)
    res = calibrate(
        M,
        y,
        target_count=0.5,
        target_names=[f"t{i}" for i in range(12)],
        epochs=100,
        dtype=torch.float64,
        method="gates",
    )
    assert res.report["name"].iloc[0] == "t0" and res.n_active == 30
    assert res.weights.index.equals(pd.RangeIndex(60))


def test_the_gates_method_with_polish_is_exact_on_feasible_targets_too():
    frame, targets = frame_problem(seed=2)
    res = calibrate(frame, targets, target_count=40, epochs=150, method="gates")
    assert res.model is not None and res.n_active == 40
    assert res.summary()["max_abs_rel_error"] < 1e-5


def test_bad_inputs_of_calibrate_name_the_argument():
    frame, targets = frame_problem()
    with pytest.raises(ValueError, match="design_weights must be positive"):
        calibrate(frame, targets, design_weights=np.zeros(len(frame)))
    with pytest.raises(ValueError, match="target_count must be between 1 and 150"):
        calibrate(frame, targets, target_count=1000)
    with pytest.raises(ValueError, match="estimate_matrix contains 1 NaN"):
        bad = frame.copy()
        bad.iloc[0, 0] = np.nan
        calibrate(bad, targets)
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        calibrate(frame, targets, loss="l3")
    with pytest.raises(ValueError, match="method must be 'select' or 'gates'"):
        calibrate(frame, targets, method="magic")


def test_plot_draws_convergence_and_error_histogram():
    import matplotlib

    matplotlib.use("Agg")
    frame, targets = frame_problem()
    fig = calibrate(frame, targets, target_count=30, epochs=100, method="gates").plot()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "convergence" and "30 households" in titles[1]


def test_calibrate_passes_the_band_to_the_select_pipeline():
    from test_selection import cells_problem

    X, t = cells_problem()
    kw = dict(target_count=60, epochs=100, max_weight_ratio=5, seed=0)
    banded = calibrate(X, t, **kw)
    plain = calibrate(X, t, band=None, **kw)
    banded_err = np.abs(X @ np.asarray(banded.weights, dtype=float) - t) / t
    plain_err = np.abs(X @ np.asarray(plain.weights, dtype=float) - t) / t
    assert banded_err.max() <= 0.05 + 1e-4
    assert plain_err.max() > 0.05


# ------------------------------------------------------- methods as a table, one result type
def test_an_unknown_method_names_every_method_of_the_table():
    from l0_calibrate.methods import METHODS

    frame, targets = frame_problem()
    with pytest.raises(ValueError) as info:
        calibrate(frame, targets, method="magic")
    for name in METHODS:
        assert repr(name) in str(info.value)
    assert "'magic'" in str(info.value)


def test_log_freq_is_a_deprecated_spelling_of_verbose_freq():
    frame, targets = frame_problem()
    with pytest.warns(DeprecationWarning, match="verbose_freq"):
        res = calibrate(
            frame, targets, target_count=30, epochs=100, log_freq=50, polish=False, method="gates"
        )
    train = res.history[res.history["phase"] == "train"]
    assert train["epoch"].tolist() == [50, 100]


def test_log_freq_and_verbose_freq_together_are_rejected():
    frame, targets = frame_problem()
    with pytest.raises(TypeError, match="both log_freq= and verbose_freq="):
        calibrate(frame, targets, target_count=30, log_freq=50, verbose_freq=50)


def test_beta_schedule_and_final_beta_are_deprecated_spellings_of_the_temperature_schedule():
    frame, targets = frame_problem()
    kw = dict(target_count=30, epochs=40, polish=False, method="gates", verbose_freq=20)
    with (
        pytest.warns(DeprecationWarning, match="pass temperature_schedule="),
        pytest.warns(DeprecationWarning, match="pass final_temperature="),
    ):
        old = calibrate(frame, targets, beta_schedule="linear", final_beta=0.3, **kw)
    new = calibrate(frame, targets, temperature_schedule="linear", final_temperature=0.3, **kw)
    assert old.model.beta == new.model.beta == pytest.approx(0.3)
    assert np.array_equal(old.weights, new.weights)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("beta_schedule", "temperature_schedule", "linear"), ("final_beta", "final_temperature", 0.3)],
)
def test_an_old_and_a_new_temperature_keyword_together_are_rejected(old, new, value):
    frame, targets = frame_problem()
    with pytest.raises(TypeError, match=f"both {old}= and {new}="):
        calibrate(frame, targets, target_count=30, method="gates", **{old: value, new: value})


def test_a_default_left_out_is_the_options_class_default():
    from l0_calibrate.methods import GatesOptions

    frame, targets = frame_problem()
    res = calibrate(frame, targets, target_count=30, method="gates", polish=False, verbose_freq=500)
    assert res.epochs == GatesOptions().epochs == res.model.epochs_trained
    short = calibrate(frame, targets, target_count=30, method="gates", epochs=20, polish=False)
    assert short.epochs == 20


def test_the_select_method_refuses_callbacks():
    frame, targets = frame_problem()
    with pytest.raises(ValueError, match="callbacks need method='gates'"):
        calibrate(frame, targets, target_count=30, callbacks=[print])


def test_one_result_type_for_one_process_and_for_the_launcher(tmp_path):
    import scipy.sparse as sp
    from l0_calibrate import ShardedCalibrationResult
    from l0_calibrate.distributed_launch import run_job, write_job

    M, y = make_problem(seed=7)
    sp.save_npz(tmp_path / "M.npz", M)
    job = write_job(
        tmp_path / "job.pkl", tmp_path / "M.npz", y, options={"epochs": 30, "method": "gates"}
    )
    launched = run_job(job)  # the worker's side, alone outside torchrun
    direct = calibrate(tmp_path / "M.npz", y, epochs=30, method="gates")
    assert ShardedCalibrationResult is CalibrationResult
    assert type(launched) is type(direct) is CalibrationResult
    assert (launched.world_size, launched.shard, launched.model) == (1, None, None)
    pd.testing.assert_series_equal(launched.weights, direct.weights)
    pd.testing.assert_frame_equal(launched.report, direct.report)


def test_a_path_and_the_matrix_it_holds_give_the_same_result(tmp_path):
    frame, targets = frame_problem()
    frame.to_csv(tmp_path / "M.csv")
    kw = dict(target_count=40, epochs=60, seed=1)
    from_file = calibrate(tmp_path / "M.csv", targets, **kw)
    pd.testing.assert_series_equal(from_file.weights, calibrate(frame, targets, **kw).weights)


def _stated_default(text):
    try:  # numbers, 2/3, True, None
        return eval(text, {"__builtins__": {}, "True": True, "False": False, "None": None})
    except Exception:  # noqa: BLE001 - a name such as "raking" (quoted or not)
        return text.strip("\"'")


def test_select_and_polish_documents_the_defaults_of_its_signature():
    import inspect
    import re

    from l0_calibrate.selection import select_and_polish

    doc = inspect.getdoc(select_and_polish)
    checked = []
    for name, param in inspect.signature(select_and_polish).parameters.items():
        stated = re.search(rf"^{name} : .*default (\S+?),?$", doc, re.MULTILINE)
        if stated is None or param.default is inspect.Parameter.empty:
            continue
        assert _stated_default(stated.group(1)) == param.default, (
            f"{name}: docstring {stated.group(1)}"
        )
        checked.append(name)
    assert {"epochs", "lr", "temperature", "band"} <= set(checked)


def test_calibrate_warns_at_the_callers_line_through_its_keyword_wrapper():
    from l0_calibrate import TargetMissWarning, UnmetTargetWarning

    M = np.abs(np.random.default_rng(0).normal(size=(4, 80)))
    targets = M.sum(axis=1) * 2.0
    targets[-1] *= 40.0  # out of reach of a 2x weight bound: missed, and unmet after polishing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate(M, targets, target_count=20, epochs=50, max_weight_ratio=2.0)
        calibrate(M, targets, target_count=20, epochs=5, method="gates", polish=False)
    misses = [w for w in caught if issubclass(w.category, TargetMissWarning)]
    assert {w.category for w in misses} == {UnmetTargetWarning, TargetMissWarning}
    assert {w.filename for w in misses} == {__file__}
