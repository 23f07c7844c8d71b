"""l0-python 0.6 spellings that keep their meaning in l0-core, each with a DeprecationWarning."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import HardConcrete, TemperatureScheduler, update_temperatures


def test_anneal_epochs_is_translated_to_total_epochs_plus_one():
    with pytest.warns(DeprecationWarning, match=r"anneal_epochs=10.*total_epochs=11"):
        old = TemperatureScheduler(2.0, 0.1, anneal_epochs=10)
    assert old.total_epochs == 11
    for epoch in range(13):  # 0.6: final temperature from epoch anneal_epochs on
        want = 0.1 if epoch >= 10 else 2.0 * (0.1 / 2.0) ** (epoch / 10)
        assert old.get_temperature(epoch) == pytest.approx(want, rel=1e-12)


def test_anneal_epochs_and_total_epochs_together_are_rejected():
    with pytest.raises(TypeError, match="not both"):
        TemperatureScheduler(total_epochs=5, anneal_epochs=4)


def test_update_temperatures_temperature_keyword_warns_and_sets():
    gates = torch.nn.ModuleList([HardConcrete(3), HardConcrete(2)])
    with pytest.warns(DeprecationWarning, match="use update_temperatures"):
        assert update_temperatures(gates, temperature=0.3) == 2
    assert all(g.temperature.item() == pytest.approx(0.3) for g in gates)
    with pytest.raises(TypeError, match="not both"):
        update_temperatures(gates, 0.2, temperature=0.3)
    with pytest.raises(TypeError, match="needs the new temperature"):
        update_temperatures(gates)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("get_penalty", "l0_penalty"),
        ("get_active_prob", "prob_active"),
        ("get_num_active", "num_active"),
    ],
)
def test_hard_concrete_06_methods_warn_and_equal_the_new_ones(old, new):
    gate = HardConcrete(6, init_mean=0.7, init_std=0.0)
    with pytest.warns(
        DeprecationWarning, match=rf"HardConcrete\.{old}\(\) is deprecated; use HardConcrete\.{new}"
    ):
        got = getattr(gate, old)()
    want = getattr(gate, new)()
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))


def test_hard_concrete_06_attributes_warn_and_alias():
    gate = HardConcrete(2, 3, init_mean=0.6, init_std=0.0)
    with pytest.warns(DeprecationWarning, match="use HardConcrete.log_alpha"):
        assert gate.qz_logits is gate.log_alpha
    with pytest.warns(DeprecationWarning, match="use HardConcrete.shape"):
        assert gate.gate_size == (2, 3)
    # P(active) = 0.6 exactly (init_std=0): log_alpha = logit(0.6) + beta * log(-gamma/zeta)
    assert gate.log_alpha[0, 0].item() == pytest.approx(
        math.log(0.6 / 0.4) + (2 / 3) * math.log(0.1 / 1.1), rel=1e-6
    )
