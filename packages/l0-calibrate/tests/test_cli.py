"""The l0-calibrate command line and the demo's problem."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from calib_helpers import make_problem
from l0_calibrate.cli import main
from l0_calibrate.demo import build_demo_problem, load_cps1988

pytestmark = pytest.mark.slow  # every test here runs whole calibrations through the CLI


def test_run_reads_an_npz_matrix_and_csv_targets_and_writes_weights_and_report(tmp_path, capsys):
    M, y = make_problem(seed=2)
    sp.save_npz(tmp_path / "M.npz", M)
    pd.DataFrame({"name": [f"t{i}" for i in range(12)], "value": y}).to_csv(
        tmp_path / "t.csv", index=False
    )
    code = main(
        [
            "run",
            "--matrix",
            str(tmp_path / "M.npz"),
            "--targets",
            str(tmp_path / "t.csv"),
            "--count",
            "25",
            "--epochs",
            "150",
            "--out",
            str(tmp_path / "w.csv"),
            "--report",
            str(tmp_path / "r.csv"),
        ]
    )
    assert code == 0
    w = pd.read_csv(tmp_path / "w.csv", index_col=0)["weight"].to_numpy()
    assert (w > 0).sum() == 25
    report = pd.read_csv(tmp_path / "r.csv")
    np.testing.assert_allclose(report["estimate"], M @ w, rtol=1e-9)
    assert "25 non-zero" in capsys.readouterr().out


def test_run_reads_a_households_by_targets_csv_table(tmp_path):
    M, y = make_problem(seed=3)
    names = [f"v{i}" for i in range(12)]
    pd.DataFrame(M.toarray().T, columns=names, index=[f"h{j}" for j in range(60)]).to_csv(
        tmp_path / "M.csv"
    )
    pd.DataFrame({"name": names[::-1], "value": y[::-1]}).to_csv(tmp_path / "t.csv", index=False)
    assert (
        main(
            [
                "run",
                "--matrix",
                str(tmp_path / "M.csv"),
                "--targets",
                str(tmp_path / "t.csv"),
                "--count",
                "0.5",
                "--epochs",
                "100",
                "--out",
                str(tmp_path / "w.csv"),
            ]
        )
        == 0
    )
    w = pd.read_csv(tmp_path / "w.csv", index_col=0)["weight"]
    assert w.index[0] == "h0" and (w > 0).sum() == 30


def test_run_reports_bad_input_with_a_clear_message_and_exit_code_2(tmp_path, capsys):
    M, y = make_problem()
    sp.save_npz(tmp_path / "M.npz", M)
    np.save(tmp_path / "t.npy", y[:-1])
    code = main(
        [
            "run",
            "--matrix",
            str(tmp_path / "M.npz"),
            "--targets",
            str(tmp_path / "t.npy"),
            "--out",
            str(tmp_path / "w.csv"),
        ]
    )
    assert code == 2
    assert "targets has length 11 but 12 values are needed" in capsys.readouterr().out


def test_demo_problem_targets_are_the_column_totals_of_the_indicator_table():
    toy = pd.DataFrame(
        {
            "wage": [100.0, 200.0, 50.0],
            "education": [12, 16, 8],
            "experience": [5, 25, 45],
            "ethnicity": ["cauc", "afam", "cauc"],
            "smsa": ["yes", "no", "yes"],
            "region": ["west", "south", "west"],
            "parttime": ["no", "yes", "no"],
        }
    )
    matrix, targets, holdout, totals = build_demo_problem(toy)
    assert targets["people[west:cauc]"] == 2.0
    assert targets["wages[west]"] == 150.0
    assert targets["education:wages[16+]"] == 200.0
    pd.testing.assert_series_equal(targets, matrix.sum(axis=0))
    assert not set(holdout.columns) & set(matrix.columns)


def test_demo_calibrates_the_real_cps_extract(capsys):
    assert len(load_cps1988()) == 28155
    assert main(["demo", "--count", "500", "--epochs", "60"]) == 0
    out = capsys.readouterr().out
    assert "kept respondents        500 of 28,155" in out
    assert "CPS1988" in out and "public domain" in out


# ------------------------------------------------- every --nproc: the same calibrate()
def _files(tmp_path, seed=5):
    M, y = make_problem(seed=seed)
    sp.save_npz(tmp_path / "M.npz", M)
    pd.DataFrame({"name": [f"t{i}" for i in range(12)], "value": y}).to_csv(
        tmp_path / "t.csv", index=False
    )
    return M, y, ["--matrix", str(tmp_path / "M.npz"), "--targets", str(tmp_path / "t.csv")]


def test_nproc_2_writes_the_report_logs_with_v_and_equals_nproc_1(tmp_path, capfd):
    M, _, io = _files(tmp_path)
    common = ["--epochs", "40", "--float64", "--device", "cpu", "--allow-miss"]
    outputs = {}
    for nproc in (1, 2):
        out, rep = tmp_path / f"w{nproc}.csv", tmp_path / f"r{nproc}.csv"
        argv = [
            "-v",
            "run",
            *io,
            *common,
            "--nproc",
            str(nproc),
            "--out",
            str(out),
            "--report",
            str(rep),
        ]
        assert main(argv) == 0
        outputs[nproc] = (pd.read_csv(out, index_col=0)["weight"], pd.read_csv(rep))
    err = capfd.readouterr().err
    assert "[rank 0]" in err and "[rank 1]" in err  # -v reaches the workers' logging
    (w1, r1), (w2, r2) = outputs[1], outputs[2]
    np.testing.assert_allclose(w2.to_numpy(), w1.to_numpy(), rtol=1e-6, atol=1e-9)
    pd.testing.assert_index_equal(w2.index, w1.index)
    assert list(r2.columns) == list(r1.columns)
    np.testing.assert_allclose(r2["estimate"], M @ w2.to_numpy(), rtol=1e-9)


def test_nproc_2_exits_3_when_a_target_is_missed(tmp_path, capsys):
    _, _, io = _files(tmp_path, seed=6)
    argv = [
        "run",
        *io,
        "--epochs",
        "2",
        "--no-polish",
        "--tolerance",
        "0.0001",
        "--nproc",
        "2",
        "--out",
        str(tmp_path / "w.csv"),
    ]
    assert main(argv) == 3
    assert "missed by more than 0.01 %" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "w.csv")) == 60  # the weights of every household are written
