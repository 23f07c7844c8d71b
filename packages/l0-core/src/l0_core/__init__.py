"""l0-core: Hard Concrete gates, L0 penalties, temperature schedules and plugins.

Examples
--------
>>> from l0_core import HardConcrete, compute_l0_penalty
>>> gates = HardConcrete(n_items=100, temperature=0.25, init_prob_active=0.999)
>>> round(compute_l0_penalty(gates).item())
100
"""

from .controller import TargetSparsityController
from .factory import get_gate_class, make_gate
from .fused import HardConcreteWorkspace, fused_median_gates
from .gate import (
    Gate,
    GatedLayer,
    deterministic_gates,
    gate_temperature,
    is_gate,
    is_gated_layer,
    iter_gates,
    set_gate_temperature,
)
from .hard_concrete import HardConcrete
from .hard_concrete_math import (
    GAMMA,
    STRETCH,
    ZETA,
    hard_concrete_from_uniform,
    hard_concrete_median,
    hard_concrete_prob_active,
    hard_concrete_sample,
    log_alpha_for_prob_active,
    median_gate_limits,
    prob_active_for_init_mean,
    prob_active_for_log_alpha,
    resolve_init_prob_active,
    uniform_eps,
)
from .penalties import (
    PenaltyTracker,
    compute_l0_penalty,
    compute_l0l2_penalty,
    compute_l2_penalty,
    get_active_parameter_count,
    get_sparsity_stats,
    iter_gated_modules,
)
from .plugins import (
    L0PluginWarning,
    PluginInfo,
    available,
    get_plugin_manager,
    hookimpl,
    hookspec,
    list_plugins,
    lookup,
    register_plugin,
    unregister_plugin,
)
from .sparse import SparseOperator, as_sparse_operator, sparse_matvec
from .temperature import TemperatureScheduler, get_schedule, update_temperatures

__version__ = "0.1.0"

__all__ = [
    "GAMMA",
    "Gate",
    "GatedLayer",
    "HardConcrete",
    "HardConcreteWorkspace",
    "L0PluginWarning",
    "PenaltyTracker",
    "PluginInfo",
    "STRETCH",
    "SparseOperator",
    "TargetSparsityController",
    "TemperatureScheduler",
    "ZETA",
    "__version__",
    "as_sparse_operator",
    "available",
    "compute_l0_penalty",
    "compute_l0l2_penalty",
    "compute_l2_penalty",
    "deterministic_gates",
    "fused_median_gates",
    "gate_temperature",
    "get_active_parameter_count",
    "get_gate_class",
    "get_plugin_manager",
    "get_schedule",
    "get_sparsity_stats",
    "hard_concrete_from_uniform",
    "hard_concrete_median",
    "hard_concrete_prob_active",
    "hard_concrete_sample",
    "hookimpl",
    "hookspec",
    "is_gate",
    "is_gated_layer",
    "iter_gated_modules",
    "iter_gates",
    "list_plugins",
    "log_alpha_for_prob_active",
    "lookup",
    "make_gate",
    "median_gate_limits",
    "prob_active_for_init_mean",
    "prob_active_for_log_alpha",
    "register_plugin",
    "resolve_init_prob_active",
    "set_gate_temperature",
    "sparse_matvec",
    "uniform_eps",
    "unregister_plugin",
    "update_temperatures",
]
