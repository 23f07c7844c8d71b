"""The passes shared by the chain exporter (``export``) and the graph exporter (``_graph_export``).

Both read gated layers through :meth:`l0_nn.L0Layer.to_plain`, never through their classes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from l0_core import is_gate, is_gated_layer
from torch import Tensor, nn

from .base import L0Layer

__all__ = ["ExportReport", "IndexSelect", "LayerCost"]


def _some(mask: Tensor | None) -> Tensor:
    """A channel mask that the pass needs; every layer it is asked for has a channel axis."""
    if mask is None:  # pragma: no cover - the classification makes this impossible
        raise RuntimeError("export_pruned: a channel mask is missing; please report this model")
    return mask


_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOLS_1D = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class IndexSelect(nn.Module):
    """Keep the given indices along dimension 1 (the inputs an exported model still reads).

    Parameters
    ----------
    index : Tensor
        1-D integer tensor of the indices to keep (stored as a buffer).

    Examples
    --------
    >>> IndexSelect(torch.tensor([0, 2]))(torch.arange(6.0).view(2, 3)).tolist()
    [[0.0, 2.0], [3.0, 5.0]]
    """

    index: Tensor

    def __init__(self, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).flatten().clone())

    def forward(self, input: Tensor) -> Tensor:
        """Return ``input.index_select(1, index)``.

        Examples
        --------
        >>> IndexSelect(torch.tensor([1]))(torch.ones(2, 3)).shape
        torch.Size([2, 1])
        """
        return input.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"keep={self.index.numel()}"


@dataclass(frozen=True)
class LayerCost:
    """Size of one module before (dense, ungated) and after export.

    ``flops`` are per sample: ``2 x`` the multiply-accumulates of linear and
    convolution layers (bias additions, activations and pooling are not
    counted).

    Examples
    --------
    >>> import torch
    >>> from l0_nn import SparseMLP, export_pruned
    >>> model = SparseMLP(8, [16], 2).eval()
    >>> exported = export_pruned(model)
    >>> cost = exported.export_report.layers[0]
    >>> cost.params_after <= cost.params_before
    True
    """

    name: str
    kind: str
    shape_before: tuple[int, int]
    shape_after: tuple[int, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_pruned` removed.

    Attributes
    ----------
    layers : tuple of LayerCost
        One row per linear/convolution layer (``shape`` is ``(in, out)``
        features or channels).
    params_before, params_after : int
        Parameters of the dense equivalent of the gated model (gate logits
        excluded) and of the exported model.
    flops_before, flops_after : int
        FLOPs per sample, counted with the exported shapes: a layer whose
        inputs were removed upstream is counted with its reduced input.
    gated_active_params : int
        What :func:`l0_core.get_active_parameter_count` reports for the gated
        model: each layer counted with its own gates only.

    Examples
    --------
    >>> from l0_nn import SparseMLP, export_pruned
    >>> report = export_pruned(SparseMLP(4, 3, 2, init_sparsity=0.01)).export_report
    >>> report.params_before == report.params_after == 23
    True
    """

    layers: tuple[LayerCost, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    gated_active_params: int

    @property
    def param_fraction(self) -> float:
        """``params_after / params_before``."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def flop_fraction(self) -> float:
        """``flops_after / flops_before``."""
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    def to_markdown(self) -> str:
        """A markdown table of the layers and totals.

        Examples
        --------
        >>> from l0_nn import L0Linear, export_pruned
        >>> print(export_pruned(L0Linear(3, 2, init_sparsity=0.01)).export_report.to_markdown())
        ... # doctest: +NORMALIZE_WHITESPACE
        | layer | kind | in x out before | in x out after | params before | params after | FLOPs before | FLOPs after |
        |---|---|---|---|---|---|---|---|
        | layer | L0Linear | 3 x 2 | 3 x 2 | 8 | 8 | 12 | 12 |
        | **total** | | | | 8 | 8 | 12 | 12 |
        """
        lines = [
            "| layer | kind | in x out before | in x out after | params before | params after "
            "| FLOPs before | FLOPs after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.layers:
            lines.append(
                f"| {r.name} | {r.kind} | {r.shape_before[0]} x {r.shape_before[1]} "
                f"| {r.shape_after[0]} x {r.shape_after[1]} | {r.params_before} | {r.params_after} "
                f"| {r.flops_before} | {r.flops_after} |"
            )
        lines.append(
            f"| **total** | | | | {self.params_before} | {self.params_after} "
            f"| {self.flops_before} | {self.flops_after} |"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


# ------------------------------------------------------------------ the chain
def _plain(module: nn.Module) -> nn.Module:
    """What the exporter reasons about: a gated layer's plain equivalent, other modules as they are."""
    return module.to_plain() if isinstance(module, L0Layer) else module


def _weights(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of a plain linear/conv module (see :func:`_plain`), detached copies."""
    bias = module.bias.detach().clone() if module.bias is not None else None
    return module.weight.detach().clone(), bias


def _kind(module: nn.Module, shape_in: torch.Size, shape_out: torch.Size) -> str:
    nd_in, nd_out = len(shape_in), len(shape_out)
    if isinstance(module, nn.Linear):
        return "linear" if nd_in == 2 else "barrier"
    conv_nd = _conv_dims(module)
    if conv_nd:
        groups, c_in, c_out = module.groups, shape_in[1], shape_out[1]
        if nd_in != conv_nd + 2:
            return "barrier"
        if groups == 1:
            return "conv"
        if groups == c_in and c_out % c_in == 0:
            return "depthwise"
        return "barrier"
    if nd_in not in (2, 3, 4) or nd_out != nd_in:
        if (
            isinstance(module, nn.Flatten)
            and nd_in in (3, 4)
            and nd_out == 2
            and shape_out[0] == shape_in[0]
            and shape_out[1] == shape_in[1:].numel()
        ):
            return "flatten"
        return "barrier"
    if isinstance(module, nn.Flatten):
        return "channelwise"  # 2-D in, 2-D out: nothing to flatten
    if isinstance(module, nn.PReLU):
        return "channelwise" if module.num_parameters == 1 else "barrier"
    if (
        isinstance(module, _ELEMENTWISE)
        or (isinstance(module, _POOLS) and nd_in == 4)
        or (isinstance(module, _POOLS_1D) and nd_in == 3)
    ):
        return "channelwise"
    if (
        isinstance(module, _NORMS)
        and module.track_running_stats
        and module.running_mean is not None
    ):
        return "norm"
    return "barrier"


def _conv_dims(module: nn.Module) -> int:
    """2 for a 2-D convolution, 1 for a 1-D one (with zero padding), else 0."""
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return 2
    if isinstance(module, nn.Conv1d) and module.padding_mode == "zeros":
        return 1
    return 0


def _channels(shape: torch.Size) -> int | None:
    return int(shape[1]) if len(shape) in (2, 3, 4) else None


def _default_example(chain: list[tuple[str, nn.Module]], ref: Tensor) -> Tensor:
    for _name, module in chain:
        module = _plain(module)
        if isinstance(module, nn.Linear):
            return ref.new_zeros((1, module.in_features))
        if not isinstance(module, (nn.Flatten, *_ELEMENTWISE, *_NORMS)):
            break
    raise ValueError(
        "export_pruned needs example_input for this model (its first layer is not a linear "
        "layer, so the input shape is unknown); pass one sample, e.g. "
        "export_pruned(model, example_input=torch.zeros(1, 3, 32, 32))"
    )


def _first_tensor(model: nn.Module) -> Tensor:
    for t in model.parameters():
        return t.detach()
    for buf in model.buffers():
        if buf.is_floating_point():
            return buf.detach()
    return torch.zeros(())


@torch.no_grad()
def _propagate_constants(module: nn.Module, const: Tensor, is_const: Tensor, shape: torch.Size):
    """Push per-channel constants through a channel-wise module; drop the non-uniform ones."""
    c = const.clone()
    if len(shape) > 2:
        ones = (1,) * (len(shape) - 2)
        x = c.view(1, -1, *ones).expand(1, c.numel(), *shape[2:]).contiguous()
    else:
        x = c.view(1, -1)
    y = module(x)
    flat = y.reshape(1, y.shape[1], -1)
    uniform = (flat.amax(-1) == flat.amin(-1)).reshape(-1) & torch.isfinite(flat[..., 0]).reshape(
        -1
    )
    return flat[0, :, 0].clone(), is_const & uniform


def _layer_constants(
    kind: str,
    module: nn.Module,
    wb: tuple[Tensor, Tensor | None],
    cin: Tensor,
    cout: Tensor,
) -> tuple[Tensor, Tensor]:
    """Which outputs of a linear/conv layer are constant, and their values (0 elsewhere)."""
    w, b = wb
    bias = b if b is not None else w.new_zeros(w.shape[0])
    if kind == "linear":
        alive = ~cin
        out_const = (w[:, alive] == 0).all(1)
        val = bias + w[:, cin] @ cout[cin].to(w.dtype)
    else:
        alive = ~cin | (cout != 0)
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))  # kind "conv"/"depthwise"
        groups = module.groups
        per = w.shape[1]
        nz = (w != 0).flatten(2).any(2)  # (out, in/groups)
        alive_g = alive.view(groups, per).repeat_interleave(w.shape[0] // groups, 0)
        out_const = ~(nz & alive_g).any(1)
        val = bias.clone()
    return out_const, torch.where(out_const, val, torch.zeros_like(val))


def _layer_requirement(
    kind: str,
    w: Tensor,
    in_const: Tensor,
    in_val: Tensor,
    out_req: Tensor,
    shape_in: torch.Size,
    shape_out: torch.Size,
) -> Tensor:
    """The inputs a linear/conv layer reads to compute its required outputs ``out_req``."""
    if kind == "linear":
        return ~in_const & (w[out_req] != 0).any(0)
    if kind == "conv":
        alive = ~in_const | (in_val != 0)
        return alive & (w[out_req] != 0).transpose(0, 1).flatten(1).any(1)
    mult = shape_out[1] // shape_in[1]  # depthwise
    return out_req.view(-1, mult).any(1)


# ------------------------------------------------------------------- export
@torch.no_grad()
def _rebuild(
    module: nn.Module,
    kind: str,
    wb: tuple[Tensor, Tensor | None],
    act_in: Tensor,
    out_req: Tensor,
    in_const: Tensor,
    in_val: Tensor,
) -> tuple[nn.Module, Tensor]:
    w, b = wb
    factory: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    cols = act_in.nonzero().flatten()
    if kind == "depthwise":
        mult = w.shape[0] // act_in.numel()
        act_out = act_in.repeat_interleave(mult)
    else:
        act_out = out_req
    rows = act_out.nonzero().flatten()
    if kind == "linear":
        new_w = w[rows][:, cols]
        folded = in_const & ~act_in
        shift = w[rows][:, folded] @ in_val[folded].to(w.dtype)
        new_b = b[rows] + shift if b is not None else (shift if bool((shift != 0).any()) else None)
        new: nn.Module = nn.Linear(cols.numel(), rows.numel(), bias=new_b is not None, **factory)
    else:
        groups = cols.numel() if kind == "depthwise" else 1
        new_w = w[rows] if kind == "depthwise" else w[rows][:, cols]
        new_b = None if b is None else b[rows]
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))  # kind "conv"/"depthwise"
        conv: Any = nn.Conv1d if new_w.ndim == 3 else nn.Conv2d
        new = conv(
            cols.numel(),
            rows.numel(),
            tuple(new_w.shape[2:]),
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=groups,
            bias=new_b is not None,
            **factory,
        )
    new.weight.copy_(new_w)
    if new_b is not None:
        new.bias.copy_(new_b)
    return new, act_out


def _slice_norm(module: nn.Module, act: Tensor) -> nn.Module:
    idx = act.nonzero().flatten()
    new = copy.deepcopy(module)
    assert isinstance(new, (nn.BatchNorm1d, nn.BatchNorm2d))  # kind "norm"
    new.num_features = int(idx.numel())
    for pname in ("weight", "bias"):
        p = getattr(module, pname)
        if p is not None:
            setattr(new, pname, nn.Parameter(p.detach()[idx].clone()))
    for bname in ("running_mean", "running_var"):
        new.register_buffer(bname, getattr(module, bname)[idx].clone())
    return new


def _as_plain(module: nn.Module) -> nn.Module:
    """A module kept whole: gated layers become their plain equivalents."""
    return module.to_plain() if isinstance(module, L0Layer) else copy.deepcopy(module)


def _flops(module: nn.Module, out_shape: torch.Size) -> int:
    module = _plain(module)
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    weight = module.weight
    spatial = int(out_shape[2:].numel()) if len(out_shape) > 2 else 1
    return 2 * int(weight.numel()) * spatial


def _io(module: nn.Module) -> tuple[int, int]:
    module = _plain(module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    assert isinstance(module, (nn.Conv1d, nn.Conv2d)), type(module)  # costs are for linear/conv
    return module.in_channels, module.out_channels


def _cost(name: str, old: nn.Module, new: nn.Module, out_shape: torch.Size) -> LayerCost:
    kind = type(old).__name__
    return LayerCost(
        name=name,
        kind=kind,
        shape_before=_io(old),
        shape_after=_io(new),
        params_before=_count(old, active=False),
        params_after=sum(p.numel() for p in new.parameters()),
        flops_before=_flops(old, out_shape),
        flops_after=_flops(new, out_shape),
    )


def _count(module: nn.Module, active: bool) -> int:
    """Dense (``active=False``) or own-gates-active parameter count, gate logits excluded."""
    if isinstance(module, L0Layer) or (
        is_gated_layer(module) and not any(isinstance(m, L0Layer) for m in module.modules())
    ):
        return int(module.active_parameter_count() if active else module.parameter_count())
    if is_gate(module):
        return 0
    own = sum(p.numel() for p in module.parameters(recurse=False))
    return own + sum(_count(c, active) for c in module.children())


def _report(model: nn.Module, exported: nn.Module, costs: list[LayerCost]) -> ExportReport:
    return ExportReport(
        layers=tuple(costs),
        params_before=_count(model, active=False),
        params_after=sum(p.numel() for p in exported.parameters()),
        flops_before=sum(c.flops_before for c in costs),
        flops_after=sum(c.flops_after for c in costs),
        gated_active_params=_count(model, active=True),
    )
