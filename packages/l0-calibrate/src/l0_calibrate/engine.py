"""The per-epoch arithmetic of a calibration fit, vectorised over households.

For the Hard Concrete gates of :class:`~l0_calibrate.SparseCalibrationWeights`
one epoch is

    u ~ U(0, 1)                       (clamped to [1e-6, 1 - 1e-6])
    s = sigmoid((logit(u) + clamp(log_alpha, -B, B)) / beta)
    z = clamp(s (zeta - gamma) + gamma, 0, 1)
    w = exp(log_weight) * z
    loss = sum_i g_i L(M w, y)_i + lambda_l0 sum_j pi_j + lambda_l2 sum_j exp(2 log_weight_j) + ...

and its gradient is written out by hand: ``dL/dw = M^T r`` (one sparse
product, ``r = dL/d(M w)`` from autograd on the small target vector), then

    dL/dlog_weight = dL/dw * w + 2 lambda_l2 exp(2 log_weight)
    dL/dlog_alpha  = dL/dw * exp(log_weight) * (zeta - gamma) s (1 - s) / beta * [0 < z < 1]
                     + lambda_eff * pi (1 - pi)                 (both 0 where |log_alpha| > B)

with ``pi = sigmoid(clamp(log_alpha) - beta log(-gamma / zeta))``. All of it
runs in place on preallocated household-length buffers (no autograd graph,
no allocation per epoch), so at millions of households the elementwise work
stays well below the two sparse products. Penalties that act on ``w`` itself
(calibration distance, dispersion) are differentiated with autograd on a
detached copy of ``w`` and added to ``dL/dw``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["HardConcreteWorkspace", "StepResult", "WeightPenalty", "target_gradient"]

#: Clamp on u before the logit, as in l0-python 0.6.2.
U_EPS = 1e-6

WeightPenalty = Callable[[Tensor], Tensor]


@dataclass
class StepResult:
    """Loss parts of one epoch, as 0-d tensors (converted to floats only at logging steps)."""

    data_loss: Tensor
    l0_loss: Tensor
    l2_loss: Tensor
    penalty_loss: Tensor
    control_loss: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def total(self, lambda_l0: float, lambda_l2: float) -> float:
        """Total objective value as a float."""
        return float(
            self.data_loss + lambda_l0 * self.l0_loss + lambda_l2 * self.l2_loss + self.penalty_loss + self.control_loss
        )


def target_gradient(
    estimate: Tensor, targets: Tensor, loss_weights: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Data loss ``sum_i g_i L(estimate, targets)_i`` and its gradient in the estimate.

    Autograd runs on the (small) target vector only.

    Examples
    --------
    >>> from l0_calibrate.losses import mse_loss
    >>> loss, r = target_gradient(torch.tensor([3.0]), torch.tensor([1.0]), torch.ones(1), mse_loss)
    >>> loss.item(), r.tolist()
    (4.0, [4.0])
    """
    est = estimate.detach().requires_grad_(True)
    with torch.enable_grad():
        per_target = loss_fn(est, targets)
        if per_target.shape != targets.shape:
            raise ValueError(
                f"the loss function returned shape {tuple(per_target.shape)}; it must return one "
                f"value per target, shape {tuple(targets.shape)}"
            )
        loss = (per_target * loss_weights).sum()
        (grad,) = torch.autograd.grad(loss, est)
    return loss.detach(), grad


class HardConcreteWorkspace:
    """Preallocated buffers and the hand-written forward/backward of the fused epoch.

    Parameters
    ----------
    n : int
        Number of households.
    device, dtype
        Those of the parameters.

    Examples
    --------
    >>> ws = HardConcreteWorkspace(3, torch.device("cpu"), torch.float64)
    >>> ws.u.shape
    torch.Size([3])
    """

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        def buf() -> Tensor:
            return torch.empty(n, device=device, dtype=dtype)

        self.n = n
        self.u = buf()  # uniforms, then scratch
        self.s = buf()  # sigmoid((logit u + log_alpha) / beta)
        self.z = buf()  # gates
        self.ew = buf()  # exp(log_weight)
        self.w = buf()  # weights
        self.lac = buf()  # clamped log_alpha, then scratch
        self.t = buf()  # scratch
        self.outside = torch.empty(n, device=device, dtype=torch.bool)

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(
        self,
        log_weight: Tensor,
        log_alpha: Tensor,
        *,
        beta: float,
        gamma: float,
        zeta: float,
        bound: float,
        generator: torch.Generator | None,
        use_gates: bool = True,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Sample the gates and return the weights ``w`` (a view of an internal buffer).

        ``noise`` (uniforms) replaces the draw from ``generator``; for tests.
        """
        torch.exp(log_weight, out=self.ew)
        torch.clamp(log_alpha, -bound, bound, out=self.lac)
        if not use_gates:
            self.w.copy_(self.ew)
            return self.w
        if noise is None:
            self.u.uniform_(0.0, 1.0, generator=generator)
        else:
            self.u.copy_(noise)
        torch.logit(self.u, eps=U_EPS, out=self.s)
        self.s.add_(self.lac).mul_(1.0 / beta).sigmoid_()
        torch.mul(self.s, zeta - gamma, out=self.z).add_(gamma).clamp_(0.0, 1.0)
        torch.mul(self.ew, self.z, out=self.w)
        return self.w

    # ------------------------------------------------------------ backward
    @torch.no_grad()
    def backward(
        self,
        grad_w: Tensor,
        log_alpha: Tensor,
        *,
        beta: float,
        gamma: float,
        zeta: float,
        bound: float,
        lambda_l0: Tensor | float,
        lambda_l2: float,
        use_gates: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients for ``(log_weight, log_alpha)`` plus the L0 and L2 penalty values.

        Uses the buffers filled by :meth:`forward`. Returns
        ``(grad_log_weight, grad_log_alpha, l0_value, l2_value)``; the two
        gradients are new tensors (they become ``.grad``).
        """
        grad_lw = torch.mul(grad_w, self.w)
        if lambda_l2 > 0:
            torch.mul(self.ew, self.ew, out=self.t)
            l2_value = self.t.sum()
            grad_lw.add_(self.t, alpha=2.0 * lambda_l2)
        else:
            l2_value = torch.zeros((), device=grad_w.device, dtype=grad_w.dtype)
        # L0 term: pi = sigmoid(lac + c), d pi / d lac = pi (1 - pi)
        c = -beta * math.log(-gamma / zeta)
        grad_la = torch.add(self.lac, c).sigmoid_()
        l0_value = grad_la.sum()
        torch.mul(grad_la, grad_la, out=self.u)
        grad_la.sub_(self.u)  # pi (1 - pi)
        if isinstance(lambda_l0, Tensor):
            grad_la.mul_(lambda_l0)
        else:
            grad_la.mul_(float(lambda_l0))
        if use_gates:
            # dz/dlac = (zeta - gamma) / beta * s (1 - s), zero where the gate is clamped
            torch.mul(self.s, self.s, out=self.t)
            torch.sub(self.s, self.t, out=self.t)
            torch.le(self.z, 0.0, out=self.outside)
            self.t.masked_fill_(self.outside, 0.0)
            torch.ge(self.z, 1.0, out=self.outside)
            self.t.masked_fill_(self.outside, 0.0)
            self.t.mul_(grad_w).mul_(self.ew)
            grad_la.add_(self.t, alpha=(zeta - gamma) / beta)
        torch.ne(self.lac, log_alpha, out=self.outside)  # clamp(log_alpha) passes no gradient outside
        grad_la.masked_fill_(self.outside, 0.0)
        return grad_lw, grad_la, l0_value, l2_value


@torch.no_grad()
def deterministic_gates(log_alpha: Tensor, *, beta: float, gamma: float, zeta: float, bound: float) -> Tensor:
    """Test-time gates ``clamp(sigmoid(clamp(log_alpha) / beta) (zeta - gamma) + gamma, 0, 1)``.

    Exactly 0 precisely when ``P(gate != 0) <= 1/2``.

    Examples
    --------
    >>> deterministic_gates(torch.tensor([-30.0, 30.0]), beta=2/3, gamma=-0.1, zeta=1.1, bound=20.0).tolist()
    [0.0, 1.0]
    """
    s = torch.clamp(log_alpha, -bound, bound).div(beta).sigmoid_()
    return s.mul_(zeta - gamma).add_(gamma).clamp_(0.0, 1.0)


def penalty_gradient(w: Tensor, penalties: list[tuple[float, WeightPenalty]]) -> tuple[Tensor, Tensor]:
    """Value and gradient in ``w`` of ``sum_k lambda_k P_k(w)`` (autograd on a detached copy).

    Examples
    --------
    >>> val, g = penalty_gradient(torch.tensor([1.0, 2.0]), [(0.5, lambda w: (w * w).sum())])
    >>> val.item(), g.tolist()
    (2.5, [1.0, 2.0])
    """
    leaf = w.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        total = sum(lam * fn(leaf) for lam, fn in penalties)
        (grad,) = torch.autograd.grad(total, leaf)
    return total.detach(), grad


def rel_errors(estimate: Tensor, targets: Tensor) -> Tensor:
    """``|estimate - target| / (|target| + 1)``, the published progress metric.

    Examples
    --------
    >>> rel_errors(torch.tensor([11.0]), torch.tensor([9.0])).tolist()
    [0.20000000298023224]
    """
    return (estimate - targets).abs_().div_(targets.abs() + 1.0)

