"""``l0.distributions``: the Hard Concrete gate with l0-python 0.6.2's meaning.

:class:`HardConcrete` here is a subclass of :class:`l0_core.HardConcrete`, so
every tool of this project accepts it, but it keeps the published 0.6.2
behaviour: ``init_mean`` sets the logits (``qz_logits = logit(init_mean)``,
no jitter), the default temperature is 0.5, the temperature is a plain float
attribute, the logits are clamped to ``[-20, 20]`` wherever they are used,
``forward(input_shape)`` broadcasts, and the parameter is called
``qz_logits`` (so 0.6.2 state_dicts load unchanged). The 0.6.2 methods
``get_penalty``, ``get_active_prob``, ``get_sparsity`` and ``get_num_active``
are its own API, not deprecated here.

Examples
--------
>>> import math, torch
>>> from l0.distributions import HardConcrete
>>> gate = HardConcrete(10, temperature=0.5, init_mean=0.8)
>>> gate.gate_size, gate.temperature
((10,), 0.5)
>>> bool(torch.allclose(gate.qz_logits, torch.full((10,), math.log(0.8 / 0.2))))
True
>>> gate.get_penalty().shape
torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from l0_core import hard_concrete as _core
from torch import Tensor

__all__ = ["HardConcrete"]


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}; use e.g. 0.5")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; use e.g. 0.5")
    return value


class HardConcrete(_core.HardConcrete):
    """Hard Concrete gates with the constructor and methods of l0-python 0.6.2.

    Parameters
    ----------
    input_dim : int
        Size of the first gate dimension (``n_items=`` is accepted as well,
        the spelling of this project's :class:`l0_core.HardConcrete`).
    output_dim : int, optional
        Size of the second dimension, for a 2-D gate (e.g. a weight matrix).
    temperature : float, default 0.5
        The temperature ``beta``, a plain float attribute (assignable).
    stretch : float, default 0.1
        ``gamma = -stretch`` and ``zeta = 1 + stretch``.
    init_mean : float, default 0.5
        Initial *logit* mean: ``qz_logits = log(init_mean / (1 - init_mean))``
        for every gate (0.6.2's meaning). The probability that a gate is
        non-zero is then ``sigmoid(qz_logits - temperature * log(-gamma / zeta))``,
        slightly more than ``init_mean``.

    Attributes
    ----------
    qz_logits : torch.nn.Parameter
        The learnable logits (``log_alpha`` is the same tensor).
    gate_size : tuple of int
        ``(input_dim,)`` or ``(input_dim, output_dim)``.

    Examples
    --------
    >>> gates = HardConcrete(1000, temperature=0.25, init_mean=0.999)
    >>> gates().shape
    torch.Size([1000])
    >>> gates.eval()((32, 1000, 7)).shape
    torch.Size([1000, 1, 1])
    """

    #: Logits are clamped to ``[-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND]`` before use.
    LOG_ALPHA_BOUND: float = 20.0
    #: Uniform noise is drawn from ``[eps, 1 - eps]`` with this ``eps`` (float16-safe).
    _UNIFORM_EPS: float = 1e-6

    temperature: float  # type: ignore[assignment]

    def __init__(
        self,
        input_dim: int | None = None,
        output_dim: int | None = None,
        temperature: float = 0.5,
        stretch: float = 0.1,
        init_mean: float = 0.5,
        *,
        n_items: int | None = None,
    ) -> None:
        if n_items is not None:
            if input_dim is not None:
                raise TypeError("pass input_dim or n_items (the same thing), not both")
            input_dim = n_items
        if input_dim is None:
            raise TypeError(
                "HardConcrete() needs input_dim, the number of gates, e.g. HardConcrete(10)"
            )
        init_mean = float(init_mean)
        if not 0.0 < init_mean < 1.0:
            raise ValueError(
                f"init_mean must lie strictly between 0 and 1, got {init_mean!r}; "
                "it sets qz_logits = log(init_mean / (1 - init_mean)), e.g. 0.999"
            )
        temperature = _positive("temperature", temperature)
        dims = (input_dim,) if output_dim is None else (input_dim, output_dim)
        super().__init__(
            *dims, temperature=temperature, init_prob_active=0.5, stretch=stretch, init_std=0.0
        )
        # 0.6.2's names and kinds: the logits are the parameter ``qz_logits`` and the
        # temperature a float attribute (not a buffer), so its state_dicts load as they are.
        self.qz_logits = self._parameters.pop("log_alpha")
        self._buffers.pop("temperature")
        self.temperature = temperature
        self.stretch = float(stretch)
        self.init_mean = init_mean
        self.gate_size: tuple[int, ...] = tuple(dims)
        self.reset_parameters()

    # 0.6.2's own attributes here (l0-core has them only as deprecated aliases).
    @property
    def qz_logits(self) -> Tensor:  # type: ignore[override]
        """The learnable logits (0.6.2's parameter name)."""
        params = self.__dict__["_parameters"]
        if "qz_logits" not in params:
            raise AttributeError("qz_logits")
        return params["qz_logits"]

    gate_size: tuple[int, ...] = ()  # type: ignore[assignment]  # set per instance

    # ``log_alpha`` (the l0-core name) is the same tensor as ``qz_logits``.
    @property
    def log_alpha(self) -> Tensor:  # type: ignore[override]
        """The logits under l0-core's name; the same tensor as ``qz_logits``."""
        params = self.__dict__["_parameters"]
        return params["qz_logits"] if "qz_logits" in params else params["log_alpha"]

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "log_alpha":  # l0-core's __init__ registers it; keep it under 0.6.2's name
            name = "qz_logits" if "qz_logits" in self._parameters else name
            if name == "log_alpha":
                self._parameters["log_alpha"] = value
                return
        if name == "temperature" and "temperature" not in self.__dict__.get("_buffers", {}):
            if isinstance(value, Tensor):
                value = float(value.item())
            object.__setattr__(self, "temperature", value)
            return
        super().__setattr__(name, value)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A state_dict of l0_core.HardConcrete carries ``log_alpha`` (and a temperature).
        if isinstance(state_dict, dict):
            if prefix + "log_alpha" in state_dict and prefix + "qz_logits" not in state_dict:
                state_dict[prefix + "qz_logits"] = state_dict.pop(prefix + "log_alpha")
            temperature = state_dict.pop(prefix + "temperature", None)
            if isinstance(temperature, Tensor):
                self.temperature = float(temperature.item())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def reset_parameters(self) -> None:
        """Set every logit to ``log(init_mean / (1 - init_mean))``.

        Examples
        --------
        >>> g = HardConcrete(3, init_mean=0.5)
        >>> g.reset_parameters(); g.qz_logits.tolist()
        [0.0, 0.0, 0.0]
        """
        if "qz_logits" not in self._parameters:  # called from l0-core's __init__
            return
        with torch.no_grad():
            self.qz_logits.fill_(math.log(self.init_mean) - math.log1p(-self.init_mean))

    def set_temperature(self, temperature: float) -> None:
        """Set the temperature (also possible as ``gate.temperature = t``).

        Examples
        --------
        >>> g = HardConcrete(2); g.set_temperature(0.1); g.temperature
        0.1
        """
        self.temperature = _positive("temperature", temperature)

    def _clamped(self) -> Tensor:
        bound = self.LOG_ALPHA_BOUND
        return self.qz_logits.clamp(-bound, bound)

    def _shift(self) -> float:  # type: ignore[override]
        return self.temperature * math.log(-self.gamma / self.zeta)

    def prob_active(self) -> Tensor:
        """``P(z != 0)`` per gate, from the clamped logits.

        Examples
        --------
        >>> HardConcrete(2, init_mean=0.5).prob_active().shape
        torch.Size([2])
        """
        return torch.sigmoid(self._clamped() - self._shift())

    def prob_zero(self) -> Tensor:
        """``P(z == 0)`` per gate.

        Examples
        --------
        >>> g = HardConcrete(2)
        >>> bool(torch.allclose(g.prob_zero() + g.prob_active(), torch.ones(2)))
        True
        """
        return torch.sigmoid(self._shift() - self._clamped())

    def prob_one(self) -> Tensor:
        """``P(z == 1)`` per gate.

        Examples
        --------
        >>> g = HardConcrete(2)
        >>> bool((g.prob_one() < g.prob_active()).all())
        True
        """
        t = self.temperature * math.log((1.0 - self.gamma) / (self.zeta - 1.0))
        return torch.sigmoid(self._clamped() - t)

    def sample(self) -> Tensor:
        """A reparameterised sample (uniform noise in ``[1e-6, 1 - 1e-6]``).

        Examples
        --------
        >>> HardConcrete(3).sample().shape
        torch.Size([3])
        """
        logits = self._clamped()
        eps = self._UNIFORM_EPS
        # Drawn and transformed exactly as 0.6.2 did, so a seeded run gives 0.6.2's numbers.
        u = torch.empty_like(logits).uniform_(eps, 1.0 - eps)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + logits) / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self) -> Tensor:
        """Eval-mode gates: ``clamp(sigmoid(qz_logits / beta) * (zeta - gamma) + gamma, 0, 1)``.

        Examples
        --------
        >>> HardConcrete(2, init_mean=0.999).deterministic().tolist()
        [1.0, 1.0]
        """
        s = torch.sigmoid(self._clamped() / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def forward(self, input_shape: tuple[int, ...] | None = None) -> Tensor:  # type: ignore[override]
        """Gates (sampled in training, deterministic in eval), broadcast to ``input_shape``.

        With ``input_shape`` longer than the gate, trailing singleton
        dimensions are appended (e.g. ``(out, in, 1, 1)`` for a convolution).

        Examples
        --------
        >>> HardConcrete(4, 3).eval()((8, 4, 5, 5)).shape
        torch.Size([4, 3, 1, 1])
        """
        gates = self.sample() if self.training else self.deterministic()
        if input_shape is not None:
            for _ in range(len(input_shape) - gates.dim()):
                gates = gates.unsqueeze(-1)
        return gates

    def get_penalty(self) -> Tensor:
        """Expected number of non-zero gates (the differentiable L0 penalty).

        Examples
        --------
        >>> # 10 * sigmoid(0 - 0.5 * log(0.1 / 1.1))
        >>> round(HardConcrete(10, init_mean=0.5).get_penalty().item(), 3)
        7.683
        """
        return self.prob_active().sum()

    def get_active_prob(self) -> Tensor:
        """Probability that each gate is non-zero.

        Examples
        --------
        >>> HardConcrete(3).get_active_prob().shape
        torch.Size([3])
        """
        return self.prob_active()

    @torch.no_grad()
    def get_sparsity(self) -> float:
        """Expected fraction of zero gates, ``1 - mean(P(z != 0))``.

        Examples
        --------
        >>> round(HardConcrete(4, init_mean=0.5).get_sparsity(), 4)
        0.2317
        """
        return 1.0 - float(self.prob_active().mean().item())

    @torch.no_grad()
    def get_num_active(self) -> int:
        """Number of gates with ``P(z != 0) > 0.5``.

        Examples
        --------
        >>> HardConcrete(5, init_mean=0.9).get_num_active()
        5
        """
        return int((self.prob_active() > 0.5).sum().item())

    def extra_repr(self) -> str:
        return (
            f"gate_size={self.gate_size}, temperature={self.temperature}, "
            f"stretch={self.stretch}, init_mean={self.init_mean}"
        )
