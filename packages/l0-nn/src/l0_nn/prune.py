"""``prune_model``: zero, in place, what the gates removed."""

from __future__ import annotations

import logging

from torch import nn

__all__ = ["prune_model"]

logger = logging.getLogger(__name__)


def prune_model(model: nn.Module, threshold: float | None = None) -> nn.Module:
    """Zero the weights of every group the gates removed, in place, and switch to eval mode.

    Works on every l0-nn layer (:class:`~l0_nn.L0Linear` of any granularity,
    :class:`~l0_nn.L0Conv2d`, :class:`~l0_nn.L0DepthwiseConv2d`,
    :class:`~l0_nn.SparseL0Linear`) anywhere inside ``model``. A removed
    output neuron or channel also loses its bias, so it outputs exactly 0.
    The gates are left as they are; to get a physically smaller model use
    :func:`~l0_nn.export_pruned`.

    Parameters
    ----------
    model : torch.nn.Module
        Model to prune (modified in place).
    threshold : float or None, default None
        ``None``: remove the groups whose eval-mode gate is exactly 0 (for
        Hard Concrete gates, those with ``P(active) <= 0.5``). A number in
        ``[0, 1)``: remove the groups whose probability of being active is
        ``<= threshold`` (l0-python 0.6 used ``threshold=0.05``).

    Returns
    -------
    torch.nn.Module
        ``model`` itself, in eval mode.

    Examples
    --------
    >>> import torch
    >>> from l0_nn import L0Conv2d
    >>> conv = L0Conv2d(1, 4, 3, init_sparsity=0.5)
    >>> with torch.no_grad(): _ = conv.gates.log_alpha[:2].fill_(-10.0)
    >>> _ = prune_model(conv)
    >>> conv.weight[:2].abs().sum().item(), conv.bias[:2].abs().sum().item()
    (0.0, 0.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be None or a number in [0, 1), got {threshold!r}")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(
                f"threshold must lie in [0, 1), got {threshold!r}; it is the probability of being "
                "active at or below which a group is removed (e.g. 0.05), or None for the eval gates"
            )
    model.eval()
    total = 0

    def walk(module: nn.Module) -> None:
        nonlocal total
        prune = getattr(module, "prune_", None)
        if callable(prune):
            total += int(prune(threshold))
            return
        for child in module.children():
            walk(child)

    walk(model)
    logger.info("prune_model: zeroed %d gated groups", total)
    return model
