"""Run :func:`~l0_calibrate.calibrate` on several local processes with ``torchrun``.

:func:`run_distributed` is what ``l0-calibrate run --nproc N`` calls: it
checks the input on the first households, writes the job to a temporary
folder, starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m l0_calibrate.distributed_worker JOB`` and returns the
:class:`~l0_calibrate.CalibrationResult` of all households. Each worker
joins the process group and calls :func:`~l0_calibrate.calibrate` on the
matrix file with the caller's keywords (each rank reads only its own
household columns); rank 0 gathers the weights and writes the result.

The model-level job (``model_options=`` / ``fit_options=``) fits a
:class:`~l0_calibrate.ShardedCalibrationWeights` with exactly those
arguments instead, and returns the same result type.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from l0_core.checks import check_float, check_int

from .build import build_problem, build_result
from .distributed import ShardedCalibrationWeights, gather_weights, init_distributed
from .distributed_io import load_columns, matrix_shape
from .distributed_reducer import ColumnShard, LocalReducer, group_initialized
from .frontend import calibrate
from .methods import Solution
from .result import CalibrationResult, TargetMissWarning, mark_misses

__all__ = ["check_matrix_file", "run_distributed", "run_job", "torchrun", "write_job"]

logger = logging.getLogger("l0_calibrate")

_RESULT = "result.pkl"
#: calibrate()'s keywords that a launch may pass on (the matrix, targets and sharding are its own).
_CALIBRATE_KEYWORDS = frozenset(inspect.signature(calibrate).parameters) - {
    "estimate_matrix",
    "targets",
    "distributed",
}


def check_matrix_file(matrix: str | os.PathLike, targets: Any, *, argument: str = "matrix") -> int:
    """Check a matrix file and its targets on the first households, before any process starts.

    The file exists, has a known format and a readable header; target names
    match a table's columns, there are no text columns and the number of
    targets fits. Returns the file's household count.

    Examples
    --------
    >>> check_matrix_file("missing.npz", [1.0])
    Traceback (most recent call last):
    ...
    FileNotFoundError: matrix file 'missing.npz' does not exist
    """
    n_households = matrix_shape(matrix, argument=argument)[1]
    n_head = min(n_households, 20)
    head = load_columns(matrix, ColumnShard(n_households, 0, n_head), argument=argument)
    build_problem(
        head, targets, LocalReducer(n_head), dtype=torch.float64, device="cpu", argument=argument
    )
    return n_households


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
    nproc = check_int(nproc, "nproc", min_val=1)
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
    **options: Any,
) -> CalibrationResult:
    """Calibrate on ``nproc`` local processes, each reading only its columns of ``matrix``.

    Parameters
    ----------
    matrix : str or os.PathLike
        Matrix file (see :func:`l0_calibrate.load_columns`).
    targets : array-like or pandas.Series
        One target per row of ``M`` (a Series is aligned by name to a
        parquet/csv file's columns).
    nproc : int
        Number of processes (``1`` still runs through ``torchrun``).
    model_options, fit_options : mapping, optional
        The model-level job: keyword arguments of
        :class:`ShardedCalibrationWeights` (except ``n_features`` and
        ``device``) and of its ``fit``, instead of ``calibrate`` keywords.
        Callables must be importable by name.
    backend : {"gloo", "nccl"}, optional
        Default: gloo for ``device="cpu"`` (calibrate's default); otherwise
        NCCL when every process has a GPU.
    timeout : float, optional
        Seconds before the run is abandoned.
    collective_timeout : float, optional
        Seconds a worker waits for the others in a collective (the process
        group's timeout, default 1800): a frozen or lost worker then ends
        its peers with an error naming its rank (``l0-calibrate run
        --timeout``).
    **options
        Keywords of :func:`~l0_calibrate.calibrate` (``target_count``,
        ``epochs``, ``device``, ``verbose``, ``tolerance``, ...), passed
        unchanged to every worker's ``calibrate``.

    Returns
    -------
    CalibrationResult
        The weights of all households (``model`` is None); missed targets
        give the same :class:`~l0_calibrate.TargetMissWarning` as ``calibrate``.

    Examples
    --------
    Two processes, each reading half of the households of ``matrix.npz``
    (a launch takes seconds; :func:`run_job` shows the worker's side)::

        result = run_distributed("matrix.npz", targets, nproc=2, target_count=50_000, epochs=1000)
        result.weights, result.n_active
    """
    nproc = check_int(nproc, "nproc", min_val=1)
    if collective_timeout is not None:
        check_float(
            collective_timeout, "collective_timeout", min_val=0.0, include_boundaries="neither"
        )
    unknown = sorted(set(options) - _CALIBRATE_KEYWORDS)
    if unknown:
        raise TypeError(
            f"run_distributed got unknown keyword(s) {unknown}; it takes calibrate()'s keywords "
            "(except estimate_matrix, targets and distributed)"
        )
    if options and (model_options is not None or fit_options is not None):
        raise TypeError(
            "pass calibrate() keywords or model_options/fit_options (the model-level job), not both"
        )
    matrix = os.path.abspath(os.fspath(matrix))
    check_matrix_file(matrix, targets, argument=f"matrix {os.path.basename(matrix)!r}")
    with tempfile.TemporaryDirectory(prefix="l0-calibrate-") as work:
        job = write_job(
            os.path.join(work, "job.pkl"),
            matrix,
            targets,
            model_options=model_options,
            fit_options=fit_options,
            backend=backend,
            collective_timeout=collective_timeout,
            options=options,
        )
        code = torchrun(["-m", "l0_calibrate.distributed_worker", job], nproc, timeout=timeout)
        out = os.path.join(work, _RESULT)
        if code != 0 or not os.path.exists(out):
            raise RuntimeError(
                f"the distributed fit failed (exit status {code}); the workers' errors are printed above"
            )
        with open(out, "rb") as f:
            result: CalibrationResult = pickle.load(f)
    if model_options is None and fit_options is None:  # as calibrate() would have warned
        mark_misses(result.report, options.get("tolerance", 0.05), stacklevel=2)
    return result


def write_job(
    path: str | os.PathLike,
    matrix: str | os.PathLike,
    targets: Any,
    *,
    model_options: Mapping[str, Any] | None = None,
    fit_options: Mapping[str, Any] | None = None,
    backend: str | None = None,
    collective_timeout: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Write the job file that :func:`run_job` runs; the result goes beside it.

    Parameters are those of :func:`run_distributed` (``options``: its
    ``calibrate`` keywords). Returns ``path``.

    Examples
    --------
    >>> import tempfile, numpy as np, scipy.sparse as sp
    >>> d = tempfile.mkdtemp()
    >>> sp.save_npz(os.path.join(d, "m.npz"), sp.csc_matrix(np.ones((2, 6))))
    >>> job = write_job(os.path.join(d, "job.pkl"), os.path.join(d, "m.npz"), [3.0, 6.0])
    >>> os.path.basename(job)
    'job.pkl'
    """
    model = None if model_options is None and fit_options is None else dict(model_options or {})
    for key in ("n_features", "device", "shard", "group"):
        if model is not None and key in model:
            raise ValueError(f"model_options must not set {key!r}; each worker sets it")
    options = dict(options or {})
    if (
        backend is None
        and model is None
        and torch.device(options.get("device", "cpu")).type == "cpu"
    ):
        backend = "gloo"  # CPU tensors: NCCL would refuse them
    path = os.path.abspath(os.fspath(path))
    job = {
        "matrix": os.path.abspath(os.fspath(matrix)),
        "targets": targets,
        "model": model,
        "fit": dict(fit_options or {}),
        "calibrate": options,
        "backend": backend,
        "collective_timeout": collective_timeout,
        "out": os.path.dirname(path),
    }
    with open(path, "wb") as f:
        pickle.dump(job, f)
    return path


def _calibrate_job(job: dict[str, Any], rank: int, device: torch.device) -> CalibrationResult:
    """This rank's ``calibrate`` on the job's file (misses are warned by :func:`run_distributed`)."""
    options = dict(job["calibrate"])
    if options.get("verbose"):
        logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
    if torch.device(options.get("device", "cpu")).type == "cuda" and device.type == "cuda":
        options["device"] = device  # this rank's GPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TargetMissWarning)
        return calibrate(job["matrix"], job["targets"], **options)


def _model_job(job: dict[str, Any], device: torch.device) -> CalibrationResult:
    """The model-level job: this rank's columns fitted with the job's model and fit options."""
    n_households = matrix_shape(job["matrix"])[1]
    model = ShardedCalibrationWeights(n_households, device=device, **job["model"])
    local = load_columns(job["matrix"], model.shard)
    fit = job["fit"]
    model.fit(local, job["targets"], **fit)
    problem = build_problem(
        local, job["targets"], model.reducer, dtype=torch.float64, device="cpu",
        target_names=fit.get("target_names"), target_groups=fit.get("target_groups"),
        normalize_groups=fit.get("normalize_groups", True),
        group_multipliers=fit.get("group_multipliers"),
    )  # fmt: skip
    weights = model.get_weights(deterministic=True).detach().to("cpu", torch.float64).numpy()
    solution = Solution(weights, list(model.history_), model=model, epochs=model.epochs_trained)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TargetMissWarning)
        return build_result(problem, solution, model.reducer)


def run_job(job_path: str | os.PathLike) -> CalibrationResult | None:
    """Worker side of :func:`run_distributed`: calibrate this rank's columns; rank 0 writes the result.

    Joins the process group from the ``torchrun`` environment (or uses an
    existing group; outside any it runs alone). Returns the result of all
    households on rank 0 and None on the others; rank 0 also writes it
    beside the job file.

    Examples
    --------
    >>> import tempfile, numpy as np, scipy.sparse as sp
    >>> d = tempfile.mkdtemp()
    >>> sp.save_npz(os.path.join(d, "m.npz"), sp.csc_matrix(np.ones((2, 6))))
    >>> job = write_job(os.path.join(d, "job.pkl"), os.path.join(d, "m.npz"), [3.0, 3.0],
    ...                 options={"target_count": 3, "epochs": 30})
    >>> run_job(job).n_active  # outside torchrun: one process
    3
    """
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    owned = not group_initialized()
    pg_timeout = job.get("collective_timeout")
    ctx = init_distributed(
        job.get("backend"), timeout_s=1800.0 if pg_timeout is None else pg_timeout
    )
    try:
        if job.get("model") is None:
            result = _calibrate_job(job, ctx.rank, ctx.device)
        else:
            result = _model_job(job, ctx.device)
        weights = gather_weights(result)
        gathered: CalibrationResult | None = None
        if weights is not None:
            reducer = getattr(result.model, "reducer", None)
            gathered = dataclasses.replace(
                result, weights=weights, model=None, shard=None, world_size=ctx.world_size
            )
            gathered.diagnostics["bytes_reduced"] = int(getattr(reducer, "bytes_reduced", 0))
            tmp = os.path.join(job["out"], _RESULT + ".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(gathered, f)
            os.replace(tmp, os.path.join(job["out"], _RESULT))
        if owned and ctx.world_size > 1:
            torch.distributed.barrier()  # no rank tears the group down while another still gathers
        return gathered
    finally:
        if owned and group_initialized():
            torch.distributed.destroy_process_group()
