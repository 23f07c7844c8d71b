"""``l0.sparse``: l0-python 0.6.2's ``SparseL0Linear`` and l0-core's sparse operator.

:class:`SparseL0Linear` keeps 0.6.2's meaning: ``init_keep_prob`` sets the
logits (``log_alpha = logit(init_keep_prob) + 0.01 * noise``), ``beta`` is the
temperature, ``fit`` re-initialises the weights and runs Adam on the MSE plus
``lambda_reg`` times the expected number of open gates. l0-nn's
:class:`l0_nn.SparseL0Linear` (any gate, device/dtype, a seeded training loop)
is the project's own version.

Examples
--------
>>> import numpy as np, scipy.sparse as sp
>>> from l0.sparse import SparseL0Linear
>>> X = sp.random(50, 8, density=0.3, format="csr", random_state=0)
>>> model = SparseL0Linear(8, seed=0).fit(X, np.ones(50), epochs=5)
>>> model.predict(X).shape
torch.Size([50])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from l0_core.sparse import SparseOperator
from torch import Tensor, nn

from ._compat import reexport

__all__ = ["SparseL0Linear", "SparseOperator"]


def _to_torch_sparse(X: Any, device: torch.device) -> Tensor:
    coo = X.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.as_tensor(coo.data, dtype=torch.float32)
    return torch.sparse_coo_tensor(
        indices, values, coo.shape, device=device, check_invariants=False
    )  # not coalesced, like 0.6.2's, so products sum in the same order


class SparseL0Linear(nn.Module):
    """An L0-gated linear model of scipy-sparse inputs (l0-python 0.6.2).

    Parameters
    ----------
    n_features : int
        Number of input columns.
    fit_intercept : bool, default True
        Whether to learn ``bias`` (shape ``(1,)``).
    beta : float, default 2/3
        Gate temperature.
    gamma, zeta : float, default -0.1, 1.1
        Stretch interval.
    init_keep_prob : float, default 0.5
        Initial logit mean: ``log_alpha = logit(init_keep_prob) + 0.01 * N(0, 1)``.
    device : str or torch.device, default "cpu"
    seed : int, optional
        Seed of the generator of the initial noise (global RNG when ``None``).

    Examples
    --------
    >>> m = SparseL0Linear(5, seed=1)
    >>> m.log_alpha.shape, m.bias.shape
    (torch.Size([5]), torch.Size([1]))
    """

    LOG_ALPHA_BOUND: float = 20.0

    def __init__(
        self,
        n_features: int,
        fit_intercept: bool = True,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_keep_prob: float = 0.5,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if not 0.0 < float(init_keep_prob) < 1.0:
            raise ValueError(
                f"init_keep_prob must lie strictly between 0 and 1, got {init_keep_prob!r}"
            )
        self.n_features = n_features
        self.fit_intercept = fit_intercept
        self.beta = beta
        self.gamma = gamma
        self.zeta = zeta
        self.device = torch.device(device)
        self.seed = seed
        self._generator: torch.Generator | None = None
        if seed is not None:
            self._generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.weight = nn.Parameter(torch.zeros(n_features, device=self.device))
        self.bias = nn.Parameter(torch.zeros(1, device=self.device)) if fit_intercept else None
        mean = float(torch.log(torch.tensor(init_keep_prob / (1 - init_keep_prob))))
        noise = torch.randn(n_features, generator=self._generator, device=self.device)
        self.log_alpha = nn.Parameter(mean + 0.01 * noise)
        # The last converted matrix (0.6.2's attribute names), reused while it is the same object.
        self._cached_X: Any = None
        self._cached_X_torch: Tensor | None = None

    def _convert_sparse_to_torch(self, X_sparse: Any) -> Tensor:
        """A scipy sparse matrix as a float32 sparse COO tensor on ``device`` (cached)."""
        if self._cached_X is X_sparse and self._cached_X_torch is not None:
            return self._cached_X_torch
        self._cached_X_torch = _to_torch_sparse(X_sparse, self.device)
        self._cached_X = X_sparse
        return self._cached_X_torch

    def _as_torch(self, X: Any) -> Tensor:
        if isinstance(X, Tensor):
            return X.to(self.device)
        return self._convert_sparse_to_torch(X)

    def _clamped(self) -> Tensor:
        return self.log_alpha.clamp(-self.LOG_ALPHA_BOUND, self.LOG_ALPHA_BOUND)

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def _sample_gates(self) -> Tensor:
        eps = 1e-6
        log_alpha = self._clamped()
        u = torch.rand_like(log_alpha).clamp(eps, 1.0 - eps)
        return self._stretch(
            torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / self.beta)
        )

    def get_deterministic_gates(self) -> Tensor:
        """``clamp(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``.

        Examples
        --------
        >>> SparseL0Linear(3).get_deterministic_gates().shape
        torch.Size([3])
        """
        return self._stretch(torch.sigmoid(self._clamped() / self.beta))

    def forward(self, X: Any, deterministic: bool = False) -> Tensor:
        """Predictions ``X @ (weight * gates) + bias`` of shape ``(n_samples,)``."""
        X_torch = self._as_torch(X)
        gates = self.get_deterministic_gates() if deterministic else self._sample_gates()
        y = torch.sparse.mm(X_torch, (self.weight * gates).unsqueeze(1)).squeeze(1)
        if self.bias is not None:
            y = y + self.bias
        return y

    def get_l0_penalty(self) -> Tensor:
        """Expected number of open gates.

        Examples
        --------
        >>> SparseL0Linear(4, init_keep_prob=0.5).get_l0_penalty().item() > 2
        True
        """
        # The shift in float32 on the model's device, as 0.6.2 computed it.
        c = -self.beta * torch.log(torch.tensor(-self.gamma / self.zeta, device=self.device))
        return torch.sigmoid(self._clamped() + c).sum()

    @torch.no_grad()
    def get_sparsity(self) -> float:
        """Fraction of deterministic gates below 0.01.

        Examples
        --------
        >>> SparseL0Linear(4).get_sparsity()
        0.0
        """
        return float((self.get_deterministic_gates() < 0.01).float().mean().item())

    @torch.no_grad()
    def get_selected_features(self, threshold: float = 0.01) -> Tensor:
        """Indices of the features whose deterministic gate exceeds ``threshold``.

        Examples
        --------
        >>> SparseL0Linear(3).get_selected_features().tolist()
        [0, 1, 2]
        """
        return torch.where(self.get_deterministic_gates() > threshold)[0]

    def fit(
        self,
        X_sparse: Any,
        y: Tensor | np.ndarray,
        lambda_reg: float = 0.01,
        lr: float = 0.01,
        epochs: int = 1000,
        verbose: bool = False,
        verbose_freq: int = 100,
    ) -> SparseL0Linear:
        """Re-initialise the weights (``N(0, 0.1)``, bias = mean of ``y``) and train with Adam.

        The loss is ``mean((y - X @ (weight * z) - bias) ** 2) + lambda_reg * get_l0_penalty()``
        with a fresh gate sample ``z`` per epoch. Returns ``self``.
        """
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        y_t = y_t.to(device=self.device, dtype=torch.float32)
        X_torch = self._as_torch(X_sparse)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.1)
            if self.bias is not None:
                self.bias.fill_(float(y_t.mean()))
        params = [self.weight, self.log_alpha] + ([self.bias] if self.bias is not None else [])
        optimizer = torch.optim.Adam(params, lr=lr)
        for epoch in range(epochs):
            mse = (y_t - self.forward(X_torch)).pow(2).mean()
            penalty = self.get_l0_penalty()
            loss = mse + lambda_reg * penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if verbose and (epoch + 1) % verbose_freq == 0:
                active = int((self.get_deterministic_gates() > 0.01).sum())
                print(
                    f"Epoch {epoch + 1:4d}: loss={loss.item():.4f}, mse={mse.item():.4f}, "
                    f"l0={penalty.item():.2f}, active={active}"
                )
        return self

    def predict(self, X_sparse: Any) -> Tensor:
        """Deterministic predictions, without grad."""
        with torch.no_grad():
            return self.forward(X_sparse, deterministic=True)


_extra = [n for n in reexport({}, "l0_core.sparse") if n not in __all__]
for _name in _extra:
    globals()[_name] = getattr(__import__("l0_core.sparse", fromlist=["x"]), _name)
__all__ += _extra
del _name
