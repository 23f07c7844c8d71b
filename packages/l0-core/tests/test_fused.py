"""The fused, autograd-free Hard Concrete kernels equal the differentiable formulas.

The reference is independent of the kernels' hand-written arithmetic: the
module :class:`l0_core.HardConcrete` (its sample for the same generator
stream, its median gate) and ``torch.autograd`` on the formulas of
:mod:`l0_core.hard_concrete_math`.
"""

from __future__ import annotations

import pytest
import torch
from l0_core import (
    GAMMA,
    ZETA,
    HardConcrete,
    HardConcreteWorkspace,
    fused_median_gates,
    hard_concrete_from_uniform,
    hard_concrete_prob_active,
    median_gate_limits,
    uniform_eps,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
#: Tolerances of fused vs. autograd per dtype (bfloat16 keeps 8 bits of mantissa).
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.bfloat16: dict(rtol=0.05, atol=0.05),
}
BOUND = 20.0


def _params(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lw = (torch.randn(n, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    la = (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype)
    # beyond the bound, on the bound, at 0
    la[:5] = torch.tensor([25.0, -25.0, BOUND, -BOUND, 0.0], dtype=torch.float64).to(dtype)
    u = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    u[5:7] = torch.tensor([0.0, 1.0], dtype=torch.float64).to(dtype)  # the clamp on u
    grad_w = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    return lw, la, u, grad_w


def _autograd_reference(lw, la, u, grad_w, *, temperature, lam0, lam2, use_gates):
    """Gradients of sum(grad_w * w) + lam0 * L0 + lam2 * L2 by torch.autograd."""
    lw = lw.clone().requires_grad_(True)
    la = la.clone().requires_grad_(True)
    lac = la.clamp(-BOUND, BOUND)
    if use_gates:
        w = torch.exp(lw) * hard_concrete_from_uniform(u, lac, temperature, GAMMA, ZETA)
    else:
        w = torch.exp(lw)
    pi = hard_concrete_prob_active(lac, temperature, GAMMA, ZETA)
    total = (w * grad_w).sum() + lam0 * pi.sum() + lam2 * (torch.exp(lw) ** 2).sum()
    total.backward()
    return w.detach(), lw.grad, la.grad, pi.detach().double().sum(), (torch.exp(lw.detach()) ** 2)


@pytest.mark.parametrize("use_gates", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_step_equals_autograd_on_the_formulas(dtype, use_gates):
    n, beta = 400, 0.4
    lw, la, u, grad_w = _params(n, dtype)
    ws = HardConcreteWorkspace(n, "cpu", dtype)
    w = ws.forward(lw, la, temperature=beta, bound=BOUND, noise=u, use_gates=use_gates)
    g_lw, g_la, l0, l2 = ws.backward(
        grad_w,
        la,
        temperature=beta,
        bound=BOUND,
        lambda_l0=0.3,
        lambda_l2=0.02,
        use_gates=use_gates,
    )
    w_ref, g_lw_ref, g_la_ref, l0_ref, l2_terms = _autograd_reference(
        lw, la, u, grad_w, temperature=beta, lam0=0.3, lam2=0.02, use_gates=use_gates
    )
    for got in (w, g_lw, g_la):
        assert got.dtype == dtype and got.device == la.device
    torch.testing.assert_close(w, w_ref, **TOL[dtype])
    torch.testing.assert_close(g_lw, g_lw_ref, **TOL[dtype])
    torch.testing.assert_close(g_la, g_la_ref, **TOL[dtype])
    assert g_la[0] == 0 and g_la[1] == 0  # beyond the bound: no gradient
    if dtype == torch.float64:  # on the bound the clamp passes the (tiny) L0 gradient
        assert g_la[2] != 0 and g_la[3] != 0
    rel = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert l0.item() == pytest.approx(l0_ref.item(), rel=rel)
    assert l2.item() == pytest.approx(l2_terms.double().sum().item(), rel=rel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_samples_what_hard_concrete_samples_from_the_same_generator(dtype):
    n, beta = 1000, 2 / 3
    gate = HardConcrete(n, temperature=beta, dtype=dtype, init_std=1.0)
    la = gate.log_alpha.detach()
    gate.generator = torch.Generator().manual_seed(7)
    z_module = gate.sample().detach()
    ws = HardConcreteWorkspace(n, "cpu", dtype)
    w = ws.forward(
        torch.zeros(n, dtype=dtype),
        la,
        temperature=beta,
        generator=torch.Generator().manual_seed(7),
    )
    assert w.dtype == dtype
    torch.testing.assert_close(w, z_module, **TOL[dtype])
    torch.testing.assert_close(ws.z, z_module, **TOL[dtype])
    # both are exactly 0 and exactly 1 on the same gates (up to the rounding of s at the edges)
    if dtype == torch.float64:
        assert torch.equal(w == 0, z_module == 0)
        assert torch.equal(w == 1, z_module == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_noise_is_clamped_with_the_dtype_machine_epsilon(dtype):
    ws = HardConcreteWorkspace(2, "cpu", dtype)
    la = torch.zeros(2, dtype=dtype)
    ws.forward(torch.zeros(2, dtype=dtype), la, temperature=1.0, noise=torch.tensor([0.0, 1.0]))
    eps = uniform_eps(dtype)
    expected = torch.tensor([eps, 1 - eps], dtype=torch.float64)
    expected = torch.log(expected) - torch.log1p(-expected)
    torch.testing.assert_close(
        torch.logit(ws.s.double()), expected, rtol=2e-2 if dtype == torch.bfloat16 else 1e-6, atol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_median_gates_equal_the_module_and_close_exactly_at_half_probability(dtype):
    beta = 2 / 3
    gate = HardConcrete(300, temperature=beta, dtype=dtype, init_std=3.0)
    la = gate.log_alpha.detach()
    got = fused_median_gates(la, temperature=beta)
    assert got.dtype == dtype
    # exact, except in bfloat16, where the module's temperature buffer is itself rounded
    tol = TOL[dtype] if dtype == torch.bfloat16 else dict(rtol=0, atol=0)
    torch.testing.assert_close(got, gate.deterministic().detach(), **tol)
    off, on = median_gate_limits(beta)
    probe = torch.tensor([off - 1e-2, off + 1e-2, on - 1e-2, on + 1e-2], dtype=torch.float64)
    z = fused_median_gates(probe, temperature=beta)
    assert z[0] == 0 and z[1] > 0 and z[2] < 1 and z[3] == 1
    assert bool((hard_concrete_prob_active(probe[:2], beta) > 0.5).tolist() == [False, True])


def test_median_gates_clamp_at_the_bound_and_leave_the_input_alone():
    la = torch.tensor([-50.0, 50.0, 0.3], dtype=torch.float64)
    before = la.clone()
    # at a high temperature the bound matters: sigmoid(20 / 10) vs sigmoid(50 / 10)
    bounded = fused_median_gates(la, temperature=10.0, bound=BOUND)
    free = fused_median_gates(la, temperature=10.0)
    assert torch.equal(la, before)
    ref = HardConcrete(3, temperature=10.0, dtype=torch.float64)
    with torch.no_grad():
        ref.log_alpha.copy_(la.clamp(-BOUND, BOUND))
    torch.testing.assert_close(bounded, ref.deterministic().detach(), rtol=0, atol=0)
    assert free[1] == 1.0 and bounded[1] < 1.0


def test_backward_without_bound_passes_every_gradient():
    n = 50
    lw, la, u, grad_w = _params(n, torch.float64)
    ws = HardConcreteWorkspace(n, "cpu", torch.float64)
    ws.forward(lw, la, temperature=0.5, noise=u)
    _, g_la, _, _ = ws.backward(grad_w, la, temperature=0.5, lambda_l0=1.0)
    # |log_alpha| = 25 with no bound: pi (1 - pi) is tiny but not masked to 0
    assert g_la[0] != 0 and g_la[1] != 0


def test_workspace_buffers_follow_the_parameters_dtype_and_length():
    ws = HardConcreteWorkspace(3, "cpu", torch.float32)
    lw = torch.zeros(5, dtype=torch.float64)
    w = ws.forward(lw, torch.full((5,), 30.0, dtype=torch.float64), temperature=0.5)
    assert w.dtype == torch.float64 and w.shape == (5,) and ws.u.dtype == torch.float64
    assert ws.n == 5 and bool((w == 1).all())


def test_workspace_rejects_mismatched_shapes_and_bad_temperature():
    ws = HardConcreteWorkspace(3)
    with pytest.raises(ValueError, match="log_alpha has shape"):
        ws.forward(torch.zeros(3), torch.zeros(4), temperature=0.5)
    with pytest.raises(ValueError, match="1-D"):
        ws.forward(torch.zeros(3, 1), torch.zeros(3, 1), temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        ws.forward(torch.zeros(3), torch.zeros(3), temperature=0.0)
    with pytest.raises(TypeError, match="floating"):
        HardConcreteWorkspace(3, dtype=torch.int64)


def test_lambda_l0_may_be_a_tensor():
    n = 20
    lw, la, u, grad_w = _params(n, torch.float64, seed=3)
    ws = HardConcreteWorkspace(n, "cpu", torch.float64)
    ws.forward(lw, la, temperature=0.5, bound=BOUND, noise=u)
    _, g_float, _, _ = ws.backward(grad_w, la, temperature=0.5, bound=BOUND, lambda_l0=0.7)
    ws.forward(lw, la, temperature=0.5, bound=BOUND, noise=u)
    lam = torch.tensor(0.7, dtype=torch.float64)
    _, g_tensor, _, _ = ws.backward(grad_w, la, temperature=0.5, bound=BOUND, lambda_l0=lam)
    torch.testing.assert_close(g_tensor, g_float, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernels_run_on_cuda_and_match_cpu(dtype):
    n, beta = 4096, 0.5
    lw, la, u, grad_w = _params(n, dtype, seed=5)
    cpu = HardConcreteWorkspace(n, "cpu", dtype)
    gpu = HardConcreteWorkspace(n, "cuda", dtype)
    out = []
    for ws, dev in ((cpu, "cpu"), (gpu, "cuda")):
        args = [t.to(dev) for t in (lw, la, u, grad_w)]
        w = ws.forward(args[0], args[1], temperature=beta, bound=BOUND, noise=args[2]).clone()
        g = ws.backward(
            args[3], args[1], temperature=beta, bound=BOUND, lambda_l0=0.1, lambda_l2=0.01
        )
        z = fused_median_gates(args[1], temperature=beta, bound=BOUND)
        for t in (w, *g[:2], z):
            assert t.device.type == dev and t.dtype == dtype
        out.append([t.cpu() for t in (w, *g[:2], z)])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, **TOL[dtype])
    # the generator path draws on the parameters' device
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = gpu.forward(lw.cuda(), la.cuda(), temperature=beta, generator=gen)
    assert w.device.type == "cuda"
