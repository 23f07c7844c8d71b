"""l0-nn benchmark: L0 neuron/channel gates vs dense and PyTorch magnitude pruning on digits.

Data: scikit-learn's bundled 8x8 digits (1797 images, offline), scaled to [0, 1],
one fixed stratified 80/20 split. Every number is the mean +- std over the seeds.

MLP 64-300-100-10:
* dense: trained ``--epochs`` epochs (Adam, lr 1e-3, batch 128).
* L0: :class:`l0_nn.SparseMLP` with input-neuron gates (input features and both
  hidden layers), trained ``--epochs`` epochs towards three target fractions of
  weights kept, with l0-core's :class:`~l0_core.TargetSparsityController` on the
  differentiable expected parameter count of the exported model (target warmed
  up linearly over the first half; weights lr 1e-3, gates lr 0.05); then
  exported with :func:`l0_nn.export_pruned` and fine-tuned ``--finetune`` epochs.
* magnitude pruning (``torch.nn.utils.prune``) of the trained dense model at
  the sparsity L0 reached (same seed), each fine-tuned ``--finetune`` epochs:
  unstructured (per-layer L1, the same number of weights per layer as the
  exported L0 model) and structured (L2 norm of whole units: the same number of
  input features, hidden-1 and hidden-2 units as L0 kept; a removed unit also
  loses its bias).
* inference: median CPU time of one batch of 4096 through the dense model and
  through the exported model (unstructured masks give no speed-up: the matrices
  stay dense).

Conv net (LeNet-style on the 8x8 images): conv3x3(16) - pool - conv3x3(32) - pool -
fc(128->64) - fc(64->10); dense vs L0 with channel gates on both convolutions
and input gates on both linear layers, exported and fine-tuned the same way.

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
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

from l0_nn import L0Conv2d, L0Linear, SparseMLP, export_pruned, param_groups

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
    """
    xtr, ytr, _, _ = data
    xtr = xtr.view(-1, 1, 8, 8) if image else xtr
    opt = torch.optim.Adam(param_groups(model, lr=1e-3, gate_lr=0.05), foreach=True)
    ctl = TargetSparsityController(keep, n_total=n_total, lr=0.05)
    gen = torch.Generator().manual_seed(seed + 2000)
    warm = max(1, epochs // 2)
    for epoch in range(epochs):
        frac = min(1.0, (epoch + 1) / warm)
        # Warm-up of the target (TargetSparsityController has no setter for it yet).
        ctl.target_count = max(1, round(n_total * (1.0 - (1.0 - keep) * frac)))
        model.train()
        for idx in batches(len(xtr), batch, gen):
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx]) + ctl.penalty(expected_params())
            loss.backward()
            opt.step()
            ctl.step()
    return model


INFER_THREADS = torch.get_num_threads()


def infer_ms(model, x, reps=30):
    """Median wall time of one forward pass, with all CPU threads (training uses one)."""
    model.eval()
    train_threads = torch.get_num_threads()
    torch.set_num_threads(INFER_THREADS)
    try:
        return _median_ms(model, x, reps)
    finally:
        torch.set_num_threads(train_threads)


def _median_ms(model, x, reps):
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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
        for lin, s in zip(linears, small_lin):
            prune.l1_unstructured(lin, "weight", amount=lin.weight.numel() - s.weight.numel())
        return model
    units = [small_lin[0].in_features] + [s.out_features for s in small_lin[:-1]]
    prune.ln_structured(linears[0], "weight", amount=64 - units[0], n=2, dim=1)
    for lin, keep in zip(linears[:-1], units[1:]):
        prune.ln_structured(lin, "weight", amount=lin.out_features - keep, n=2, dim=0)
        row_mask = (lin.weight_mask.abs().sum(1) > 0).float()
        prune.custom_from_mask(lin, "bias", row_mask)
    return model


def run_mlp(data, seeds, epochs, finetune):
    xte = data[2]
    rows = {}
    big_x = torch.rand(4096, 64)
    t_dense, t_small = [], {k: [] for k in KEEP_TARGETS}

    def add(key, acc, params, flops):
        rows.setdefault(key, {"acc": [], "params": [], "flops": []})
        rows[key]["acc"].append(acc)
        rows[key]["params"].append(params)
        rows[key]["flops"].append(flops)

    for seed in seeds:
        dense = train_plain(dense_mlp(seed), data, epochs, seed)
        p_dense, f_dense = mlp_cost(64, HIDDEN)
        add(("dense", "-"), accuracy(dense, xte, data[3]), p_dense, f_dense)
        t_dense.append(infer_ms(dense, big_x))
        for keep in KEEP_TARGETS:
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            model = SparseMLP(64, HIDDEN, 10, init_sparsity=0.05, generator=gen)
            train_l0(model, model.expected_parameter_count, model.parameter_count(), keep, data,
                     epochs, seed)  # fmt: skip
            small = export_pruned(model)
            small = train_plain(small, data, finetune, seed + 7)
            rep = small.export_report
            tag = f"keep {keep:.0%}"
            add(("L0 (neuron gates) + export", tag), accuracy(small, xte, data[3]),
                rep.params_after, rep.flops_after)  # fmt: skip
            t_small[keep].append(infer_ms(small, big_x))
            for kind in ("unstructured", "structured"):
                pruned = train_plain(magnitude_prune(dense, small, kind), data, finetune, seed + 7)
                lins = [m for m in pruned if isinstance(m, nn.Linear)]
                params = sum(int((m.weight != 0).sum()) + int((m.bias != 0).sum()) for m in lins)
                flops = 2 * sum(int((m.weight != 0).sum()) for m in lins)
                add((f"magnitude {kind}", tag), accuracy(pruned, xte, data[3]), params, flops)
    return rows, t_dense, t_small


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


def run_conv(data, seeds, epochs, finetune, keep=0.25):
    xte = data[2].view(-1, 1, 8, 8)
    big_x = torch.rand(4096, 1, 8, 8)
    out = {"dense": {"acc": [], "params": 0, "flops": 0, "ms": []},
           "L0": {"acc": [], "params": [], "flops": [], "ms": [], "channels": []}}  # fmt: skip
    for seed in seeds:
        dense = train_plain(conv_net(False, seed), data, epochs, seed, image=True)
        out["dense"]["acc"].append(accuracy(dense, xte, data[3]))
        out["dense"]["ms"].append(infer_ms(dense, big_x))
        rep0 = export_pruned(dense, example_input=big_x[:1]).export_report
        out["dense"]["params"], out["dense"]["flops"] = rep0.params_after, rep0.flops_after
        model = conv_net(True, seed)
        n_total = sum(m.parameter_count() for m in model if isinstance(m, (L0Conv2d, L0Linear)))
        train_l0(model, lambda: conv_expected_params(model), n_total, keep, data, epochs, seed,
                 image=True)  # fmt: skip
        small = export_pruned(model, example_input=big_x[:1])
        small = train_plain(small, data, finetune, seed + 7, image=True)
        rep = small.export_report
        convs = [m for m in small if isinstance(m, nn.Conv2d)]
        out["L0"]["acc"].append(accuracy(small, xte, data[3]))
        out["L0"]["params"].append(rep.params_after)
        out["L0"]["flops"].append(rep.flops_after)
        out["L0"]["ms"].append(infer_ms(small, big_x))
        out["L0"]["channels"].append(tuple(c.out_channels for c in convs))
    return out


# ---------------------------------------------------------------------- table
def ms(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--finetune", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="1 seed, 5 epochs, 2 fine-tune epochs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.finetune = 1, 5, 2
    seeds = list(range(args.seeds))
    # Training steps here are small: one thread is faster than two contending ones.
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = load_data()
    rows, t_dense, t_small = run_mlp(data, seeds, args.epochs, args.finetune)
    conv = run_conv(data, seeds, args.epochs, args.finetune)
    elapsed = time.perf_counter() - t_start

    p_dense = rows[("dense", "-")]["params"][0]
    print(f"## MLP 64-300-100-10 on digits ({len(seeds)} seeds, {args.epochs} epochs, "
          f"+{args.finetune} fine-tune epochs for every pruned model)\n")  # fmt: skip
    print("| method | target | test acc % | params | weights+biases removed | FLOPs/sample "
          "| CPU ms, batch 4096 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (method, tag), r in rows.items():
        params = statistics.mean(r["params"])
        if method == "dense":
            timing = ms(t_dense)
        elif method.startswith("L0"):
            keep = float(tag.split()[1].rstrip("%")) / 100
            timing = f"{ms(t_small[keep])} ({statistics.mean(t_dense) / statistics.mean(t_small[keep]):.1f}x faster)"
        elif method.endswith("unstructured"):
            timing = "= dense (masks)"
        else:
            timing = "same shapes as the L0 export"
        print(f"| {method} | {tag} | {ms(r['acc'])} | {params:.0f} | {1 - params / p_dense:.1%} "
              f"| {statistics.mean(r['flops']):.0f} | {timing} |")  # fmt: skip
    d, g = conv["dense"], conv["L0"]
    print(f"\n## LeNet-style conv net on 8x8 digits ({len(seeds)} seeds)\n")
    print("| model | test acc % | params | FLOPs/sample | conv channels kept | CPU ms, batch 4096 |")
    print("|---|---|---|---|---|---|")
    print(f"| dense | {ms(d['acc'])} | {d['params']} | {d['flops']} | 16, 32 | {ms(d['ms'])} |")
    chans = ", ".join("/".join(str(c) for c in ch) for ch in g["channels"])
    print(f"| L0 channel gates + export | {ms(g['acc'])} | {statistics.mean(g['params']):.0f} "
          f"| {statistics.mean(g['flops']):.0f} | {chans} (per seed) | {ms(g['ms'])} |")  # fmt: skip
    print(f"\ntorch {torch.__version__}; training on 1 thread, inference timed on "
          f"{INFER_THREADS} threads; total {elapsed:.0f} s wall")  # fmt: skip


if __name__ == "__main__":
    main()
