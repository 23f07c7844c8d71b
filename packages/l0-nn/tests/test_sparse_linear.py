import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_nn import SparseL0Linear

TRUE_COEF = np.array([1.0, 0.0, -2.0, 0.0])


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(
        n, 4, density=0.5, format="csr", random_state=seed + 1, data_rvs=rng.standard_normal
    )
    y = X @ TRUE_COEF + 0.5 + 0.01 * rng.standard_normal(n)
    return X, y


def _fit(X, y, **kw):
    return SparseL0Linear(4, seed=0).fit(
        X, y, lambda_l0=0.02, lr=0.05, epochs=200, gate_lr=0.1, **kw
    )


def test_true_coefficients_one_zero_minus_two_zero_are_recovered_with_exact_zeros(single_thread):
    X, y = _data()
    model = _fit(X, y)
    coef = model.get_coefficients()
    assert coef[1].item() == 0.0 and coef[3].item() == 0.0
    assert coef[0].item() == pytest.approx(1.0, abs=0.05)
    assert coef[2].item() == pytest.approx(-2.0, abs=0.05)
    assert model.intercept == pytest.approx(0.5, abs=0.05)
    assert model.get_selected_features().tolist() == [0, 2]


def test_a_new_matrix_of_the_same_shape_gets_its_own_prediction(single_thread):
    X, y = _data()
    model = _fit(X, y)
    X2, _ = _data(seed=7)
    assert X2.shape == X.shape and X2.nnz != 0
    expected = X2.toarray() @ model.get_coefficients().double().numpy() + model.intercept
    assert np.allclose(
        model.predict(X).numpy(),
        X.toarray() @ model.get_coefficients().double().numpy() + model.intercept,
        atol=1e-4,
    )
    assert np.allclose(model.predict(X2).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csr_array,
        sp.csc_array,
        lambda X: sp.coo_matrix(X),
        lambda X: torch.from_numpy(X.toarray()).to_sparse(),
        lambda X: torch.from_numpy(X.toarray()).to_sparse_csr(),
        lambda X: torch.from_numpy(X.toarray()),
    ],
    ids=["csr_matrix", "csr_array", "csc_array", "coo_matrix", "torch_coo", "torch_csr", "dense"],
)
def test_predictions_agree_across_scipy_and_torch_input_types(convert, single_thread):
    X, y = _data(n=50)
    model = SparseL0Linear(4, seed=0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model.gates.log_alpha.fill_(10.0)
        model.bias.fill_(0.25)
    z = model.gates.deterministic().detach().double().numpy()
    expected = X.toarray() @ (np.array([1.0, 2.0, 3.0, 4.0]) * z) + 0.25
    assert np.allclose(model.predict(convert(X)).numpy(), expected, atol=1e-5)


def test_two_fits_with_the_same_seed_are_bit_identical(single_thread):
    X, y = _data(n=100)
    a = SparseL0Linear(4, seed=3).fit(X, y, epochs=30)
    b = SparseL0Linear(4, seed=3).fit(X, y, epochs=30)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.gates.log_alpha, b.gates.log_alpha)


def test_fit_does_not_modify_the_input_matrix(single_thread):
    X, y = _data(n=60)
    before = X.copy()
    _fit(X, y)
    assert (X != before).nnz == 0


def test_a_matrix_with_the_wrong_number_of_columns_is_rejected():
    with pytest.raises(ValueError, match="X has 3 columns but the model has n_features=4"):
        SparseL0Linear(4).predict(sp.csr_array(np.ones((2, 3))))


def test_targets_of_the_wrong_length_are_rejected():
    X, _ = _data(n=20)
    with pytest.raises(ValueError, match="y has 19 values but X has 20 rows"):
        SparseL0Linear(4).fit(X, np.zeros(19))


def test_non_finite_targets_are_rejected():
    X, _ = _data(n=5)
    with pytest.raises(ValueError, match="y contains NaN"):
        SparseL0Linear(4).fit(X, np.array([0.0, 1.0, np.nan, 0.0, 0.0]))


def test_a_negative_lambda_is_rejected():
    X, y = _data(n=5)
    with pytest.raises(ValueError, match=r"lambda_l0 must be >= 0\.0"):
        SparseL0Linear(4).fit(X, y, lambda_l0=-1.0)


def test_the_l0_penalty_is_the_expected_number_of_kept_features():
    model = SparseL0Linear(10, init_prob_active=0.3)
    assert model.l0_penalty().item() == pytest.approx(3.0, abs=0.05)  # 0.01 jitter on log_alpha


def test_init_keep_prob_and_init_prob_active_together_are_rejected():
    with pytest.raises(
        TypeError, match=r"SparseL0Linear\(\) got both init_prob_active and init_keep_prob"
    ):
        SparseL0Linear(4, init_prob_active=0.5, init_keep_prob=0.5)


def test_init_keep_prob_keeps_its_l0_python_06_meaning_and_warns():
    import math

    with pytest.warns(DeprecationWarning, match=r"init_keep_prob.*init_prob_active="):
        model = SparseL0Linear(200, init_keep_prob=0.3, temperature=0.5, seed=0)
    # l0-python 0.6 (and l0_calibrate): log_alpha = logit(init_keep_prob) (+ 0.01 jitter).
    assert model.gates.log_alpha.mean().item() == pytest.approx(math.log(0.3 / 0.7), abs=0.005)


@pytest.mark.slow
def test_importing_l0_nn_does_not_import_scipy():
    import subprocess
    import sys

    code = "import sys, l0_nn; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lambda_reg_is_a_deprecated_spelling_of_lambda_l0():
    X, y = _data(n=20)
    new = SparseL0Linear(4, seed=0).fit(X, y, lambda_l0=0.5, epochs=5).get_coefficients()
    with pytest.warns(DeprecationWarning, match="lambda_l0"):
        old = SparseL0Linear(4, seed=0).fit(X, y, lambda_reg=0.5, epochs=5).get_coefficients()
    assert torch.equal(old, new)


def test_lambda_reg_and_lambda_l0_together_are_rejected():
    X, y = _data(n=5)
    with pytest.raises(TypeError, match="both lambda_reg= and lambda_l0="):
        SparseL0Linear(4).fit(X, y, lambda_reg=0.1, lambda_l0=0.1)
