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
from typing import TypeVar

import torch
from torch import Tensor, nn

from ._export_ops import (
    ExportReport,
    IndexSelect,
    LayerCost,
    _as_plain,
    _channels,
    _cost,
    _default_example,
    _first_tensor,
    _kind,
    _layer_constants,
    _layer_requirement,
    _plain,
    _propagate_constants,
    _rebuild,
    _report,
    _slice_norm,
    _some,
    _weights,
)
from ._graph_export import export_graph
from .base import L0Layer, register_exporter

__all__ = ["ExportReport", "IndexSelect", "LayerCost", "export_pruned"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=nn.Module)


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
            assert example_input is not None  # a chain always has a default example
            return _export(chain, model, example_input)

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
        kind = kinds[i]
        if kind == "barrier":
            c = chans[i + 1]
            is_const.append(full(i + 1, False))
            const.append(None if c is None else torch.zeros(c, dtype=dtype, device=dev))
            continue
        cin, cout = _some(is_const[i]), _some(const[i])
        if kind in ("linear", "conv", "depthwise"):
            out_const, val = _layer_constants(kind, plain[i], weights[i], cin, cout)
            is_const.append(out_const)
            const.append(val)
        elif kind in ("channelwise", "norm"):
            v, m = _propagate_constants(module, cout, cin, shapes[i])
            is_const.append(m)
            const.append(torch.where(m, v, torch.zeros_like(v)))
        else:  # flatten
            s = shapes[i][2:].numel()
            is_const.append(cin.repeat_interleave(s))
            const.append(cout.repeat_interleave(s))

    # 3. backward: requirements
    req: list[Tensor | None] = [None] * (n + 1)
    req[n] = full(n, True)
    for i in range(n - 1, -1, -1):
        kind = kinds[i]
        r: Tensor | None
        if kind in ("linear", "conv", "depthwise"):
            r = _layer_requirement(
                kind,
                weights[i][0],
                _some(is_const[i]),
                _some(const[i]),
                _some(req[i + 1]),
                shapes[i],
                shapes[i + 1],
            )
        elif kind in ("channelwise", "norm"):
            r = _some(req[i + 1]).clone()
        elif kind == "flatten":
            r = _some(req[i + 1]).view(shapes[i][1], -1).any(1)
        else:
            r = full(i, True)
        if r is not None and not bool(r.any()):
            r[0] = True  # keep one channel so that no layer has zero size
        req[i] = r

    # 4. forward: rebuild
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    act = full(0, True)
    act_out: Tensor | None
    new: nn.Module
    costs: list[LayerCost] = []
    for i, (name, module) in enumerate(chain):
        kind = kinds[i]
        key = name.replace(".", "_")
        if kind in ("linear", "conv") and not bool(_some(req[i])[_some(act)].all()):
            # The layer reads fewer channels than arrive (e.g. the model's own inputs):
            # pick them, so that its weight loses those columns.
            layers[f"select_{key}"] = IndexSelect(_some(req[i])[_some(act)].nonzero().flatten())
            act = _some(req[i]).clone()
        if kind in ("linear", "conv", "depthwise"):
            new, act_out = _rebuild(
                plain[i],
                kind,
                weights[i],
                _some(act),
                _some(req[i + 1]),
                _some(is_const[i]),
                _some(const[i]),
            )
            costs.append(_cost(name, module, new, shapes[i + 1]))
        elif kind == "norm":
            new, act_out = _slice_norm(module, _some(act)), act
        elif kind == "channelwise":
            new, act_out = copy.deepcopy(module), act
        elif kind == "flatten":
            new = copy.deepcopy(module)
            act_out = _some(act).repeat_interleave(shapes[i][2:].numel())
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
    exported.export_report = report  # type: ignore[assignment]  # a plain attribute
    logger.info(
        "export_pruned: %d -> %d parameters, %d -> %d FLOPs per sample",
        report.params_before,
        report.params_after,
        report.flops_before,
        report.flops_after,
    )
    return exported


register_exporter(export_pruned)  # L0Layer.export() calls it; the layers never import us
