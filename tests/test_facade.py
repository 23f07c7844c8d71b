"""The ``l0`` facade of the l0-python meta-distribution and its l0-python 0.6 import paths."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

import l0

SUBPACKAGES = ["l0_core", "l0_nn", "l0_gates", "l0_calibrate"]

#: Every name that ``from l0 import ...`` offered in the published l0-python 0.6.2.
PUBLISHED_NAMES = [
    "HardConcrete",
    "L0Linear",
    "L0Conv2d",
    "L0DepthwiseConv2d",
    "SparseMLP",
    "prune_model",
    "SparseL0Linear",
    "SparseCalibrationWeights",
    "L0Gate",
    "SampleGate",
    "FeatureGate",
    "HybridGate",
    "compute_l0_penalty",
    "compute_l2_penalty",
    "compute_l0l2_penalty",
    "get_sparsity_stats",
    "get_active_parameter_count",
    "TemperatureScheduler",
    "update_temperatures",
    "PenaltyTracker",
]

#: (module path of l0-python 0.6, name, subpackage that now provides it)
PUBLISHED_PATHS = [
    ("l0.distributions", "HardConcrete", "l0_core"),
    ("l0.hard_concrete", "HardConcrete", "l0_core"),
    ("l0.penalties", "compute_l0l2_penalty", "l0_core"),
    ("l0.penalties", "PenaltyTracker", "l0_core"),
    ("l0.penalties", "TemperatureScheduler", "l0_core"),
    ("l0.penalties", "update_temperatures", "l0_core"),
    ("l0.temperature", "TemperatureScheduler", "l0_core"),
    ("l0.temperature", "update_temperatures", "l0_core"),
    ("l0.layers", "L0Linear", "l0_nn"),
    ("l0.layers", "L0Conv2d", "l0_nn"),
    ("l0.layers", "L0DepthwiseConv2d", "l0_nn"),
    ("l0.layers", "SparseMLP", "l0_nn"),
    ("l0.layers", "prune_model", "l0_nn"),
    ("l0.gates", "L0Gate", "l0_gates"),
    ("l0.gates", "SampleGate", "l0_gates"),
    ("l0.gates", "FeatureGate", "l0_gates"),
    ("l0.gates", "HybridGate", "l0_gates"),
    ("l0.gates", "HardConcrete", "l0_core"),
    ("l0.sparse", "SparseL0Linear", "l0_nn"),
    ("l0.sparse", "SparseOperator", "l0_core"),
    ("l0.calibration", "SparseCalibrationWeights", "l0_calibrate"),
]


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_every_name_of_the_published_package_imports_from_l0(name):
    module = importlib.import_module("l0")
    assert name in l0.__all__, f"{name} is missing from l0.__all__"
    assert getattr(module, name) is not None


def test_the_issue_example_import_line_works():
    from l0 import (  # noqa: F401
        HardConcrete,
        L0Linear,
        SampleGate,
        SparseCalibrationWeights,
        TemperatureScheduler,
        compute_l0l2_penalty,
        update_temperatures,
    )


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_l0_all_covers_every_public_name_of_each_subpackage(subpackage):
    module = importlib.import_module(subpackage)
    public = [n for n in module.__all__ if not n.startswith("__")]
    missing = sorted(set(public) - set(l0.__all__))
    assert not missing, f"l0.__all__ lacks {missing} from {subpackage}"
    for name in public:
        assert getattr(l0, name) is getattr(module, name), name


def test_no_two_subpackages_export_different_objects_under_one_name():
    owners: dict[str, tuple[str, object]] = {}
    clashes = []
    for subpackage in SUBPACKAGES:
        module = importlib.import_module(subpackage)
        for name in module.__all__:
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            if name in owners and owners[name][1] is not obj:
                clashes.append((name, owners[name][0], subpackage))
            owners.setdefault(name, (subpackage, obj))
    assert not clashes, f"names exported by two subpackages with different objects: {clashes}"


@pytest.mark.parametrize(("path", "name", "provider"), PUBLISHED_PATHS)
def test_published_module_paths_still_import_the_same_objects(path, name, provider):
    module = importlib.import_module(path)
    assert name in module.__all__
    assert getattr(module, name) is getattr(importlib.import_module(provider), name)


def test_calibration_module_is_the_import_policyengine_us_data_uses():
    from l0.calibration import SparseCalibrationWeights

    assert SparseCalibrationWeights is l0.SparseCalibrationWeights


def test_compat_modules_export_each_subpackage_module_in_full():
    import l0_core.hard_concrete
    import l0_core.temperature
    import l0_gates
    import l0_nn

    import l0.gates
    import l0.hard_concrete
    import l0.layers
    import l0.temperature

    def public(module):
        return {n for n in module.__all__ if not n.startswith("__")}

    assert set(l0.hard_concrete.__all__) == public(l0_core.hard_concrete)
    assert set(l0.temperature.__all__) == public(l0_core.temperature)
    assert set(l0.layers.__all__) == public(l0_nn)
    assert public(l0_gates) <= set(l0.gates.__all__)


def test_facade_version_is_the_distribution_version():
    assert l0.__version__ == importlib.metadata.version("l0-python")


def test_installing_l0_python_installs_all_four_packages():
    requires = importlib.metadata.requires("l0-python") or []
    names = {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in requires}
    assert {"l0-core", "l0-nn", "l0-gates", "l0-calibrate"} <= names
    for dist in ("l0-core", "l0-nn", "l0-gates", "l0-calibrate"):
        assert importlib.metadata.version(dist)


def test_seed_example_runs_through_the_facade():
    from l0 import HardConcrete, TemperatureScheduler, compute_l0l2_penalty, update_temperatures

    households = range(200)
    gates = HardConcrete(n_items=len(households), temperature=0.25, init_mean=0.999)
    probs = gates()
    assert probs.shape == (200,)
    scheduler = TemperatureScheduler(initial_temp=1.0, final_temp=0.1, total_epochs=100)
    update_temperatures(gates, scheduler.get_temperature(99))
    assert gates.temperature.item() == pytest.approx(0.1)
    assert compute_l0l2_penalty(gates, l0_lambda=1e-3, l2_lambda=1e-4).item() > 0
