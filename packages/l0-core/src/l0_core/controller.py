"""A target-sparsity controller: drive the expected number of active gates to a target.

The controller adds a Lagrangian term to the loss,

    lambda1 * (s - t) + lambda2 * (s - t) ** 2,

where ``s`` is the expected fraction of active gates, ``t`` the target
fraction, and the multipliers ``lambda1, lambda2`` are updated by gradient
*ascent* (Wang, Wohlwend & Lei 2020, "Structured Pruning of Large Language
Models"). While ``s`` is above the target the multipliers grow and push it
down; no hand-tuned L0 strength is needed.

With an adaptive optimiser such as Adam the plain integral controller
winds up: the multipliers keep growing while the gates react, and the count
overshoots far past the target before coming back (from 900 expected
active gates towards a target of 100 the count falls to about 9 first).
Two opt-in remedies, both from classical control:

* ``reset_on_cross=True`` (anti-windup): when the gap changes sign the
  multipliers restart from zero, so the push that brought the count to the
  target does not carry it past;
* ``damping=c`` (the damping of the modified differential method of
  multipliers, Platt & Barr 1988): the effective multiplier is
  ``lambda1 + c * (s - t)``, a proportional term that acts at once and
  fades as the gap closes.

``max_multiplier`` bounds ``|lambda1|`` and ``lambda2``; ``set_target``
moves the target during training (an annealed count).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_float, check_int
from .precision import accumulation_dtype

__all__ = ["TargetSparsityController"]


class TargetSparsityController(nn.Module):
    """Lagrangian controller for a target number (or fraction) of active gates.

    Parameters
    ----------
    target : int or float
        Number of active gates (an ``int >= 1``) or a fraction in ``(0, 1]``
        (a ``float``) of ``n_total``.
    n_total : int
        Total number of gates being controlled.
    lr : float, default 0.05
        Step size of the gradient ascent on the multipliers.
    quadratic : bool, default True
        Include the ``lambda2 * (s - t)^2`` term.
    reset_on_cross : bool, default False
        Restart the multipliers from zero whenever the gap ``s - t`` changes
        sign (anti-windup; recommended with Adam).
    damping : float, default 0.0
        Proportional term: the loss uses ``(lambda1 + damping * gap) * gap``,
        with the damping factor treated as a constant in the gradient.
    max_multiplier : float, optional
        Clamp ``lambda1`` to ``[-max_multiplier, max_multiplier]`` and
        ``lambda2`` to ``[0, max_multiplier]`` after every step.

    Attributes
    ----------
    lambda1, lambda2 : Tensor
        Current multipliers (buffers, saved with ``state_dict``).

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> gate = HardConcrete(100, init_prob_active=0.9, generator=torch.Generator().manual_seed(0))
    >>> ctl = TargetSparsityController(target=10, n_total=100)
    >>> opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    >>> for _ in range(800):
    ...     opt.zero_grad()
    ...     loss = ctl.penalty(gate.l0_penalty())
    ...     loss.backward()
    ...     opt.step()
    ...     ctl.step()
    >>> abs(gate.l0_penalty().item() - 10) < 0.5
    True

    With anti-windup and damping the count does not dive far below the target:

    >>> gate = HardConcrete(100, init_prob_active=0.9, generator=torch.Generator().manual_seed(0))
    >>> ctl = TargetSparsityController(10, 100, reset_on_cross=True, damping=1.0)
    >>> opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    >>> lowest = 100.0
    >>> for _ in range(800):
    ...     opt.zero_grad()
    ...     ctl.penalty(gate.l0_penalty()).backward()
    ...     opt.step()
    ...     ctl.step()
    ...     lowest = min(lowest, gate.l0_penalty().item())
    >>> lowest > 5, abs(gate.l0_penalty().item() - 10) < 0.5
    (True, True)
    """

    lambda1: Tensor
    lambda2: Tensor

    def __init__(
        self,
        target: int | float,
        n_total: int,
        lr: float = 0.05,
        quadratic: bool = True,
        *,
        reset_on_cross: bool = False,
        damping: float = 0.0,
        max_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.n_total = check_int(n_total, "n_total", min_val=1, hint="pass the number of gates")
        self.target_count = self.resolve_target(target, n_total)
        self.lr = check_float(lr, "lr", min_val=0.0, include_boundaries="neither", hint="e.g. 0.05")
        for flag, value in (("quadratic", quadratic), ("reset_on_cross", reset_on_cross)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        self.quadratic = quadratic
        self.reset_on_cross = reset_on_cross
        self.damping = check_float(damping, "damping", min_val=0.0, hint="e.g. damping=1.0")
        self.max_multiplier = (
            None
            if max_multiplier is None
            else check_float(
                max_multiplier,
                "max_multiplier",
                min_val=0.0,
                include_boundaries="neither",
                hint="pass a positive bound or None",
            )
        )
        self._prev_gap: float | None = None
        self.register_buffer("lambda1", torch.zeros(()))
        self.register_buffer("lambda2", torch.zeros(()))
        self._last_gap: float | None = None

    @staticmethod
    def resolve_target(target: int | float, n_total: int, argument: str = "target") -> int:
        """Turn a count or a fraction into a count of gates, validating it.

        Examples
        --------
        >>> TargetSparsityController.resolve_target(0.25, 200), TargetSparsityController.resolve_target(7, 200)
        (50, 7)
        """
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise TypeError(
                f"{argument} must be an int count or a float fraction, got {type(target).__name__}"
            )
        if isinstance(target, float):
            if not 0.0 < target <= 1.0:
                raise ValueError(
                    f"{argument} as a fraction must lie in (0, 1], got {target!r}; "
                    f"pass an int for a count (1..{n_total})"
                )
            return max(1, int(round(target * n_total)))
        if not 1 <= target <= n_total:
            raise ValueError(
                f"{argument} must be between 1 and {n_total} (the number of items), got {target!r}"
            )
        return int(target)

    @property
    def target_fraction(self) -> float:
        """Target as a fraction of ``n_total``."""
        return self.target_count / self.n_total

    def penalty(self, expected_active: Tensor) -> Tensor:
        """Lagrangian term for the current expected active count (differentiable).

        Parameters
        ----------
        expected_active : Tensor
            Scalar expected number of active gates (e.g. ``compute_l0_penalty(model)``).

        Returns
        -------
        Tensor
            Scalar to add to the loss, on ``expected_active``'s device and dtype
            (float32 for a float16/bfloat16 count, so the gap keeps its precision).

        Raises
        ------
        ValueError
            If ``expected_active`` is not a finite scalar (a diverged model).

        Examples
        --------
        >>> ctl = TargetSparsityController(5, 10)
        >>> ctl.penalty(torch.tensor(5.0)).item()
        0.0
        """
        if not isinstance(expected_active, Tensor):
            raise TypeError(
                f"expected_active must be a scalar torch.Tensor, got {type(expected_active).__name__}; "
                "pass e.g. compute_l0_penalty(model)"
            )
        if expected_active.numel() != 1:
            raise ValueError(
                f"expected_active must be a scalar, got shape {tuple(expected_active.shape)}; "
                "pass the summed count, e.g. compute_l0_penalty(model)"
            )
        s = expected_active.to(accumulation_dtype(expected_active.dtype)) / self.n_total
        gap = s - self.target_fraction
        last_gap = float(gap.detach().item())
        if not math.isfinite(last_gap):
            raise ValueError(
                f"expected_active must be finite, got {expected_active.detach().item()}; "
                "the model's gates or the count diverged (in float16, sum the count in float32)"
            )
        self._last_gap = last_gap
        l1 = self.lambda1.to(device=gap.device, dtype=gap.dtype)
        if self.damping:
            l1 = l1 + self.damping * gap.detach()
        term = l1 * gap
        if self.quadratic:
            term = term + self.lambda2.to(device=gap.device, dtype=gap.dtype) * gap * gap
        return term

    @torch.no_grad()
    def step(self) -> None:
        """Gradient ascent on the multipliers using the gap seen by the last ``penalty`` call.

        Examples
        --------
        >>> ctl = TargetSparsityController(1, 10)
        >>> _ = ctl.penalty(torch.tensor(5.0)); ctl.step(); ctl.lambda1.item() > 0
        True
        """
        if self._last_gap is None:
            raise RuntimeError("call penalty() before step(): the controller needs the current gap")
        gap = self._last_gap
        prev = self._prev_gap
        if self.reset_on_cross and prev is not None and (gap > 0) != (prev > 0):
            self.lambda1.zero_()
            self.lambda2.zero_()
        self._prev_gap = gap
        self.lambda1.add_(self.lr * gap)
        if self.quadratic:
            self.lambda2.add_(self.lr * gap * gap)
        if self.max_multiplier is not None:
            self.lambda1.clamp_(-self.max_multiplier, self.max_multiplier)
            self.lambda2.clamp_(0.0, self.max_multiplier)

    def set_target(self, target: int | float) -> None:
        """Move the target (a count or a fraction of ``n_total``); the multipliers are kept.

        Examples
        --------
        >>> ctl = TargetSparsityController(50, 100)
        >>> ctl.set_target(0.2); ctl.target_count
        20
        """
        self.target_count = self.resolve_target(target, self.n_total)

    @torch.no_grad()
    def reset(self) -> None:
        """Zero the multipliers and forget the last gap.

        Examples
        --------
        >>> ctl = TargetSparsityController(1, 10)
        >>> _ = ctl.penalty(torch.tensor(5.0)); ctl.step(); ctl.reset(); ctl.lambda1.item()
        0.0
        """
        self.lambda1.zero_()
        self.lambda2.zero_()
        self._last_gap = None
        self._prev_gap = None

    def extra_repr(self) -> str:
        extra = ""
        if self.reset_on_cross:
            extra += ", reset_on_cross=True"
        if self.damping:
            extra += f", damping={self.damping}"
        if self.max_multiplier is not None:
            extra += f", max_multiplier={self.max_multiplier}"
        return f"target_count={self.target_count}, n_total={self.n_total}, lr={self.lr}{extra}"
