"""Benchmark of l0-gates' learned selections against classical baselines.

Prints two markdown tables:

1. SampleGate: a 1,000-row subset of 10,000 skewed rows (six correlated
   log-normal columns, a categorical column with levels of 0.5% and 1.5%
   share). Errors of the weighted subset on the column totals, variances and
   category shares, against uniform random subsets and stratified random
   subsets with their expansion weights (median over 20 draws) and against
   uniform random subsets given the same calibration. Also: weight
   dispersion and statistics that no method targeted (a held-out column, the
   column quartiles, and column 0 within each category).
2. FeatureGate: 50 of 1,000 columns, where 40 informative columns hide among
   960 noisy near-copies of 4 of them. Relative reconstruction error of all
   columns from the chosen ones and informative columns kept, against
   pivoted QR column selection and random choices of 50 (median over 20).

Run: ``python benchmarks/gates_bench.py`` (about a minute on one CPU core;
``--quick`` for the smaller sizes the tests use). scipy is needed for the QR baseline.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy.linalg
import torch
from l0_gates import FeatureGate, SampleGate, moment_matrix, rake_weights
from l0_gates._data import as_table

N_CATEGORIES = 5
CATEGORY_SHARES = [0.6, 0.3, 0.08, 0.015, 0.005]


# ----------------------------------------------------------------------------- samples
def skewed_data(n: int, seed: int = 0, d: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated log-normal columns, a rare-level category and a held-out column."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, d + 1)) @ np.linalg.cholesky(0.5 * np.eye(d + 1) + 0.5).T
    x = np.exp(latent * np.linspace(0.6, 1.4, d + 1))
    cat = rng.choice(N_CATEGORIES, size=n, p=CATEGORY_SHARES)
    x[:, 0] *= 1 + cat
    held_out = x[:, d] * np.exp(0.3 * rng.standard_normal(n))
    return x[:, :d], cat, held_out


def subset_metrics(x, cat, held, idx, w) -> dict[str, float]:
    """Errors of the weighted subset ``(idx, w)`` against the full data."""
    n = len(x)
    tot, sub_tot = x.sum(0), w @ x[idx]
    var = x.var(0)
    sub_mean = sub_tot / w.sum()
    sub_var = (w @ (x[idx] - sub_mean) ** 2) / w.sum()
    share = np.bincount(cat, minlength=N_CATEGORIES) / n
    sub_share = np.bincount(cat[idx], weights=w, minlength=N_CATEGORIES) / w.sum()
    quart = []
    for j in range(x.shape[1]):
        for q in (0.25, 0.5, 0.75):
            thr = np.quantile(x[:, j], q)
            quart.append(abs(w @ (x[idx, j] <= thr) / w.sum() - (x[:, j] <= thr).mean()))
    dom = []
    for c in range(N_CATEGORIES):
        m = cat == c
        dom.append(abs(w @ (x[idx, 0] * m[idx]) / (x[:, 0] * m).sum() - 1))
    return {
        "total": float(np.mean(np.abs(sub_tot / tot - 1))),
        "variance": float(np.mean(np.abs(sub_var / var - 1))),
        "share": float(np.max(np.abs(sub_share - share))),
        "cv": float(np.std(w) / np.mean(w)),
        "held_out": float(abs(w @ held[idx] / held.sum() - 1)),
        "quartiles": float(np.mean(quart)),
        "domain": float(np.mean(dom)),
    }


def stratified(cat: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Proportional allocation by category (largest remainders), at least 1 per level."""
    n = len(cat)
    sizes = np.bincount(cat, minlength=N_CATEGORIES)
    alloc = np.maximum(1, np.floor(k * sizes / n)).astype(int)
    rem = k * sizes / n - np.floor(k * sizes / n)
    for h in np.argsort(-rem)[: k - alloc.sum()]:
        alloc[h] += 1
    idx, w = [], []
    for h in range(N_CATEGORIES):
        members = np.flatnonzero(cat == h)
        pick = rng.choice(members, size=alloc[h], replace=False)
        idx.append(pick)
        w.append(np.full(alloc[h], sizes[h] / alloc[h]))
    idx, w = np.concatenate(idx), np.concatenate(w)
    order = np.argsort(idx)
    return idx[order], w[order]


def calibrated(data: np.ndarray, idx: np.ndarray, categorical: list[int]) -> np.ndarray:
    """Weights from the same calibration SampleGate uses, for a given subset."""
    table = as_table(data, categorical=categorical)
    targets = moment_matrix(table, torch.ones(len(data), dtype=torch.float64))
    t_idx = torch.as_tensor(idx)
    start = torch.full((len(idx),), len(data) / len(idx), dtype=torch.float64)
    return rake_weights(targets.matrix[t_idx], targets.totals, start, targets.scale).numpy()


def sample_table(n: int, k: int, draws: int, seeds: int) -> str:
    x, cat, held = skewed_data(n)
    data = np.concatenate([x, cat[:, None]], 1)
    cats = [x.shape[1]]
    rng = np.random.default_rng(1)
    rows: dict[str, list[dict[str, float]]] = {
        "uniform random, expansion weights": [],
        "stratified random (by category)": [],
        "uniform random + same calibration": [],
    }
    for _ in range(draws):
        idx = np.sort(rng.choice(n, k, replace=False))
        rows["uniform random, expansion weights"].append(
            subset_metrics(x, cat, held, idx, np.full(k, n / k))
        )
        s_idx, s_w = stratified(cat, k, rng)
        rows["stratified random (by category)"].append(subset_metrics(x, cat, held, s_idx, s_w))
        rows["uniform random + same calibration"].append(
            subset_metrics(x, cat, held, idx, calibrated(data, idx, cats))
        )
    learned, learned_uniform, times = [], [], []
    for seed in range(seeds):
        t0 = time.process_time()
        gate = SampleGate(n, k, seed=seed).fit(data, categorical=cats)
        times.append(time.process_time() - t0)
        idx = gate.indices_.numpy()
        learned.append(subset_metrics(x, cat, held, idx, gate.weights_.numpy()))
        learned_uniform.append(subset_metrics(x, cat, held, idx, np.full(k, n / k)))
    rows = {
        f"**SampleGate** (learned subset + weights), median of {seeds} seeds": learned,
        "SampleGate subset, plain expansion weights": learned_uniform,
        **rows,
    }
    cols = ["total", "variance", "share", "cv", "held_out", "quartiles", "domain"]
    head = (
        f"| {n:,} rows -> {k:,} | totals | variances | shares (max abs) | weight CV "
        "| held-out total | quartiles | column 0 by category |"
    )
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, recs in rows.items():
        med = {c: float(np.median([r[c] for r in recs])) for c in cols}
        lines.append("| " + name + " | " + " | ".join(f"{med[c]:.2g}" for c in cols) + " |")
    ratio_rand = np.median([r["total"] for r in rows["uniform random, expansion weights"]]) / max(
        np.median([r["total"] for r in learned]), 1e-300
    )
    lines.append("")
    lines.append(
        f"Totals and variances: mean relative error over the 6 columns; random rows: median of {draws} "
        f"draws. SampleGate fit CPU time: median {np.median(times):.1f} s. "
        f"Totals error ratio uniform random / SampleGate: {ratio_rand:.2g}."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- features
def redundant_columns(
    n: int = 1000,
    n_inf: int = 40,
    n_red: int = 960,
    n_base: int = 4,
    sigma: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_inf`` independent columns and ``n_red`` noisy copies of ``n_base`` of them, shuffled."""
    rng = np.random.default_rng(seed)
    inf = rng.standard_normal((n, n_inf))
    base = rng.choice(n_base, size=n_red)
    red = inf[:, base] + sigma * rng.standard_normal((n, n_red))
    x = np.concatenate([inf, red], 1)
    perm = rng.permutation(x.shape[1])
    x = x[:, perm]
    informative = np.sort(np.argsort(perm)[:n_inf])
    return x, informative


def recon_error(xc: np.ndarray, cols: np.ndarray) -> float:
    q, _ = np.linalg.qr(xc[:, cols])
    resid = xc - q @ (q.T @ xc)
    return float((resid**2).sum() / (xc**2).sum())


def covered(xc: np.ndarray, informative: np.ndarray, cols: np.ndarray) -> int:
    z = xc / np.linalg.norm(xc, axis=0)
    corr = np.abs(z[:, informative].T @ z[:, cols])
    return int((corr.max(1) > 0.95).sum())


def feature_table(n: int, p_inf: int, p_red: int, k: int, draws: int, seeds: int) -> str:
    x, informative = redundant_columns(n, p_inf, p_red)
    xc = x - x.mean(0)
    p = x.shape[1]
    t0 = time.process_time()
    _, piv = scipy.linalg.qr(xc, pivoting=True, mode="r")
    qr_time = time.process_time() - t0
    qr_cols = np.sort(piv[:k])
    qr_err = recon_error(xc, qr_cols)
    rows = []
    errs, kept, cov, times = [], [], [], []
    for seed in range(seeds):
        t0 = time.process_time()
        gate = FeatureGate(p, k, seed=seed)
        _, cols = gate.select_features(x)
        times.append(time.process_time() - t0)
        errs.append(recon_error(xc, cols))
        kept.append(len(np.intersect1d(cols, informative)))
        cov.append(covered(xc, informative, cols))
    rows.append(
        (
            f"**FeatureGate** (median of {seeds} seeds; worst)",
            f"{np.median(errs):.4g} ({max(errs):.4g})",
            f"{np.median(errs) / qr_err:.3f} ({max(errs) / qr_err:.3f})",
            f"{int(np.median(kept))} ({min(kept)})",
            f"{int(np.median(cov))} ({min(cov)})",
            f"{np.median(times):.1f}",
        )
    )
    rows.append(
        (
            "pivoted QR (scipy.linalg.qr)",
            f"{qr_err:.4g}",
            "1.000",
            str(len(np.intersect1d(qr_cols, informative))),
            str(covered(xc, informative, qr_cols)),
            f"{qr_time:.1f}",
        )
    )
    rng = np.random.default_rng(0)
    r_err, r_kept, r_cov = [], [], []
    for _ in range(draws):
        cols = np.sort(rng.choice(p, k, replace=False))
        r_err.append(recon_error(xc, cols))
        r_kept.append(len(np.intersect1d(cols, informative)))
        r_cov.append(covered(xc, informative, cols))
    rows.append(
        (
            f"random {k} columns (median of {draws})",
            f"{np.median(r_err):.4g}",
            f"{np.median(r_err) / qr_err:.1f}",
            f"{np.median(r_kept):.0f}",
            f"{np.median(r_cov):.0f}",
            "-",
        )
    )
    head = (
        f"| {p:,} columns ({p_inf} informative) -> {k} | relative reconstruction error | vs pivoted QR "
        f"| informative columns kept (of {p_inf}) | informative directions covered (corr > 0.95) | CPU time (s) |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(
        f"Error: ||X - X_S B||^2 / ||X||^2 of the centred data with least-squares B. "
        f"Random / FeatureGate error ratio: {np.median(r_err) / np.median(errs):.1f}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (the test-suite scale)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, 1 thread\n"
    )
    if args.quick:
        print(sample_table(2000, 200, draws=20, seeds=5))
        print()
        print(feature_table(300, 12, 288, 15, draws=20, seeds=5))
    else:
        print(sample_table(10_000, 1_000, draws=20, seeds=5))
        print()
        print(feature_table(1000, 40, 960, 50, draws=20, seeds=5))


if __name__ == "__main__":
    main()
