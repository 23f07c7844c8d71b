"""``export_pruned``: a plain, physically smaller ``nn.Sequential`` from a gated model.

The model is read as a chain of modules (nested ``nn.Sequential`` containers
are flattened). Two passes decide which channels (features of a 2-D
activation, channels of a 4-D one) every intermediate tensor keeps:

* forward, *constants*: a channel is constant when the gates cut every
  path into it (for example a neuron whose gated row is zero); its value
  (the gated bias, pushed through activations, batch norm and pooling) is
  recorded;
* backward, *requirements*: a channel is needed when a kept output of the
  next layer reads it with a non-zero weight and it is not a constant that
  can be folded into that layer's bias (a constant zero is never needed).

Then every layer is rebuilt with only the rows and columns that remain;
constants are folded into the next linear layer's bias. Modules that are not
channel-wise (softmax, layer norm, custom modules) are copied unchanged and
keep every channel around them, so the export is always exact.

Models that are not a chain (gated layers inside a custom ``forward``:
residual blocks, concatenations) are traced with torch.fx and handled node by
node in ``_graph_export``, with the same passes.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

import torch
from l0_core import is_gate, is_gated_layer
from torch import Tensor, nn

from .base import L0Layer, register_exporter

__all__ = ["ExportReport", "IndexSelect", "LayerCost", "export_pruned"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=nn.Module)

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
def _chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out.extend(_chain(child, f"{prefix}.{name}" if prefix else name))
        return out
    if not isinstance(model, L0Layer) and any(isinstance(m, L0Layer) for m in model.modules()):
        raise TypeError(
            f"export_pruned follows nn.Sequential chains, but {prefix or 'the model'} "
            f"({type(model).__name__}) holds gated layers inside its own forward(); build that "
            "part as an nn.Sequential (or SparseMLP), or export its Sequential parts one by one"
        )
    return [(prefix or "layer", model)]


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
    for t in model.buffers():
        if t.is_floating_point():
            return t.detach()
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
def export_pruned(model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
    """Return a plain model with the removed neurons and channels physically gone.

    Gated layers (:class:`~l0_nn.L0Linear`, :class:`~l0_nn.L0Conv2d`,
    :class:`~l0_nn.L0DepthwiseConv2d`, :class:`~l0_nn.L0Conv1d`) become
    :class:`torch.nn.Linear`, :class:`torch.nn.Conv2d` and
    :class:`torch.nn.Conv1d` holding the eval-mode gated weights, with the
    rows/filters of removed outputs and the columns/input channels of
    removed inputs deleted; a layer downstream of a removed neuron or
    channel loses the matching inputs (across activations, batch norm,
    pooling, dropout and ``Flatten``). When a layer no longer reads some of
    the channels that reach it and nothing upstream can drop them (the
    model's own input features, say), an :class:`IndexSelect` before it
    picks the ones it reads, so the export still takes the original input.
    In eval mode the result computes the same function as ``model`` (up to
    float rounding).

    A model with its own ``forward`` (residual blocks, concatenations) is
    traced with :mod:`torch.fx` and exported as a
    :class:`torch.fx.GraphModule` of plain torch modules. The rule at a sum
    ``a + b`` (and at other element-wise ops of several tensors): the sum
    keeps a channel when anything after it reads it, and then both ``a``
    and ``b`` keep it, so a channel leaves a residual stream only when it is
    removed in every branch that reaches the sum (or the head stops reading
    it). Concatenations along channels join the kept channels of their
    parts. A removed channel that batch norm turns into a non-zero constant
    is folded into the next linear layer, but a convolution with zero
    padding keeps reading it (the constant is not uniform at the border).
    Operations that are not channel-wise (unknown functions, reading
    ``x.shape[1]``, a module called twice) keep every channel around them,
    so the export stays exact.

    Parameters
    ----------
    model : torch.nn.Module
        A gated layer, an ``nn.Sequential`` chain (nested Sequentials and
        :class:`~l0_nn.SparseMLP` included), or a module whose
        ``forward(x)`` torch.fx can trace. Not modified.
    example_input : Tensor, optional
        One input batch, used to learn the shapes. Needed unless the first
        layer is linear.

    Returns
    -------
    torch.nn.Module
        For a chain, a ``torch.nn.Sequential``; otherwise a
        ``torch.fx.GraphModule`` (submodules keep the model's names, e.g.
        ``exported.block1.conv1``). In eval mode, on the model's device and
        dtype. Its attribute ``export_report`` (an :class:`ExportReport`)
        gives parameters and FLOPs before and after.

    Raises
    ------
    TypeError
        If ``model`` is not a module, or its ``forward`` cannot be traced
        with torch.fx (the message names the module; make the forward
        traceable, or use :func:`~l0_nn.prune_model`, which zeroes the
        removed weights in place).
    ValueError
        If the input shape cannot be inferred and ``example_input`` is
        missing, if the model fails on ``example_input``, or if ``forward``
        takes more than one tensor input.

    Examples
    --------
    >>> from l0_nn import SparseMLP
    >>> model = SparseMLP(10, [20, 20], 3, generator=torch.Generator().manual_seed(0))
    >>> with torch.no_grad(): _ = model.fc2.gates.log_alpha[:15].fill_(-10.0)  # drop 15 neurons
    >>> small = export_pruned(model)
    >>> small.fc1.out_features, small.fc2.in_features
    (5, 5)
    >>> x = torch.randn(4, 10)
    >>> torch.allclose(small(x), model.eval()(x), atol=1e-6)
    True
    >>> small.export_report.params_after < small.export_report.params_before
    True

    A residual block: channels removed inside it disappear, the sum keeps
    what either branch still uses.

    >>> from l0_nn import L0Conv2d
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv1 = L0Conv2d(4, 6, 3, padding=1)
    ...         self.conv2 = L0Conv2d(6, 4, 3, padding=1)
    ...     def forward(self, x):
    ...         return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)
    >>> block = Block()
    >>> with torch.no_grad(): _ = block.conv1.gates.log_alpha[:2].fill_(-10.0)  # 2 of 6 off
    >>> small = export_pruned(block, example_input=torch.zeros(1, 4, 8, 8))
    >>> small.conv1.out_channels, small.conv2.in_channels, small.conv2.out_channels
    (4, 4, 4)
    >>> x = torch.randn(2, 4, 8, 8)
    >>> torch.allclose(small(x), block.eval()(x), atol=1e-5)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        chain: list[tuple[str, nn.Module]] | None = _chain(model)
    except TypeError:
        chain = None  # gated layers inside a custom forward(): trace it with torch.fx
    if example_input is None:
        if chain is not None:
            example_input = _default_example(chain, _first_tensor(model))
    elif not isinstance(example_input, Tensor):
        raise TypeError(
            f"example_input must be a torch.Tensor, got {type(example_input).__name__}; "
            "pass one batch, e.g. torch.zeros(1, 3, 32, 32)"
        )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if chain is not None:
            return _export(chain, model, example_input)
        from ._graph_export import export_graph

        exported, costs = export_graph(model, example_input, _first_tensor(model))
        return _finish(model, exported, costs)
    finally:
        for m, mode in modes:
            m.training = mode


def _export(chain: list[tuple[str, nn.Module]], model: nn.Module, example: Tensor) -> nn.Sequential:
    # 1. shapes
    shapes = [example.shape]
    x = example
    for name, module in chain:
        try:
            x = module(x)
        except Exception as exc:
            raise ValueError(
                f"running the chain on example_input of shape {tuple(example.shape)} failed at "
                f"{name!r} ({type(module).__name__}): {exc}; pass an input the model accepts"
            ) from exc
        shapes.append(x.shape)
    n = len(chain)
    plain = [_plain(m) for _, m in chain]
    kinds = [_kind(m, shapes[i], shapes[i + 1]) for i, m in enumerate(plain)]
    chans = [_channels(s) for s in shapes]
    weights: dict[int, tuple[Tensor, Tensor | None]] = {
        i: _weights(m) for i, m in enumerate(plain) if kinds[i] in ("linear", "conv", "depthwise")
    }
    dev = example.device
    dtype = next((w.dtype for w, _ in weights.values()), example.dtype)

    def full(p: int, value: bool) -> Tensor | None:
        c = chans[p]
        return None if c is None else torch.full((c,), value, dtype=torch.bool, device=dev)

    # 2. forward: constants
    is_const: list[Tensor | None] = [full(0, False)]
    const: list[Tensor | None] = [
        None if chans[0] is None else torch.zeros(chans[0], dtype=dtype, device=dev)
    ]
    for i, (_, module) in enumerate(chain):
        kind, cin, cout = kinds[i], is_const[i], const[i]
        if kind in ("linear", "conv", "depthwise"):
            out_const, val = _layer_constants(kind, plain[i], weights[i], cin, cout)
            is_const.append(out_const)
            const.append(val)
        elif kind in ("channelwise", "norm"):
            v, m = _propagate_constants(module, cout, cin, shapes[i])
            is_const.append(m)
            const.append(torch.where(m, v, torch.zeros_like(v)))
        elif kind == "flatten":
            s = shapes[i][2:].numel()
            is_const.append(cin.repeat_interleave(s))
            const.append(cout.repeat_interleave(s))
        else:
            is_const.append(full(i + 1, False))
            const.append(
                None if chans[i + 1] is None else torch.zeros(chans[i + 1], dtype=dtype, device=dev)
            )

    # 3. backward: requirements
    req: list[Tensor | None] = [None] * (n + 1)
    req[n] = full(n, True)
    for i in range(n - 1, -1, -1):
        kind, out_req, module = kinds[i], req[i + 1], chain[i][1]
        if kind in ("linear", "conv", "depthwise"):
            r = _layer_requirement(
                kind, weights[i][0], is_const[i], const[i], out_req, shapes[i], shapes[i + 1]
            )
        elif kind in ("channelwise", "norm"):
            r = out_req.clone()
        elif kind == "flatten":
            r = out_req.view(shapes[i][1], -1).any(1)
        else:
            r = full(i, True)
        if r is not None and not bool(r.any()):
            r[0] = True  # keep one channel so that no layer has zero size
        req[i] = r

    # 4. forward: rebuild
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    act = full(0, True)
    costs: list[LayerCost] = []
    for i, (name, module) in enumerate(chain):
        kind = kinds[i]
        key = name.replace(".", "_")
        if kind in ("linear", "conv") and not bool(req[i][act].all()):
            # The layer reads fewer channels than arrive (e.g. the model's own inputs):
            # pick them, so that its weight loses those columns.
            layers[f"select_{key}"] = IndexSelect(req[i][act].nonzero().flatten())
            act = req[i].clone()
        if kind in ("linear", "conv", "depthwise"):
            new, act_out = _rebuild(
                plain[i], kind, weights[i], act, req[i + 1], is_const[i], const[i]
            )
            costs.append(_cost(name, module, new, shapes[i + 1]))
        elif kind == "norm":
            new, act_out = _slice_norm(module, act), act
        elif kind == "channelwise":
            new, act_out = copy.deepcopy(module), act
        elif kind == "flatten":
            new, act_out = copy.deepcopy(module), act.repeat_interleave(shapes[i][2:].numel())
        else:
            new, act_out = _as_plain(module), full(i + 1, True)
            if isinstance(new, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                costs.append(_cost(name, module, new, shapes[i + 1]))
        layers[key] = new
        act = act_out
    return _finish(model, nn.Sequential(layers).eval(), costs)


def _finish(model: nn.Module, exported: _M, costs: list[LayerCost]) -> _M:
    """Attach the :class:`ExportReport` to ``exported`` and log the totals."""
    report = _report(model, exported, costs)
    exported.export_report = report  # type: ignore[attr-defined]
    logger.info(
        "export_pruned: %d -> %d parameters, %d -> %d FLOPs per sample",
        report.params_before,
        report.params_after,
        report.flops_before,
        report.flops_after,
    )
    return exported


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
    factory = {"device": w.device, "dtype": w.dtype}
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
        conv = nn.Conv1d if new_w.ndim == 3 else nn.Conv2d
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
    new.num_features = idx.numel()
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


register_exporter(export_pruned)  # L0Layer.export() calls it; the layers never import us
