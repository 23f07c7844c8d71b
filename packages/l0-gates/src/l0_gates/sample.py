"""``SampleGate``: learn a small, weighted subset of rows that represents the whole."""

from __future__ import annotations

import logging
from typing import Any

import torch
from l0_core import TargetSparsityController
from l0_core.checks import check_float, check_int
from torch import Tensor

from ._data import (
    as_index_output,
    as_table,
    take_rows,
    values_like,
)
from ._training import TrainConfig, exact_top_k, train_gate
from .base import L0Gate
from .moments import Moments, _check_moments, _weights_or_ones, moment_matrix, rake_weights

__all__ = ["SampleGate"]

logger = logging.getLogger("l0_gates")


class SampleGate(L0Gate):
    """Select exactly ``target_samples`` rows that, with learned weights, represent all rows.

    Fitting trains one gate per row so that the gated rows, expanded by the
    inverse of the sampling fraction, reproduce the full data's count,
    column totals, centred second moments and category shares (a balanced
    sample). l0-core's :class:`~l0_core.TargetSparsityController` drives the
    expected number of open gates to ``target_samples``; an exact top-k of the
    trained gate probabilities then fixes the count, and entropy raking
    (:func:`l0_gates.rake_weights`) gives the selected rows non-negative weights
    that reproduce those statistics.

    Parameters
    ----------
    n_samples : int
        Number of rows of the data.
    target_samples : int or float
        Rows to select: a count (``1..n_samples``) or a fraction in ``(0, 1]``.
    temperature : float, default 0.25
        Gate temperature.
    gate : str or type, default "hard_concrete"
        Registered gate type (plugins included).
    seed : int, optional
        Seed; equal seeds give bit-identical selections on CPU.
    device, dtype : optional
        Device and dtype of the gate; by default the device of tensor data
        (else CPU) and float32.

    Attributes
    ----------
    indices_ : Tensor
        Sorted indices of the selected rows (after fitting).
    weights_ : Tensor
        float64 weights of the selected rows, aligned with ``indices_``.
    fit_error_ : float
        Largest relative error of the weighted subset over all matched
        statistics.
    statistics_ : list of str
        Names of the matched statistics.
    history_ : list of dict
        Training loss and expected count, every tenth of the epochs.

    Examples
    --------
    >>> import torch
    >>> data = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)).exp()
    >>> gate = SampleGate(n_samples=500, target_samples=50, seed=0)
    >>> selected, indices = gate.select_samples(data)
    >>> selected.shape, len(indices)
    (torch.Size([50, 3]), 50)
    >>> bool((gate.weights_ @ selected.double() / data.double().sum(0) - 1).abs().max() < 1e-6)
    True
    """

    def __init__(
        self,
        n_samples: int,
        target_samples: int | float,
        temperature: float = 0.25,
        *,
        gate: str | type = "hard_concrete",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        n = check_int(
            n_samples,
            "n_samples",
            min_val=1,
            hint="pass e.g. SampleGate(n_samples=10000, target_samples=1000)",
        )
        k = TargetSparsityController.resolve_target(target_samples, n, argument="target_samples")
        super().__init__(
            n,
            temperature,
            init_prob_active=min(k / n, 0.999),
            gate=gate,
            seed=seed,
            device=device,
            dtype=dtype,
        )
        self.n_samples = n
        self.target_samples = k
        self.indices_: Tensor | None = None
        self.weights_: Tensor | None = None
        self.fit_error_: float | None = None
        self.statistics_: list[str] = []
        self.history_: list[dict[str, float]] = []
        self._fitted_base: Tensor | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.indices_ is not None

    def fit(
        self,
        data: Any,
        weights: Any = None,
        *,
        epochs: int = 600,
        lr: float = 0.1,
        controller_lr: float = 3.0,
        categorical: list | tuple | None = None,
        moments: Moments = "auto",
    ) -> SampleGate:
        """Learn which ``target_samples`` rows of ``data`` to keep, and their weights.

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(n_samples, ...)`` rows; trailing dimensions are flattened into
            columns. DataFrame columns of categorical, object, string or
            boolean dtype are matched as category shares.
        weights : array-like, optional
            Non-negative design weights of the rows (default 1 each): the
            subset then reproduces the weighted statistics.
        epochs : int, default 600
            Training steps.
        lr : float, default 0.1
            Adam step size of the gate parameters.
        controller_lr : float, default 3.0
            Step size of the target-sparsity controller.
        categorical : list, optional
            Further columns (positions for arrays, labels for DataFrames) to
            treat as categories.
        moments : {"auto", "full", "diagonal"}, default "auto"
            Which centred second moments to match (all cross moments up to
            20 numeric columns for ``"auto"``).

        Returns
        -------
        SampleGate
            ``self``, with ``indices_``, ``weights_`` and ``fit_error_`` set.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.lognormal(size=(300, 2))
        >>> gate = SampleGate(300, 30, seed=0).fit(x)
        >>> gate.indices_.shape, gate.fit_error_ < 1e-6
        (torch.Size([30]), True)
        """
        check_int(epochs, "epochs", min_val=1, hint="pass e.g. epochs=600")
        check_float(lr, "lr", min_val=0.0, include_boundaries="neither", hint="pass e.g. lr=0.1")
        check_float(
            controller_lr,
            "controller_lr",
            min_val=0.0,
            include_boundaries="neither",
            hint="pass e.g. controller_lr=3.0",
        )
        _check_moments(moments)
        device = self._fit_device(data)
        table = as_table(data, "data", categorical=categorical, device=device)
        if table.n_rows != self.n_samples:
            raise ValueError(
                f"data has {table.n_rows} rows but the gate was built for n_samples={self.n_samples}; "
                "build a SampleGate with n_samples=len(data)"
            )
        base = _weights_or_ones(weights, self.n_samples, "weights").to(table.numeric.device)
        targets = moment_matrix(table, base, moments)
        k, n = self.target_samples, self.n_samples
        self._rebuild(device, init_prob_active=min(max(0.5, k / n), 0.99))
        if k < n:
            dtype = self.gates.prob_active().dtype
            scaled = (targets.matrix / targets.scale).to(dtype)
            goal = (targets.totals / targets.scale).to(dtype)
            w0 = base.to(dtype)
            total_weight = w0.sum()

            def imbalance(z: Tensor) -> Tensor:
                wz = w0 * z
                expanded = wz * (total_weight / wz.sum().clamp_min(torch.finfo(dtype).tiny))
                resid = scaled.t() @ expanded - goal
                return resid.square().mean()

            def loss_fn(z: Tensor) -> Tensor:
                # Imbalance of the sampled subset (drives gates to 0/1) plus that of
                # the fractional design at prob_active, which gives every gate a
                # low-noise gradient, also while its samples are exactly 0.
                return imbalance(z) + imbalance(self.gates.prob_active())

            config = TrainConfig(epochs=epochs, lr=lr, controller_lr=controller_lr)
            self.history_ = train_gate(self.gates, loss_fn, k, config)
            indices = exact_top_k(self.gates, k)
        else:
            self.history_ = []
            indices = torch.arange(n, device=table.numeric.device)
        idx = indices.to(targets.matrix.device)
        start = base[idx] * (base.sum() / base[idx].sum().clamp_min(1e-300))
        w = rake_weights(targets.matrix[idx], targets.totals, start, targets.scale)
        resid = (targets.matrix[idx].t() @ w - targets.totals).abs() / targets.scale
        self.fit_error_ = float(resid.max())
        if self.fit_error_ > 1e-6:
            worst = targets.names[int(resid.argmax())]
            logger.warning(
                "SampleGate: the %d selected rows reproduce the statistics only up to a relative "
                "error of %.3g (worst: %s); increase target_samples or epochs",
                k,
                self.fit_error_,
                worst,
            )
        self.indices_ = indices
        self.selection_ = indices
        self.weights_ = w
        self.statistics_ = list(targets.names)
        self._fitted_base = base.cpu()
        self.eval()
        logger.info(
            "SampleGate: selected %d of %d rows, max relative error %.3g on %d statistics",
            k,
            n,
            self.fit_error_,
            len(targets.names),
        )
        return self

    def _check_rows(self, data: Any) -> None:
        n = data.shape[0] if hasattr(data, "shape") and len(data.shape) else None
        if n != self.n_samples:
            raise ValueError(
                f"data has {n} rows but the gate was built for n_samples={self.n_samples}; "
                "pass the data the gate selects from"
            )

    def select_samples(self, data: Any) -> tuple[Any, Any]:
        """Return the selected rows of ``data`` and their indices (fitting first if needed).

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(n_samples, ...)`` rows.

        Returns
        -------
        selected_data
            The selected rows, of the same kind as ``data``.
        indices
            Sorted row positions: a LongTensor for tensor data, else a numpy
            ``int64`` array.

        Examples
        --------
        >>> import numpy as np
        >>> x = np.random.default_rng(1).lognormal(size=(200, 2))
        >>> sel, idx = SampleGate(200, 20, seed=0).select_samples(x)
        >>> sel.shape, idx.dtype
        ((20, 2), dtype('int64'))
        """
        if not self.is_fitted:
            self.fit(data)
        else:
            self._check_rows(data)
        assert self.indices_ is not None  # set by fit()
        return take_rows(data, self.indices_), as_index_output(self.indices_, data)

    def select_weighted_samples(self, data: Any, weights: Any = None) -> tuple[Any, Any, Any]:
        """Return the selected rows, their calibrated weights and their indices.

        Fits first when the gate is not fitted or was fitted with other
        design ``weights``.

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(n_samples, ...)`` rows.
        weights : array-like, optional
            Design weights of all rows (default 1 each).

        Returns
        -------
        selected_data
            The selected rows, same kind as ``data``.
        selected_weights
            Their weights (a tensor, ndarray or pandas Series like ``data``):
            the weighted subset reproduces the weighted full-data statistics.
        indices
            Sorted row positions.

        Examples
        --------
        >>> import torch
        >>> x = torch.rand(200, 2, generator=torch.Generator().manual_seed(0))
        >>> sel, w, idx = SampleGate(200, 20, seed=0).select_weighted_samples(x, torch.rand(200))
        >>> bool((w > 0).all()), len(w)
        (True, 20)
        """
        base = _weights_or_ones(weights, self.n_samples, "weights")
        if (
            not self.is_fitted
            or self._fitted_base is None
            or not torch.equal(base, self._fitted_base)
        ):
            self.fit(data, weights)
        else:
            self._check_rows(data)
        assert self.indices_ is not None and self.weights_ is not None
        selected = take_rows(data, self.indices_)
        w = values_like(self.weights_, data, index=getattr(selected, "index", None), name="weight")
        return selected, w, as_index_output(self.indices_, data)

    def extra_repr(self) -> str:
        return (
            f"n_samples={self.n_samples}, target_samples={self.target_samples}, "
            + super().extra_repr()
        )
