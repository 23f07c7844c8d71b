"""Pieces of FeatureGate's supervised mode: inputs, targets and the gated model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ._data import _is_pandas, data_kind, to_float_tensor

__all__ = ["PreparedTarget", "feature_matrix", "make_model", "prepare_target", "task_loss"]

Task = Literal["auto", "regression", "classification"]
Model = Literal["linear", "mlp"]


def feature_matrix(
    data: Any, n_features: int, argument: str, device: torch.device | None
) -> Tensor:
    """``(n_rows, n_features)`` float64 copy of numeric ``data`` of shape ``(..., n_features)``.

    Examples
    --------
    >>> feature_matrix(np.ones((2, 3, 4)), 4, "X", None).shape
    torch.Size([6, 4])
    """
    kind = data_kind(data, argument)
    if kind == "pandas":
        frame = data.to_frame() if type(data).__name__ == "Series" else data
        import pandas as pd

        bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c].dtype)]
        if bad:
            raise TypeError(
                f"{argument} must have numeric columns only; {bad[:5]} are not numeric. "
                "Encode categories as numbers (e.g. one-hot) first"
            )
        values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = data
    if values.ndim < 2:
        raise ValueError(
            f"{argument} must have shape (n_samples, n_features), got shape {tuple(values.shape)}"
        )
    if values.shape[-1] != n_features:
        raise ValueError(
            f"{argument} has {values.shape[-1]} features (last dimension) but the gate was built for "
            f"n_features={n_features}; build a FeatureGate with n_features={values.shape[-1]}"
        )
    x = to_float_tensor(values, argument, device=device)
    x = x.reshape(-1, n_features)
    if x.shape[0] < 2:
        raise ValueError(
            f"{argument} needs at least 2 samples (rows) to select features, got {x.shape[0]}"
        )
    return x


@dataclass
class PreparedTarget:
    """A validated target: standardised values (regression) or class codes.

    Attributes
    ----------
    values : Tensor
        ``(n,)`` float targets (standardised) or ``int64`` class codes.
    task : str
        ``"regression"`` or ``"classification"``.
    n_out : int
        Model outputs: 1, or the number of classes.
    classes : ndarray or None
        Class labels, in code order.
    mean, std : float
        Standardisation of a regression target.
    """

    values: Tensor
    task: str
    n_out: int
    classes: np.ndarray | None = None
    mean: float = 0.0
    std: float = 1.0


def prepare_target(y: Any, n_rows: int, task: Task, device: torch.device | None) -> PreparedTarget:
    """Validate ``y`` and turn it into model targets.

    ``task="auto"`` is a regression for floating ``y`` and a classification
    for integer, boolean or string ``y``.

    Examples
    --------
    >>> prepare_target(np.array(["a", "b", "a"]), 3, "auto", None).classes.tolist()
    ['a', 'b']
    """
    if isinstance(y, Tensor):
        arr = y.detach().cpu().numpy()
    elif _is_pandas(y):
        arr = y.to_numpy()
    else:
        arr = np.asarray(y)
    if arr.ndim != 1 and not (arr.ndim == 2 and arr.shape[1] == 1):
        raise ValueError(
            f"y must be one target per sample, shape ({n_rows},), got shape {arr.shape}"
        )
    arr = arr.reshape(-1)
    if arr.shape[0] != n_rows:
        raise ValueError(
            f"y has {arr.shape[0]} entries but X has {n_rows} samples; pass one target per sample"
        )
    if task == "auto":
        task = "regression" if arr.dtype.kind in "fc" else "classification"
    if task == "classification":
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("y contains NaN or infinite values; drop or impute those samples")
        classes, codes = np.unique(arr, return_inverse=True)
        if classes.size < 2:
            raise ValueError(f"classification needs at least 2 classes in y, got {classes.size}")
        codes_t = torch.as_tensor(codes.reshape(-1), dtype=torch.long, device=device)
        return PreparedTarget(codes_t, task, int(classes.size), classes=classes)
    target = to_float_tensor(arr, "y", device=device)
    mean = float(target.mean())
    std = float(target.std())
    std = std if std > 0 else 1.0
    return PreparedTarget((target - mean) / std, task, 1, mean=mean, std=std)


def make_model(
    n_in: int,
    n_out: int,
    model: Model,
    hidden: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
) -> nn.Module:
    """A linear model or one-hidden-layer ReLU MLP, initialised from ``seed``.

    Examples
    --------
    >>> make_model(3, 1, "mlp", 8, torch.float32, torch.device("cpu"), 0)[0].in_features
    3
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model == "linear":
            net: nn.Module = nn.Linear(n_in, n_out, dtype=dtype)
        else:
            net = nn.Sequential(
                nn.Linear(n_in, hidden, dtype=dtype),
                nn.ReLU(),
                nn.Linear(hidden, n_out, dtype=dtype),
            )
    return net.to(device)


def task_loss(net: nn.Module, inputs: Tensor, target: PreparedTarget) -> Tensor:
    """Mean squared error (regression) or cross-entropy (classification).

    Examples
    --------
    >>> t = PreparedTarget(torch.zeros(4), "regression", 1)
    >>> task_loss(nn.Linear(2, 1), torch.zeros(4, 2), t).shape
    torch.Size([])
    """
    out = net(inputs)
    if target.task == "regression":
        return (out.reshape(-1) - target.values).square().mean()
    return nn.functional.cross_entropy(out, target.values)
