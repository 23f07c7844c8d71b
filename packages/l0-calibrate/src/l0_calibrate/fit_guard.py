"""A fit's guard against divergence: a finite state kept at every logging step, restored when one is not.

At each logging step :meth:`FiniteGuard.check` looks at the loss, the
parameters and the controller's multipliers. When everything is finite
(on every rank) it keeps a snapshot; otherwise it restores the last
snapshot, drops Adam's state and raises :class:`~l0_calibrate.fit_options.FitDivergedError`
with what went wrong and what to try.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .distributed_reducer import LocalReducer
from .fit_options import FitDivergedError

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = ["FiniteGuard"]


class FiniteGuard:
    """Snapshots of the last finite state of a fit, and the divergence check.

    Parameters
    ----------
    model : SparseCalibrationWeights
        The model being fitted (its ``_fit_state`` is restored too).
    red : LocalReducer
        The fit's reducer (a rank with a problem stops every rank).
    targets : numpy.ndarray
        The targets (their scale goes into the message).
    loss_type : str or callable
        The fit's loss (the message suggests ``"relative"`` for ``"mse"``).

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> model = SparseCalibrationWeights(2)
    >>> guard = FiniteGuard(model, model.reducer, np.ones(1), "mse")
    >>> guard.check(None, 0)  # finite: keeps a snapshot
    >>> guard.snapshot["epoch"]
    0
    """

    def __init__(
        self,
        model: SparseCalibrationWeights,
        red: LocalReducer,
        targets: np.ndarray,
        loss_type: Any,
    ) -> None:
        self.model = model
        self.state = model._fit_state
        self.red = red
        self.targets = targets
        self.loss_type = loss_type
        self.snapshot: dict[str, Any] | None = None

    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Keep the current (finite) parameters, epoch, controller and history length."""
        m, st = self.model, self.state
        ctl = st.controller
        self.snapshot = {
            "epoch": st.epoch,
            "log_weight": m.log_weight.detach().clone(),
            "log_alpha": m.log_alpha.detach().clone(),
            "beta": m.beta,
            "history": len(st.history),
            "controller": None if ctl is None else (ctl.lambda1.clone(), ctl.lambda2.clone()),
        }

    @torch.no_grad()
    def _problems(self, parts: tuple[Tensor, ...] | None) -> list[str]:
        """What is not finite now (empty when everything is)."""
        m = self.model
        out = []
        if parts is not None and not bool(torch.isfinite(parts[0]).all()):
            out.append(f"the data loss ({float(parts[0]):g})")
        for name in ("log_weight", "log_alpha"):
            value = getattr(m, name)
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                out.append(f"{int(bad.sum())} of {value.numel()} {name} values (NaN or infinite)")
        ctl = self.state.controller
        if ctl is not None and not (
            bool(torch.isfinite(ctl.lambda1).all()) and bool(torch.isfinite(ctl.lambda2).all())
        ):
            out.append("the sparsity controller's multipliers (NaN or infinite)")
        return out

    @torch.no_grad()
    def check(self, parts: tuple[Tensor, ...] | None, epoch: int) -> None:
        """Raise :class:`FitDivergedError` (after restoring the last finite state) when needed."""
        problems = self._problems(parts)
        if not self.red.any(bool(problems)):
            self.take_snapshot()
            return
        m, st, snap = self.model, self.state, self.snapshot
        if snap is not None:
            m.log_weight.copy_(snap["log_weight"])
            m.log_alpha.copy_(snap["log_alpha"])
            st.epoch = snap["epoch"]
            m.beta = snap["beta"]
            del st.history[snap["history"] :]
            ctl = st.controller
            if ctl is not None and snap["controller"] is not None:
                ctl.lambda1.copy_(snap["controller"][0])
                ctl.lambda2.copy_(snap["controller"][1])
        st.forget_optimizer()  # Adam's moments are not finite either: the next fit starts afresh
        good = snap["epoch"] if snap is not None else st.epoch
        what = ", ".join(problems) if problems else "another rank's state (NaN or infinite)"
        hint = (
            "a smaller lr"
            + (", loss_type='relative'" if self.loss_type == "mse" else "")
            + (", dtype=torch.float64" if m.log_weight.dtype != torch.float64 else "")
        )
        targets = self.targets
        scale = float(abs(targets).max()) if targets.size else 0.0
        raise FitDivergedError(
            f"the fit diverged at epoch {epoch}: {what}; targets up to {scale:.3g} in "
            f"{m.log_weight.dtype}. The model was restored to its last finite state (epoch "
            f"{good}). Try {hint}",
            good,
        )
