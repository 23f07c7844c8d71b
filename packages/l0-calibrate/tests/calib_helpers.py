"""Small problems and an independent dense re-implementation of the published fit loop."""

import math

import numpy as np
import scipy.sparse as sp
import torch


def make_problem(n_targets=12, n_households=60, per_col=4, seed=0, orders=3):
    """A column-sparse matrix (targets x households) and feasible targets spanning `orders` decades."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.choice(n_targets, per_col, replace=False) for _ in range(n_households)])
    scale = 10.0 ** rng.uniform(0, orders, n_targets)
    vals = rng.lognormal(0, 0.5, (n_households, per_col)) * scale[rows]
    indptr = np.arange(0, n_households * per_col + 1, per_col)
    order = np.argsort(rows, axis=1)
    rows = np.take_along_axis(rows, order, 1)
    vals = np.take_along_axis(vals, order, 1)
    M = sp.csc_matrix((vals.ravel(), rows.ravel(), indptr), shape=(n_targets, n_households))
    w_true = rng.lognormal(0, 0.3, n_households)
    return M, M @ w_true


def dense_reference_fit(M, y, *, epochs, lr, lambda_l0, lambda_l2, loss, log_alpha, log_weight,
                        generator, beta=2 / 3, gamma=-0.1, zeta=1.1, group_weights=None):
    """l0-python 0.6.2's training loop, written densely with autograd (float64)."""
    Md = torch.tensor(M.toarray() if sp.issparse(M) else M, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    gw = torch.ones_like(yt) if group_weights is None else torch.tensor(group_weights, dtype=torch.float64)
    lw = torch.nn.Parameter(log_weight.clone().double())
    la = torch.nn.Parameter(log_alpha.clone().double())
    opt = torch.optim.Adam([lw, la], lr=lr)
    for _ in range(epochs):
        lac = la.clamp(-20, 20)
        u = torch.rand(la.shape, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + lac) / beta)
        z = (s * (zeta - gamma) + gamma).clamp(0, 1)
        w = torch.exp(lw) * z
        pred = Md @ w
        if loss == "relative":
            data = (((yt - pred) / (yt + 1)) ** 2 * gw).sum()
        else:
            data = ((yt - pred) ** 2 * gw).sum()
        c = -beta * math.log(-gamma / zeta)
        total = data + lambda_l0 * torch.sigmoid(lac + c).sum()
        if lambda_l2 > 0:
            total = total + lambda_l2 * (torch.exp(lw) ** 2).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
    return lw.detach(), la.detach()
