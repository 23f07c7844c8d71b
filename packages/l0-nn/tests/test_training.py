import pytest
import torch
import torch.nn.functional as F
from l0_core import (
    TargetSparsityController,
    compute_l0_penalty,
    compute_l2_penalty,
    get_active_parameter_count,
    update_temperatures,
)
from l0_nn import (
    L0Conv2d,
    L0Linear,
    SparseMLP,
    gate_parameters,
    layer_sparsity_stats,
    param_groups,
    weight_parameters,
)
from torch import nn


def test_param_groups_give_gates_their_own_learning_rate_and_cover_every_parameter_once():
    model = nn.Sequential(L0Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    groups = param_groups(model, lr=1e-3, gate_lr=0.1, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 0.1]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert [id(p) for p in groups[1]["params"]] == [id(model[0].gates.log_alpha)]


def test_gate_and_weight_parameters_split_a_conv_model():
    model = nn.Sequential(L0Conv2d(1, 2, 3), L0Linear(2, 2))
    assert {id(p) for p in gate_parameters(model)} == {
        id(model[0].gates.log_alpha),
        id(model[1].gates.log_alpha),
    }
    assert len(weight_parameters(model)) == 4


def test_a_negative_gate_learning_rate_is_rejected():
    with pytest.raises(ValueError, match="gate_lr must be >= 0.0, got"):
        param_groups(L0Linear(2, 2), gate_lr=-1.0)


def test_layer_sparsity_stats_report_each_layer_of_a_sparse_mlp():
    model = SparseMLP(6, [5, 4], 2)
    with torch.no_grad():
        model.fc2.gates.log_alpha[:2] = -10.0
    stats = layer_sparsity_stats(model)
    assert sorted(stats) == ["fc1", "fc2", "fc3"]
    assert (stats["fc2"]["total_gates"], stats["fc2"]["active_gates"]) == (5, 3)
    assert stats["fc2"]["sparsity"] == pytest.approx(0.4)
    assert stats["fc2"]["active_params"] == 3 * 4 + 4
    assert stats["fc1"]["total_params"] == 6 * 5 + 5


def test_core_penalties_of_a_model_equal_the_sum_over_its_layers():
    model = nn.Sequential(SparseMLP(4, 3, 2), L0Conv2d(1, 2, 1))
    expected_l0 = sum(m.l0_penalty() for m in (model[0].fc1, model[0].fc2, model[1]))
    expected_l2 = sum(m.l2_penalty() for m in (model[0].fc1, model[0].fc2, model[1]))
    assert torch.allclose(compute_l0_penalty(model), expected_l0)
    assert torch.allclose(compute_l2_penalty(model), expected_l2)


def test_core_active_parameter_count_of_a_sparse_mlp_accounts_for_upstream_pruning():
    model = SparseMLP(4, [3], 2)
    with torch.no_grad():
        model.fc2.gates.log_alpha[0] = -10.0  # hidden neuron 0 is gone: its row in fc1 too
    assert get_active_parameter_count(model) == (4 * 2 + 2) + (2 * 2 + 2)


def test_temperature_schedules_reach_the_gates_inside_the_layers():
    model = SparseMLP(4, 3, 2)
    assert update_temperatures(model, 0.3) == 2
    assert all(float(m.gates.temperature) == pytest.approx(0.3) for m in model.gated_layers())


def test_expected_parameter_count_matches_a_monte_carlo_count_of_exported_weights():
    torch.manual_seed(0)
    model = SparseMLP(6, [5, 4], 3, init_sparsity=0.4)
    expected = model.expected_parameter_count().item()
    counts = []
    for _ in range(400):
        keep = [(torch.rand(m.in_features) > 0.4).float() for m in model.gated_layers()]
        n_in, n_h1, n_h2 = (k.sum().item() for k in keep)
        counts.append(n_in * n_h1 + n_h1 + n_h1 * n_h2 + n_h2 + n_h2 * 3 + 3)
    assert expected == pytest.approx(sum(counts) / len(counts), rel=0.05)


def test_target_sparsity_controller_penalty_pushes_the_expected_weights_down_towards_the_target(
    single_thread,
):
    torch.manual_seed(0)
    model = SparseMLP(8, [16], 2, generator=torch.Generator().manual_seed(0))
    total = model.parameter_count()
    start = model.expected_parameter_count().item() / total
    ctl = TargetSparsityController(0.3, n_total=total, lr=0.2)
    opt = torch.optim.Adam(param_groups(model, lr=1e-2, gate_lr=0.05))
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + ctl.penalty(model.expected_parameter_count())
        loss.backward()
        opt.step()
        ctl.step()
    end = model.expected_parameter_count().item() / total
    assert start > 0.8 and end < 0.6
    assert ctl.lambda1.item() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_sparse_mlp_controller_recipe_stays_finite_in_half_precision(dtype):
    # docs/nn.md's recipe, widened past 65,504 weights (the float16 limit) and in half
    # precision; Adam's eps is raised to 1e-4 as half-precision training requires.
    import torch.nn.functional as F
    from l0_core import TargetSparsityController
    from l0_nn import SparseMLP

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen).to(dtype)
    y = torch.randint(0, 10, (256,), generator=gen)
    model = SparseMLP(64, [600, 100], 10, init_sparsity=0.05, generator=gen, dtype=dtype)
    n_total = model.parameter_count()
    assert n_total > 65_504
    count = model.expected_parameter_count()
    assert count.dtype == torch.float32
    # independent float64 computation of the same expectation (input gates, biases kept)
    p = [layer.prob_active().double().sum().item() for layer in model.gated_layers()]
    exact = p[0] * p[1] + p[1] + p[1] * p[2] + p[2] + p[2] * 10 + 10
    assert count.item() == pytest.approx(exact, rel=1e-5)
    opt = torch.optim.Adam(param_groups(model, lr=1e-3, gate_lr=0.05), eps=1e-4)
    ctl = TargetSparsityController(0.2, n_total=n_total)
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).float(), y) + ctl.penalty(model.expected_parameter_count())
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        ctl.step()
    assert all(torch.isfinite(t).all() for t in model.parameters())
    assert torch.isfinite(ctl.lambda1) and ctl.lambda1.item() > 0  # above target: pushes down
