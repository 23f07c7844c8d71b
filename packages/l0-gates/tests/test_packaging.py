"""Installing l0-gates pulls neither pandas nor scipy, and importing it loads neither."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest


def test_runtime_dependencies_exclude_pandas_and_scipy():
    requires = importlib.metadata.requires("l0-gates") or []
    runtime = [r for r in requires if "extra ==" not in r]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in runtime}
    assert names == {"l0-core", "torch", "numpy"}


@pytest.mark.slow
def test_importing_the_package_loads_neither_pandas_nor_scipy():
    code = "import sys, l0_gates; print(sorted(m for m in ('pandas', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
