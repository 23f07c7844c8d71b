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
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["build_parser", "load_matrix", "load_targets", "main"]


def load_matrix(path: str) -> Any:
    """Read an estimate matrix file (see the module docstring).

    Examples
    --------
    >>> load_matrix("missing.npz")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --matrix file 'missing.npz' does not exist
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--matrix file {path!r} does not exist")
    lower = path.lower()
    if lower.endswith(".npz"):
        import scipy.sparse as sp

        try:
            return sp.load_npz(path)
        except (ValueError, KeyError, OSError):
            with np.load(path) as data:
                if len(data.files) != 1:
                    raise ValueError(
                        f"--matrix {path!r} is neither a scipy.sparse .npz nor an .npz holding one array "
                        f"(it holds {data.files})"
                    ) from None
                return np.array(data[data.files[0]])
    if lower.endswith(".npy"):
        return np.load(path)
    import pandas as pd

    if lower.endswith(".parquet"):
        return pd.read_parquet(path)
    if lower.endswith(".csv"):
        return pd.read_csv(path, index_col=0)
    raise ValueError(f"--matrix {path!r}: unknown format; use .npz, .npy, .parquet or .csv")


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
        return pd.Series(frame[value_col].to_numpy(), index=frame[name_col].astype(str).to_numpy())
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

    run = sub.add_parser("run", help="calibrate weights from a matrix file and a targets file")
    run.add_argument("--matrix", required=True, help=".npz (targets x households), .parquet/.csv (households x targets)")
    run.add_argument("--targets", required=True, help=".csv/.parquet (name,value) or .npy/.txt in row order")
    run.add_argument("--count", type=_count, default=None, help="households to keep: a count, or a fraction < 1")
    run.add_argument("--out", required=True, help="weights file to write (.csv or .parquet)")
    run.add_argument("--report", default=None, help="also write the per-target report (.csv)")
    run.add_argument("--design-weights", default=None, help="initial weights (.npy or one-column .csv)")
    run.add_argument("--epochs", type=int, default=1000)
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--loss", default="relative", help="loss name (relative, mse, capped_relative, ...)")
    run.add_argument("--no-polish", action="store_true", help="skip the exact re-calibration of the kept households")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu")
    run.add_argument("--float64", action="store_true", help="compute in float64")
    run.add_argument("--nproc", type=int, default=1, help="processes for a column-sharded fit (torchrun)")

    demo = sub.add_parser("demo", help="calibrate real CPS microdata (needs: pip install 'l0-calibrate[demo]')")
    demo.add_argument("--count", type=int, default=2000, help="respondents to keep (of 28,155)")
    demo.add_argument("--epochs", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _write_table(frame: Any, path: str) -> None:
    if path.lower().endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path)


def _run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from .frontend import calibrate

    targets = load_targets(args.targets)
    design = None
    if args.design_weights:
        design = load_targets(args.design_weights)
    if args.nproc > 1:
        from .distributed_launch import run_distributed

        res = run_distributed(
            args.matrix,
            targets,
            nproc=args.nproc,
            model_options={
                "seed": args.seed,
                "dtype": torch.float64 if args.float64 else torch.float32,
                "init_weights": None if design is None else np.asarray(design, dtype=np.float64),
            },
            fit_options={
                "epochs": args.epochs,
                "lr": args.lr,
                "loss_type": args.loss,
                "target_count": args.count,
                "lambda_l0": 0.0 if args.count is not None else 0.01,
                # as calibrate(): exact re-calibration of the kept households, raking distance
                "polish": args.count is not None and not args.no_polish,
                "distance": "raking",
            },
        )
        weights = pd.Series(res.weights, index=res.household_index, name="weight")
        weights.index.name = weights.index.name or "household"
        _write_table(weights.to_frame(), args.out)
        print(f"wrote {len(weights):,} weights ({res.n_active:,} non-zero) to {args.out}")
        return 0
    matrix = load_matrix(args.matrix)
    result = calibrate(
        matrix,
        targets,
        target_count=args.count,
        design_weights=design,
        loss=args.loss,
        epochs=args.epochs,
        lr=args.lr,
        polish=False if args.no_polish else None,
        seed=args.seed,
        device=args.device,
        dtype=torch.float64 if args.float64 else torch.float32,
        verbose=args.verbose,
    )
    weights = result.weights.copy()
    weights.index.name = weights.index.name or "household"
    _write_table(weights.to_frame(), args.out)
    if args.report:
        result.report.to_csv(args.report, index=False)
    s = result.summary()
    print(
        f"wrote {len(weights):,} weights ({int(s['n_active']):,} non-zero) to {args.out}; "
        f"mean |rel. error| {100 * s['mean_abs_rel_error']:.4f} %, max {100 * s['max_abs_rel_error']:.4f} %"
        + (f", {int(s['n_infeasible'])} infeasible target(s)" if s["n_infeasible"] else "")
    )
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
            from .demo import run_demo

            _, text = run_demo(count=args.count, epochs=args.epochs, seed=args.seed)
            print(text)
            return 0
        return _run(args)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as exc:
        print(f"l0-calibrate: error: {exc}", file=sys.stdout)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
