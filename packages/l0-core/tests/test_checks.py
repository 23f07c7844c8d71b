"""The shared argument checkers: types, ranges and messages."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from l0_core.checks import (
    check_choice,
    check_device,
    check_dtype,
    check_finite_tensor,
    check_float,
    check_generator,
    check_int,
    check_probability,
    check_seed,
    check_temperature,
    renamed_keywords,
)


def test_check_int_accepts_numpy_integers_and_returns_a_python_int() -> None:
    out = check_int(np.int64(4), "epochs", min_val=1)
    assert out == 4 and type(out) is int


@pytest.mark.parametrize("bad", [True, 2.0, "3", None])
def test_check_int_refuses_non_integers_by_name(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^epochs must be an int, got"):
        check_int(bad, "epochs")


def test_check_int_names_the_bound_and_the_hint() -> None:
    with pytest.raises(ValueError, match=r"^epochs must be >= 1, got 0; pass e.g. epochs=100$"):
        check_int(0, "epochs", min_val=1, hint="pass e.g. epochs=100")
    with pytest.raises(ValueError, match=r"^k must be <= 5, got 6$"):
        check_int(6, "k", max_val=5)


@pytest.mark.parametrize(
    ("boundaries", "ok", "bad"),
    [
        ("both", [0.0, 1.0], []),
        ("neither", [0.5], [0.0, 1.0]),
        ("left", [0.0], [1.0]),
        ("right", [1.0], [0.0]),
    ],
)
def test_check_float_respects_open_and_closed_bounds(
    boundaries: str, ok: list[float], bad: list[float]
) -> None:
    for v in ok:
        assert check_float(v, "x", min_val=0.0, max_val=1.0, include_boundaries=boundaries) == v
    for v in bad:
        with pytest.raises(ValueError, match="^x must be"):
            check_float(v, "x", min_val=0.0, max_val=1.0, include_boundaries=boundaries)


def test_check_float_refuses_nan_always_and_inf_unless_allowed() -> None:
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        check_float(float("nan"), "lr", allow_inf=True)
    with pytest.raises(ValueError, match="lr must be a finite number, got inf"):
        check_float(float("inf"), "lr")
    assert check_float(float("inf"), "lr", allow_inf=True) == float("inf")


def test_check_float_takes_a_zero_dim_tensor_and_refuses_text() -> None:
    assert check_float(torch.tensor(0.25), "t") == 0.25
    with pytest.raises(TypeError, match=r"t must be a number, got str"):
        check_float("0.25", "t")


def test_check_probability_is_open_by_default() -> None:
    assert check_probability(0.3, "p") == 0.3
    with pytest.raises(ValueError, match="p must be > 0.0"):
        check_probability(0.0, "p")


def test_check_choice_lists_the_options() -> None:
    with pytest.raises(ValueError, match=r"loss must be one of \['mse', 'relative'\], got 'msa'"):
        check_choice("msa", "loss", ("mse", "relative"))


def test_check_seed_refuses_negative_seeds() -> None:
    assert check_seed(None) is None
    with pytest.raises(ValueError, match="seed must be >= 0"):
        check_seed(-1)


def test_check_device_refuses_cuda_without_cuda() -> None:
    assert check_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert check_device("cuda").type == "cuda"
    else:
        with pytest.raises(
            ValueError, match=r"device='cuda' but this torch build or machine has no CUDA"
        ):
            check_device("cuda")
    with pytest.raises(ValueError, match="device must name a torch device"):
        check_device("gpu0")


def test_check_dtype_refuses_integer_dtypes() -> None:
    assert check_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(
        TypeError, match="dtype must be a floating point torch.dtype, got torch.int64"
    ):
        check_dtype(torch.int64)


def test_check_generator_refuses_a_generator_on_another_device_type() -> None:
    g = torch.Generator().manual_seed(0)
    assert check_generator(g, device="cpu") is g
    with pytest.raises(ValueError, match="generator lives on cpu but the work runs on meta"):
        check_generator(g, device="meta")
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        check_generator(0)


def test_check_finite_tensor_names_the_first_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"M must be finite, but entry \(1, 0\) is nan"):
        check_finite_tensor(torch.tensor([[1.0, 2.0], [float("nan"), 3.0]]), "M")
    x = torch.tensor([1, 2])
    assert check_finite_tensor(x, "idx") is x


def test_check_temperature_refuses_zero_negative_and_infinite_temperatures() -> None:
    assert check_temperature(0.1) == 0.1
    for bad, message in [
        (0.0, "> 0.0, got 0.0"),
        (-1, "> 0.0, got -1.0"),
        (float("inf"), "finite"),
    ]:
        with pytest.raises(ValueError, match=rf"^beta must be .*{message}.*; use e.g. 2/3$"):
            check_temperature(bad, "beta", hint="use e.g. 2/3")


# ------------------------------------------------------------- renamed keywords
def _renamed():
    @renamed_keywords(old_a="new_a")
    def func(x, *, new_a=1.0, other=0):
        return x, new_a, other

    return func


def test_renamed_keyword_old_spelling_warns_naming_the_new_one_and_is_passed_on():
    func = _renamed()
    with pytest.warns(DeprecationWarning, match=r"func\(old_a=\.\.\.\) is deprecated; pass new_a"):
        assert func(2, old_a=5.0, other=3) == (2, 5.0, 3)


def test_renamed_keyword_new_spelling_does_not_warn():
    func = _renamed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert func(2, new_a=5.0) == (2, 5.0, 0)


def test_renamed_keyword_both_spellings_raise_naming_both():
    with pytest.raises(TypeError, match="both old_a= and new_a="):
        _renamed()(2, old_a=1.0, new_a=2.0)


def test_renamed_keyword_signature_shows_the_new_names_only():
    assert list(inspect.signature(_renamed()).parameters) == ["x", "new_a", "other"]


def test_renamed_keywords_rejects_a_bad_new_name():
    with pytest.raises(ValueError, match="needs a new keyword name"):
        renamed_keywords(old="old")
