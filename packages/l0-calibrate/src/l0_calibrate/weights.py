"""SparseCalibrationWeights: the published l0-python API, on the fast engine.

The weights are ``w = exp(log_weight) * z`` with ``z`` a Hard Concrete gate
per household; ``fit`` minimises a calibration loss on ``M @ w`` plus
``lambda_l0`` times the expected number of non-zero weights. Arguments,
defaults and results follow l0-python 0.6.2's
``l0.calibration.SparseCalibrationWeights``; the differences (all bug fixes
or additions) are listed in the package README.
"""

from __future__ import annotations

import inspect
import io
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from l0_core import SparseOperator, sparse_matvec
from l0_core.checks import check_device
from torch import Tensor, nn

from .engine import deterministic_gates
from .inputs import as_matrix, check_model_dtype, check_nonneg_float, check_positive_int

__all__ = ["SparseCalibrationWeights"]

_STATE_FORMAT = 1


def pack_fit_state(state: dict[str, Any]) -> Tensor:
    """Serialise a fit-state dict into a ``uint8`` tensor (``torch.save`` bytes).

    Examples
    --------
    >>> t = pack_fit_state({"epoch": 3}); t.dtype, unpack_fit_state(t)
    (torch.uint8, {'epoch': 3})
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def unpack_fit_state(state: Any) -> Any:
    """Inverse of :func:`pack_fit_state` (read with ``weights_only=True``); a dict passes through.

    Examples
    --------
    >>> unpack_fit_state({"epoch": 1})
    {'epoch': 1}
    """
    if isinstance(state, Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        raw = state.detach().cpu().numpy().tobytes()
        return torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    return state


def _per_household(value: Any, n: int, argument: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A scalar or an array of length ``n`` as a new tensor (never a view of the caller's data)."""
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be a number or an array, got a bool")
    if isinstance(value, (int, float, np.integer, np.floating)):
        out = torch.full((n,), float(value), device=device, dtype=dtype)
    else:
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{argument} must be numeric, got dtype {arr.dtype}")
        if arr.shape != (n,):
            raise ValueError(f"{argument} array must have shape ({n},), got {arr.shape}")
        out = torch.tensor(np.array(arr, dtype=np.float64), device=device, dtype=dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{argument} contains NaN or infinite values; replace them before calling")
    return out


def _refuse_non_finite(state_dict: Mapping[str, Any], prefix: str) -> None:
    """A NaN or infinite parameter in a state_dict is refused by key, before anything is loaded."""
    for name in ("log_weight", "log_alpha"):
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise ValueError(
                    f"state_dict[{prefix + name!r}] holds {int(bad.sum())} NaN or infinite value(s) "
                    f"(first at index {int(bad.reshape(-1).nonzero()[0, 0])}); it comes from a "
                    "diverged fit or a corrupted file: load an earlier checkpoint "
                    "(l0_calibrate.Checkpoint.latest)"
                )


class SparseCalibrationWeights(nn.Module):
    """Non-negative calibration weights with Hard Concrete (L0) gates.

    Parameters
    ----------
    n_features : int
        Number of weights (households / columns of ``M``).
    beta : float, default 2/3
        Gate temperature.
    gamma, zeta : float, default -0.1, 1.1
        Stretch interval of the Hard Concrete distribution.
    init_keep_prob : float or array-like, default 0.5
        Initial gate location as in l0-python 0.6.2: ``log_alpha =
        logit(init_keep_prob)`` (values are clipped to ``[1e-6, 1 - 1e-6]``).
        The exact probability of a non-zero gate is then
        ``sigmoid(log_alpha + beta * log(zeta / -gamma))`` (0.83 for 0.5 at
        the default temperature).
    init_weights : float, array-like or None, default None
        Initial weights (original scale, ``>= 0``); None means 1.
    log_weight_jitter_sd : float, default 0.0
        Standard deviation of the normal noise added to ``log_weight`` at the
        start of the *first* ``fit``.
    log_alpha_jitter_sd : float, default 0.01
        Standard deviation of the noise added to the initial ``log_alpha``.
    device : str or torch.device, default "cpu"
        Device of the parameters (and of the matrix during ``fit``).
    use_gates : bool, default True
        False gives plain positive weights ``exp(log_weight)``.
    seed : int, optional
        Seed of the model's own random generator (jitter and gate noise).
        None draws that seed from torch's global generator, so
        ``torch.manual_seed`` still makes runs repeatable.
    dtype : torch.dtype, default torch.float32
        Parameter and matrix dtype (keyword only; float64 for exactness).
    distributed : bool or None, default None
        Column sharding over :mod:`torch.distributed` (keyword only).
        ``None``: shard exactly when a process group with more than one rank
        is initialised; ``False``: never (each rank fits on its own, e.g. a
        DDP job with the full matrix on every rank); ``True``: shard, and
        raise when no process group is initialised. When sharded,
        ``n_features`` is the number of household columns *this rank* holds,
        the layout is every rank's count in rank order, and the object is a
        :class:`~l0_calibrate.ShardedCalibrationWeights` (``fit``,
        ``forward``, ``predict`` and ``get_sparsity`` become collective; see
        there and ``docs/distributed.md``). With the same ``seed`` the
        sharded fit gives the single-process weights.

    Attributes
    ----------
    log_weight, log_alpha : torch.nn.Parameter
        Log weights and gate locations.
    history_ : list of dict
        One entry per logging step of every ``fit`` (epoch, loss parts,
        errors, active count); see :mod:`l0_calibrate.callbacks`.
    infeasible_targets_ : list of str
        Targets of the last fit that no household contributes to.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.array([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0]])
    >>> model = SparseCalibrationWeights(4, init_keep_prob=0.9, seed=0)
    >>> _ = model.fit(M, np.array([6.0, 9.0]), lambda_l0=0.001, lr=0.05, epochs=400, loss_type="relative")
    >>> bool(np.allclose(model.predict(M).numpy(), [6.0, 9.0], rtol=0.1))
    True

    Inside ``torchrun`` (a process group of several ranks) the same code
    shards: each rank passes its own columns and gets its own weights back.

    >>> import torch.distributed as dist  # doctest: +SKIP
    >>> dist.init_process_group("gloo")  # doctest: +SKIP
    >>> M_local = M[:, [0, 1]] if dist.get_rank() == 0 else M[:, [2, 3]]  # doctest: +SKIP
    >>> model = SparseCalibrationWeights(2, init_keep_prob=0.9, seed=0)  # doctest: +SKIP
    >>> _ = model.fit(M_local, [6.0, 9.0], lambda_l0=0.001, lr=0.05, epochs=400)  # doctest: +SKIP
    >>> from l0_calibrate import gather_weights  # doctest: +SKIP
    >>> weights = gather_weights(model)  # all 4 weights on rank 0, None elsewhere  # doctest: +SKIP
    """

    #: Bound on ``log_alpha`` before scaling by ``beta`` (as in l0-python 0.6.2).
    LOG_ALPHA_BOUND: float = 20.0

    log_weight: nn.Parameter
    log_alpha: nn.Parameter

    def __new__(cls, *args: Any, **kwargs: Any) -> SparseCalibrationWeights:
        # Inside a process group of several ranks (distributed=None) or with distributed=True,
        # SparseCalibrationWeights(n_local, ...) is this rank's block of a column-sharded model.
        # Unpickling and copying call __new__ without arguments: those stay plain.
        if cls is SparseCalibrationWeights and (args or "n_features" in kwargs):
            from .distributed_reducer import use_sharding

            if use_sharding(kwargs.get("distributed")):
                from .distributed import ShardedCalibrationWeights

                obj = super().__new__(ShardedCalibrationWeights)
                obj.__dict__["_l0_local_count"] = True
                return obj
        return super().__new__(cls)

    def __init__(
        self,
        n_features: int,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_keep_prob: float | np.ndarray = 0.5,
        init_weights: float | np.ndarray | None = None,
        log_weight_jitter_sd: float = 0.0,
        log_alpha_jitter_sd: float = 0.01,
        device: str | torch.device = "cpu",
        use_gates: bool = True,
        seed: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        distributed: bool | None = None,
    ) -> None:
        super().__init__()
        if distributed is not None and not isinstance(distributed, (bool, np.bool_)):
            raise TypeError(f"distributed must be True, False or None, got {type(distributed).__name__}")
        if distributed:
            raise ValueError(
                f"distributed=True is not available for the subclass {type(self).__name__}; build "
                "SparseCalibrationWeights or ShardedCalibrationWeights for a sharded model"
            )
        n_features = check_positive_int(n_features, "n_features")
        beta = check_nonneg_float(beta, "beta", positive=True)
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma < 0):
            raise ValueError(f"gamma must be a negative number (e.g. -0.1), got {gamma!r}")
        if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 1):
            raise ValueError(f"zeta must be a number > 1 (e.g. 1.1), got {zeta!r}")
        log_weight_jitter_sd = check_nonneg_float(log_weight_jitter_sd, "log_weight_jitter_sd")
        log_alpha_jitter_sd = check_nonneg_float(log_alpha_jitter_sd, "log_alpha_jitter_sd")
        check_model_dtype(dtype)
        device = check_device(device)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.n_features = n_features
        self.beta = beta
        self.gamma = float(gamma)
        self.zeta = float(zeta)
        self.log_weight_jitter_sd = log_weight_jitter_sd
        self.log_alpha_jitter_sd = log_alpha_jitter_sd
        self.device = torch.device(device)
        self.use_gates = bool(use_gates)
        self.seed = seed
        self.dtype = dtype

        if seed is None:
            seed_used = int(torch.randint(0, 2**62, (1,)).item())
        else:
            seed_used = int(seed)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed_used)

        if init_weights is None:
            weights = torch.ones(n_features, device=self.device, dtype=dtype)
        else:
            weights = _per_household(init_weights, n_features, "init_weights", self.device, dtype)
            if bool((weights < 0).any()):
                n_neg = int((weights < 0).sum().item())
                raise ValueError(
                    f"init_weights must be non-negative; {n_neg} value(s) are negative "
                    "(weights are exp(log_weight) * gate and cannot be negative)"
                )
        self.register_buffer("initial_weights", weights.clone(), persistent=False)
        self.log_weight = nn.Parameter(torch.log(weights + 1e-8))

        keep = _per_household(init_keep_prob, n_features, "init_keep_prob", self.device, dtype)
        if bool(((keep < 0) | (keep > 1)).any()):
            raise ValueError("init_keep_prob must lie in [0, 1] (a probability), got values outside it")
        keep = keep.clamp(1e-6, 1 - 1e-6)
        mu = torch.log(keep / (1 - keep))
        if log_alpha_jitter_sd > 0:
            noise = torch.randn(n_features, generator=self._generator, device=self.device, dtype=dtype)
            mu = mu + noise * log_alpha_jitter_sd
        self.log_alpha = nn.Parameter(mu)

        # Fit state (saved by state_dict through get_extra_state).
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._pending_controller_state: dict[str, Any] | None = None
        self._epoch = 0
        self._jittered = False
        self._schedule: dict[str, Any] | None = None
        self._schedule_fn: Callable[[float, float, float], float] | None = None
        self._set_controller(None)
        self._count_schedule: dict[str, Any] | None = None
        self.history_: list[dict[str, Any]] = []
        self.infeasible_targets_: list[str] = []
        self.polish_result_: Any = None

    # The sparsity controller is an nn.Module; it is kept out of the module tree so
    # that state_dict() keeps the published keys (its state goes in the extra state).
    @property
    def _controller(self) -> Any:
        return self.__dict__.get("_controller_obj")

    def _set_controller(self, controller: Any) -> None:
        self.__dict__["_controller_obj"] = controller

    # ------------------------------------------------------------ gates
    def _gate_kw(self) -> dict[str, float]:
        return {"beta": self.beta, "gamma": self.gamma, "zeta": self.zeta, "bound": self.LOG_ALPHA_BOUND}

    def _sample_gates(self) -> Tensor:
        """A differentiable Hard Concrete sample of every gate (uses the model's generator)."""
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        u = torch.rand(
            log_alpha.shape, generator=self._generator, device=log_alpha.device, dtype=log_alpha.dtype
        ).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)

    def get_deterministic_gates(self) -> Tensor:
        """Test-time gate values (0 exactly where ``P(gate != 0) <= 1/2``); differentiable.

        Examples
        --------
        >>> SparseCalibrationWeights(3, init_keep_prob=0.999, seed=0).get_deterministic_gates().tolist()
        [1.0, 1.0, 1.0]
        """
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        s = torch.sigmoid(log_alpha / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)

    def get_weights(self, deterministic: bool = False) -> Tensor:
        """Weights ``exp(log_weight) * gate`` (sampled gates unless ``deterministic``).

        Examples
        --------
        >>> model = SparseCalibrationWeights(2, init_weights=3.0, init_keep_prob=0.999, seed=0)
        >>> [round(v, 3) for v in model.get_weights(deterministic=True).tolist()]
        [3.0, 3.0]
        """
        if not self.use_gates:
            return torch.exp(self.log_weight)
        gates = self.get_deterministic_gates() if deterministic else self._sample_gates()
        return torch.exp(self.log_weight) * gates

    def _operator(self, M: Any) -> SparseOperator:
        op, _, _ = as_matrix(M, dtype=self.log_weight.dtype, device=self.log_weight.device)
        if op.shape[1] != self.n_features:
            raise ValueError(
                f"M has {op.shape[1]} household columns but the model has n_features={self.n_features}"
            )
        return op

    def forward(self, M: Any, deterministic: bool = False) -> Tensor:
        """Weighted totals ``M @ w``, differentiable in the parameters.

        Parameters
        ----------
        M : scipy.sparse matrix, numpy/torch array, torch sparse, SparseOperator or DataFrame
            Shape ``(n_targets, n_features)`` (a DataFrame is households x targets).
            Pass an :class:`l0_core.SparseOperator` to reuse a converted matrix.
        deterministic : bool, default False
            Use the test-time gates.

        Examples
        --------
        >>> model = SparseCalibrationWeights(2, init_keep_prob=0.999, seed=0)
        >>> [round(v, 3) for v in model(np.array([[1.0, 2.0]]), deterministic=True).tolist()]
        [3.0]
        """
        return sparse_matvec(self._operator(M), self.get_weights(deterministic=deterministic))

    @torch.no_grad()
    def predict(self, M: Any) -> Tensor:
        """Estimates ``M @ w`` with the deterministic weights (no gradient).

        Examples
        --------
        >>> model = SparseCalibrationWeights(2, init_weights=2.0, init_keep_prob=0.999, seed=0)
        >>> [round(v, 3) for v in model.predict(np.array([[1.0, 1.0]])).tolist()]
        [4.0]
        """
        return self.forward(M, deterministic=True)

    def get_l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates, ``sum sigmoid(log_alpha - beta log(-gamma/zeta))``.

        Examples
        --------
        >>> round(SparseCalibrationWeights(10, log_alpha_jitter_sd=0.0).get_l0_penalty().item(), 2)
        8.32
        """
        c = -self.beta * math.log(-self.gamma / self.zeta)
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        return torch.sigmoid(log_alpha + c).sum()

    def get_l2_penalty(self) -> Tensor:
        """``sum exp(log_weight)^2`` (the published L2 on the ungated weights).

        Examples
        --------
        >>> SparseCalibrationWeights(3, init_weights=2.0).get_l2_penalty().item()
        12.0
        """
        return torch.exp(self.log_weight).pow(2).sum()

    @torch.no_grad()
    def get_sparsity(self) -> float:
        """Fraction of weights whose deterministic gate is exactly 0.

        Examples
        --------
        >>> SparseCalibrationWeights(4, init_keep_prob=0.999).get_sparsity()
        0.0
        """
        if not self.use_gates:
            return 0.0
        return float((self.get_deterministic_gates() == 0).to(torch.float64).mean().item())

    @torch.no_grad()
    def get_active_weights(self) -> dict[str, Any]:
        """Indices, values and count of the non-zero deterministic weights.

        Examples
        --------
        >>> out = SparseCalibrationWeights(3, init_keep_prob=0.999).get_active_weights()
        >>> out["count"], out["indices"].tolist()
        (3, [0, 1, 2])
        """
        weights = self.get_weights(deterministic=True)
        mask = weights > 0
        return {"indices": torch.where(mask)[0], "values": weights[mask], "count": int(mask.sum().item())}

    @torch.no_grad()
    def _deterministic_weights(self) -> Tensor:
        if not self.use_gates:
            return torch.exp(self.log_weight)
        return torch.exp(self.log_weight) * deterministic_gates(self.log_alpha, **self._gate_kw())

    # ------------------------------------------------------------- fit
    def fit(
        self,
        M: Any,
        y: Any,
        lambda_l0: float = 0.01,
        lambda_l2: float = 0.0,
        lr: float = 0.01,
        epochs: int = 1000,
        loss_type: str | Callable[[Tensor, Tensor], Tensor] = "mse",
        verbose: bool = False,
        verbose_freq: int = 100,
        target_groups: Sequence[Hashable] | np.ndarray | None = None,
        normalize_groups: bool = True,
        group_multipliers: Mapping[Hashable, float] | None = None,
        *,
        target_count: int | float | None = None,
        refit_epochs: int | None = None,
        count_lr: float = 0.5,
        count_warmup: float = 0.5,
        beta_schedule: str | Callable[[float, float, float], float] | None = None,
        final_beta: float | None = None,
        schedule_epochs: int | None = None,
        callbacks: Sequence[Callable[[dict], Any]] | None = None,
        log_freq: int | None = None,
        progress: bool | None = None,
        target_names: Sequence[str] | None = None,
        design_weights: Any = None,
        lambda_distance: float = 0.0,
        distance: str = "chi2",
        lambda_dispersion: float = 0.0,
        max_weight_ratio: Any = None,
        lambda_ratio: float = 1.0,
        polish: bool = False,
        num_threads: int | None = None,
    ) -> SparseCalibrationWeights:
        """Fit the weights by Adam on the calibration loss plus the L0 (and L2) penalty.

        A second call continues where the first stopped (same optimiser
        state, no second jitter); :meth:`state_dict` holds everything needed
        to resume bit-identically on CPU.

        Parameters
        ----------
        M : matrix or path
            ``(n_targets, n_features)``: scipy.sparse (any format), torch
            sparse or dense, numpy, an :class:`l0_core.SparseOperator`, or a
            pandas DataFrame of households x targets (microcalibrate's layout).
            Not modified. Or a path to an ``.npz`` / ``.npy`` / ``.parquet`` /
            ``.csv`` file (:func:`l0_calibrate.load_columns`); a sharded model
            reads only its own columns of the file, which holds all of them.
        y : array-like or pandas.Series
            Targets, one per row of ``M`` (a Series is aligned by name to a
            DataFrame's columns).
        lambda_l0 : float, default 0.01
            Weight of the expected number of non-zero weights.
        lambda_l2 : float, default 0.0
            Weight of ``sum exp(log_weight)^2``.
        lr : float, default 0.01
            Adam learning rate (a new value on a later call updates it).
        epochs : int, default 1000
            Epochs to run in this call.
        loss_type : str or callable, default "mse"
            ``"mse"``, ``"relative"``, ``"capped_relative"``,
            ``"microcalibrate"``, a name registered by a plugin, or a function
            ``(estimate, target) -> per-target loss``. Unknown names raise.
        verbose : bool, default False
            Log progress at INFO level every ``verbose_freq`` epochs (shown on
            stderr when logging is not configured) with a tqdm bar.
        verbose_freq : int, default 100
            Logging step, in epochs.
        target_groups : array-like, optional
            Group label per target; with ``normalize_groups`` each group
            counts equally in the loss.
        normalize_groups : bool, default True
            Weight each target by one over its group's size.
        group_multipliers : dict, optional
            Loss multiplier per group label (needs ``target_groups``).
        target_count : int or float, optional
            End with exactly this many non-zero weights (an int) or this
            fraction of ``n_features`` (a float in (0, 1]). A Lagrangian
            controller (:class:`l0_core.TargetSparsityController`) steers the
            expected count during training; then the ``target_count``
            households with the largest ``log_alpha`` are kept (gate fully
            open, weight unchanged), the others closed, and the kept weights
            re-fitted for ``refit_epochs`` epochs with the gates fixed.
        refit_epochs : int, optional
            Epochs of that re-fit (default 200; not counted in ``epochs``).
        count_lr : float, default 0.5
            Step size of the controller's multipliers, in units of the data
            gradient's mean size at the controller's first epoch (so the
            default suits any loss scale).
        count_warmup : float, default 0.5
            Fraction of ``epochs`` over which the controller's target moves
            geometrically from the current expected count down to
            ``target_count`` (then stays there).
        beta_schedule : str or callable, optional
            Temperature schedule by registered name (``"linear"``,
            ``"exponential"``, ``"cosine"``, ``"constant"``, plugins) or a
            function ``(progress, initial, final) -> beta``; runs from the
            current ``beta`` to ``final_beta`` over ``schedule_epochs``
            (default: this call's ``epochs``), continued by later calls.
        final_beta : float, optional
            Temperature at the end of the schedule (required with a schedule).
        schedule_epochs : int, optional
            Length of the schedule in epochs, across calls.
        callbacks : list of callables, optional
            Each is called as ``cb(event)`` at every logging step; returning
            True stops the fit. The plugin hook ``l0_calibration_log`` sees
            the same events. See :mod:`l0_calibrate.callbacks`.
        log_freq : int, optional
            Logging step in epochs (default ``verbose_freq``).
        progress : bool, optional
            tqdm progress bar; default: shown when ``verbose`` and stderr is a
            terminal.
        target_names : list of str, optional
            Names of the targets, used in warnings and events.
        design_weights : array-like, optional
            Reference weights for the distance, dispersion and ratio terms
            (default: the initial weights).
        lambda_distance : float, default 0.0
            Weight of the calibration distance of the kept weights from the
            reference weights (:func:`l0_calibrate.regularizers.calibration_distance`).
        distance : {"chi2", "raking"}, default "chi2"
            That distance, also used by the polishing stage.
        lambda_dispersion : float, default 0.0
            Weight of the squared coefficient of variation of the kept
            weights relative to the reference (design effect minus 1).
        max_weight_ratio : float or (lo, hi), optional
            Bounds on kept weight / reference weight: a soft penalty
            (weight ``lambda_ratio``) in training, exact in polishing.
        lambda_ratio : float, default 1.0
            Weight of that penalty.
        polish : bool, default False
            Re-solve the kept households' weights exactly on the targets at
            the end (:func:`l0_calibrate.polish.polish_weights`) instead of
            the Adam re-fit. Sharded, the kept columns are gathered to every
            rank, the same solve runs on each, and ``polish_result_.weights``
            holds this rank's columns.
        num_threads : int, optional
            CPU threads for this fit (restored afterwards). Default: one thread
            when non-zeros plus households are under two million (threading
            costs more than it saves there), else torch's setting.

        Returns
        -------
        SparseCalibrationWeights
            ``self``.

        Examples
        --------
        >>> M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
        >>> model = SparseCalibrationWeights(4, init_keep_prob=0.9, seed=1)
        >>> _ = model.fit(M, [4.0, 10.0], epochs=300, lr=0.05, loss_type="relative", target_count=2)
        >>> model.get_active_weights()["count"]
        2
        """
        from .fitting import run_fit

        if isinstance(M, (str, os.PathLike)):
            from .distributed_io import load_columns
            from .distributed_reducer import ColumnShard

            M = load_columns(M, ColumnShard(self.n_features, 0, self.n_features))
        return run_fit(
            self,
            M,
            y,
            lambda_l0=lambda_l0,
            lambda_l2=lambda_l2,
            lr=lr,
            epochs=epochs,
            loss_type=loss_type,
            verbose=verbose,
            verbose_freq=verbose_freq,
            target_groups=target_groups,
            normalize_groups=normalize_groups,
            group_multipliers=group_multipliers,
            target_count=target_count,
            refit_epochs=refit_epochs,
            count_lr=count_lr,
            count_warmup=count_warmup,
            beta_schedule=beta_schedule,
            final_beta=final_beta,
            schedule_epochs=schedule_epochs,
            callbacks=callbacks,
            log_freq=log_freq,
            progress=progress,
            target_names=target_names,
            design_weights=design_weights,
            lambda_distance=lambda_distance,
            distance=distance,
            lambda_dispersion=lambda_dispersion,
            max_weight_ratio=max_weight_ratio,
            lambda_ratio=lambda_ratio,
            polish=polish,
            num_threads=num_threads,
        )

    def reset_optimizer(self) -> None:
        """Forget the optimiser state so the next ``fit`` starts Adam afresh (0.6.2 behaviour).

        Examples
        --------
        >>> SparseCalibrationWeights(2).reset_optimizer()
        """
        self._optimizer = None

    @property
    def epochs_trained(self) -> int:
        """Training epochs run so far, over all ``fit`` calls (restored by ``load_state_dict``)."""
        return self._epoch

    # ----------------------------------------------------------- state
    def get_extra_state(self) -> Tensor:
        """Optimiser, random generator and schedule state, saved inside ``state_dict()``.

        The state is serialised into a ``uint8`` tensor (``torch.save`` of a
        dict that ``torch.load(weights_only=True)`` reads back), so a
        ``state_dict()`` holds tensors only: ``{k: v.cpu() for k, v in sd.items()}``
        works and the file loads with ``weights_only=True``.
        """
        return pack_fit_state(self._fit_state())

    def _fit_state(self) -> dict[str, Any]:
        ctl = self._controller
        return {
            "format": _STATE_FORMAT,
            "epoch": self._epoch,
            "jittered": self._jittered,
            "beta": self.beta,
            "generator": self._generator.get_state(),
            "optimizer": None if self._optimizer is None else self._optimizer.state_dict(),
            "schedule": None if self._schedule is None else dict(self._schedule),
            "controller": None
            if ctl is None
            else {
                "lr": ctl.lr,
                "lambda1": ctl.lambda1.clone(),
                "lambda2": ctl.lambda2.clone(),
                "schedule": dict(self._count_schedule),
            },
            "history": [dict(h) for h in self.history_],
        }

    def set_extra_state(self, state: Tensor | dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        state = unpack_fit_state(state)
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError("the state_dict's fit state was not written by this version of l0-calibrate")
        self._epoch = int(state["epoch"])
        self._jittered = bool(state["jittered"])
        self.beta = float(state["beta"])
        self._generator.set_state(state["generator"].cpu() if state["generator"].is_cuda else state["generator"])
        self._optimizer = None
        self._pending_optimizer_state = state["optimizer"]
        self._schedule = None if state["schedule"] is None else dict(state["schedule"])
        self._set_controller(None)
        self._pending_controller_state = state["controller"]
        self._count_schedule = None if state["controller"] is None else dict(state["controller"]["schedule"])
        self.history_ = [dict(h) for h in state.get("history", [])]

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "_extra_state"
        had_extra = key in state_dict
        _refuse_non_finite(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not had_extra:
            # A plain {log_weight, log_alpha} dict (e.g. from l0-python 0.6.2): load the
            # parameters and start the optimiser afresh.
            if key in missing_keys:
                missing_keys.remove(key)
            self._optimizer = None
            self._pending_optimizer_state = None

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}, "
            f"use_gates={self.use_gates}, epochs_trained={self._epoch}"
        )


def _constructor_signature() -> inspect.Signature:
    # ``__new__`` takes ``(*args, **kwargs)`` so that it can pick the sharded class inside a
    # process group; without this, ``inspect.signature`` and ``help()`` would show that
    # instead of the constructor's keywords.
    init = inspect.signature(SparseCalibrationWeights.__init__)
    params = list(init.parameters.values())[1:]
    return init.replace(parameters=params, return_annotation=inspect.Signature.empty)


SparseCalibrationWeights.__signature__ = _constructor_signature()  # type: ignore[attr-defined]
