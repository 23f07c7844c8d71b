"""``export_pruned`` for models with their own ``forward`` (residual additions, concatenations).

The model is traced with :mod:`torch.fx` (gated layers and modules without
gated layers inside are kept whole as leaves), run once on the example input
to learn every tensor's shape, and then handled like a chain, node by node:

* dimension 1 of every tensor with at least two dimensions is its channel
  (feature) dimension;
* forward, *constants*: as for chains; an element-wise node (``a + b``,
  ``a * b``, activations, pooling, spatial means) is constant in a channel
  when all its per-channel inputs are, with the value it computes from them;
* backward, *requirements*: a tensor must keep a channel when **any** of its
  consumers reads it (the union over consumers). Element-wise nodes with
  several inputs (``a + b``) require the channels of their output from every
  input, so a channel leaves the producers of a residual sum only when it is
  removed (or a constant folded away) in every branch and after the sum;
* rebuild: every tensor keeps the channels it must; where a consumer needs
  fewer than its input carries (an identity shortcut that still feeds the
  next block, the model's own input), an :class:`~l0_nn.IndexSelect` picks
  them. Linear and convolution layers lose rows and columns as in a chain,
  batch norm is sliced, constants are folded into linear biases.

Any node that is not understood channel by channel (an unknown function,
``x.shape[1]``, a module called twice, a gated layer on a 3-D input, ...)
reads and writes whole tensors: it keeps every channel around it, so the
export stays exact. Tracing and the node kinds are in ``_graph_trace``; the
passes shared with the chain exporter in ``_export_ops``.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.node import Node, map_arg

from ._export_ops import (
    IndexSelect,
    LayerCost,
    _as_plain,
    _cost,
    _layer_constants,
    _layer_requirement,
    _plain,
    _propagate_constants,
    _rebuild,
    _slice_norm,
    _some,
    _weights,
)
from ._graph_trace import (
    _FALLBACK,
    _META_ATTRS,
    _META_METHODS,
    _arg,
    _copy_attr,
    _graph_default_example,
    _GraphNodes,
    _Recorder,
    _replay,
    _tensor_inputs,
    _trace,
)

__all__: list[str] = []


class _GraphExport(_GraphNodes):
    """The per-node bookkeeping of a traced model: kinds, constants, requirements, rebuild."""

    def __init__(
        self, model: nn.Module, gm: fx.GraphModule, values: dict[Node, Any], device: torch.device
    ) -> None:
        super().__init__(model, gm, values, device)
        self.weights: dict[Node, tuple[Tensor, Tensor | None]] = {}
        self.is_const: dict[Node, Tensor] = {}
        self.const: dict[Node, Tensor] = {}
        self.req: dict[Node, Tensor] = {}
        self.need: dict[Node, Tensor] = {}  # what a linear/conv layer itself reads
        self.keep: dict[Node, Tensor] = {}

    # --------------------------------------------------- 2. constants
    def constants(self) -> None:
        for n in self.nodes:
            if not self.tracked(n):
                continue
            kind, ins = self.kind[n], self.inputs[n]
            c = self.channels(n)
            dtype = self.values[n].dtype if self.values[n].is_floating_point() else torch.float32
            mask = torch.zeros(c, dtype=torch.bool, device=self.dev)
            val = torch.zeros(c, dtype=dtype, device=self.dev)
            if kind in ("linear", "conv", "depthwise"):
                module = _plain(self.modules[str(n.target)])
                self.weights[n] = _weights(module)
                mask, val = _layer_constants(
                    kind, module, self.weights[n], self.is_const[ins[0]], self.const[ins[0]]
                )
            elif kind in ("channelwise", "norm"):
                a = ins[0]
                v, m = _propagate_constants(
                    self.modules[str(n.target)], self.const[a], self.is_const[a],
                    self.values[a].shape,
                )  # fmt: skip
                mask, val = m, torch.where(m, v, torch.zeros_like(v))
            elif kind == "elementwise":
                mask, val = self._elementwise_constants(n, ins)
            elif kind == "flatten":
                a = ins[0]
                s = self.values[a].shape[2:].numel()
                mask = self.is_const[a].repeat_interleave(s)
                val = self.const[a].repeat_interleave(s)
            elif kind == "cat":
                mask = torch.cat([self.is_const[a] for a in ins])
                val = torch.cat([self.const[a].to(dtype) for a in ins])
            self.is_const[n], self.const[n] = mask, val

    def _elementwise_constants(self, n: Node, ins: list[Node]) -> tuple[Tensor, Tensor]:
        out = self.values[n]
        c = out.shape[1]
        none = (
            torch.zeros(c, dtype=torch.bool, device=self.dev),
            torch.zeros(c, dtype=out.dtype, device=self.dev),
        )
        if not out.is_floating_point():
            return none
        others = [a for a in _tensor_inputs(n, self.values) if a not in ins]
        if any(a.op != "get_attr" for a in others) or any(a.op == "get_attr" for a in ins):
            return none  # a data-dependent operand: nothing is constant
        mask = torch.ones(c, dtype=torch.bool, device=self.dev)
        subs: dict[Node, Tensor] = {}
        for a in ins:
            v = self.values[a]
            mask &= self.is_const[a]
            view = (1, c) + (1,) * (v.ndim - 2)
            subs[a] = self.const[a].to(v.dtype).view(view).expand(v.shape).clone()
        if not bool(mask.any()):
            return none
        try:
            y = _replay(n, self.values, subs)
        except Exception:
            return none
        if not isinstance(y, Tensor) or y.shape != out.shape:
            return none
        flat = y.detach().transpose(0, 1).reshape(c, -1)
        uniform = (flat.amax(1) == flat.amin(1)) & torch.isfinite(flat[:, 0])
        mask = mask & uniform
        return mask, torch.where(mask, flat[:, 0], torch.zeros_like(flat[:, 0]))

    # ------------------------------------------------ 3. requirements
    def requirements(self) -> None:
        for n in self.nodes:
            if self.tracked(n):
                self.req[n] = self.full(n, False)
        for n in reversed(self.nodes):
            kind, ins = self.kind[n], self.inputs[n]
            if self.tracked(n) and not bool(self.req[n].any()):
                self.req[n][0] = True  # keep one channel so that no layer has zero size
            req_out = self.req.get(n)
            if kind in ("linear", "conv", "depthwise"):
                a = ins[0]
                r = _layer_requirement(
                    kind, self.weights[n][0], self.is_const[a], self.const[a], _some(req_out),
                    self.values[a].shape, self.values[n].shape,
                )  # fmt: skip
                if not bool(r.any()):
                    r[0] = True
                self.need[n] = r
                self.req[a] |= r
            elif kind in ("channelwise", "norm", "elementwise"):
                for a in ins:
                    self.req[a] |= _some(req_out)
                for a in _tensor_inputs(n, self.values):
                    if a not in ins and self.tracked(a):
                        self.req[a][:] = True
            elif kind == "flatten":
                a = ins[0]
                self.req[a] |= _some(req_out).view(self.channels(a), -1).any(1)
            elif kind == "cat":
                start = 0
                for a in ins:
                    c = self.channels(a)
                    self.req[a] |= _some(req_out)[start : start + c]
                    start += c
            elif kind == "meta":
                if self._meta_reads_channels(n):
                    for a in ins:
                        if self.tracked(a):
                            self.req[a][:] = True
            else:  # barrier, output
                for a in ins:
                    if self.tracked(a):
                        self.req[a][:] = True

    def _meta_reads_channels(self, n: Node) -> bool:
        """Whether ``x.size(...)`` / ``x.shape`` is read at dimension 1 (the channels)."""
        ndim = self.values[n.args[0]].ndim if isinstance(n.args[0], Node) else 0
        if n.op == "call_method" and n.target == "size":
            d = _arg(n, 1, "dim")
            if isinstance(d, int):
                return d % max(ndim, 1) == 1
        elif n.op == "call_method" or _arg(n, 1, "name") != "shape":
            return False  # dim(), ndim, dtype, device
        for user in n.users:  # size() / shape: fine if only other dimensions are read
            if not (user.target is operator.getitem and isinstance(user.args[1], int)):
                return True
            if user.args[1] % max(ndim, 1) == 1:
                return True
        return False

    # ----------------------------------------------------- 4. rebuild
    def rebuild(self) -> tuple[fx.GraphModule, list[LayerCost]]:
        graph = fx.Graph()
        env: dict[Node, Node] = {}
        attrs: dict[str, Any] = {}
        costs: list[LayerCost] = []

        def select(a: Node, wanted: Tensor, user: Node) -> Node:
            have = self.keep[a]
            if torch.equal(have, wanted):
                return env[a]
            idx = wanted[have].nonzero().flatten()
            name = f"select_{a.name}_for_{user.name}"
            attrs[name] = IndexSelect(idx)
            return graph.call_module(name, (env[a],))

        def copy_node(n: Node, subs: dict[Node, Node] | None = None) -> Node:
            subs = subs or {}
            args = map_arg(n.args, lambda a: subs.get(a, env[a]))
            kwargs = map_arg(n.kwargs, lambda a: subs.get(a, env[a]))
            return graph.create_node(n.op, n.target, args, kwargs, name=n.name)  # type: ignore[arg-type]

        for n in self.nodes:
            kind, ins = self.kind[n], self.inputs[n]
            keep: Tensor | None = None
            if n.op == "placeholder":
                env[n] = graph.node_copy(n)
            elif n.op == "get_attr":
                name = f"attr_{n.name}"
                attrs[name] = _copy_attr(self.gm, str(n.target))
                env[n] = graph.get_attr(name)
            elif n.op == "output":
                env[n] = graph.output(map_arg(n.args[0], lambda a: env[a]))
            elif kind in ("linear", "conv", "depthwise"):
                a, module, target = ins[0], self.modules[str(n.target)], str(n.target)
                act, src = self.keep[a], env[a]
                if kind != "depthwise" and not bool(self.need[n][act].all()):
                    src, act = select(a, self.need[n], n), self.need[n]
                new, keep = _rebuild(
                    _plain(module),
                    kind,
                    self.weights[n],
                    act,
                    self.req[n],
                    self.is_const[a],
                    self.const[a],
                )
                attrs[target] = new
                costs.append(_cost(target, module, new, self.values[n].shape))
                env[n] = graph.create_node("call_module", target, (src,), {}, name=n.name)
            elif kind == "norm":
                a = ins[0]
                attrs[str(n.target)] = _slice_norm(self.modules[str(n.target)], self.keep[a])
                keep, env[n] = self.keep[a], copy_node(n)
            elif kind in ("channelwise", "flatten") and n.op == "call_module":
                attrs.setdefault(str(n.target), copy.deepcopy(self.modules[str(n.target)]))
                a = ins[0]
                keep = self.keep[a]
                if kind == "flatten":
                    keep = keep.repeat_interleave(self.values[a].shape[2:].numel())
                env[n] = copy_node(n)
            elif kind == "flatten":
                a = ins[0]
                keep = self.keep[a].repeat_interleave(self.values[a].shape[2:].numel())
                env[n] = graph.call_function(torch.flatten, (env[a], 1))
            elif kind == "elementwise":
                keep = self.keep[ins[0]].clone()
                for a in ins[1:]:
                    keep &= self.keep[a]
                subs = {a: select(a, keep, n) for a in ins}
                env[n] = copy_node(n, subs)
            elif kind == "cat":
                keep = torch.cat([self.keep[a] for a in ins])
                env[n] = copy_node(n)
            else:  # barrier, meta
                if n.op == "call_module":
                    target = str(n.target)
                    if target not in attrs:
                        attrs[target] = _as_plain(self.modules[target])
                    if isinstance(attrs[target], (nn.Linear, nn.Conv1d, nn.Conv2d)):
                        costs.append(
                            _cost(target, self.modules[target], attrs[target], self.values[n].shape)
                        )
                env[n] = copy_node(n)
            if self.tracked(n):
                self.keep[n] = keep if keep is not None else self.full(n, True)
        for node in reversed(list(graph.nodes)):  # size()/shape reads a rewritten view used
            if not node.users and (
                (node.op == "call_method" and node.target in _META_METHODS)
                or (node.target is getattr and _arg(node, 1, "name") in _META_ATTRS)
            ):
                graph.erase_node(node)
        name = f"Pruned{type(self.model).__name__}"
        return fx.GraphModule(attrs, graph, class_name=name), costs


def export_graph(
    model: nn.Module, example_input: Tensor | None, ref: Tensor
) -> tuple[fx.GraphModule, list[LayerCost]]:
    """Trace ``model`` and return its pruned GraphModule and the per-layer costs."""
    gm = _trace(model)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    if len(inputs) != 1:
        raise ValueError(
            f"export_pruned traces forward() with one tensor input, but "
            f"{type(model).__name__}.forward takes {len(inputs)} required inputs "
            f"({', '.join(str(n.target) for n in inputs)}); wrap the model in a module whose "
            f"forward(x) takes one tensor; {_FALLBACK}"
        )
    if example_input is None:
        example_input = _graph_default_example(gm, ref)
    recorder = _Recorder(gm)
    try:
        recorder.run(example_input)
    except Exception as exc:
        raise ValueError(
            f"running {type(model).__name__} on example_input of shape "
            f"{tuple(example_input.shape)} failed: {exc}; pass an input the model accepts"
        ) from exc
    ex = _GraphExport(model, gm, recorder.values, example_input.device)
    ex.classify()
    ex.constants()
    ex.requirements()
    exported, costs = ex.rebuild()
    return exported.eval(), costs
