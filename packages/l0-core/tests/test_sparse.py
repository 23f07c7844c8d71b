"""Tests of the shared sparse product (l0_core.sparse)."""

import subprocess
import sys
import warnings

import l0_core.sparse as sparse_mod
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from l0_core import SparseOperator, as_sparse_operator, sparse_matvec


def random_matrix(n_rows=7, n_cols=11, density=0.4, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    dense[:, 3] = 0.0  # an empty household column
    dense[2, :] = 0.0  # an empty target row
    return dense


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        sp.csr_array,
        sp.csc_array,
        sp.lil_matrix,
        lambda d: torch.tensor(d),
        lambda d: torch.tensor(d).to_sparse(),
        lambda d: torch.tensor(d).to_sparse_csr(),
        lambda d: torch.tensor(d).to_sparse_csc(),
        lambda d: d,
    ],
    ids=[
        "csr",
        "csc",
        "coo",
        "csr_array",
        "csc_array",
        "lil",
        "dense_torch",
        "torch_coo",
        "torch_csr",
        "torch_csc",
        "numpy",
    ],
)
def test_products_match_the_dense_matrix_for_every_input_format(convert):
    dense = random_matrix()
    op = SparseOperator.from_any(convert(dense), dtype=torch.float64)
    w = torch.linspace(-1.0, 2.0, dense.shape[1], dtype=torch.float64)
    r = torch.linspace(0.5, -3.0, dense.shape[0], dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(w).numpy(), dense @ w.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(r).numpy(), dense.T @ r.numpy(), rtol=1e-12, atol=1e-12)


def test_float32_products_match_the_float64_dense_product_to_float32_precision():
    dense = random_matrix(30, 50, seed=1)
    op = SparseOperator.from_any(sp.csr_matrix(dense))
    assert op.dtype == torch.float32
    w = torch.rand(50, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(
        op.matvec(w).numpy(), dense @ w.double().numpy(), rtol=1e-5, atol=1e-5
    )


def test_duplicate_entries_are_summed_and_the_callers_matrix_is_untouched():
    rows = np.array([0, 0, 1, 0])
    cols = np.array([2, 2, 0, 1])
    data = np.array([1.0, 2.5, -1.0, 4.0])
    coo = sp.coo_matrix((data, (rows, cols)), shape=(2, 3))
    csc = sp.csc_matrix((data.copy(), (rows, cols)), shape=(2, 3))
    csc.has_canonical_format = False  # scipy already summed; force the non-canonical path
    csc_before = (csc.data.copy(), csc.indices.copy(), csc.indptr.copy())
    for matrix in (coo, csc):
        op = SparseOperator.from_any(matrix, dtype=torch.float64)
        np.testing.assert_allclose(op.to_dense().numpy(), coo.toarray())
    np.testing.assert_array_equal(coo.data, data)
    np.testing.assert_array_equal(csc.data, csc_before[0])
    np.testing.assert_array_equal(csc.indices, csc_before[1])


def test_operator_owns_its_arrays_so_later_edits_of_the_input_do_not_leak_in():
    csc = sp.csc_matrix(random_matrix())
    op = SparseOperator.from_any(csc, dtype=torch.float64)
    before = op.to_dense().clone()
    csc.data[:] = 99.0
    torch.testing.assert_close(op.to_dense(), before)


def test_indices_are_int32_when_they_fit():
    op = SparseOperator.from_any(sp.random(5, 8, density=0.5, random_state=0))
    assert op.csr_t.col_indices().dtype == torch.int32
    assert op.csr.crow_indices().dtype == torch.int32


def test_chunked_transpose_and_scatter_match_the_dense_product(monkeypatch):
    monkeypatch.setattr(sparse_mod, "_CHUNK_NNZ", 7)  # many chunks, some households straddling
    dense = random_matrix(13, 40, density=0.5, seed=3)
    op_two = SparseOperator.from_any(dense, dtype=torch.float64)
    op_one = SparseOperator.from_any(dense, dtype=torch.float64, transpose_copy=False)
    np.testing.assert_array_equal(op_two.csr.to_dense().numpy(), dense)
    # CSR(M) must be canonical: column indices ascending within each row.
    crow, col = op_two.csr.crow_indices(), op_two.csr.col_indices()
    for i in range(13):
        seg = col[crow[i] : crow[i + 1]]
        assert bool((seg[1:] > seg[:-1]).all())
    w = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(op_one.matvec(w).numpy(), dense @ w.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op_two.matvec(w).numpy(), dense @ w.numpy(), rtol=1e-12, atol=1e-12)


def test_low_memory_mode_stores_one_copy_and_gives_the_same_products():
    dense = random_matrix(20, 30, seed=4)
    two = SparseOperator.from_any(dense)
    one = SparseOperator.from_any(dense, transpose_copy=False)
    assert one.csr is None
    assert one.nbytes < two.nbytes
    w = torch.rand(30)
    torch.testing.assert_close(one.matvec(w), two.matvec(w), rtol=1e-6, atol=1e-6)


def test_sparse_matvec_gradient_equals_the_dense_autograd_gradient():
    dense = torch.tensor(random_matrix(9, 12, seed=5))
    op = SparseOperator.from_any(dense, dtype=torch.float64)
    for shape in ((12,), (12, 4)):
        w1 = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        w2 = w1.detach().clone().requires_grad_(True)
        upstream = torch.randn(9, *shape[1:], dtype=torch.float64)
        (sparse_matvec(op, w1) * upstream).sum().backward()
        ((dense @ w2) * upstream).sum().backward()
        torch.testing.assert_close(w1.grad, w2.grad)


def test_matmul_operator_is_differentiable():
    op = SparseOperator.from_any(np.array([[1.0, 2.0], [0.0, 3.0]]))
    w = torch.ones(2, requires_grad=True)
    (op @ w).sum().backward()
    assert w.grad.tolist() == [1.0, 5.0]


def test_two_matrices_of_the_same_shape_give_their_own_products():
    a = SparseOperator.from_any(sp.csr_matrix(np.eye(3)))
    b = SparseOperator.from_any(sp.csr_matrix(2 * np.eye(3)))
    w = torch.ones(3)
    assert a.matvec(w).tolist() == [1.0, 1.0, 1.0]
    assert b.matvec(w).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_a_value_error_naming_the_argument(bad):
    dense = np.eye(3)
    dense[1, 2] = bad
    with pytest.raises(ValueError, match="estimate_matrix contains 1 NaN or infinite"):
        SparseOperator.from_any(sp.csr_matrix(dense), argument="estimate_matrix")
    with pytest.raises(ValueError, match="M contains 1 NaN or infinite"):
        SparseOperator.from_any(torch.tensor(dense))


def test_values_that_overflow_float32_are_reported_as_infinite():
    with pytest.raises(ValueError, match="M contains 1 NaN or infinite"):
        SparseOperator.from_any(sp.csr_matrix(np.array([[1e300, 1.0]])))


def test_wrong_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="M must be a scipy.sparse matrix"):
        SparseOperator.from_any("not a matrix")
    with pytest.raises(ValueError, match="M must be 2-D"):
        SparseOperator.from_any(torch.ones(3))
    with pytest.raises(TypeError, match="must be numeric"):
        SparseOperator.from_any(np.array([["a", "b"]]))
    op = SparseOperator.from_any(np.eye(3))
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        op.matvec(torch.ones(4))
    with pytest.raises(ValueError, match=r"r must have shape \(3,\)"):
        op.rmatvec(torch.ones(2))


def test_select_columns_keeps_the_given_columns_in_order():
    dense = random_matrix(5, 9, seed=6)
    op = SparseOperator.from_any(dense, dtype=torch.float64)
    sub = op.select_columns(torch.tensor([8, 0, 3, 5]))
    np.testing.assert_array_equal(sub.to_dense().numpy(), dense[:, [8, 0, 3, 5]])
    np.testing.assert_array_equal(sub.csr.to_dense().numpy(), dense[:, [8, 0, 3, 5]])


def test_nnz_per_row_and_column_and_nbytes_count_the_stored_entries():
    dense = random_matrix(6, 10, seed=7)
    op = SparseOperator.from_any(dense)
    assert op.nnz == int((dense != 0).sum())
    assert op.column_nnz().tolist() == (dense != 0).sum(axis=0).tolist()
    assert op.row_nnz().tolist() == (dense != 0).sum(axis=1).tolist()
    # two copies, each 4 B value + 4 B index per non-zero, plus the two indptr arrays
    assert op.nbytes == 2 * 8 * op.nnz + 4 * (6 + 1) + 4 * (10 + 1)


def test_to_changes_dtype_and_keeps_both_copies():
    op = as_sparse_operator(random_matrix()).to(dtype=torch.float64)
    assert op.dtype == torch.float64 and op.csr.dtype == torch.float64


@pytest.mark.slow
def test_torch_input_does_not_import_scipy():
    code = (
        "import sys, torch; from l0_core import SparseOperator; "
        "SparseOperator.from_any(torch.eye(3)).matvec(torch.ones(3)); "
        "assert 'scipy' not in sys.modules, 'scipy was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_products_match_the_cpu_products():
    dense = random_matrix(50, 80, seed=8)
    cpu = SparseOperator.from_any(dense, dtype=torch.float64)
    gpu = SparseOperator.from_any(dense, dtype=torch.float64, device="cuda")
    w = torch.randn(80, dtype=torch.float64)
    r = torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(gpu.matvec(w.cuda()).cpu(), cpu.matvec(w))
    torch.testing.assert_close(gpu.rmatvec(r.cuda()).cpu(), cpu.rmatvec(r))


@pytest.mark.parametrize("source", ["scipy", "torch"])
def test_forward_copy_in_column_blocks_gives_the_dense_product(monkeypatch, source):
    monkeypatch.setattr(
        sparse_mod, "FORWARD_BLOCK_COLS", 7
    )  # 40 columns -> 6 blocks, the last short
    dense = random_matrix(13, 40, density=0.5, seed=9)
    matrix = sp.csc_matrix(dense) if source == "scipy" else torch.tensor(dense)
    op = SparseOperator.from_any(matrix, dtype=torch.float64)
    assert [h0 for h0, _ in op.csr_blocks] == [0, 7, 14, 21, 28, 35]
    assert op.csr is None and op.has_forward_copy
    for h0, block in op.csr_blocks:
        np.testing.assert_array_equal(block.to_dense().numpy(), dense[:, h0 : h0 + block.shape[1]])
    w = torch.randn(40, 2, dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(w).numpy(), dense @ w.numpy(), rtol=1e-12, atol=1e-12)
    assert op.nbytes == 2 * 12 * op.nnz + 4 * (40 + 1) + 4 * 6 * (13 + 1)
    moved = op.to(dtype=torch.float32)
    np.testing.assert_allclose(
        moved.matvec(w[:, 0].float()).numpy(), dense @ w[:, 0].numpy(), rtol=1e-5, atol=1e-5
    )


def _bad_scipy(kind):
    if kind == "coo-col":
        m = sp.coo_matrix((np.ones(2), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 3))
        m.col[1] = 99  # corrupted after construction: scipy no longer checks
        return m, r"its column indices contain the index 99, out of range for size 3"
    if kind == "coo-row":
        m = sp.coo_matrix((np.ones(2), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 3))
        m.row[0] = -4
        return m, r"its row indices contain the negative index -4"
    if kind == "csr-col":
        m = sp.csr_matrix((np.ones(2), np.array([0, 99]), np.array([0, 1, 2])), shape=(2, 3))
        return m, r"its column indices contain the index 99, out of range for size 3"
    if kind == "csr-negative":
        m = sp.csr_matrix((np.ones(2), np.array([0, -1]), np.array([0, 1, 2])), shape=(2, 3))
        return m, r"its column indices contain the negative index -1"
    if kind == "csr-indptr":
        m = sp.csr_matrix((np.ones(2), np.array([0, 1]), np.array([0, 2, 1])), shape=(2, 3))
        return m, r"its indptr is not non-decreasing"
    m = sp.csc_matrix((np.ones(2), np.array([0, 7]), np.array([0, 1, 2, 2])), shape=(2, 3))
    return m, r"its row indices contain the index 7, out of range for size 2"


@pytest.mark.parametrize(
    "kind", ["coo-col", "coo-row", "csr-col", "csr-negative", "csr-indptr", "csc-row"]
)
def test_a_scipy_matrix_with_bad_indices_is_refused_by_name_not_a_crash(kind):
    matrix, message = _bad_scipy(kind)
    with pytest.raises(ValueError, match=f"^W is not a valid sparse matrix: {message}"):
        SparseOperator.from_any(matrix, argument="W")


def _bad_torch(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "coo":
            t = torch.sparse_coo_tensor(torch.tensor([[0, 1], [0, 99]]), torch.ones(2), (2, 3))
            return t, r"its column indices contain the index 99"
        if kind == "coo-negative":
            t = torch.sparse_coo_tensor(torch.tensor([[0, 1], [0, 1]]), torch.ones(2), (2, 3))
            t._indices()[0, 1] = -1
            return t, r"its row indices contain the negative index -1"
        if kind == "csr":
            t = torch.sparse_csr_tensor(
                torch.tensor([0, 1, 2]), torch.tensor([0, 99]), torch.ones(2), (2, 3)
            )
            return t, r"its col_indices contain the index 99"
        t = torch.sparse_csr_tensor(
            torch.tensor([0, 2, 1]), torch.tensor([0, 1]), torch.ones(2), (2, 3)
        )
        return t, r"its crow_indices is not non-decreasing"


@pytest.mark.parametrize("kind", ["coo", "coo-negative", "csr", "csr-indptr"])
def test_a_torch_sparse_tensor_with_bad_indices_is_refused_by_name_not_a_crash(kind):
    matrix, message = _bad_torch(kind)
    with pytest.raises(ValueError, match=f"^M is not a valid sparse matrix: {message}"):
        as_sparse_operator(matrix)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_operators_are_refused_by_name_and_half_inputs_are_converted(dtype):
    with pytest.raises(TypeError, match=rf"dtype={dtype} is not supported for a SparseOperator"):
        as_sparse_operator(np.eye(3), dtype=dtype)
    op = as_sparse_operator(torch.eye(3, dtype=dtype) * 2)  # values converted to float32
    assert op.matvec(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]


def test_a_list_of_lists_is_a_type_error_that_says_how_to_convert_it():
    with pytest.raises(
        TypeError, match=r"got list; convert it with numpy.asarray\(M, dtype=float\)"
    ):
        as_sparse_operator([[1.0, 0.0], [0.0, 1.0]])


def test_an_unusable_device_is_refused_by_name():
    with pytest.raises(ValueError, match="device must name a torch device"):
        as_sparse_operator(np.eye(2), device="gpu0")


def test_a_float64_csr_input_is_narrowed_before_its_transposition_without_touching_the_caller(monkeypatch):
    import scipy.sparse as sp
    from l0_core import _sparse_build

    rng = np.random.default_rng(0)
    M = sp.random(30, 50, density=0.2, random_state=1, format="csr")
    M.data[:] = rng.lognormal(0.0, 2.0, M.nnz)  # values that round differently in float32
    before = (M.data.copy(), M.indices.copy(), M.indptr.copy())
    seen = []
    real = _sparse_build.narrowed_csr

    def spy(matrix, dtype):
        out = real(matrix, dtype)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(_sparse_build, "narrowed_csr", spy)
    op = SparseOperator.from_any(M, dtype=torch.float32)
    assert seen == [np.float32]  # the transposition ran on float32 values
    np.testing.assert_array_equal(op.to_dense().numpy(), M.toarray().astype(np.float32))
    for a, b in zip(before, (M.data, M.indices, M.indptr), strict=True):
        np.testing.assert_array_equal(a, b)
    assert M.dtype == np.float64
    op64 = SparseOperator.from_any(M, dtype=torch.float64)
    assert seen[-1] == np.float64
    np.testing.assert_array_equal(op64.to_dense().numpy(), M.toarray())
