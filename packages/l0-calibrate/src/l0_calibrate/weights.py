"""SparseCalibrationWeights: the published l0-python API, on the fast engine.

The weights are ``w = exp(log_weight) * z`` with ``z`` a Hard Concrete gate
per household; ``fit`` minimises a calibration loss on ``M @ w`` plus
``lambda_l0`` times the expected number of non-zero weights. Arguments,
defaults and results follow l0-python 0.6.2's
``l0.calibration.SparseCalibrationWeights``; the differences (all bug fixes
or additions) are listed in the package README.

One class serves one process and a column-sharded process group: the
constructor resolves a *reducer* once (:func:`~l0_calibrate.distributed_reducer.model_reducer`),
and the model's sums, random draws and checkpoint layout go through it.
The training state between ``fit`` calls is one
:class:`~l0_calibrate.fit_state.FitState`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from l0_core import (
    GAMMA,
    ZETA,
    SparseOperator,
    fused_median_gates,
    hard_concrete_from_uniform,
    hard_concrete_median,
    hard_concrete_prob_active,
    sparse_matvec,
)
from l0_core.checks import check_device, check_float, check_int
from torch import Tensor, nn

from .distributed_reducer import LocalReducer, model_reducer
from .fit_state import FitState, pack_fit_state, unpack_fit_state
from .inputs import as_matrix, check_model_dtype
from .weights_fit import TrainableWeights

__all__ = ["SparseCalibrationWeights", "pack_fit_state", "unpack_fit_state"]


def _per_household(
    value: Any, n: int, argument: str, device: torch.device, dtype: torch.dtype
) -> Tensor:
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


class SparseCalibrationWeights(TrainableWeights):
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
        the layout (``shard``) is every rank's count in rank order, and
        ``fit``, ``forward``, ``predict`` and ``get_sparsity`` become
        collective (see :class:`~l0_calibrate.ShardedCalibrationWeights` and
        ``docs/distributed.md``). The choice is made once, here: the model's
        ``reducer`` then decides how gates are drawn and sums are taken. With
        the same ``seed`` the sharded fit gives the single-process weights.

    Attributes
    ----------
    log_weight, log_alpha : torch.nn.Parameter
        Log weights and gate locations (this rank's columns when sharded).
    n_total : int
        Household columns over all ranks (``n_features`` in one process).
    shard : ColumnShard
        This process's columns ``[start, stop)`` of ``n_total``.
    reducer : LocalReducer or ProcessGroupReducer
        What the model's sums and random draws go through.
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
    initial_weights: Tensor

    def __init__(
        self,
        n_features: int,
        beta: float = 2 / 3,
        gamma: float = GAMMA,
        zeta: float = ZETA,
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
        n_features = check_int(n_features, "n_features", min_val=1)
        self._setup(
            self._resolve_reducer(n_features, distributed, device),
            beta,
            gamma,
            zeta,
            init_keep_prob,
            init_weights,
            log_weight_jitter_sd,
            log_alpha_jitter_sd,
            device,
            use_gates,
            seed,
            dtype,
        )

    def _resolve_reducer(
        self, n_features: int, distributed: bool | None, device: str | torch.device
    ) -> LocalReducer:
        """The reducer this model runs over, resolved once in ``__init__`` (subclasses choose another layout)."""
        return model_reducer(n_features, distributed=distributed, device=device)

    def _setup(
        self,
        reducer: LocalReducer,
        beta: float,
        gamma: float,
        zeta: float,
        init_keep_prob: Any,
        init_weights: Any,
        log_weight_jitter_sd: float,
        log_alpha_jitter_sd: float,
        device: str | torch.device,
        use_gates: bool,
        seed: int | None,
        dtype: torch.dtype,
    ) -> None:
        """Build the parameters of ``reducer.shard``'s columns (the constructors' common part)."""
        nn.Module.__init__(self)
        beta = check_float(beta, "beta", min_val=0.0, include_boundaries="right")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma < 0):
            raise ValueError(f"gamma must be a negative number (e.g. -0.1), got {gamma!r}")
        if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 1):
            raise ValueError(f"zeta must be a number > 1 (e.g. 1.1), got {zeta!r}")
        log_weight_jitter_sd = check_float(
            log_weight_jitter_sd, "log_weight_jitter_sd", min_val=0.0
        )
        log_alpha_jitter_sd = check_float(log_alpha_jitter_sd, "log_alpha_jitter_sd", min_val=0.0)
        check_model_dtype(dtype)
        device = torch.device(check_device(device) or "cpu")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        shard = reducer.shard
        n_local = shard.n_local
        self._reducer = reducer
        self.shard = shard
        self.n_total = shard.n_total
        self.n_features = n_local
        self.beta = beta
        self.gamma = float(gamma)
        self.zeta = float(zeta)
        self.log_weight_jitter_sd = log_weight_jitter_sd
        self.log_alpha_jitter_sd = log_alpha_jitter_sd
        self.device = device
        self.use_gates = bool(use_gates)
        self.seed = seed
        self.dtype = dtype

        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(reducer.model_seed(seed))

        init_weights = reducer.local_part(init_weights, "init_weights")
        if init_weights is None:
            weights = torch.ones(n_local, device=self.device, dtype=dtype)
        else:
            weights = _per_household(init_weights, n_local, "init_weights", self.device, dtype)
            if bool((weights < 0).any()):
                n_neg = int((weights < 0).sum().item())
                raise ValueError(
                    f"init_weights must be non-negative; {n_neg} value(s) are negative "
                    "(weights are exp(log_weight) * gate and cannot be negative)"
                )
        self.register_buffer("initial_weights", weights.clone(), persistent=False)
        self.log_weight = nn.Parameter(torch.log(weights + 1e-8))

        init_keep_prob = reducer.local_part(init_keep_prob, "init_keep_prob")
        keep = _per_household(init_keep_prob, n_local, "init_keep_prob", self.device, dtype)
        if bool(((keep < 0) | (keep > 1)).any()):
            raise ValueError(
                "init_keep_prob must lie in [0, 1] (a probability), got values outside it"
            )
        keep = keep.clamp(1e-6, 1 - 1e-6)
        mu = torch.log(keep / (1 - keep))
        if log_alpha_jitter_sd > 0:
            # sharded: this rank's slice of the single-process draw of all columns
            noise = reducer.normal_noise(
                n_local, generator=self._generator, device=self.device, dtype=dtype
            )
            mu = mu + noise * log_alpha_jitter_sd
        self.log_alpha = nn.Parameter(mu)

        self._fit_state = FitState()  # saved by state_dict through get_extra_state
        self.infeasible_targets_: list[str] = []
        self.polish_result_: Any = None

    @property
    def reducer(self) -> LocalReducer:
        """What this model's sums and random draws go through (resolved once, in the constructor).

        A :class:`~l0_calibrate.distributed_reducer.LocalReducer` in one
        process; sharded, a :class:`~l0_calibrate.distributed_reducer.ProcessGroupReducer`
        (its ``bytes_reduced`` counts the traffic).

        Examples
        --------
        >>> type(SparseCalibrationWeights(3).reducer).__name__
        'LocalReducer'
        """
        return self._reducer

    # ------------------------------------------------------------ gates
    def _gate_kw(self) -> dict[str, float]:
        return {
            "temperature": self.beta,
            "gamma": self.gamma,
            "zeta": self.zeta,
            "bound": self.LOG_ALPHA_BOUND,
        }

    def _sample_gates(self) -> Tensor:
        """A differentiable Hard Concrete sample of every gate (uses the model's generator).

        Sharded with ``noise="global"``: this rank's slice of the single-process sample.
        """
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        u = self._reducer.uniform_noise(
            self.n_features,
            generator=self._generator,
            device=log_alpha.device,
            dtype=log_alpha.dtype,
        )
        return hard_concrete_from_uniform(u, log_alpha, self.beta, self.gamma, self.zeta)

    def get_deterministic_gates(self) -> Tensor:
        """Test-time gate values (0 exactly where ``P(gate != 0) <= 1/2``); differentiable.

        Examples
        --------
        >>> SparseCalibrationWeights(3, init_keep_prob=0.999, seed=0).get_deterministic_gates().tolist()
        [1.0, 1.0, 1.0]
        """
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        return hard_concrete_median(log_alpha, self.beta, self.gamma, self.zeta)

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

        Sharded, ``M`` holds this rank's columns and the partial products are
        summed over the ranks (a collective call).

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
        partial = sparse_matvec(self._operator(M), self.get_weights(deterministic=deterministic))
        return self._reducer.all_reduce_sum(partial)

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
        log_alpha = self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)
        return hard_concrete_prob_active(log_alpha, self.beta, self.gamma, self.zeta).sum()

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
        """Fraction of weights whose deterministic gate is exactly 0 (over all ranks: collective).

        Examples
        --------
        >>> SparseCalibrationWeights(4, init_keep_prob=0.999).get_sparsity()
        0.0
        """
        if not self.use_gates:
            return 0.0
        closed = self.get_deterministic_gates() == 0
        if not self._reducer.sharded:
            return float(closed.to(torch.float64).mean().item())
        zeros = self._reducer.reduce_op(closed.sum().reshape(1).to(torch.int64), "SUM")
        return float(zeros.item()) / self.n_total

    @torch.no_grad()
    def get_active_weights(self) -> dict[str, Any]:
        """Indices, values and count of the non-zero deterministic weights.

        Sharded: this rank's weights, with global column numbers as indices
        (not collective).

        Examples
        --------
        >>> out = SparseCalibrationWeights(3, init_keep_prob=0.999).get_active_weights()
        >>> out["count"], out["indices"].tolist()
        (3, [0, 1, 2])
        """
        weights = self.get_weights(deterministic=True)
        mask = weights > 0
        indices = torch.where(mask)[0]
        if self.shard.start:
            indices = indices + self.shard.start
        return {"indices": indices, "values": weights[mask], "count": int(mask.sum().item())}

    @torch.no_grad()
    def _deterministic_weights(self) -> Tensor:
        if not self.use_gates:
            return torch.exp(self.log_weight)
        return torch.exp(self.log_weight) * fused_median_gates(self.log_alpha, **self._gate_kw())
