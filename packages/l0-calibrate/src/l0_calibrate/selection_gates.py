"""Gate training of the select pipeline: Hard Concrete gates ranked under an exact expected count.

Every household ``k`` has a Hard Concrete gate ``z_k`` (and, with
``learn_adjustments``, a log-adjustment ``theta_k``); its weight is
``w_k = d_k * exp(theta_k) * z_k * c`` with ``c = sum(d) / sum(d * z)`` (no
gradient), so the open gates carry the population total. The loss is the
weighted mean squared relative target error, plus the dispersion and
distance terms. After every step all gate logits are shifted by one
constant (:func:`_project_count`) so that the expected number of open gates
is exactly ``count``: what is learned is the ranking, which
:func:`train_gates` returns.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from l0_core import HardConcrete, SparseOperator, hard_concrete_prob_active, sparse_matvec

from .regularizers import calibration_distance, dispersion_penalty
from .stages import StageClock

__all__ = ["train_gates"]

logger = logging.getLogger("l0_calibrate.selection")

#: Below this many non-zeros the gate training runs on one CPU thread.
_SMALL_NNZ = 1 << 20


@torch.no_grad()
def _project_count(gate: HardConcrete, count: int, buf: torch.Tensor | None = None) -> int:
    """Shift all gate logits by one constant so the expected number of open gates is ``count``.

    Solves ``sum_k P(z_k != 0 | log_alpha_k + delta) = count`` for
    ``delta`` by safeguarded Newton steps (the sum is increasing in
    ``delta``); the relative order of the gates, which is what the fit
    learns, is unchanged. Each step is one pass over the gates (the shifted
    logits into ``buf``, their probabilities ``p``, the sum of ``p`` and the
    slope ``sum p (1 - p)``) and one synchronisation; after an optimiser step
    one or two steps suffice. ``buf`` (a scratch tensor like ``log_alpha``)
    avoids an allocation per call. Returns the number of passes.
    """
    la = gate.log_alpha
    if buf is None or buf.shape != la.shape or buf.dtype != la.dtype or buf.device != la.device:
        buf = torch.empty_like(la)
    lo, hi = -60.0, 60.0
    delta = 0.0
    beta = float(gate.temperature.item())
    passes = 0
    for _ in range(60):
        passes += 1
        p = hard_concrete_prob_active(torch.add(la, delta, out=buf), beta, gate.gamma, gate.zeta)
        # d/d(delta) sum p = sum p (1 - p), summed as such: "sum p - sum p^2" cancels
        # in float32 when most p are near 1 and moves the projection (and the selection).
        total, slope = torch.stack([p.sum(), (p * (1 - p)).sum()]).tolist()
        gap = total - count
        if abs(gap) < 1e-3 * max(count, 1):
            break
        if gap > 0:
            hi = delta
        else:
            lo = delta
        step = delta - gap / slope if slope > 0 else (lo + hi) / 2
        delta = step if lo < step < hi else (lo + hi) / 2
    if delta != 0.0:
        la.add_(delta)
    return passes


class _Adam:
    """Adam (Kingma & Ba 2015) with torch's default constants, the same update as ``torch.optim.Adam``.

    Written out because ``torch.optim`` imports ``torch._dynamo`` when an
    optimiser is built, which costs seconds (more than a small selection).
    """

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        bc1, bc2 = 1.0 - b1**self.t, math.sqrt(1.0 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2).add_(1e-8), value=-self.lr / bc1)


def train_gates(
    op: SparseOperator,
    t: torch.Tensor,
    scale: torch.Tensor,
    v: torch.Tensor,
    d: torch.Tensor,
    count: int,
    *,
    epochs: int,
    lr: float,
    temperature: float,
    final_temperature: float | None,
    init_prob_active: float,
    learn_adjustments: bool,
    lambda_dispersion: float,
    lambda_distance: float,
    kind: str,
    generator: torch.Generator,
    clock: StageClock,
    where: str,
    verbose_freq: int,
) -> tuple[np.ndarray, torch.Tensor, list[dict[str, float]]]:
    """Train the gates for ``epochs`` steps; return the households ranked by gate logit.

    ``t`` are the targets, ``scale`` the row scale of the relative errors,
    ``v`` the normalised target weights and ``d`` the design weights, all on
    ``op``'s device in the compute dtype. ``kind`` is the calibration
    distance of ``lambda_distance``. Returns the order (descending logits,
    stable), the log-adjustments ``theta`` and the history rows.

    Examples
    --------
    >>> M = SparseOperator.from_any(np.eye(3), dtype=torch.float64)
    >>> one = torch.ones(3, dtype=torch.float64)
    >>> order, theta, hist = train_gates(
    ...     M, one, one, one / 3, one, 2, epochs=5, lr=0.1, temperature=2 / 3,
    ...     final_temperature=None, init_prob_active=0.5, learn_adjustments=False,
    ...     lambda_dispersion=0.0, lambda_distance=0.0, kind="chi2",
    ...     generator=torch.Generator().manual_seed(0), clock=StageClock(False), where="on cpu",
    ...     verbose_freq=5)
    >>> sorted(order.tolist()), len(hist)
    ([0, 1, 2], 1)
    """
    dtype, dev = d.dtype, d.device
    n_cols = op.shape[1]
    total_d = d.sum()
    gate = HardConcrete(
        n_cols,
        temperature=temperature,
        init_prob_active=init_prob_active,
        device=dev,
        dtype=dtype,
        generator=generator,
    )
    theta = torch.nn.Parameter(torch.zeros(n_cols, device=dev, dtype=dtype))
    scratch = torch.empty_like(gate.log_alpha.detach())
    _project_count(gate, count, scratch)
    opt = _Adam([gate.log_alpha, theta] if learn_adjustments else [gate.log_alpha], lr=lr)
    history: list[dict[str, float]] = []
    gate.train()
    threads = torch.get_num_threads()
    if dev.type == "cpu" and op.nnz < _SMALL_NNZ:
        torch.set_num_threads(1)  # small products: threads only add synchronisation
    with clock.stage("gates", where, device=str(dev)):
        try:
            for epoch in range(epochs):
                if final_temperature is not None and epochs > 1:
                    frac = epoch / (epochs - 1)
                    gate.set_temperature(temperature * (final_temperature / temperature) ** frac)
                opt.zero_grad(set_to_none=True)
                z = gate()
                base = d * z
                c = (total_d / base.sum().clamp_min(torch.finfo(dtype).tiny)).detach()
                # Without learned adjustments exp(theta) is 1: two passes and their
                # backward saved per epoch.
                w = base * torch.exp(theta) * c if learn_adjustments else base * c
                est = sparse_matvec(op, w)
                rel = (est - t) / scale
                fit = (v * rel * rel).sum()
                loss = fit
                disp = dispersion_penalty(w) if lambda_dispersion > 0 else fit.new_zeros(())
                if lambda_dispersion > 0:
                    loss = loss + lambda_dispersion * disp
                if lambda_distance > 0:
                    loss = loss + lambda_distance * calibration_distance(
                        w, d * c, kind, active_only=True
                    )
                loss.backward()
                opt.step()
                _project_count(gate, count, scratch)
                clock.tick()
                if (epoch + 1) % verbose_freq == 0 or epoch + 1 == epochs:
                    row = {
                        "epoch": float(epoch + 1),
                        "fit_loss": float(fit.item()),
                        "dispersion": float(disp.item()),
                        "expected_active": float(gate.l0_penalty().item()),
                    }
                    history.append(row)
                    logger.info(
                        "select epoch %d: fit %.3e dispersion %.3f expected active %.0f",
                        epoch + 1,
                        row["fit_loss"],
                        row["dispersion"],
                        row["expected_active"],
                    )
        finally:
            torch.set_num_threads(threads)

    with torch.no_grad():
        order = torch.argsort(gate.log_alpha.detach(), descending=True, stable=True).cpu().numpy()
    return order, theta.detach(), history
