"""``SparseL0Linear``: L0-regularised linear regression on sparse inputs."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from l0_core import (
    HardConcrete,
    SparseOperator,
    deterministic_gates,
    get_gate_class,
    make_gate,
    prob_active_for_init_mean,
    sparse_matvec,
)
from l0_core.checks import (
    check_device,
    check_float,
    check_int,
    check_probability,
    check_temperature,
    renamed_keywords,
)
from l0_core.precision import accumulate_sum
from torch import Tensor, nn

from ._checks import check_factory

__all__ = ["SparseL0Linear"]

logger = logging.getLogger(__name__)


class SparseL0Linear(nn.Module):
    """Linear regression ``y = X (w * z) + b`` with an L0 gate ``z`` per feature, for sparse ``X``.

    ``X`` may be a scipy.sparse matrix or array (any format), a torch sparse
    tensor (COO, CSR or CSC), a dense tensor or array, or an
    :class:`l0_core.SparseOperator`. Every call converts the matrix it is
    given (nothing is cached between calls), so a new matrix always gets its
    own prediction; pass a :class:`~l0_core.SparseOperator` to reuse a
    conversion. Products run on l0-core's sparse kernels, never densifying ``X``.

    Parameters
    ----------
    n_features : int
        Columns of ``X``.
    fit_intercept : bool, default True
        Learn the intercept ``b`` (not gated).
    gate : str or type, default "hard_concrete"
        Any registered gate type.
    temperature : float, default 2/3
        Gate temperature.
    init_prob_active : float, default 0.5
        Initial probability that a gate is non-zero.
    init_keep_prob : float, optional
        Deprecated: l0-python 0.6's keyword, with 0.6's meaning (and that of
        ``l0_calibrate.SparseCalibrationWeights``): the initial logit mean,
        ``log_alpha = logit(init_keep_prob)``. Translated to the equivalent
        ``init_prob_active`` with a ``DeprecationWarning``; passing both is a
        ``TypeError``.
    device : str or torch.device, default "cpu"
        Where the parameters and the matrix products live.
    dtype : torch.dtype, default torch.float32
        Dtype of parameters and of the converted matrices.
    seed : int, optional
        Seed of a private generator for the initialisation and every gate
        sample; ``fit`` re-seeds it, so two fits give bit-identical results
        on CPU.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.random(200, 4, density=0.5, format="csr", random_state=0)
    >>> y = X @ np.array([1.0, 0.0, -2.0, 0.0])
    >>> model = SparseL0Linear(4, fit_intercept=False, seed=0)
    >>> model.fit(X, y, lambda_l0=0.01, lr=0.05, epochs=300).predict(X).shape
    torch.Size([200])
    """

    def __init__(
        self,
        n_features: int,
        fit_intercept: bool = True,
        *,
        gate: str | type = "hard_concrete",
        temperature: float = 2.0 / 3.0,
        init_prob_active: float | None = None,
        init_keep_prob: float | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.n_features = check_int(
            n_features, "n_features", min_val=1, hint="e.g. SparseL0Linear(100)"
        )
        if not isinstance(fit_intercept, bool):
            raise TypeError(f"fit_intercept must be True or False, got {fit_intercept!r}")
        self.fit_intercept = fit_intercept
        temperature = check_temperature(temperature, hint="use e.g. 2/3")
        if init_prob_active is not None and init_keep_prob is not None:
            raise TypeError(
                "SparseL0Linear() got both init_prob_active and init_keep_prob; pass only "
                "init_prob_active (the probability that a gate starts open). init_keep_prob is "
                "deprecated: it is l0-python 0.6's logit mean, log_alpha = logit(init_keep_prob)"
            )
        self.init_prob_active = check_probability(
            0.5 if init_prob_active is None else init_prob_active,
            "init_prob_active",
            hint="e.g. 0.5",
        )
        if init_keep_prob is not None:
            keep = check_probability(init_keep_prob, "init_keep_prob", hint="e.g. 0.5")
            # 0.6's meaning: logits = logit(keep), so P(open) = sigmoid(logit - beta*log(-g/z)).
            self.init_prob_active = prob_active_for_init_mean(keep, temperature)
            warnings.warn(
                "SparseL0Linear(init_keep_prob=...) is deprecated: it is l0-python 0.6's logit "
                f"mean; pass init_prob_active={self.init_prob_active:.6g} (the probability that "
                "a gate starts open) instead",
                DeprecationWarning,
                stacklevel=2,
            )
        if seed is not None:
            check_int(seed, "seed", min_val=0, hint="e.g. seed=0")
        self.seed = seed
        device = check_device(device) or torch.device("cpu")
        self._generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        check_factory(device, dtype, self._generator)
        cls = get_gate_class(gate)
        kwargs: dict[str, Any] = {"init_std": 0.01} if issubclass(cls, HardConcrete) else {}
        self.gates = make_gate(
            cls,
            n_features,
            temperature=temperature,
            init_prob_active=self.init_prob_active,
            device=device,
            dtype=dtype,
            generator=self._generator,
            **kwargs,
        )
        self.weight = nn.Parameter(torch.zeros(n_features, device=device, dtype=dtype))
        if fit_intercept:
            self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    # ---------------------------------------------------------------- input
    def _operator(self, X: Any, argument: str = "X") -> SparseOperator:
        op = SparseOperator.from_any(
            X, dtype=self.weight.dtype, device=self.weight.device, argument=argument
        )
        if op.shape[1] != self.n_features:
            raise ValueError(
                f"{argument} has {op.shape[1]} columns but the model has n_features="
                f"{self.n_features}; pass a matrix of shape (n_samples, {self.n_features})"
            )
        return op

    def _target(self, y: Any, n_rows: int) -> Tensor:
        if isinstance(y, Tensor):
            t = y.detach()
        else:
            arr = np.asarray(y)
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                raise TypeError(f"y must be numeric, got dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t.to(device=self.weight.device, dtype=self.weight.dtype).reshape(-1)
        if t.numel() != n_rows:
            raise ValueError(f"y has {t.numel()} values but X has {n_rows} rows; they must match")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("y contains NaN or infinite values; remove or impute them first")
        return t

    # -------------------------------------------------------------- forward
    def forward(self, X: Any, deterministic: bool | None = None) -> Tensor:
        """Predictions ``X (w * z) + b`` (differentiable in the parameters).

        Parameters
        ----------
        X : sparse or dense matrix, or SparseOperator
            Shape ``(n_samples, n_features)``.
        deterministic : bool, optional
            Use the eval-mode gates; default: ``not self.training``.

        Examples
        --------
        >>> SparseL0Linear(3)(torch.eye(3).to_sparse()).shape
        torch.Size([3])
        """
        op = self._operator(X)
        if deterministic is None:
            deterministic = not self.training
        if deterministic:
            z = deterministic_gates(self.gates).to(self.weight.dtype)
        else:
            sample = getattr(self.gates, "sample", None)
            z = sample() if callable(sample) else self.gates()
        out = sparse_matvec(op, self.weight * z)
        return out + self.bias if self.bias is not None else out

    @renamed_keywords(lambda_reg="lambda_l0")
    def fit(
        self,
        X: Any,
        y: Any,
        lambda_l0: float = 0.01,
        lr: float = 0.01,
        epochs: int = 1000,
        verbose: bool = False,
        verbose_freq: int = 100,
        *,
        gate_lr: float | None = None,
    ) -> SparseL0Linear:
        """Fit by full-batch Adam on ``mean((y - X (w * z) - b)^2) + lambda_l0 * E[L0]``.

        Weights restart from zero, the intercept from ``mean(y)`` and the gates
        from ``init_prob_active`` (re-seeded when ``seed`` was given).

        Parameters
        ----------
        X : sparse or dense matrix, or SparseOperator
            Shape ``(n_samples, n_features)``; converted once for the fit.
        y : array-like or Tensor
            ``n_samples`` targets.
        lambda_l0 : float, default 0.01
            Strength of the expected-L0 penalty (``lambda_reg``, its
            deprecated spelling, warns; passing both raises ``TypeError``).
        lr : float, default 0.01
            Learning rate of the weights and intercept.
        epochs : int, default 1000
            Optimisation steps.
        verbose : bool, default False
            Log progress (``logging`` at INFO) every ``verbose_freq`` epochs.
        verbose_freq : int, default 100
            Logging period.
        gate_lr : float, optional
            Learning rate of the gate parameters (default: ``lr``).

        Returns
        -------
        SparseL0Linear
            ``self``.

        Examples
        --------
        >>> X = torch.eye(4)
        >>> SparseL0Linear(4, seed=0).fit(X, torch.ones(4), epochs=5).n_features
        4
        """
        lambda_l0 = check_float(lambda_l0, "lambda_l0", min_val=0.0, hint="e.g. lambda_l0=0.01")
        lr = check_float(lr, "lr", min_val=0.0, include_boundaries="neither", hint="e.g. lr=0.01")
        gate_lr = (
            lr
            if gate_lr is None
            else check_float(
                gate_lr, "gate_lr", min_val=0.0, include_boundaries="neither", hint="e.g. 0.05"
            )
        )
        check_int(epochs, "epochs", min_val=1, hint="e.g. epochs=1000")
        check_int(verbose_freq, "verbose_freq", min_val=1, hint="e.g. verbose_freq=100")
        op = self._operator(X)
        target = self._target(y, op.shape[0])
        self._reset(target)
        groups: list[dict[str, Any]] = [
            {"params": [self.weight], "lr": lr},
            {"params": self.gates.parameters(), "lr": gate_lr},
        ]
        if self.bias is not None:
            groups[0]["params"].append(self.bias)
        optimizer = torch.optim.Adam(groups)
        self.train()
        for epoch in range(epochs):
            optimizer.zero_grad()
            pred = self.forward(op, deterministic=False)
            mse = (target - pred).square().mean()
            l0 = self.gates.l0_penalty()
            loss = mse + lambda_l0 * l0
            loss.backward()
            optimizer.step()
            if verbose and (epoch + 1) % verbose_freq == 0:
                logger.info(
                    "epoch %d: loss=%.6g mse=%.6g l0=%.3f active=%d",
                    epoch + 1, loss.item(), mse.item(), l0.item(), self.num_active(),
                )  # fmt: skip
        self.eval()
        return self

    def _reset(self, target: Tensor) -> None:
        if self._generator is not None and self.seed is not None:
            self._generator.manual_seed(self.seed)
        reset = getattr(self.gates, "reset_parameters", None)
        if callable(reset):
            reset()
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.fill_(float(target.mean()))

    @torch.no_grad()
    def predict(self, X: Any) -> Tensor:
        """Predictions with the eval-mode gates (no grad).

        Examples
        --------
        >>> import scipy.sparse as sp
        >>> SparseL0Linear(2, fit_intercept=False).predict(sp.csr_array(np.eye(2))).tolist()
        [0.0, 0.0]
        """
        return self.forward(X, deterministic=True).detach()

    # ------------------------------------------------------------- results
    @torch.no_grad()
    def get_coefficients(self, threshold: float = 0.0) -> Tensor:
        """Effective coefficients ``w * z`` with the eval-mode gates; removed features are exactly 0.

        Parameters
        ----------
        threshold : float, default 0.0
            Coefficients whose gate is ``<= threshold`` are set to 0.

        Examples
        --------
        >>> SparseL0Linear(3).get_coefficients().tolist()
        [0.0, 0.0, 0.0]
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number in [0, 1), got {threshold!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
        z = deterministic_gates(self.gates).to(self.weight.dtype)
        coef = self.weight.detach() * z
        return torch.where(z > threshold, coef, torch.zeros_like(coef))

    @property
    def intercept(self) -> float:
        """The fitted intercept (0.0 without ``fit_intercept``)."""
        return 0.0 if self.bias is None else float(self.bias.detach().item())

    def get_selected_features(self, threshold: float = 0.0) -> Tensor:
        """Indices of the features whose eval-mode gate is above ``threshold``.

        Examples
        --------
        >>> SparseL0Linear(3, init_prob_active=0.9).get_selected_features().tolist()
        [0, 1, 2]
        """
        z = deterministic_gates(self.gates)
        return torch.nonzero(z > threshold).flatten()

    def num_active(self) -> int:
        """Number of features whose eval-mode gate is non-zero.

        Examples
        --------
        >>> SparseL0Linear(3, init_prob_active=0.9).num_active()
        3
        """
        return int((deterministic_gates(self.gates) > 0).sum().item())

    def get_sparsity(self) -> float:
        """Fraction of features removed by the eval-mode gates.

        Examples
        --------
        >>> SparseL0Linear(4, init_prob_active=0.9).get_sparsity()
        0.0
        """
        return 1.0 - self.num_active() / self.n_features

    # --------------------------------------------------------- GatedLayer
    def l0_penalty(self) -> Tensor:
        """Expected number of non-zero coefficients.

        Examples
        --------
        >>> round(SparseL0Linear(4, init_prob_active=0.5).l0_penalty().item(), 1)
        2.0
        """
        return self.gates.l0_penalty()

    def get_l0_penalty(self) -> Tensor:
        """Alias of :meth:`l0_penalty` (the l0-python 0.6 name).

        Examples
        --------
        >>> SparseL0Linear(2).get_l0_penalty().ndim
        0
        """
        return self.l0_penalty()

    def l2_penalty(self) -> Tensor:
        """``sum_j P(z_j != 0) * w_j^2`` (the intercept is not penalised).

        Examples
        --------
        >>> SparseL0Linear(2).l2_penalty().item()
        0.0
        """
        return accumulate_sum(self.weight.square() * self.gates.prob_active())

    def parameter_count(self) -> int:
        """Coefficients plus intercept (gate logits excluded).

        Examples
        --------
        >>> SparseL0Linear(5).parameter_count()
        6
        """
        return self.n_features + (1 if self.bias is not None else 0)

    def active_parameter_count(self) -> int:
        """Non-removed coefficients plus intercept.

        Examples
        --------
        >>> SparseL0Linear(5, fit_intercept=False, init_prob_active=0.9).active_parameter_count()
        5
        """
        return self.num_active() + (1 if self.bias is not None else 0)

    def prune_(self, threshold: float | None = None) -> int:
        """Zero, in place, the coefficients of removed features (see :func:`l0_nn.prune_model`).

        Examples
        --------
        >>> SparseL0Linear(3, init_prob_active=0.9).prune_()
        0
        """
        with torch.no_grad():
            if threshold is None:
                removed = deterministic_gates(self.gates) == 0
            else:
                removed = self.gates.prob_active() <= float(threshold)
            self.weight.masked_fill_(removed, 0.0)
        return int(removed.sum().item())

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, fit_intercept={self.fit_intercept}"
