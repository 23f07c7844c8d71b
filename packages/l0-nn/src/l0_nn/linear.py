"""``L0Linear``: a linear layer whose input neurons, output neurons or weights are gated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from l0_core.checks import check_choice, check_int
from l0_core.precision import accumulate_sum
from torch import Tensor, nn

from .base import DEFAULT_INIT_SPARSITY, L0Layer, uniform_init_

__all__ = ["L0Linear"]

LinearGranularity = Literal["input", "output", "weight"]


class L0Linear(L0Layer):
    """Linear layer ``y = x (W * z)^T + b`` with L0 gates ``z`` on groups of weights.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    bias : bool, default True
        Learn an additive bias.
    gate : str or type, default "hard_concrete"
        Any gate type registered with l0-core (built in or by a plugin), or a
        gate class.
    granularity : {"input", "output", "weight"}, default "input"
        What one gate switches off. ``"input"``: a column of ``W``, i.e. an
        input neuron (the group sparsity of Louizos et al., 2017; gates of
        shape ``(in_features,)``). ``"output"``: a row of ``W`` and its bias,
        so a removed output neuron outputs exactly 0 (gates of shape
        ``(out_features,)``). ``"weight"``: every weight on its own (gates of
        shape ``(out_features, in_features)``; the bias is not gated).
    temperature : float, default 2/3
        Gate temperature.
    init_sparsity : float, default 0.1
        Initial probability that a gate is exactly zero, in ``(0, 1)``.
        Hard Concrete gates start without jitter, so this holds exactly.
    gate_kwargs : dict, optional
        Extra keywords for the gate constructor (e.g. ``{"stretch": 0.1}``).
    device, dtype : optional
        Factory arguments for every parameter, gates included.
    generator : torch.Generator, optional
        Random source for the weight initialisation and every gate sample;
        a seeded generator makes training bit-identical on CPU. It must live
        on ``device``.

    Shape
    -----
    Input ``(*, in_features)``, output ``(*, out_features)``.

    Examples
    --------
    >>> layer = L0Linear(20, 5, generator=torch.Generator().manual_seed(0))
    >>> layer(torch.randn(8, 20)).shape
    torch.Size([8, 5])
    >>> layer.gates.shape
    torch.Size([20])
    >>> L0Linear(20, 5, granularity="weight").gates.shape
    torch.Size([5, 20])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        gate: str | type = "hard_concrete",
        granularity: LinearGranularity = "input",
        temperature: float = 2.0 / 3.0,
        init_sparsity: float = DEFAULT_INIT_SPARSITY,
        gate_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        example = "e.g. L0Linear(784, 300)"
        self.in_features = check_int(in_features, "in_features", min_val=1, hint=example)
        self.out_features = check_int(out_features, "out_features", min_val=1, hint=example)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.granularity = check_choice(granularity, "granularity", ("input", "output", "weight"))
        shape = {
            "input": (in_features,),
            "output": (out_features,),
            "weight": (out_features, in_features),
        }[granularity]
        self._build_gates(
            shape,
            gate=gate,
            temperature=temperature,
            init_sparsity=init_sparsity,
            gate_kwargs=gate_kwargs,
            device=device,
            dtype=dtype,
            generator=generator,
        )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.generator = generator
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``weight`` and ``bias`` like :class:`torch.nn.Linear` (gates untouched).

        Examples
        --------
        >>> L0Linear(3, 2).reset_parameters()
        """
        uniform_init_(self.weight, self.in_features, self.generator)
        if self.bias is not None:
            uniform_init_(self.bias, self.in_features, self.generator)

    def _gated(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.granularity == "input":
            return self.weight * z, self.bias
        if self.granularity == "output":
            bias = None if self.bias is None else self.bias * z
            return self.weight * z.unsqueeze(1), bias
        return self.weight * z, self.bias

    def forward(self, input: Tensor) -> Tensor:
        """Apply the gated linear map (sampled gates in training, deterministic in eval).

        Examples
        --------
        >>> L0Linear(4, 3).eval()(torch.ones(2, 4)).shape
        torch.Size([2, 3])
        """
        weight, bias = self._gated(self.gates())
        return F.linear(input, weight, bias)

    # --------------------------------------------------------- GatedLayer
    def _plain_module(self, *, bias: bool, device: torch.device, dtype: torch.dtype) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias, device=device, dtype=dtype)

    def l2_penalty(self) -> Tensor:
        """Expected squared L2 norm of the gated weights (Louizos et al., 2017, eq. 13).

        Each gate's group (a column, a row with its bias, or one weight) has
        its squared norm weighted by the probability that the gate is active.
        An ungated bias is not penalised; gate logits never are.

        Examples
        --------
        >>> layer = L0Linear(2, 1, bias=False, init_sparsity=0.5)
        >>> with torch.no_grad(): _ = layer.weight.fill_(2.0)
        >>> layer.l2_penalty().item()  # 0.5 * 4 + 0.5 * 4
        4.0
        """
        p = self.prob_active()  # penalties of half-precision layers accumulate in float32
        if self.granularity == "input":
            return accumulate_sum(self.weight.square().sum(0) * p)
        if self.granularity == "output":
            norms = self.weight.square().sum(1)
            if self.bias is not None:
                norms = norms + self.bias.square()
            return accumulate_sum(norms * p)
        return accumulate_sum(self.weight.square() * p)

    def parameter_count(self) -> int:
        """Parameters of the equivalent ``nn.Linear`` (gate logits excluded).

        Examples
        --------
        >>> L0Linear(4, 3).parameter_count()
        15
        """
        return self.weight.numel() + (0 if self.bias is None else self.bias.numel())

    def active_parameter_count(self) -> int:
        """Parameters left once the eval-mode gates are applied (this layer's gates only).

        Examples
        --------
        >>> L0Linear(4, 3, init_sparsity=0.01).active_parameter_count()
        15
        """
        active = self.deterministic_gates() > 0
        n_bias = 0 if self.bias is None else self.out_features
        if self.granularity == "input":
            return int(active.sum().item()) * self.out_features + n_bias
        if self.granularity == "output":
            per_row = self.in_features + (0 if self.bias is None else 1)
            return int(active.sum().item()) * per_row
        return int(active.sum().item()) + n_bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, granularity={self.granularity!r}, gate={self.gate_type!r}"
        )
