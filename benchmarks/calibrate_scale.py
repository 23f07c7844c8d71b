"""Scale of the default ``calibrate()`` pipeline against the gate engine, measured in one run.

For each problem size, ``calibrate(M, targets, target_count=n)`` runs twice:
with its default ``method="select"`` and with ``method="gates"`` (the fast
engine followed by its polish). Each run is a child process, so that its
peak resident memory (``VmHWM``; ``ru_maxrss`` would keep the parent's peak across exec) is its own; both children read the
same matrix from a temporary ``.npz`` file written by the parent.

Problems (a generator of realistic survey-calibration matrices, targets x
households):

* nested geography: one nation, ``S`` states, ``D`` districts (each in one
  state, log-normal sizes); every household lives in one district;
* ``V = 90`` variables: 30 counts (persons by age band, etc., integers
  1..4) and 60 amounts (log-normal, sigma 1: skewed); a household has each
  variable with probability 1/3, so about 30 variables;
* one target row per variable for the nation and each state, one per count
  variable for each district, so a household column has about 70 non-zeros
  and a 5% sample keeps about three households per district row;
* targets ``M @ w_true`` with ``w_true`` positive (design-like weights,
  log-normal sigma 0.3 around 1): an exact solution exists.

``--methods select,engine`` replaces the full gates run by a short one
(``--engine-epochs``, default 100, no polish): the gate engine's peak RSS, for the
memory ratio, without the gates method's minutes of training and polish.

Sizes: ``2k`` (2,000 x 100,000, 5,000 kept), ``5k`` (5,000 x 300,000,
15,000 kept) and, with ``--large``, ``15k`` (15,000 x 1,000,000, 50,000
kept). Printed per run: wall time of ``calibrate``, peak RSS, per-stage
times (``result.diagnostics["stage_times"]``), mean and max relative error,
kept count, design effect (with ``--device cuda``: where each select stage
ran, ``diagnostics["stage_devices"]``); per size the ratios default / gates; and the
growth exponent of each method's time in nnz (least squares on log-log over
the sizes run).

Examples::

    python benchmarks/calibrate_scale.py                 # 2k and 5k (about 3 minutes on 2 cores)
    python benchmarks/calibrate_scale.py --sizes 2k      # quick
    python benchmarks/calibrate_scale.py --large         # adds 15k x 1M (about 8 minutes more, most of it the gates method)
    python benchmarks/calibrate_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from calibrate_bench import peak_rss_gib  # this process's own VmHWM (same folder)

SIZES = {
    "tiny": (300, 400, 3),
    "2k": (2_000, 100_000, 5_000),
    "5k": (5_000, 300_000, 15_000),
    "15k": (15_000, 1_000_000, 50_000),
}
N_COUNTS, N_AMOUNTS = 30, 60


def make_problem(n_targets: int, n_households: int, seed: int = 0) -> tuple:
    """A feasible calibration problem with nested geography and skewed values.

    Returns ``(M, targets, w_true)`` with ``M`` a scipy CSR matrix of shape
    about ``(n_targets, n_households)``: ``90 (1 + S)`` nation and state rows
    (every variable) and ``30 D`` district rows (the count variables), with
    ``S`` about ``sqrt(n_targets) / 7`` states. A household has about 30
    variables, so its column has about 70 non-zeros.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_vars = N_COUNTS + N_AMOUNTS
    n_states = max(1, int(round(np.sqrt(n_targets) / 7)))
    n_districts = max(n_states, (n_targets - n_vars * (1 + n_states)) // N_COUNTS)
    district_state = np.concatenate(
        [np.arange(n_states), rng.integers(0, n_states, n_districts - n_states)]
    )
    size = rng.lognormal(0.0, 0.4, n_districts)  # skewed district sizes
    district = rng.choice(n_districts, n_households, p=size / size.sum())
    state = district_state[district]
    has = rng.random((n_households, n_vars)) < 1.0 / 3.0
    has[:, 0] = True  # every household counts as a household
    values = np.empty((n_households, n_vars))
    values[:, :N_COUNTS] = rng.integers(1, 5, (n_households, N_COUNTS))
    values[:, N_COUNTS:] = rng.lognormal(9.0, 1.0, (n_households, N_AMOUNTS))
    values[:, 0] = 1.0
    hh, var = np.nonzero(has)
    vals = values[hh, var]
    n_top = n_vars * (1 + n_states)
    loc = var < N_COUNTS
    rows = np.concatenate(
        [
            var * (1 + n_states),
            var * (1 + n_states) + 1 + state[hh],
            n_top + var[loc] * n_districts + district[hh[loc]],
        ]
    )
    cols = np.concatenate([hh, hh, hh[loc]])
    data = np.concatenate([vals, vals, vals[loc]])
    M = sp.csr_matrix((data, (rows, cols)), shape=(n_top + N_COUNTS * n_districts, n_households))
    M.sum_duplicates()
    keep = np.flatnonzero(M.getnnz(axis=1) > 0)
    M = M[keep].tocsr()
    w_true = rng.lognormal(0.0, 0.3, n_households)
    return M, M @ w_true, w_true


def _child(args: argparse.Namespace) -> None:
    import logging

    import scipy.sparse as sp
    from l0_calibrate import calibrate

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(relativeCreated)8.0f ms %(name)s: %(message)s",
    )
    M = sp.load_npz(args.matrix).tocsr()
    t = np.load(args.targets)
    t0 = time.perf_counter()
    if args.method == "engine":  # the gate engine's memory: a short gates run (its wall time is not comparable)
        res = calibrate(M, t, target_count=args.count, method="gates", epochs=args.engine_epochs, polish=False,
                        device=args.device, seed=0)
    else:
        res = calibrate(M, t, target_count=args.count, method=args.method, device=args.device, seed=0)
    wall = time.perf_counter() - t0
    err = res.report["abs_rel_error"].to_numpy()
    out = {
        "wall_s": wall,
        "peak_rss_gib": peak_rss_gib(),
        "mean_rel_error": float(np.mean(err)),
        "max_rel_error": float(np.max(err)),
        "kept": res.n_active,
        "design_effect": float(res.diagnostics.get("design_effect", float("nan"))),
        "stages": {k: float(v) for k, v in res.diagnostics.get("stage_times", {}).items()},
        "devices": dict(res.diagnostics.get("stage_devices", {})),
    }
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(
    method: str, matrix: str, targets: str, count: int, args: argparse.Namespace
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--method",
        method,
        "--matrix",
        matrix,
        "--targets",
        targets,
        "--count",
        str(count),
        "--device",
        args.device,
        "--engine-epochs",
        str(args.engine_epochs),
    ] + (["--verbose"] if args.verbose else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if args.verbose:
        sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise RuntimeError(f"{method} child failed with status {proc.returncode}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="2k,5k", help="comma-separated: tiny, 2k, 5k, 15k")
    p.add_argument("--large", action="store_true", help="add 15k x 1M (50,000 kept)")
    p.add_argument("--methods", default="select,gates",
                   help="select (the default calibrate), gates, engine (gates with --engine-epochs: its peak RSS)")
    p.add_argument("--engine-epochs", type=int, default=100, help="epochs of the 'engine' run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="children log stage records")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--matrix", help=argparse.SUPPRESS)
    p.add_argument("--targets", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    import scipy.sparse as sp

    sizes = [s for s in args.sizes.split(",") if s] + (["15k"] if args.large else [])
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sizes:
            n_t, n_h, count = SIZES[name]
            M, t, _ = make_problem(n_t, n_h)
            mpath, tpath = os.path.join(tmp, f"{name}.npz"), os.path.join(tmp, f"{name}.npy")
            sp.save_npz(mpath, M, compressed=False)
            np.save(tpath, t)
            shape, nnz = M.shape, M.nnz
            del M
            res = {}
            for method in methods:
                r = _run_child(method, mpath, tpath, count, args)
                res[method] = r
                dev = r.get("devices", {})
                stages = ", ".join(
                    f"{k} {v:.1f}" + (f" [{dev[k]}]" if args.device != "cpu" and k in dev else "")
                    for k, v in r["stages"].items()
                )
                print(
                    f"{name} {shape[0]:,} x {shape[1]:,} nnz {nnz / 1e6:.1f}M keep {count:,} "
                    f"{method}: {r['wall_s']:.1f} s, peak {r['peak_rss_gib']:.2f} GiB, "
                    f"mean err {r['mean_rel_error']:.2e}, max {r['max_rel_error']:.2e}, "
                    f"kept {r['kept']:,}, deff {r['design_effect']:.3f} | {stages}",
                    flush=True,
                )
            rows.append((name, shape, nnz, count, res))
    print()
    print(
        "| problem | nnz | kept | method | wall s | peak RSS GiB | mean rel err | max rel err | "
        "design effect | stage times s | wall default/gates | RSS default/(engine, else gates) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for _name, shape, nnz, count, res in rows:
        for method, r in res.items():
            ratio = rss = ""
            if method == "select" and "gates" in res:
                ratio = f"{r['wall_s'] / res['gates']['wall_s']:.2f}x"
            ref = res.get("engine") or res.get("gates")
            if method == "select" and ref:
                rss = f"{r['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x"
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
            print(
                f"| {shape[0]:,} x {shape[1]:,} | {nnz / 1e6:.1f}M | {r['kept']:,} / {count:,} | "
                f"{method} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['mean_rel_error']:.1e} | "
                f"{r['max_rel_error']:.1e} | {r['design_effect']:.3f} | {stages} | {ratio} | {rss} |"
            )
    for method in methods:
        pts = [
            (nnz, res[method]["wall_s"])
            for _, _, nnz, _, res in rows
            if method in res and nnz > 1e6
        ]
        if len(pts) >= 2 and method != "engine":
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            slope = float(np.polyfit(x, y, 1)[0])
            print(f"growth exponent of {method}'s time in nnz ({len(pts)} sizes): {slope:.2f}")


if __name__ == "__main__":
    # scipy's BLAS on one thread (on 2 shared cores its threads only spin);
    # torch keeps its default threads (one per core) in both methods.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
