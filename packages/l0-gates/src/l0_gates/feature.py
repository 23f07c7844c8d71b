"""``FeatureGate``: learn which columns to keep, with or without a target."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from l0_core.checks import check_float, check_int
from torch import Tensor, nn

from ._data import (
    _is_pandas,
    as_index_output,
    take_columns,
)
from ._sketch import column_sketch, reconstruction_error, redundancy_guarded_top_k
from ._supervised import (
    Model,
    PreparedTarget,
    Task,
    feature_matrix,
    make_model,
    prepare_target,
    task_loss,
)
from ._training import Adam, TrainConfig, exact_top_k, gate_ranking, train_gate
from .base import L0Gate

__all__ = ["FeatureGate"]

logger = logging.getLogger("l0_gates")


class FeatureGate(L0Gate):
    """Select at most ``max_features`` columns with learned L0 gates.

    Unsupervised (:meth:`select_features`, or :meth:`fit` without ``y``): the
    columns from which *all* columns are best reconstructed by least squares
    (column subset selection). The ridge-relaxed reconstruction error of the
    gated columns (for a gate sample, plus the same error at the gates'
    probabilities so that no gate is starved of gradient) is minimised on a
    rank-``r`` sketch of the data while l0-core's
    :class:`~l0_core.TargetSparsityController` brings the expected number of
    open gates down to ``max_features``. The selection is then exactly
    ``max_features`` columns taken in order of trained gate probability,
    where a column that the columns already taken reconstruct to within 1%
    of its energy (a near-duplicate) gives its place to the next one.

    Supervised (:meth:`fit` with ``y``): the columns that best predict ``y``
    (regression or classification) through an L0-gated linear model or small
    MLP; the model is then refitted on the selected columns
    (:meth:`predict`).

    Parameters
    ----------
    n_features : int
        Number of columns (the last dimension of the data).
    max_features : int
        Columns to keep; the selection has exactly ``min(max_features,
        n_features)`` columns.
    temperature : float, default 0.1
        Gate temperature.
    gate : str or type, default "hard_concrete"
        Registered gate type (plugins included).
    seed : int, optional
        Seed; equal seeds give bit-identical selections on CPU.
    device, dtype : optional
        Device and dtype of the gate (default: the device of tensor data,
        float32).

    Attributes
    ----------
    feature_indices_ : Tensor
        Sorted selected column indices (after fitting).
    reconstruction_error_ : float
        Unsupervised fits: ``||X - X_S B||^2 / ||X||^2`` of the centred data
        with the least-squares ``B``.
    task_ : str
        ``"unsupervised"``, ``"regression"`` or ``"classification"``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> base = torch.randn(200, 5, generator=g)
    >>> copies = base[:, :2].repeat(1, 5) + 0.01 * torch.randn(200, 10, generator=g)
    >>> data = torch.cat([copies, base], 1)  # columns 10..14 are the informative ones
    >>> gate = FeatureGate(n_features=15, max_features=5, seed=0)
    >>> selected, idx = gate.select_features(data)
    >>> selected.shape, gate.reconstruction_error_ < 1e-3
    (torch.Size([200, 5]), True)
    """

    def __init__(
        self,
        n_features: int,
        max_features: int,
        temperature: float = 0.1,
        *,
        gate: str | type = "hard_concrete",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        p = check_int(
            n_features,
            "n_features",
            min_val=1,
            hint="pass e.g. FeatureGate(n_features=1000, max_features=50)",
        )
        k = check_int(
            max_features,
            "max_features",
            min_val=1,
            hint="pass e.g. FeatureGate(n_features=1000, max_features=50)",
        )
        super().__init__(
            p,
            temperature,
            init_prob_active=min(k / p, 0.99),
            gate=gate,
            seed=seed,
            device=device,
            dtype=dtype,
        )
        self.n_features = p
        self.max_features = k
        self.feature_indices_: Tensor | None = None
        self.reconstruction_error_: float | None = None
        self.task_: str | None = None
        self.history_: list[dict[str, float]] = []
        self.model_: nn.Module | None = None
        self._x_mean: Tensor | None = None
        self._x_std: Tensor | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._classes: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.feature_indices_ is not None

    @property
    def n_selected(self) -> int:
        """Number of columns a fit selects: ``min(max_features, n_features)``."""
        return min(self.max_features, self.n_features)

    # -- fitting -------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        task: Task = "auto",
        model: Model = "linear",
        hidden: int = 32,
        epochs: int | None = None,
        lr: float = 0.1,
        controller_lr: float | None = None,
        center: bool = True,
        standardize: bool = False,
        rank: int | None = None,
    ) -> FeatureGate:
        """Learn which columns to keep.

        Parameters
        ----------
        X : Tensor, ndarray or DataFrame
            ``(n_samples, n_features)`` (or ``(..., n_features)``) numeric data.
        y : array-like, optional
            Target; ``None`` selects columns for reconstructing ``X``.
        task : {"auto", "regression", "classification"}, default "auto"
            Supervised task; ``"auto"`` is classification for integer, boolean
            or string ``y`` and regression for floating ``y``.
        model : {"linear", "mlp"}, default "linear"
            Supervised model behind the gates.
        hidden : int, default 32
            Hidden units of the MLP.
        epochs : int, optional
            Training steps (default 300 unsupervised, 500 with the linear
            model, 1000 with the MLP).
        lr : float, default 0.1
            Adam step size of the gates (the model uses ``lr / 5``).
        controller_lr : float, optional
            Step size of the target-sparsity controller (default 3.0
            unsupervised, 1.0 supervised).
        center : bool, default True
            Unsupervised: remove column means before measuring the
            reconstruction (an intercept is free).
        standardize : bool, default False
            Unsupervised: scale columns to unit variance first, so that every
            column counts equally in the reconstruction error.
        rank : int, optional
            Unsupervised: rank of the sketch the relaxed objective uses
            (default ``max(2 * max_features, max_features + 10)``).

        Returns
        -------
        FeatureGate
            ``self``, with ``feature_indices_`` set.

        Examples
        --------
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(300, 10, generator=g)
        >>> y = 3 * X[:, 2] - 2 * X[:, 7] + 0.1 * torch.randn(300, generator=g)
        >>> FeatureGate(10, 2, seed=0).fit(X, y).feature_indices_.tolist()
        [2, 7]
        """
        if task not in ("auto", "regression", "classification"):
            raise ValueError(f"task must be 'auto', 'regression' or 'classification', got {task!r}")
        if model not in ("linear", "mlp"):
            raise ValueError(f"model must be 'linear' or 'mlp', got {model!r}")
        check_int(hidden, "hidden", min_val=1, hint="pass e.g. hidden=32")
        if epochs is not None:
            check_int(epochs, "epochs", min_val=1, hint="pass e.g. epochs=300")
        check_float(lr, "lr", min_val=0.0, include_boundaries="neither", hint="pass e.g. lr=0.1")
        if controller_lr is not None:
            check_float(
                controller_lr,
                "controller_lr",
                min_val=0.0,
                include_boundaries="neither",
                hint="pass e.g. controller_lr=1.0",
            )
        if rank is not None:
            check_int(rank, "rank", min_val=1, hint="pass e.g. rank=100")
        device = self._fit_device(X)
        x = feature_matrix(X, self.n_features, "X", device)
        prepared = None if y is None else prepare_target(y, x.shape[0], task, x.device)
        self._rebuild(device, init_prob_active=0.5)
        if y is None:
            ctl = 3.0 if controller_lr is None else controller_lr
            self._fit_unsupervised(x, epochs or 300, lr, ctl, center, standardize, rank)
        else:
            assert prepared is not None  # y is given
            ctl = 1.0 if controller_lr is None else controller_lr
            default_epochs = 500 if model == "linear" else 1000
            self._fit_supervised(x, prepared, model, hidden, epochs or default_epochs, lr, ctl)
        self.eval()
        return self

    def _fit_unsupervised(
        self,
        x: Tensor,
        epochs: int,
        lr: float,
        controller_lr: float,
        center: bool,
        standardize: bool,
        rank: int | None,
    ) -> None:
        k = self.n_selected
        if center:
            x = x - x.mean(0)
        if standardize:
            std = x.std(0)
            x = x / torch.where(std > 0, std, torch.ones_like(std))
        if k < self.n_features:
            r = rank or max(2 * k, k + 10)
            sketch, sv = column_sketch(x, r, seed=self.seed)
            dtype = self.gates.prob_active().dtype
            sketch = sketch.to(dtype)
            sv = sv.to(dtype)
            energy = float((x.square().sum() / self.n_features).item())
            lam = 0.1 * energy
            total = float(sv.square().sum().clamp_min(1e-300))
            eye = torch.eye(sketch.shape[0], dtype=dtype, device=sketch.device)
            diag_sv = torch.diag(sv)

            def relaxed_error(z: Tensor) -> Tensor:
                gated = sketch * z
                kernel = gated @ gated.t() + lam * eye
                chol = torch.linalg.cholesky(kernel)
                solved = torch.cholesky_solve(diag_sv, chol)
                return lam**2 * solved.square().sum() / total

            def loss_fn(z: Tensor) -> Tensor:
                # The sampled term drives gates to 0/1; the mean-field term at
                # prob_active gives every gate a gradient, also when its samples
                # are all exactly 0, so a group of near-duplicate columns cannot
                # be switched off together and lost.
                return relaxed_error(z) + relaxed_error(self.gates.prob_active())

            config = TrainConfig(
                epochs=epochs, lr=lr, controller_lr=controller_lr, schedule_fraction=0.7
            )
            self.history_ = train_gate(self.gates, loss_fn, k, config)
            # Exact top-k in gate order; a near-duplicate of a column already
            # kept gives its place to the next gate (see redundancy_guarded_top_k).
            idx = redundancy_guarded_top_k(x, gate_ranking(self.gates), k)
        else:
            self.history_ = []
            idx = torch.arange(self.n_features, device=x.device)
        self.reconstruction_error_ = reconstruction_error(x, idx)
        self._set_selection(idx, "unsupervised")
        logger.info(
            "FeatureGate: kept %d of %d columns, relative reconstruction error %.4g",
            k,
            self.n_features,
            self.reconstruction_error_,
        )

    def _fit_supervised(
        self,
        x: Tensor,
        prepared: PreparedTarget,
        model: Model,
        hidden: int,
        epochs: int,
        lr: float,
        controller_lr: float,
    ) -> None:
        k = self.n_selected
        dtype = self.gates.prob_active().dtype
        if prepared.task == "regression":
            prepared.values = prepared.values.to(dtype)
        mean = x.mean(0)
        std = x.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        xs = ((x - mean) / std).to(dtype)
        net = make_model(self.n_features, prepared.n_out, model, hidden, dtype, x.device, self.seed)
        if k < self.n_features:
            config = TrainConfig(
                epochs=epochs,
                lr=lr,
                extra_lr=lr / 5,
                controller_lr=controller_lr,
                schedule_fraction=0.5,
            )
            self.history_ = train_gate(
                self.gates,
                lambda z: task_loss(net, xs * z, prepared),
                k,
                config,
                extra_params=net.parameters(),
            )
            idx = exact_top_k(self.gates, k)
        else:
            self.history_ = []
            idx = torch.arange(self.n_features, device=x.device)
        # Refit the model on the selected columns only (no gates), for predict().
        refit = make_model(k, prepared.n_out, model, hidden, dtype, x.device, self.seed)
        opt = Adam([{"params": refit.parameters(), "lr": lr / 5}])
        inputs = xs[:, idx]
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            loss = task_loss(refit, inputs, prepared)
            loss.backward()
            opt.step()
        self.model_ = refit.eval()
        self._x_mean, self._x_std = mean, std
        self._classes = prepared.classes
        self._y_mean, self._y_std = prepared.mean, prepared.std
        self._set_selection(idx, prepared.task)
        logger.info(
            "FeatureGate: kept %d of %d columns (%s), final loss %.4g",
            k,
            self.n_features,
            prepared.task,
            float(loss.detach()),
        )

    def _set_selection(self, idx: Tensor, task: str) -> None:
        self.feature_indices_ = idx
        self.selection_ = idx
        self.task_ = task

    # -- using the selection ----------------------------------------------------------
    def select_features(self, data: Any) -> tuple[Any, Any]:
        """Return the selected columns of ``data`` and their indices (fitting first if needed).

        Without a previous :meth:`fit`, fits the unsupervised selection on
        ``data``.

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(..., n_features)`` data.

        Returns
        -------
        selected_data
            ``data[..., feature_indices]``, same kind as ``data``.
        feature_indices
            Sorted column indices: a LongTensor for tensor data, else a numpy
            ``int64`` array.

        Examples
        --------
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 8))
        >>> sel, idx = FeatureGate(8, 3, seed=0).select_features(x)
        >>> sel.shape, len(idx)
        ((100, 3), 3)
        """
        if not self.is_fitted:
            self.fit(data)
        else:
            self._check_columns(data)
        assert self.feature_indices_ is not None
        return take_columns(data, self.feature_indices_), as_index_output(
            self.feature_indices_, data
        )

    def select_features_with_names(
        self, data: Any, feature_names: Any = None
    ) -> tuple[Any, list[str]]:
        """Return the selected columns and their names.

        Parameters
        ----------
        data : Tensor, ndarray or DataFrame
            ``(..., n_features)`` data.
        feature_names : sequence of str, optional
            One name per column; defaults to a DataFrame's column labels.

        Returns
        -------
        selected_data
            Same as :meth:`select_features`.
        selected_names : list of str
            Names of the selected columns, in index order.

        Examples
        --------
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 4))
        >>> _, names = FeatureGate(4, 4, seed=0).select_features_with_names(x, list("abcd"))
        >>> names
        ['a', 'b', 'c', 'd']
        """
        if feature_names is None:
            if not (_is_pandas(data) and hasattr(data, "columns")):
                raise ValueError("feature_names is required unless data is a pandas DataFrame")
            feature_names = list(data.columns)
        names = list(feature_names)
        if len(names) != self.n_features:
            raise ValueError(
                f"feature_names has {len(names)} names but the gate has n_features={self.n_features}; "
                "pass one name per column"
            )
        selected, idx = self.select_features(data)
        return selected, [
            names[int(i)] for i in np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx)
        ]

    def get_feature_importance(self) -> Tensor:
        """Per-feature probability of being kept (the gates' ``prob_active``).

        Examples
        --------
        >>> FeatureGate(10, 5, seed=0).get_feature_importance().shape
        torch.Size([10])
        """
        with torch.no_grad():
            return self.gates.prob_active().detach().clone()

    def predict(self, X: Any) -> Any:
        """Predict with the model refitted on the selected columns (supervised fits).

        Parameters
        ----------
        X : Tensor, ndarray or DataFrame
            ``(n_samples, n_features)`` data (all columns; the selected ones
            are taken).

        Returns
        -------
        Tensor or ndarray
            Predicted values (regression) or class labels (classification),
            a tensor for tensor input, else a numpy array.

        Examples
        --------
        >>> import torch
        >>> X = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
        >>> y = 2 * X[:, 1]
        >>> gate = FeatureGate(4, 1, seed=0).fit(X, y)
        >>> bool((gate.predict(X) - y).abs().max() < 0.1)
        True
        """
        if (
            self.model_ is None
            or self._x_mean is None
            or self._x_std is None
            or self.feature_indices_ is None
        ):
            raise RuntimeError("predict needs a supervised fit: call fit(X, y) first")
        x = feature_matrix(X, self.n_features, "X", self._x_mean.device)
        dtype = next(self.model_.parameters()).dtype
        xs = ((x - self._x_mean) / self._x_std)[:, self.feature_indices_].to(dtype)
        with torch.no_grad():
            out = self.model_(xs)
        if self._classes is None:
            pred = out.reshape(-1).double() * self._y_std + self._y_mean
            return pred.to(X.device) if isinstance(X, Tensor) else pred.cpu().numpy()
        labels = self._classes[out.argmax(1).cpu().numpy()]
        if isinstance(X, Tensor) and labels.dtype.kind in "iufb":
            return torch.as_tensor(labels, device=X.device)
        return labels

    def _check_columns(self, data: Any) -> None:
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) == 0 or shape[-1] != self.n_features:
            got = shape[-1] if shape is not None and len(shape) else None
            raise ValueError(
                f"data has {got} features (last dimension) but the gate was built for n_features={self.n_features}"
            )

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, max_features={self.max_features}, "
            + super().extra_repr()
        )
