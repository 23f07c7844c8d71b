"""Installing l0-gates pulls neither pandas nor scipy, and importing it loads neither."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_runtime_dependencies_exclude_pandas_and_scipy():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    names = {d.split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    assert names == {"l0-core", "torch", "numpy"}


def test_importing_the_package_loads_neither_pandas_nor_scipy():
    code = "import sys, l0_gates; print(sorted(m for m in ('pandas', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
