"""The Hard Concrete gate module, :class:`HardConcrete` (Louizos, Welling & Kingma, 2017).

The formulas it evaluates (sampling, the median gate, ``P(z != 0)``, the
initialisation from a probability) are the functions of
:mod:`l0_core.hard_concrete_math`, re-exported here so that
``from l0_core.hard_concrete import hard_concrete_sample`` keeps working.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .checks import (
    check_choice,
    check_device,
    check_dtype,
    check_float,
    check_int,
    check_temperature,
)
from .hard_concrete_math import (
    _check_both,
    _check_init_mean,
    _logit,
    _warn_init_mean,
    hard_concrete_median,
    hard_concrete_prob_active,
    hard_concrete_sample,
    log_alpha_for_prob_active,
    prob_active_for_init_mean,
    prob_active_for_log_alpha,
    resolve_init_prob_active,
)
from .precision import accumulate_sum

__all__ = [
    "HardConcrete",
    "hard_concrete_sample",
    "log_alpha_for_prob_active",
    "prob_active_for_log_alpha",
    "resolve_init_prob_active",
]

Estimator = Literal["median", "paper"]


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"HardConcrete.{old} is deprecated; use HardConcrete.{new} (same meaning)",
        DeprecationWarning,
        stacklevel=3,
    )


class HardConcrete(nn.Module):
    """A tensor of Hard Concrete gates with learnable ``log_alpha``.

    Parameters
    ----------
    n_items : int
        Size of the first gate dimension (may be passed by keyword).
    *more_dims : int
        Further sizes; ``HardConcrete(10, 5)`` is a 10 x 5 gate.
    temperature : float, default 2/3
        The temperature ``beta``; stored as a buffer, so it travels with
        ``state_dict`` and ``.to()``.
    init_prob_active : float, default 0.5
        Initial probability that a gate is non-zero (exact, before jitter):
        ``log_alpha = logit(init_prob_active) + beta * log(-gamma / zeta)``.
    stretch : float, default 0.1
        ``gamma = -stretch`` and ``zeta = 1 + stretch``.
    init_std : float, default 0.01
        Standard deviation of the normal jitter added to the initial
        ``log_alpha`` (0 gives identical gates).
    estimator : {"median", "paper"}, default "median"
        Deterministic (eval-mode) gate. ``"median"`` is the median of the
        Hard Concrete distribution at the current temperature,
        ``clamp(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``;
        it is exactly 0 precisely when ``P(z != 0) <= 1/2``, so the pruned
        set agrees with :meth:`num_active` and with the L0 penalty at every
        temperature. ``"paper"`` is the paper's
        ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, which
        ignores the temperature and can keep gates that are usually zero.
    device, dtype : optional
        Factory arguments for the parameters.
    generator : torch.Generator, optional
        Random source for the initial jitter and every training-mode sample;
        a seeded generator makes results bit-identical on CPU.
    init_mean : float, optional
        Deprecated; l0-python 0.6.2's keyword with 0.6.2's meaning, the
        initial logit mean: ``log_alpha = logit(init_mean)`` (plus jitter),
        whatever the temperature. Emits a ``DeprecationWarning`` giving the
        equivalent ``init_prob_active``; passing both is a ``TypeError``.

    Attributes
    ----------
    init_prob_active : float
        The initial ``P(z != 0)`` (from ``init_mean``: the probability those
        logits had at the initial temperature).
    init_mean : float or None
        The deprecated ``init_mean`` if given, else ``None``.

    Shape
    -----
    ``gates()`` returns a tensor of shape ``(n_items, *more_dims)``.

    Examples
    --------
    >>> gates = HardConcrete(n_items=1000, temperature=0.25, init_prob_active=0.999)
    >>> probs = gates()
    >>> probs.shape
    torch.Size([1000])
    >>> gates.eval()().min().item() > 0
    True
    """

    log_alpha: Tensor
    temperature: Tensor

    def __init__(
        self,
        n_items: int,
        *more_dims: int,
        temperature: float = 2.0 / 3.0,
        init_prob_active: float | None = None,
        stretch: float = 0.1,
        init_std: float = 0.01,
        estimator: Estimator = "median",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        init_mean: float | None = None,
    ) -> None:
        super().__init__()
        shape = (n_items, *more_dims)
        for i, d in enumerate(shape):
            name = "n_items" if i == 0 else f"more_dims[{i - 1}]"
            check_int(d, name, min_val=1, hint="pass the number of gates, e.g. HardConcrete(1000)")
        temperature = check_temperature(temperature, hint="use e.g. 2/3")
        stretch = check_float(
            stretch, "stretch", min_val=0.0, include_boundaries="neither", hint="use e.g. 0.1"
        )
        init_std = check_float(init_std, "init_std", min_val=0.0, hint="use e.g. 0.01")
        check_choice(estimator, "estimator", ("median", "paper"))
        device = check_device(device)
        dtype = check_dtype(dtype)
        self.shape = torch.Size(shape)
        self.init_std = float(init_std)
        self.gamma = -stretch
        self.zeta = 1.0 + stretch
        self.estimator: Estimator = estimator
        self.generator = generator
        self.init_mean: float | None = None
        if init_mean is None:
            self.init_prob_active = (
                0.5
                if init_prob_active is None
                else check_float(init_prob_active, "init_prob_active", hint="e.g. 0.5")
            )
            log_alpha_for_prob_active(self.init_prob_active, temperature)  # validates
        else:
            _check_both(init_prob_active, "HardConcrete")
            self.init_mean = _check_init_mean(init_mean)
            self.init_prob_active = prob_active_for_init_mean(
                self.init_mean, temperature, self.gamma, self.zeta
            )
            _warn_init_mean("HardConcrete", self.init_prob_active, stacklevel=3)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.log_alpha = nn.Parameter(torch.empty(shape, **factory))
        dt = self.log_alpha.dtype
        self.register_buffer("temperature", torch.tensor(temperature, device=device, dtype=dt))
        self.reset_parameters()

    @property
    def n_items(self) -> int:
        """Size of the first dimension."""
        return self.shape[0]

    def reset_parameters(self) -> None:
        """Re-initialise ``log_alpha`` so that ``P(z != 0) == init_prob_active`` (plus jitter).

        At the current temperature; with the deprecated ``init_mean``,
        ``log_alpha = logit(init_mean)`` (plus jitter) instead.

        Examples
        --------
        >>> HardConcrete(3, init_prob_active=0.9, init_std=0.0).reset_parameters()
        """
        if self.init_mean is not None:
            mean = _logit(self.init_mean)
        else:
            beta = float(self.temperature.item())
            mean = log_alpha_for_prob_active(self.init_prob_active, beta, self.gamma, self.zeta)
        with torch.no_grad():
            if self.init_std > 0:
                noise = torch.randn(
                    self.shape,
                    generator=self.generator,
                    device=self.log_alpha.device,
                    dtype=self.log_alpha.dtype,
                )
                self.log_alpha.copy_(noise * self.init_std + mean)
            else:
                self.log_alpha.fill_(mean)

    def set_temperature(self, temperature: float) -> None:
        """Set the temperature in place.

        Examples
        --------
        >>> g = HardConcrete(2); g.set_temperature(0.1); round(g.temperature.item(), 3)
        0.1
        """
        temperature = check_temperature(temperature, hint="use e.g. 0.1")
        with torch.no_grad():
            self.temperature.fill_(temperature)

    def _shift(self) -> Tensor:
        return self.temperature * math.log(-self.gamma / self.zeta)

    def prob_active(self) -> Tensor:
        """Probability that each gate is non-zero, ``P(z != 0)``; differentiable.

        Examples
        --------
        >>> g = HardConcrete(4, init_prob_active=0.8, init_std=0.0)
        >>> torch.allclose(g.prob_active(), torch.full((4,), 0.8))
        True
        """
        return hard_concrete_prob_active(self.log_alpha, self.temperature, self.gamma, self.zeta)

    def prob_zero(self) -> Tensor:
        """Probability that each gate is exactly 0.

        Examples
        --------
        >>> g = HardConcrete(2, init_prob_active=0.8, init_std=0.0)
        >>> torch.allclose(g.prob_zero(), torch.full((2,), 0.2))
        True
        """
        return torch.sigmoid(self._shift() - self.log_alpha)

    def prob_one(self) -> Tensor:
        """Probability that each gate is exactly 1.

        ``P(z = 1) = sigmoid(log_alpha - beta * log((1 - gamma) / (zeta - 1)))``.

        Examples
        --------
        >>> g = HardConcrete(2, init_std=0.0)
        >>> bool((g.prob_one() < g.prob_active()).all())
        True
        """
        t = self.temperature * math.log((1.0 - self.gamma) / (self.zeta - 1.0))
        return torch.sigmoid(self.log_alpha - t)

    def l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates (differentiable scalar).

        Examples
        --------
        >>> g = HardConcrete(10, init_prob_active=0.3, init_std=0.0)
        >>> round(g.l0_penalty().item(), 4)
        3.0
        """
        return accumulate_sum(self.prob_active())

    def sample(self) -> Tensor:
        """Draw a reparameterised training-mode sample (regardless of mode).

        Examples
        --------
        >>> HardConcrete(3).sample().shape
        torch.Size([3])
        """
        return hard_concrete_sample(
            self.log_alpha, self.temperature, self.gamma, self.zeta, self.generator
        )

    def deterministic(self) -> Tensor:
        """The deterministic test-time gate (see ``estimator``); exactly 0 when pruned.

        Examples
        --------
        >>> g = HardConcrete(2, init_prob_active=0.999)
        >>> bool((g.deterministic() == 1).all())
        True
        """
        beta = self.temperature if self.estimator == "median" else 1.0
        return hard_concrete_median(self.log_alpha, beta, self.gamma, self.zeta)

    def forward(self) -> Tensor:
        """Gate values: a sample in training mode, the deterministic gate in eval mode.

        Examples
        --------
        >>> g = HardConcrete(5, init_prob_active=0.999)
        >>> g.eval()().shape
        torch.Size([5])
        """
        return self.sample() if self.training else self.deterministic()

    @torch.no_grad()
    def num_active(self) -> int:
        """Number of gates whose deterministic value is non-zero.

        Examples
        --------
        >>> HardConcrete(7, init_prob_active=0.99).num_active()
        7
        """
        return int((self.deterministic() > 0).sum().item())

    def sparsity(self) -> float:
        """Fraction of gates whose deterministic value is exactly 0.

        Examples
        --------
        >>> HardConcrete(4, init_prob_active=0.99).sparsity()
        0.0
        """
        return 1.0 - self.num_active() / self.log_alpha.numel()

    @torch.no_grad()
    def active_indices(self) -> Tensor:
        """Indices (along the first dimension for 1-D gates) of non-zero gates.

        Examples
        --------
        >>> HardConcrete(3, init_prob_active=0.99).active_indices().tolist()
        [0, 1, 2]
        """
        nz = (self.deterministic() > 0).nonzero()
        return nz[:, 0] if self.log_alpha.dim() == 1 else nz

    # -- l0-python 0.6 names (same meaning), kept as deprecated aliases --------------
    def get_penalty(self) -> Tensor:
        """Deprecated alias of :meth:`l0_penalty` (l0-python 0.6's name).

        Examples
        --------
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     round(HardConcrete(4, init_prob_active=0.5, init_std=0.0).get_penalty().item(), 4)
        2.0
        """
        _deprecated("get_penalty()", "l0_penalty()")
        return self.l0_penalty()

    def get_active_prob(self) -> Tensor:
        """Deprecated alias of :meth:`prob_active` (l0-python 0.6's name).

        Examples
        --------
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     HardConcrete(3).get_active_prob().shape
        torch.Size([3])
        """
        _deprecated("get_active_prob()", "prob_active()")
        return self.prob_active()

    def get_num_active(self) -> int:
        """Deprecated alias of :meth:`num_active` (l0-python 0.6's name).

        Examples
        --------
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     HardConcrete(5, init_prob_active=0.99).get_num_active()
        5
        """
        _deprecated("get_num_active()", "num_active()")
        return self.num_active()

    @property
    def qz_logits(self) -> Tensor:
        """Deprecated alias of ``log_alpha`` (l0-python 0.6's name).

        Examples
        --------
        >>> import warnings
        >>> g = HardConcrete(2)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     g.qz_logits is g.log_alpha
        True
        """
        _deprecated("qz_logits", "log_alpha")
        return self.log_alpha

    @property
    def gate_size(self) -> tuple[int, ...]:
        """Deprecated alias of ``tuple(shape)`` (l0-python 0.6's name).

        Examples
        --------
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     HardConcrete(2, 3).gate_size
        (2, 3)
        """
        _deprecated("gate_size", "shape")
        return tuple(self.shape)

    def extra_repr(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return (
            f"{dims}, temperature={self.temperature.item():.4g}, "
            f"gamma={self.gamma:.4g}, zeta={self.zeta:.4g}, estimator={self.estimator!r}"
        )
