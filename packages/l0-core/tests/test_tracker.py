"""PenaltyTracker: logging, history, statistics, CSV and DataFrame export."""

from __future__ import annotations

import csv
import statistics

import pytest
import torch
from l0_core import HardConcrete, PenaltyTracker, compute_l0_penalty


@pytest.fixture
def tracker():
    t = PenaltyTracker()
    for step, (l0, loss) in enumerate([(10.0, 3.0), (8.0, 2.0), (5.0, 1.5), (4.0, 1.25)]):
        t.log(step, l0=torch.tensor(l0), loss=loss)
    return t


def test_history_lists_values_in_logging_order(tracker):
    assert tracker.history == {
        "step": [0, 1, 2, 3],
        "l0": [10.0, 8.0, 5.0, 4.0],
        "loss": [3.0, 2.0, 1.5, 1.25],
    }
    assert len(tracker) == 4


def test_stats_match_the_statistics_module(tracker):
    values = [10.0, 8.0, 5.0, 4.0]
    s = tracker.stats("l0")
    assert s["mean"] == pytest.approx(statistics.fmean(values))
    assert s["std"] == pytest.approx(statistics.pstdev(values))
    assert (s["min"], s["max"], s["last"], s["count"]) == (4.0, 10.0, 4.0, 4)


def test_stats_of_an_unknown_name_lists_what_was_logged(tracker):
    with pytest.raises(
        KeyError, match=r"nothing logged under 'l2'; logged names: \['l0', 'loss', 'step'\]"
    ):
        tracker.stats("l2")


def test_csv_export_reads_back_the_same_rows(tracker, tmp_path):
    path = tmp_path / "history.csv"
    tracker.to_csv(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["l0"]) for r in rows] == [10.0, 8.0, 5.0, 4.0]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert list(rows[0]) == ["step", "l0", "loss"]


def test_csv_export_keeps_columns_that_appear_later(tmp_path):
    t = PenaltyTracker()
    t.log(0, a=1.0)
    t.log(1, a=2.0, b=5.0)
    t.to_csv(tmp_path / "h.csv")
    with open(tmp_path / "h.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["b"] == "" and rows[1]["b"] == "5.0"


def test_dataframe_export_has_one_row_per_log_call(tracker):
    import pandas as pd

    df = tracker.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["step", "l0", "loss"]
    assert df["loss"].tolist() == [3.0, 2.0, 1.5, 1.25]


def test_log_model_records_penalties_active_gates_and_sparsity():
    gate = HardConcrete(4, init_std=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([5.0, 5.0, 5.0, -5.0]))
    t = PenaltyTracker()
    t.log_model(7, gate, lr=0.01)
    row = t.records[0]
    assert row["step"] == 7 and row["lr"] == 0.01
    assert row["l0"] == pytest.approx(compute_l0_penalty(gate).item())
    assert row["l2"] == 0.0 and row["active_gates"] == 3 and row["sparsity"] == 0.25


def test_log_needs_at_least_one_value():
    with pytest.raises(ValueError, match="log\\(\\) needs at least one value"):
        PenaltyTracker().log(0)


def test_log_rejects_non_scalar_tensors():
    with pytest.raises(ValueError, match=r"value 'l0' must be a scalar, got shape \(2,\)"):
        PenaltyTracker().log(0, l0=torch.ones(2))


def test_log_detaches_tensors_that_require_grad():
    gate = HardConcrete(3)
    t = PenaltyTracker()
    t.log(0, l0=gate.l0_penalty())
    assert isinstance(t.records[0]["l0"], float)
