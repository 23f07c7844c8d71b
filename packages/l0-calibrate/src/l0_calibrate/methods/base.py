"""What every calibration method shares: :class:`Solution`, :class:`Method` and the run-context defaults.

A method is one module with an options dataclass and one function
``run(problem, options, reducer) -> Solution``; :data:`l0_calibrate.methods.METHODS`
maps its name to a :class:`Method` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["DEVICE", "DTYPE", "SEED", "Method", "Solution"]

#: Seed of the gates' noise when the caller gives none (``None``: torch's global generator).
SEED: int | None = 0
#: Where the methods compute by default.
DEVICE: str = "cpu"
#: Precision of the gate training by default.
DTYPE: torch.dtype = torch.float32


@dataclass
class Solution:
    """What a method's ``run`` returns: this process's weights and how they were found.

    Attributes
    ----------
    weights : numpy.ndarray
        Float64 weights of this process's households (zeros for dropped ones).
    history : list of dict
        One record per logging step (and per timed stage).
    diagnostics : dict
        The method's own diagnostics (e.g. ``start_weight``, ``weights_at_bound``).
    model : SparseCalibrationWeights or None
        The fitted model, for methods that train one.
    stage_times : dict of str to float
        Seconds per stage, in order.
    epochs : int
        Gate-training epochs run.
    unmet : numpy.ndarray or None
        Indices of the targets the method could not meet exactly (None: the
        method does not check exactness).
    polish_error : float or None
        Largest relative error after the exact polish (None: no polish ran).
    unmet_cause : str
        Why targets are unmet and what to do, appended to the warning.

    Examples
    --------
    >>> Solution(np.ones(3)).weights.dtype
    dtype('float64')
    """

    weights: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    stage_times: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    unmet: np.ndarray | None = None
    polish_error: float | None = None
    unmet_cause: str = ""

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64)


@dataclass(frozen=True)
class Method:
    """One entry of the method table.

    Attributes
    ----------
    name : str
        What ``calibrate(method=...)`` calls it.
    options : type
        Its options dataclass (every default written there, once).
    run : callable
        ``run(problem, options, reducer) -> Solution``.
    shards : bool
        Whether it runs column-sharded over a process group.

    Examples
    --------
    >>> from l0_calibrate.methods import METHODS
    >>> METHODS["gates"].shards, METHODS["select"].shards
    (True, False)
    """

    name: str
    options: type
    run: Callable[..., Solution]
    shards: bool
