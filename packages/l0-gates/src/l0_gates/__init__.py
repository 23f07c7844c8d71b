"""l0-gates: selection gates that learn which samples and features matter.

Examples
--------
>>> import torch
>>> from l0_gates import SampleGate
>>> data = torch.rand(400, 3, generator=torch.Generator().manual_seed(0))
>>> selected, indices = SampleGate(n_samples=400, target_samples=40, seed=0).select_samples(data)
>>> selected.shape
torch.Size([40, 3])
"""

from .base import L0Gate
from .feature import FeatureGate
from .hybrid import HybridGate
from .moments import MomentTargets, moment_errors, moment_matrix, rake_weights
from .sample import SampleGate

__version__ = "0.1.0"

__all__ = [
    "FeatureGate",
    "HybridGate",
    "L0Gate",
    "MomentTargets",
    "SampleGate",
    "__version__",
    "moment_errors",
    "moment_matrix",
    "rake_weights",
]
