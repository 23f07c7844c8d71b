"""Gates, penalties and samples follow the parameters' dtype and device."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import (
    HardConcrete,
    TargetSparsityController,
    compute_l0_penalty,
    compute_l0l2_penalty,
    compute_l2_penalty,
    update_temperatures,
)
from torch import nn

LOW_PRECISION = [torch.float16, torch.bfloat16]
ALL_FLOATS = [torch.float32, torch.float64, *LOW_PRECISION]


@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_parameters_buffer_samples_and_penalty_use_the_requested_dtype(dtype):
    gate = HardConcrete(64, temperature=0.25, init_prob_active=0.999, dtype=dtype)
    assert gate.log_alpha.dtype == dtype and gate.temperature.dtype == dtype
    assert gate.train()().dtype == dtype
    assert gate.eval()().dtype == dtype
    # Penalties of half-precision gates accumulate (and come back) in float32 (issue 12).
    penalty_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
    assert gate.l0_penalty().dtype == penalty_dtype
    assert compute_l0_penalty(gate).dtype == penalty_dtype


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_an_l0_penalty_over_more_gates_than_float16_can_count_is_finite(dtype):
    n = 100_000  # > 65,504, the largest float16
    gate = HardConcrete(n, init_prob_active=0.9, init_std=0.0, dtype=dtype)
    expected = gate.prob_active().double().sum().item()  # independent float64 sum
    for penalty in (gate.l0_penalty(), compute_l0_penalty(gate)):
        assert torch.isfinite(penalty)
        assert penalty.item() == pytest.approx(expected, rel=1e-4)
    penalty = compute_l0l2_penalty(gate, lambda_l0=1.0, lambda_l2=0.0)
    assert penalty.item() == pytest.approx(expected, rel=1e-4)
    penalty.backward()
    assert gate.log_alpha.grad.dtype == dtype and torch.isfinite(gate.log_alpha.grad).all()


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("init_prob_active", [0.001, 0.5, 0.999])
def test_low_precision_samples_are_finite_and_stay_in_the_unit_interval(dtype, init_prob_active):
    gen = torch.Generator().manual_seed(0)
    gate = HardConcrete(
        20_000,
        temperature=0.1,
        init_prob_active=init_prob_active,
        init_std=3.0,
        dtype=dtype,
        generator=gen,
    )
    z = gate.train()()
    assert torch.isfinite(z).all()
    assert z.min().item() >= 0.0 and z.max().item() <= 1.0


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_gradients_of_sample_and_penalty_are_finite(dtype):
    gate = HardConcrete(
        10_000,
        temperature=0.1,
        init_std=5.0,
        dtype=dtype,
        generator=torch.Generator().manual_seed(1),
    )
    (gate().sum() + gate.l0_penalty()).backward()
    assert torch.isfinite(gate.log_alpha.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, *LOW_PRECISION])
def test_low_and_double_precision_penalty_agrees_with_float32(dtype):
    ref = HardConcrete(
        1000,
        temperature=0.25,
        init_prob_active=0.7,
        init_std=1.0,
        generator=torch.Generator().manual_seed(2),
    )
    other = HardConcrete(1000, temperature=0.25, init_prob_active=0.7, dtype=dtype)
    with torch.no_grad():
        other.log_alpha.copy_(ref.log_alpha.to(dtype))
    rel = {torch.float64: 1e-6, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    assert other.l0_penalty().float().item() == pytest.approx(ref.l0_penalty().item(), rel=rel)


def test_module_to_float64_converts_the_temperature_buffer_too():
    gate = HardConcrete(3, temperature=0.3).to(torch.float64)
    assert gate.temperature.dtype == torch.float64
    assert gate.temperature.item() == pytest.approx(0.3, abs=1e-7)
    assert gate().dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_penalties_and_controller_follow_a_float64_or_bfloat16_model(dtype, row_gated_linear):
    model = nn.Sequential(row_gated_linear(4, 3, dtype=dtype), nn.ReLU())
    # half precision accumulates in float32 (issue 12); float64 stays float64
    acc = torch.float32 if dtype in LOW_PRECISION else dtype
    for penalty in (compute_l0_penalty, compute_l2_penalty):
        assert penalty(model).dtype == acc
    assert compute_l0l2_penalty(model, lambda_l0=1e-3, lambda_l2=1e-4).dtype == acc
    ctl = TargetSparsityController(1, 3)
    assert ctl.penalty(compute_l0_penalty(model)).dtype == acc
    assert update_temperatures(model, 0.2) == 1


def test_log_alpha_of_a_float16_gate_never_overflows_for_extreme_init_prob_actives():
    gate = HardConcrete(
        4, temperature=0.05, init_prob_active=1 - 1e-6, dtype=torch.float16, init_std=0.0
    )
    expected = math.log(1 - 1e-6) - math.log(1e-6) + 0.05 * math.log(0.1 / 1.1)
    assert gate.log_alpha[0].item() == pytest.approx(expected, rel=1e-3)
    assert torch.isfinite(gate.eval()()).all() and torch.isfinite(gate.l0_penalty())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_cuda_gate_samples_penalties_and_generator_stay_on_the_gpu(dtype, row_gated_linear):
    gen = torch.Generator(device="cuda").manual_seed(0)
    gate = HardConcrete(
        1000, temperature=0.25, init_prob_active=0.5, device="cuda", dtype=dtype, generator=gen
    )
    assert gate.log_alpha.device.type == "cuda" and gate.temperature.device.type == "cuda"
    z = gate.train()()
    assert z.device.type == "cuda" and z.dtype == dtype and torch.isfinite(z).all()
    assert gate.l0_penalty().device.type == "cuda"
    assert gate.eval()().device.type == "cuda"
    model = row_gated_linear(5, 4, dtype=dtype).cuda()
    assert compute_l0l2_penalty(model).device.type == "cuda"
    ctl = TargetSparsityController(2, 4)
    assert ctl.penalty(compute_l0_penalty(model)).device.type == "cuda"


@needs_cuda
def test_cuda_and_cpu_prob_active_agree():
    cpu = HardConcrete(100, init_std=1.0, generator=torch.Generator().manual_seed(0))
    gpu = HardConcrete(100, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    assert torch.allclose(gpu.prob_active().cpu(), cpu.prob_active(), atol=1e-6)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_a_cuda_gate_without_cuda_is_refused_by_name():
    with pytest.raises(
        ValueError, match="device='cuda' but this torch build or machine has no CUDA"
    ):
        HardConcrete(3, device="cuda")
