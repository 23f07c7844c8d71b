"""What every calibration method shares: :class:`Solution`, :class:`Method` and the run-context defaults.

A method is one module with an options dataclass and one function
``run(problem, options, reducer) -> Solution``; :data:`l0_calibrate.methods.METHODS`
maps its name to a :class:`Method` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["DEVICE", "DTYPE", "SEED", "Method", "MethodOptions", "Solution"]

#: Seed of the gates' noise when the caller gives none (``None``: torch's global generator).
SEED: int | None = 0
#: Where the methods compute by default.
DEVICE: str = "cpu"
#: Precision of the gate training by default.
DTYPE: torch.dtype = torch.float32


@dataclass
class MethodOptions:
    """The options every method takes, with their defaults (each method's class adds its own).

    Attributes
    ----------
    target_count : int, float or None
        Households to keep (a count, or a fraction < 1).
    epochs : int, default 1000
        Gate-training epochs.
    lr : float, default 0.05
        Adam learning rate.
    polish : bool or None
        Exact re-calibration of the kept households; None: with a ``target_count``.
    distance : str, default "raking"
        Calibration distance of the polish (and of ``lambda_distance``).
    lambda_distance : float, default 0
        Weight of the distance of the weights from the design weights.
    max_weight_ratio : float, (lo, hi) or None
        Bounds on the weights relative to the design weights (``problem.design_weights``,
        or one common weight derived from the data; None: the method's rule).
    callbacks : sequence of callables, optional
        Called with an event dict at every logging step (methods that have the hook).
    verbose_freq : int, default 100
        Epochs between logging steps and history rows.
    verbose : bool, default False
        Log the steps.
    progress : bool or None
        tqdm bar (None: the method's rule, following ``verbose``).
    seed : int or None, default 0
        Seed of the gate noise (None: torch's global generator).
    device, dtype
        Where and in which precision to train (default CPU, float32).

    Examples
    --------
    >>> MethodOptions(target_count=5).polish, MethodOptions().polish
    (True, False)
    """

    target_count: int | float | None = None
    epochs: int = 1000
    lr: float = 0.05
    polish: bool | None = None
    distance: str = "raking"
    lambda_distance: float = 0.0
    max_weight_ratio: Any = None
    callbacks: Sequence[Callable[[dict], Any]] | None = None
    verbose_freq: int = 100
    verbose: bool = False
    progress: bool | None = None
    seed: int | None = SEED
    device: str | torch.device = DEVICE
    dtype: torch.dtype = DTYPE

    def __post_init__(self) -> None:
        if self.polish is None:
            self.polish = self.target_count is not None


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
        Its options dataclass, a :class:`MethodOptions` (every default written there, once).
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
    options: type[MethodOptions]
    run: Callable[..., Solution]
    shards: bool
