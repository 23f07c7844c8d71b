"""Calibration losses: per-target functions of (estimate, target), looked up by name.

Every loss returns one value per target; the fit multiplies them by the
per-target group weights and sums (the published rule, so ``lambda_l0``
keeps its meaning). Built-ins are registered through the same plugin hook
(``l0_register_losses``) that third-party packages use:

``"mse"``
    ``(estimate - target)^2``.
``"relative"``
    ``((estimate - target) / (|target| + 1))^2``: l0-python 0.6.2's
    definition (which divides by ``target + 1``) for non-negative targets;
    the absolute value keeps a target of ``-1`` from dividing by zero.
``"capped_relative"``
    The relative error ``e`` above, squared while ``|e| <= 1`` and growing
    only linearly beyond (``2|e| - 1``, a Huber loss on ``e``), so that a few
    targets that cannot be reached do not dominate the gradient.
``"microcalibrate"``
    microcalibrate's ``((estimate - target + 1) / (|target| + 1))^2``.

The fit differentiates the loss with autograd on the (small) target vector
only (:func:`target_gradient`), and penalties on the weights themselves on a
detached copy of ``w`` (:func:`penalty_gradient`); the Hard Concrete part of
the gradient is :class:`l0_core.HardConcreteWorkspace`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from l0_core import available, lookup
from torch import Tensor

__all__ = [
    "BUILTIN_LOSSES",
    "LossFn",
    "WeightPenalty",
    "capped_relative_loss",
    "get_loss",
    "mse_loss",
    "microcalibrate_loss",
    "penalty_gradient",
    "rel_errors",
    "relative_loss",
    "target_gradient",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: A penalty on the weights ``w`` (a scalar tensor, differentiable in ``w``).
WeightPenalty = Callable[[Tensor], Tensor]


def mse_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Squared error per target.

    Examples
    --------
    >>> mse_loss(torch.tensor([3.0]), torch.tensor([1.0])).tolist()
    [4.0]
    """
    return (estimate - target).pow(2)


def relative_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Squared relative error ``((estimate - target) / (|target| + 1))^2`` per target.

    Examples
    --------
    >>> relative_loss(torch.tensor([12.0]), torch.tensor([9.0])).tolist()
    [0.09000000357627869]
    """
    return ((estimate - target) / (target.abs() + 1.0)).pow(2)


def capped_relative_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Relative error squared up to 100%, linear beyond (Huber with delta 1).

    Examples
    --------
    >>> capped_relative_loss(torch.tensor([1.5, 31.0]), torch.tensor([1.0, 1.0])).tolist()
    [0.0625, 29.0]
    """
    e = ((estimate - target) / (target.abs() + 1.0)).abs()
    return torch.where(e <= 1.0, e * e, 2.0 * e - 1.0)


def microcalibrate_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """microcalibrate's ``((estimate - target + 1) / (|target| + 1))^2`` per target.

    Examples
    --------
    >>> microcalibrate_loss(torch.tensor([9.0]), torch.tensor([9.0])).tolist()
    [0.010000000707805157]
    """
    return ((estimate - target + 1.0) / (target.abs() + 1.0)).pow(2)


#: The losses l0-calibrate registers (through the ``l0_register_losses`` hook).
BUILTIN_LOSSES: dict[str, LossFn] = {
    "mse": mse_loss,
    "relative": relative_loss,
    "capped_relative": capped_relative_loss,
    "microcalibrate": microcalibrate_loss,
}


def get_loss(loss_type: Union[str, LossFn], argument: str = "loss_type") -> LossFn:
    """The loss registered under ``loss_type`` (plugins included), or the callable itself.

    An unknown name raises ``ValueError`` listing the registered names; it
    never falls back to MSE.

    Examples
    --------
    >>> get_loss("relative") is relative_loss
    True
    """
    if callable(loss_type):
        return loss_type
    if not isinstance(loss_type, str) or loss_type not in available("losses"):
        raise ValueError(
            f"unknown loss {loss_type!r} for {argument}; available: {available('losses')}. "
            "Pass one of them, a function (estimate, target) -> per-target loss, or register "
            "one through the l0_register_losses plugin hook."
        )
    return lookup("losses", loss_type, argument=argument)


def target_gradient(
    estimate: Tensor, targets: Tensor, loss_weights: Tensor, loss_fn: LossFn
) -> tuple[Tensor, Tensor]:
    """Data loss ``sum_i g_i L(estimate, targets)_i`` and its gradient in the estimate.

    Autograd runs on the (small) target vector only.

    Examples
    --------
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


def penalty_gradient(w: Tensor, penalties: list[tuple[float, WeightPenalty]]) -> tuple[Tensor, Tensor]:
    """Value and gradient in ``w`` of ``sum_k lambda_k P_k(w)`` (autograd on a detached copy).

    Examples
    --------
    >>> val, g = penalty_gradient(torch.tensor([1.0, 2.0]), [(0.5, lambda w: (w * w).sum())])
    >>> val.item(), g.tolist()
    (2.5, [1.0, 2.0])
    """
    if not penalties:
        raise ValueError("penalties is empty; pass at least one (lambda, penalty) pair")
    leaf = w.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        total = penalties[0][0] * penalties[0][1](leaf)
        for lam, fn in penalties[1:]:
            total = total + lam * fn(leaf)
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
