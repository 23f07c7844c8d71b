"""Read one rank's household columns of a calibration matrix from a file, and nothing more.

Formats (the household axis is what gets split):

``.npz`` written by :func:`scipy.sparse.save_npz`
    ``M`` is targets x households. CSC (household-major) files are read by
    range: only this rank's part of ``indptr``, ``indices`` and ``data``.
    CSR and COO files are streamed in chunks, keeping this rank's entries.
    Uncompressed files are memory-mapped; compressed ones are decompressed
    as a stream (memory stays at this rank's share plus one chunk).
``.npz`` / ``.npy`` holding one dense array
    targets x households.
``.parquet`` and ``.csv``
    microcalibrate's layout: one *row* per household, one column per
    target (a CSV's first column holds the household labels, as the
    ``l0-calibrate`` command reads it). Parquet reads only the row groups
    that overlap the rank's rows (needs ``pyarrow``).
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from .distributed_reducer import ColumnShard
from .io_tables import (
    check_csv_header,
    check_range,
    check_table,
    household_labels,
    load_parquet_rows,
    parquet_module,
)

__all__ = [
    "check_table",
    "household_labels",
    "load_columns",
    "load_npz_columns",
    "load_parquet_rows",
    "matrix_shape",
]

#: Elements per chunk when streaming a CSR/COO file.
CHUNK = 1 << 22
_SUFFIXES = (".npz", ".npy", ".parquet", ".pq", ".csv")


def _suffix(path: str | os.PathLike, argument: str = "path") -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{argument} file {p!r} does not exist")
    low = p.lower()
    for s in _SUFFIXES:
        if low.endswith(s):
            return s
    raise ValueError(
        f"{argument} {p!r}: unknown format; use one of {', '.join(_SUFFIXES)} (the suffix says the format)"
    )


class _Member:
    """One ``.npy`` member of an ``.npz`` archive, read by element ranges."""

    def __init__(self, path: str, zf: zipfile.ZipFile, name: str) -> None:
        self.path, self.zf, self.name = path, zf, name
        info = zf.getinfo(name)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.header = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{path}: member {name!r} holds Python objects; save numeric arrays")
        self.shape, self.fortran, self.dtype = tuple(shape), bool(fortran), np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.offset: int | None = None
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
            self.offset = info.header_offset + 30 + name_len + extra_len + self.header

    def read(self, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` in storage order, as a new array."""
        count = max(0, stop - start)
        if count == 0:
            return np.empty(0, dtype=self.dtype)
        item = self.dtype.itemsize
        if self.offset is not None:
            mm = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r",
                offset=self.offset + start * item,
                shape=(count,),
            )
            return np.array(mm, copy=True)
        with self.zf.open(self.name) as f:
            f.seek(self.header + start * item)
            return np.frombuffer(f.read(count * item), dtype=self.dtype).copy()

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first element, values)`` over the whole member, in order."""
        if self.offset is not None:
            for a in range(0, self.size, size):
                yield a, self.read(a, min(a + size, self.size))
            return
        item = self.dtype.itemsize
        with self.zf.open(self.name) as f:
            f.seek(self.header)
            for a in range(0, self.size, size):
                n = min(size, self.size - a)
                yield a, np.frombuffer(f.read(n * item), dtype=self.dtype).copy()

    def whole(self) -> np.ndarray:
        arr = self.read(0, self.size)
        return arr.reshape(self.shape, order="F" if self.fortran else "C")


def _npz_members(path: str, zf: zipfile.ZipFile) -> dict[str, _Member]:
    return {n[:-4]: _Member(path, zf, n) for n in zf.namelist() if n.endswith(".npy")}


def _sparse_format(members: dict[str, _Member]) -> str | None:
    if "format" not in members:
        return None
    raw = members["format"].whole()
    value = raw.item() if raw.shape == () else raw.reshape(-1)[0]
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _dense_member(members: dict[str, _Member], path: str) -> _Member:
    arrays = {k: m for k, m in members.items() if len(m.shape) == 2}
    for key in ("M", "matrix"):
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(
        f"{path} is neither a scipy.sparse .npz nor an .npz with one 2-D array (or one named 'M'); "
        f"it holds {sorted(members)}"
    )


def matrix_shape(path: str | os.PathLike, *, argument: str = "path") -> tuple[int, int]:
    """``(n_targets, n_households)`` of the matrix in ``path``, read from its header only.

    Examples
    --------
    >>> import tempfile, scipy.sparse as sp
    >>> f = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> sp.save_npz(f, sp.random(3, 8, density=0.5, format="csc", random_state=0))
    >>> matrix_shape(f)
    (3, 8)
    """
    p, kind = os.fspath(path), _suffix(path, argument)
    if kind == ".npz":
        with zipfile.ZipFile(p) as zf:
            members = _npz_members(p, zf)
            if _sparse_format(members) is not None:
                n_t, n_h = (int(v) for v in members["shape"].whole())
                return n_t, n_h
            m = _dense_member(members, p)
            return int(m.shape[0]), int(m.shape[1])
    if kind == ".npy":
        arr = np.load(p, mmap_mode="r")
        if arr.ndim != 2:
            raise ValueError(
                f"{p} must hold a 2-D targets x households array, got shape {arr.shape}"
            )
        return int(arr.shape[0]), int(arr.shape[1])
    if kind in (".parquet", ".pq"):
        pq = parquet_module()
        meta = pq.ParquetFile(p).metadata
        return int(meta.num_columns), int(meta.num_rows)
    import pandas as pd

    header = pd.read_csv(p, nrows=0, index_col=0)
    with open(p, "rb") as f:
        n_lines = sum(1 for line in f if line.strip())
    return len(header.columns), n_lines - 1


def load_npz_columns(path: str | os.PathLike, start: int, stop: int) -> Any:
    """Columns ``[start, stop)`` of the targets x households matrix in an ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        A :func:`scipy.sparse.save_npz` file (CSC, CSR or COO; compressed or
        not), or an ``.npz`` holding one dense 2-D array.
    start, stop : int
        Household columns to read.

    Returns
    -------
    scipy.sparse.csc_matrix of shape ``(n_targets, stop - start)``, or a
    numpy array for a dense file.

    Examples
    --------
    >>> import tempfile, scipy.sparse as sp
    >>> f = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> M = sp.random(3, 8, density=0.5, format="csr", random_state=0)
    >>> sp.save_npz(f, M)
    >>> bool((load_npz_columns(f, 2, 5) != M[:, 2:5]).nnz == 0)
    True
    """
    p = os.fspath(path)
    if _suffix(path) != ".npz":
        raise ValueError(f"path {p!r} is not an .npz file")
    with zipfile.ZipFile(p) as zf:
        members = _npz_members(p, zf)
        fmt = _sparse_format(members)
        if fmt is None:
            return _dense_columns(_dense_member(members, p), start, stop, p)
        n_t, n_h = (int(v) for v in members["shape"].whole())
        check_range(start, stop, n_h, p)
        import scipy.sparse as sp

        if fmt == "csc":
            ptr = members["indptr"].read(start, stop + 1).astype(np.int64)
            a, b = int(ptr[0]), int(ptr[-1])
            return sp.csc_matrix(
                (members["data"].read(a, b), members["indices"].read(a, b), ptr - a),
                shape=(n_t, stop - start),
            )
        if fmt == "csr":
            ptr = members["indptr"].whole().astype(np.int64)
            rows, cols, vals = [], [], []
            for (a, idx), (_, val) in zip(
                members["indices"].chunks(), members["data"].chunks(), strict=True
            ):
                keep = (idx >= start) & (idx < stop)
                pos = np.flatnonzero(keep) + a
                rows.append(np.searchsorted(ptr, pos, side="right") - 1)
                cols.append(idx[keep].astype(np.int64) - start)
                vals.append(val[keep])
            return _coo_to_csc(rows, cols, vals, (n_t, stop - start))
        if fmt == "coo":
            if "coords" in members:
                coords = members["coords"]
                nnz = coords.shape[1]
                row_chunks = (coords.read(a, min(a + CHUNK, nnz)) for a in range(0, nnz, CHUNK))
                col_chunks = (
                    coords.read(nnz + a, nnz + min(a + CHUNK, nnz)) for a in range(0, nnz, CHUNK)
                )
                data_chunks = (v for _, v in members["data"].chunks())
            else:
                row_chunks = (v for _, v in members["row"].chunks())
                col_chunks = (v for _, v in members["col"].chunks())
                data_chunks = (v for _, v in members["data"].chunks())
            rows, cols, vals = [], [], []
            for r, c, v in zip(row_chunks, col_chunks, data_chunks, strict=True):
                keep = (c >= start) & (c < stop)
                rows.append(r[keep].astype(np.int64))
                cols.append(c[keep].astype(np.int64) - start)
                vals.append(v[keep])
            return _coo_to_csc(rows, cols, vals, (n_t, stop - start))
    full = _load_scipy(p)  # bsr, dia: rare; read whole, keep the columns
    return full.tocsc()[:, start:stop]


def _load_scipy(path: str) -> Any:
    import scipy.sparse as sp

    return sp.load_npz(path)


def _coo_to_csc(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> Any:
    import scipy.sparse as sp

    if not rows:
        return sp.csc_matrix(shape)
    return sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    ).tocsc()


def _dense_columns(m: _Member, start: int, stop: int, path: str) -> np.ndarray:
    if len(m.shape) != 2:
        raise ValueError(f"{path} must hold a 2-D targets x households array, got shape {m.shape}")
    n_t, n_h = m.shape
    check_range(start, stop, n_h, path)
    if m.fortran:  # columns are contiguous
        return m.read(start * n_t, stop * n_t).reshape((n_t, stop - start), order="F")
    out = np.empty((n_t, stop - start), dtype=m.dtype)
    if m.offset is not None:
        mm = np.memmap(m.path, dtype=m.dtype, mode="r", offset=m.offset, shape=(n_t, n_h))
        out[:] = mm[:, start:stop]
        return out
    rows_per_chunk = max(1, CHUNK // max(n_h, 1))
    with m.zf.open(m.name) as f:
        f.seek(m.header)
        for r0 in range(0, n_t, rows_per_chunk):
            r1 = min(n_t, r0 + rows_per_chunk)
            block = np.frombuffer(f.read((r1 - r0) * n_h * m.dtype.itemsize), dtype=m.dtype)
            out[r0:r1] = block.reshape(r1 - r0, n_h)[:, start:stop]
    return out


def load_columns(
    path: str | os.PathLike,
    shard: ColumnShard | None = None,
    *,
    argument: str = "path",
    **options: Any,
) -> Any:
    """This rank's household columns of the matrix in ``path`` (format from the suffix).

    The one matrix-file reader: ``calibrate(path, ...)``, the ``l0-calibrate``
    command and the workers of :func:`~l0_calibrate.run_distributed` all read
    through it. Tables are checked as they are read: duplicate column names
    in a CSV header, a table without target columns and text columns raise,
    naming ``argument`` and the file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` (scipy.sparse or dense) or ``.npy``: targets x households;
        ``.parquet`` or ``.csv``: households x targets (a CSV's first column
        holds the household labels).
    shard : ColumnShard, optional
        Columns to read (default: :meth:`ColumnShard.even` over the file's
        households, from the process group; ``ColumnShard(n, 0, n)`` reads all).
    argument : str, default "path"
        What to call the file in error messages (e.g. ``"--matrix"``).
    **options
        ``columns=`` (target columns to read) for parquet and csv.

    Returns
    -------
    scipy.sparse.csc_matrix, numpy.ndarray or pandas.DataFrame
        Anything :func:`~l0_calibrate.calibrate` accepts.

    Examples
    --------
    >>> import tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "m.npy")
    >>> np.save(f, np.arange(12.0).reshape(3, 4))
    >>> load_columns(f, ColumnShard.even(4, rank=1, world_size=2)).tolist()
    [[2.0, 3.0], [6.0, 7.0], [10.0, 11.0]]
    """
    p, kind = os.fspath(path), _suffix(path, argument)
    n_h = matrix_shape(p, argument=argument)[1]
    if shard is None:
        shard = ColumnShard.even(n_h)
    elif not isinstance(shard, ColumnShard):
        raise TypeError(f"shard must be a ColumnShard, got {type(shard).__name__}")
    if n_h != shard.n_total:
        raise ValueError(f"{p} has {n_h} households but the shard is laid out for {shard.n_total}")
    allowed = {".parquet": {"columns"}, ".pq": {"columns"}, ".csv": {"columns"}}.get(kind, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"load_columns got option(s) {unknown} that {kind} files do not take")
    if kind == ".npz":
        return load_npz_columns(p, shard.start, shard.stop)
    if kind == ".npy":
        arr = np.load(p, mmap_mode="r")
        return np.array(arr[:, shard.columns], copy=True)
    columns = options.get("columns")
    if kind in (".parquet", ".pq"):
        frame = load_parquet_rows(p, shard.start, shard.stop, columns=columns)
    else:
        import pandas as pd

        check_csv_header(p, argument)
        frame = pd.read_csv(p, skiprows=range(1, shard.start + 1), nrows=shard.n_local, index_col=0)
        frame = frame if columns is None else frame[list(columns)]
    return check_table(frame, p, argument)
