"""l0-nn benchmark: L0 neuron/channel gates vs dense and PyTorch magnitude pruning on digits.

Data: scikit-learn's bundled 8x8 digits (1797 images, offline), scaled to [0, 1],
one fixed stratified 80/20 split. Every number is the mean +- std over the seeds.

MLP 64-300-100-10:
* dense: trained ``--epochs`` epochs (Adam, lr 1e-3, batch 128).
* L0: :class:`l0_nn.SparseMLP` with input-neuron gates (input features and both
  hidden layers), trained ``--epochs`` epochs towards three target fractions of
  weights kept, with l0-core's :class:`~l0_core.TargetSparsityController` on the
  differentiable expected parameter count of the exported model (target warmed
  up linearly over the first half, multiplier reset once below the target;
  weights lr 1e-3, gates lr 0.05); then exported with
  :func:`l0_nn.export_pruned` and fine-tuned ``--finetune`` epochs.
* magnitude pruning (``torch.nn.utils.prune``) of the trained dense model at
  the sparsity L0 reached (same seed), each fine-tuned ``--finetune`` epochs:
  unstructured (per-layer L1, the same number of weights per layer as the
  exported L0 model) and structured (L2 norm of whole units: the same number of
  input features, hidden-1 and hidden-2 units as L0 kept; a removed unit also
  loses its bias and its outgoing weights).
* inference: best-of-N CPU time of one batch of 4096 through the dense model
  and through the exported model, measured interleaved (unstructured masks give
  no speed-up: the matrices stay dense).

Conv net (LeNet-style on the 8x8 images): conv3x3(16) - pool - conv3x3(32) - pool -
fc(128->64) - fc(64->10); dense vs L0 with channel gates on both convolutions
and input gates on both linear layers (target: keep 40 % of the parameters),
exported and fine-tuned the same way.

Training runs on one thread (these steps are too small to gain from two);
inference is timed with all of torch's threads.

Run:  python benchmarks/nn_bench.py            (about 2-3 minutes on 2 CPU cores)
      python benchmarks/nn_bench.py --quick    (1 seed, few epochs: a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from l0_core import TargetSparsityController
from l0_nn import L0Conv2d, L0Linear, SparseMLP, export_pruned, param_groups
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

HIDDEN = [300, 100]
KEEP_TARGETS = [0.30, 0.20, 0.10]  # fraction of MLP weights kept (70 / 80 / 90 % removed)


# ----------------------------------------------------------------------- data
def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    t = torch.from_numpy
    return t(xtr), t(ytr).long(), t(xte), t(yte).long()


def batches(n, batch, gen):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch] for i in range(0, n, batch)]


def accuracy(model, x, y):
    model.eval()
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def train_plain(model, data, epochs, seed, lr=1e-3, batch=128, image=False):
    xtr, ytr, _, _ = data
    xtr = xtr.view(-1, 1, 8, 8) if image else xtr
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed + 1000)
    for _ in range(epochs):
        model.train()
        for idx in batches(len(xtr), batch, gen):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model


def train_l0(model, expected_params, n_total, keep, data, epochs, seed, image=False, batch=128):
    """Train a gated model towards `keep` * n_total expected parameters.

    The controller's target falls linearly from all parameters to the final
    target over the first half of training (a sparsity warm-up), then stays.
    Anti-windup: once the expected count is below the target, a positive
    multiplier is reset to 0 (Adam closes gates at a fixed rate, so a
    multiplier accumulated while the count lagged behind the moving target
    would otherwise overshoot it).
    """
    xtr, ytr, _, _ = data
    xtr = xtr.view(-1, 1, 8, 8) if image else xtr
    opt = torch.optim.Adam(param_groups(model, lr=1e-3, gate_lr=0.05), foreach=True)
    ctl = TargetSparsityController(keep, n_total=n_total, lr=0.2)
    gen = torch.Generator().manual_seed(seed + 2000)
    warm = max(1, epochs // 2)
    for epoch in range(epochs):
        frac = min(1.0, (epoch + 1) / warm)
        # Warm-up of the target (TargetSparsityController has no setter for it yet).
        ctl.target_count = max(1, round(n_total * (1.0 - (1.0 - keep) * frac)))
        model.train()
        for idx in batches(len(xtr), batch, gen):
            opt.zero_grad()
            expected = expected_params()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx]) + ctl.penalty(expected)
            loss.backward()
            opt.step()
            ctl.step()
            if expected.item() < ctl.target_count:
                ctl.lambda1.clamp_(max=0.0)
    return model


INFER_THREADS = torch.get_num_threads()


def best_ms(models, x, reps):
    """Best-of-`reps` wall time (ms) of one forward pass of each model, measured interleaved.

    Interleaving and taking the minimum keep a busy machine from favouring
    whichever model happens to be timed in a quiet moment. Inference uses all
    of torch's threads (training uses one).
    """
    train_threads = torch.get_num_threads()
    torch.set_num_threads(INFER_THREADS)
    best = [float("inf")] * len(models)
    try:
        with torch.inference_mode():
            for m in models:
                m.eval()
                m(x)
            for _ in range(reps):
                for i, m in enumerate(models):
                    t0 = time.perf_counter()
                    m(x)
                    best[i] = min(best[i], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(train_threads)
    return [b * 1e3 for b in best]


# ------------------------------------------------------------------------ MLP
def dense_mlp(seed):
    torch.manual_seed(seed)
    layers, sizes = [], [64, *HIDDEN, 10]
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_cost(in_units, hid, out=10):
    sizes = [in_units, *hid, out]
    weights = sum(sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1))
    return weights + sum(sizes[1:]), 2 * weights  # params, FLOPs


def magnitude_prune(dense, small, kind):
    """Prune a copy of the trained dense MLP to the L0 export's per-layer size."""
    model = copy.deepcopy(dense)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    small_lin = [m for m in small if isinstance(m, nn.Linear)]
    if kind == "unstructured":
        for lin, s in zip(linears, small_lin, strict=True):
            prune.l1_unstructured(lin, "weight", amount=lin.weight.numel() - s.weight.numel())
        return model
    units = [small_lin[0].in_features] + [s.out_features for s in small_lin[:-1]]
    prune.ln_structured(linears[0], "weight", amount=64 - units[0], n=2, dim=1)
    for lin, nxt, keep in zip(linears[:-1], linears[1:], units[1:], strict=True):
        # Remove whole units: incoming row, bias, and the outgoing column of the next layer.
        prune.ln_structured(lin, "weight", amount=lin.out_features - keep, n=2, dim=0)
        alive = (lin.weight_mask.sum(1) > 0).float()
        prune.custom_from_mask(lin, "bias", alive)
        prune.custom_from_mask(nxt, "weight", alive.expand_as(nxt.weight))
    return model


def nonzero_cost(model):
    lins = [m for m in model if isinstance(m, nn.Linear)]
    weights = sum(int((m.weight != 0).sum()) for m in lins)
    return weights + sum(int((m.bias != 0).sum()) for m in lins), 2 * weights


def run_mlp(data, seeds, epochs, finetune):
    xte, yte = data[2], data[3]
    rows, timed = {}, {}

    def add(key, model, params, flops):
        row = rows.setdefault(key, {"acc": [], "params": [], "flops": []})
        row["acc"].append(accuracy(model, xte, yte))
        row["params"].append(params)
        row["flops"].append(flops)

    for seed in seeds:
        dense = train_plain(dense_mlp(seed), data, epochs, seed)
        add(("dense", "-"), dense, *mlp_cost(64, HIDDEN))
        timed.setdefault(("dense", "-"), []).append(dense)
        for keep in KEEP_TARGETS:
            tag = f"keep {keep:.0%}"
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            model = SparseMLP(64, HIDDEN, 10, init_sparsity=0.05, generator=gen)
            train_l0(model, model.expected_parameter_count, model.parameter_count(), keep, data,
                     epochs, seed)  # fmt: skip
            small = train_plain(export_pruned(model), data, finetune, seed + 7)
            rep = small.export_report
            add(("L0 neuron gates + export", tag), small, rep.params_after, rep.flops_after)
            timed.setdefault(("L0 neuron gates + export", tag), []).append(small)
            for kind in ("unstructured", "structured"):
                pruned = train_plain(magnitude_prune(dense, small, kind), data, finetune, seed + 7)
                add((f"torch prune {kind}", tag), pruned, *nonzero_cost(pruned))
    keys = list(timed)
    flat = [m for k in keys for m in timed[k]]
    times = best_ms(flat, torch.rand(4096, 64), reps=30)
    per_key, i = {}, 0
    for k in keys:
        per_key[k] = times[i : i + len(timed[k])]
        i += len(timed[k])
    return rows, per_key


# ----------------------------------------------------------------------- conv
def conv_net(gated, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if gated:
        kw = {"init_sparsity": 0.05, "generator": gen}
        conv = lambda i, o: L0Conv2d(i, o, 3, padding=1, **kw)  # noqa: E731
        lin = lambda i, o: L0Linear(i, o, **kw)  # noqa: E731
    else:
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
        lin = nn.Linear
    return nn.Sequential(
        conv(1, 16), nn.ReLU(), nn.MaxPool2d(2),
        conv(16, 32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), lin(128, 64), nn.ReLU(), lin(64, 10),
    )  # fmt: skip


def conv_expected_params(model):
    """Differentiable expected parameter count of the exported conv net."""
    c1, c2, f1, f2 = model[0], model[3], model[7], model[9]
    p1, p2 = c1.prob_active(), c2.prob_active()
    p_feat = p2.repeat_interleave(4) * f1.prob_active()  # a feature needs its channel and gate
    p_hid = f2.prob_active()
    return (
        p1.sum() * 10
        + p1.sum() * p2.sum() * 9 + p2.sum()
        + p_feat.sum() * p_hid.sum() + p_hid.sum()
        + p_hid.sum() * 10 + 10
    )  # fmt: skip


def run_conv(data, seeds, epochs, finetune, keep=0.4):
    xte, yte = data[2].view(-1, 1, 8, 8), data[3]
    big_x = torch.rand(4096, 1, 8, 8)
    out = {name: {"acc": [], "params": [], "flops": [], "channels": [], "models": []}
           for name in ("dense", "L0")}  # fmt: skip
    for seed in seeds:
        dense = train_plain(conv_net(False, seed), data, epochs, seed, image=True)
        model = conv_net(True, seed)
        n_total = sum(m.parameter_count() for m in model if isinstance(m, (L0Conv2d, L0Linear)))
        train_l0(model, lambda m=model: conv_expected_params(m), n_total, keep, data, epochs,
                 seed, image=True)  # fmt: skip
        small = export_pruned(model, example_input=big_x[:1])
        small = train_plain(small, data, finetune, seed + 7, image=True)
        for name, m in (("dense", dense), ("L0", small)):
            rep = export_pruned(m, example_input=big_x[:1]).export_report
            out[name]["acc"].append(accuracy(m, xte, yte))
            out[name]["params"].append(rep.params_after)
            out[name]["flops"].append(rep.flops_after)
            out[name]["channels"].append(
                "/".join(str(c.out_channels) for c in m if isinstance(c, nn.Conv2d))
            )
            out[name]["models"].append(m)
    n = len(seeds)
    times = best_ms(out["dense"]["models"] + out["L0"]["models"], big_x, reps=5)
    out["dense"]["ms"], out["L0"]["ms"] = times[:n], times[n:]
    return out


# ---------------------------------------------------------------------- table
def pm(values, digits=2):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--finetune", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 epochs, 2 fine-tune epochs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.finetune = 1, 6, 2
    seeds = list(range(args.seeds))
    # Training steps here are small: one thread is faster than two contending ones.
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = load_data()
    rows, times = run_mlp(data, seeds, args.epochs, args.finetune)
    conv = run_conv(data, seeds, args.epochs, args.finetune)
    elapsed = time.perf_counter() - t_start

    p_dense = rows[("dense", "-")]["params"][0]
    t_dense = statistics.mean(times[("dense", "-")])
    print(f"## MLP 64-300-100-10 on digits ({len(seeds)} seeds; {args.epochs} epochs; every "
          f"pruned model then fine-tuned {args.finetune} epochs)\n")  # fmt: skip
    print("| method | target | test acc % | params | removed | FLOPs/sample | CPU ms, batch 4096 |")
    print("|---|---|---|---|---|---|---|")
    for (method, tag), r in rows.items():
        params = statistics.mean(r["params"])
        if (method, tag) in times:
            t = times[(method, tag)]
            speed = "" if method == "dense" else f" ({t_dense / statistics.mean(t):.1f}x faster)"
            timing = pm(t) + speed
        elif method.endswith("unstructured"):
            timing = "as dense (masked dense matrices)"
        else:
            timing = "as the L0 export (same shapes)"
        print(f"| {method} | {tag} | {pm(r['acc'])} | {params:.0f} | {1 - params / p_dense:.1%} "
              f"| {statistics.mean(r['flops']):.0f} | {timing} |")  # fmt: skip
    print(f"\n## LeNet-style conv net on 8x8 digits ({len(seeds)} seeds; L0 target: keep 40%)\n")
    print(
        "| model | test acc % | params | FLOPs/sample | conv channels (per seed) | CPU ms, batch 4096 |"
    )
    print("|---|---|---|---|---|---|")
    for name, label in (("dense", "dense"), ("L0", "L0 channel gates + export")):
        r = conv[name]
        print(f"| {label} | {pm(r['acc'])} | {statistics.mean(r['params']):.0f} "
              f"| {statistics.mean(r['flops']):.0f} | {', '.join(r['channels'])} | {pm(r['ms'])} |")  # fmt: skip
    print(f"\ntorch {torch.__version__}; training on 1 thread, inference timed (best of 30 MLP / 5 conv, "
          f"interleaved) on {INFER_THREADS} threads; total {elapsed:.0f} s wall")  # fmt: skip


if __name__ == "__main__":
    main()
