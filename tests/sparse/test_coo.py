"""``COO``: duplicates summed in every product and conversion, against SciPy float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from sparse_cases import random_matrix

from dp2ejax.sparse import COO, CSR

TOL = dict(rtol=1e-12, atol=1e-12)  # float64 sums of the same products (see test_csr.py)


def with_duplicates(seed=0, n_rows=13, n_cols=7, nnz=60):
    """Triplets that repeat positions (and leave some rows and columns empty)."""
    rng = np.random.default_rng(seed)
    row = rng.integers(0, n_rows - 2, nnz)  # the last two rows are empty
    col = rng.integers(1, n_cols, nnz)  # column 0 is empty
    row[:10], col[:10] = 3, 4  # one position ten times
    data = rng.standard_normal(nnz)
    return row, col, data, (n_rows, n_cols)


def reference(row, col, data, shape):
    return sp.coo_array((data, (row, col)), shape=shape).tocsr()  # SciPy sums duplicates


def test_duplicates_summed_everywhere():
    row, col, data, shape = with_duplicates()
    ref = reference(row, col, data, shape)
    a = COO.from_triplets(row, col, data, shape)
    assert a.nnz == 60 and a.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(a.todense()), ref.toarray(), **TOL)
    x = np.random.default_rng(1).standard_normal((shape[1], 4))
    for operand in (x, x[:, 0]):
        np.testing.assert_allclose(np.asarray(a @ operand), ref @ operand, **TOL)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a, x: a @ x)(a, operand)),
                                   ref @ operand, **TOL)
    csr = a.to_csr()
    assert isinstance(csr, CSR) and csr.nnz == ref.nnz < a.nnz
    np.testing.assert_allclose(np.asarray(csr @ x), ref @ x, **TOL)
    np.testing.assert_allclose(a.to_scipy().toarray(), ref.toarray(), **TOL)
    assert a.to_scipy().nnz == 60  # kept as given
    np.testing.assert_allclose(np.asarray(a.T @ np.ones(shape[0])), ref.T @ np.ones(shape[0]),
                               **TOL)


def test_constructors_and_pytree():
    m = random_matrix(8, 5, 0.4, seed=3, empty_rows=(2,))
    dense = m.toarray()
    for a in (COO.from_scipy(m), COO.from_dense(dense), COO.from_scipy(sp.coo_array(m))):
        assert a.shape == (8, 5) and a.nnz == m.nnz
        np.testing.assert_array_equal(np.asarray(a.todense()), dense)
    a = COO.from_scipy(m)
    leaves, treedef = jax.tree_util.tree_flatten(a)
    assert len(leaves) == 3
    b = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(np.asarray(b.todense()), dense)
    empty = COO.from_triplets(np.zeros(0, int), np.zeros(0, int), np.zeros(0), (3, 2))
    np.testing.assert_array_equal(np.asarray(empty @ np.ones((2, 2))), np.zeros((3, 2)))
    np.testing.assert_array_equal(np.asarray(empty.to_csr().todense()), np.zeros((3, 2)))


def test_vmap_and_grad():
    row, col, data, shape = with_duplicates(seed=4)
    a = COO.from_triplets(row, col, data, shape)
    xs = np.random.default_rng(5).standard_normal((3, shape[1], 2))
    ref = reference(row, col, data, shape)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda x: a @ x)(xs)),
                               np.stack([ref @ x for x in xs]), **TOL)

    def loss(data, x):
        return jnp.sum(jnp.cos(COO(a.row, a.col, data, a.shape) @ x))

    def loss_dense(data, x):
        return jnp.sum(jnp.cos(jnp.zeros(shape).at[row, col].add(data) @ x))

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(a.data, xs[0])
    expected = jax.grad(loss_dense, argnums=(0, 1))(a.data, xs[0])
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), **TOL)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="row, col, data: expected equal lengths, got 3, 2, 3"):
        COO.from_triplets([0, 1, 2], [0, 1], [1.0, 2.0, 3.0], (3, 3))
    with pytest.raises(ValueError, match=r"col: expected indices in \[0, 3\)"):
        COO.from_triplets([0, 1], [0, 3], [1.0, 2.0], (3, 3))
    with pytest.raises(TypeError, match="row: expected integer indices, got float"):
        COO.from_triplets([0.0, 1.0], [0, 1], [1.0, 2.0], (3, 3))
    with pytest.raises(ValueError, match="data: expected a 1-D array"):
        COO.from_triplets([0, 1], [0, 1], [[1.0, 2.0]], (3, 3))
    with pytest.raises(ValueError, match="shape: expected"):
        COO.from_triplets([0], [0], [1.0], (3,))
    with pytest.raises(TypeError, match="matrix: expected a scipy.sparse"):
        COO.from_scipy([[1.0]])
    a = COO.from_triplets([0], [1], [1.0], (2, 3))
    with pytest.raises(ValueError, match=r"x: expected shape \[3\] or \[3, k\]"):
        a @ np.ones(2)
