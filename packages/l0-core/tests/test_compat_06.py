"""l0-python 0.6 spellings that keep their meaning in l0-core, each with a DeprecationWarning."""

from __future__ import annotations

import math

import pytest
import torch
from l0_core import HardConcrete, TemperatureScheduler, update_temperatures


def test_anneal_epochs_is_translated_to_total_epochs_plus_one():
    with pytest.warns(DeprecationWarning, match=r"anneal_epochs=10.*total_epochs=11") as caught:
        old = TemperatureScheduler(2.0, 0.1, anneal_epochs=10)
    assert [w.filename for w in caught] == [__file__]  # the caller's line, not the wrapper's
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
    gate = HardConcrete(6, init_prob_active=0.7, init_std=0.0)
    with pytest.warns(
        DeprecationWarning, match=rf"HardConcrete\.{old}\(\) is deprecated; use HardConcrete\.{new}"
    ):
        got = getattr(gate, old)()
    want = getattr(gate, new)()
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))


def test_hard_concrete_06_attributes_warn_and_alias():
    gate = HardConcrete(2, 3, init_prob_active=0.6, init_std=0.0)
    with pytest.warns(DeprecationWarning, match="use HardConcrete.log_alpha"):
        assert gate.qz_logits is gate.log_alpha
    with pytest.warns(DeprecationWarning, match="use HardConcrete.shape"):
        assert gate.gate_size == (2, 3)
    # P(active) = 0.6 exactly (init_std=0): log_alpha = logit(0.6) + beta * log(-gamma/zeta)
    assert gate.log_alpha[0, 0].item() == pytest.approx(
        math.log(0.6 / 0.4) + (2 / 3) * math.log(0.1 / 1.1), rel=1e-6
    )


# -- init_mean: 0.6.2's meaning (the logit mean) under its old name; ours is init_prob_active --


def _closed_form_prob_active(log_alpha: float, beta: float, stretch: float = 0.1) -> float:
    """P(z != 0) of a Hard Concrete gate (Louizos et al. 2017, eq. 12), computed here."""
    x = log_alpha - beta * math.log(stretch / (1.0 + stretch))
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(("p", "beta"), [(0.3, 2 / 3), (0.9, 0.25), (0.999, 0.1)])
def test_init_prob_active_is_p_active_at_init_by_closed_form_and_by_sampling(p, beta):
    gate = HardConcrete(
        200_000,
        temperature=beta,
        init_prob_active=p,
        init_std=0.0,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert gate.init_prob_active == p and gate.init_mean is None
    la = gate.log_alpha[0].item()
    assert _closed_form_prob_active(la, beta) == pytest.approx(p, abs=1e-12)
    nonzero = (gate.sample() > 0).double().mean().item()  # Monte Carlo, independent of the formula
    assert nonzero == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / 200_000) + 1e-6)


def test_init_prob_active_defaults_to_one_half():
    gate = HardConcrete(3, init_std=0.0, dtype=torch.float64)
    assert gate.init_prob_active == 0.5
    assert _closed_form_prob_active(gate.log_alpha[0].item(), 2 / 3) == pytest.approx(0.5)


@pytest.mark.parametrize(("mean", "beta"), [(0.5, 2 / 3), (0.9, 0.25), (0.999, 0.1), (0.2, 1.5)])
def test_init_mean_keeps_062_meaning_log_alpha_is_logit_of_init_mean(mean, beta):
    with pytest.warns(DeprecationWarning, match=r"HardConcrete\(init_mean=\.\.\.\) is deprecated"):
        gate = HardConcrete(7, 2, temperature=beta, init_mean=mean, init_std=0.0)
    want = math.log(mean / (1.0 - mean))  # 0.6.2: qz_logits = log(init_mean / (1 - init_mean))
    assert torch.equal(gate.log_alpha, torch.full((7, 2), want, dtype=torch.float32))
    assert gate.init_mean == mean
    assert gate.init_prob_active == pytest.approx(_closed_form_prob_active(want, beta), rel=1e-12)
    # reset_parameters keeps the 0.6.2 meaning, also after the temperature changed
    gate.set_temperature(0.05)
    with torch.no_grad():
        gate.log_alpha.zero_()
    gate.reset_parameters()
    assert torch.equal(gate.log_alpha, torch.full((7, 2), want, dtype=torch.float32))


def test_init_mean_warning_names_init_prob_active_and_the_value_to_pass():
    want = _closed_form_prob_active(math.log(0.9 / 0.1), 0.25)
    with pytest.warns(DeprecationWarning) as record:
        HardConcrete(3, temperature=0.25, init_mean=0.9)
    (w,) = [r for r in record if issubclass(r.category, DeprecationWarning)]
    msg = str(w.message)
    assert "init_prob_active" in msg and "logit(init_mean)" in msg
    assert f"here {want:.6g}" in msg
    assert w.filename == __file__  # points at the caller, not into l0-core
    # the value the warning gives rebuilds the same gate (up to float rounding)
    again = HardConcrete(3, temperature=0.25, init_prob_active=want, init_std=0.0)
    assert torch.allclose(again.log_alpha, torch.full((3,), math.log(9.0)), atol=1e-5)


def test_init_mean_jitter_is_centred_on_the_logit():
    gen = torch.Generator().manual_seed(0)
    with pytest.warns(DeprecationWarning, match="init_prob_active"):
        gate = HardConcrete(50_000, init_mean=0.8, init_std=0.05, generator=gen)
    assert gate.log_alpha.mean().item() == pytest.approx(math.log(4.0), abs=5e-3)
    assert gate.log_alpha.std().item() == pytest.approx(0.05, rel=0.05)


def test_a_non_number_init_prob_active_is_rejected_naming_it():
    with pytest.raises(TypeError, match=r"init_prob_active must be a number, got str"):
        HardConcrete(3, init_prob_active="0.5")


def test_init_mean_and_init_prob_active_together_are_rejected():
    with pytest.raises(
        TypeError, match=r"HardConcrete\(\) got both init_prob_active and init_mean; pass only"
    ):
        HardConcrete(3, init_prob_active=0.5, init_mean=0.5)


@pytest.mark.parametrize(
    ("bad", "exc", "msg"),
    [
        (1.0, ValueError, r"init_mean must be < 1\.0, got 1\.0; it is l0-python 0\.6\.2's logit"),
        (0.0, ValueError, r"init_mean must be > 0\.0, got 0\.0; it is l0-python 0\.6\.2's logit"),
        ("0.5", TypeError, r"init_mean must be a number, got str"),
    ],
)
def test_bad_init_mean_is_rejected_naming_it(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        HardConcrete(3, init_mean=bad)
