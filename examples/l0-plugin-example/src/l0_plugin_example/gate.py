"""A straight-through Gumbel-sigmoid gate that implements the ``l0_core.Gate`` protocol."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["StraightThroughGate"]


class StraightThroughGate(nn.Module):
    """Binary gates trained with the straight-through Gumbel-sigmoid estimator.

    In training mode each gate is ``hard = 1[logits + L > 0]`` with ``L``
    standard logistic noise: exactly 0 or 1 in the forward pass, while the
    backward pass uses the gradient of the relaxed value
    ``sigmoid((logits + L) / temperature)`` (Bengio et al. 2013; Jang et al.
    2017). Because ``P(hard = 1) = sigmoid(logits)`` whatever the temperature,
    the expected number of open gates, :meth:`l0_penalty`, is exact. In eval
    mode the gate is ``1[logits > 0]``: exactly 0 for a pruned item.

    Parameters
    ----------
    *shape : int
        Gate shape, e.g. ``StraightThroughGate(100)`` or ``StraightThroughGate(10, 4)``.
    temperature : float, default 0.5
        Temperature of the relaxed value used for gradients; a buffer, so it
        follows ``state_dict``, ``.to()`` and ``l0_core.update_temperatures``.
    init_prob_active : float, default 0.5
        Initial probability that a gate is open (before jitter).
    init_std : float, default 0.01
        Normal jitter added to the initial logits.
    device, dtype : optional
        Where and in which floating point type the parameters live.
    generator : torch.Generator, optional
        Source of the initial jitter and of every training-mode sample.

    Examples
    --------
    >>> gate = StraightThroughGate(1000, init_prob_active=0.8, init_std=0.0)
    >>> round(gate.l0_penalty().item())
    800
    >>> sorted(set(gate().tolist()))
    [0.0, 1.0]
    """

    logits: Tensor
    temperature: Tensor

    def __init__(
        self,
        *shape: int,
        temperature: float = 0.5,
        init_prob_active: float = 0.5,
        init_std: float = 0.01,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
            raise ValueError(
                f"shape must be one or more positive integers, got {shape!r}; "
                "e.g. StraightThroughGate(100)"
            )
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not isinstance(init_prob_active, (int, float)) or not 0.0 < init_prob_active < 1.0:
            raise ValueError(
                f"init_prob_active must lie strictly between 0 and 1, got {init_prob_active!r}"
            )
        if not isinstance(init_std, (int, float)) or init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std!r}")
        self.shape = torch.Size(shape)
        self.init_prob_active = float(init_prob_active)
        self.init_std = float(init_std)
        self.generator = generator
        self.logits = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.register_buffer(
            "temperature", torch.tensor(float(temperature), device=device, dtype=self.logits.dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the logits so that ``P(open) == init_prob_active`` (plus jitter).

        Examples
        --------
        >>> StraightThroughGate(3, init_prob_active=0.3).reset_parameters()
        """
        centre = math.log(self.init_prob_active) - math.log1p(-self.init_prob_active)
        with torch.no_grad():
            noise = torch.randn(
                self.shape,
                generator=self.generator,
                device=self.logits.device,
                dtype=self.logits.dtype,
            )
            self.logits.copy_(noise * self.init_std + centre)

    def set_temperature(self, temperature: float) -> None:
        """Set the temperature in place (used by ``l0_core.update_temperatures``).

        Examples
        --------
        >>> g = StraightThroughGate(2); g.set_temperature(0.2); round(g.temperature.item(), 3)
        0.2
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        with torch.no_grad():
            self.temperature.fill_(float(temperature))

    def prob_active(self) -> Tensor:
        """Probability that each gate is open, ``sigmoid(logits)``; differentiable.

        Examples
        --------
        >>> StraightThroughGate(2, init_prob_active=0.25, init_std=0.0).prob_active().tolist()
        [0.25, 0.25]
        """
        return torch.sigmoid(self.logits)

    def l0_penalty(self) -> Tensor:
        """Expected number of open gates (differentiable scalar).

        Examples
        --------
        >>> round(StraightThroughGate(10, init_prob_active=0.3, init_std=0.0).l0_penalty().item(), 4)
        3.0
        """
        return self.prob_active().sum()

    def sample(self) -> Tensor:
        """A training-mode sample: hard 0/1 values with straight-through gradients.

        Examples
        --------
        >>> StraightThroughGate(4).sample().shape
        torch.Size([4])
        """
        eps = torch.finfo(self.logits.dtype).eps
        u = torch.rand(
            self.shape, generator=self.generator, device=self.logits.device, dtype=self.logits.dtype
        ).clamp_(eps, 1.0 - eps)
        noisy = self.logits + torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid(noisy / self.temperature)
        hard = (noisy > 0).to(soft.dtype)
        return hard + (soft - soft.detach())

    def deterministic(self) -> Tensor:
        """The eval-mode gate ``1[logits > 0]`` (open iff ``prob_active() > 1/2``).

        Examples
        --------
        >>> StraightThroughGate(3, init_prob_active=0.9).deterministic().tolist()
        [1.0, 1.0, 1.0]
        """
        return (self.logits > 0).to(self.logits.dtype)

    def forward(self) -> Tensor:
        """Gate values: a sample in training mode, the deterministic gate in eval mode.

        Examples
        --------
        >>> StraightThroughGate(3, init_prob_active=0.1).eval()().tolist()
        [0.0, 0.0, 0.0]
        """
        return self.sample() if self.training else self.deterministic()

    def extra_repr(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{dims}, temperature={self.temperature.item():.4g}"
