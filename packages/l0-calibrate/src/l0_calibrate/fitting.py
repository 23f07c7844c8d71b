"""The training loop behind :meth:`SparseCalibrationWeights.fit`.

One call runs ``epochs`` epochs of the fused step (:mod:`l0_core.fused`),
continuing any earlier call's optimiser, generator, temperature schedule
and sparsity controller (the model's :class:`~l0_calibrate.fit_state.FitState`).
With ``target_count`` it ends with an exact selection of that many
households followed by a short re-fit of their weights (or, with
``polish=True``, an exact re-calibration on them: :mod:`l0_calibrate.fit_polish`).
The options and their checks are in :mod:`l0_calibrate.fit_options`; every
exchange between processes goes through the model's reducer.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from l0_core import (
    HardConcreteWorkspace,
    TargetSparsityController,
    fused_median_gates,
    get_schedule,
    hard_concrete_prob_active,
    median_gate_limits,
)
from torch import Tensor

from .callbacks import dispatch_event
from .distributed_reducer import ProcessGroupReducer, is_lost_peer_error
from .fit_guard import FiniteGuard
from .fit_options import (
    DEFAULT_REFIT_EPOCHS,
    SMALL_PROBLEM,
    FitDivergedError,
    FitOptions,
    InfeasibleTargetWarning,
    max_selection_beta,
    reducer_of,
    shared_options,
    validate_fit,
    weight_penalties,
)
from .fit_polish import polish_in_fit
from .fit_progress import progress_bar, remove_handler, verbose_handler
from .losses import penalty_gradient, rel_errors, target_gradient
from .problem import Problem

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = [
    "DEFAULT_REFIT_EPOCHS",
    "FitDivergedError",
    "FitOptions",
    "InfeasibleTargetWarning",
    "max_selection_beta",
    "reducer_of",
    "run_fit",
]

logger = logging.getLogger("l0_calibrate")


def _make_optimizer(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device/dtype without fused Adam
        return torch.optim.Adam(params, lr=lr, foreach=True)


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
        self.state = model._fit_state
        self.penalties = weight_penalties(model, opts, target_count)
        self.ws = HardConcreteWorkspace(model.n_features, p.device, p.dtype)
        self.verbose_freq: int = args["verbose_freq"]
        self.started = time.perf_counter()
        self.stop = False
        self.guard = FiniteGuard(model, self.red, problem.targets, args["loss_type"])

    # -- setup of the persistent state (optimiser, jitter, schedule, controller)
    def prepare(self) -> None:
        m, st = self.model, self.state
        lr = self.args["lr"]
        if m.log_weight_jitter_sd > 0 and not st.jittered:
            with torch.no_grad():
                noise = self.red.normal_noise(
                    m.n_features, generator=m._generator, device=m.device, dtype=m.log_weight.dtype
                )
                m.log_weight.add_(noise * m.log_weight_jitter_sd)
        st.jittered = True
        if st.optimizer is None:
            st.optimizer = _make_optimizer([m.log_weight, m.log_alpha], lr)
            if st.pending_optimizer is not None:
                st.optimizer.load_state_dict(st.pending_optimizer)
                st.pending_optimizer = None
        for group in st.optimizer.param_groups:
            group["lr"] = lr
        self._prepare_schedule()
        self._prepare_controller()

    def _prepare_schedule(self) -> None:
        m, st, opts = self.model, self.state, self.opts
        if opts.temperature_schedule is None:
            return  # keep (and continue) any schedule of an earlier call
        name = opts.temperature_schedule if isinstance(opts.temperature_schedule, str) else None
        total = opts.schedule_epochs or self.args["epochs"]
        sched = st.schedule
        same = (
            sched is not None
            and sched["name"] == name
            and sched["final"] == opts.final_temperature
            and (opts.schedule_epochs is None or sched["total"] == opts.schedule_epochs)
            and (name is not None or st.schedule_fn is opts.temperature_schedule)
        )
        if not same:
            st.schedule = {
                "name": name,
                "initial": m.beta,
                "final": opts.final_temperature,
                "total": total,
                "start": st.epoch,
            }
        st.schedule_fn = get_schedule(opts.temperature_schedule)

    def _prepare_controller(self) -> None:
        m, st = self.model, self.state
        pending = st.pending_controller
        st.pending_controller = None
        if self.target_count is None:
            st.controller = None
            st.count_schedule = None
            return
        sched = st.count_schedule
        if sched is None or sched["target"] != self.target_count:
            with torch.no_grad():
                expected = float(self.red.all_reduce_sum(m.get_l0_penalty().detach()).item())
            st.count_schedule = {
                "target": self.target_count,
                "from": expected,
                "start": st.epoch,
                "total": int(round(self.opts.count_warmup * self.args["epochs"])),
                "scale": None,
            }
            st.controller = None
            pending = None
        if st.controller is None:
            ctl = TargetSparsityController(
                self.target_count, self.red.n_total, lr=self.opts.count_lr
            )
            ctl.to(device=m.device, dtype=m.log_weight.dtype)
            if pending is not None:
                ctl.lambda1.copy_(pending["lambda1"])
                ctl.lambda2.copy_(pending["lambda2"])
            st.controller = ctl
        st.controller.lr = self.opts.count_lr

    # -- one training epoch
    def train_epoch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m, ws, st = self.model, self.ws, self.state
        m.beta = st.beta_at(st.epoch, m.beta)
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
        ctl = st.controller
        if ctl is not None:
            sched = st.count_schedule
            assert sched is not None  # built with the controller
            ctl.target_count = st.count_target(st.epoch, self.red.n_total)
            with torch.no_grad():
                prob = hard_concrete_prob_active(ws.lac, m.beta, m.gamma, m.zeta)
                expected = self.red.all_reduce_sum(prob.sum())
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
        assert st.optimizer is not None  # built by prepare()
        st.optimizer.step()
        if ctl is not None:
            ctl.step()
        st.epoch += 1
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

    # -- logging step
    @torch.no_grad()
    def log_step(self, parts: tuple[Tensor, ...] | None, phase: str, epoch: int, bar: Any) -> None:
        m = self.model
        red = self.red
        self.guard.check(parts, epoch)
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
        self.state.history.append(dict(event))
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
        z_old = fused_median_gates(la, **kw)
        keep = self.red.top_k_mask(la.detach(), count)
        # Gate fully open (z = 1) on the kept households, weights unchanged where z_old > 0.
        off, on = median_gate_limits(m.beta, m.gamma, m.zeta)
        off, on = off - 0.5, on + 0.5
        was_on = keep & (z_old > 0)
        m.log_weight[was_on] += torch.log(z_old[was_on])
        la[keep] = torch.clamp(la[keep], min=on)
        la[~keep] = torch.clamp(la[~keep], max=off)

    def refit(self, epochs: int, bar: Any) -> None:
        """Adam on ``log_weight`` alone with the deterministic gates fixed."""
        if epochs <= 0:
            return
        m = self.model
        gates = fused_median_gates(m.log_alpha, **m._gate_kw())
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
            if done % self.verbose_freq == 0 or done == epochs:
                zero = torch.zeros(())
                self.log_step((data_loss, zero, zero, penalty), "refit", self.state.epoch + done, bar)
                if self.stop:
                    break
        m.log_weight.grad = None


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
        problem, loss_fn, target_count, refit_epochs = validate_fit(model, args, opts)
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        error = exc
    # sharded: every rank learns whether another rejected its arguments or was given other
    # options, so that none is left waiting in a collective (single process: re-raises)
    red.agree(error, shared_options(args, opts) if red.sharded and error is None else {})
    red.reduce_problem(
        problem,
        target_groups=args["target_groups"],
        normalize_groups=args["normalize_groups"],
        group_multipliers=args["group_multipliers"],
    )
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
            stacklevel=4,  # run_fit <- fit <- its renamed_keywords wrapper <- the caller
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
    fit.guard.take_snapshot()
    epochs = args["epochs"]
    handler = verbose_handler(args["verbose"])
    bar = progress_bar(epochs + refit_epochs, opts, args["verbose"])
    try:
        _train(fit, model, opts, epochs, refit_epochs, target_count, bar)
    except RuntimeError as exc:
        if isinstance(red, ProcessGroupReducer) and is_lost_peer_error(exc):
            raise red.lost_rank_error(exc, _newest_checkpoint(opts.callbacks)) from exc
        raise
    finally:
        if bar is not None:
            bar.close()
        remove_handler(handler)
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
        if done % fit.verbose_freq == 0 or done == epochs:
            fit.log_step(parts, "train", fit.state.epoch, bar)
            if fit.stop:
                break
    if target_count is not None:
        fit.select_exactly(target_count)
        fit.stop = False
        if opts.polish:
            polish_in_fit(model, fit.problem, opts, fit.red)
        else:
            fit.refit(refit_epochs, bar)
    elif opts.polish:
        polish_in_fit(model, fit.problem, opts, fit.red)
