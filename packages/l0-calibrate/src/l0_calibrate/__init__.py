"""l0-calibrate: sparse survey calibration with L0 (Hard Concrete) gates.

Examples
--------
>>> import numpy as np
>>> from l0_calibrate import SparseCalibrationWeights
>>> model = SparseCalibrationWeights(n_features=4, seed=0)
>>> model.get_active_weights()["count"]
4
"""

from l0_core.plugins import add_builtin_plugin as _add_builtin_plugin

from .callbacks import Checkpoint, EarlyStopping
from .distributed import ShardedCalibrationWeights, gather_weights, init_distributed
from .distributed_io import load_columns
from .distributed_launch import run_distributed
from .distributed_reducer import ColumnShard, RankLostError, all_reduce_sum
from .distributed_state import ShardCheckpoint, consolidate_state_dicts, shard_state_dict
from .fitting import FitDivergedError, InfeasibleTargetWarning
from .frontend import calibrate
from .losses import (
    BUILTIN_LOSSES,
    capped_relative_loss,
    get_loss,
    microcalibrate_loss,
    mse_loss,
    relative_loss,
)
from .methods import METHODS
from .result import (
    CalibrationResult,
    ShardedCalibrationResult,  # the same class: one result type (kept for old imports)
    TargetMissWarning,
    UnmetTargetWarning,
)
from .weights import SparseCalibrationWeights

_add_builtin_plugin("l0_calibrate.builtins")

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_LOSSES",
    "CalibrationResult",
    "Checkpoint",
    "ColumnShard",
    "EarlyStopping",
    "FitDivergedError",
    "InfeasibleTargetWarning",
    "METHODS",
    "RankLostError",
    "ShardCheckpoint",
    "ShardedCalibrationResult",
    "ShardedCalibrationWeights",
    "SparseCalibrationWeights",
    "TargetMissWarning",
    "UnmetTargetWarning",
    "__version__",
    "all_reduce_sum",
    "calibrate",
    "capped_relative_loss",
    "consolidate_state_dicts",
    "gather_weights",
    "get_loss",
    "init_distributed",
    "load_columns",
    "microcalibrate_loss",
    "mse_loss",
    "relative_loss",
    "run_distributed",
    "shard_state_dict",
]
