"""``CSR``: products, transforms and reductions against SciPy/NumPy float64 references.

x64 is enabled for the whole suite (tests/conftest.py), so values are float64 and the sums are
compared with ``rtol=1e-12`` (``atol=1e-12`` for entries near zero): both sides add the same
products, the bucketed product in the same (column) order as SciPy but possibly with fused
multiply-adds, the segment-sum one in whatever order XLA's scatter uses, so differences are a
few ulps at most.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp
from sparse_cases import MATRICES, random_matrix, zero_matrix

import dp2ejax
from dp2ejax.sparse import CSR

TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(params=sorted(MATRICES))
def scipy_matrix(request):
    return random_matrix(**MATRICES[request.param])


def both_products(m):
    """The matrix with the bucketed product and with the segment-sum product."""
    a = CSR.from_scipy(m)
    assert a.buckets is not None
    return {"buckets": a, "segments": a.without_buckets()}


def operands(n_cols, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n_cols), rng.standard_normal((n_cols, 5))]


def test_matmul_matches_scipy(scipy_matrix):
    for name, a in both_products(scipy_matrix).items():
        assert a.dtype == jnp.float64
        for x in operands(scipy_matrix.shape[1]):
            got = np.asarray(a @ x)
            assert got.shape == (scipy_matrix.shape[0],) + x.shape[1:], name
            np.testing.assert_allclose(got, scipy_matrix @ x, **TOL, err_msg=name)


def test_matmul_zero_matrix_and_zero_rows():
    for m in (zero_matrix(), zero_matrix(0, 4), zero_matrix(5, 0)):
        for a in both_products(m).values():
            x = np.ones((m.shape[1], 3))
            np.testing.assert_array_equal(np.asarray(a @ x), np.zeros((m.shape[0], 3)))
            np.testing.assert_array_equal(np.asarray(jax.jit(lambda a, x: a @ x)(a, x)),
                                          np.zeros((m.shape[0], 3)))


def test_padded_terms_ignore_inf_and_nan_in_x():
    """Rows padded to their bucket's width read column 0 of x: the mask keeps inf/NaN there
    out of rows that do not store column 0."""
    m = random_matrix(30, 12, 0.6, seed=5, empty_cols=(0,))
    a = CSR.from_scipy(m)
    assert a.buckets.padded_terms > a.nnz
    x = np.ones((12, 2))
    x[0] = [np.inf, np.nan]
    got = np.asarray(a @ x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, m @ np.where(np.isfinite(x), x, 0), **TOL)


def test_constructors_round_trip(scipy_matrix):
    dense = scipy_matrix.toarray()
    for a in (CSR.from_scipy(scipy_matrix), CSR.from_dense(dense),
              CSR.from_scipy(scipy_matrix.tocoo()), CSR.from_scipy(sp.csc_matrix(dense))):
        assert a.shape == dense.shape and a.nnz == scipy_matrix.nnz
        np.testing.assert_array_equal(np.asarray(a.todense()), dense)
        np.testing.assert_array_equal(a.to_scipy().toarray(), dense)
        assert a.indices.dtype == a.indptr.dtype == a.row_ids.dtype == jnp.int32
    assert CSR.from_dense(dense, dtype=np.float32).dtype == jnp.float32


def test_eye_and_diagonal():
    np.testing.assert_array_equal(np.asarray(CSR.eye(4).todense()), np.eye(4))
    m = random_matrix(7, 5, 0.5, seed=7)
    np.testing.assert_allclose(np.asarray(CSR.from_scipy(m).diagonal()), m.diagonal(), **TOL)
    np.testing.assert_allclose(np.asarray(CSR.from_scipy(m.T).diagonal()), m.diagonal(), **TOL)


def test_transpose_and_rmatmul(scipy_matrix):
    a = CSR.from_scipy(scipy_matrix)
    dense = scipy_matrix.toarray()
    t = a.T
    assert t.shape == dense.T.shape and t.buckets is not None
    np.testing.assert_array_equal(np.asarray(t.todense()), dense.T)
    np.testing.assert_array_equal(t.to_scipy().toarray(), dense.T)  # indices sorted per row
    np.testing.assert_array_equal(np.asarray(t.indptr), sp.csr_array(dense.T).indptr)
    np.testing.assert_array_equal(np.asarray(a.T.T.todense()), dense)
    jitted = jax.jit(lambda a: a.T)(a)
    assert jitted.buckets is None and a.transpose(buckets=False).buckets is None
    for name, field in (("indices", "indices"), ("indptr", "indptr"), ("data", "data")):
        np.testing.assert_array_equal(np.asarray(getattr(jitted, field)),
                                      np.asarray(getattr(t, field)), err_msg=name)
    for x in operands(scipy_matrix.shape[0], seed=1):
        np.testing.assert_allclose(np.asarray(t @ x), dense.T @ x, **TOL)
        np.testing.assert_allclose(np.asarray(x.T @ a), x.T @ dense, **TOL)
        np.testing.assert_allclose(np.asarray(a.rmatmul(jnp.asarray(x.T))), x.T @ dense, **TOL)


def test_reductions_and_scaling(scipy_matrix):
    a = CSR.from_scipy(scipy_matrix)
    dense = scipy_matrix.toarray()
    rng = np.random.default_rng(2)
    dl, dr = rng.standard_normal(dense.shape[0]), rng.standard_normal(dense.shape[1])
    np.testing.assert_allclose(np.asarray(a.row_sums()), dense.sum(1), **TOL)
    np.testing.assert_allclose(np.asarray(a.col_sums()), dense.sum(0), **TOL)
    np.testing.assert_allclose(np.asarray(a.scale_rows(dl).todense()), dl[:, None] * dense, **TOL)
    np.testing.assert_allclose(np.asarray(a.scale_cols(dr).todense()), dense * dr, **TOL)
    sym = jax.jit(lambda a, dl, dr: a.scale_rows(dl).scale_cols(dr) @ jnp.ones(dr.shape))
    np.testing.assert_allclose(np.asarray(sym(a, dl, dr)), (dl[:, None] * dense * dr).sum(1),
                               **TOL)
    assert a.scale_rows(dl).buckets is a.buckets and a.astype(jnp.float32).buckets is a.buckets


def test_row_normalize_empty_and_zero_sum_rows():
    dense = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, -2.0, 0.0], [0.0, 0.0, 5.0]])
    got = np.asarray(CSR.from_dense(dense).row_normalize().todense())
    sums = dense.sum(1, keepdims=True)
    expected = np.where(sums != 0, dense / np.where(sums != 0, sums, 1), dense)
    np.testing.assert_allclose(got, expected, **TOL)
    assert not np.isnan(got).any()
    m = random_matrix(23, 11, 0.3, seed=1, empty_rows=(0, 5))
    normalized = jax.jit(CSR.row_normalize)(CSR.from_scipy(abs(m)))
    row_sums = np.asarray(normalized.row_sums())
    np.testing.assert_allclose(row_sums, np.where(abs(m).sum(1) > 0, 1.0, 0.0), **TOL)


def test_jit_and_vmap_over_dense_operand(scipy_matrix):
    a = CSR.from_scipy(scipy_matrix)
    xs = np.random.default_rng(3).standard_normal((3, scipy_matrix.shape[1], 4))
    expected = np.stack([scipy_matrix @ x for x in xs])
    for b in (a, a.without_buckets()):
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a, x: a @ x)(b, xs[0])),
                                   expected[0], **TOL)
        np.testing.assert_allclose(np.asarray(jax.vmap(lambda x, b=b: b @ x)(xs)), expected,
                                   **TOL)
        np.testing.assert_allclose(
            np.asarray(jax.jit(jax.vmap(lambda a, x: a @ x, in_axes=(None, 0)))(b, xs)),
            expected, **TOL)


@pytest.mark.parametrize("case", ["rect_tall", "rect_wide"])  # padded, then chunked buckets
def test_grad_wrt_data_and_operand(case):
    """Gradients of a scalar loss through ``with_data(...) @ x`` equal those of the same loss
    on the dense matrix (``A_ij`` for stored (i, j) is ``data``; duplicates are summed)."""
    scipy_matrix = random_matrix(**MATRICES[case])
    a = CSR.from_scipy(scipy_matrix)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((scipy_matrix.shape[1], 3))
    w = rng.standard_normal((scipy_matrix.shape[0], 3))
    rows, cols = np.asarray(a.row_ids), np.asarray(a.indices)

    def loss_dense(data, x):
        dense = jnp.zeros(a.shape).at[rows, cols].add(data)
        return jnp.sum(jnp.sin(dense @ x) * w)

    expected = jax.grad(loss_dense, argnums=(0, 1))(a.data, x)
    for b in (a, a.without_buckets()):
        def loss(data, x, b=b):
            return jnp.sum(jnp.sin(b.with_data(data) @ x) * w)

        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(b.data, x)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), **TOL)
    if case != "rect_tall":
        return
    # through the transforms: row_normalize and scale_cols
    d = rng.random(scipy_matrix.shape[1]) + 0.5
    got = jax.grad(lambda data: jnp.sum(a.with_data(data).scale_cols(d).row_normalize() @ x))
    ref = jax.grad(lambda data: jnp.sum(
        (lambda m: m / jnp.where(m.sum(1, keepdims=True) != 0, m.sum(1, keepdims=True), 1))(
            jnp.zeros(a.shape).at[rows, cols].add(data) * d) @ x))
    data = jnp.abs(a.data) + 0.1
    np.testing.assert_allclose(np.asarray(got(data)), np.asarray(ref(data)), rtol=1e-10,
                               atol=1e-12)


def test_pytree_round_trip():
    a = CSR.from_scipy(random_matrix(9, 150, 0.1, seed=2, dense_rows=(2,)))
    leaves, treedef = jax.tree_util.tree_flatten(a)
    assert len(leaves) == 4 + 4 * len(a.buckets.widths)
    b = jax.tree_util.tree_unflatten(treedef, leaves)
    assert b.shape == a.shape and b.buckets.full_widths == a.buckets.full_widths
    x = np.ones(150)
    np.testing.assert_array_equal(np.asarray(b @ x), np.asarray(a @ x))
    plain = a.without_buckets()
    leaves, treedef = jax.tree_util.tree_flatten(plain)
    assert len(leaves) == 4
    assert jax.tree_util.tree_unflatten(treedef, leaves).buckets is None
    assert dataclasses.replace(a).shape == a.shape


def test_emulate_bf16_result_is_representable():
    m = random_matrix(23, 11, 0.3, seed=1, empty_rows=(0,))
    a = CSR.from_scipy(m, dtype=np.float32)
    x = np.random.default_rng(5).standard_normal((11, 4)).astype(np.float32)
    for b in (a, a.without_buckets()):
        y = np.asarray(jax.jit(dp2ejax.emulate(lambda x, b=b: b @ x, "bf16"))(x))
        assert y.dtype == np.float32
        np.testing.assert_array_equal(np.float32(y.astype(ml_dtypes.bfloat16)), y)
        np.testing.assert_allclose(y, m @ x, rtol=0.05, atol=0.05)  # bf16: 8 significant bits


def test_errors_name_the_argument():
    a = CSR.from_scipy(random_matrix(5, 4, 0.5, seed=0))
    with pytest.raises(ValueError, match=r"x: expected shape \[4\] or \[4, k\].*got \(5, 2\)"):
        a @ np.ones((5, 2))
    with pytest.raises(ValueError, match=r"x: expected shape"):
        a @ np.ones((4, 2, 2))
    with pytest.raises(ValueError, match=r"x: expected shape \[5\] or \[m, 5\]"):
        np.ones(4) @ a
    with pytest.raises(TypeError, match="x: expected a dense array, got CSR"):
        a @ a
    with pytest.raises(ValueError, match="matrix: expected a 2-D array"):
        CSR.from_dense(np.ones(3))
    with pytest.raises(TypeError, match="matrix: expected a scipy.sparse matrix or array, got "
                                        "ndarray"):
        CSR.from_scipy(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"data: expected shape \[" + str(a.nnz)):
        a.with_data(np.ones(a.nnz + 1))
    with pytest.raises(ValueError, match=r"d: expected shape \[5\] \(one factor per row\)"):
        a.scale_rows(np.ones(4))
    with pytest.raises(ValueError, match=r"d: expected shape \[4\] \(one factor per column\)"):
        a.scale_cols(np.ones(5))
    with pytest.raises(TypeError, match="row_normalize: expected floating-point data, got int"):
        CSR.from_dense(np.array([[1, 2], [0, 3]])).row_normalize()
    with pytest.raises(ValueError, match="with_buckets: the structure"):
        jax.jit(lambda a: a.without_buckets().with_buckets())(a)


def test_integer_matrix_multiplies():
    a = CSR.from_dense(np.array([[1, 2], [0, 3]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(a @ np.array([1, 1], np.int32)), [3, 3])
