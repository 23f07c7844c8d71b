"""Built-in losses and their lookup by name."""

import pytest
import torch
from l0_calibrate import BUILTIN_LOSSES, get_loss
from l0_core import available

EST = torch.tensor([0.0, 5.0, 12.0, -3.0, 40.0], dtype=torch.float64)
TGT = torch.tensor([0.0, 4.0, 9.0, -1.0, 1.0], dtype=torch.float64)


def test_relative_matches_the_published_formula_for_non_negative_targets():
    got = get_loss("relative")(EST, TGT)
    published = ((TGT - EST) / (TGT + 1)) ** 2
    ok = TGT >= 0
    torch.testing.assert_close(got[ok], published[ok])


def test_relative_stays_finite_for_a_target_of_minus_one():
    got = get_loss("relative")(EST, TGT)
    assert torch.isfinite(got).all()
    assert got[3].item() == pytest.approx(((-3.0 + 1.0) / 2.0) ** 2)


def test_mse_is_the_squared_difference():
    torch.testing.assert_close(get_loss("mse")(EST, TGT), (EST - TGT) ** 2)


def test_capped_relative_is_quadratic_up_to_100_percent_then_linear():
    got = get_loss("capped_relative")(EST, TGT)
    e = ((EST - TGT) / (TGT.abs() + 1)).abs()
    expected = torch.where(e <= 1, e**2, 2 * e - 1)
    torch.testing.assert_close(got, expected)
    assert got[4].item() == pytest.approx(2 * 39 / 2 - 1)


def test_microcalibrate_loss_is_its_published_form():
    got = get_loss("microcalibrate")(EST, TGT)
    torch.testing.assert_close(got, ((EST - TGT + 1) / (TGT.abs() + 1)) ** 2)


def test_builtin_losses_are_registered_through_the_plugin_hook():
    assert set(BUILTIN_LOSSES) <= set(available("losses"))


def test_unknown_loss_names_raise_and_callables_pass_through():
    with pytest.raises(ValueError, match="unknown loss 'huber' for loss_type"):
        get_loss("huber")

    def fn(e, t):
        return e - t

    assert get_loss(fn) is fn
