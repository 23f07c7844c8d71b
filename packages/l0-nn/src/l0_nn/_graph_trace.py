"""Tracing for the graph exporter (``_graph_export``): the model as a torch.fx graph.

The model is traced with :mod:`torch.fx` (gated layers and modules without
gated layers inside are kept whole as leaves) and run once on the example
input to record every tensor. :class:`_GraphNodes` then gives each node its
channel-wise *kind*: a layer (``linear``, ``conv``, ``depthwise``,
``channelwise``, ``norm``), ``elementwise`` (output channel c reads only
channel c of each per-channel input), ``flatten``, ``cat`` along channels,
``meta`` (``x.shape``, ``x.size()``), or ``barrier`` (anything not
understood channel by channel, which keeps every channel around it).
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.node import Argument, Node, map_arg

from ._export_ops import _default_example, _kind, _plain
from .base import L0Layer

__all__: list[str] = []

_SUPPORTED = (
    "export_pruned supports nn.Sequential chains and models whose forward torch.fx can trace "
    "(residual additions, concatenations along channels, activations, pooling, batch norm, "
    "flatten)"
)
_FALLBACK = "prune_model(model) zeroes the removed weights in place instead"

# Functions and tensor methods whose output channel c reads only channel c of each input.
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.true_divide,
    torch.maximum, torch.minimum, torch.neg, torch.abs, torch.exp, torch.clamp, torch.clip,
    torch.relu, torch.sigmoid, torch.tanh,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, F.sigmoid, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout,
    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "abs", "exp", "clamp", "clip", "clamp_min", "clamp_max",
    "relu", "sigmoid", "tanh", "contiguous", "float", "double", "half", "bfloat16", "to",
    "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "tanh_", "clamp_", "clamp_min_",
}  # fmt: skip
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_FLATTENS = {"flatten", "view", "reshape"}
_CATS = {torch.cat, torch.concat}
_META_METHODS = {"dim", "ndimension", "size"}
_META_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda"}
_RESHAPED = ("linear", "conv", "depthwise", "norm")


class _Tracer(fx.Tracer):
    """Keeps gated layers and modules without gated layers inside whole; remembers failures."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, L0Layer):
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        if not any(isinstance(c, L0Layer) for c in m.modules()):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self.path_of_module(m), type(m).__name__)
            raise


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = (
            f"{tracer.failed_in[0]!r} ({tracer.failed_in[1]})"
            if tracer.failed_in
            else f"the forward of {type(model).__name__}"
        )
        raise TypeError(
            f"export_pruned could not trace {where} with torch.fx: {type(exc).__name__}: {exc}. "
            f"{_SUPPORTED}; remove Python control flow on tensor values (if/for on data, "
            f"len(x)) from forward, or export the traceable parts one by one; {_FALLBACK}"
        ) from exc
    return fx.GraphModule(model, graph)


def _tensor_inputs(n: Node, values: dict[Node, Any]) -> list[Node]:
    found: list[Node] = []

    def visit(a: Node) -> Node:
        if isinstance(values.get(a), Tensor) and a not in found:
            found.append(a)
        return a

    map_arg((n.args, n.kwargs), visit)
    return found


def _arg(n: Node, index: int, name: str, default: Any = None) -> Any:
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def _is_inplace(n: Node) -> bool:
    if n.op == "call_method" and str(n.target).endswith("_"):
        return True
    return bool(n.kwargs.get("inplace", False))


class _GraphNodes:
    """A traced model, its recorded values and the channel-wise kind of every node."""

    def __init__(
        self, model: nn.Module, gm: fx.GraphModule, values: dict[Node, Any], device: torch.device
    ) -> None:
        self.model = model
        self.dev = device
        self.gm = gm
        self.values = values
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())
        self.calls = Counter(n.target for n in self.nodes if n.op == "call_module")
        self.kind: dict[Node, str] = {}
        self.inputs: dict[Node, list[Node]] = {}  # the per-channel inputs of a node

    # ------------------------------------------------------------ helpers
    def tracked(self, n: object) -> TypeGuard[Node]:
        return (
            isinstance(n, Node)
            and isinstance(self.values.get(n), Tensor)
            and (self.values[n].ndim >= 2)
        )

    def channels(self, n: Node) -> int:
        return int(self.values[n].shape[1])

    def full(self, n: Node, value: bool) -> Tensor:
        return torch.full((self.channels(n),), value, dtype=torch.bool, device=self.dev)

    # ------------------------------------------------------- 1. node kinds
    def classify(self) -> None:
        for n in self.nodes:
            self.kind[n], self.inputs[n] = self._classify(n)

    def _classify(self, n: Node) -> tuple[str, list[Node]]:
        if n.op in ("placeholder", "get_attr"):
            return "source", []
        ins = _tensor_inputs(n, self.values)
        if n.op == "output":
            return "output", ins
        out = self.values[n]
        if n.op == "call_module":
            module = self.modules[str(n.target)]
            a = n.args[0] if len(n.args) == 1 and not n.kwargs else None
            if self.tracked(a) and self.tracked(n):
                kind = _kind(_plain(module), self.values[a].shape, out.shape)
                if kind in _RESHAPED and self.calls[n.target] > 1:
                    kind = "barrier"  # one module, several inputs: keep it whole
                return kind, [a]
            return "barrier", ins
        target = n.target
        name = target if n.op == "call_method" else getattr(target, "__name__", "")
        if (n.op == "call_method" and target in _META_METHODS) or (
            target is getattr and _arg(n, 1, "name") in _META_ATTRS
        ):
            return "meta", ins
        if not self.tracked(n):
            return "barrier", ins
        first = n.args[0] if n.args else None
        if (
            ((n.op == "call_method" and name in _FLATTENS) or target is torch.flatten)
            and self.tracked(first)
            and self._is_flatten(first, out)
        ):
            return "flatten", [first]
        if target in _CATS:
            return self._classify_cat(n, out)
        if (n.op == "call_method" and name in _REDUCTIONS) or target in (
            torch.mean,
            torch.sum,
            torch.amax,
            torch.amin,
        ):
            if self.tracked(first) and self._is_spatial_reduction(n, first, out) and len(ins) == 1:
                return "elementwise", [first]
            return "barrier", ins
        elementwise = (n.op == "call_method" and name in _ELEMENTWISE_METHODS) or (
            n.op == "call_function" and target in _ELEMENTWISE_FUNCTIONS
        )
        if not elementwise:
            return "barrier", ins
        aligned = [
            a for a in ins if self.values[a].ndim == out.ndim and self.channels(a) == out.shape[1]
        ]
        free = [a for a in ins if a not in aligned]
        if not aligned or any(not _channel_free(self.values[a], out.ndim) for a in free):
            return "barrier", ins
        if _is_inplace(n) and len(aligned) > 1:
            return "barrier", ins  # a select before a mutated input would lose the mutation
        return "elementwise", aligned

    def _is_flatten(self, a: Node, out: Tensor) -> bool:
        shape = self.values[a].shape
        return (
            len(shape) >= 2
            and out.ndim == 2
            and out.shape[0] == shape[0]
            and out.shape[1] == shape[1:].numel()
        )

    def _is_spatial_reduction(self, n: Node, a: Node, out: Tensor) -> bool:
        shape = self.values[a].shape
        dims = _arg(n, 1, "dim")
        if dims is None or isinstance(dims, Node):
            return False
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if not dims or not all(isinstance(d, int) for d in dims):
            return False
        if any(d % len(shape) < 2 for d in dims):
            return False
        return tuple(out.shape[:2]) == tuple(shape[:2]) and out.ndim in (2, len(shape))

    def _classify_cat(self, n: Node, out: Tensor) -> tuple[str, list[Node]]:
        parts = _arg(n, 0, "tensors")
        dim = _arg(n, 1, "dim", 0)
        ins = _tensor_inputs(n, self.values)
        if (
            isinstance(parts, (list, tuple))
            and isinstance(dim, int)
            and all(self.tracked(p) and self.values[p].ndim == out.ndim for p in parts)
            and dim % out.ndim == 1
            and len(set(parts)) == len(parts)
        ):
            return "cat", list(parts)
        return "barrier", ins


def _channel_free(value: Tensor, ndim: int) -> bool:
    """A tensor operand that is the same for every channel (a scalar, or size 1 at dim 1)."""
    return value.numel() == 1 or (value.ndim == ndim and value.shape[1] == 1)


def _copy_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, nn.Parameter):
        return nn.Parameter(obj.detach().clone(), requires_grad=obj.requires_grad)
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    return copy.deepcopy(obj)


def _replay(n: Node, values: dict[Node, Any], subs: dict[Node, Tensor]) -> Any:
    def value(a: Node) -> Argument:
        return subs[a] if a in subs else values[a]

    args = map_arg(n.args, value)
    kwargs = map_arg(n.kwargs, value)
    if n.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(n.target))(*rest, **kwargs)
    return n.target(*args, **kwargs)  # type: ignore[operator]


def _graph_default_example(gm: fx.GraphModule, ref: Tensor) -> Tensor:
    """A zero input when the traced forward starts with a linear layer (as for chains)."""
    modules = dict(gm.named_modules())
    leading: list[tuple[str, nn.Module]] = []
    prev: Node | None = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if prev is None:
                prev = n
            continue
        if n.op != "call_module" or not n.args or n.args[0] is not prev:
            break
        leading.append((str(n.target), modules[str(n.target)]))
        prev = n
    return _default_example(leading, ref)
