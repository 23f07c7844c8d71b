"""The Hard Concrete formulas of Louizos, Welling & Kingma (2017), as functions.

A Hard Concrete gate ``z`` is a binary Concrete variable stretched to the
interval ``(gamma, zeta)`` with ``gamma < 0 < 1 < zeta`` and clipped to
``[0, 1]``, so that ``z`` is exactly 0 or exactly 1 with positive
probability while remaining reparameterisable::

    u ~ Uniform(0, 1)                       (clamped to [eps, 1 - eps])
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clamp(s * (zeta - gamma) + gamma, 0, 1)

``beta`` is the temperature and ``eps`` the machine epsilon of the dtype
(:func:`uniform_eps`). The probability that a gate is non-zero is
``sigmoid(log_alpha - beta * log(-gamma / zeta))`` (paper, eq. 12), whose sum
is the differentiable L0 penalty; the median of ``z`` (the deterministic
test-time gate) is ``clamp(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``.

Every package of the monorepo uses these functions (the module
:class:`~l0_core.HardConcrete`, and the autograd-free kernels of
:mod:`l0_core.fused`) instead of writing the formulas out again.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from .checks import check_probability

__all__ = [
    "GAMMA",
    "STRETCH",
    "ZETA",
    "hard_concrete_from_uniform",
    "hard_concrete_median",
    "hard_concrete_prob_active",
    "hard_concrete_sample",
    "log_alpha_for_prob_active",
    "median_gate_limits",
    "prob_active_for_init_mean",
    "prob_active_for_log_alpha",
    "resolve_init_prob_active",
    "uniform_eps",
]

#: Default stretch: ``gamma = -STRETCH`` and ``zeta = 1 + STRETCH`` (the paper's values).
STRETCH = 0.1
#: Default lower end of the stretch interval.
GAMMA = -STRETCH
#: Default upper end of the stretch interval.
ZETA = 1.0 + STRETCH


def uniform_eps(dtype: torch.dtype) -> float:
    """The clamp on the uniform noise: ``u`` is kept in ``[eps, 1 - eps]``.

    ``eps`` is the machine epsilon of ``dtype``, so no logarithm of 0 (or of
    a rounded ``1 - u == 0``) can occur, also in float16/bfloat16.

    Examples
    --------
    >>> uniform_eps(torch.float32) == torch.finfo(torch.float32).eps
    True
    """
    return float(torch.finfo(dtype).eps)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def log_alpha_for_prob_active(
    prob: float, temperature: float, gamma: float = GAMMA, zeta: float = ZETA
) -> float:
    """Return the ``log_alpha`` at which a gate is non-zero with probability ``prob``.

    Inverts ``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``.

    Parameters
    ----------
    prob : float
        Target probability that the gate is non-zero, in ``(0, 1)``.
    temperature : float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    float

    Examples
    --------
    >>> round(log_alpha_for_prob_active(0.5, 2 / 3), 4)
    -1.5986
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(
            f"init_prob_active must lie strictly between 0 and 1, got {prob!r}; "
            "use e.g. 0.999 to start with almost every gate open"
        )
    return math.log(prob) - math.log1p(-prob) + temperature * math.log(-gamma / zeta)


def prob_active_for_log_alpha(
    log_alpha: float, temperature: float, gamma: float = GAMMA, zeta: float = ZETA
) -> float:
    """Return ``P(z != 0)`` of a gate with location ``log_alpha``.

    The inverse of :func:`log_alpha_for_prob_active`:
    ``sigmoid(log_alpha - beta * log(-gamma / zeta))``.

    Parameters
    ----------
    log_alpha : float
        Location parameter of the gate.
    temperature : float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    float

    Examples
    --------
    >>> round(prob_active_for_log_alpha(0.0, 2 / 3), 4)
    0.8318
    >>> round(prob_active_for_log_alpha(log_alpha_for_prob_active(0.3, 0.5), 0.5), 9)
    0.3
    """
    x = log_alpha - temperature * math.log(-gamma / zeta)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def prob_active_for_init_mean(
    init_mean: float, temperature: float, gamma: float = GAMMA, zeta: float = ZETA
) -> float:
    """``P(z != 0)`` of a gate initialised the l0-python 0.6.2 way, ``log_alpha = logit(init_mean)``.

    0.6.2's ``init_mean`` (``init_keep_prob`` in its calibration and sparse
    regression classes) is a logit mean, not a probability of an open gate;
    this is the ``init_prob_active`` with the same initial ``log_alpha``.

    Parameters
    ----------
    init_mean : float
        The 0.6.2 logit mean, in ``(0, 1)``.
    temperature : float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    float

    Examples
    --------
    >>> round(prob_active_for_init_mean(0.5, 0.5), 4)
    0.7683
    """
    return prob_active_for_log_alpha(_logit(init_mean), temperature, gamma, zeta)


def median_gate_limits(
    temperature: float, gamma: float = GAMMA, zeta: float = ZETA
) -> tuple[float, float]:
    """``(off, on)``: the median gate is exactly 0 for ``log_alpha <= off``, exactly 1 for ``>= on``.

    ``off = beta * log(-gamma / zeta)`` is also where ``P(z != 0) = 1/2``, and
    ``on = beta * log((1 - gamma) / (zeta - 1))`` where ``P(z = 1) = 1/2``.

    Parameters
    ----------
    temperature : float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    tuple of float

    Examples
    --------
    >>> [round(v, 4) for v in median_gate_limits(2 / 3)]
    [-1.5986, 1.5986]
    """
    off = temperature * math.log(-gamma / zeta)
    on = temperature * math.log((1 - gamma) / (zeta - 1))
    return off, on


def resolve_init_prob_active(
    init_prob_active: float | None,
    init_mean: float | None,
    temperature: float,
    *,
    owner: str,
    default: float = 0.5,
    stacklevel: int = 3,
) -> float:
    """The initial ``P(gate != 0)`` from ``init_prob_active`` or the deprecated ``init_mean``.

    ``init_mean`` has l0-python 0.6.2's meaning, the initial logit mean
    (``log_alpha = logit(init_mean)``); it is translated to the probability
    that a Hard Concrete gate (stretch 0.1) with those logits is non-zero at
    ``temperature``, with a ``DeprecationWarning`` that gives the value to pass
    as ``init_prob_active``. Passing both is a ``TypeError``.

    Parameters
    ----------
    init_prob_active : float or None
        The probability that a gate starts non-zero, in ``(0, 1)``.
    init_mean : float or None
        Deprecated: 0.6.2's logit mean, in ``(0, 1)``.
    temperature : float
        The gate temperature ``beta`` used for the translation.
    owner : str
        The class named in messages, e.g. ``"L0Gate"``.
    default : float, default 0.5
        Used when neither is given.
    stacklevel : int, default 3
        ``stacklevel`` of the warning (3 points at the caller of ``owner``).

    Returns
    -------
    float

    Examples
    --------
    >>> resolve_init_prob_active(0.9, None, 0.5, owner="L0Gate")
    0.9
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     round(resolve_init_prob_active(None, 0.5, 0.5, owner="L0Gate"), 4)
    0.7683
    """
    if init_mean is None:
        if init_prob_active is None:
            return default
        return check_probability(
            init_prob_active, "init_prob_active", hint="e.g. 0.5 (half the gates start open)"
        )
    _check_both(init_prob_active, owner)
    mean = _check_init_mean(init_mean)
    prob = prob_active_for_init_mean(mean, temperature)
    _warn_init_mean(owner, prob, stacklevel + 1)
    return prob


def _check_both(init_prob_active: float | None, owner: str) -> None:
    if init_prob_active is not None:
        raise TypeError(
            f"{owner}() got both init_prob_active and init_mean; pass only init_prob_active "
            "(the probability that a gate starts non-zero). init_mean is deprecated: it is "
            "l0-python 0.6.2's logit mean, log_alpha = logit(init_mean)"
        )


def _check_init_mean(init_mean: Any) -> float:
    return check_probability(
        init_mean,
        "init_mean",
        hint="it is l0-python 0.6.2's logit mean, log_alpha = logit(init_mean), e.g. 0.999",
    )


def _warn_init_mean(owner: str, prob: float, stacklevel: int) -> None:
    warnings.warn(
        f"{owner}(init_mean=...) is deprecated: it is l0-python 0.6.2's logit mean "
        "(log_alpha = logit(init_mean)); pass init_prob_active, the probability that a gate "
        "starts non-zero, instead: init_prob_active = sigmoid(logit(init_mean) - "
        f"temperature * log(-gamma / zeta)), here {prob:.6g}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def hard_concrete_from_uniform(
    u: Tensor,
    log_alpha: Tensor,
    temperature: Tensor | float,
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> Tensor:
    """The Hard Concrete sample for given uniform noise ``u``; differentiable in ``log_alpha``.

    ``u`` is clamped to ``[eps, 1 - eps]`` (:func:`uniform_eps` of its dtype)
    on a copy; the caller's tensor is not modified.

    Parameters
    ----------
    u : Tensor
        Uniform noise in ``[0, 1]``, broadcastable with ``log_alpha``.
    log_alpha : Tensor
        Location parameters.
    temperature : Tensor or float
        The temperature ``beta`` (> 0).
    gamma, zeta : float
        Stretch interval, ``gamma < 0 < 1 < zeta``.

    Returns
    -------
    Tensor
        Samples in ``[0, 1]`` on ``log_alpha``'s device, in the promoted dtype.

    Examples
    --------
    >>> hard_concrete_from_uniform(torch.tensor([0.0, 0.5, 1.0]), torch.zeros(3), 2 / 3).tolist()
    [0.0, 0.5, 1.0]
    """
    eps = uniform_eps(u.dtype)
    u = u.clamp(eps, 1.0 - eps)
    noise = torch.log(u) - torch.log1p(-u)
    s = torch.sigmoid((noise + log_alpha) / temperature)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_sample(
    log_alpha: Tensor,
    temperature: Tensor | float,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw a reparameterised Hard Concrete sample with ``log_alpha``'s shape.

    Uniform noise is drawn with :func:`torch.rand` on ``log_alpha``'s device
    and dtype, then transformed by :func:`hard_concrete_from_uniform`.

    Parameters
    ----------
    log_alpha : Tensor
        Location parameters.
    temperature : Tensor or float
        The temperature ``beta`` (> 0).
    gamma, zeta : float
        Stretch interval, ``gamma < 0 < 1 < zeta``.
    generator : torch.Generator, optional
        Source of randomness (must live on ``log_alpha``'s device).

    Returns
    -------
    Tensor
        Samples in ``[0, 1]``, differentiable with respect to ``log_alpha``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> z = hard_concrete_sample(torch.zeros(5), 2 / 3, -0.1, 1.1, g)
    >>> bool(((z >= 0) & (z <= 1)).all())
    True
    """
    u = torch.rand(
        log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype
    )
    return hard_concrete_from_uniform(u, log_alpha, temperature, gamma, zeta)


def hard_concrete_median(
    log_alpha: Tensor,
    temperature: Tensor | float,
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> Tensor:
    """The deterministic (median) gate ``clamp(sigmoid(log_alpha / beta) (zeta - gamma) + gamma, 0, 1)``.

    Exactly 0 precisely when ``P(z != 0) <= 1/2`` (``log_alpha <= off`` of
    :func:`median_gate_limits`); differentiable in ``log_alpha``.

    Parameters
    ----------
    log_alpha : Tensor
        Location parameters.
    temperature : Tensor or float
        The temperature ``beta`` (pass 1.0 for the paper's temperature-free estimator).
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    Tensor
        Gates in ``[0, 1]``, ``log_alpha``'s shape, device and dtype.

    Examples
    --------
    >>> hard_concrete_median(torch.tensor([-30.0, 0.0, 30.0]), 2 / 3).tolist()
    [0.0, 0.5, 1.0]
    """
    s = torch.sigmoid(log_alpha / temperature)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_prob_active(
    log_alpha: Tensor,
    temperature: Tensor | float,
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> Tensor:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``, elementwise; differentiable.

    Its sum is the L0 penalty (the expected number of non-zero gates).

    Parameters
    ----------
    log_alpha : Tensor
        Location parameters.
    temperature : Tensor or float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.

    Returns
    -------
    Tensor
        Probabilities, ``log_alpha``'s shape, device and dtype.

    Examples
    --------
    >>> off, _ = median_gate_limits(0.5)
    >>> hard_concrete_prob_active(torch.tensor([off]), 0.5).tolist()
    [0.5]
    """
    return torch.sigmoid(log_alpha - temperature * math.log(-gamma / zeta))
