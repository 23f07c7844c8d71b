"""The calibration fit on a CUDA GPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_calibrate import SparseCalibrationWeights, calibrate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def problem(n_targets=40, n_households=3000, seed=0):
    rng = np.random.default_rng(seed)
    M = sp.random(n_targets, n_households, density=0.2, random_state=rng, format="csr")
    M.data = rng.lognormal(0.0, 1.0, M.nnz)
    M = sp.vstack([sp.csr_matrix(np.ones((1, n_households))), M]).tocsr()
    true_w = rng.uniform(0.5, 2.0, n_households)
    return M, M @ true_w


@needs_cuda
def test_forward_on_cuda_equals_the_scipy_product_of_the_deterministic_weights():
    M, _ = problem()
    model = SparseCalibrationWeights(M.shape[1], init_keep_prob=0.7, seed=0, device="cuda")
    est = model(M, deterministic=True)
    assert est.device.type == "cuda"
    w = model.get_weights(deterministic=True).detach().cpu().double().numpy()
    np.testing.assert_allclose(est.detach().cpu().double().numpy(), M @ w, rtol=1e-5)


@needs_cuda
def test_fit_with_a_target_count_on_cuda_keeps_the_count_and_matches_the_targets():
    M, y = problem()
    model = SparseCalibrationWeights(M.shape[1], init_keep_prob=0.9, seed=0, device="cuda")
    model.fit(M, y, lr=0.05, epochs=400, loss_type="relative", target_count=600)
    assert model.log_weight.device.type == "cuda"
    w = model.get_weights(deterministic=True).detach().cpu().double().numpy()
    assert int((w > 0).sum()) == 600
    rel = np.abs(M @ w - y) / y
    assert np.mean(rel) < 0.02


@needs_cuda
def test_calibrate_on_cuda_is_exact_after_the_polish_and_agrees_with_cpu_quality():
    M, y = problem(seed=1)
    gpu = calibrate(M, y, target_count=500, epochs=300, seed=0, device="cuda")
    cpu = calibrate(M, y, target_count=500, epochs=300, seed=0, device="cpu")
    for res in (gpu, cpu):
        w = np.asarray(res.weights, dtype=float)
        assert int((w > 0).sum()) == 500
        assert np.max(np.abs(M @ w - y) / y) < 1e-6
