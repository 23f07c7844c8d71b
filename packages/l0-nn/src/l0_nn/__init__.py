"""l0-nn: neural-network layers with L0 gates that learn which neurons and channels they need.

Gated layers (:class:`L0Linear`, :class:`L0Conv2d`, :class:`L0DepthwiseConv2d`,
:class:`L0Conv1d`, the ready :class:`SparseMLP`) train with l0-core's penalties, temperature
schedules and target-sparsity controller; :func:`prune_model` zeroes what the
gates removed and :func:`export_pruned` returns a plain, physically smaller
``nn.Sequential`` (a ``torch.fx.GraphModule`` for residual networks).
:class:`SparseL0Linear` is L0 regression on sparse inputs.

Examples
--------
>>> import torch
>>> from l0_nn import SparseMLP, export_pruned
>>> model = SparseMLP(64, [300, 100], 10, generator=torch.Generator().manual_seed(0))
>>> export_pruned(model).export_report.params_after
50610
"""

from .base import L0Layer
from .conv import L0Conv2d, L0DepthwiseConv2d
from .conv1d import L0Conv1d
from .export import ExportReport, IndexSelect, LayerCost, export_pruned
from .linear import L0Linear
from .mlp import SparseMLP
from .prune import prune_model
from .sparse_linear import SparseL0Linear
from .training import gate_parameters, layer_sparsity_stats, param_groups, weight_parameters

__version__ = "0.1.0"

__all__ = [
    "ExportReport",
    "IndexSelect",
    "L0Conv1d",
    "L0Conv2d",
    "L0DepthwiseConv2d",
    "L0Layer",
    "L0Linear",
    "LayerCost",
    "SparseL0Linear",
    "SparseMLP",
    "export_pruned",
    "gate_parameters",
    "layer_sparsity_stats",
    "param_groups",
    "prune_model",
    "weight_parameters",
]
