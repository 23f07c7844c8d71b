"""Households x targets tables (parquet, CSV): reading a rank's rows, checking, household labels.

Used by :func:`l0_calibrate.distributed_io.load_columns`, the one matrix-file reader.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_csv_header",
    "check_range",
    "check_table",
    "household_labels",
    "load_parquet_rows",
    "parquet_module",
]


def check_range(start: int, stop: int, n: int, path: str) -> None:
    """Refuse a column range that is not integers within ``[0, n]``, naming the file.

    Examples
    --------
    >>> check_range(0, 5, 3, "m.npz")
    Traceback (most recent call last):
    ...
    ValueError: columns [0, 5) are out of range for m.npz, which has 3 households
    """
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if not 0 <= start < stop <= n:
        raise ValueError(
            f"columns [{start}, {stop}) are out of range for {path}, which has {n} households"
        )


def parquet_module() -> Any:
    """``pyarrow.parquet``, or an ImportError that says how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .parquet files needs pyarrow: pip install pyarrow (or l0-calibrate[parquet])"
        ) from exc
    return pq


def load_parquet_rows(
    path: str | os.PathLike, start: int, stop: int, *, columns: Sequence[str] | None = None
) -> Any:
    """Household rows ``[start, stop)`` of a households x targets parquet file, as a DataFrame.

    Only the row groups that overlap the range are read. A default
    (positional) index is renumbered ``start..stop-1``; a stored index is kept.

    Parameters
    ----------
    path : str or os.PathLike
        Parquet file, one row per household, one numeric column per target.
    start, stop : int
        Rows to read.
    columns : list of str, optional
        Target columns to read (default: all).

    Returns
    -------
    pandas.DataFrame
        Households x targets, the layout ``fit`` accepts.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> f = os.path.join(tempfile.mkdtemp(), "m.parquet")
    >>> pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]}).to_parquet(f, row_group_size=2)
    >>> load_parquet_rows(f, 1, 3)["a"].tolist()
    [2.0, 3.0]
    """
    import pandas as pd

    p = os.fspath(path)
    pq = parquet_module()
    pf = pq.ParquetFile(p)
    meta = pf.metadata
    check_range(start, stop, meta.num_rows, p)
    groups, first, pos = [], None, 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if pos < stop and pos + n > start:
            groups.append(i)
            first = pos if first is None else first
        pos += n
    table = pf.read_row_groups(
        groups, columns=list(columns) if columns is not None else None, use_pandas_metadata=True
    )
    table = table.slice(start - (first or 0), stop - start)
    frame = table.to_pandas()
    if isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1:
        frame.index = pd.RangeIndex(start, stop)
    return frame


def check_csv_header(path: str, argument: str) -> None:
    """Refuse duplicate names in a CSV header (pandas would rename them silently to 'a.1').

    Examples
    --------
    >>> import tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(f, "w").write("hh,a,a\\nh0,1,2\\n")
    >>> check_csv_header(f, "--matrix")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --matrix '...m.csv' has duplicate column name(s) ['a']; each column is one target, so rename or drop the duplicates
    """
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    names = header[1:]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f"{argument} {path!r} has duplicate column name(s) {dup[:5]}; each column is one target, "
            "so rename or drop the duplicates"
        )


def check_table(frame: Any, path: str, argument: str = "--matrix") -> Any:
    """Refuse a households x targets table that holds no target column or text columns, naming the file.

    Examples
    --------
    >>> import pandas as pd
    >>> check_table(pd.DataFrame({"a;b": ["1;2"]}), "m.csv")
    Traceback (most recent call last):
    ...
    ValueError: --matrix 'm.csv': column 'a;b' holds text ('1;2'); its separator looks like ';' but the table was read with ',': write it with commas (or read it with pandas.read_csv(sep=';') and pass the DataFrame to calibrate())
    """
    if frame.shape[1] == 0:
        raise ValueError(
            f"{argument} {path!r} parses to 0 target columns (first line: {_first_line(path)!r}); the "
            "table must have one column per target after the household label column, separated "
            "by commas"
        )
    text = [c for c, dt in frame.dtypes.items() if not _numeric(dt)]
    if text:
        col = text[0]
        sample = frame[col].dropna().astype(str)
        example = sample.iloc[0] if len(sample) else ""
        if any(";" in str(c) for c in frame.columns) or ";" in example:
            raise ValueError(
                f"{argument} {path!r}: column {str(col)!r} holds text ({example!r}); its separator "
                "looks like ';' but the table was read with ',': write it with commas (or read it "
                "with pandas.read_csv(sep=';') and pass the DataFrame to calibrate())"
            )
        shown = ", ".join(repr(str(c)) for c in text[:5]) + (
            f" and {len(text) - 5} more" if len(text) > 5 else ""
        )
        raise ValueError(
            f"{argument} {path!r}: column {shown} holds text (e.g. {example!r}); every column after "
            "the household label must be a numeric target: drop or encode the text columns"
        )
    return frame


def _numeric(dt: Any) -> bool:
    return (
        isinstance(dt, np.dtype)
        and (np.issubdtype(dt, np.number) or dt == np.bool_)
        or (not isinstance(dt, np.dtype) and getattr(dt, "kind", "") in ("i", "u", "f", "b"))
    )


def _first_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.readline().rstrip("\n")[:80]
    except (OSError, UnicodeDecodeError):  # pragma: no cover - parquet or unreadable
        return ""


def household_labels(path: str | os.PathLike) -> Any:
    """The household labels a table file stores (parquet index, CSV first column), else None.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> f = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> pd.DataFrame({"t": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="hh")).to_csv(f)
    >>> household_labels(f).tolist()
    ['a', 'b']
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"path file {p!r} does not exist")
    if not p.lower().endswith((".csv", ".parquet", ".pq")):
        return None
    import pandas as pd

    if p.lower().endswith(".csv"):
        first = pd.read_csv(p, usecols=[0])
        return pd.Index(first.iloc[:, 0].to_numpy(), name=first.columns[0])
    parquet_module()
    index = pd.read_parquet(p, columns=[]).index
    return None if isinstance(index, pd.RangeIndex) else index
