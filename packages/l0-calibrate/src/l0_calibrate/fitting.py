"""The training loop behind :meth:`SparseCalibrationWeights.fit`.

One call runs ``epochs`` epochs of the fused step (:mod:`l0_calibrate.engine`),
continuing any earlier call's optimiser, generator, temperature schedule
and sparsity controller. With ``target_count`` it ends with an exact
selection of that many households followed by a short re-fit of their
weights (or, with ``polish=True``, an exact re-calibration on them).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from l0_core import TargetSparsityController, get_schedule
from torch import Tensor

from .callbacks import Callback, dispatch_event
from .distributed_reducer import LocalReducer, is_lost_peer_error
from .engine import (
    HardConcreteWorkspace,
    WeightPenalty,
    deterministic_gates,
    penalty_gradient,
    rel_errors,
    target_gradient,
)
from .inputs import (
    Problem,
    align_to_labels,
    as_vector,
    check_nonneg_float,
    check_positive_int,
    prepare_problem,
)
from .losses import get_loss

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = ["FitDivergedError", "FitOptions", "InfeasibleTargetWarning", "run_fit"]

logger = logging.getLogger("l0_calibrate")

#: Epochs of the weight re-fit after the exact selection of ``target_count`` households.
DEFAULT_REFIT_EPOCHS = 200

#: Below this many non-zeros plus households a CPU fit runs on one thread (``num_threads=None``).
SMALL_PROBLEM = 2_000_000


class InfeasibleTargetWarning(UserWarning):
    """A target that non-negative weights cannot reach (no household contributes, or none with its sign)."""


class FitDivergedError(FloatingPointError):
    """The loss, the weights or the controller became NaN or infinite during a fit.

    The model is restored to its last finite state (see ``epoch``) before
    this is raised, so it can be saved, inspected or fitted again with
    other settings.

    Attributes
    ----------
    epoch : int
        Epochs trained in the restored state.
    """

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def max_selection_beta(gamma: float, zeta: float, bound: float) -> float:
    """Largest temperature at which the exact selection can fully open and fully close a gate.

    A gate is exactly 0 when ``log_alpha <= beta * log(-gamma / zeta)`` and
    exactly 1 when ``log_alpha >= beta * log((1 - gamma) / (zeta - 1))``;
    with ``|log_alpha| <= bound`` both need ``beta`` below this value.

    Examples
    --------
    >>> round(max_selection_beta(-0.1, 1.1, 20.0), 2)
    8.34
    """
    return bound / max(math.log(zeta / -gamma), math.log((1 - gamma) / (zeta - 1)))


@dataclass
class FitOptions:
    """Keyword-only options of ``fit`` beyond the published ones (see ``fit``'s docstring)."""

    target_count: int | float | None = None
    refit_epochs: int | None = None
    count_lr: float = 0.5
    count_warmup: float = 0.5
    beta_schedule: str | Callable[[float, float, float], float] | None = None
    final_beta: float | None = None
    schedule_epochs: int | None = None
    callbacks: Sequence[Callback] | None = None
    log_freq: int | None = None
    progress: bool | None = None
    target_names: Sequence[str] | None = None
    design_weights: Any = None
    lambda_distance: float = 0.0
    distance: str = "chi2"
    lambda_dispersion: float = 0.0
    max_weight_ratio: Any = None
    lambda_ratio: float = 1.0
    polish: bool = False
    num_threads: int | None = None


# ------------------------------------------------------------------ helpers
def reducer_of(model: Any) -> Any:
    """The model's reducer (``model._reducer``) or the single-process identity.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> reducer_of(SparseCalibrationWeights(3)).n_total
    3
    """
    red = getattr(model, "_reducer", None)
    return red if red is not None else LocalReducer(model.n_features)


class _TqdmHandler(logging.Handler):
    """Writes log records through tqdm so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _verbose_handler(verbose: bool) -> logging.Handler | None:
    """Attach a stderr handler for ``verbose=True`` when the application configured no logging."""
    if not verbose or logger.hasHandlers():
        return None
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
        handler._l0_reset_level = True  # type: ignore[attr-defined]
    return handler


def _remove_handler(handler: logging.Handler | None) -> None:
    if handler is not None:
        logger.removeHandler(handler)
        if getattr(handler, "_l0_reset_level", False):
            logger.setLevel(logging.NOTSET)


def _make_optimizer(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device/dtype without fused Adam
        return torch.optim.Adam(params, lr=lr, foreach=True)


def _design_weights(model: SparseCalibrationWeights, opts: FitOptions) -> Tensor:
    """This process's positive reference (design) weights: ``design_weights`` or the initial weights."""
    if opts.design_weights is None:
        return model.initial_weights.clamp_min(1e-8)
    red = reducer_of(model)
    value = red.local_part(opts.design_weights, "design_weights")
    d = torch.as_tensor(as_vector(value, "design_weights", model.n_features), device=model.device)
    d = d.to(model.log_weight.dtype)
    if bool((d <= 0).any()):
        raise ValueError("design_weights must be positive; drop zero-weight households first")
    return d


def _weight_penalties(
    model: SparseCalibrationWeights, opts: FitOptions, target_count: int | None
) -> list[tuple[float, WeightPenalty]]:
    """The penalties on ``w`` asked for by the options (calibration distance, dispersion, ratio)."""
    wants = (
        opts.lambda_distance > 0 or opts.lambda_dispersion > 0 or opts.max_weight_ratio is not None
    )
    if not wants:
        return []
    from . import regularizers as reg

    red = reducer_of(model)
    d = _design_weights(model, opts)
    # Kept households carry the population: measure against design weights inflated
    # by n / target_count (l0_calibrate.regularizers.inflate_design_weights on average).
    ref = d * (red.n_total / target_count) if target_count else d
    if opts.max_weight_ratio is not None:
        reg.ratio_bounds(opts.max_weight_ratio)  # validates before work starts
    # sharded: each penalty's sums over households are all-reduced, so every rank
    # evaluates the single-process formula on all households (and gets its gradient)
    reduce = red.all_reduce_sum if red.sharded else None
    out: list[tuple[float, WeightPenalty]] = []
    if opts.lambda_distance > 0:
        kind = opts.distance
        out.append(
            (
                opts.lambda_distance,
                lambda w: reg.calibration_distance(w, ref, kind, active_only=True, reduce=reduce),
            )
        )
    if opts.lambda_dispersion > 0:
        out.append(
            (
                opts.lambda_dispersion,
                lambda w: reg.dispersion_penalty(w, reference=ref, reduce=reduce),
            )
        )
    if opts.max_weight_ratio is not None:
        bound = opts.max_weight_ratio
        out.append(
            (opts.lambda_ratio, lambda w: reg.ratio_bound_penalty(w, ref, bound, reduce=reduce))
        )
    return out


# --------------------------------------------------------------- validation
def _validate(
    model: SparseCalibrationWeights, args: dict[str, Any], opts: FitOptions
) -> tuple[Problem, Callable, int | None, int]:
    args["lambda_l0"] = check_nonneg_float(args["lambda_l0"], "lambda_l0")
    args["lambda_l2"] = check_nonneg_float(args["lambda_l2"], "lambda_l2")
    args["lr"] = check_nonneg_float(args["lr"], "lr", positive=True)
    args["epochs"] = check_positive_int(args["epochs"], "epochs", minimum=0)
    args["verbose_freq"] = check_positive_int(args["verbose_freq"], "verbose_freq")
    if opts.log_freq is not None:
        opts.log_freq = check_positive_int(opts.log_freq, "log_freq")
    if opts.num_threads is not None:
        opts.num_threads = check_positive_int(opts.num_threads, "num_threads")
    opts.count_lr = check_nonneg_float(opts.count_lr, "count_lr", positive=True)
    opts.count_warmup = check_nonneg_float(opts.count_warmup, "count_warmup")
    if opts.count_warmup > 1:
        raise ValueError(
            f"count_warmup is a fraction of epochs in [0, 1], got {opts.count_warmup!r}"
        )
    for name in ("lambda_distance", "lambda_dispersion", "lambda_ratio"):
        setattr(opts, name, check_nonneg_float(getattr(opts, name), name))
    loss_fn = get_loss(args["loss_type"], "loss_type")
    if opts.beta_schedule is not None:
        get_schedule(opts.beta_schedule)  # unknown name -> ValueError listing the registered ones
        if opts.final_beta is None:
            raise ValueError("beta_schedule needs final_beta, the temperature to reach at the end")
        opts.final_beta = check_nonneg_float(opts.final_beta, "final_beta", positive=True)
    if opts.schedule_epochs is not None:
        opts.schedule_epochs = check_positive_int(opts.schedule_epochs, "schedule_epochs")
    red = reducer_of(model)
    target_count = None
    if opts.target_count is not None:
        if not model.use_gates:
            raise ValueError("target_count needs gates; the model was built with use_gates=False")
        # counts households over all ranks when the columns are sharded
        target_count = TargetSparsityController.resolve_target(
            opts.target_count, red.n_total, argument="target_count"
        )
        limit = max_selection_beta(model.gamma, model.zeta, model.LOG_ALPHA_BOUND)
        for name, value in (("beta", model.beta), ("final_beta", opts.final_beta)):
            if value is not None and value >= limit:
                raise ValueError(
                    f"{name}={value:g} is too hot for target_count: with gamma={model.gamma:g}, "
                    f"zeta={model.zeta:g} and log_alpha bounded by {model.LOG_ALPHA_BOUND:g}, a gate "
                    f"can only be closed exactly at a temperature below {limit:.4g}, so the fit could "
                    f"not keep exactly {target_count} households; pass {name} < {limit:.4g} (e.g. "
                    "the default 2/3)"
                )
    refit = opts.refit_epochs
    if refit is None:
        refit = DEFAULT_REFIT_EPOCHS if target_count is not None else 0
    refit = check_positive_int(refit, "refit_epochs", minimum=0)
    if opts.callbacks is not None:
        opts.callbacks = list(opts.callbacks)
        for cb in opts.callbacks:
            if not callable(cb):
                raise TypeError(
                    f"callbacks must be callables taking the event dict, got {type(cb).__name__}"
                )
    problem = prepare_problem(
        args["M"],
        args["y"],
        n_features=model.n_features,
        dtype=model.log_weight.dtype,
        device=model.log_weight.device,
        target_groups=args["target_groups"],
        normalize_groups=args["normalize_groups"],
        group_multipliers=args["group_multipliers"],
        target_names=opts.target_names,
    )
    if opts.design_weights is not None and not red.sharded:
        # a Series is aligned to the households: the DataFrame's index, else 0..n-1
        labels = problem.household_index
        opts.design_weights = align_to_labels(
            opts.design_weights,
            list(labels) if labels is not None else list(range(model.n_features)),
            "design_weights",
            "the households",
        )
    return problem, loss_fn, target_count, refit


def _shared_options(args: dict[str, Any], opts: FitOptions) -> dict[str, str]:
    """The fit options every rank of a sharded fit must agree on, as comparable strings."""

    def show(value: Any) -> str:
        if callable(value) and not isinstance(value, (int, float, str)):
            return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
        return repr(value)

    names = ("lambda_l0", "lambda_l2", "lr", "epochs", "loss_type")
    shared = {name: show(args[name]) for name in names}
    for name in (
        "target_count", "refit_epochs", "count_lr", "count_warmup", "beta_schedule", "final_beta",
        "schedule_epochs", "lambda_distance", "distance", "lambda_dispersion", "max_weight_ratio",
        "lambda_ratio", "polish",
    ):  # fmt: skip
        shared[name] = show(getattr(opts, name))
    return shared


# ---------------------------------------------------------------- the loop
class _Fit:
    """State of one ``fit`` call."""

    def __init__(
        self,
        model: SparseCalibrationWeights,
        problem: Problem,
        loss_fn: Callable,
        args: dict[str, Any],
        opts: FitOptions,
        target_count: int | None,
    ) -> None:
        self.model = model
        self.red = reducer_of(model)
        self.problem = problem
        self.op = problem.op
        self.loss_fn = loss_fn
        self.args = args
        self.opts = opts
        self.target_count = target_count
        p = model.log_weight
        self.y = torch.as_tensor(problem.targets, device=p.device).to(p.dtype)
        self.loss_weights = torch.as_tensor(problem.loss_weights, device=p.device).to(p.dtype)
        self.feasible = torch.as_tensor(~problem.infeasible, device=p.device)
        self.penalties = _weight_penalties(model, opts, target_count)
        self.ws = HardConcreteWorkspace(model.n_features, p.device, p.dtype)
        self.log_freq = opts.log_freq or args["verbose_freq"]
        self.started = time.perf_counter()
        self.stop = False
        self.snapshot: dict[str, Any] | None = None

    # -- setup of the persistent state (optimiser, jitter, schedule, controller)
    def prepare(self) -> None:
        m = self.model
        lr = self.args["lr"]
        if m.log_weight_jitter_sd > 0 and not m._jittered:
            with torch.no_grad():
                noise = self.red.normal_noise(
                    m.n_features, generator=m._generator, device=m.device, dtype=m.log_weight.dtype
                )
                m.log_weight.add_(noise * m.log_weight_jitter_sd)
        m._jittered = True
        if m._optimizer is None:
            m._optimizer = _make_optimizer([m.log_weight, m.log_alpha], lr)
            pending = getattr(m, "_pending_optimizer_state", None)
            if pending is not None:
                m._optimizer.load_state_dict(pending)
                m._pending_optimizer_state = None
        for group in m._optimizer.param_groups:
            group["lr"] = lr
        self._prepare_schedule()
        self._prepare_controller()

    def _prepare_schedule(self) -> None:
        m, opts = self.model, self.opts
        if opts.beta_schedule is None:
            return  # keep (and continue) any schedule of an earlier call
        name = opts.beta_schedule if isinstance(opts.beta_schedule, str) else None
        total = opts.schedule_epochs or self.args["epochs"]
        sched = m._schedule
        same = (
            sched is not None
            and sched["name"] == name
            and sched["final"] == opts.final_beta
            and (opts.schedule_epochs is None or sched["total"] == opts.schedule_epochs)
            and (name is not None or m._schedule_fn is opts.beta_schedule)
        )
        if not same:
            m._schedule = {
                "name": name,
                "initial": m.beta,
                "final": opts.final_beta,
                "total": total,
                "start": m._epoch,
            }
        m._schedule_fn = get_schedule(opts.beta_schedule)

    def _prepare_controller(self) -> None:
        m = self.model
        pending = m._pending_controller_state
        m._pending_controller_state = None
        if self.target_count is None:
            m._set_controller(None)
            m._count_schedule = None
            return
        sched = m._count_schedule
        if sched is None or sched["target"] != self.target_count:
            with torch.no_grad():
                expected = float(self.red.all_reduce_sum(m.get_l0_penalty().detach()).item())
            sched = m._count_schedule = {
                "target": self.target_count,
                "from": expected,
                "start": m._epoch,
                "total": int(round(self.opts.count_warmup * self.args["epochs"])),
                "scale": None,
            }
            m._set_controller(None)
            pending = None
        if m._controller is None:
            ctl = TargetSparsityController(
                self.target_count, self.red.n_total, lr=self.opts.count_lr
            )
            ctl.to(device=m.device, dtype=m.log_weight.dtype)
            if pending is not None:
                ctl.lambda1.copy_(pending["lambda1"])
                ctl.lambda2.copy_(pending["lambda2"])
            m._set_controller(ctl)
        m._controller.lr = self.opts.count_lr

    def _count_target(self, epoch: int) -> int:
        """The controller's target at ``epoch``: geometric from the starting count to the target."""
        sched = self.model._count_schedule
        n_final = self.target_count
        total = sched["total"]
        progress = 1.0 if total <= 0 else min(1.0, (epoch - sched["start"]) / total)
        start = max(sched["from"], n_final)
        return max(1, min(self.red.n_total, int(round(start * (n_final / start) ** progress))))

    def _beta_at(self, epoch: int) -> float:
        m = self.model
        sched = m._schedule
        if sched is None:
            return m.beta
        fn = m._schedule_fn
        if fn is None:
            if sched["name"] is None:
                raise ValueError(
                    "this model was checkpointed with a beta_schedule given as a function; pass the "
                    "same function again as beta_schedule= to continue it"
                )
            fn = m._schedule_fn = get_schedule(sched["name"])
        total = sched["total"]
        progress = 1.0 if total <= 1 else min(1.0, (epoch - sched["start"]) / (total - 1))
        if progress <= 0.0:
            return sched["initial"]
        if progress >= 1.0:
            return sched["final"]
        value = fn(progress, sched["initial"], sched["final"])
        try:
            beta = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"beta_schedule returned {value!r} (a {type(value).__name__}) at epoch {epoch}; it "
                "must return the temperature as a positive finite number"
            ) from None
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(
                f"beta_schedule returned {beta!r} at epoch {epoch} (progress {progress:.4g}, from "
                f"{sched['initial']:g} to {sched['final']:g}); the temperature must be a positive "
                "finite number: fix the schedule function"
            )
        return beta

    # -- one training epoch
    def train_epoch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m, ws = self.model, self.ws
        m.beta = self._beta_at(m._epoch)
        kw = m._gate_kw()
        noise = self.red.gate_noise(ws.u, m._generator) if m.use_gates else None
        w = ws.forward(
            m.log_weight,
            m.log_alpha,
            generator=m._generator,
            use_gates=m.use_gates,
            noise=noise,
            **kw,
        )
        estimate = self.red.all_reduce_sum(self.op.matvec(w))
        data_loss, r = target_gradient(estimate, self.y, self.loss_weights, self.loss_fn)
        grad_w = self.op.rmatvec(r)
        penalty = torch.zeros((), device=w.device, dtype=w.dtype)
        if self.penalties:
            penalty, g_extra = penalty_gradient(w, self.penalties)
            grad_w.add_(g_extra)
        lam: Tensor | float = self.args["lambda_l0"]
        control = torch.zeros((), device=w.device, dtype=w.dtype)
        ctl = m._controller
        if ctl is not None:
            sched = m._count_schedule
            ctl.target_count = self._count_target(m._epoch)
            c = -m.beta * math.log(-m.gamma / m.zeta)
            with torch.no_grad():
                expected = self.red.all_reduce_sum(torch.sigmoid(ws.lac + c).sum())
                if sched["scale"] is None:
                    sched["scale"] = self._data_gradient_scale(grad_w, kw)
            leaf = expected.detach().requires_grad_(True)
            with torch.enable_grad():
                # The controller acts on the expected fraction; scaled by n (a per-gate
                # strength, like lambda_l0) and by the data gradient's size at the start.
                control_t = ctl.penalty(leaf) * (self.red.n_total * sched["scale"])
                (coef,) = torch.autograd.grad(control_t, leaf)
            control = control_t.detach()
            lam = coef + self.args["lambda_l0"]
        grad_lw, grad_la, l0_value, l2_value = ws.backward(
            grad_w,
            m.log_alpha,
            lambda_l0=lam,
            lambda_l2=self.args["lambda_l2"],
            use_gates=m.use_gates,
            **kw,
        )
        m.log_weight.grad = grad_lw
        m.log_alpha.grad = grad_la
        m._optimizer.step()
        if ctl is not None:
            ctl.step()
        m._epoch += 1
        return data_loss, l0_value, l2_value, penalty + control

    @torch.no_grad()
    def _data_gradient_scale(self, grad_w: Tensor, kw: dict[str, float]) -> float:
        """Mean ``|dL_data / dlog_alpha|`` over households: the unit of the controller's push."""
        ws = self.ws
        _, g, _, _ = ws.backward(
            grad_w, self.model.log_alpha, lambda_l0=0.0, lambda_l2=0.0, use_gates=True, **kw
        )
        total = self.red.all_reduce_sum(g.abs().sum().reshape(1).to(torch.float64))
        scale = float(total.item()) / self.red.n_total
        return scale if scale > 0 and math.isfinite(scale) else 1.0

    # -- divergence: a finite state is kept at every logging step and restored when one is not
    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Keep the current (finite) parameters, epoch, controller and history length."""
        m = self.model
        ctl = m._controller
        self.snapshot = {
            "epoch": m._epoch,
            "log_weight": m.log_weight.detach().clone(),
            "log_alpha": m.log_alpha.detach().clone(),
            "beta": m.beta,
            "history": len(m.history_),
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
        ctl = m._controller
        if ctl is not None and not (
            bool(torch.isfinite(ctl.lambda1).all()) and bool(torch.isfinite(ctl.lambda2).all())
        ):
            out.append("the sparsity controller's multipliers (NaN or infinite)")
        return out

    @torch.no_grad()
    def check_finite(self, parts: tuple[Tensor, ...] | None, epoch: int) -> None:
        """Raise :class:`FitDivergedError` (after restoring the last finite state) when needed."""
        problems = self._problems(parts)
        if not self.red.any(bool(problems)):
            self.take_snapshot()
            return
        m, snap = self.model, self.snapshot
        if snap is not None:
            m.log_weight.copy_(snap["log_weight"])
            m.log_alpha.copy_(snap["log_alpha"])
            m._epoch = snap["epoch"]
            m.beta = snap["beta"]
            del m.history_[snap["history"] :]
            ctl = m._controller
            if ctl is not None and snap["controller"] is not None:
                ctl.lambda1.copy_(snap["controller"][0])
                ctl.lambda2.copy_(snap["controller"][1])
        m._optimizer = None  # Adam's moments are not finite either: the next fit starts afresh
        m._pending_optimizer_state = None
        good = snap["epoch"] if snap is not None else m._epoch
        what = ", ".join(problems) if problems else "another rank's state (NaN or infinite)"
        hint = (
            "a smaller lr"
            + (", loss_type='relative'" if self.args["loss_type"] == "mse" else "")
            + (", dtype=torch.float64" if m.log_weight.dtype != torch.float64 else "")
        )
        scale = float(abs(self.problem.targets).max()) if self.problem.targets.size else 0.0
        raise FitDivergedError(
            f"the fit diverged at epoch {epoch}: {what}; targets up to {scale:.3g} in "
            f"{m.log_weight.dtype}. The model was restored to its last finite state (epoch "
            f"{good}). Try {hint}",
            good,
        )

    # -- logging step
    @torch.no_grad()
    def log_step(self, parts: tuple[Tensor, ...] | None, phase: str, epoch: int, bar: Any) -> None:
        m = self.model
        red = self.red
        self.check_finite(parts, epoch)
        w = m._deterministic_weights()
        estimate = red.all_reduce_sum(self.op.matvec(w))
        err = rel_errors(estimate, self.y)[self.feasible]
        n_active = int(red.all_reduce_sum((w > 0).sum().reshape(1)).item())
        event: dict[str, Any] = {"epoch": epoch, "phase": phase}
        if parts is not None:
            # l0/l2 sum this rank's households; the extra term (the controller's and the weight
            # penalties, both from all-reduced sums) is already the same on every rank
            local = torch.stack(
                [p.detach().reshape(()).to("cpu", torch.float64) for p in parts[1:3]]
            )
            l0, l2 = red.all_reduce_sum(local.to(estimate.device)).tolist()
            data, extra = float(parts[0]), float(parts[3])
            total = data + self.args["lambda_l0"] * l0 + self.args["lambda_l2"] * l2 + extra
            event.update(loss=total, data_loss=data, l0_loss=l0, l2_loss=l2, penalty_loss=extra)
        with torch.no_grad():
            expected = (
                float(red.all_reduce_sum(m.get_l0_penalty().detach()).item())
                if m.use_gates
                else float(red.n_total)
            )
        event.update(
            mean_rel_error=float(err.mean().item()) if err.numel() else 0.0,
            max_rel_error=float(err.max().item()) if err.numel() else 0.0,
            n_active=n_active,
            expected_active=expected,
            beta=m.beta,
            elapsed_s=time.perf_counter() - self.started,
        )
        m.history_.append(dict(event))
        level = logging.INFO if self.args["verbose"] else logging.DEBUG
        if red.is_main and logger.isEnabledFor(level):
            loss_txt = f"loss={event['loss']:.4g} " if "loss" in event else ""
            logger.log(
                level,
                "%s epoch %5d: %smean_rel_error=%.4f%% max_rel_error=%.2f%% active=%d/%d (%.1f%% sparse)",
                phase,
                epoch,
                loss_txt,
                100 * event["mean_rel_error"],
                100 * event["max_rel_error"],
                n_active,
                red.n_total,
                100 * (1 - n_active / red.n_total),
            )
        if bar is not None:
            bar.set_postfix(
                err=f"{100 * event['mean_rel_error']:.3g}%", active=n_active, refresh=False
            )
        event.update(red.event_info())
        event.update(weights=w, model=m)
        stop = dispatch_event(event, self.opts.callbacks or ())
        self.stop = red.any(stop)

    # -- exact selection and refit
    @torch.no_grad()
    def select_exactly(self, count: int) -> None:
        m = self.model
        kw = m._gate_kw()
        la = m.log_alpha
        z_old = deterministic_gates(la, **kw)
        keep = self.red.top_k_mask(la.detach(), count)
        # Gate fully open (z = 1) on the kept households, weights unchanged where z_old > 0.
        on = m.beta * math.log((1 - m.gamma) / (m.zeta - 1)) + 0.5
        off = m.beta * math.log(-m.gamma / m.zeta) - 0.5
        was_on = keep & (z_old > 0)
        m.log_weight[was_on] += torch.log(z_old[was_on])
        la[keep] = torch.clamp(la[keep], min=on)
        la[~keep] = torch.clamp(la[~keep], max=off)

    def refit(self, epochs: int, bar: Any) -> None:
        """Adam on ``log_weight`` alone with the deterministic gates fixed."""
        if epochs <= 0:
            return
        m = self.model
        gates = deterministic_gates(m.log_alpha, **m._gate_kw())
        opt = _make_optimizer([m.log_weight], self.args["lr"])
        lam2 = self.args["lambda_l2"]
        for i in range(epochs):
            with torch.no_grad():
                ew = torch.exp(m.log_weight)
                w = ew * gates
            estimate = self.red.all_reduce_sum(self.op.matvec(w))
            data_loss, r = target_gradient(estimate, self.y, self.loss_weights, self.loss_fn)
            grad_w = self.op.rmatvec(r)
            penalty = torch.zeros((), device=w.device, dtype=w.dtype)
            if self.penalties:
                penalty, g_extra = penalty_gradient(w, self.penalties)
                grad_w.add_(g_extra)
            grad = grad_w.mul_(w)
            if lam2 > 0:
                grad.add_(ew * ew, alpha=2 * lam2)
            m.log_weight.grad = grad
            opt.step()
            if bar is not None:
                bar.update(1)
            done = i + 1
            if done % self.log_freq == 0 or done == epochs:
                zero = torch.zeros(())
                self.log_step((data_loss, zero, zero, penalty), "refit", m._epoch + done, bar)
                if self.stop:
                    break
        m.log_weight.grad = None

    @torch.no_grad()
    def polish(self) -> None:
        from .polish import polish_weights

        m, pb = self.model, self.problem
        w = m._deterministic_weights()
        support = torch.nonzero(w > 0).flatten().cpu().numpy()
        if self.red.sharded:
            self._polish_sharded(support)
            return
        if support.size == 0:
            return
        design = self.opts.design_weights
        if design is None:
            design = m.initial_weights.clamp_min(1e-8).cpu().numpy()
        res = polish_weights(
            self.op,
            pb.targets,
            support,
            design_weights=design,
            distance=self.opts.distance,
            max_weight_ratio=self.opts.max_weight_ratio,
            target_weights=pb.loss_weights,
        )
        m.polish_result_ = res
        self._apply_polish(support, torch.as_tensor(res.weights[support]))

    def _apply_polish(self, support: Any, new_w_support: Tensor) -> None:
        """Set the weights of the kept households (local indices ``support``) to the polished ones."""
        m = self.model
        new_w = new_w_support.to(device=m.device, dtype=m.log_weight.dtype)
        gates = deterministic_gates(m.log_alpha, **m._gate_kw())
        sup = torch.as_tensor(support, device=m.device, dtype=torch.int64)
        keep = new_w > 0
        pos = sup[keep]
        m.log_weight[pos] = torch.log(new_w[keep] / gates[pos])
        dropped = sup[~keep]
        off = m.beta * math.log(-m.gamma / m.zeta) - 0.5
        m.log_alpha[dropped] = torch.clamp(m.log_alpha[dropped], max=off)

    def _polish_sharded(self, support: Any) -> None:
        """Polishing over ranks: the kept columns are small, so every rank gathers all of them.

        Each rank sends its kept columns of ``M`` (float64, in global column
        order), their reference weights and its sum of reference weights;
        every rank then runs the same deterministic
        :func:`~l0_calibrate.polish.polish_weights` on the gathered columns,
        with the single-process reference weights ``q_k = d_k * sum(d) /
        sum_{kept} d``, and keeps its own part of the solution.
        """
        import dataclasses

        import numpy as np
        import scipy.sparse as sp

        from .polish import polish_weights

        m, pb, red = self.model, self.problem, self.red
        d = _design_weights(m, self.opts).to("cpu", torch.float64).numpy()
        t = self.op.csr_t.cpu()  # households x targets
        rows = sp.csr_matrix(
            (
                t.values().numpy().astype(np.float64),
                t.col_indices().numpy().astype(np.int64),
                t.crow_indices().numpy().astype(np.int64),
            ),
            shape=(self.op.shape[1], self.op.shape[0]),
        )[support]
        pieces = red.all_gather_object((rows, d[support], float(d.sum())))
        sizes = [p[0].shape[0] for p in pieces]
        if sum(sizes) == 0:
            return
        X = sp.vstack([p[0] for p in pieces], format="csr").T.tocsr()
        kept = np.concatenate([p[1] for p in pieces])
        q = kept * (float(np.sum([p[2] for p in pieces])) / kept.sum())
        res = polish_weights(
            X,
            pb.targets,
            np.arange(kept.size),
            init_weights=q,
            distance=self.opts.distance,
            max_weight_ratio=self.opts.max_weight_ratio,
            target_weights=pb.loss_weights,
        )
        rank = red.shard.rank
        offset = sum(sizes[:rank])
        mine = res.weights[offset : offset + sizes[rank]]
        local = np.zeros(m.n_features)
        local[support] = mine
        m.polish_result_ = dataclasses.replace(res, weights=local)
        if support.size:
            self._apply_polish(support, torch.as_tensor(mine))


def _progress_bar(total: int, opts: FitOptions, verbose: bool) -> Any:
    show = opts.progress if opts.progress is not None else verbose
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(
        total=total,
        desc="calibrating",
        unit="epoch",
        disable=None if opts.progress is None else False,
        leave=False,
    )


def run_fit(
    model: SparseCalibrationWeights, M: Any, y: Any, **kwargs: Any
) -> SparseCalibrationWeights:
    """Validate the arguments of ``fit``, then train (see :meth:`SparseCalibrationWeights.fit`).

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> model = SparseCalibrationWeights(2, seed=0)
    >>> run_fit(model, torch.eye(2), [1.0, 1.0], epochs=5) is model
    True
    """
    names = {f.name for f in FitOptions.__dataclass_fields__.values()}
    published = {
        "lambda_l0": 0.01, "lambda_l2": 0.0, "lr": 0.01, "epochs": 1000, "loss_type": "mse",
        "verbose": False, "verbose_freq": 100, "target_groups": None, "normalize_groups": True,
        "group_multipliers": None,
    }  # fmt: skip
    unknown = sorted(set(kwargs) - names - set(published))
    if unknown:
        raise TypeError(
            f"fit() got unexpected keyword argument(s) {unknown}; options are {sorted(names)}"
        )
    opts = FitOptions(**{k: v for k, v in kwargs.items() if k in names})
    args = {k: kwargs.get(k, default) for k, default in published.items()}
    args.update(M=M, y=y)
    red = reducer_of(model)
    error: BaseException | None = None
    try:
        problem, loss_fn, target_count, refit_epochs = _validate(model, args, opts)
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        error = exc
    # sharded: every rank learns whether another rejected its arguments or was given other
    # options, so that none is left waiting in a collective (single process: re-raises)
    red.agree(error, _shared_options(args, opts) if red.sharded and error is None else {})
    red.reduce_problem(
        problem,
        target_groups=args["target_groups"],
        normalize_groups=args["normalize_groups"],
        group_multipliers=args["group_multipliers"],
    )
    if opts.polish:
        from . import polish as _polish  # noqa: F401 - fail early when the polishing stage is absent
    model.infeasible_targets_ = problem.infeasible_names
    if problem.infeasible.any():
        names_txt = ", ".join(problem.infeasible_names[:10])
        more = problem.infeasible.sum() - 10
        warnings.warn(
            f"{int(problem.infeasible.sum())} target(s) cannot be reached by non-negative weights "
            f"(no household contributes to them, or none with the target's sign): {names_txt}"
            + (f" and {more} more" if more > 0 else "")
            + ". They are left out of the loss and reported as infeasible; the rest are calibrated.",
            InfeasibleTargetWarning,
            stacklevel=3,
        )
    fit = _Fit(model, problem, loss_fn, args, opts, target_count)
    threads_before = torch.get_num_threads()
    threads = opts.num_threads
    if (
        threads is None
        and model.device.type == "cpu"
        and problem.op.nnz + model.n_features < SMALL_PROBLEM
    ):
        threads = 1  # thread start-up and barriers cost more than they save on a small problem
    if threads is not None:
        torch.set_num_threads(threads)
    fit.prepare()
    fit.take_snapshot()
    epochs = args["epochs"]
    handler = _verbose_handler(args["verbose"])
    bar = _progress_bar(epochs + refit_epochs, opts, args["verbose"])
    try:
        _train(fit, model, opts, epochs, refit_epochs, target_count, bar)
    except RuntimeError as exc:
        if red.sharded and is_lost_peer_error(exc):
            raise _lost_rank_error(red, opts, exc) from exc
        raise
    finally:
        if bar is not None:
            bar.close()
        _remove_handler(handler)
        if threads is not None:
            torch.set_num_threads(threads_before)
    return model


def _newest_checkpoint(callbacks: Sequence[Any] | None) -> str | None:
    """The last file a Checkpoint/ShardCheckpoint callback of this fit wrote, if any."""
    newest = None
    for cb in callbacks or ():
        saved = getattr(cb, "saved", None)
        if isinstance(saved, list) and saved:
            newest = saved[-1]
    return newest


def _lost_rank_error(red: Any, opts: FitOptions, exc: BaseException) -> Exception:
    """The error a surviving rank raises when a peer stopped answering in a collective."""
    from .distributed_reducer import RankLostError

    lost = red.lost_ranks()
    ckpt = _newest_checkpoint(opts.callbacks)
    who = ", ".join(str(r) for r in lost)
    resume = (
        f"resume every rank from its newest checkpoint (this rank's: {ckpt!r}; "
        "ShardCheckpoint.latest(path_template, rank=r) finds each rank's)"
        if ckpt is not None
        else "no checkpoint was written by this fit; pass callbacks=[ShardCheckpoint("
        "'ckpt/rank{rank}-{epoch}.pt', every=...)] to be able to resume"
    )
    return RankLostError(
        f"rank {red.shard.rank} lost rank(s) {who} of {red.world_size}: a collective failed "
        f"({str(exc).splitlines()[0][:200]}). The rank is frozen, killed or cut off (the wait is "
        f"bounded by the process-group timeout: init_distributed(timeout_s=...), l0-calibrate run "
        f"--timeout). Stop the job and {resume}",
        lost,
        ckpt,
    )


def _train(
    fit: _Fit,
    model: SparseCalibrationWeights,
    opts: FitOptions,
    epochs: int,
    refit_epochs: int,
    target_count: int | None,
    bar: Any,
) -> None:
    """The epochs, then the exact selection and the refit or polish."""
    for i in range(epochs):
        parts = fit.train_epoch()
        if bar is not None:
            bar.update(1)
        done = i + 1
        if done % fit.log_freq == 0 or done == epochs:
            fit.log_step(parts, "train", model._epoch, bar)
            if fit.stop:
                break
    if target_count is not None:
        fit.select_exactly(target_count)
        fit.stop = False
        if opts.polish:
            fit.polish()
        else:
            fit.refit(refit_epochs, bar)
    elif opts.polish:
        fit.polish()
