"""Adversarial inputs for l0-calibrate: each is refused by name or reported, never a silent wrong answer.

Classes (issue 12): names and labels (refuse or report, never guess), files and the
command line, non-finite values and divergence, crash-safe checkpoints, unclear
messages, and a frozen rank of a sharded fit. A few properties run under hypothesis.
"""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from l0_calibrate import (
    Checkpoint,
    InfeasibleTargetWarning,
    ShardCheckpoint,
    SparseCalibrationWeights,
    calibrate,
)
from l0_calibrate.callbacks import atomic_save, load_checkpoint
from l0_calibrate.cli import build_parser, main
from l0_calibrate.fitting import FitDivergedError
from l0_calibrate.frontend import TargetMissWarning
from l0_calibrate.inputs import align_to_labels
from l0_calibrate.problem import prepare_problem

HERE = os.path.dirname(__file__)
WORKERS = os.path.join(HERE, "adv_workers.py")


def frame(n=40, seed=0, columns=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.5, 2.0, size=(n, len(columns)))
    return pd.DataFrame(values, columns=list(columns), index=[f"h{i}" for i in range(n)])


QUICK = {"epochs": 30, "method": "gates", "polish": False}


# ----------------------------------------------------------------- names and labels
def test_a_target_name_without_a_matrix_column_raises_naming_it():
    df = frame()
    targets = pd.Series({"a": 40.0, "b": 40.0, "c": 40.0, "zz": 1.0})
    with pytest.raises(ValueError, match=r"match no column of estimate_matrix: \['zz'\]"):
        calibrate(df, targets, **QUICK)
    with pytest.raises(ValueError, match=r"match no column of M: \['zz'\]"):
        SparseCalibrationWeights(40, seed=0).fit(df, targets, epochs=5)


def test_a_column_without_a_target_raises_naming_it_with_the_unknown_name_too():
    with pytest.raises(ValueError, match=r"\['zz'\].*no value for target\(s\) \['c'\]"):
        calibrate(frame(), pd.Series({"a": 40.0, "b": 40.0, "zz": 1.0}), **QUICK)


def test_duplicate_target_labels_and_duplicate_columns_raise():
    targets = pd.Series([40.0, 41.0, 40.0, 40.0], index=["a", "a", "b", "c"])
    with pytest.raises(ValueError, match=r"targets has duplicate label\(s\) \['a'\]"):
        calibrate(frame(), targets, **QUICK)
    df = frame()
    df.columns = ["a", "a", "b"]
    with pytest.raises(ValueError, match=r"duplicate column name\(s\) \['a'\]"):
        calibrate(df, np.array([40.0, 40.0, 40.0]), **QUICK)


def test_design_weights_series_is_aligned_by_household_label_not_position():
    df = frame()
    rng = np.random.default_rng(1)
    d = pd.Series(rng.uniform(0.5, 3.0, len(df)), index=df.index)
    shuffled = d.sample(frac=1.0, random_state=3)
    assert not shuffled.index.equals(d.index)
    targets = pd.Series(df.sum().to_numpy() * 1.5, index=df.columns)
    by_label = calibrate(df, targets, design_weights=shuffled, **QUICK)
    in_order = calibrate(df, targets, design_weights=d.to_numpy(), **QUICK)
    np.testing.assert_array_equal(by_label.weights.to_numpy(), in_order.weights.to_numpy())


def test_fit_design_weights_series_is_aligned_to_the_dataframe_index():
    df = frame()
    targets = df.sum() * 2.0
    d = pd.Series(np.linspace(1.0, 3.0, len(df)), index=df.index)
    kw = {"epochs": 20, "lambda_dispersion": 0.5, "loss_type": "relative"}
    a = SparseCalibrationWeights(len(df), seed=0)
    a.fit(df, targets, design_weights=d.sample(frac=1.0, random_state=1), **kw)
    b = SparseCalibrationWeights(len(df), seed=0)
    b.fit(df, targets, design_weights=d.to_numpy(), **kw)
    assert torch.equal(a.log_weight, b.log_weight)


def test_design_weights_series_with_other_labels_raises():
    df = frame()
    d = pd.Series(1.0, index=[f"x{i}" for i in range(len(df))])
    with pytest.raises(
        ValueError, match=r"design_weights is a Series aligned by its index.*\.to_numpy\(\)"
    ):
        calibrate(df, df.sum(), design_weights=d, **QUICK)


def test_a_negative_target_on_a_non_negative_column_is_an_infeasible_row_and_a_warning():
    df = frame()
    targets = pd.Series({"a": 60.0, "b": -5.0, "c": 60.0})
    with (
        pytest.warns(InfeasibleTargetWarning, match="b"),
        pytest.warns(TargetMissWarning, match="infeasible"),
    ):
        res = calibrate(df, targets, target_count=10, epochs=60)
    row = res.report.set_index("name").loc["b"]
    assert bool(row["infeasible"]) and not res.reached
    assert res.infeasible_targets == ["b"]
    assert len(res.report) == 3  # nothing dropped


def test_a_negative_target_is_feasible_when_its_row_has_negative_entries():
    df = frame()
    df["b"] = -df["b"]
    problem = prepare_problem(
        df, pd.Series(df.sum()), n_features=None, dtype=torch.float64, device="cpu"
    )
    assert not problem.infeasible.any()


def test_a_target_whose_column_is_all_zero_is_reported_not_dropped():
    df = frame()
    df["c"] = 0.0
    with pytest.warns(TargetMissWarning, match="c"):
        res = calibrate(df, pd.Series({"a": 40.0, "b": 40.0, "c": 7.0}), **QUICK)
    assert res.report["name"].tolist() == ["a", "b", "c"]
    assert res.report["infeasible"].tolist() == [False, False, True]


def test_missed_targets_are_marked_in_the_report_and_warned():
    df = frame()
    targets = df.sum() * 3.0
    with pytest.warns(TargetMissWarning, match="missed by more than 0.01"):
        res = calibrate(df, targets, epochs=2, method="gates", polish=False, tolerance=0.01)
    expected = (
        np.abs(df.to_numpy().T @ res.weights.to_numpy() - targets.to_numpy()) / targets.to_numpy()
    ) > 0.01
    assert res.report["missed"].tolist() == expected.tolist()
    assert expected.any() and not res.reached


# ----------------------------------------------------------------- command line and files
def _write(tmp_path, df=None, targets=None):
    df = frame() if df is None else df
    df.to_csv(tmp_path / "M.csv")
    targets = df.sum() if targets is None else targets
    pd.DataFrame({"name": targets.index, "value": targets.to_numpy()}).to_csv(
        tmp_path / "t.csv", index=False
    )
    return str(tmp_path / "M.csv"), str(tmp_path / "t.csv")


def test_cli_semicolon_csv_names_the_file_and_the_separator(tmp_path, capsys):
    _, t = _write(tmp_path)
    frame().to_csv(tmp_path / "semi.csv", sep=";")
    code = main(
        [
            "run",
            "--matrix",
            str(tmp_path / "semi.csv"),
            "--targets",
            t,
            "--out",
            str(tmp_path / "w.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "semi.csv' parses to 0 target columns" in out and "separated by commas" in out


def test_cli_text_column_is_named(tmp_path, capsys):
    df = frame()
    df["state"] = "ca"
    m, t = _write(tmp_path, df, frame().sum())
    assert main(["run", "--matrix", m, "--targets", t, "--out", str(tmp_path / "w.csv")]) == 2
    assert "column 'state' holds text" in capsys.readouterr().out


def test_cli_unsupported_out_suffix_raises_before_reading_anything(tmp_path, capsys):
    code = main(
        ["run", "--matrix", "nope.csv", "--targets", "nope.csv", "--out", str(tmp_path / "w.xlsx")]
    )
    assert code == 2
    assert "has the suffix '.xlsx'; supported: .csv, .parquet" in capsys.readouterr().out


def test_cli_parquet_output_without_pyarrow_raises_before_the_fit(tmp_path, capsys, monkeypatch):
    import importlib.util

    import l0_calibrate.frontend as frontend

    m, t = _write(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    monkeypatch.setattr(frontend, "calibrate", lambda *a, **k: pytest.fail("the fit ran"))
    assert main(["run", "--matrix", m, "--targets", t, "--out", str(tmp_path / "w.parquet")]) == 2
    assert "needs pyarrow" in capsys.readouterr().out


def test_cli_unknown_loss_is_refused_with_count(tmp_path, capsys):
    m, t = _write(tmp_path)
    code = main(
        [
            "run",
            "--matrix",
            m,
            "--targets",
            t,
            "--count",
            "10",
            "--loss",
            "nope",
            "--out",
            str(tmp_path / "w.csv"),
        ]
    )
    assert code == 2
    assert "unknown loss 'nope' for --loss" in capsys.readouterr().out


def test_cli_target_name_without_a_column_is_named(tmp_path, capsys):
    m, t = _write(tmp_path, targets=pd.Series({"a": 40.0, "b": 40.0, "c": 40.0, "zz": 3.0}))
    assert main(["run", "--matrix", m, "--targets", t, "--out", str(tmp_path / "w.csv")]) == 2
    assert "['zz']" in capsys.readouterr().out


def test_cli_duplicate_target_names_raise(tmp_path, capsys):
    m, _ = _write(tmp_path)
    pd.DataFrame({"name": ["a", "a", "b", "c"], "value": [1.0, 2.0, 3.0, 4.0]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    assert (
        main(
            [
                "run",
                "--matrix",
                m,
                "--targets",
                str(tmp_path / "d.csv"),
                "--out",
                str(tmp_path / "w.csv"),
            ]
        )
        == 2
    )
    assert "names target(s) ['a'] more than once" in capsys.readouterr().out


def test_cli_exit_status_3_on_infeasible_targets_unless_allow_miss(tmp_path, capsys):
    m, t = _write(tmp_path, targets=pd.Series({"a": 60.0, "b": -5.0, "c": 60.0}))
    argv = [
        "run",
        "--matrix",
        m,
        "--targets",
        t,
        "--count",
        "10",
        "--epochs",
        "60",
        "--out",
        str(tmp_path / "w.csv"),
        "--report",
        str(tmp_path / "r.csv"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        assert main(argv) == 3
        out = capsys.readouterr().out
        assert "cannot be reached by non-negative weights: b" in out and "--allow-miss" in out
        report = pd.read_csv(tmp_path / "r.csv")
        assert report.set_index("name").loc["b", "infeasible"]
        assert main([*argv, "--allow-miss"]) == 0
    assert "accepted: --allow-miss" in capsys.readouterr().out


def test_cli_exit_status_3_when_targets_are_missed(tmp_path, capsys):
    df = frame()
    m, t = _write(tmp_path, df, df.sum() * 5.0)
    code = main(
        [
            "run",
            "--matrix",
            m,
            "--targets",
            t,
            "--epochs",
            "2",
            "--no-polish",
            "--tolerance",
            "0.001",
            "--out",
            str(tmp_path / "w.csv"),
        ]
    )
    assert code == 3
    assert "missed by more than 0.1 %" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "w.csv")  # the weights are still written


def test_cli_nproc_parquet_lacking_a_target_column_is_refused_before_launching(tmp_path, capsys):
    df = frame()
    df.to_parquet(tmp_path / "M.parquet")
    pd.DataFrame({"name": ["a", "b", "c", "zz"], "value": [1.0, 2.0, 3.0, 4.0]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    started = time.perf_counter()
    code = main(
        [
            "run",
            "--matrix",
            str(tmp_path / "M.parquet"),
            "--targets",
            str(tmp_path / "t.csv"),
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "w.csv"),
        ]
    )
    assert code == 2
    assert "match no column of --matrix" in capsys.readouterr().out
    assert time.perf_counter() - started < 10  # no torchrun was started


def test_run_distributed_checks_target_names_before_starting_workers(tmp_path):
    from l0_calibrate import run_distributed

    frame().to_parquet(tmp_path / "M.parquet")
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"match no column of matrix 'M.parquet': \['zz'\]"):
        run_distributed(
            tmp_path / "M.parquet", pd.Series({"a": 1.0, "b": 1.0, "c": 1.0, "zz": 1.0}), nproc=2
        )
    assert time.perf_counter() - started < 10


def test_cli_help_documents_the_new_flags():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in ("--allow-miss", "--timeout", "--tolerance", "Exit status"):
        assert flag in text
    assert (
        build_parser()
        .parse_args(["run", "--matrix", "m", "--targets", "t", "--out", "o.csv", "--timeout", "30"])
        .timeout
        == 30.0
    )


# ----------------------------------------------------------------- non-finite values
def test_mse_on_huge_targets_stops_with_the_epoch_and_a_finite_model():
    rng = np.random.default_rng(0)
    M = np.abs(rng.normal(size=(5, 40)))
    y = M.sum(axis=1) * 1e25
    model = SparseCalibrationWeights(40, seed=0)
    with pytest.raises(
        FitDivergedError,
        match=r"diverged at epoch \d+: the data loss \(inf\).*loss_type='relative'",
    ) as info:
        model.fit(M, y, loss_type="mse", epochs=300, lr=0.05)
    assert torch.isfinite(model.log_weight).all() and torch.isfinite(model.log_alpha).all()
    assert model.epochs_trained == info.value.epoch
    assert all(np.isfinite(h["mean_rel_error"]) for h in model.history_)


def test_a_state_dict_with_nan_parameters_is_refused_naming_the_key():
    state = SparseCalibrationWeights(6, seed=0).state_dict()
    state["log_alpha"] = state["log_alpha"].clone()
    state["log_alpha"][2] = float("nan")
    with pytest.raises(ValueError, match=r"state_dict\['log_alpha'\] holds 1 NaN.*index 2"):
        SparseCalibrationWeights(6, seed=0).load_state_dict(state)


def test_a_checkpoint_of_the_wrong_size_is_refused_naming_both_sizes(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save(SparseCalibrationWeights(6, seed=0).state_dict(), path)
    with pytest.raises(ValueError, match="holds 6 households but the model has n_features=7"):
        Checkpoint.load(path, n_features=7)
    with pytest.raises(RuntimeError, match="size mismatch for log_weight"):
        SparseCalibrationWeights(7, seed=0).load_state_dict(torch.load(path))


@pytest.mark.parametrize("value", [float("nan"), -1.0, 0.0])
def test_a_temperature_schedule_returning_nan_or_non_positive_is_refused_naming_the_epoch(value):
    M = np.abs(np.random.default_rng(0).normal(size=(3, 20)))
    with pytest.raises(ValueError, match=rf"temperature_schedule returned {value!r} at epoch 1 "):
        SparseCalibrationWeights(20, seed=0).fit(
            M,
            M.sum(axis=1),
            epochs=20,
            temperature_schedule=lambda p, a, b: value,
            final_temperature=0.5,
        )


def test_a_temperature_too_hot_for_an_exact_count_is_refused():
    M = np.abs(np.random.default_rng(0).normal(size=(3, 30)))
    with pytest.raises(ValueError, match=r"beta=10 is too hot for target_count.*below 8\.34"):
        SparseCalibrationWeights(30, seed=0, beta=10).fit(
            M, M.sum(axis=1), epochs=5, target_count=10
        )
    with pytest.raises(ValueError, match=r"final_temperature=20 is too hot"):
        SparseCalibrationWeights(30, seed=0).fit(
            M,
            M.sum(axis=1),
            epochs=5,
            target_count=10,
            temperature_schedule="linear",
            final_temperature=20,
        )


def test_a_hot_but_allowed_temperature_keeps_exactly_target_count():
    M = np.abs(np.random.default_rng(0).normal(size=(3, 30)))
    model = SparseCalibrationWeights(30, seed=0, beta=8.0)
    model.fit(M, M.sum(axis=1), epochs=50, target_count=10, loss_type="relative")
    assert model.get_active_weights()["count"] == 10


# ----------------------------------------------------------------- checkpoints
def test_killing_a_process_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, WORKERS, "slow_checkpoint", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.monotonic() + 60
        temp = None
        while time.monotonic() < deadline and temp is None:
            temp = next((n for n in os.listdir(tmp_path) if ".tmp-" in n), None)
            if temp is None:
                time.sleep(0.001)
        assert temp is not None, "no temporary file was ever seen"
        while os.path.exists(tmp_path / temp) and os.path.getsize(tmp_path / temp) == 0:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)  # while the big checkpoint is being written
    finally:
        proc.kill()
        proc.wait()
    state = Checkpoint.load(tmp_path / "ckpt.pt")
    assert state["log_weight"].shape == (5,)
    # the leftover temporary file is ignored when looking for the newest checkpoint
    assert Checkpoint.latest(tmp_path) == str(tmp_path / "ckpt.pt")


def test_keep_leaves_the_newest_k_files(tmp_path):
    ckpt = Checkpoint(tmp_path / "c-{epoch}.pt", keep=3)
    model = SparseCalibrationWeights(4, seed=0)
    for epoch in range(1, 7):
        ckpt({"epoch": epoch, "model": model})
    assert sorted(os.listdir(tmp_path)) == ["c-4.pt", "c-5.pt", "c-6.pt"]


def test_checkpoint_folder_and_template_are_checked_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint folder .*missing.* does not exist"):
        Checkpoint(tmp_path / "missing" / "c.pt")
    with pytest.raises(ValueError, match=r"not a valid template \(KeyError: 'step'\)"):
        Checkpoint(tmp_path / "c-{step}.pt")
    with pytest.raises(ValueError, match=r"keep=2 needs one file per save"):
        Checkpoint(tmp_path / "c.pt", keep=2)
    with pytest.raises(FileNotFoundError, match="ShardCheckpoint folder"):
        ShardCheckpoint(tmp_path / "nowhere" / "r{rank}.pt")


def test_a_truncated_checkpoint_is_named_as_truncated_or_corrupt(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save(SparseCalibrationWeights(50, seed=0).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint file '.*c\.pt' is truncated or corrupt"):
        load_checkpoint(path)


def test_latest_skips_a_corrupt_newer_checkpoint_and_a_nan_one(tmp_path):
    model = SparseCalibrationWeights(5, seed=0)
    ckpt = Checkpoint(tmp_path / "c-{epoch}.pt")
    for epoch in (10, 20):
        ckpt({"epoch": epoch, "model": model})
    bad = model.state_dict()
    bad["log_weight"] = torch.full((5,), float("inf"))
    torch.save(bad, tmp_path / "c-30.pt")
    (tmp_path / "c-40.pt").write_bytes(b"\x00" * 10)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        assert Checkpoint.latest(tmp_path / "c-{epoch}.pt") == str(tmp_path / "c-20.pt")


def test_a_checkpoint_of_another_format_is_refused_naming_the_versions(tmp_path):
    state = SparseCalibrationWeights(5, seed=0).state_dict()
    extra = state["_extra_state"]
    if isinstance(extra, torch.Tensor):  # the fit state serialised into a byte tensor
        import io

        fields = torch.load(io.BytesIO(extra.numpy().tobytes()), weights_only=True)
        buffer = io.BytesIO()
        torch.save(dict(fields, format=99), buffer)
        state["_extra_state"] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    else:
        state["_extra_state"] = dict(extra, format=99)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(
        ValueError, match="checkpoint format 99 but this version of l0-calibrate reads format 1"
    ):
        Checkpoint.load(tmp_path / "c.pt")


def test_resume_continues_from_the_newest_checkpoint_bit_for_bit(tmp_path):
    M = np.abs(np.random.default_rng(0).normal(size=(4, 30)))
    y = M.sum(axis=1) * 2
    kw = {"lr": 0.05, "loss_type": "relative", "verbose_freq": 10}
    whole = SparseCalibrationWeights(30, seed=0)
    whole.fit(M, y, epochs=40, **kw)
    ckpt = Checkpoint(tmp_path / "c-{epoch}.pt", every=20)
    SparseCalibrationWeights(30, seed=0).fit(M, y, epochs=20, callbacks=[ckpt], **kw)
    resumed = SparseCalibrationWeights(30, seed=5)
    assert ckpt.resume(resumed) == str(tmp_path / "c-20.pt")
    resumed.fit(M, y, epochs=20, **kw)
    assert torch.equal(resumed.log_weight, whole.log_weight)
    assert torch.equal(resumed.log_alpha, whole.log_alpha)


# ----------------------------------------------------------------- unclear messages made clear
def test_half_precision_is_refused_by_name():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"dtype={dtype} is not supported for calibration"):
            SparseCalibrationWeights(5, dtype=dtype)
        with pytest.raises(TypeError, match=rf"dtype={dtype} is not supported"):
            calibrate(frame(), frame().sum(), dtype=dtype, **QUICK)


def test_cuda_without_cuda_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match="device='cuda' but this torch build or machine has no CUDA device"
    ):
        SparseCalibrationWeights(5, device="cuda")
    with pytest.raises(ValueError, match="device='cuda' but"):
        calibrate(frame(), frame().sum(), device="cuda", **QUICK)


def test_zero_households_and_list_matrices_are_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match="the matrix estimate_matrix has 0 household columns"):
        calibrate(np.zeros((3, 0)), [1.0, 2.0, 3.0], **QUICK)
    with pytest.raises(
        ValueError, match="has 0 household columns; pass a DataFrame with one row per household"
    ):
        calibrate(frame(n=0), pd.Series({"a": 1.0, "b": 1.0, "c": 1.0}), **QUICK)
    with pytest.raises(
        TypeError, match=r"estimate_matrix is a list; pass a numpy array \(np.asarray"
    ):
        calibrate([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], **QUICK)


def _bad_sparse():
    csr = sp.csr_matrix((np.ones(3), np.array([0, 1, 99]), np.array([0, 2, 3])), shape=(2, 5))
    coo = sp.coo_matrix((np.ones(2), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 5))
    coo.col[1] = 9  # changed after construction, which scipy does not check again
    t_coo = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [0, 99]]), torch.ones(2), (2, 5), check_invariants=False
    )
    t_csr = torch.sparse_csr_tensor(
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 99]),
        torch.ones(2),
        (2, 5),
        check_invariants=False,
    )
    return [("csr", csr), ("coo", coo), ("torch coo", t_coo), ("torch csr", t_csr)]


@pytest.mark.parametrize("kind, matrix", _bad_sparse(), ids=[k for k, _ in _bad_sparse()])
def test_sparse_indices_outside_the_shape_raise_instead_of_crashing(kind, matrix):
    with pytest.raises(
        ValueError,
        match=r"^M is not a valid sparse matrix: its \w+[ _]indices contain the index \d+, out of range",
    ):
        SparseCalibrationWeights(5, seed=0).fit(matrix, [1.0, 1.0], epochs=2)


def test_the_index_check_leaves_the_callers_sparse_matrix_untouched():
    indptr = np.array([0, 3, 5], dtype=np.int64)
    indices = np.array([2, 0, 0, 1, 4], dtype=np.int64)  # unsorted, with a duplicate
    data = np.array([1.0, 2.0, 0.0, 3.0, 4.0])  # an explicit zero scipy would prune
    M = sp.csr_matrix((data, indices, indptr), shape=(2, 5))
    # int64 index arrays with unused room at the end (as after in-place edits): valid, and
    # scipy's own check_format(full_check=True) would trim them in place
    indices, data = np.append(indices, 0), np.append(data, 9.0)
    M.indices, M.indptr, M.data = indices.copy(), indptr.copy(), data.copy()
    SparseCalibrationWeights(5, seed=0).fit(M, [3.0, 7.0], epochs=2)
    assert M.indices.dtype == np.int64 and M.indptr.dtype == np.int64
    np.testing.assert_array_equal(M.indices, indices)
    np.testing.assert_array_equal(M.data, data)
    assert M.nnz == 5


def test_a_text_column_in_a_dataframe_is_named():
    df = frame()
    df["state"] = pd.array(["x"] * len(df), dtype="string")
    with pytest.raises(TypeError, match="column\\(s\\) 'state' holding text"):
        calibrate(df, pd.Series({"a": 1.0, "b": 1.0, "c": 1.0}), **QUICK)


# ----------------------------------------------------------------- a frozen rank
@pytest.mark.slow
def test_a_frozen_rank_ends_its_peer_within_the_timeout_naming_the_rank_and_the_checkpoint(
    tmp_path,
):
    timeout = 3.0
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKERS, "frozen_rank", str(rank), str(tmp_path), str(timeout)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        code = procs[0].wait(timeout=120)
    finally:
        for p in procs:
            p.kill()  # the frozen rank 1 (SIGKILL works on a stopped process)
            p.wait()
    assert code == 7, procs[0].stderr.read()
    stopped = float((tmp_path / "stopped_at").read_text())
    raised, lost, ckpt, message = (tmp_path / "error0.txt").read_text().split("\n", 3)
    assert lost == "[1]"
    assert ckpt.endswith("rank0-20.pt") and os.path.exists(ckpt)
    assert "rank 0 lost rank(s) 1 of 2" in message and "rank0-20.pt" in message
    assert float(raised) - stopped < timeout + 5.0
    assert Checkpoint.load(ckpt)["log_weight"].shape == (20,)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- properties (hypothesis)
NAMES = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


@settings(max_examples=40, deadline=None)
@given(names=NAMES, data=st.data())
def test_targets_series_in_any_order_align_to_the_columns(names, data):
    rng = np.random.default_rng(len(names))
    df = pd.DataFrame(rng.uniform(1, 2, size=(5, len(names))), columns=names)
    values = dict(zip(names, rng.uniform(1, 10, len(names)), strict=True))
    order = data.draw(st.permutations(names))
    problem = prepare_problem(
        df,
        pd.Series({n: values[n] for n in order}),
        n_features=None,
        dtype=torch.float64,
        device="cpu",
    )
    assert problem.names == names
    assert problem.targets.tolist() == [values[n] for n in names]


@settings(max_examples=40, deadline=None)
@given(
    names=NAMES, extra=st.sets(st.text("xyz", min_size=1, max_size=3), max_size=3), data=st.data()
)
def test_extra_or_missing_target_names_always_raise_naming_them(names, extra, data):
    dropped = data.draw(st.sets(st.sampled_from(names), max_size=len(names) - 1))
    assume(extra or dropped)
    df = pd.DataFrame(np.ones((3, len(names))), columns=names)
    given_names = [n for n in names if n not in dropped] + sorted(extra)
    with pytest.raises(ValueError) as info:
        prepare_problem(
            df,
            pd.Series(1.0, index=given_names),
            n_features=None,
            dtype=torch.float64,
            device="cpu",
        )
    text = str(info.value)
    assert all(repr(n) in text for n in sorted(extra)[:5])
    assert all(repr(n) in text for n in [n for n in names if n in dropped][:5])


@settings(max_examples=60, deadline=None)
@given(
    matrix=st.lists(
        st.lists(st.sampled_from([-2.0, 0.0, 0.0, 1.5]), min_size=4, max_size=4),
        min_size=1,
        max_size=6,
    ),
    signs=st.data(),
)
def test_infeasible_is_exactly_a_target_whose_sign_no_entry_of_its_row_has(matrix, signs):
    M = np.array(matrix)
    targets = np.array([signs.draw(st.sampled_from([-3.0, 0.0, 3.0])) for _ in range(M.shape[0])])
    problem = prepare_problem(
        sp.csr_matrix(M), targets, n_features=None, dtype=torch.float64, device="cpu"
    )
    expected = [
        (t > 0 and not (row > 0).any()) or (t < 0 and not (row < 0).any())
        for row, t in zip(M, targets, strict=True)
    ]
    assert problem.infeasible.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_a_per_household_series_in_any_order_aligns_to_the_labels(n, data):
    labels = [f"h{i}" for i in range(n)]
    order = data.draw(st.permutations(labels))
    series = pd.Series({lab: float(labels.index(lab)) for lab in order})
    assert align_to_labels(series, labels, "design_weights", "the households").tolist() == list(
        map(float, range(n))
    )
