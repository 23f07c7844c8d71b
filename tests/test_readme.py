"""The README's tour runs as written, and its first commands are the documented ones."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


def test_readme_opens_with_the_install_and_run_command_then_the_test_command():
    install, tests = BASH_BLOCKS[0].strip(), BASH_BLOCKS[1].strip()
    assert install.startswith("python3 -m pip install torch==2.13.0 && ")
    for package in ("packages/l0-core", "packages/l0-nn", "packages/l0-gates"):
        assert f"-e {package} " in install
    assert '-e "packages/l0-calibrate[demo]"' in install  # the demo's survey data
    assert install.endswith("-e . && l0-calibrate demo")
    assert tests == "python3 -m pip install nox && python3 -m nox"


def test_ci_script_runs_the_readme_test_command_through_nox():
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip install" in script and "nox" in script and "set -euo pipefail" in script


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs(index):
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for block in PYTHON_BLOCKS[: index + 1]:  # later blocks may use earlier names
            exec(compile(block, f"README.md[block {index}]", "exec"), namespace)


def test_readme_tour_has_the_seed_examples():
    text = "\n".join(PYTHON_BLOCKS)
    for call in (
        "HardConcrete(n_items=len(household_weights), temperature=0.25, init_mean=0.999)",
        "probs = gates()",
        "update_temperatures(model, scheduler.get_temperature(epoch))",
        "compute_l0l2_penalty(",
        "gate.select_samples(data)",
        "gate.select_features(data)",
        "from l0.calibration import SparseCalibrationWeights",
    ):
        assert call in text, call
