"""The training loop shared by the selection gates.

Every gate is trained the same way: a task loss on a reparameterised gate
sample plus l0-core's :class:`~l0_core.TargetSparsityController`, whose
target moves smoothly (cubic schedule) from the initial expected count down
to the requested count, then stays there. The final selection is an exact
top-k of the trained gates' probabilities, so the count is never left to a
hand-tuned penalty strength.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from l0_core import TargetSparsityController, gate_temperature, make_gate, set_gate_temperature
from torch import Tensor, nn

__all__ = [
    "Adam",
    "TrainConfig",
    "build_gate",
    "exact_top_k",
    "gate_generator",
    "gate_ranking",
    "train_gate",
]

logger = logging.getLogger("l0_gates")

#: ``log_alpha`` is kept in ``[-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND]`` during training. Far
#: outside, ``sigmoid`` saturates in float32, the gradient of ``prob_active`` underflows to 0
#: and a gate freezes open or shut where the controller can no longer move it.
LOG_ALPHA_BOUND = 10.0


def gate_generator(seed: int, device: torch.device | None) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``.

    Examples
    --------
    >>> gate_generator(0, None).initial_seed()
    0
    """
    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(seed)
    return gen


def build_gate(
    gate: str | type,
    size: int,
    *,
    temperature: float,
    init_prob_active: float,
    seed: int,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> nn.Module:
    """Make a 1-D gate of the registered type ``gate`` with its own seeded generator.

    Examples
    --------
    >>> g = build_gate("hard_concrete", 4, temperature=0.5, init_prob_active=0.5, seed=0,
    ...                device=None, dtype=None)
    >>> g.prob_active().shape
    torch.Size([4])
    """
    return make_gate(
        gate,
        size,
        temperature=temperature,
        init_prob_active=init_prob_active,
        device=device,
        dtype=dtype,
        generator=gate_generator(seed, device),
    )


@torch.no_grad()
def gate_ranking(gate: nn.Module) -> Tensor:
    """All gate indices, most likely to be active first.

    Ties in ``prob_active`` (e.g. several gates saturated at 1 in float32)
    are broken by ``log_alpha`` when the gate has one, then by index, so the
    order is deterministic.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> g = HardConcrete(4, init_std=0.0)
    >>> _ = g.log_alpha.data.copy_(torch.tensor([0.0, 3.0, -1.0, 2.0]))
    >>> gate_ranking(g).tolist()
    [1, 3, 0, 2]
    """
    prob = gate.prob_active().detach().reshape(-1)
    device = prob.device
    prob = prob.double().cpu().numpy()
    la = getattr(gate, "log_alpha", None)
    second = (
        la.detach().reshape(-1).double().cpu().numpy()
        if isinstance(la, Tensor) and la.numel() == prob.size
        else np.zeros_like(prob)
    )
    order = np.lexsort((np.arange(prob.size), -second, -prob))
    return torch.as_tensor(order, dtype=torch.long, device=device)


def exact_top_k(gate: nn.Module, k: int) -> Tensor:
    """Sorted indices of the ``k`` gates most likely to be active (see :func:`gate_ranking`).

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> g = HardConcrete(5, init_std=0.0)
    >>> _ = g.log_alpha.data.copy_(torch.tensor([0.0, 3.0, -1.0, 2.0, 3.0]))
    >>> exact_top_k(g, 2).tolist()
    [1, 4]
    """
    return gate_ranking(gate)[:k].sort().values


class Adam:
    """Minimal Adam (Kingma & Ba 2015) over parameter groups.

    ``torch.optim.Adam`` imports ``torch._dynamo`` on first use, which costs
    seconds; the gates only need the plain algorithm. Each group is a dict
    with ``params``, ``lr`` and optionally ``weight_decay`` (L2 added to the
    gradient).

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = Adam([{"params": [w], "lr": 0.1}])
    >>> w.grad = torch.tensor([2.0]); opt.step(); round(w.item(), 4)
    0.9
    """

    def __init__(
        self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.state = {
            id(p): (torch.zeros_like(p), torch.zeros_like(p))
            for g in self.param_groups
            for p in g["params"]
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t
        c2 = 1 - b2**self.t
        for g in self.param_groups:
            wd = g.get("weight_decay", 0.0)
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if not wd else p.grad + wd * p
                m, v = self.state[id(p)]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / c1)


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train_gate`.

    Attributes
    ----------
    epochs : int
        Number of full-batch steps.
    lr : float
        Adam step size for the gate parameters.
    extra_lr : float or None
        Step size for the extra (model) parameters; ``lr`` when ``None``.
    controller_lr : float
        Step size of the controller's multipliers.
    schedule_fraction : float
        Fraction of the epochs over which the target moves to its final count.
    weight_decay : float
        Adam weight decay of the extra parameters.
    final_lr_fraction : float
        The step sizes decay along a cosine to this fraction of their
        initial value by the last epoch (1 keeps them constant).
    initial_temperature : float or None
        When set, the gate temperature starts here and moves geometrically to
        the gate's own temperature over the same ramp as the target; a warmer
        start keeps gradients flowing to gates that are often closed.
    """

    epochs: int = 300
    lr: float = 0.1
    extra_lr: float | None = None
    controller_lr: float = 0.05
    schedule_fraction: float = 0.5
    weight_decay: float = 0.0
    final_lr_fraction: float = 0.1
    initial_temperature: float | None = None
    samples: int = 1


def train_gate(
    gate: nn.Module,
    loss_fn: Callable[[Tensor], Tensor],
    target: int,
    config: TrainConfig,
    extra_params: Iterable[nn.Parameter] = (),
    verbose_freq: int | None = None,
) -> list[dict[str, float]]:
    """Train ``gate`` so that ``loss_fn(gate())`` is small with about ``target`` gates active.

    Parameters
    ----------
    gate : nn.Module
        A gate implementing the l0-core ``Gate`` protocol (1-D).
    loss_fn : callable
        Maps a gate sample to a scalar task loss. It is divided by its
        absolute value at the first step, so that the controller's step size
        means the same for every task.
    target : int
        Final number of active gates the controller drives towards.
    config : TrainConfig
        Optimisation settings.
    extra_params : iterable of Parameter
        Further parameters trained jointly (e.g. a model's weights).
    verbose_freq : int, optional
        Record (and log at DEBUG level) the loss every that many epochs;
        defaults to a tenth of the epochs.

    Returns
    -------
    list of dict
        ``{"epoch", "loss", "expected_active", "target"}`` records.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> g = HardConcrete(20, init_prob_active=0.5, generator=torch.Generator().manual_seed(0))
    >>> w = torch.linspace(-1, 1, 20)
    >>> config = TrainConfig(epochs=500, controller_lr=0.2)
    >>> hist = train_gate(g, lambda z: (w.abs() - z * w).sum(), 5, config)
    >>> sorted(exact_top_k(g, 5).tolist())
    [15, 16, 17, 18, 19]
    """
    n_total = int(gate.prob_active().numel())
    controller = TargetSparsityController(target, n_total, lr=config.controller_lr)
    params = [p for p in gate.parameters() if p.requires_grad]
    extra = [p for p in extra_params if p.requires_grad]
    groups = [{"params": params, "lr": config.lr}]
    if extra:
        groups.append(
            {
                "params": extra,
                "lr": config.extra_lr if config.extra_lr is not None else config.lr,
                "weight_decay": config.weight_decay,
            }
        )
    opt = Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    with torch.no_grad():
        start = float(gate.l0_penalty().item())
    every = verbose_freq or max(1, config.epochs // 10)
    ramp = max(1.0, config.schedule_fraction * config.epochs)
    history: list[dict[str, float]] = []
    task_scale: float | None = None
    log_alpha = getattr(gate, "log_alpha", None)
    if not (isinstance(log_alpha, Tensor) and log_alpha.requires_grad):
        log_alpha = None
    final_temp = gate_temperature(gate)
    was_training = gate.training
    gate.train()
    try:
        for epoch in range(config.epochs):
            if config.final_lr_fraction != 1.0:
                frac = epoch / max(1, config.epochs - 1)
                factor = config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (
                    1 + math.cos(math.pi * frac)
                )
                for group, base_lr in zip(opt.param_groups, base_lrs, strict=True):
                    group["lr"] = base_lr * factor
            progress = min(1.0, epoch / ramp)
            if config.initial_temperature is not None:
                set_gate_temperature(
                    gate,
                    config.initial_temperature
                    * (final_temp / config.initial_temperature) ** progress,
                )
            scheduled = target + (start - target) * (1.0 - progress) ** 3
            opt.zero_grad(set_to_none=True)
            task = loss_fn(gate())
            for _ in range(config.samples - 1):
                task = task + loss_fn(gate())
            if config.samples > 1:
                task = task / config.samples
            if task_scale is None:
                first = abs(float(task.detach().item()))
                task_scale = first if first > 0 and math.isfinite(first) else 1.0
            expected = gate.l0_penalty()
            # The controller sees the gap to the *scheduled* count: shifting the
            # expected count by (target - scheduled) moves its set point.
            loss = task / task_scale + controller.penalty(expected + (target - scheduled))
            loss.backward()
            opt.step()
            controller.step()
            if log_alpha is not None:
                with torch.no_grad():
                    log_alpha.clamp_(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
            if epoch % every == 0 or epoch == config.epochs - 1:
                rec = {
                    "epoch": float(epoch),
                    "loss": float(task.detach().item()),
                    "expected_active": float(expected.detach().item()),
                    "target": float(scheduled),
                }
                history.append(rec)
                logger.debug(
                    "epoch %d: loss %.4g, expected active %.1f (target %.1f)",
                    epoch,
                    rec["loss"],
                    rec["expected_active"],
                    scheduled,
                )
    finally:
        gate.train(was_training)
        set_gate_temperature(gate, final_temp)
    return history
