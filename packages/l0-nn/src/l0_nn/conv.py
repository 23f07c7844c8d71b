"""``L0Conv2d`` and ``L0DepthwiseConv2d``: convolutions with gated channels or weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from l0_core.checks import check_choice, check_int
from l0_core.precision import accumulate_sum
from torch import Tensor, nn

from ._checks import check_int_tuple
from .base import DEFAULT_INIT_SPARSITY, L0Layer, uniform_init_

__all__ = ["L0Conv2d", "L0DepthwiseConv2d"]

ConvGranularity = Literal["channel", "weight"]


class _L0ConvNd(L0Layer):
    """What the gated convolutions share; subclasses set the dimensionality."""

    _dims: int = 2
    _conv_fn: Any = staticmethod(F.conv2d)
    _example: str = "e.g. L0Conv2d(3, 16, kernel_size=3)"

    def _init_conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
        bias: bool,
        gate: str | type,
        granularity: ConvGranularity,
        temperature: float,
        init_sparsity: float,
        gate_kwargs: Mapping[str, Any] | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        generator: torch.Generator | None,
    ) -> None:
        dims = self._dims
        example = self._example
        self.in_channels = check_int(in_channels, "in_channels", min_val=1, hint=example)
        self.out_channels = check_int(out_channels, "out_channels", min_val=1, hint=example)
        self.groups = check_int(
            groups, "groups", min_val=1, hint="use groups=1 for a dense convolution"
        )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        self.kernel_size = check_int_tuple(kernel_size, "kernel_size", 1, dims)
        self.stride = check_int_tuple(stride, "stride", 1, dims)
        self.dilation = check_int_tuple(dilation, "dilation", 1, dims)
        if isinstance(padding, str):
            check_choice(padding, "padding", ("same", "valid"))
            if padding == "same" and self.stride != (1,) * dims:
                raise ValueError("padding='same' needs stride=1; pass an int padding instead")
            self.padding: tuple[int, ...] | str = padding
        else:
            self.padding = check_int_tuple(padding, "padding", 0, dims)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.granularity = check_choice(granularity, "granularity", ("channel", "weight"))
        weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        shape = (out_channels,) if granularity == "channel" else weight_shape
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
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.generator = generator
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        """Inputs of one output unit: ``in_channels / groups`` times the kernel's size."""
        return self.weight[0].numel()

    def reset_parameters(self) -> None:
        """Initialise ``weight`` and ``bias`` like the torch convolution (gates untouched).

        Examples
        --------
        >>> L0Conv2d(1, 2, 3).reset_parameters()
        """
        uniform_init_(self.weight, self.fan_in, self.generator)
        if self.bias is not None:
            uniform_init_(self.bias, self.fan_in, self.generator)

    def _gated(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.granularity == "channel":
            bias = None if self.bias is None else self.bias * z
            return self.weight * z.view(-1, *([1] * (self._dims + 1))), bias
        return self.weight * z, self.bias

    def forward(self, input: Tensor) -> Tensor:
        """Convolve with the gated filters (sampled gates in training, deterministic in eval).

        Examples
        --------
        >>> L0Conv2d(1, 2, 3).eval()(torch.ones(1, 1, 5, 5)).shape
        torch.Size([1, 2, 3, 3])
        """
        weight, bias = self._gated(self.gates())
        return self._conv_fn(
            input, weight, bias, self.stride, self.padding, self.dilation, self.groups
        )

    # --------------------------------------------------------- GatedLayer
    def _plain_module(self, *, bias: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
        conv: Any = nn.Conv1d if self._dims == 1 else nn.Conv2d
        return conv(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, bias, device=device, dtype=dtype,
        )  # fmt: skip

    def l2_penalty(self) -> Tensor:
        """Expected squared L2 norm of the gated weights (each group's norm times P(active)).

        A channel's group is its filter and its bias; an ungated bias is not
        penalised.

        Examples
        --------
        >>> conv = L0Conv2d(1, 2, 1, bias=False, init_sparsity=0.5)
        >>> with torch.no_grad(): _ = conv.weight.fill_(1.0)
        >>> conv.l2_penalty().item()
        1.0
        """
        p = self.prob_active()  # penalties of half-precision layers accumulate in float32
        if self.granularity == "channel":
            norms = self.weight.square().flatten(1).sum(1)
            if self.bias is not None:
                norms = norms + self.bias.square()
            return accumulate_sum(norms * p)
        return accumulate_sum(self.weight.square() * p)

    def parameter_count(self) -> int:
        """Parameters of the equivalent torch convolution (gate logits excluded).

        Examples
        --------
        >>> L0Conv2d(2, 4, 3).parameter_count()
        76
        """
        return self.weight.numel() + (0 if self.bias is None else self.bias.numel())

    def active_parameter_count(self) -> int:
        """Parameters left once the eval-mode gates are applied (this layer's gates only).

        Examples
        --------
        >>> L0Conv2d(2, 4, 3, init_sparsity=0.01).active_parameter_count()
        76
        """
        active = int((self.deterministic_gates() > 0).sum().item())
        if self.granularity == "channel":
            return active * (self.fan_in + (0 if self.bias is None else 1))
        return active + (0 if self.bias is None else self.out_channels)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, "
            f"granularity={self.granularity!r}, gate={self.gate_type!r}"
        )


class L0Conv2d(_L0ConvNd):
    """2-D convolution whose output channels (or single weights) are gated.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size, stride, dilation : int or (int, int)
        As in :class:`torch.nn.Conv2d`.
    padding : int, (int, int), "same" or "valid", default 0
        Zero padding, as in :class:`torch.nn.Conv2d`.
    groups : int, default 1
        Blocked connections; must divide both channel counts.
    bias : bool, default True
        Learn an additive bias per output channel.
    gate : str or type, default "hard_concrete"
        Any registered gate type, or a gate class.
    granularity : {"channel", "weight"}, default "channel"
        ``"channel"``: one gate per output channel multiplying its filter and
        its bias, so a removed channel outputs exactly 0 (gates of shape
        ``(out_channels,)``). ``"weight"``: one gate per weight (gates of the
        weight's shape; the bias is not gated).
    temperature : float, default 2/3
        Gate temperature.
    init_sparsity : float, default 0.1
        Initial probability that a gate is exactly zero.
    gate_kwargs : dict, optional
        Extra keywords for the gate constructor.
    device, dtype : optional
        Factory arguments for every parameter, gates included.
    generator : torch.Generator, optional
        Random source for the initialisation and the gate samples.

    Shape
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)``.

    Examples
    --------
    >>> conv = L0Conv2d(3, 8, 3, padding=1)
    >>> conv(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    >>> conv.gates.shape
    torch.Size([8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        gate: str | type = "hard_concrete",
        granularity: ConvGranularity = "channel",
        temperature: float = 2.0 / 3.0,
        init_sparsity: float = DEFAULT_INIT_SPARSITY,
        gate_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            gate, granularity, temperature, init_sparsity, gate_kwargs, device, dtype, generator,
        )  # fmt: skip


class L0DepthwiseConv2d(L0Conv2d):
    """Depthwise 2-D convolution (one filter per channel) with one gate per output channel.

    A removed channel outputs exactly 0: its filter and its bias are gated.

    Parameters
    ----------
    in_channels : int
        Channels in; each is convolved with its own ``depth_multiplier``
        filters.
    kernel_size, stride, padding, dilation, bias
        As in :class:`L0Conv2d`.
    depth_multiplier : int, default 1
        Output channels per input channel (``out_channels = in_channels *
        depth_multiplier``).
    gate, temperature, init_sparsity, gate_kwargs, device, dtype, generator
        As in :class:`L0Conv2d`.

    Examples
    --------
    >>> dw = L0DepthwiseConv2d(4, 3, padding=1)
    >>> dw(torch.randn(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    >>> dw.weight.shape, dw.gates.shape
    (torch.Size([4, 1, 3, 3]), torch.Size([4]))
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        depth_multiplier: int = 1,
        gate: str | type = "hard_concrete",
        temperature: float = 2.0 / 3.0,
        init_sparsity: float = DEFAULT_INIT_SPARSITY,
        gate_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_int(in_channels, "in_channels", min_val=1, hint="e.g. L0DepthwiseConv2d(32, 3)")
        check_int(
            depth_multiplier, "depth_multiplier", min_val=1, hint="use 1 for a plain depthwise conv"
        )
        super().__init__(
            in_channels,
            in_channels * depth_multiplier,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=bias,
            gate=gate,
            granularity="channel",
            temperature=temperature,
            init_sparsity=init_sparsity,
            gate_kwargs=gate_kwargs,
            device=device,
            dtype=dtype,
            generator=generator,
        )
        self.depth_multiplier = depth_multiplier
