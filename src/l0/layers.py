"""``l0.layers``: the L0 layers of l0-python 0.6.2, with their published meaning.

These layers gate every weight (``weight_gates``, a 2-D
:class:`l0.distributions.HardConcrete`) or every output channel
(``channel_gates``), exactly as 0.6.2 did, so 0.6.2 code, state_dicts and
hyper-parameters keep their meaning. The layers of this project, with neuron
and channel gates, device/dtype/generator arguments and export to dense
networks, are :mod:`l0_nn`'s (``from l0_nn import L0Linear``); the
facade's layers are gated layers too, so :func:`l0_core.compute_l0_penalty`
and the other tools of l0-core accept them.

Examples
--------
>>> import torch
>>> from l0.layers import L0Linear
>>> layer = L0Linear(10, 5, temperature=0.5, init_sparsity=0.8)
>>> layer(torch.randn(3, 10)).shape
torch.Size([3, 5])
>>> layer.weight_gates.gate_size
(5, 10)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import HardConcrete

__all__ = ["L0Conv2d", "L0DepthwiseConv2d", "L0Linear", "SparseMLP", "prune_model"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}; e.g. 3 or (3, 3)")


def _init_mean(init_sparsity: float) -> float:
    init_sparsity = float(init_sparsity)
    if not 0.0 < init_sparsity < 1.0:
        raise ValueError(
            f"init_sparsity must lie strictly between 0 and 1, got {init_sparsity!r}; "
            "the gates start with init_mean = 1 - init_sparsity, e.g. init_sparsity=0.5"
        )
    return 1.0 - init_sparsity


class _L0Module(nn.Module):
    """Shared initialisation and penalties of the 0.6.2 layers (gates in ``self._gates()``)."""

    use_l2: bool
    weight: Tensor
    bias: Tensor | None

    def _gates(self) -> HardConcrete:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Kaiming-normal weights (``fan_out`` mode) and a zero bias."""
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def get_l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates of this layer."""
        return self._gates().get_penalty()

    def get_l2_penalty(self) -> Tensor:
        """``(weight ** 2).sum()`` when ``use_l2``, else a zero tensor."""
        if not self.use_l2:
            return torch.zeros((), device=self.weight.device)
        return (self.weight**2).sum()

    def get_sparsity(self) -> float:
        """Expected fraction of zero gates."""
        return self._gates().get_sparsity()

    # l0-core's GatedLayer protocol, so that l0_core's tools count these layers too.
    def l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates (l0-core's name for :meth:`get_l0_penalty`)."""
        return self.get_l0_penalty()

    def l2_penalty(self) -> Tensor:
        """Expected L2 penalty: each weight's square times its gate's keep probability."""
        prob = self._gates().get_active_prob()
        if prob.dim() == 1:  # one gate per output channel
            prob = prob.view(-1, *([1] * (self.weight.dim() - 1)))
        else:
            prob = prob.view(self.weight.shape)
        return (self.weight**2 * prob).sum()

    def parameter_count(self) -> int:
        return int(self.weight.numel())

    @torch.no_grad()
    def active_parameter_count(self) -> int:
        gates = self._gates().deterministic()
        per_gate = self.weight.numel() // gates.numel()
        return int((gates > 0).sum().item()) * per_gate


class L0Linear(_L0Module):
    """A linear layer whose every weight has a Hard Concrete gate (l0-python 0.6.2).

    Parameters
    ----------
    in_features, out_features : int
        Layer sizes.
    bias : bool, default True
        Whether to add a (never gated) bias.
    temperature : float, default 0.5
        Gate temperature.
    init_sparsity : float, default 0.5
        The gates start with ``init_mean = 1 - init_sparsity`` (a logit
        initialisation, see :class:`l0.distributions.HardConcrete`).
    use_l2 : bool, default False
        Whether :meth:`get_l2_penalty` returns ``(weight ** 2).sum()`` (else 0).

    Examples
    --------
    >>> layer = L0Linear(4, 2, use_l2=True)
    >>> bool(torch.allclose(layer.get_l2_penalty(), (layer.weight ** 2).sum()))
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
        use_l2: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.use_l2 = bool(use_l2)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.weight_gates = HardConcrete(
            out_features, in_features, temperature=temperature, init_mean=_init_mean(init_sparsity)
        )
        self.reset_parameters()

    def _gates(self) -> HardConcrete:
        return self.weight_gates

    def forward(self, input: Tensor) -> Tensor:
        """``F.linear(input, weight * gates, bias)``."""
        return F.linear(input, self.weight * self.weight_gates(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class L0Conv2d(_L0Module):
    """A 2-D convolution with a gate per weight, or per output channel (``structured``).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size, stride, padding : int or (int, int)
        As for :class:`torch.nn.Conv2d` (``stride``/``padding`` passed to
        :func:`torch.nn.functional.conv2d` as given).
    bias : bool, default True
        Whether to add a bias.
    temperature : float, default 0.5
        Gate temperature.
    init_sparsity : float, default 0.5
        The gates start with ``init_mean = 1 - init_sparsity``.
    structured : bool, default False
        ``True``: one gate per output channel (``channel_gates``); ``False``:
        one per weight (``weight_gates`` of shape ``(out, in * kh * kw)``).
    use_l2 : bool, default False
        Whether :meth:`get_l2_penalty` is non-zero.

    Examples
    --------
    >>> conv = L0Conv2d(3, 8, 3, structured=True)
    >>> conv(torch.randn(2, 3, 10, 10)).shape
    torch.Size([2, 8, 8, 8])
    >>> conv.channel_gates.gate_size
    (8,)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
        structured: bool = False,
        use_l2: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = stride
        self.padding = padding
        self.structured = bool(structured)
        self.use_l2 = bool(use_l2)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        mean = _init_mean(init_sparsity)
        if self.structured:
            self.channel_gates = HardConcrete(out_channels, temperature=temperature, init_mean=mean)
        else:
            fan = in_channels * self.kernel_size[0] * self.kernel_size[1]
            self.weight_gates = HardConcrete(
                out_channels, fan, temperature=temperature, init_mean=mean
            )
        self.reset_parameters()

    def _gates(self) -> HardConcrete:
        return self.channel_gates if self.structured else self.weight_gates

    def forward(self, input: Tensor) -> Tensor:
        """Convolve with the gated weight."""
        if self.structured:
            gates = self.channel_gates().view(-1, 1, 1, 1)
        else:
            gates = self.weight_gates().view(self.weight.shape)
        return F.conv2d(input, self.weight * gates, self.bias, self.stride, self.padding)


class L0DepthwiseConv2d(nn.Module):
    """A depthwise convolution whose input channels are gated (l0-python 0.6.2).

    The convolution is ``depthwise_conv`` (an :class:`torch.nn.Conv2d` with
    ``groups=in_channels``); ``channel_gates`` multiply the input channels.

    Examples
    --------
    >>> conv = L0DepthwiseConv2d(in_channels=4, kernel_size=3)
    >>> conv(torch.randn(2, 4, 6, 6)).shape
    torch.Size([2, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = stride
        self.padding = padding
        self.depthwise_conv = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size=self.kernel_size,
            stride=stride,
            padding=padding,
            groups=in_channels,
            bias=bias,
        )
        self.channel_gates = HardConcrete(
            in_channels, temperature=temperature, init_mean=_init_mean(init_sparsity)
        )

    def forward(self, input: Tensor) -> Tensor:
        """Gate the input channels, then convolve."""
        return self.depthwise_conv(input * self.channel_gates().view(1, -1, 1, 1))

    def get_l0_penalty(self) -> Tensor:
        """Expected number of open channel gates."""
        return self.channel_gates.get_penalty()

    def get_sparsity(self) -> float:
        """Expected fraction of closed channel gates."""
        return self.channel_gates.get_sparsity()


class SparseMLP(nn.Module):
    """Three per-weight-gated :class:`L0Linear` layers: ``fc1``, ``fc2``, ``fc3`` (0.6.2).

    ``input_dim -> hidden_dim -> hidden_dim -> output_dim`` with ReLU between;
    inputs are flattened first.

    Examples
    --------
    >>> model = SparseMLP(784, 256, 10)
    >>> [name for name, _ in model.named_children()]
    ['fc1', 'fc2', 'fc3']
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        input_dim: int = 784,
        hidden_dim: int = 256,
        output_dim: int = 10,
        init_sparsity: float = 0.5,
        temperature: float = 0.5,
        use_l2: bool = False,
    ) -> None:
        super().__init__()
        options = {"init_sparsity": init_sparsity, "temperature": temperature, "use_l2": use_l2}
        self.fc1 = L0Linear(input_dim, hidden_dim, **options)
        self.fc2 = L0Linear(hidden_dim, hidden_dim, **options)
        self.fc3 = L0Linear(hidden_dim, output_dim, **options)
        self.use_l2 = bool(use_l2)

    def forward(self, x: Tensor) -> Tensor:
        """Flatten, then ``fc3(relu(fc2(relu(fc1(x)))))``."""
        x = x.reshape(x.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def _layers(self) -> list[nn.Module]:
        kinds = (L0Linear, L0Conv2d, L0DepthwiseConv2d)
        return [m for m in self.modules() if isinstance(m, kinds)]

    def get_l0_loss(self) -> Tensor:
        """Sum of the layers' expected numbers of open gates."""
        total = torch.zeros(())
        for layer in self._layers():
            total = total + layer.get_l0_penalty()
        return total

    def get_l2_loss(self) -> Tensor:
        """Sum of the layers' L2 penalties (0 unless ``use_l2``)."""
        total = torch.zeros(())
        if self.use_l2:
            for layer in self._layers():
                if hasattr(layer, "get_l2_penalty"):
                    total = total + layer.get_l2_penalty()
        return total

    def get_sparsity_stats(self) -> dict[str, dict[str, Any]]:
        """``name -> {"sparsity", "active_params"}`` (expected values) per L0 layer."""
        stats: dict[str, dict[str, Any]] = {}
        for name, module in self.named_modules():
            if hasattr(module, "get_sparsity") and hasattr(module, "get_l0_penalty"):
                stats[name] = {
                    "sparsity": module.get_sparsity(),
                    "active_params": module.get_l0_penalty().item(),
                }
        return stats


def prune_model(model: nn.Module, threshold: float = 0.05) -> nn.Module:
    """Zero, in place, the weights whose gate is open with probability ``<= threshold``.

    The model is put in eval mode and returned. Layers with ``weight_gates``
    lose single weights; layers with ``channel_gates`` whole channels.

    Examples
    --------
    >>> layer = L0Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight_gates.qz_logits[0].fill_(-10.0)
    >>> pruned = prune_model(layer)
    >>> pruned.weight[0].abs().sum().item()
    0.0
    """
    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_gates"):
                keep = (module.weight_gates.get_active_prob() > threshold).to(module.weight.dtype)
                module.weight.mul_(keep.view(module.weight.shape))
            elif hasattr(module, "channel_gates"):
                keep = (module.channel_gates.get_active_prob() > threshold).to(torch.float32)
                if isinstance(module, L0DepthwiseConv2d):
                    conv = module.depthwise_conv
                    conv.weight.mul_(keep.view(-1, 1, 1, 1).to(conv.weight.dtype))
                else:
                    module.weight.mul_(keep.view(-1, 1, 1, 1).to(module.weight.dtype))
    return model
