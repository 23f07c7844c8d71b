"""``SparseMLP``: a ready multi-layer perceptron built from :class:`L0Linear` layers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from l0_core.checks import check_int
from l0_core.precision import accumulation_dtype
from torch import Tensor, nn

from .base import DEFAULT_INIT_SPARSITY
from .export import ExportReport, export_pruned
from .linear import L0Linear, LinearGranularity
from .training import layer_sparsity_stats

__all__ = ["SparseMLP"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def _activation_factory(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)} or a callable returning an "
                f"nn.Module (e.g. torch.nn.ReLU), got {activation!r}"
            )
        return _ACTIVATIONS[activation]
    if callable(activation):
        return activation
    raise TypeError(f"activation must be a name or a callable, got {type(activation).__name__}")


class SparseMLP(nn.Sequential):
    """A multi-layer perceptron of :class:`L0Linear` layers that learns which neurons it needs.

    The model is an :class:`torch.nn.Sequential` of ``flatten, fc1, act1,
    fc2, act2, ..., fcK`` (inputs are flattened from dimension 1 first), so it
    can be indexed, exported with :func:`~l0_nn.export_pruned` or
    :meth:`export`, and pruned with :func:`~l0_nn.prune_model`.

    Parameters
    ----------
    input_dim : int, default 784
        Input features (after flattening).
    hidden_dim : int or sequence of int, default 256
        Width of the hidden layer(s): an int for one hidden layer, a list
        such as ``[300, 100]`` for several.
    output_dim : int, default 10
        Outputs.
    gate : str or type, default "hard_concrete"
        Gate type of every layer.
    granularity : {"input", "output", "weight"}, default "input"
        Granularity of every layer. With ``"input"`` every layer gates its
        inputs: the input features and every hidden neuron (the outputs stay).
    temperature : float, default 2/3
        Gate temperature.
    init_sparsity : float, default 0.1
        Initial probability that a gate is exactly zero.
    activation : str or callable, default "relu"
        ``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"``, ``"elu"``,
        ``"leaky_relu"`` or a callable returning a fresh module.
    bias : bool, default True
        Biases in every layer.
    gate_kwargs : dict, optional
        Extra gate constructor keywords.
    device, dtype, generator : optional
        Factory arguments and random source, passed to every layer.

    Examples
    --------
    >>> model = SparseMLP(64, [300, 100], 10, generator=torch.Generator().manual_seed(0))
    >>> model(torch.randn(5, 8, 8)).shape
    torch.Size([5, 10])
    >>> [name for name, _ in model.named_children()]
    ['flatten', 'fc1', 'act1', 'fc2', 'act2', 'fc3']
    >>> model.parameter_count()
    50610
    """

    def __init__(
        self,
        input_dim: int = 784,
        hidden_dim: int | Sequence[int] = 256,
        output_dim: int = 10,
        *,
        gate: str | type = "hard_concrete",
        granularity: LinearGranularity = "input",
        temperature: float = 2.0 / 3.0,
        init_sparsity: float = DEFAULT_INIT_SPARSITY,
        activation: str | Callable[[], nn.Module] = "relu",
        bias: bool = True,
        gate_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_int(input_dim, "input_dim", min_val=1, hint="e.g. SparseMLP(784, 256, 10)")
        check_int(output_dim, "output_dim", min_val=1, hint="e.g. SparseMLP(784, 256, 10)")
        if isinstance(hidden_dim, int) and not isinstance(hidden_dim, bool):
            hidden = [hidden_dim]
        elif isinstance(hidden_dim, Sequence) and not isinstance(hidden_dim, str):
            hidden = list(hidden_dim)
        else:
            raise TypeError(
                f"hidden_dim must be an int or a list of ints, got {type(hidden_dim).__name__}; "
                "e.g. hidden_dim=[300, 100]"
            )
        for i, h in enumerate(hidden):
            check_int(h, f"hidden_dim[{i}]", min_val=1, hint="e.g. hidden_dim=[300, 100]")
        make_act = _activation_factory(activation)
        sizes = [input_dim, *hidden, output_dim]
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i in range(len(sizes) - 1):
            layers[f"fc{i + 1}"] = L0Linear(
                sizes[i],
                sizes[i + 1],
                bias,
                gate=gate,
                granularity=granularity,
                temperature=temperature,
                init_sparsity=init_sparsity,
                gate_kwargs=gate_kwargs,
                device=device,
                dtype=dtype,
                generator=generator,
            )
            if i < len(sizes) - 2:
                act = make_act()
                if not isinstance(act, nn.Module):
                    raise TypeError(
                        f"activation() must return an nn.Module, got {type(act).__name__}"
                    )
                layers[f"act{i + 1}"] = act
        super().__init__(layers)
        self.input_dim, self.hidden_dims, self.output_dim = input_dim, hidden, output_dim
        self.granularity = granularity

    def gated_layers(self) -> list[L0Linear]:
        """The :class:`L0Linear` layers, input to output.

        Examples
        --------
        >>> len(SparseMLP(4, [3, 3], 2).gated_layers())
        3
        """
        return [m for m in self if isinstance(m, L0Linear)]

    # --------------------------------------------------------- GatedLayer
    def l0_penalty(self) -> Tensor:
        """Sum of the layers' expected numbers of non-zero gates.

        Examples
        --------
        >>> round(SparseMLP(4, 3, 2, init_sparsity=0.5).l0_penalty().item(), 4)
        3.5
        """
        layers = self.gated_layers()
        total = layers[0].l0_penalty()
        for layer in layers[1:]:
            total = total + layer.l0_penalty()
        return total

    def l2_penalty(self) -> Tensor:
        """Sum of the layers' expected L2 penalties.

        Examples
        --------
        >>> SparseMLP(4, 3, 2).l2_penalty().item() > 0
        True
        """
        layers = self.gated_layers()
        total = layers[0].l2_penalty()
        for layer in layers[1:]:
            total = total + layer.l2_penalty()
        return total

    def parameter_count(self) -> int:
        """Parameters of the equivalent dense MLP (gate logits excluded).

        Examples
        --------
        >>> SparseMLP(4, 3, 2).parameter_count()
        23
        """
        return sum(layer.parameter_count() for layer in self.gated_layers())

    def active_parameter_count(self) -> int:
        """Parameters of the exported model: removed neurons take their whole rows and columns.

        Unlike the sum of the layers' own counts, a neuron removed by one
        layer's gate also removes the weights that feed it in the layer
        before (upstream pruning is accounted for).

        Examples
        --------
        >>> SparseMLP(4, 3, 2, init_sparsity=0.01).active_parameter_count()
        23
        """
        report: ExportReport = export_pruned(self).export_report  # type: ignore[assignment]
        return report.params_after

    def expected_parameter_count(self) -> Tensor:
        """Differentiable expected parameter count of the exported model.

        With input gates, layer ``l`` keeps about ``E[inputs_l] * E[inputs_{l+1}]``
        weights plus a bias per kept output (gates of different layers are
        independent, so the product of expectations is exact). Pass it to
        :class:`l0_core.TargetSparsityController` with ``n_total =
        parameter_count()`` to train towards a target number of weights.

        Examples
        --------
        >>> model = SparseMLP(4, 3, 2, init_sparsity=0.5)
        >>> round(model.expected_parameter_count().item(), 4)  # 2*1.5 + 1.5 + 1.5*2 + 2
        9.5
        """
        layers = self.gated_layers()
        # summed in float32 for half-precision layers: a count over 65,504 is inf in float16
        probs = [layer.prob_active() for layer in layers]
        probs = [p.to(accumulation_dtype(p.dtype)) for p in probs]
        total = probs[0].new_zeros(())
        n_in: Tensor | int
        n_out: Tensor | int
        for i, layer in enumerate(layers):
            has_bias = layer.bias is not None
            if self.granularity == "input":
                n_in = probs[i].sum()
                n_out = probs[i + 1].sum() if i + 1 < len(layers) else layer.out_features
                total = total + n_in * n_out + (n_out if has_bias else 0)
            elif self.granularity == "output":
                n_in = probs[i - 1].sum() if i > 0 else layer.in_features
                n_out = probs[i].sum()
                total = total + n_in * n_out + (n_out if has_bias else 0)
            else:
                total = total + probs[i].sum() + (layer.out_features if has_bias else 0)
        return total

    def export(self, example_input: Tensor | None = None) -> nn.Sequential:
        """Shorthand for :func:`l0_nn.export_pruned(self, example_input) <l0_nn.export_pruned>`.

        Examples
        --------
        >>> small = SparseMLP(4, 3, 2, init_sparsity=0.01).export()
        >>> type(small[1]).__name__
        'Linear'
        """
        exported = export_pruned(self, example_input)
        assert isinstance(exported, nn.Sequential)  # a chain of layers exports as a Sequential
        return exported

    # ---------------------------------------------- l0-python 0.6 aliases
    def get_l0_loss(self) -> Tensor:
        """Alias of :meth:`l0_penalty` (the l0-python 0.6 name).

        Examples
        --------
        >>> SparseMLP(4, 3, 2).get_l0_loss().ndim
        0
        """
        return self.l0_penalty()

    def get_l2_loss(self) -> Tensor:
        """Alias of :meth:`l2_penalty` (the l0-python 0.6 name).

        Examples
        --------
        >>> SparseMLP(4, 3, 2).get_l2_loss().ndim
        0
        """
        return self.l2_penalty()

    def get_sparsity_stats(self) -> dict[str, dict[str, float]]:
        """Per-layer sparsity statistics; see :func:`l0_nn.layer_sparsity_stats`.

        Examples
        --------
        >>> sorted(SparseMLP(4, 3, 2).get_sparsity_stats())
        ['fc1', 'fc2']
        """
        return layer_sparsity_stats(self)
