"""Input handling shared by the gates: tensors, numpy arrays and pandas objects.

pandas is never imported at module import: a DataFrame is recognised by the
module name of its type, and pandas is imported lazily only to build the
return value when the caller passed a pandas object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from l0_core.checks import check_seed
from torch import Tensor

__all__ = [
    "Table",
    "as_index_output",
    "as_table",
    "data_kind",
    "resolve_seed",
    "take_columns",
    "take_rows",
    "to_float_tensor",
]

_KINDS = ("torch", "numpy", "pandas")


def _is_pandas(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "pandas"


def data_kind(data: object, argument: str = "data") -> str:
    """Return ``"torch"``, ``"numpy"`` or ``"pandas"`` for supported inputs.

    Raises
    ------
    TypeError
        For any other type; the message names the accepted types.

    Examples
    --------
    >>> data_kind(np.zeros((2, 2)))
    'numpy'
    """
    if isinstance(data, Tensor):
        return "torch"
    if isinstance(data, np.ndarray):
        return "numpy"
    if _is_pandas(data) and type(data).__name__ in ("DataFrame", "Series"):
        return "pandas"
    raise TypeError(
        f"{argument} must be a torch.Tensor, a numpy.ndarray or a pandas DataFrame/Series, "
        f"got {type(data).__name__}; convert it with numpy.asarray({argument}) first"
    )


def resolve_seed(seed: object, argument: str = "seed") -> int:
    """Return ``seed`` checked by :func:`l0_core.checks.check_seed`, or draw one when ``None``.

    Drawing from torch's global generator means ``torch.manual_seed`` before
    construction also makes results reproducible.

    Examples
    --------
    >>> resolve_seed(7)
    7
    >>> _ = torch.manual_seed(0); a = resolve_seed(None)
    >>> _ = torch.manual_seed(0); a == resolve_seed(None)
    True
    """
    checked = check_seed(seed, argument)
    if checked is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return checked


def to_float_tensor(
    values: Any,
    argument: str,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> Tensor:
    """Convert numeric ``values`` to a new float tensor, rejecting NaN/inf and complex data.

    Examples
    --------
    >>> to_float_tensor(np.arange(3), "x").tolist()
    [0.0, 1.0, 2.0]
    """
    if isinstance(values, Tensor):
        t = values.detach()
    else:
        arr = np.asarray(values)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise TypeError(f"{argument} must be numeric, got values of dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else np.array(arr, copy=True)
        t = torch.from_numpy(arr)
    if t.is_complex():
        raise TypeError(f"{argument} must be real-valued, got dtype {t.dtype}")
    t = t.to(device=device if device is not None else t.device, dtype=dtype, copy=True)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{argument} contains {int(bad.sum())} NaN or infinite value(s) (first at index "
            f"{tuple(where)}); impute or drop them before selecting"
        )
    return t


@dataclass
class Table:
    """Numeric view of a data set: numeric columns plus one-hot category blocks.

    Attributes
    ----------
    numeric : Tensor
        ``(n_rows, n_numeric)`` float64 matrix of the numeric columns.
    categories : list of Tensor
        One ``(n_rows,)`` integer code tensor per categorical column.
    numeric_names, category_names : list of str
        Column labels.
    """

    numeric: Tensor
    categories: list[Tensor] = field(default_factory=list)
    numeric_names: list[str] = field(default_factory=list)
    category_names: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(self.numeric.shape[0])


def _codes(values: np.ndarray) -> Tensor:
    # Missing values form their own level; levels are ordered by first appearance-independent
    # sorting of their string form so the coding is deterministic.
    keys = np.array(["\x00<missing>" if _is_missing(v) else repr(v) for v in values], dtype=object)
    _, inverse = np.unique(keys, return_inverse=True)
    return torch.from_numpy(inverse.astype(np.int64).reshape(-1))


def _is_missing(v: object) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN and pandas NA-like floats
    except (TypeError, ValueError):
        return False


def as_table(
    data: Any,
    argument: str = "data",
    *,
    categorical: list | tuple | None = None,
    device: torch.device | None = None,
) -> Table:
    """Split ``data`` into numeric columns and categorical codes.

    Tensors and arrays of shape ``(n_rows,)`` or ``(n_rows, ...)`` are
    flattened to ``(n_rows, n_columns)``; ``categorical`` lists the positions
    of columns to treat as categories. For a DataFrame, columns of
    categorical, object, string or boolean dtype are categories and
    ``categorical`` may add more (by label).

    Examples
    --------
    >>> t = as_table(np.array([[1.0, 0], [2.0, 1], [3.0, 1]]), categorical=[1])
    >>> t.numeric.shape, [c.tolist() for c in t.categories]
    (torch.Size([3, 1]), [[0, 1, 1]])
    """
    kind = data_kind(data, argument)
    cat_cols: list = list(categorical) if categorical is not None else []
    if kind == "pandas":
        frame = data.to_frame() if type(data).__name__ == "Series" else data
        if frame.shape[0] == 0:
            raise ValueError(f"{argument} has no rows; pass at least one row")
        import pandas as pd  # the caller passed a pandas object, so pandas is installed

        unknown = [c for c in cat_cols if c not in frame.columns]
        if unknown:
            raise ValueError(
                f"categorical lists column(s) {unknown} that are not in {argument}; "
                f"its columns are {list(frame.columns)[:20]}"
            )
        num_names: list[Any] = []
        cat_names: list[Any] = []
        for col in frame.columns:
            dt = frame[col].dtype
            is_cat = (
                col in cat_cols
                or not pd.api.types.is_numeric_dtype(dt)
                or pd.api.types.is_bool_dtype(dt)
            )
            (cat_names if is_cat else num_names).append(col)
        if num_names:
            numeric = to_float_tensor(
                frame[num_names].to_numpy(dtype=np.float64, na_value=np.nan),
                f"{argument} (numeric columns)",
                device=device,
            )
        else:
            numeric = torch.zeros(frame.shape[0], 0, dtype=torch.float64, device=device)
        cats = [_codes(frame[c].to_numpy(dtype=object)).to(device) for c in cat_names]
        return Table(numeric, cats, [str(c) for c in num_names], [str(c) for c in cat_names])
    values = data.detach() if kind == "torch" else data
    if values.ndim == 0:
        raise ValueError(f"{argument} must have at least one dimension (rows), got a scalar")
    if values.shape[0] == 0:
        raise ValueError(f"{argument} has no rows; pass at least one row")
    flat = values.reshape(values.shape[0], -1)
    n_cols = flat.shape[1]
    pos = []
    for c in cat_cols:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not -n_cols <= c < n_cols:
            raise ValueError(
                f"categorical must list column positions between 0 and {n_cols - 1} for an array "
                f"{argument}, got {c!r}"
            )
        pos.append(int(c) % n_cols)
    num_pos = [j for j in range(n_cols) if j not in pos]
    if kind == "torch":
        numeric = to_float_tensor(flat[:, num_pos], argument, device=device or flat.device)
        cats = [to_float_tensor(flat[:, j], argument, device=device or flat.device) for j in pos]
        cats = [_codes(c.cpu().numpy()).to(c.device) for c in cats]
    else:
        numeric = to_float_tensor(flat[:, num_pos], argument, device=device)
        cats = [_codes(flat[:, j]).to(device) for j in pos]
    return Table(numeric, cats, [str(j) for j in num_pos], [str(j) for j in pos])


def take_rows(data: Any, indices: Tensor) -> Any:
    """Rows ``indices`` of ``data``, of the same kind as ``data``.

    Examples
    --------
    >>> take_rows(np.arange(5) * 10, torch.tensor([1, 3])).tolist()
    [10, 30]
    """
    kind = data_kind(data)
    if kind == "torch":
        return data[indices.to(data.device)]
    idx = indices.cpu().numpy()
    if kind == "numpy":
        return data[idx]
    return data.iloc[idx]


def take_columns(data: Any, indices: Tensor) -> Any:
    """Last-axis entries ``indices`` of ``data`` (columns of a DataFrame), same kind.

    Examples
    --------
    >>> take_columns(np.eye(3), torch.tensor([2])).shape
    (3, 1)
    """
    kind = data_kind(data)
    if kind == "torch":
        return data[..., indices.to(data.device)]
    idx = indices.cpu().numpy()
    if kind == "numpy":
        return data[..., idx]
    if type(data).__name__ == "Series":
        return data.iloc[idx]
    return data.iloc[:, idx]


def as_index_output(indices: Tensor, like: Any) -> Any:
    """Indices as a LongTensor on ``like``'s device for tensors, else a numpy int64 array.

    Examples
    --------
    >>> as_index_output(torch.tensor([0, 2]), np.zeros(3)).dtype
    dtype('int64')
    """
    if isinstance(like, Tensor):
        return indices.to(like.device)
    return indices.cpu().numpy().astype(np.int64)


def values_like(values: Tensor, like: Any, index: Any = None, name: str | None = None) -> Any:
    """Return a 1-D float tensor as the kind of ``like`` (tensor, ndarray or pandas Series).

    Examples
    --------
    >>> values_like(torch.tensor([1.0, 2.0]), np.zeros(2)).tolist()
    [1.0, 2.0]
    """
    if isinstance(like, Tensor):
        return values.to(device=like.device)
    arr = values.detach().cpu().numpy()
    if _is_pandas(like):
        import pandas as pd

        return pd.Series(arr, index=index, name=name)
    return arr
