"""Sparse-matrix tools: l0-core's sparse operator and l0-nn's ``SparseL0Linear``.

l0-python 0.6 code such as ``from l0.sparse import SparseL0Linear`` keeps
working.

Examples
--------
>>> import numpy as np
>>> from l0.sparse import SparseOperator
>>> SparseOperator.from_any(np.eye(3)).shape
(3, 3)
"""

from ._compat import reexport

__all__ = reexport(globals(), "l0_core.sparse", ("l0_nn", ["SparseL0Linear"]))
