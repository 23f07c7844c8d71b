"""``L0Conv1d``: a 1-D convolution with gated output channels or weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .base import DEFAULT_INIT_SPARSITY
from .conv import ConvGranularity, _L0ConvNd

__all__ = ["L0Conv1d"]


class L0Conv1d(_L0ConvNd):
    """1-D convolution whose output channels (or single weights) are gated.

    The 1-D counterpart of :class:`~l0_nn.L0Conv2d`, with the same options;
    :func:`~l0_nn.export_pruned` turns it into a :class:`torch.nn.Conv1d`
    without the removed channels.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size, stride, dilation : int or (int,)
        As in :class:`torch.nn.Conv1d`.
    padding : int, (int,), "same" or "valid", default 0
        Zero padding, as in :class:`torch.nn.Conv1d`.
    groups : int, default 1
        Blocked connections; must divide both channel counts.
    bias : bool, default True
        Learn an additive bias per output channel.
    gate : str or type, default "hard_concrete"
        Any registered gate type, or a gate class.
    granularity : {"channel", "weight"}, default "channel"
        ``"channel"``: one gate per output channel multiplying its filter and
        its bias, so a removed channel outputs exactly 0 (gates of shape
        ``(out_channels,)``). ``"weight"``: one gate per weight (the bias is
        not gated).
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
    Input ``(N, in_channels, L)``, output ``(N, out_channels, L_out)``.

    Examples
    --------
    >>> conv = L0Conv1d(4, 8, 3, padding=1)
    >>> conv(torch.randn(2, 4, 16)).shape
    torch.Size([2, 8, 16])
    >>> conv.gates.shape
    torch.Size([8])
    """

    _dims = 1
    _conv_fn = staticmethod(F.conv1d)
    _example = "e.g. L0Conv1d(16, 32, kernel_size=3)"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] | str = 0,
        dilation: int | tuple[int] = 1,
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
