"""Speed and memory of sparse calibration: l0-calibrate against l0-python 0.6.2.

Problems shaped like PolicyEngine's: column-sparse matrices (targets x
households) with a fixed number of non-zeros per household column, values
log-normal times a per-target scale of 10^U(0, 6) so the targets span six
orders of magnitude, and feasible targets ``M @ w_true``.

    small   500 x 100,000 at 5% density (2.5M non-zeros)
    medium  15,000 x 1,000,000 with 96M non-zeros
    large   30,000 x 5,000,000 with 500M non-zeros (ours only)

Each measurement runs in its own child process so that its peak resident
memory (``ru_maxrss``) is its own; the reference runs in
``benchmarks/.venv-ref`` (``python -m venv benchmarks/.venv-ref`` then
``pip install torch==2.13.0 l0-python==0.6.2``), since both packages import
as ``l0``. Both children read the same matrix from temporary ``.npy`` files
(the large problem is generated inside our child, in chunks). Same settings
for both: relative loss, lr 0.05, lambda_l0 1e-3, default gates.

Printed per problem: seconds per epoch (ours, reference, ratio), peak RSS
(ratio), the copy-bandwidth floor of one epoch (the bytes of one copy of the
matrix -- 4 B value + 4 B index per non-zero -- read twice, divided by a
measured memory copy rate) and our ratio to it, and the time to reach 1%
mean relative error (``|estimate - target| / (|target| + 1)``, the published
progress metric) where asked for. Epoch counts are small for the big
problems; 1,000-epoch times are extrapolated and labelled so.

Examples::

    python benchmarks/calibrate_bench.py --sizes small                 # quick (about 2 minutes)
    python benchmarks/calibrate_bench.py --sizes small,medium --ref-epochs 3
    python benchmarks/calibrate_bench.py --sizes large --epochs 5 --no-ref
    python benchmarks/calibrate_bench.py --device cuda
    python benchmarks/calibrate_bench.py --before ../before   # calibrate() before/after a change

``--before SRC`` compares this tree with another checkout of the repository
(e.g. ``git worktree add ../before <commit>``) in one run, on the 5,000 x
300,000 problem of ``calibrate_scale.py`` (21.6M non-zeros, 15,000 kept):
each tree's code is imported in its own child processes (``SRC``'s
``packages/*/src`` and ``src`` first on ``PYTHONPATH``), which run the default
``calibrate(M, targets, target_count=15000)`` and the engine's epochs
(``SparseCalibrationWeights.fit``), and ``calibrate(..., method="gates")``
with ``--compare-runs select,gates,engine`` (minutes); printed: wall time, peak RSS and seconds per epoch, before, after and their
ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REF_PYTHON = Path(os.environ.get("L0_REF_PYTHON", HERE / ".venv-ref" / "bin" / "python"))

SIZES = {
    "small": (500, 100_000, 25),
    "medium": (15_000, 1_000_000, 96),
    "large": (30_000, 5_000_000, 100),
}
SETTINGS = dict(lr=0.05, lambda_l0=1e-3, loss_type="relative")


# --------------------------------------------------------------- problems
def generate_numpy(m: int, n: int, k: int, seed: int = 0, chunk: int = 200_000):
    """CSC arrays (indptr, indices int32, data float32) and targets, in chunks of columns."""
    rng = np.random.default_rng(seed)
    scale = (10.0 ** rng.uniform(0, 6, m)).astype(np.float32)
    indices = np.empty(n * k, dtype=np.int32)
    data = np.empty(n * k, dtype=np.float32)
    y = np.zeros(m, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        c = stop - start
        # one row in each of k equal strata: distinct and sorted within the column
        rows = ((np.arange(k)[None, :] + rng.random((c, k))) * (m / k)).astype(np.int64).clip(0, m - 1)
        vals = rng.lognormal(0.0, 1.0, (c, k)).astype(np.float32) * scale[rows]
        w_true = rng.lognormal(0.0, 0.5, c)
        indices[start * k : stop * k] = rows.ravel()
        data[start * k : stop * k] = vals.ravel()
        y += np.bincount(rows.ravel(), weights=(vals * w_true[:, None]).ravel(), minlength=m)
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    return indptr, indices, data, y


def generate_operator(m: int, n: int, k: int, seed: int = 0, chunk: int = 250_000):
    """The large problem built straight into a SparseOperator (no scipy copy), and its targets."""
    import torch
    from l0_core import SparseOperator

    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (torch.rand(m, generator=g, dtype=torch.float64) * 6)
    col = torch.empty(n * k, dtype=torch.int32)
    val = torch.empty(n * k, dtype=torch.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        c = stop - start
        rows = ((torch.arange(k)[None, :] + torch.rand(c, k, generator=g)) * (m / k)).long().clamp_(0, m - 1)
        vals = torch.exp(torch.randn(c, k, generator=g)) * scale[rows].float()
        col[start * k : stop * k] = rows.reshape(-1).int()
        val[start * k : stop * k] = vals.reshape(-1)
        del rows, vals
    crow = torch.arange(0, n * k + 1, k, dtype=torch.int32)
    csr_t = torch.sparse_csr_tensor(crow, col, val, size=(n, m), check_invariants=False)
    op = SparseOperator(csr_t)
    op.build_forward_copy()
    w_true = torch.exp(0.5 * torch.randn(n, generator=g))
    y = op.matvec(w_true).double().numpy()
    return op, y


def copy_rate(device: str = "cpu", nbytes: int = 1 << 30) -> float:
    """Measured memory copy rate in bytes per second (bytes of the source per second)."""
    import torch

    a = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(5):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


# ------------------------------------------------------------------ child
def peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM: its own, not inherited across exec like ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # KiB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"threads": torch.get_num_threads()}
    m, n, k = SIZES[args.size]
    if args.size == "large":
        t = time.perf_counter()
        op, y = generate_operator(m, n, k)
        out["setup_s"] = time.perf_counter() - t
        M = op
    else:
        import scipy.sparse as sp

        arrays = [np.load(os.path.join(args.data, f"{name}.npy")) for name in ("indptr", "indices", "data", "y")]
        M = sp.csc_matrix((arrays[2], arrays[1], arrays[0]), shape=(m, n))
        y = arrays[3]
        del arrays
    out["rss_data_gib"] = peak_rss_gib()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if args.which == "ref":
        from l0.calibration import SparseCalibrationWeights

        model = SparseCalibrationWeights(n, seed=0, device=device)
        t = time.perf_counter()
        model.fit(M, y, epochs=1, **SETTINGS)  # converts and caches the matrix
        sync()
        out["setup_s"] = time.perf_counter() - t
    else:
        from l0_calibrate import SparseCalibrationWeights
        from l0_core import SparseOperator

        t = time.perf_counter()
        if not isinstance(M, SparseOperator):
            M = SparseOperator.from_any(M, device=device)
        elif device != "cpu":
            M = M.to(device)
        model = SparseCalibrationWeights(n, seed=0, device=device)
        model.fit(M, y, epochs=1, num_threads=torch.get_num_threads(), **SETTINGS)
        sync()
        out["setup_s"] = out.get("setup_s", 0.0) + time.perf_counter() - t
        out["matrix_bytes_one_copy"] = M.nbytes // 2
    extra = {} if args.which == "ref" else {"num_threads": torch.get_num_threads()}
    if args.epochs > 0:
        t = time.perf_counter()
        model.fit(M, y, epochs=args.epochs, **extra, **SETTINGS)
        sync()
        out["epoch_s"] = (time.perf_counter() - t) / args.epochs
    if args.target_epochs > 0:
        out.update(time_to_target(args, model.__class__, M, y, n, device))
    out["peak_rss_gib"] = peak_rss_gib()
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    Path(args.json).write_text(json.dumps(out))


def time_to_target(args, cls, M, y, n, device) -> dict:
    """Seconds (and epochs) until the mean relative error first reaches 1%, checked every 10 epochs."""
    import torch

    model = cls(n, seed=1, device=device)
    if args.which == "ref":
        import builtins
        import re

        found: dict = {}
        start = time.perf_counter()
        real_print = builtins.print

        def spy(*a, **kw):
            text = " ".join(str(x) for x in a)
            match = re.search(r"Epoch\s+(\d+): mean_error=([\d.]+)%", text)
            if match and "s" not in found and float(match.group(2)) <= 1.0:
                found.update(s=time.perf_counter() - start, epochs=int(match.group(1)))

        builtins.print = spy
        try:
            model.fit(M, y, epochs=args.target_epochs, verbose=True, verbose_freq=10, **SETTINGS)
        finally:
            builtins.print = real_print
    else:
        from l0_calibrate import EarlyStopping

        stop = EarlyStopping(threshold=0.01)
        start = time.perf_counter()
        model.fit(M, y, epochs=args.target_epochs, verbose_freq=10, callbacks=[stop],
                  num_threads=torch.get_num_threads(), **SETTINGS)
        found = {}
        if stop.stopped_epoch is not None:
            found.update(s=time.perf_counter() - start, epochs=stop.stopped_epoch)
    return {"target_s": found.get("s"), "target_epochs": found.get("epochs")}


# --------------------------------------------------- calibrate() before / after
def _tree_env(src: str | None) -> dict:
    """The environment of a child that imports the packages of checkout ``src`` (this tree when None)."""
    env = dict(os.environ)
    if src:
        root = Path(src).resolve()
        paths = [str(root / "packages" / p / "src") for p in ("l0-core", "l0-nn", "l0-gates", "l0-calibrate")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(root / "src")])
    return env


def calibrate_child(args: argparse.Namespace) -> None:
    """One measurement of ``calibrate()`` (or of the engine's epochs) in the tree on PYTHONPATH."""
    import scipy.sparse as sp
    import torch

    M = sp.load_npz(os.path.join(args.data, "M.npz")).tocsr()
    y = np.load(os.path.join(args.data, "y.npy"))
    count = int(np.load(os.path.join(args.data, "count.npy")))
    import l0_calibrate

    out: dict = {"module": l0_calibrate.__file__}
    t = time.perf_counter()
    if args.calibrate in ("select", "gates"):
        res = l0_calibrate.calibrate(M, y, target_count=count, method=args.calibrate, seed=0)
        out["wall_s"] = time.perf_counter() - t
        err = res.report["abs_rel_error"].to_numpy()
        out.update(mean_rel_error=float(err.mean()), kept=int(res.n_active),
                   stages={k: round(float(v), 2) for k, v in res.diagnostics.get("stage_times", {}).items()})
    else:  # the engine's seconds per epoch on the caller's scipy matrix
        model = l0_calibrate.SparseCalibrationWeights(M.shape[1], seed=0)
        model.fit(M, y, epochs=1, num_threads=torch.get_num_threads(), **SETTINGS)
        t = time.perf_counter()
        model.fit(M, y, epochs=args.epochs, num_threads=torch.get_num_threads(), **SETTINGS)
        out["epoch_s"] = (time.perf_counter() - t) / args.epochs
    out["peak_rss_gib"] = peak_rss_gib()
    Path(args.json).write_text(json.dumps(out))


def compare_trees(args: argparse.Namespace) -> None:
    """Run the same calibrate() measurements in ``args.before`` and in this tree; print the table."""
    sys.path.insert(0, str(HERE))
    import scipy.sparse as sp
    from calibrate_scale import SIZES as SCALE_SIZES
    from calibrate_scale import make_problem

    m, n, count = SCALE_SIZES[args.compare_size]
    M, y, _ = make_problem(m, n)
    epochs = args.epochs or 30
    print(f"problem {M.shape[0]:,} x {M.shape[1]:,}, {M.nnz / 1e6:.1f}M non-zeros, {count:,} kept; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="l0cmp-") as data:
        sp.save_npz(os.path.join(data, "M.npz"), M)
        np.save(os.path.join(data, "y.npy"), y)
        np.save(os.path.join(data, "count.npy"), np.array(count))
        del M
        for what in args.compare_runs.split(","):
            pair: dict = {}
            # the engine's epochs are short: alternate the trees three times and keep each one's fastest
            order = (("before", args.before), ("after", None)) * (3 if what == "engine" else 1)
            for label, src in order:
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    out = f.name
                cmd = [sys.executable, str(Path(__file__).resolve()), "--calibrate", what, "--data", data,
                       "--epochs", str(epochs), "--json", out]
                proc = subprocess.run(cmd, env=_tree_env(src), capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise RuntimeError(f"{label} child for {what} failed")
                got = json.loads(Path(out).read_text())
                os.unlink(out)
                print(json.dumps({"what": what, "tree": label, **got}), flush=True)
                if label not in pair or got.get("epoch_s", 0) < pair[label].get("epoch_s", 0):
                    pair[label] = got
            rows.append((what, pair))
    print()
    print("| run | before | after | after / before | before peak RSS GiB | after peak RSS GiB | RSS after / before |")
    print("|---|---|---|---|---|---|---|")
    for what, pair in rows:
        b, a = pair["before"], pair["after"]
        key, unit = ("epoch_s", "s/epoch") if what == "engine" else ("wall_s", "s")
        label = "engine epochs (fit)" if what == "engine" else f"calibrate(method={what!r})"
        print(f"| {label} | {b[key]:.3f} {unit} | {a[key]:.3f} {unit} | {a[key] / b[key]:.3f} | "
              f"{b['peak_rss_gib']:.2f} | {a['peak_rss_gib']:.2f} | {a['peak_rss_gib'] / b['peak_rss_gib']:.3f} |")


# ----------------------------------------------------------------- parent
def run_child(
    which: str, size: str, data: str, args: argparse.Namespace, epochs: int, target_epochs: int, threads: int = 0
) -> dict:
    python = str(REF_PYTHON) if which == "ref" else sys.executable
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [python, str(Path(__file__).resolve()), "--child", which, "--size", size, "--data", data,
           "--epochs", str(epochs), "--target-epochs", str(target_epochs), "--json", out, "--device", args.device,
           "--threads", str(threads)]
    env = dict(os.environ)
    if which == "ref":
        env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise RuntimeError(f"{which} child for {size} failed")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    res["wall_s"] = time.perf_counter() - t
    return res


def fmt(x, spec=".3g", none="-"):
    return none if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="small,medium", help="comma list of small, medium, large")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs of ours (default: 50/20/5 by size)")
    p.add_argument("--ref-epochs", type=int, default=None, help="timed epochs of the reference (default: 10/3)")
    p.add_argument("--target-epochs", type=int, default=None,
                   help="max epochs for the time-to-1%% run (default: 2000 on small, 0 elsewhere)")
    p.add_argument("--no-ref", action="store_true", help="skip the reference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every child (0: torch's default)")
    p.add_argument("--ours-threads", default="", help="extra runs of ours with these thread counts, e.g. 1")
    p.add_argument("--child", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--before", default="", help="another checkout: compare calibrate() there and here (5k x 300k)")
    p.add_argument("--compare-size", default="5k", help="problem of calibrate_scale.py for --before (tiny, 2k, 5k)")
    p.add_argument("--compare-runs", default="select,engine",
                   help="runs for --before: select (the default calibrate), gates, engine (fit epochs)")
    p.add_argument("--calibrate", choices=["select", "gates", "engine"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.calibrate:
        calibrate_child(args)
        return
    if args.before:
        compare_trees(args)
        return
    if args.child:
        args.which = args.child
        child(args)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    import torch

    rate = copy_rate(args.device)
    print(f"device {args.device}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}; "
          f"measured copy rate {rate / 1e9:.2f} GB/s", flush=True)
    rows = []
    for size in sizes:
        m, n, k = SIZES[size]
        ours_epochs = args.epochs if args.epochs is not None else {"small": 50, "medium": 20, "large": 5}[size]
        ref_epochs = args.ref_epochs if args.ref_epochs is not None else {"small": 10, "medium": 3}.get(size, 0)
        target = args.target_epochs if args.target_epochs is not None else (2000 if size == "small" else 0)
        with tempfile.TemporaryDirectory(prefix="l0bench-") as data:
            if size != "large":
                for name, arr in zip(("indptr", "indices", "data", "y"), generate_numpy(m, n, k), strict=False):
                    np.save(os.path.join(data, f"{name}.npy"), arr)
            ours = run_child("ours", size, data, args, ours_epochs, target, args.threads)
            ref = None
            if not args.no_ref and size != "large" and ref_epochs > 0:
                ref = run_child("ref", size, data, args, ref_epochs, target, args.threads)
            extra = [
                run_child("ours", size, data, args, ours_epochs, 0, int(t))
                for t in args.ours_threads.split(",") if t.strip()
            ]
        for o in [ours, *extra]:
            floor = 2 * o["matrix_bytes_one_copy"] / rate
            row = dict(size=size, shape=f"{m:,} x {n:,}", nnz=n * k, ours=o, ref=ref, floor=floor,
                       ours_epochs=ours_epochs, ref_epochs=ref_epochs)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()}, default=str), flush=True)
    print()
    print("| problem | nnz | threads ours/ref | ours s/epoch | l0-python 0.6.2 s/epoch | speed-up | ours peak RSS GiB | ref peak RSS GiB "
          "| memory ratio | floor s/epoch | ours / floor | 1,000 epochs (ours) | time to 1% MRE ours / ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, f = r["ours"], r["ref"]
        speed = f["epoch_s"] / o["epoch_s"] if f else None
        mem = o["peak_rss_gib"] / f["peak_rss_gib"] if f else None
        thousand = 1000 * o["epoch_s"]
        label = f"{thousand / 60:.1f} min (extrapolated from {r['ours_epochs']} epochs)"
        tt = f"{fmt(o.get('target_s'), '.1f')} s ({fmt(o.get('target_epochs'), 'd')} ep)"
        if f:
            tt += f" / {fmt(f.get('target_s'), '.1f')} s ({fmt(f.get('target_epochs'), 'd')} ep)"
        print(
            f"| {r['shape']} | {r['nnz'] / 1e6:.1f}M | {o['threads']}/{f['threads'] if f else '-'} | {o['epoch_s']:.3f} | "
            f"{fmt(f['epoch_s'] if f else None, '.2f')} ({r['ref_epochs']} ep) | {fmt(speed, '.0f')}x | "
            f"{o['peak_rss_gib']:.2f} | {fmt(f['peak_rss_gib'] if f else None, '.2f')} | {fmt(mem, '.2f')} | "
            f"{r['floor']:.3f} | {o['epoch_s'] / r['floor']:.2f} | {label} | {tt if r['ours'].get('target_s') is not None or f else '-'} |"
        )


if __name__ == "__main__":
    main()
