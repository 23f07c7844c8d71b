"""Gates follow the device of tensor data (needs a CUDA GPU)."""

from __future__ import annotations

import pytest
import torch
from l0_gates import FeatureGate, SampleGate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_sample_gate_trains_on_the_device_of_tensor_data_and_returns_indices_there():
    data = torch.rand(500, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0)).exp()
    gate = SampleGate(500, 50, seed=0).fit(data, epochs=100)
    selected, idx = gate.select_samples(data)
    assert gate.gates.log_alpha.device.type == "cuda" and idx.device.type == "cuda"
    assert torch.equal(selected, data[idx])
    totals = gate.weights_.to(data.device) @ selected.double()
    torch.testing.assert_close(totals, data.double().sum(0), rtol=1e-6, atol=0.0)


@needs_cuda
def test_feature_gate_selects_on_the_device_of_tensor_data():
    x = torch.randn(200, 30, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    gate = FeatureGate(30, 5, seed=0).fit(x, epochs=100)
    assert gate.feature_indices_.device.type == "cuda" and gate.feature_indices_.numel() == 5
