"""The training half of :class:`~l0_calibrate.SparseCalibrationWeights`: ``fit`` and its saved state.

:class:`TrainableWeights` is the base class that holds what a fit changes
besides the parameters -- one :class:`~l0_calibrate.fit_state.FitState` --
and saves it inside ``state_dict()``; ``fit`` validates nothing itself and
hands the call to :func:`l0_calibrate.fitting.run_fit`. The parameters, the
gates and the reducer are built by :class:`~l0_calibrate.SparseCalibrationWeights`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from l0_core.checks import renamed_keywords
from torch import Tensor, nn

from .distributed_io import load_columns, matrix_shape
from .distributed_reducer import LocalReducer, stop_together
from .distributed_shard import ColumnShard, check_saved_layout
from .fit_state import FitState, pack_fit_state, unpack_fit_state
from .fitting import run_fit

if TYPE_CHECKING:
    from .weights import SparseCalibrationWeights

__all__ = ["TrainableWeights"]


def _refuse_non_finite(state_dict: Mapping[str, Any], prefix: str) -> None:
    """A NaN or infinite parameter in a state_dict is refused by key, before anything is loaded."""
    for name in ("log_weight", "log_alpha"):
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise ValueError(
                    f"state_dict[{prefix + name!r}] holds {int(bad.sum())} NaN or infinite value(s) "
                    f"(first at index {int(bad.reshape(-1).nonzero()[0, 0])}); it comes from a "
                    "diverged fit or a corrupted file: load an earlier checkpoint "
                    "(l0_calibrate.Checkpoint.latest)"
                )


class TrainableWeights(nn.Module):
    """Base class of :class:`~l0_calibrate.SparseCalibrationWeights`: ``fit``, ``history_`` and the saved fit state.

    Subclasses build ``log_weight``, ``log_alpha``, ``_generator``,
    ``_reducer``, ``shard`` and ``_fit_state`` in their constructor.

    Examples
    --------
    >>> from l0_calibrate import SparseCalibrationWeights
    >>> issubclass(SparseCalibrationWeights, TrainableWeights)
    True
    """

    log_weight: nn.Parameter
    log_alpha: nn.Parameter
    beta: float
    n_total: int
    shard: ColumnShard
    _generator: torch.Generator
    _reducer: LocalReducer
    _fit_state: FitState

    @property
    def history_(self) -> list[dict[str, Any]]:
        """One entry per logging step of every ``fit`` (see :mod:`l0_calibrate.callbacks`)."""
        return self._fit_state.history

    @history_.setter
    def history_(self, value: list[dict[str, Any]]) -> None:
        self._fit_state.history = list(value)

    # ------------------------------------------------------------- fit
    @renamed_keywords(
        log_freq="verbose_freq",
        beta_schedule="temperature_schedule",
        final_beta="final_temperature",
    )
    def fit(
        self,
        M: Any,
        y: Any,
        lambda_l0: float = 0.01,
        lambda_l2: float = 0.0,
        lr: float = 0.01,
        epochs: int = 1000,
        loss_type: str | Callable[[Tensor, Tensor], Tensor] = "mse",
        verbose: bool = False,
        verbose_freq: int = 100,
        target_groups: Sequence[Hashable] | np.ndarray | None = None,
        normalize_groups: bool = True,
        group_multipliers: Mapping[Hashable, float] | None = None,
        *,
        target_count: int | float | None = None,
        refit_epochs: int | None = None,
        count_lr: float = 0.5,
        count_warmup: float = 0.5,
        temperature_schedule: str | Callable[[float, float, float], float] | None = None,
        final_temperature: float | None = None,
        schedule_epochs: int | None = None,
        callbacks: Sequence[Callable[[dict], Any]] | None = None,
        progress: bool | None = None,
        target_names: Sequence[str] | None = None,
        design_weights: Any = None,
        lambda_distance: float = 0.0,
        distance: str = "chi2",
        lambda_dispersion: float = 0.0,
        max_weight_ratio: Any = None,
        lambda_ratio: float = 1.0,
        polish: bool = False,
        num_threads: int | None = None,
    ) -> SparseCalibrationWeights:
        """Fit the weights by Adam on the calibration loss plus the L0 (and L2) penalty.

        A second call continues where the first stopped (same optimiser
        state, no second jitter); :meth:`state_dict` holds everything needed
        to resume bit-identically on CPU.

        Parameters
        ----------
        M : matrix or path
            ``(n_targets, n_features)``: scipy.sparse (any format), torch
            sparse or dense, numpy, an :class:`l0_core.SparseOperator`, or a
            pandas DataFrame of households x targets (microcalibrate's layout).
            Not modified. Or a path to an ``.npz`` / ``.npy`` / ``.parquet`` /
            ``.csv`` file (:func:`l0_calibrate.load_columns`); a sharded model
            reads only its own columns of the file, which holds all of them.
        y : array-like or pandas.Series
            Targets, one per row of ``M`` (a Series is aligned by name to a
            DataFrame's columns).
        lambda_l0 : float, default 0.01
            Weight of the expected number of non-zero weights.
        lambda_l2 : float, default 0.0
            Weight of ``sum exp(log_weight)^2``.
        lr : float, default 0.01
            Adam learning rate (a new value on a later call updates it).
        epochs : int, default 1000
            Epochs to run in this call.
        loss_type : str or callable, default "mse"
            ``"mse"``, ``"relative"``, ``"capped_relative"``,
            ``"microcalibrate"``, a name registered by a plugin, or a function
            ``(estimate, target) -> per-target loss``. Unknown names raise.
        verbose : bool, default False
            Log progress at INFO level every ``verbose_freq`` epochs (shown on
            stderr when logging is not configured) with a tqdm bar.
        verbose_freq : int, default 100
            Logging step, in epochs.
        target_groups : array-like, optional
            Group label per target; with ``normalize_groups`` each group
            counts equally in the loss.
        normalize_groups : bool, default True
            Weight each target by one over its group's size.
        group_multipliers : dict, optional
            Loss multiplier per group label (needs ``target_groups``).
        target_count : int or float, optional
            End with exactly this many non-zero weights (an int) or this
            fraction of ``n_features`` (a float in (0, 1]). A Lagrangian
            controller (:class:`l0_core.TargetSparsityController`) steers the
            expected count during training; then the ``target_count``
            households with the largest ``log_alpha`` are kept (gate fully
            open, weight unchanged), the others closed, and the kept weights
            re-fitted for ``refit_epochs`` epochs with the gates fixed.
        refit_epochs : int, optional
            Epochs of that re-fit (default 200; not counted in ``epochs``).
        count_lr : float, default 0.5
            Step size of the controller's multipliers, in units of the data
            gradient's mean size at the controller's first epoch (so the
            default suits any loss scale).
        count_warmup : float, default 0.5
            Fraction of ``epochs`` over which the controller's target moves
            geometrically from the current expected count down to
            ``target_count`` (then stays there).
        temperature_schedule : str or callable, optional
            Temperature schedule by registered name (``"linear"``,
            ``"exponential"``, ``"cosine"``, ``"constant"``, plugins) or a
            function ``(progress, initial, final) -> beta``; runs from the
            current ``beta`` to ``final_temperature`` over ``schedule_epochs``
            (default: this call's ``epochs``), continued by later calls.
            Named as l0-core names the same ideas (``TemperatureScheduler``,
            ``select_and_polish(final_temperature=)``).
        final_temperature : float, optional
            Temperature at the end of the schedule (required with a schedule).
        schedule_epochs : int, optional
            Length of the schedule in epochs, across calls.
        callbacks : list of callables, optional
            Each is called as ``cb(event)`` at every logging step; returning
            True stops the fit. The plugin hook ``l0_calibration_log`` sees
            the same events. See :mod:`l0_calibrate.callbacks`.
        log_freq : int, optional
            Deprecated spelling of ``verbose_freq`` (a ``DeprecationWarning``;
            passing both raises ``TypeError``).
        beta_schedule, final_beta : optional
            Deprecated spellings of ``temperature_schedule`` and
            ``final_temperature`` (a ``DeprecationWarning``; passing both
            spellings of one raises ``TypeError``).
        progress : bool, optional
            tqdm progress bar; default: shown when ``verbose`` and stderr is a
            terminal.
        target_names : list of str, optional
            Names of the targets, used in warnings and events.
        design_weights : array-like, optional
            Reference weights for the distance, dispersion and ratio terms
            (default: the initial weights).
        lambda_distance : float, default 0.0
            Weight of the calibration distance of the kept weights from the
            reference weights (:func:`l0_calibrate.regularizers.calibration_distance`).
        distance : {"chi2", "raking"}, default "chi2"
            That distance, also used by the polishing stage.
        lambda_dispersion : float, default 0.0
            Weight of the squared coefficient of variation of the kept
            weights relative to the reference (design effect minus 1).
        max_weight_ratio : float or (lo, hi), optional
            Bounds on kept weight / reference weight: a soft penalty
            (weight ``lambda_ratio``) in training, exact in polishing.
        lambda_ratio : float, default 1.0
            Weight of that penalty.
        polish : bool, default False
            Re-solve the kept households' weights exactly on the targets at
            the end (:func:`l0_calibrate.polish.polish_weights`) instead of
            the Adam re-fit. Sharded, the kept columns are gathered to every
            rank, the same solve runs on each, and ``polish_result_.weights``
            holds this rank's columns.
        num_threads : int, optional
            CPU threads for this fit (restored afterwards). Default: one thread
            when non-zeros plus households are under two million (threading
            costs more than it saves there), else torch's setting.

        Returns
        -------
        SparseCalibrationWeights
            ``self``.

        Notes
        -----
        Sharded (see ``distributed``), ``fit`` is collective: ``M`` holds this
        rank's ``shard.n_local`` columns (or is a path of which only those are
        read), ``y`` and every option are the same on all ranks (ranks given
        different ones all raise ``ValueError``), ``target_count`` counts
        households over all ranks, progress is logged by rank 0 only and
        callbacks run on every rank (their events carry ``rank``,
        ``world_size`` and ``column_offset``); a stop asked for on any rank
        stops all. ``design_weights`` may hold all households or this rank's.

        Examples
        --------
        >>> from l0_calibrate import SparseCalibrationWeights
        >>> M = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
        >>> model = SparseCalibrationWeights(4, init_keep_prob=0.9, seed=1)
        >>> _ = model.fit(M, [4.0, 10.0], epochs=300, lr=0.05, loss_type="relative", target_count=2)
        >>> model.get_active_weights()["count"]
        2
        """
        if isinstance(M, (str, os.PathLike)):
            M = self._read_columns(M)
        if not self._reducer.is_main:  # one rank logs
            verbose, progress = False, False
        return run_fit(
            cast("SparseCalibrationWeights", self),
            M,
            y,
            lambda_l0=lambda_l0,
            lambda_l2=lambda_l2,
            lr=lr,
            epochs=epochs,
            loss_type=loss_type,
            verbose=verbose,
            verbose_freq=verbose_freq,
            target_groups=target_groups,
            normalize_groups=normalize_groups,
            group_multipliers=group_multipliers,
            target_count=target_count,
            refit_epochs=refit_epochs,
            count_lr=count_lr,
            count_warmup=count_warmup,
            temperature_schedule=temperature_schedule,
            final_temperature=final_temperature,
            schedule_epochs=schedule_epochs,
            callbacks=callbacks,
            progress=progress,
            target_names=target_names,
            design_weights=design_weights,
            lambda_distance=lambda_distance,
            distance=distance,
            lambda_dispersion=lambda_dispersion,
            max_weight_ratio=max_weight_ratio,
            lambda_ratio=lambda_ratio,
            polish=polish,
            num_threads=num_threads,
        )

    def _read_columns(self, path: str | os.PathLike) -> Any:
        """This process's columns of the matrix file ``path`` (all ranks stop together on a failure)."""
        red = self._reducer
        if not red.sharded:
            return load_columns(path, red.shard)
        with stop_together("reading its columns of M", red.group):
            n_file = matrix_shape(path)[1]
            if n_file != self.n_total:
                s = self.shard
                raise ValueError(
                    f"M: {os.fspath(path)!r} has {n_file} households but the model's columns total "
                    f"{self.n_total} (this rank holds [{s.start}, {s.stop}) of {s.world_size} "
                    "ranks' columns). Inside a process group SparseCalibrationWeights(n_features) "
                    "takes this rank's column count; for a file, build the model with "
                    f"ShardedCalibrationWeights({n_file}) (the even split), or pass each rank's "
                    "count"
                )
            return load_columns(path, red.shard)

    def reset_optimizer(self) -> None:
        """Forget the optimiser state so the next ``fit`` starts Adam afresh (0.6.2 behaviour).

        Examples
        --------
        >>> from l0_calibrate import SparseCalibrationWeights
        >>> SparseCalibrationWeights(2).reset_optimizer()
        """
        self._fit_state.forget_optimizer()

    @property
    def epochs_trained(self) -> int:
        """Training epochs run so far, over all ``fit`` calls (restored by ``load_state_dict``)."""
        return self._fit_state.epoch

    # ----------------------------------------------------------- state
    def get_extra_state(self) -> Tensor | dict[str, Any]:
        """Optimiser, random generator and schedule state, saved inside ``state_dict()``.

        The state is serialised into a ``uint8`` tensor (``torch.save`` of a
        dict that ``torch.load(weights_only=True)`` reads back), so a
        ``state_dict()`` holds tensors only: ``{k: v.cpu() for k, v in sd.items()}``
        works and the file loads with ``weights_only=True``. Sharded, it is
        the dict itself plus this rank's layout (``"shard"``), which the
        tools of :mod:`l0_calibrate.distributed_state` read and cut.
        """
        state = self._fit_state.as_dict(self.beta, self._generator)
        if not self._reducer.sharded:
            return pack_fit_state(state)
        state["shard"] = {**self.shard.as_dict(), "noise": self._reducer.noise}
        return state

    def set_extra_state(self, state: Tensor | dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved (sharded: after checking the columns match)."""
        saved: Any = unpack_fit_state(state)
        if self._reducer.sharded:
            layout = saved.get("shard") if isinstance(saved, dict) else None
            check_saved_layout(layout, self.shard, self._reducer.noise)
        fit_state = FitState.from_dict(saved)
        self.beta = float(saved["beta"])
        generator = saved["generator"]
        self._generator.set_state(generator.cpu() if generator.is_cuda else generator)
        self._fit_state = fit_state

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "_extra_state"
        had_extra = key in state_dict
        _refuse_non_finite(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not had_extra:
            # A plain {log_weight, log_alpha} dict (e.g. from l0-python 0.6.2): load the
            # parameters and start the optimiser afresh.
            if key in missing_keys:
                missing_keys.remove(key)
            self._fit_state.forget_optimizer()

    def extra_repr(self) -> str:
        text = (
            f"n_features={self.n_features}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}, "
            f"use_gates={self.use_gates}, epochs_trained={self._fit_state.epoch}"
        )
        if not self._reducer.sharded:
            return text
        s = self.shard
        return (
            f"n_total={self.n_total}, columns=[{s.start}, {s.stop}), rank={s.rank}/{s.world_size}, "
            + text
        )
