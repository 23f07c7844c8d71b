"""The calibration methods as a table: ``METHODS[name]`` -> options type and ``run``.

Each method is one module with an options dataclass (its defaults, written
once) and ``run(problem, options, reducer) -> Solution``:

* ``"select"`` (:mod:`.select`): gate training picks ``target_count``
  households, a refinement exchanges them, the exact polish re-solves their
  weights; one process.
* ``"gates"`` (:mod:`.gates`): :class:`~l0_calibrate.SparseCalibrationWeights`
  on the fused gate engine (then the same polish); in one process or
  column-sharded over a process group.

Examples
--------
>>> list(METHODS)
['select', 'gates']
>>> METHODS["gates"].options().epochs
1000
"""

from __future__ import annotations

from . import gates, select
from .base import Method, MethodOptions, Solution
from .gates import GatesOptions
from .select import SelectOptions

__all__ = ["METHODS", "GatesOptions", "Method", "MethodOptions", "SelectOptions", "Solution"]

#: Method name -> entry (``select`` first: it is the default with a ``target_count``).
METHODS: dict[str, Method] = {
    "select": Method("select", SelectOptions, select.run, shards=False),
    "gates": Method("gates", GatesOptions, gates.run, shards=True),
}
