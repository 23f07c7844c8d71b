"""The ``l0`` facade against the published l0-python 0.6.2 API.

The signature table below was written out by hand from the l0-python 0.6.2
sources (its ``l0/*.py``); the behaviour checks compute the expected numbers
independently (closed forms of the 0.6.2 formulas), not from the facade.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import l0

SUBPACKAGES = ["l0_core", "l0_nn", "l0_gates", "l0_calibrate"]
E = inspect.Parameter.empty

#: name -> 0.6.2 module that defined it.
PUBLISHED = {
    "HardConcrete": "distributions",
    "L0Linear": "layers",
    "L0Conv2d": "layers",
    "L0DepthwiseConv2d": "layers",
    "SparseMLP": "layers",
    "prune_model": "layers",
    "SparseL0Linear": "sparse",
    "SparseCalibrationWeights": "calibration",
    "L0Gate": "gates",
    "SampleGate": "gates",
    "FeatureGate": "gates",
    "HybridGate": "gates",
    "compute_l0_penalty": "penalties",
    "compute_l2_penalty": "penalties",
    "compute_l0l2_penalty": "penalties",
    "get_sparsity_stats": "penalties",
    "get_active_parameter_count": "penalties",
    "TemperatureScheduler": "penalties",
    "update_temperatures": "penalties",
    "PenaltyTracker": "penalties",
}

#: (object path, [(parameter, default)]) of l0-python 0.6.2, in order, ``self`` left out.
#: The facade may add keyword-only parameters after these, nothing else.
SIGNATURES_062 = [
    (
        "HardConcrete",
        [
            ("input_dim", E),
            ("output_dim", None),
            ("temperature", 0.5),
            ("stretch", 0.1),
            ("init_mean", 0.5),
        ],
    ),
    ("HardConcrete.forward", [("input_shape", None)]),
    ("HardConcrete.reset_parameters", []),
    ("HardConcrete.get_penalty", []),
    ("HardConcrete.get_active_prob", []),
    ("HardConcrete.get_sparsity", []),
    ("HardConcrete.get_num_active", []),
    (
        "L0Linear",
        [
            ("in_features", E),
            ("out_features", E),
            ("bias", True),
            ("temperature", 0.5),
            ("init_sparsity", 0.5),
            ("use_l2", False),
        ],
    ),
    ("L0Linear.forward", [("input", E)]),
    ("L0Linear.get_l0_penalty", []),
    ("L0Linear.get_l2_penalty", []),
    ("L0Linear.get_sparsity", []),
    (
        "L0Conv2d",
        [
            ("in_channels", E),
            ("out_channels", E),
            ("kernel_size", E),
            ("stride", 1),
            ("padding", 0),
            ("bias", True),
            ("temperature", 0.5),
            ("init_sparsity", 0.5),
            ("structured", False),
            ("use_l2", False),
        ],
    ),
    (
        "L0DepthwiseConv2d",
        [
            ("in_channels", E),
            ("kernel_size", E),
            ("stride", 1),
            ("padding", 0),
            ("bias", True),
            ("temperature", 0.5),
            ("init_sparsity", 0.5),
        ],
    ),
    (
        "SparseMLP",
        [
            ("input_dim", 784),
            ("hidden_dim", 256),
            ("output_dim", 10),
            ("init_sparsity", 0.5),
            ("temperature", 0.5),
            ("use_l2", False),
        ],
    ),
    ("SparseMLP.get_l0_loss", []),
    ("SparseMLP.get_l2_loss", []),
    ("SparseMLP.get_sparsity_stats", []),
    ("prune_model", [("model", E), ("threshold", 0.05)]),
    (
        "SparseL0Linear",
        [
            ("n_features", E),
            ("fit_intercept", True),
            ("beta", 2 / 3),
            ("gamma", -0.1),
            ("zeta", 1.1),
            ("init_keep_prob", 0.5),
            ("device", "cpu"),
            ("seed", None),
        ],
    ),
    ("SparseL0Linear.forward", [("X", E), ("deterministic", False)]),
    ("SparseL0Linear.get_selected_features", [("threshold", 0.01)]),
    (
        "SparseL0Linear.fit",
        [
            ("X_sparse", E),
            ("y", E),
            ("lambda_reg", 0.01),
            ("lr", 0.01),
            ("epochs", 1000),
            ("verbose", False),
            ("verbose_freq", 100),
        ],
    ),
    ("SparseL0Linear.predict", [("X_sparse", E)]),
    (
        "SparseCalibrationWeights",
        [
            ("n_features", E),
            ("beta", 2 / 3),
            ("gamma", -0.1),
            ("zeta", 1.1),
            ("init_keep_prob", 0.5),
            ("init_weights", None),
            ("log_weight_jitter_sd", 0.0),
            ("log_alpha_jitter_sd", 0.01),
            ("device", "cpu"),
            ("use_gates", True),
            ("seed", None),
        ],
    ),
    ("SparseCalibrationWeights.get_weights", [("deterministic", False)]),
    ("SparseCalibrationWeights.forward", [("M", E), ("deterministic", False)]),
    (
        "SparseCalibrationWeights.fit",
        [
            ("M", E),
            ("y", E),
            ("lambda_l0", 0.01),
            ("lambda_l2", 0.0),
            ("lr", 0.01),
            ("epochs", 1000),
            ("loss_type", "mse"),
            ("verbose", False),
            ("verbose_freq", 100),
            ("target_groups", None),
            ("normalize_groups", True),
            ("group_multipliers", None),
        ],
    ),
    ("SparseCalibrationWeights.predict", [("M", E)]),
    ("L0Gate", [("size", E), ("temperature", 0.5), ("init_mean", 0.5)]),
    ("L0Gate.apply_gates", [("x", E), ("dim", 0)]),
    ("L0Gate.get_active_indices", [("threshold", 0.5)]),
    ("SampleGate", [("n_samples", E), ("target_samples", E), ("temperature", 0.25)]),
    ("SampleGate.select_samples", [("data", E)]),
    ("SampleGate.select_weighted_samples", [("data", E), ("weights", E)]),
    ("FeatureGate", [("n_features", E), ("max_features", E), ("temperature", 0.1)]),
    ("FeatureGate.select_features", [("data", E)]),
    ("FeatureGate.select_features_with_names", [("data", E), ("feature_names", E)]),
    (
        "HybridGate",
        [
            ("n_items", E),
            ("l0_fraction", 0.25),
            ("random_fraction", 0.75),
            ("target_items", None),
            ("temperature", 0.25),
        ],
    ),
    ("HybridGate.select", [("data", E), ("random_seed", None)]),
    ("compute_l0_penalty", [("model", E)]),
    ("compute_l2_penalty", [("model", E)]),
    ("compute_l0l2_penalty", [("model", E), ("l0_lambda", 1e-3), ("l2_lambda", 1e-4)]),
    ("get_sparsity_stats", [("model", E)]),
    ("get_active_parameter_count", [("model", E)]),
    (
        "TemperatureScheduler",
        [
            ("initial_temp", 2.0),
            ("final_temp", 0.1),
            ("anneal_epochs", 100),
            ("schedule", "exponential"),
        ],
    ),
    ("TemperatureScheduler.get_temperature", [("epoch", E)]),
    ("update_temperatures", [("model", E), ("temperature", E)]),
    ("PenaltyTracker", []),
    ("PenaltyTracker.log", [("name", E), ("value", E)]),
    ("PenaltyTracker.get_history", [("name", E)]),
    ("PenaltyTracker.get_stats", [("name", E)]),
    ("PenaltyTracker.clear", []),
    ("PenaltyTracker.save_to_csv", [("filepath", E)]),
    ("PenaltyTracker.plot_history", [("metrics", None), ("save_path", None)]),
]

#: Where the facade's default differs from the table only because the facade
#: accepts an alternative spelling (the default is then resolved inside).
RESOLVED_DEFAULTS = {
    ("HardConcrete", "input_dim"),  # or n_items=
    ("TemperatureScheduler", "anneal_epochs"),  # or total_epochs=
    ("PenaltyTracker.log", "value"),  # or log(step, **values)
}


#: Defaults that differ from 0.6.2 on purpose; each is listed in docs/migrating.md.
DOCUMENTED_DEFAULTS = {("L0Gate.get_active_indices", "threshold")}


def _resolve(path: str):
    obj = getattr(l0, path.split(".")[0])
    for part in path.split(".")[1:]:
        obj = getattr(obj, part)
    return obj.__init__ if inspect.isclass(obj) else obj


@pytest.mark.parametrize(("path", "expected"), SIGNATURES_062, ids=[p for p, _ in SIGNATURES_062])
def test_signature_matches_the_published_one(path, expected):
    params = list(inspect.signature(_resolve(path)).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    got = [(p.name, p.default) for p in positional[: len(expected)]]
    names = [n for n, _ in got]
    assert names == [n for n, _ in expected], f"{path}: parameters {names}"
    for (name, want), (_, have) in zip(expected, got, strict=True):
        if (path, name) in RESOLVED_DEFAULTS | DOCUMENTED_DEFAULTS:
            continue
        if want is E:  # required in 0.6.2; optional now is compatible
            continue
        assert have == want, f"{path}({name}=...) default {have!r}, 0.6.2 has {want!r}"
    # Anything beyond 0.6.2's parameters must be optional (keyword-only or defaulted).
    for p in positional[len(expected) :]:
        assert p.default is not E, f"{path}: extra required parameter {p.name}"
    for p in params:
        if p.kind is p.KEYWORD_ONLY:
            assert p.default is not E, f"{path}: extra required keyword {p.name}"


def test_every_deliberate_default_difference_is_in_the_migration_page():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text()
    for path, name in DOCUMENTED_DEFAULTS:
        assert f"{path.split('.')[-1]}({name}" in page, (path, name)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_name_is_the_same_object_at_l0_and_at_its_06_module(name):
    module = importlib.import_module(f"l0.{PUBLISHED[name]}")
    assert name in l0.__all__ and name in module.__all__
    assert getattr(l0, name) is getattr(module, name)


def test_submodules_are_attributes_after_a_bare_import_l0():
    for sub in ("calibration", "distributions", "gates", "layers", "penalties", "sparse"):
        assert getattr(l0, sub) is importlib.import_module(f"l0.{sub}")
    assert l0.gates.HardConcrete is l0.distributions.HardConcrete


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_every_other_public_name_of_the_subpackages_is_reexported_unchanged(subpackage):
    module = importlib.import_module(subpackage)
    for name in (n for n in module.__all__ if not n.startswith("__")):
        assert name in l0.__all__, name
        if name not in PUBLISHED:
            assert getattr(l0, name) is getattr(module, name), name


def test_facade_version_and_dependencies():
    assert l0.__version__ == importlib.metadata.version("l0-python")
    requires = importlib.metadata.requires("l0-python") or []
    names = {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in requires}
    assert {"l0-core", "l0-nn", "l0-gates", "l0-calibrate"} <= names


# --------------------------------------------------------------------- HardConcrete
def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_hard_concrete_init_mean_is_the_logit_mean_of_062():
    gate = l0.HardConcrete(10, temperature=0.5, init_mean=0.8)
    assert gate.gate_size == (10,) and gate.temperature == 0.5 and gate.init_mean == 0.8
    assert torch.allclose(gate.qz_logits, torch.full((10,), _logit(0.8)))
    # P(active) = sigmoid(logit - beta * log(-gamma / zeta)), eq. 12 of the paper.
    want = 1 / (1 + math.exp(-(_logit(0.8) - 0.5 * math.log(0.1 / 1.1))))
    assert gate.get_penalty().item() == pytest.approx(10 * want, rel=1e-6)
    assert gate.get_sparsity() == pytest.approx(1 - want, rel=1e-5)
    assert isinstance(gate.get_sparsity(), float)
    assert gate.get_num_active() == 10 and isinstance(gate.get_num_active(), int)


def test_hard_concrete_is_an_l0_core_gate_with_the_062_state_dict():
    import l0_core

    gate = l0.HardConcrete(20, 30, temperature=0.3, init_mean=0.9)
    assert isinstance(gate, l0_core.HardConcrete)
    assert list(gate.state_dict()) == ["qz_logits"]
    assert gate.log_alpha is gate.qz_logits
    saved = {"qz_logits": torch.linspace(-3, 3, 600).view(20, 30)}  # a 0.6.2 state_dict
    gate.load_state_dict(saved)
    assert torch.equal(gate.qz_logits.detach(), saved["qz_logits"])
    assert l0_core.update_temperatures(gate, 0.2) == 1 and gate.temperature == 0.2


def test_hard_concrete_eval_gates_and_broadcasting():
    gate = l0.HardConcrete(6, temperature=0.4)
    logits = torch.linspace(-2.0, 2.0, 6)
    with torch.no_grad():
        gate.qz_logits.copy_(logits)
    gate.eval()
    want = (torch.sigmoid(logits / 0.4) * 1.2 - 0.1).clamp(0, 1)
    assert torch.allclose(gate(), want, atol=1e-6)
    assert gate((4, 6, 3, 3)).shape == (6, 1, 1, 1)
    gate.temperature = 0.1  # a plain attribute, as in 0.6.2
    assert gate.temperature == 0.1
    assert torch.allclose(gate(), (torch.sigmoid(logits / 0.1) * 1.2 - 0.1).clamp(0, 1))


def test_hard_concrete_keeps_the_seed_spelling_n_items():
    gate = l0.HardConcrete(n_items=7, temperature=0.25, init_mean=0.999)
    assert gate.gate_size == (7,) and gate.l0_penalty().item() == pytest.approx(
        gate.get_penalty().item()
    )


def test_hard_concrete_training_sample_is_062s_draw_and_formula():
    gate = l0.HardConcrete(500, temperature=0.25, init_mean=0.9)
    torch.manual_seed(3)
    got = gate()
    torch.manual_seed(
        3
    )  # 0.6.2: u ~ U(1e-6, 1 - 1e-6), s = sigmoid((log u - log(1-u) + logit) / beta)
    u = torch.empty(500).uniform_(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + _logit(0.9)) / 0.25)
    assert torch.equal(got, (s * 1.2 - 0.1).clamp(0, 1))


def test_hard_concrete_logits_are_clamped_to_20_like_062():
    gate = l0.HardConcrete(3, temperature=0.5)
    with torch.no_grad():
        gate.qz_logits.fill_(1000.0)
    want = torch.sigmoid(torch.tensor(20.0) - 0.5 * math.log(0.1 / 1.1))
    assert torch.allclose(gate.get_active_prob(), want.expand(3))


# --------------------------------------------------------------------- layers
def test_l0_linear_gates_every_weight_and_loads_a_062_state_dict():
    layer = l0.L0Linear(10, 5, temperature=0.5, init_sparsity=0.8)
    assert sorted(layer.state_dict()) == ["bias", "weight", "weight_gates.qz_logits"]
    assert torch.allclose(layer.weight_gates.qz_logits, torch.full((5, 10), _logit(0.2)))
    layer.eval()
    x = torch.randn(3, 10)
    gates = (torch.sigmoid(layer.weight_gates.qz_logits / 0.5) * 1.2 - 0.1).clamp(0, 1)
    assert torch.allclose(layer(x), F.linear(x, layer.weight * gates, layer.bias), atol=1e-6)
    other = l0.L0Linear(10, 5)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.weight_gates.qz_logits, layer.weight_gates.qz_logits)


def test_sparse_mlp_has_two_hidden_layers_like_062():
    model = l0.SparseMLP(784, 256, 10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith("weight")}
    assert shapes == {"fc1.weight": (256, 784), "fc2.weight": (256, 256), "fc3.weight": (10, 256)}
    want = sum(m.get_l0_penalty() for m in (model.fc1, model.fc2, model.fc3))
    assert model.get_l0_loss().item() == pytest.approx(want.item(), rel=1e-6)


def test_conv_structured_has_channel_gates_and_prune_zeroes_closed_weights():
    conv = l0.L0Conv2d(3, 4, 3, structured=True, init_sparsity=0.5)
    assert conv.channel_gates.gate_size == (4,)
    layer = l0.L0Linear(3, 2)
    with torch.no_grad():
        layer.weight_gates.qz_logits[1].fill_(-10.0)  # P(active) ~ 1e-4 < 0.05
    l0.prune_model(layer, threshold=0.05)
    assert layer.weight[1].abs().sum().item() == 0.0 and layer.weight[0].abs().sum().item() > 0


# --------------------------------------------------------------------- penalties
def test_penalties_have_the_062_numbers():
    model = torch.nn.Sequential(
        l0.L0Linear(4, 3, use_l2=True), torch.nn.ReLU(), torch.nn.Linear(3, 1)
    )
    l0_want = model[0].get_l0_penalty()
    # 0.6.2 counts every trainable parameter named "*weight*", the gate logits included.
    l2_want = (model[0].weight ** 2).sum() + (model[0].weight_gates.qz_logits ** 2).sum()
    l2_want = l2_want + (model[2].weight ** 2).sum()
    assert torch.allclose(l0.compute_l0_penalty(model), l0_want)
    assert torch.allclose(l0.compute_l2_penalty(model), l2_want)
    assert torch.allclose(l0.compute_l0l2_penalty(model, 0.5, 0.25), 0.5 * l0_want + 0.25 * l2_want)
    assert l0.get_active_parameter_count(model) == int(l0_want.item())
    stats = l0.get_sparsity_stats(model)
    assert list(stats) == ["0"] and stats["0"]["total_params"] == 12


def test_temperature_scheduler_anneal_epochs_closed_form():
    s = l0.TemperatureScheduler(initial_temp=2.0, final_temp=0.1, anneal_epochs=10)
    for epoch in range(12):
        want = 0.1 if epoch >= 10 else 2.0 * (0.1 / 2.0) ** (epoch / 10)
        assert s.get_temperature(epoch) == pytest.approx(want, rel=1e-12)
    cos = l0.TemperatureScheduler(1.0, 0.5, anneal_epochs=4, schedule="cosine")
    assert cos.get_temperature(2) == pytest.approx(0.5 + 0.5 * (1 + math.cos(math.pi / 2)) / 2)
    assert l0.TemperatureScheduler(total_epochs=11).anneal_epochs == 10
    assert l0.TemperatureScheduler().get_temperature(0) == 2.0  # 0.6.2's default
    with pytest.raises(TypeError, match="not both"):
        l0.TemperatureScheduler(anneal_epochs=5, total_epochs=6)


def test_update_temperatures_reaches_every_gate_and_returns_none():
    model = torch.nn.Sequential(l0.L0Linear(2, 2), l0.L0Conv2d(1, 2, 1, structured=True))
    assert l0.update_temperatures(model, 0.2) is None
    assert model[0].weight_gates.temperature == 0.2 and model[1].channel_gates.temperature == 0.2


def test_penalty_tracker_062_api(tmp_path):
    tracker = l0.PenaltyTracker()
    values = [float(i * 10) for i in range(10)]
    for v in values:
        tracker.log("l0_penalty", v)
    stats = tracker.get_stats("l0_penalty")
    assert stats == pytest.approx(
        {"mean": np.mean(values), "std": np.std(values), "min": 0.0, "max": 90.0, "last": 90.0}
    )
    assert tracker.get_stats("never") == {} and tracker.get_history("never") == []
    tracker.save_to_csv(tmp_path / "h.csv")
    lines = (tmp_path / "h.csv").read_text().split()
    assert lines[0] == "l0_penalty" and [float(x) for x in lines[1:]] == values
    tracker.clear()
    assert tracker.get_history("l0_penalty") == []


# --------------------------------------------------------------------- sparse
def test_sparse_l0_linear_init_keep_prob_is_a_logit_and_seed_reproduces():
    a = l0.SparseL0Linear(50, init_keep_prob=0.3, seed=4)
    b = l0.SparseL0Linear(50, init_keep_prob=0.3, seed=4)
    assert torch.equal(a.log_alpha, b.log_alpha)
    assert a.log_alpha.mean().item() == pytest.approx(_logit(0.3), abs=0.01)
    want = torch.sigmoid(a.log_alpha - (2 / 3) * math.log(0.1 / 1.1)).sum()
    assert torch.allclose(a.get_l0_penalty(), want)


def test_sparse_l0_linear_fit_predicts_with_deterministic_gates():
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(40, 6, density=0.5, format="csr", random_state=1)
    model = l0.SparseL0Linear(6, seed=0).fit(X, np.ones(40), epochs=3)
    gates = (torch.sigmoid(model.log_alpha / (2 / 3)) * 1.2 - 0.1).clamp(0, 1)
    want = torch.as_tensor(X.toarray(), dtype=torch.float32) @ (model.weight * gates) + model.bias
    assert torch.allclose(model.predict(X), want.detach(), atol=1e-5)


# --------------------------------------------------------------------- gates
def test_l0_gate_init_mean_is_the_062_logit_mean():
    gate = l0.L0Gate(400, temperature=0.3, init_mean=0.7)
    assert gate.init_mean == 0.7
    # l0-gates jitters the logits by N(0, 0.01): the mean of 400 is within 0.003 of logit(0.7).
    assert gate.gates.log_alpha.mean().item() == pytest.approx(_logit(0.7), abs=0.003)


def test_init_mean_is_062_api_in_the_facade_and_does_not_warn():
    # l0_core/l0_gates deprecate init_mean (0.6.2's logit mean); through `l0` it is 0.6.2's API.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        hc = l0.HardConcrete(5, temperature=0.5, init_mean=0.8)
        gate = l0.L0Gate(5, temperature=0.3, init_mean=0.7)
    assert torch.allclose(hc.qz_logits, torch.full((5,), _logit(0.8)))
    assert gate.init_mean == 0.7
    with pytest.raises(ValueError, match=r"init_mean must be < 1\.0, got 1\.0"):
        l0.L0Gate(5, init_mean=1.0)


def test_gates_read_back_the_temperature_they_were_given():
    assert l0.L0Gate(100, temperature=0.3, init_mean=0.7).temperature == 0.3
    gate = l0.SampleGate(n_samples=50, target_samples=5, temperature=0.2)
    assert gate.temperature == 0.2
    gate.set_temperature(0.7)
    assert gate.temperature == 0.7


# --------------------------------------------------------------------- calibration
def test_calibration_state_dict_holds_only_tensors_and_resumes_bit_identically():
    M = torch.rand(4, 30, generator=torch.Generator().manual_seed(0))
    y = M @ torch.full((30,), 2.0)
    model = l0.SparseCalibrationWeights(30, seed=0)
    model.fit(M, y, epochs=15)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = l0.SparseCalibrationWeights(30, seed=0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.epochs_trained == 15
    model.fit(M, y, epochs=5)
    resumed.fit(M, y, epochs=5)
    assert torch.equal(model.log_weight, resumed.log_weight)


def test_a_062_calibration_checkpoint_loads():
    saved = {"log_weight": torch.zeros(8), "log_alpha": torch.full((8,), 2.0)}  # 0.6.2's keys
    model = l0.SparseCalibrationWeights(8)
    model.load_state_dict(saved)
    assert torch.equal(model.log_alpha.detach(), saved["log_alpha"])


def test_the_migration_pages_works_as_before_block_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text()
    section = page.split("## Works as before", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    namespace: dict = {}
    exec(compile(block, "docs/migrating.md", "exec"), namespace)
    assert isinstance(namespace["gates"], l0.HardConcrete) and namespace["gates"].temperature == 0.1
    assert [n for n, _ in namespace["model"].named_children()] == ["fc1", "fc2", "fc3"]


def test_calibration_weights_class_signature_shows_the_constructor_keywords():
    # The class's own signature (what help() and IDEs show) must not be __new__'s
    # (*args, **kwargs), which picks the sharded class inside a process group.
    names = list(inspect.signature(l0.SparseCalibrationWeights).parameters)
    assert names[:4] == ["n_features", "beta", "gamma", "zeta"]
    assert "seed" in names and "args" not in names and "kwargs" not in names


def test_sample_and_feature_gates_keep_the_published_init_mean_attribute():
    # 0.6.2 stores the mean it hands to L0Gate: target / n, and min(max / n, 0.99).
    assert l0.SampleGate(n_samples=1000, target_samples=100).init_mean == 100 / 1000
    assert l0.FeatureGate(n_features=50, max_features=10).init_mean == 10 / 50
    assert l0.FeatureGate(n_features=10, max_features=10).init_mean == 0.99
