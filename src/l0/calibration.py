"""``from l0.calibration import SparseCalibrationWeights``: the import path of l0-python 0.6.2.

Re-exports l0-calibrate's public API so code written for the published
package (policyengine-us-data uses exactly this import) runs unchanged.

Examples
--------
>>> from l0.calibration import SparseCalibrationWeights
>>> SparseCalibrationWeights(3).get_active_weights()["count"] >= 0
True
"""

from l0_calibrate import *  # noqa: F401,F403
from l0_calibrate import __all__ as _all

__all__ = [name for name in _all if not name.startswith("__")]
