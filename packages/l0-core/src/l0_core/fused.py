"""Fused, autograd-free Hard Concrete kernels for gated weights ``w = exp(log_weight) * z``.

For many gates (millions of households in calibration) building an
autograd graph per step costs more than the arithmetic. These kernels
compute the same quantities as the differentiable formulas of
:mod:`l0_core.hard_concrete_math`, in place on preallocated buffers and with
the gradients written out by hand. One step is::

    u ~ U(0, 1)                       (clamped to [eps, 1 - eps], eps = uniform_eps(dtype))
    s = sigmoid((logit(u) + clamp(log_alpha, -B, B)) / beta)
    z = clamp(s (zeta - gamma) + gamma, 0, 1)
    w = exp(log_weight) * z

and, given ``dL/dw`` (e.g. ``M^T r`` from one sparse product), with the
penalties ``lambda_l0 sum_j pi_j + lambda_l2 sum_j exp(2 log_weight_j)``::

    dL/dlog_weight = dL/dw * w + 2 lambda_l2 exp(2 log_weight)
    dL/dlog_alpha  = dL/dw * exp(log_weight) * (zeta - gamma) s (1 - s) / beta * [0 < z < 1]
                     + lambda_l0 * pi (1 - pi)                  (both 0 where |log_alpha| > B)

with ``pi = sigmoid(clamp(log_alpha) - beta log(-gamma / zeta))``
(:func:`~l0_core.hard_concrete_math.hard_concrete_prob_active`). ``B`` is
an optional bound on ``log_alpha`` (``None``: no clamp).

Every buffer and result takes the device and dtype of the parameters passed
in; the ops are device-agnostic (CPU, CUDA, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_int, check_temperature
from .hard_concrete_math import GAMMA, ZETA, median_gate_limits, uniform_eps
from .precision import accumulate_sum

__all__ = ["HardConcreteWorkspace", "fused_median_gates"]


def _clamp_into(log_alpha: Tensor, bound: float | None, out: Tensor) -> Tensor:
    if bound is None:
        return out.copy_(log_alpha)
    return torch.clamp(log_alpha, -bound, bound, out=out)


class HardConcreteWorkspace:
    """Preallocated buffers and the hand-written forward/backward of gated weights.

    :meth:`forward` samples the gates and returns ``w = exp(log_weight) * z``;
    :meth:`backward` turns ``dL/dw`` into the gradients of ``log_weight`` and
    ``log_alpha`` (plus the L0 and L2 penalty terms), reusing what
    :meth:`forward` left in the buffers. Nothing is recorded by autograd.

    Parameters
    ----------
    n : int
        Number of gates (the length of ``log_weight`` and ``log_alpha``).
    device : torch.device or str, optional
        Device of the buffers (default CPU). If :meth:`forward` is called with
        parameters on another device or dtype, or of another length, the
        buffers are reallocated to follow them.
    dtype : torch.dtype, optional
        Floating dtype of the buffers (default ``torch.get_default_dtype()``).

    Attributes
    ----------
    u, s, z, ew, w, lac : Tensor
        After :meth:`forward`: the (clamped) uniforms, ``s``, the gates
        ``z``, ``exp(log_weight)``, the weights ``w`` and the clamped
        ``log_alpha``. :meth:`backward` overwrites ``u`` (scratch).

    Examples
    --------
    >>> ws = HardConcreteWorkspace(3, "cpu", torch.float64)
    >>> lw, la = torch.zeros(3, dtype=torch.float64), torch.full((3,), 30.0, dtype=torch.float64)
    >>> ws.forward(lw, la, temperature=2 / 3, bound=20.0, generator=None).tolist()
    [1.0, 1.0, 1.0]
    >>> g_lw, g_la, l0, l2 = ws.backward(
    ...     torch.ones(3, dtype=torch.float64), la, temperature=2 / 3, bound=20.0,
    ...     lambda_l0=0.1, lambda_l2=0.0)
    >>> g_lw.tolist(), g_la.tolist(), round(l0.item(), 6)  # log_alpha beyond the bound: no gradient
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 3.0)
    """

    def __init__(
        self,
        n: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_int(n, "n", min_val=0, hint="pass the number of gates, e.g. 1000")
        self._allocate(n, torch.device(device or "cpu"), dtype or torch.get_default_dtype())

    def _allocate(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}; use e.g. torch.float32")

        def buf() -> Tensor:
            return torch.empty(n, device=device, dtype=dtype)

        self.n = n
        self.u = buf()  # uniforms, then scratch
        self.s = buf()  # sigmoid((logit u + log_alpha) / beta)
        self.z = buf()  # gates
        self.ew = buf()  # exp(log_weight)
        self.w = buf()  # weights
        self.lac = buf()  # clamped log_alpha
        self.t = buf()  # scratch
        self.outside = torch.empty(n, device=device, dtype=torch.bool)

    def _follow(self, like: Tensor) -> None:
        if like.dim() != 1:
            raise ValueError(
                f"log_weight and log_alpha must be 1-D (one entry per gate), got shape "
                f"{tuple(like.shape)}; flatten them first"
            )
        if like.shape[0] != self.n or like.device != self.u.device or like.dtype != self.u.dtype:
            self._allocate(like.shape[0], like.device, like.dtype)

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(
        self,
        log_weight: Tensor,
        log_alpha: Tensor,
        *,
        temperature: float,
        gamma: float = GAMMA,
        zeta: float = ZETA,
        bound: float | None = None,
        generator: torch.Generator | None = None,
        use_gates: bool = True,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Sample the gates and return the weights ``w`` (a view of an internal buffer).

        Parameters
        ----------
        log_weight, log_alpha : Tensor
            1-D parameters of equal length, on one device and in one dtype.
        temperature : float
            The temperature ``beta``.
        gamma, zeta : float
            Stretch interval end points.
        bound : float, optional
            ``log_alpha`` is clamped to ``[-bound, bound]`` (None: not clamped).
        generator : torch.Generator, optional
            Source of the uniforms (on ``log_alpha``'s device).
        use_gates : bool, default True
            False: ``w = exp(log_weight)`` (no gates).
        noise : Tensor, optional
            Uniforms in ``[0, 1]`` to use instead of a draw from ``generator``.

        Returns
        -------
        Tensor
            ``w``; overwritten by the next call (clone it to keep it).

        Examples
        --------
        >>> ws = HardConcreteWorkspace(2)
        >>> ws.forward(torch.zeros(2), torch.zeros(2), temperature=0.5,
        ...            noise=torch.tensor([0.0, 1.0])).tolist()
        [0.0, 1.0]
        """
        temperature = check_temperature(temperature)
        self._follow(log_weight)
        if log_alpha.shape != log_weight.shape:
            raise ValueError(
                f"log_alpha has shape {tuple(log_alpha.shape)} but log_weight has "
                f"{tuple(log_weight.shape)}; pass one entry of each per gate"
            )
        torch.exp(log_weight, out=self.ew)
        _clamp_into(log_alpha, bound, self.lac)
        if not use_gates:
            self.w.copy_(self.ew)
            return self.w
        if noise is None:
            self.u.uniform_(0.0, 1.0, generator=generator)
        else:
            self.u.copy_(noise)
        torch.logit(self.u, eps=uniform_eps(self.u.dtype), out=self.s)
        self.s.add_(self.lac).mul_(1.0 / temperature).sigmoid_()
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
        temperature: float,
        gamma: float = GAMMA,
        zeta: float = ZETA,
        bound: float | None = None,
        lambda_l0: Tensor | float = 0.0,
        lambda_l2: float = 0.0,
        use_gates: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients for ``(log_weight, log_alpha)`` plus the L0 and L2 penalty values.

        Uses the buffers filled by :meth:`forward` (call it first, with the
        same ``log_alpha``, ``temperature``, ``gamma``, ``zeta``, ``bound`` and
        ``use_gates``).

        Parameters
        ----------
        grad_w : Tensor
            ``dL/dw`` of the data part of the loss.
        log_alpha : Tensor
            The gate parameters (unclamped) passed to :meth:`forward`.
        temperature, gamma, zeta, bound
            As in :meth:`forward`.
        lambda_l0 : float or 0-d Tensor, default 0
            Weight of the L0 penalty ``sum pi``.
        lambda_l2 : float, default 0
            Weight of the L2 penalty ``sum exp(2 log_weight)``.
        use_gates : bool, default True
            As in :meth:`forward`.

        Returns
        -------
        tuple of Tensor
            ``(grad_log_weight, grad_log_alpha, l0_value, l2_value)``; the two
            gradients are new tensors (they can become ``.grad``), the values
            are unweighted sums (accumulated in float32 for half dtypes).

        Examples
        --------
        >>> ws = HardConcreteWorkspace(1, dtype=torch.float64)
        >>> la = torch.zeros(1, dtype=torch.float64)
        >>> w = ws.forward(torch.zeros(1, dtype=torch.float64), la, temperature=0.5, use_gates=False)
        >>> g_lw, g_la, l0, l2 = ws.backward(torch.ones(1, dtype=torch.float64), la,
        ...                                  temperature=0.5, use_gates=False, lambda_l2=1.0)
        >>> g_lw.item(), l2.item()
        (3.0, 1.0)
        """
        grad_lw = torch.mul(grad_w, self.w)
        if lambda_l2 > 0:
            torch.mul(self.ew, self.ew, out=self.t)
            l2_value = accumulate_sum(self.t)
            grad_lw.add_(self.t, alpha=2.0 * lambda_l2)
        else:
            l2_value = accumulate_sum(self.t[:0])
        # L0 term: pi = sigmoid(lac - off), d pi / d lac = pi (1 - pi)
        off, _ = median_gate_limits(temperature, gamma, zeta)
        grad_la = torch.sub(self.lac, off).sigmoid_()
        l0_value = accumulate_sum(grad_la)
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
            grad_la.add_(self.t, alpha=(zeta - gamma) / temperature)
        if bound is not None:
            torch.ne(self.lac, log_alpha, out=self.outside)  # clamp passes no gradient outside
            grad_la.masked_fill_(self.outside, 0.0)
        return grad_lw, grad_la, l0_value, l2_value


@torch.no_grad()
def fused_median_gates(
    log_alpha: Tensor,
    *,
    temperature: float,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    bound: float | None = None,
) -> Tensor:
    """Test-time gates ``clamp(sigmoid(clamp(log_alpha) / beta) (zeta - gamma) + gamma, 0, 1)``, no autograd.

    The values of :func:`~l0_core.hard_concrete_math.hard_concrete_median`
    (exactly 0 precisely when ``P(gate != 0) <= 1/2``) computed in place on
    one new tensor with ``log_alpha``'s device and dtype.

    Parameters
    ----------
    log_alpha : Tensor
        Location parameters.
    temperature : float
        The temperature ``beta``.
    gamma, zeta : float
        Stretch interval end points.
    bound : float, optional
        ``log_alpha`` is clamped to ``[-bound, bound]`` first (None: not clamped).

    Returns
    -------
    Tensor

    Examples
    --------
    >>> fused_median_gates(torch.tensor([-30.0, 30.0]), temperature=2 / 3, bound=20.0).tolist()
    [0.0, 1.0]
    """
    s = log_alpha.clone() if bound is None else torch.clamp(log_alpha, -bound, bound)
    s.div_(temperature).sigmoid_()
    return s.mul_(zeta - gamma).add_(gamma).clamp_(0.0, 1.0)
