"""The Hard Concrete formulas as functions: consistent with each other and with HardConcrete."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import (
    GAMMA,
    STRETCH,
    ZETA,
    HardConcrete,
    hard_concrete_from_uniform,
    hard_concrete_median,
    hard_concrete_prob_active,
    hard_concrete_sample,
    log_alpha_for_prob_active,
    median_gate_limits,
    prob_active_for_init_mean,
    prob_active_for_log_alpha,
    uniform_eps,
)
from l0_core import hard_concrete as hc_module


def test_default_stretch_is_the_one_of_hard_concrete():
    gate = HardConcrete(2)
    assert (GAMMA, ZETA) == (gate.gamma, gate.zeta) == (-STRETCH, 1 + STRETCH) == (-0.1, 1.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sample_is_the_transform_of_the_generator_uniforms(dtype):
    la = torch.linspace(-4, 4, 500, dtype=dtype)
    z = hard_concrete_sample(la, 0.5, GAMMA, ZETA, torch.Generator().manual_seed(3))
    u = torch.rand(la.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert torch.equal(z, hard_concrete_from_uniform(u, la, 0.5))
    assert z.dtype == dtype


def test_from_uniform_clamps_a_copy_and_is_differentiable():
    u = torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64)
    la = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    z = hard_concrete_from_uniform(u, la, 2 / 3)
    assert u.tolist() == [0.0, 1.0, 0.25]
    assert z[:2].tolist() == [0.0, 1.0]
    # z = s (zeta - gamma) + gamma inside (0, 1): dz/dla = (zeta - gamma) s (1 - s) / beta
    z[2].backward()
    s = 1 / (1 + math.exp(-(math.log(0.25 / 0.75)) * 1.5))
    assert la.grad[2].item() == pytest.approx(1.2 * s * (1 - s) * 1.5, rel=1e-12)
    assert la.grad[0] == 0 and la.grad[1] == 0
    eps = uniform_eps(torch.float64)
    assert eps == torch.finfo(torch.float64).eps


def test_median_gate_limits_bound_the_open_interval_of_the_median_gate():
    for beta in (0.1, 2 / 3, 3.0):
        off, on = median_gate_limits(beta)
        la = torch.tensor([off - 1e-6, off + 1e-6, on - 1e-6, on + 1e-6], dtype=torch.float64)
        z = hard_concrete_median(la, beta)
        assert z[0] == 0 and 0 < z[1] < 1 and 0 < z[2] < 1 and z[3] == 1
        assert off == pytest.approx(log_alpha_for_prob_active(0.5, beta), abs=1e-15)
        assert prob_active_for_log_alpha(off, beta) == pytest.approx(0.5)


def test_tensor_prob_active_matches_the_scalar_formula_and_the_module():
    la = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    got = hard_concrete_prob_active(la, 0.4)
    assert got.tolist() == pytest.approx([prob_active_for_log_alpha(v, 0.4) for v in la.tolist()])
    gate = HardConcrete(3, temperature=0.4, dtype=torch.float64)
    with torch.no_grad():
        gate.log_alpha.copy_(la)
    assert torch.equal(gate.prob_active().detach(), got)


def test_init_mean_translation_is_062s_logit_mean():
    beta = 0.5
    expected = 1 / (1 + math.exp(beta * math.log(0.1 / 1.1) - math.log(0.3 / 0.7)))
    assert prob_active_for_init_mean(0.3, beta) == pytest.approx(expected, rel=1e-14)
    with pytest.warns(DeprecationWarning, match="init_prob_active"):
        gate = HardConcrete(4, temperature=beta, init_mean=0.3)
    assert gate.init_prob_active == prob_active_for_init_mean(0.3, beta)


def test_hard_concrete_module_keeps_its_public_function_names():
    for name in hc_module.__all__:
        assert hasattr(hc_module, name)
    assert hc_module.hard_concrete_sample is hard_concrete_sample
