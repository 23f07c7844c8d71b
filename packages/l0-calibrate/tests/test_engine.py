"""The hand-written fused epoch equals autograd on the published formulas."""

import math

import pytest
import torch
from l0_calibrate.engine import HardConcreteWorkspace, deterministic_gates


def autograd_reference(lw, la, u, grad_w, beta, gamma, zeta, lam0, lam2, use_gates=True):
    lw = lw.clone().requires_grad_(True)
    la = la.clone().requires_grad_(True)
    lac = la.clamp(-20, 20)
    if use_gates:
        uu = u.clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(uu) - torch.log(1 - uu) + lac) / beta)
        w = torch.exp(lw) * (s * (zeta - gamma) + gamma).clamp(0, 1)
    else:
        w = torch.exp(lw)
    pi = torch.sigmoid(lac - beta * math.log(-gamma / zeta))
    total = (w * grad_w).sum() + lam0 * pi.sum() + lam2 * (torch.exp(lw) ** 2).sum()
    total.backward()
    return w.detach(), lw.grad, la.grad


@pytest.mark.parametrize("use_gates", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_gradients_equal_autograd_including_clamped_gates(use_gates, dtype):
    g = torch.Generator().manual_seed(0)
    n = 400
    lw = torch.randn(n, generator=g, dtype=dtype) * 0.5
    la = torch.randn(n, generator=g, dtype=dtype) * 3
    la[:5] = torch.tensor([25.0, -25.0, 20.0, -20.0, 0.0], dtype=dtype)  # outside and on the bound
    u = torch.rand(n, generator=g, dtype=dtype)
    grad_w = torch.randn(n, generator=g, dtype=dtype)
    kw = dict(beta=0.4, gamma=-0.1, zeta=1.1)
    ws = HardConcreteWorkspace(n, torch.device("cpu"), dtype)
    w = ws.forward(lw, la, bound=20.0, generator=None, noise=u, use_gates=use_gates, **kw)
    glw, gla, l0, l2 = ws.backward(grad_w, la, bound=20.0, lambda_l0=0.3, lambda_l2=0.02, use_gates=use_gates, **kw)
    w_ref, glw_ref, gla_ref = autograd_reference(lw, la, u, grad_w, lam0=0.3, lam2=0.02, use_gates=use_gates, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, w_ref, **tol)
    torch.testing.assert_close(glw, glw_ref, **tol)
    torch.testing.assert_close(gla, gla_ref, **tol)
    assert gla[0] == 0 and gla[1] == 0  # beyond the clamp: no gradient, as published
    pi = torch.sigmoid(la.clamp(-20, 20) - 0.4 * math.log(0.1 / 1.1))
    assert l0.item() == pytest.approx(pi.sum().item(), rel=1e-5)
    assert l2.item() == pytest.approx((torch.exp(lw) ** 2).sum().item(), rel=1e-5)


def test_deterministic_gates_are_zero_exactly_when_the_probability_of_a_non_zero_gate_is_at_most_half():
    beta = 2 / 3
    threshold = beta * math.log(0.1 / 1.1)
    la = torch.tensor([threshold - 1e-3, threshold + 1e-3], dtype=torch.float64)
    gates = deterministic_gates(la, beta=beta, gamma=-0.1, zeta=1.1, bound=20.0)
    assert gates[0] == 0 and gates[1] > 0
