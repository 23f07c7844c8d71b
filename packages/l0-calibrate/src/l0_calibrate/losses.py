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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor

__all__ = [
    "BUILTIN_LOSSES",
    "LossFn",
    "capped_relative_loss",
    "get_loss",
    "mse_loss",
    "microcalibrate_loss",
    "relative_loss",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


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
    from l0_core import available, lookup

    if not isinstance(loss_type, str) or loss_type not in available("losses"):
        raise ValueError(
            f"unknown loss {loss_type!r} for {argument}; available: {available('losses')}. "
            "Pass one of them, a function (estimate, target) -> per-target loss, or register "
            "one through the l0_register_losses plugin hook."
        )
    return lookup("losses", loss_type, argument=argument)
