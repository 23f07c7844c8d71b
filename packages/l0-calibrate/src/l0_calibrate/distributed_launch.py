"""Run a column-sharded calibration on several local processes with ``torchrun``.

:func:`run_distributed` is what ``l0-calibrate run --nproc N`` calls: it
writes the job to a temporary folder, starts ``python -m
torch.distributed.run --standalone --nproc-per-node N -m
l0_calibrate.distributed_worker JOB`` and returns the gathered weights.
Each worker joins the process group, reads only its own household columns
of the matrix file, fits a :class:`~l0_calibrate.ShardedCalibrationWeights`
and sends its weights to rank 0, which writes the result.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from l0_core.checks import check_float

from .inputs import check_positive_int

__all__ = ["DistributedResult", "run_distributed", "run_job", "torchrun", "write_job"]

logger = logging.getLogger("l0_calibrate")

_RESULT = "result.pkl"


@dataclass
class DistributedResult:
    """What :func:`run_distributed` returns.

    Attributes
    ----------
    weights : numpy.ndarray
        Final (deterministic) weights of all households, in file order.
    n_active : int
        Number of non-zero weights.
    history : list of dict
        The fit's logging steps (as ``model.history_``; weights left out).
    world_size : int
        Number of processes that ran the fit.
    bytes_reduced : int
        Bytes each rank passed to all-reduce during the fit.
    epochs : int
        Training epochs run (``model.epochs_trained``).
    estimates : numpy.ndarray or None
        ``M @ weights``, one per target.
    infeasible_targets : list of str
        Targets no household contributes to.
    household_index : pandas.Index or None
        The household labels of a parquet/csv matrix file (None for
        ``.npz``/``.npy``: households are numbered in file order).
    """

    weights: np.ndarray
    n_active: int
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    bytes_reduced: int = 0
    epochs: int = 0
    estimates: np.ndarray | None = None
    infeasible_targets: list[str] = field(default_factory=list)
    household_index: Any = None


def torchrun(
    argv: Sequence[str],
    nproc: int,
    *,
    torchrun_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """Start ``nproc`` local processes with ``python -m torch.distributed.run --standalone``.

    Parameters
    ----------
    argv : list of str
        What each process runs: a script and its arguments, or
        ``["-m", "module", ...]``.
    nproc : int
        Processes on this machine.
    torchrun_args : list of str, optional
        More ``torchrun`` options (e.g. ``["--max-restarts=1"]``).
    env : mapping, optional
        Environment (default: this process's).
    timeout : float, optional
        Seconds before the run is killed (``subprocess.TimeoutExpired``).

    Returns
    -------
    int
        The exit status (0 when every process succeeded).

    Examples
    --------
    Each process imports torch, so a launch takes seconds; on the command
    line this is ``torchrun --standalone --nproc-per-node 2 script.py``::

        code = torchrun(["my_calibration.py", "--epochs", "1000"], nproc=2)
    """
    nproc = check_positive_int(nproc, "nproc")
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("argv must name what to run: a script path or ['-m', 'module']")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *torchrun_args,
        *argv,
    ]
    logger.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, env=None if env is None else dict(env), timeout=timeout).returncode


def run_distributed(
    matrix: str | os.PathLike,
    targets: Any,
    *,
    nproc: int,
    model_options: Mapping[str, Any] | None = None,
    fit_options: Mapping[str, Any] | None = None,
    backend: str | None = None,
    timeout: float | None = None,
    collective_timeout: float | None = None,
) -> DistributedResult:
    """Calibrate on ``nproc`` local processes, each reading only its columns of ``matrix``.

    Parameters
    ----------
    matrix : str or os.PathLike
        Matrix file (see :func:`l0_calibrate.distributed_io.load_columns`).
    targets : array-like or pandas.Series
        One target per row of ``M`` (a Series is aligned by name to a
        parquet/csv file's columns).
    nproc : int
        Number of processes (``1`` still runs through ``torchrun``).
    model_options : mapping, optional
        Keyword arguments of :class:`ShardedCalibrationWeights` (``seed``,
        ``init_keep_prob``, ``dtype``, ...), except ``n_features`` and ``device``.
    fit_options : mapping, optional
        Keyword arguments of ``fit`` (``epochs``, ``target_count``,
        ``loss_type``, ...). Callables must be importable by name.
    backend : {"gloo", "nccl"}, optional
        Default: NCCL when GPUs are visible, else gloo.
    timeout : float, optional
        Seconds before the run is abandoned.
    collective_timeout : float, optional
        Seconds a worker waits for the others in a collective (the process
        group's timeout, default 1800): a frozen or lost worker then ends
        its peers with an error naming its rank (``l0-calibrate run
        --timeout``).

    Returns
    -------
    DistributedResult

    Examples
    --------
    Two processes, each reading half of the households of ``matrix.npz``
    (a launch takes seconds; :func:`run_job` shows the worker's side)::

        result = run_distributed(
            "matrix.npz", targets, nproc=2,
            model_options={"seed": 0}, fit_options={"epochs": 1000, "target_count": 50_000},
        )
        result.weights, result.n_active
    """
    import torch

    nproc = check_positive_int(nproc, "nproc")
    if collective_timeout is not None:
        check_float(
            collective_timeout, "collective_timeout", min_val=0.0, include_boundaries="neither"
        )
    matrix = os.path.abspath(os.fspath(matrix))
    from .distributed_io import load_columns, matrix_shape
    from .distributed_reducer import ColumnShard
    from .problem import prepare_problem

    # the file exists, has a known format and a readable header
    n_households = matrix_shape(matrix)[1]
    # the workers' input checks on the first households, before any process starts: target
    # names against a table's columns, text columns, the number of targets
    head = load_columns(matrix, ColumnShard(n_households, 0, min(n_households, 20)))
    prepare_problem(
        head, targets, n_features=None, dtype=torch.float64, device="cpu",
        matrix_argument=f"matrix {os.path.basename(matrix)!r}", targets_argument="targets",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="l0-calibrate-") as work:
        job = write_job(
            os.path.join(work, "job.pkl"),
            matrix,
            targets,
            model_options=model_options,
            fit_options=fit_options,
            backend=backend,
            collective_timeout=collective_timeout,
        )
        code = torchrun(["-m", "l0_calibrate.distributed_worker", job], nproc, timeout=timeout)
        out = os.path.join(work, _RESULT)
        if code != 0 or not os.path.exists(out):
            raise RuntimeError(
                f"the distributed fit failed (exit status {code}); the workers' errors are printed above"
            )
        with open(out, "rb") as f:
            return DistributedResult(**pickle.load(f))


def write_job(
    path: str | os.PathLike,
    matrix: str | os.PathLike,
    targets: Any,
    *,
    model_options: Mapping[str, Any] | None = None,
    fit_options: Mapping[str, Any] | None = None,
    backend: str | None = None,
    collective_timeout: float | None = None,
) -> str:
    """Write the job file that :func:`run_job` runs; the result goes beside it.

    Parameters are those of :func:`run_distributed`. Returns ``path``.

    Examples
    --------
    >>> import tempfile, scipy.sparse as sp
    >>> d = tempfile.mkdtemp()
    >>> sp.save_npz(os.path.join(d, "m.npz"), sp.csc_matrix(np.ones((2, 6))))
    >>> job = write_job(os.path.join(d, "job.pkl"), os.path.join(d, "m.npz"), [3.0, 6.0])
    >>> os.path.basename(job)
    'job.pkl'
    """
    model_options = dict(model_options or {})
    for key in ("n_features", "device", "shard", "group"):
        if key in model_options:
            raise ValueError(f"model_options must not set {key!r}; each worker sets it")
    path = os.path.abspath(os.fspath(path))
    job = {
        "matrix": os.path.abspath(os.fspath(matrix)),
        "targets": targets,
        "model": model_options,
        "fit": dict(fit_options or {}),
        "backend": backend,
        "collective_timeout": collective_timeout,
        "out": os.path.dirname(path),
    }
    with open(path, "wb") as f:
        pickle.dump(job, f)
    return path


def run_job(job_path: str | os.PathLike) -> DistributedResult | None:
    """Worker side of :func:`run_distributed`: fit this rank's columns; rank 0 writes the result.

    Joins the process group from the ``torchrun`` environment (or uses an
    existing group; outside any it runs alone). Returns the result on
    rank 0 and None on the others; rank 0 also writes it beside the job file.

    Examples
    --------
    >>> import tempfile, scipy.sparse as sp
    >>> d = tempfile.mkdtemp()
    >>> sp.save_npz(os.path.join(d, "m.npz"), sp.csc_matrix(np.ones((2, 6))))
    >>> job = write_job(os.path.join(d, "job.pkl"), os.path.join(d, "m.npz"), [3.0, 3.0],
    ...                 model_options={"seed": 0}, fit_options={"epochs": 30, "target_count": 3})
    >>> run_job(job).n_active  # outside torchrun: one process
    3
    """
    import torch

    from .distributed import ShardedCalibrationWeights, gather_weights, init_distributed
    from .distributed_io import household_labels, load_columns, matrix_shape
    from .distributed_reducer import group_initialized

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    owned = not group_initialized()
    pg_timeout = job.get("collective_timeout")
    ctx = init_distributed(
        job.get("backend"), timeout_s=1800.0 if pg_timeout is None else pg_timeout
    )
    try:
        n_households = matrix_shape(job["matrix"])[1]
        model = ShardedCalibrationWeights(n_households, device=ctx.device, **job["model"])
        local = load_columns(job["matrix"], model.shard)
        model.fit(local, job["targets"], **job["fit"])
        estimates = model.predict(local)
        weights = gather_weights(model)
        if weights is None:
            return None
        history = [
            {k: v for k, v in h.items() if k not in ("weights", "model")} for h in model.history_
        ]
        result = DistributedResult(
            weights=weights.to(torch.float64).cpu().numpy(),
            n_active=int((weights > 0).sum().item()),
            history=history,
            world_size=ctx.world_size,
            bytes_reduced=model.reducer.bytes_reduced,
            epochs=model.epochs_trained,
            estimates=estimates.to(torch.float64).cpu().numpy(),
            infeasible_targets=list(model.infeasible_targets_),
            household_index=household_labels(job["matrix"]),
        )
        tmp = os.path.join(job["out"], _RESULT + ".tmp")
        with open(tmp, "wb") as f:  # a plain dict: readable whatever module runs the worker
            pickle.dump(dataclasses.asdict(result), f)
        os.replace(tmp, os.path.join(job["out"], _RESULT))
        return result
    finally:
        if owned and group_initialized():
            import torch.distributed as dist

            dist.destroy_process_group()
