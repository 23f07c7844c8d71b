"""Command line: ``l0-calibrate run ...`` and ``l0-calibrate demo``.

``run`` reads an estimate matrix and targets from files, calibrates and
writes one weight per household::

    l0-calibrate run --matrix M.npz --targets targets.csv --count 50000 --out weights.csv

Matrix files: ``.npz`` written by :func:`scipy.sparse.save_npz` (targets x
households), or a table of households x targets (microcalibrate's layout)
in ``.parquet`` or ``.csv`` (first column: the household label). Target
files: ``.csv`` / ``.parquet`` with columns ``name`` and ``value`` (aligned
by name to a table's columns), or one column of values in matrix row order;
``.npy`` / ``.txt`` hold the values in row order.

Exit status: 0 when every target is reached within ``--tolerance``; 2 for
bad input, refused before the fit (unknown target names, text columns, an
unsupported ``--out`` suffix, an unknown ``--loss``, ...); 3 when the
weights were written but some targets are missed or infeasible (unless
``--allow-miss``); 1 when a ``--nproc`` run failed or lost a process.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from l0_core.checks import check_float, check_int

from . import frontend
from .demo import run_demo
from .distributed_io import check_table, load_columns, matrix_shape
from .distributed_launch import check_matrix_file, run_distributed
from .distributed_reducer import ColumnShard
from .losses import get_loss
from .methods import GatesOptions
from .methods.base import DEVICE, SEED
from .result import CalibrationResult, TargetMissWarning

__all__ = [
    "build_parser",
    "check_output_path",
    "check_table",
    "load_matrix",
    "load_targets",
    "main",
]


def load_matrix(path: str) -> Any:
    """Read a whole estimate matrix file (see the module docstring), through :func:`l0_calibrate.load_columns`.

    Examples
    --------
    >>> load_matrix("missing.npz")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --matrix file 'missing.npz' does not exist
    """
    n = matrix_shape(path, argument="--matrix")[1]
    return load_columns(path, ColumnShard(n, 0, n), argument="--matrix")


def load_targets(path: str) -> Any:
    """Read a targets file: a Series named by target, or an array in row order.

    Examples
    --------
    >>> load_targets("missing.csv")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --targets file 'missing.csv' does not exist
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--targets file {path!r} does not exist")
    lower = path.lower()
    if lower.endswith(".npy"):
        return np.load(path)
    if lower.endswith(".txt"):
        return np.loadtxt(path, ndmin=1)
    import pandas as pd

    if lower.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif lower.endswith(".csv"):
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"--targets {path!r}: unknown format; use .csv, .parquet, .npy or .txt")
    cols = [str(c).lower() for c in frame.columns]
    if "name" in cols and "value" in cols:
        name_col = frame.columns[cols.index("name")]
        value_col = frame.columns[cols.index("value")]
        names = frame[name_col].astype(str)
        dup = sorted(set(names[names.duplicated()]))
        if dup:
            raise ValueError(
                f"--targets {path!r} names target(s) {dup[:5]} more than once; give each target one row"
            )
        return pd.Series(frame[value_col].to_numpy(), index=names.to_numpy())
    if frame.shape[1] == 1:
        return frame.iloc[:, 0].to_numpy()
    raise ValueError(
        f"--targets {path!r} must have columns 'name' and 'value', or a single column of values"
    )


def _count(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value == int(value) and "." not in text else value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``l0-calibrate``.

    Examples
    --------
    >>> build_parser().parse_args(["demo"]).command
    'demo'
    """
    parser = argparse.ArgumentParser(
        prog="l0-calibrate", description="Sparse survey calibration with L0 (Hard Concrete) gates."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="calibrate weights from a matrix file and a targets file",
        description="Calibrate household weights from a matrix file and a targets file, and write them.",
        epilog="Target names must match the matrix's columns (a name that matches nothing is an "
        "error). Exit status: 0 when every target is reached within --tolerance; 2 for bad input "
        "(nothing is fitted); 3 when the weights were written but some targets are missed or "
        "cannot be reached by non-negative weights (e.g. a negative target on a non-negative "
        "column), unless --allow-miss. Without --design-weights, the fit starts from one common "
        "weight per household derived from the data; when the targets are population totals "
        "and the file is a sample, pass the sample's design weights with --design-weights.",
    )
    run.add_argument(
        "--matrix",
        required=True,
        help=".npz (targets x households), .parquet/.csv (households x targets)",
    )
    run.add_argument(
        "--targets", required=True, help=".csv/.parquet (name,value) or .npy/.txt in row order"
    )
    run.add_argument(
        "--count", type=_count, default=None, help="households to keep: a count, or a fraction < 1"
    )
    run.add_argument(
        "--out",
        required=True,
        help="weights file to write (.csv or .parquet; checked before the fit)",
    )
    run.add_argument(
        "--report",
        default=None,
        help="also write the per-target report (.csv or .parquet): target, estimate, errors, "
        "infeasible, missed",
    )
    run.add_argument(
        "--design-weights", default=None, help="initial weights (.npy or one-column .csv)"
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"gate-training epochs (default {GatesOptions.epochs})",
    )
    run.add_argument(
        "--lr", type=float, default=None, help=f"Adam learning rate (default {GatesOptions.lr})"
    )
    run.add_argument(
        "--loss",
        default=None,
        help=f"loss name (relative, mse, capped_relative, ...; default {GatesOptions.loss})",
    )
    run.add_argument(
        "--no-polish",
        action="store_true",
        help="skip the exact re-calibration of the kept households",
    )
    run.add_argument("--seed", type=int, default=SEED)
    run.add_argument(
        "--device", default=DEVICE, help="cpu, cuda or cuda:N (with --nproc: each process its GPU)"
    )
    run.add_argument("--float64", action="store_true", help="compute in float64")
    run.add_argument(
        "--nproc", type=int, default=1, help="processes for a column-sharded fit (torchrun)"
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="with --nproc: seconds a process waits for the others in a collective before it stops "
        "with an error naming the rank it lost (default 1800)",
    )
    run.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest relative error at which a target counts as reached (default 0.05 = 5%%)",
    )
    run.add_argument(
        "--allow-miss",
        action="store_true",
        help="exit with status 0 even when targets are missed by more than --tolerance or are "
        "infeasible (the default is status 3, after writing the weights)",
    )

    demo = sub.add_parser(
        "demo", help="calibrate real CPS microdata (needs: pip install 'l0-calibrate[demo]')"
    )
    demo.add_argument("--count", type=int, default=2000, help="respondents to keep (of 28,155)")
    demo.add_argument("--epochs", type=int, default=GatesOptions.epochs)
    demo.add_argument("--seed", type=int, default=SEED)
    return parser


OUTPUT_SUFFIXES = (".csv", ".parquet")


def check_output_path(path: str, argument: str = "--out") -> str:
    """Check an output file before any work: a supported suffix, a folder that exists, pyarrow for parquet.

    Examples
    --------
    >>> check_output_path("weights.xlsx")
    Traceback (most recent call last):
    ...
    ValueError: --out 'weights.xlsx' has the suffix '.xlsx'; supported: .csv, .parquet
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"{argument} {path!r} has the suffix {suffix or '(none)'!r}; supported: "
            + ", ".join(OUTPUT_SUFFIXES)
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{argument} {path!r}: the folder {folder!r} does not exist; create it first"
        )
    if suffix == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise ImportError(
                f"{argument} {path!r} is a parquet file, which needs pyarrow: pip install pyarrow "
                "(or l0-calibrate[parquet]), or write .csv"
            )
    return path


def _write_table(frame: Any, path: str, *, index: bool = True) -> None:
    """Write a table atomically: a temporary file in the same folder, fsync, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        if path.lower().endswith(".parquet"):
            frame.to_parquet(tmp, index=index)
        else:
            frame.to_csv(tmp, index=index)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _keywords(args: argparse.Namespace, design: Any) -> dict[str, Any]:
    """The calibrate() keywords of a ``run`` command (None: the method's default), for every --nproc."""
    return {
        "target_count": args.count,
        "design_weights": design,
        "loss": args.loss,
        "epochs": args.epochs,
        "lr": args.lr,
        "polish": False if args.no_polish else None,
        "seed": args.seed,
        "device": args.device,
        "dtype": torch.float64 if args.float64 else torch.float32,
        "verbose": args.verbose,
        "tolerance": args.tolerance,
    }


def _calibrate(args: argparse.Namespace, targets: Any, design: Any) -> CalibrationResult:
    """``calibrate()`` in this process (``--nproc 1``) or in ``--nproc`` workers, with the same keywords."""
    keywords = _keywords(args, design)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TargetMissWarning)  # the CLI prints its own summary
        if args.nproc == 1:
            return frontend.calibrate(args.matrix, targets, **keywords)
        return run_distributed(
            args.matrix, targets, nproc=args.nproc, collective_timeout=args.timeout, **keywords
        )


def _run(args: argparse.Namespace) -> int:
    # everything that can be refused is refused before the fit
    check_output_path(args.out)
    if args.report:
        check_output_path(args.report, "--report")
    if args.loss is not None:
        get_loss(args.loss, "--loss")
    check_float(args.tolerance, "--tolerance", min_val=0.0)
    check_float(args.timeout, "--timeout", min_val=0.0, include_boundaries="neither")
    check_int(args.nproc, "--nproc", min_val=1)
    targets = load_targets(args.targets)
    design = load_targets(args.design_weights) if args.design_weights else None
    check_matrix_file(args.matrix, targets, argument=f"--matrix {args.matrix!r}")
    result = _calibrate(args, targets, design)
    weights, report, n_active = result.weights.copy(), result.report, result.n_active
    weights.index.name = weights.index.name or "household"
    _write_table(weights.to_frame(), args.out)
    if args.report:
        _write_table(report, args.report, index=False)
    feasible = ~report["infeasible"].to_numpy(dtype=bool)
    err = report["abs_rel_error"].to_numpy(dtype=np.float64)[feasible]
    mean_err = float(np.mean(err)) if err.size else 0.0
    max_err = float(np.max(err)) if err.size else 0.0
    n_infeasible = int((~feasible).sum())
    print(
        f"wrote {len(weights):,} weights ({n_active:,} non-zero) to {args.out}; "
        f"mean |rel. error| {100 * mean_err:.4f} %, max {100 * max_err:.4f} %"
        + (f", {n_infeasible} infeasible target(s)" if n_infeasible else "")
    )
    missed = report.loc[report["missed"].to_numpy(dtype=bool), "name"].astype(str).tolist()
    infeasible = report.loc[~feasible, "name"].astype(str).tolist()
    if missed or infeasible:
        lines = []
        if missed:
            lines.append(
                f"{len(missed)} target(s) missed by more than {100 * args.tolerance:.3g} %: "
                + ", ".join(missed[:10])
                + (f" and {len(missed) - 10} more" if len(missed) > 10 else "")
            )
        if infeasible:
            lines.append(
                f"{len(infeasible)} target(s) cannot be reached by non-negative weights: "
                + ", ".join(infeasible[:10])
                + (f" and {len(infeasible) - 10} more" if len(infeasible) > 10 else "")
            )
        if args.allow_miss:
            print("l0-calibrate: warning: " + "; ".join(lines) + " (accepted: --allow-miss)")
            return 0
        print(
            "l0-calibrate: error: " + "; ".join(lines) + ". The weights were written, but they do "
            "not reach the targets; see --report for each target, try --design-weights on the "
            "targets' scale, a larger --count or more --epochs, or pass --allow-miss to accept "
            "them (exit status 3)"
        )
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l0-calibrate`` command.

    Examples
    --------
    >>> main(["run", "--matrix", "missing.npz", "--targets", "t.csv", "--out", "w.csv"])
    l0-calibrate: error: --targets file 't.csv' does not exist
    2
    """
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "demo":
            _, text = run_demo(count=args.count, epochs=args.epochs, seed=args.seed)
            print(text)
            return 0
        return _run(args)
    except (FileNotFoundError, ValueError, TypeError, ImportError, KeyError) as exc:
        print(f"l0-calibrate: error: {exc}", file=sys.stdout)
        return 2
    except RuntimeError as exc:  # a distributed fit that failed or lost a process
        print(f"l0-calibrate: error: {exc}", file=sys.stdout)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
