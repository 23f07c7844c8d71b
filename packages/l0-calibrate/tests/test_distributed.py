"""Column-sharded calibration on torch.distributed (gloo on CPU).

The multi-process tests fork 2 and 3 ranks from the test process (no
second torch import, so they stay fast; spawned instead where CUDA is
present), run every scenario once per world
size, and compare each result with the single-process fit of the same seed
computed here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
from l0_calibrate import (
    CalibrationResult,
    InfeasibleTargetWarning,
    SparseCalibrationWeights,
    calibrate,
)
from l0_calibrate.distributed import ShardedCalibrationWeights, gather_weights, init_distributed
from l0_calibrate.distributed_io import (
    household_labels,
    load_columns,
    load_npz_columns,
    matrix_shape,
)
from l0_calibrate.distributed_launch import run_distributed, run_job, write_job
from l0_calibrate.distributed_reducer import (
    ColumnShard,
    ProcessGroupReducer,
    all_reduce_sum,
    sortable_keys,
)
from l0_calibrate.distributed_state import (
    ShardCheckpoint,
    consolidate_state_dicts,
    shard_state_dict,
)
from l0_calibrate.weights import unpack_fit_state

pytestmark = pytest.mark.slow  # every test here starts subprocesses or process groups

N_TARGETS, N = 24, 301  # 301 splits unevenly over 2 and 3 ranks
COUNT = 40
E1, E2 = 25, 25
MODEL = dict(
    seed=3,
    init_keep_prob=0.8,
    log_weight_jitter_sd=0.05,
    log_alpha_jitter_sd=0.05,
    dtype=torch.float64,
)
FIT = dict(lr=0.05, loss_type="relative", lambda_l0=1e-4, verbose_freq=50)
COUNT_FIT = dict(FIT, epochs=60, target_count=COUNT, refit_epochs=10)
UNEVEN = dict(init_weights=np.linspace(1.0, 2.0, N), init_keep_prob=0.999, seed=0)
# the weight penalties, with the Adam re-fit and with the exact polish
PENALTIES = dict(
    COUNT_FIT,
    lambda_distance=0.5,
    lambda_dispersion=0.2,
    max_weight_ratio=4.0,
    lambda_ratio=2.0,
    distance="raking",
)
POLISHED = dict(PENALTIES, polish=True, distance="chi2")
CALIBRATE = dict(target_count=COUNT, epochs=60, seed=1, verbose_freq=20)
AUTO_CUTS = {2: [0, 170, N], 3: [0, 100, 220, N]}  # each rank's own columns, uneven

TOL = dict(rtol=1e-9, atol=1e-12)  # float64: only the order of the partial sums differs


def _problem() -> tuple[sp.csc_matrix, np.ndarray]:
    rng = np.random.default_rng(11)
    M = sp.random(
        N_TARGETS,
        N,
        density=0.15,
        format="lil",
        random_state=rng,
        data_rvs=lambda k: rng.uniform(1, 5, k),
    )
    M[0, :] = 0
    M[0, :40] = 1.0  # a target only rank 0 contributes to
    M[1, :] = 0  # a target nobody contributes to: infeasible
    M = M.tocsc()
    w_true = rng.uniform(0.5, 3.0, N) * (rng.random(N) < 0.3)
    y = M @ w_true
    y[1] = 5.0
    return M, y


M_FULL, Y = _problem()


#: What one rank reports back (see ``_auto_work`` and ``_rank_work`` for the keys).
RankResult = dict[str, Any]


@dataclass(frozen=True)
class Files:
    """The matrix file every rank reads and the command line's job file, in one folder."""

    dir: str
    npz: str
    job: str


@dataclass(frozen=True)
class Ranks:
    """Every rank's results with 2 and with 3 ranks (the 3 resume the 2's consolidated checkpoint)."""

    two: list[RankResult]
    three: list[RankResult]

    def __getitem__(self, world: int) -> list[RankResult]:
        return {2: self.two, 3: self.three}[world]


@dataclass(frozen=True)
class Single:
    """The single-process references the sharded results are compared with (same seeds)."""

    count_weights: torch.Tensor
    infeasible: list[str]
    estimates: torch.Tensor
    history: list[dict[str, Any]]
    straight: dict[str, Any]
    grad: tuple[torch.Tensor, torch.Tensor]
    penalties: torch.Tensor
    penalties_history: list[float]
    polished: torch.Tensor
    polished_history: list[float]
    polish_result: Any
    e1: torch.Tensor
    calibrate: CalibrationResult
    calibrate_file: CalibrationResult
    calibrate_design: pd.Series
    calibrate_plain: pd.Series
REL = dict(rtol=1e-6, atol=1e-12)
HOLDOUT = M_FULL[2:5] * 2.0  # variables that are not targets
HOLDOUT_TOTALS = np.asarray(HOLDOUT.sum(axis=1)).ravel()


def _fit_single(**fit: object) -> SparseCalibrationWeights:
    model = SparseCalibrationWeights(N, **MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        model.fit(M_FULL, Y, **fit)
    return model


def _loss(estimate: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(Y)
    return (((estimate - y) / (y.abs() + 1)) ** 2).sum()


# ------------------------------------------------------------ the ranks' work
def _auto_work(rank: int, world: int, files: Files) -> RankResult:
    """The plain API inside the process group: each rank passes its own columns."""
    out: RankResult = {}
    cuts = AUTO_CUTS[world]
    local = M_FULL[:, cuts[rank] : cuts[rank + 1]]
    model = SparseCalibrationWeights(local.shape[1], **MODEL)
    out["auto_type"] = (type(model).__name__, type(model.reducer).__name__)
    out["auto_start"] = model.shard.start
    model.fit(local, Y, **COUNT_FIT)
    out["auto_weights"] = model.get_weights(deterministic=True).detach().clone()
    out["auto_gathered"] = gather_weights(model)
    for name, options in (("penalties", PENALTIES), ("polished", POLISHED)):
        fitted = SparseCalibrationWeights(local.shape[1], **MODEL)
        fitted.fit(local, Y, **options)
        out[name] = fitted.get_weights(deterministic=True).detach().clone()
        out[name + "_history"] = [h["penalty_loss"] for h in fitted.history_]
    out["polish_result"] = fitted.polish_result_
    # a path: the file holds every household, the model this rank's even share of them
    from_file = SparseCalibrationWeights(ColumnShard.even(N).n_local, **MODEL)
    from_file.fit(files.npz, Y, epochs=E1 + E2, **FIT)
    out["from_file"] = from_file.log_weight.detach().clone()
    # calibrate() with this rank's columns, and with design weights of all households
    holdout = HOLDOUT[:, cuts[rank] : cuts[rank + 1]]
    res = calibrate(local, Y, holdout_matrix=holdout, holdout_totals=HOLDOUT_TOTALS, **CALIBRATE)
    out["calibrate"] = res
    out["calibrate_gathered"] = gather_weights(res)
    out["calibrate_design"] = calibrate(
        local, Y, design_weights=np.linspace(1.0, 3.0, N), epochs=30, seed=2, dtype=torch.float64
    ).weights
    # a path: the file's households are the total, each rank reads its even share
    out["calibrate_file"] = calibrate(files.npz, Y, epochs=30, seed=2, dtype=torch.float64)
    # opting out: every rank fits the whole problem on its own
    alone = SparseCalibrationWeights(N, distributed=False, **MODEL)
    alone.fit(M_FULL, Y, epochs=E1, **FIT)
    out["alone_type"] = (type(alone).__name__, type(alone.reducer).__name__)
    out["alone"] = alone.log_weight.detach().clone()
    out["alone_calibrate"] = calibrate(M_FULL, Y, epochs=30, seed=2, distributed=False).weights
    # errors, raised on every rank alike
    try:
        SparseCalibrationWeights(local.shape[1], **MODEL).fit(local, Y + rank, epochs=2)
    except ValueError as exc:
        out["targets_error"] = str(exc)
    try:  # a different target_count on every rank
        SparseCalibrationWeights(local.shape[1], **MODEL).fit(local, Y, epochs=2, target_count=COUNT + rank)
    except ValueError as exc:
        out["count_error"] = str(exc)
    try:  # a bad argument on the last rank only: nobody is left waiting in a collective
        bad_lr = -1.0 if rank == world - 1 else 0.05
        SparseCalibrationWeights(local.shape[1], **MODEL).fit(local, Y, epochs=2, lr=bad_lr)
    except ValueError as exc:
        out["one_rank_error"] = str(exc)
    try:  # the last rank cannot read the file
        path = files.npz if rank < world - 1 else files.npz + ".missing.npz"
        SparseCalibrationWeights(ColumnShard.even(N).n_local, **MODEL).fit(path, Y, epochs=2)
    except (ValueError, OSError) as exc:
        out["file_error"] = f"{type(exc).__name__}: {exc}"
    try:  # calibrate: the last rank's design weights are invalid
        design = np.ones(local.shape[1]) * (-1.0 if rank == world - 1 else 1.0)
        calibrate(local, Y, design_weights=design, epochs=2)
    except ValueError as exc:
        out["design_error"] = str(exc)
    # a target count above this rank's own columns but within the total
    big = SparseCalibrationWeights(local.shape[1], **MODEL)
    big.fit(local, Y, **dict(COUNT_FIT, epochs=10, refit_epochs=2, target_count=150))
    out["big_count_local"] = int((big.get_weights(deterministic=True) > 0).sum())
    try:
        calibrate(local, Y, target_count=COUNT, method="select")
    except ValueError as exc:
        out["select_error"] = str(exc)
    try:
        SparseCalibrationWeights(N, **MODEL).fit(files.npz, Y, epochs=2)
    except ValueError as exc:
        out["file_total_error"] = str(exc)
    return out


def _rank_work(
    rank: int, world: int, files: Files, consolidated: dict[str, Any] | None
) -> RankResult:
    """Everything one rank does; the results go back to the test process."""
    warnings.simplefilter("ignore", InfeasibleTargetWarning)
    out = _auto_work(rank, world, files)
    # a target_count fit that reads only its columns of the npz file
    # the command line's worker (a target_count fit reading only its columns of the npz
    # file, weights gathered to rank 0), inside this process group
    out["job"] = run_job(files.job)
    model = ShardedCalibrationWeights(N, **MODEL)
    events: list = []
    model.fit(files.npz, Y, epochs=20, callbacks=[events.append], **dict(FIT, verbose_freq=10))
    out["event_layout"] = {(e["rank"], e["world_size"], e["column_offset"]) for e in events}
    out["infeasible"] = list(model.infeasible_targets_)
    out["shard"] = model.shard
    before = model.reducer.bytes_reduced
    model.fit(files.npz, Y, epochs=20, **FIT)
    out["bytes_per_epoch"] = (model.reducer.bytes_reduced - before) / 20
    # per-rank checkpoint at E1, resumed by a fresh model
    local = load_columns(files.npz, model.shard)
    first = ShardedCalibrationWeights(N, **MODEL)
    first.fit(local, Y, epochs=E1, **FIT)
    path = os.path.join(files.dir, f"world{world}-rank{rank}.pt")
    torch.save(first.state_dict(), path)
    out["state_e1"] = first.state_dict()
    second = ShardedCalibrationWeights(N, **MODEL)
    second.load_state_dict(torch.load(path))
    second.fit(local, Y, epochs=E2, **FIT)
    out["resumed"] = second.state_dict()
    # a checkpoint written by another world size, consolidated and cut for this one
    if consolidated is not None:
        third = ShardedCalibrationWeights(N, **MODEL)
        third.load_state_dict(shard_state_dict(consolidated, third.shard))
        third.fit(local, Y, epochs=E2, **FIT)
        out["resharded"] = third.state_dict()
    # the differentiable all-reduce: gradient of a loss on the sampled estimate
    grad_model = ShardedCalibrationWeights(N, **MODEL)
    _loss(grad_model(local)).backward()
    out["grad"] = (grad_model.log_weight.grad.clone(), grad_model.log_alpha.grad.clone())
    # exact global top-k with ties
    scores = (torch.arange(N) % 7 - 3).to(torch.float32) * 0.5
    out["top_k"] = model.reducer.top_k_mask(scores[model.shard.columns], 100)
    # gathering from an uneven layout given by the ranks' own column counts
    sizes = {2: [200, 101], 3: [50, 200, 51]}[world]
    custom = ShardedCalibrationWeights(N, shard=ColumnShard.from_local_count(sizes[rank]), **UNEVEN)
    out["uneven_start"] = custom.shard.start
    out["gathered"] = gather_weights(custom)
    # per-household arguments of all columns are cut to the rank's
    out["init_weights"] = ShardedCalibrationWeights(
        N, init_weights=np.linspace(1.0, 2.0, N), seed=0
    ).initial_weights
    # errors
    try:
        ShardedCalibrationWeights(N, **MODEL).load_state_dict(
            SparseCalibrationWeights(N, distributed=False, **MODEL).state_dict()
        )
    except ValueError as exc:
        out["plain_checkpoint_error"] = str(exc)
    try:
        ShardCheckpoint(os.path.join(files.dir, "shared.pt"))({"epoch": 1, "model": model})
    except ValueError as exc:
        out["checkpoint_error"] = str(exc)
    other = torch.load(os.path.join(files.dir, f"world{world}-rank{(rank + 1) % world}.pt"))
    dist.barrier()
    try:
        ShardedCalibrationWeights(N, **MODEL).load_state_dict(other)
    except ValueError as exc:
        out["wrong_rank_error"] = str(exc)
    return out


def _rank_target(rank: int, world: int, store: str, results: Any, args: tuple) -> None:
    """One rank: join the gloo group through ``store``, do the work, report back."""
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=60),
        )
        res = _rank_work(rank, world, *args)
        results.put((rank, pickle.dumps(res), None))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results.put((rank, None, traceback.format_exc()))


def _run_ranks(world: int, workdir: str, *args: object) -> list[RankResult]:
    """Start ``world`` ranks joined by a gloo group; return each rank's result.

    Forked (fast) on machines without CUDA; spawned where CUDA is present,
    because a forked child cannot use a CUDA driver that its parent touched
    (even ``torch.cuda.device_count()`` does, and Adam's step asks CUDA
    whether a graph is being captured).
    """
    ctx = mp.get_context("spawn" if torch.cuda.is_available() else "fork")
    results = ctx.Queue()
    store = os.path.join(workdir, f"store-{world}")

    procs = [ctx.Process(target=_rank_target, args=(r, world, store, results, args)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, RankResult] = {}
    errors = []
    try:
        for _ in range(world):
            rank, payload, err = results.get(timeout=150)
            if err is not None:
                errors.append(f"rank {rank}:\n{err}")
            else:
                out[rank] = pickle.loads(payload)
    except queue.Empty:
        errors.append("timed out waiting for the ranks")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert not errors, "\n".join(errors)
    return [out[r] for r in range(world)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("distributed")
    npz = str(d / "M.npz")
    sp.save_npz(npz, M_FULL)
    job = write_job(d / "job.pkl", npz, Y, model_options=MODEL, fit_options=COUNT_FIT)
    return Files(dir=str(d), npz=npz, job=str(job))


@pytest.fixture(scope="module")
def ranks(files: Files) -> Ranks:
    two = _run_ranks(2, files.dir, files, None)
    merged = consolidate_state_dicts([r["state_e1"] for r in two])
    three = _run_ranks(3, files.dir, files, merged)
    return Ranks(two=two, three=three)


def _calibrate_single(matrix: object, **options: Any) -> CalibrationResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        return calibrate(matrix, Y, **options)


@pytest.fixture(scope="module")
def single() -> Single:
    count_model = _fit_single(**COUNT_FIT)
    straight = _fit_single(epochs=E1 + E2, **FIT)
    penalties = _fit_single(**PENALTIES)
    polished = _fit_single(**POLISHED)
    grad_model = SparseCalibrationWeights(N, **MODEL)
    _loss(grad_model(M_FULL)).backward()
    return Single(
        count_weights=count_model.get_weights(deterministic=True).detach(),
        infeasible=list(count_model.infeasible_targets_),
        estimates=count_model.predict(M_FULL),
        history=count_model.history_,
        straight=straight.state_dict(),
        grad=(grad_model.log_weight.grad, grad_model.log_alpha.grad),
        penalties=penalties.get_weights(deterministic=True).detach(),
        penalties_history=[h["penalty_loss"] for h in penalties.history_],
        polished=polished.get_weights(deterministic=True).detach(),
        polished_history=[h["penalty_loss"] for h in polished.history_],
        polish_result=polished.polish_result_,
        e1=_fit_single(epochs=E1, **FIT).log_weight.detach(),
        calibrate=_calibrate_single(
            M_FULL,
            method="gates",
            holdout_matrix=HOLDOUT,
            holdout_totals=HOLDOUT_TOTALS,
            **CALIBRATE,
        ),
        calibrate_file=_calibrate_single(M_FULL, epochs=30, seed=2, dtype=torch.float64),
        calibrate_design=_calibrate_single(
            M_FULL, design_weights=np.linspace(1.0, 3.0, N), epochs=30, seed=2, dtype=torch.float64
        ).weights,
        calibrate_plain=_calibrate_single(M_FULL, epochs=30, seed=2).weights,
    )


def _concat(parts: list[RankResult], key: str) -> torch.Tensor:
    return torch.cat([p[key] for p in parts])


# ------------------------------------------------------------- multi-process
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_fit_gives_the_single_process_weights(
    world: int, ranks: Ranks, single: Single
) -> None:
    np.testing.assert_allclose(
        ranks[world][0]["job"].weights, single.count_weights.numpy(), **TOL
    )


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_fit_keeps_the_single_process_households(
    world: int, ranks: Ranks, single: Single
) -> None:
    sharded = ranks[world][0]["job"].weights > 0
    assert int(sharded.sum()) == COUNT
    np.testing.assert_array_equal(sharded, single.count_weights.numpy() > 0)


@pytest.mark.parametrize("world", [2, 3])
def test_only_rank_zero_receives_the_gathered_weights(world: int, ranks: Ranks) -> None:
    assert [r["job"] is None for r in ranks[world]] == [False] + [True] * (world - 1)


@pytest.mark.parametrize("world", [2, 3])
def test_target_reached_by_one_rank_only_stays_feasible_on_every_rank(
    world: int, ranks: Ranks, single: Single
) -> None:
    assert single.infeasible == ["target_1"]
    assert all(r["infeasible"] == single.infeasible for r in ranks[world])


@pytest.mark.parametrize("world", [2, 3])
def test_each_epoch_exchanges_about_one_target_vector(world: int, ranks: Ranks) -> None:
    per_epoch = [r["bytes_per_epoch"] for r in ranks[world]]
    vector = N_TARGETS * 8
    # one all-reduce of the estimates per epoch, plus the logging step's few scalars
    assert all(vector <= b <= vector + 2 * vector / 20 + 64 for b in per_epoch)


@pytest.mark.parametrize("world", [2, 3])
def test_per_rank_checkpoints_resume_to_the_uninterrupted_fit(
    world: int, ranks: Ranks, single: Single
) -> None:
    resumed = consolidate_state_dicts([r["resumed"] for r in ranks[world]])
    for key in ("log_weight", "log_alpha"):
        torch.testing.assert_close(resumed[key], single.straight[key], **TOL)


def test_two_rank_checkpoint_resumes_on_three_ranks(ranks: Ranks, single: Single) -> None:
    resumed = consolidate_state_dicts([r["resharded"] for r in ranks[3]])
    for key in ("log_weight", "log_alpha"):
        torch.testing.assert_close(resumed[key], single.straight[key], **TOL)


def test_consolidated_checkpoint_resumes_in_one_process(ranks: Ranks, single: Single) -> None:
    model = SparseCalibrationWeights(N, **MODEL)
    model.load_state_dict(consolidate_state_dicts([r["state_e1"] for r in ranks[3]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        model.fit(M_FULL, Y, epochs=E2, **FIT)
    torch.testing.assert_close(model.log_alpha.detach(), single.straight["log_alpha"], **TOL)


def test_consolidated_adam_state_equals_the_single_process_one(ranks: Ranks, single: Single) -> None:
    merged = consolidate_state_dicts([r["resumed"] for r in ranks[2]])["_extra_state"]["optimizer"][
        "state"
    ]
    # A single-process state_dict holds tensors only: its fit state is a packed uint8 tensor.
    straight = unpack_fit_state(single.straight["_extra_state"])["optimizer"]["state"]
    for pid in (0, 1):
        torch.testing.assert_close(merged[pid]["exp_avg_sq"], straight[pid]["exp_avg_sq"], **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_all_reduced_estimate_backpropagates_the_single_process_gradient(
    world: int, ranks: Ranks, single: Single
) -> None:
    for i in (0, 1):
        grad = torch.cat([r["grad"][i] for r in ranks[world]])
        torch.testing.assert_close(grad, single.grad[i], **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_global_top_k_breaks_ties_toward_the_lower_column(world: int, ranks: Ranks) -> None:
    scores = (torch.arange(N) % 7 - 3).to(torch.float32) * 0.5
    expected = torch.zeros(N, dtype=torch.bool)
    expected[torch.argsort(scores, descending=True, stable=True)[:100]] = True
    assert torch.equal(_concat(ranks[world], "top_k"), expected)


@pytest.mark.parametrize("world", [2, 3])
def test_command_line_worker_reports_the_world_size_and_epochs(world: int, ranks: Ranks) -> None:
    job = ranks[world][0]["job"]
    assert (job.world_size, job.epochs) == (world, COUNT_FIT["epochs"])


@pytest.mark.parametrize("world", [2, 3])
def test_shards_from_local_counts_follow_rank_order(world: int, ranks: Ranks) -> None:
    sizes = {2: [200, 101], 3: [50, 200, 51]}[world]
    assert [r["uneven_start"] for r in ranks[world]] == [sum(sizes[:r]) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_gather_from_uneven_shards_restores_the_column_order(world: int, ranks: Ranks) -> None:
    plain = SparseCalibrationWeights(N, **UNEVEN).get_weights(deterministic=True).detach()
    assert torch.equal(ranks[world][0]["gathered"], plain)


@pytest.mark.parametrize("world", [2, 3])
def test_command_line_worker_returns_the_single_process_estimates(
    world: int, ranks: Ranks, single: Single
) -> None:
    np.testing.assert_allclose(ranks[world][0]["job"].estimates, single.estimates.numpy(), **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_logged_history_matches_the_single_process_fit(
    world: int, ranks: Ranks, single: Single
) -> None:
    keys = (
        "epoch",
        "phase",
        "n_active",
        "loss",
        "data_loss",
        "l0_loss",
        "penalty_loss",
        "mean_rel_error",
    )
    sharded = [[h[k] for k in keys] for h in ranks[world][0]["job"].history.to_dict("records")]
    expected = [[h[k] for k in keys] for h in single.history]
    assert [row[:3] for row in sharded] == [row[:3] for row in expected]
    np.testing.assert_allclose([row[3:] for row in sharded], [row[3:] for row in expected], **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_callback_events_carry_the_rank_layout(world: int, ranks: Ranks) -> None:
    layouts = [r["event_layout"] for r in ranks[world]]
    assert layouts == [{(r, world, s["shard"].start)} for r, s in enumerate(ranks[world])]


@pytest.mark.parametrize("world", [2, 3])
def test_per_household_arrays_of_all_columns_are_cut_to_each_rank(world: int, ranks: Ranks) -> None:
    expected = torch.as_tensor(np.linspace(1.0, 2.0, N), dtype=torch.float32)
    torch.testing.assert_close(_concat(ranks[world], "init_weights"), expected, rtol=0, atol=0)


def test_single_process_checkpoint_into_a_two_rank_shard_asks_for_shard_state_dict(
    ranks: Ranks,
) -> None:
    assert "shard_state_dict(state, model.shard)" in ranks[2][1]["plain_checkpoint_error"]


def test_shard_checkpoint_needs_a_rank_field_with_several_ranks(ranks: Ranks) -> None:
    assert "{rank}" in ranks[2][1]["checkpoint_error"]


def test_loading_another_ranks_checkpoint_names_both_column_ranges(ranks: Ranks) -> None:
    msg = ranks[2][0]["wrong_rank_error"]
    assert "[151, 301)" in msg and "[0, 151)" in msg


# ------------------------------------- the plain API inside a process group
@pytest.mark.parametrize("world", [2, 3])
def test_plain_model_inside_a_group_is_a_shard_laid_out_by_local_counts(
    world: int, ranks: Ranks
) -> None:
    # one class: the reducer chosen in the constructor makes the plain model a shard
    assert {r["auto_type"] for r in ranks[world]} == {
        ("SparseCalibrationWeights", "ProcessGroupReducer")
    }
    assert [r["auto_start"] for r in ranks[world]] == AUTO_CUTS[world][:-1]


@pytest.mark.parametrize("world", [2, 3])
def test_plain_model_fit_on_local_columns_gives_the_single_process_weights(
    world: int, ranks: Ranks, single: Single
) -> None:
    sharded = _concat(ranks[world], "auto_weights")
    expected = single.count_weights
    torch.testing.assert_close(sharded, expected, **REL)
    assert int((sharded > 0).sum()) == int((expected > 0).sum()) == COUNT
    assert torch.equal(ranks[world][0]["auto_gathered"], sharded)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", ["penalties", "polished"])
def test_weight_penalties_and_polish_give_the_single_process_weights(
    world: int, name: str, ranks: Ranks, single: Single
) -> None:
    sharded = _concat(ranks[world], name)
    torch.testing.assert_close(sharded, getattr(single, name), **REL)
    assert torch.equal(sharded > 0, getattr(single, name) > 0)
    # the penalty term is the same on every rank and equals the single-process one
    for r in ranks[world]:
        np.testing.assert_allclose(r[name + "_history"], getattr(single, name + "_history"), **REL)
    assert max(getattr(single, name + "_history")) > 0  # the penalties were active


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_polish_result_holds_each_ranks_columns(
    world: int, ranks: Ranks, single: Single
) -> None:
    results = [r["polish_result"] for r in ranks[world]]
    expected = single.polish_result
    np.testing.assert_allclose(
        np.concatenate([p.weights for p in results]), expected.weights, **REL
    )
    for res in results:
        np.testing.assert_allclose(res.estimates, expected.estimates, **REL)
        assert (res.method, res.converged) == (expected.method, expected.converged)


@pytest.mark.parametrize("world", [2, 3])
def test_fit_from_a_file_reads_each_ranks_columns(world: int, ranks: Ranks, single: Single) -> None:
    torch.testing.assert_close(
        _concat(ranks[world], "from_file"), single.straight["log_weight"], **REL
    )


@pytest.mark.parametrize("world", [2, 3])
def test_calibrate_inside_a_group_equals_single_process_calibrate(
    world: int, ranks: Ranks, single: Single
) -> None:
    expected = single.calibrate
    results = [r["calibrate"] for r in ranks[world]]
    weights = pd.concat([r.weights for r in results])
    np.testing.assert_allclose(weights.to_numpy(), expected.weights.to_numpy(), **REL)
    pd.testing.assert_index_equal(weights.index, expected.weights.index)
    for res in results:
        assert res.n_active == expected.n_active > 0
        np.testing.assert_allclose(
            res.report["estimate"].to_numpy(), expected.report["estimate"].to_numpy(), **REL
        )
        assert res.report["infeasible"].tolist() == expected.report["infeasible"].tolist()
        for key in ("n", "n_nonzero", "design_effect", "kish_ess", "max_weight"):
            assert res.diagnostics[key] == pytest.approx(expected.diagnostics[key], rel=1e-6)
        assert res.summary() == pytest.approx(expected.summary(), rel=1e-6)
        np.testing.assert_allclose(
            res.holdout["estimate"].to_numpy(), expected.holdout["estimate"].to_numpy(), **REL
        )
    pd.testing.assert_series_equal(ranks[world][0]["calibrate_gathered"], weights)
    assert all(r["calibrate_gathered"] is None for r in ranks[world][1:])


@pytest.mark.parametrize("world", [2, 3])
def test_calibrate_from_a_file_reads_each_ranks_even_share(
    world: int, ranks: Ranks, single: Single
) -> None:
    results = [r["calibrate_file"] for r in ranks[world]]
    assert [res.shard.start for res in results] == [
        ColumnShard.even(N, rank=r, world_size=world).start for r in range(world)
    ]
    weights = pd.concat([res.weights for res in results])
    np.testing.assert_allclose(
        weights.to_numpy(), single.calibrate_file.weights.to_numpy(), **REL
    )
    pd.testing.assert_index_equal(weights.index, pd.RangeIndex(N))


@pytest.mark.parametrize("world", [2, 3])
def test_calibrate_cuts_design_weights_of_all_households(
    world: int, ranks: Ranks, single: Single
) -> None:
    weights = pd.concat([r["calibrate_design"] for r in ranks[world]])
    np.testing.assert_allclose(weights.to_numpy(), single.calibrate_design.to_numpy(), **REL)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_false_inside_a_group_fits_each_rank_alone(
    world: int, ranks: Ranks, single: Single
) -> None:
    for r in ranks[world]:
        assert r["alone_type"] == ("SparseCalibrationWeights", "LocalReducer")
        assert torch.equal(r["alone"], single.e1)
        pd.testing.assert_series_equal(r["alone_calibrate"], single.calibrate_plain)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_with_different_targets_all_raise_naming_y(world: int, ranks: Ranks) -> None:
    for r in ranks[world]:
        assert "y (the targets) differs between the ranks" in r["targets_error"]
        assert "same full target vector" in r["targets_error"]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_with_different_target_counts_all_raise_naming_the_option(world: int, ranks: Ranks) -> None:
    for r in ranks[world]:
        msg = r["count_error"]
        assert "fit option target_count differs between the ranks" in msg
        assert f"rank 0: {COUNT}" in msg and f"rank {world - 1}: {COUNT + world - 1}" in msg


@pytest.mark.parametrize("world", [2, 3])
def test_a_bad_argument_on_one_rank_stops_every_rank(world: int, ranks: Ranks) -> None:
    *others, last = ranks[world]
    assert last["one_rank_error"].startswith("lr must be > 0")
    for r in others:
        assert f"rank {world - 1} rejected its fit arguments" in r["one_rank_error"]
        assert "lr" in r["one_rank_error"]


@pytest.mark.parametrize("world", [2, 3])
def test_a_file_one_rank_cannot_read_stops_every_rank(world: int, ranks: Ranks) -> None:
    *others, last = ranks[world]
    assert "missing" in last["file_error"]
    for r in others:
        assert f"rank {world - 1} failed reading its columns of M" in r["file_error"]


@pytest.mark.parametrize("world", [2, 3])
def test_bad_design_weights_on_one_rank_stop_every_calibrate(world: int, ranks: Ranks) -> None:
    *others, last = ranks[world]
    assert last["design_error"].startswith("design_weights must be positive")
    for r in others:
        assert f"rank {world - 1} failed checking its design_weights" in r["design_error"]


@pytest.mark.parametrize("world", [2, 3])
def test_a_target_count_above_one_ranks_columns_counts_over_all_ranks(world: int, ranks: Ranks) -> None:
    local_counts = [r["big_count_local"] for r in ranks[world]]
    assert min(AUTO_CUTS[world][i + 1] - AUTO_CUTS[world][i] for i in range(world)) < 150
    assert sum(local_counts) == 150


def test_calibrate_inside_a_group_refuses_the_select_method(ranks: Ranks) -> None:
    for r in ranks[2]:
        assert "method='select'" in r["select_error"] and "method='gates'" in r["select_error"]


def test_file_of_another_total_names_the_model_to_build(ranks: Ranks) -> None:
    msg = ranks[2][0]["file_total_error"]
    assert f"has {N} households but the model's columns total {2 * N}" in msg
    assert f"ShardedCalibrationWeights({N})" in msg


def test_torchrun_launch_gives_the_single_process_weights(files: Files, single: Single) -> None:
    result = run_distributed(
        files.npz, Y, nproc=2, model_options=MODEL, fit_options=COUNT_FIT, timeout=300
    )
    assert result.world_size == 2
    np.testing.assert_allclose(result.weights, single.count_weights.numpy(), **TOL)


# ------------------------------------------------------------- one process
def test_world_size_one_fit_is_bit_identical_to_the_plain_model() -> None:
    plain = _fit_single(**COUNT_FIT)
    sharded = ShardedCalibrationWeights(N, **MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        sharded.fit(M_FULL, Y, **COUNT_FIT)
    assert torch.equal(sharded.log_alpha, plain.log_alpha)
    assert torch.equal(sharded.log_weight, plain.log_weight)


def test_distributed_true_without_a_process_group_says_how_to_start_one() -> None:
    with pytest.raises(ValueError, match="distributed=True needs an initialised torch.distributed"):
        SparseCalibrationWeights(N, distributed=True)
    with pytest.raises(ValueError, match="init_distributed"):
        calibrate(M_FULL, Y, epochs=1, distributed=True)


def test_distributed_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match="distributed must be True, False or None"):
        SparseCalibrationWeights(N, distributed="yes")


def test_sharded_model_refuses_distributed_false() -> None:
    with pytest.raises(ValueError, match="distributed=False"):
        ShardedCalibrationWeights(N, distributed=False)


def test_outside_a_group_the_plain_model_stays_plain_and_reads_a_file(files: Files) -> None:
    model = SparseCalibrationWeights(N, **MODEL)
    assert type(model) is SparseCalibrationWeights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        model.fit(files.npz, Y, epochs=E1, **FIT)
    twin = _fit_single(epochs=E1, **FIT)
    assert torch.equal(model.log_weight, twin.log_weight)


def test_calibrate_reads_a_file_in_one_process(files: Files) -> None:
    from_file = _calibrate_single(files.npz, epochs=20, seed=2)
    direct = _calibrate_single(M_FULL, epochs=20, seed=2)
    pd.testing.assert_series_equal(from_file.weights, direct.weights)


def test_copies_of_a_plain_model_stay_plain() -> None:
    import copy

    model = SparseCalibrationWeights(5, seed=0)
    clone = copy.deepcopy(model)
    assert type(clone) is SparseCalibrationWeights
    assert torch.equal(clone.log_alpha, model.log_alpha)


def test_world_size_one_checkpoint_loads_into_the_plain_model() -> None:
    sharded = ShardedCalibrationWeights(N, **MODEL)
    plain = SparseCalibrationWeights(N, seed=99, dtype=torch.float64)
    plain.load_state_dict(sharded.state_dict())
    assert torch.equal(plain.log_alpha, sharded.log_alpha)
    assert plain._generator.get_state().equal(sharded._generator.get_state())


def test_plain_checkpoint_loads_into_a_one_rank_shard() -> None:
    plain = SparseCalibrationWeights(N, **MODEL)
    sharded = ShardedCalibrationWeights(N, **dict(MODEL, seed=5))
    sharded.load_state_dict(plain.state_dict())
    assert torch.equal(sharded.log_weight, plain.log_weight)


def test_cutting_a_partial_checkpoint_again_is_refused() -> None:
    part = shard_state_dict(
        SparseCalibrationWeights(N, **MODEL).state_dict(), ColumnShard(N, 0, 100, 0, 3)
    )
    with pytest.raises(ValueError, match="consolidate_state_dicts first"):
        shard_state_dict(part, ColumnShard(N, 0, 100, 0, 3))


def test_command_line_worker_runs_alone_outside_a_process_group(files: Files, single: Single) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfeasibleTargetWarning)
        result = run_job(files.job)
    assert result.world_size == 1
    np.testing.assert_allclose(result.weights, single.count_weights.numpy(), **TOL)


def test_init_distributed_outside_torchrun_describes_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device) == (
        0,
        1,
        "none",
        torch.device("cpu"),
    )


def test_per_household_argument_of_the_wrong_length_names_both_lengths() -> None:
    with pytest.raises(
        ValueError, match=f"init_weights must hold one value per household: {N} values"
    ):
        ShardedCalibrationWeights(N, init_weights=np.ones(N - 1), seed=0)


def test_even_shards_tile_the_columns_in_rank_order() -> None:
    shards = [ColumnShard.even(10, rank=r, world_size=4) for r in range(4)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_more_ranks_than_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        ColumnShard.even(3, rank=0, world_size=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sortable_keys_order_floats_like_a_sort(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(500, generator=gen, dtype=dtype) * 1e3,
            torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -1e-40], dtype=dtype),
        ]
    )
    keys = sortable_keys(x)
    order = torch.argsort(x, stable=True)
    assert bool((keys[order][1:] >= keys[order][:-1]).all())
    assert bool(((keys[order][1:] == keys[order][:-1]) == (x[order][1:] == x[order][:-1])).all())


def test_all_reduce_sum_outside_a_group_returns_its_input() -> None:
    x = torch.ones(3, requires_grad=True)
    assert all_reduce_sum(x) is x


def test_reducer_built_for_another_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="shard is for rank 2 of 4"):
        ProcessGroupReducer(ColumnShard.even(8, rank=2, world_size=4))


def test_consolidation_with_a_missing_rank_is_refused() -> None:
    part = shard_state_dict(
        SparseCalibrationWeights(N, **MODEL).state_dict(), ColumnShard(N, 0, 100, 0, 2)
    )
    with pytest.raises(ValueError, match="a rank's file is missing"):
        consolidate_state_dicts([part])


# ---------------------------------------------------------------- loaders
@pytest.mark.parametrize("fmt", ["csc", "csr", "coo"])
@pytest.mark.parametrize("compressed", [True, False])
def test_npz_loader_reads_exactly_the_rank_columns(
    tmp_path, fmt: str, compressed: bool, monkeypatch
) -> None:
    import l0_calibrate.distributed_io as dio

    monkeypatch.setattr(dio, "CHUNK", 97)  # several chunks when streaming
    path = str(tmp_path / "m.npz")
    sp.save_npz(path, M_FULL.asformat(fmt), compressed=compressed)
    part = load_npz_columns(path, 120, 250)
    np.testing.assert_array_equal(part.toarray(), M_FULL.toarray()[:, 120:250])


def test_npz_loader_reads_coo_coordinates(tmp_path) -> None:
    coo = M_FULL.tocoo()
    path = str(tmp_path / "m.npz")
    np.savez(
        path, coords=np.vstack([coo.row, coo.col]), data=coo.data, shape=coo.shape, format=b"coo"
    )
    np.testing.assert_array_equal(
        load_npz_columns(path, 5, 77).toarray(), M_FULL.toarray()[:, 5:77]
    )


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("compressed", [True, False])
def test_npz_loader_cuts_a_dense_array(tmp_path, order: str, compressed: bool) -> None:
    dense = np.asarray(M_FULL.toarray(), order=order)
    path = str(tmp_path / "m.npz")
    (np.savez_compressed if compressed else np.savez)(path, M=dense)
    np.testing.assert_array_equal(load_npz_columns(path, 30, 31), dense[:, 30:31])


def test_parquet_loader_reads_the_rank_rows_with_their_labels(tmp_path) -> None:
    frame = pd.DataFrame(M_FULL.toarray().T, columns=[f"t{i}" for i in range(N_TARGETS)])
    path = str(tmp_path / "m.parquet")
    frame.to_parquet(path, row_group_size=64)
    shard = ColumnShard.even(N, rank=1, world_size=3)
    part = load_columns(path, shard)
    pd.testing.assert_frame_equal(part, frame.iloc[shard.columns])


def test_csv_loader_reads_the_rank_rows(tmp_path) -> None:
    frame = pd.DataFrame(M_FULL.toarray().T, columns=[f"t{i}" for i in range(N_TARGETS)])
    path = str(tmp_path / "m.csv")
    frame.to_csv(path)  # first column: the household labels, as the command line writes it
    shard = ColumnShard.even(N, rank=2, world_size=3)
    np.testing.assert_allclose(
        load_columns(path, shard).to_numpy(), frame.to_numpy()[shard.columns]
    )


def test_csv_shape_leaves_out_the_label_column(tmp_path) -> None:
    frame = pd.DataFrame(M_FULL.toarray().T, columns=[f"t{i}" for i in range(N_TARGETS)])
    path = str(tmp_path / "m.csv")
    frame.to_csv(path)
    assert matrix_shape(path) == (N_TARGETS, N)


def test_parquet_household_labels_come_from_its_stored_index(tmp_path) -> None:
    labels = pd.Index([f"h{i}" for i in range(N)], name="household")
    frame = pd.DataFrame(
        M_FULL.toarray().T, index=labels, columns=[f"t{i}" for i in range(N_TARGETS)]
    )
    path = str(tmp_path / "m.parquet")
    frame.to_parquet(path)
    pd.testing.assert_index_equal(household_labels(path), labels)


def test_loader_refuses_a_shard_laid_out_for_another_size(tmp_path) -> None:
    path = str(tmp_path / "m.npy")
    np.save(path, M_FULL.toarray())
    with pytest.raises(ValueError, match=f"has {N} households but the shard is laid out for 10"):
        load_columns(path, ColumnShard.even(10, rank=0, world_size=2))


def _one_gpu_two_processes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Rank 1 of 2 on a host with one GPU; init_process_group records its backend and stops."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    seen: list[str] = []

    def record(backend: str, **kwargs: object) -> None:
        seen.append(backend)
        raise RuntimeError("stop before joining")

    monkeypatch.setattr(dist, "init_process_group", record)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(f"set_device {d}"))
    return seen


def test_two_processes_on_one_gpu_default_to_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _one_gpu_two_processes(monkeypatch)
    with pytest.raises(RuntimeError, match="stop before joining"):
        init_distributed()
    assert seen == ["gloo"]


def test_nccl_without_a_gpu_for_this_rank_says_how_many_processes_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _one_gpu_two_processes(monkeypatch)
    with pytest.raises(ValueError, match=r"backend='nccl' needs one GPU per process.*at most 1 process"):
        init_distributed("nccl")
    assert seen == []
