"""Tests for dp2ejax.graph.normalize against dense float64 NumPy references.

The reference builds ``A (+ I)``, its row sums (out-degrees) and column sums (in-degrees), and
applies each kind's formula with dense NumPy float64 arithmetic, zero scales for zero degrees.
The CSR results (float64, x64 is enabled in tests/conftest.py) are compared with ``rtol=1e-12``:
both sides compute the same few roundings per entry in a different order. The Laplacian is also
checked against networkx's ``normalized_laplacian_matrix``, an independent implementation.
"""

import dataclasses

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax.graph.normalize import (
    NORMALIZATION_KINDS,
    add_self_loops,
    degrees,
    normalized_adjacency,
)
from dp2ejax.sparse import CSR

KIND_SELF_LOOPS = [(k, None) for k in NORMALIZATION_KINDS] + [
    ("gcn", False), ("sym", True), ("random_walk", True), ("laplacian", True)
]


def _random_adjacency(n, density, *, directed, weighted, seed, isolated=()):
    rng = np.random.default_rng(seed)
    a = (rng.random((n, n)) < density).astype(np.float64)
    np.fill_diagonal(a, 0)
    if weighted:
        a *= rng.uniform(0.5, 2.0, (n, n))
    if not directed:
        a = np.triu(a, 1)
        a = a + a.T
    for i in isolated:
        a[i, :] = 0
        a[:, i] = 0
    return a


GRAPHS = {
    # node 3 and 7 isolated
    "undirected": _random_adjacency(12, 0.3, directed=False, weighted=False, seed=0,
                                    isolated=(3, 7)),
    "weighted": _random_adjacency(12, 0.3, directed=False, weighted=True, seed=1,
                                  isolated=(5,)),
    # node 2 has no out-edges (a sink), node 4 no in-edges (a source), node 9 neither
    "directed": _random_adjacency(12, 0.25, directed=True, weighted=True, seed=2,
                                  isolated=(9,)),
}
GRAPHS["directed"][2, :] = 0
GRAPHS["directed"][:, 4] = 0
GRAPHS["directed"][0, 4] = 0


def reference(a, kind, self_loops):
    """Dense float64 normalisation; zero degree -> zero scale."""
    if self_loops is None:
        self_loops = kind == "gcn"
    a = np.asarray(a, np.float64) + (np.eye(len(a)) if self_loops else 0)
    d_out, d_in = a.sum(1), a.sum(0)

    def power(d, p):
        out = np.zeros_like(d)
        out[d > 0] = d[d > 0] ** -p
        return out

    if kind == "random_walk":
        return power(d_out, 1)[:, None] * a
    sym = power(d_out, 0.5)[:, None] * a * power(d_in, 0.5)[None, :]
    if kind == "laplacian":
        return np.diag(((d_out > 0) | (d_in > 0)).astype(float)) - sym
    return sym


def _dense(m):
    return m.to_scipy().toarray()


def _csr(a):
    return CSR.from_dense(a, dtype=np.float64)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize(("kind", "self_loops"), KIND_SELF_LOOPS)
def test_matches_dense_reference(graph, kind, self_loops):
    a = GRAPHS[graph]
    out = normalized_adjacency(_csr(a), kind, self_loops=self_loops)
    assert isinstance(out, CSR)
    np.testing.assert_allclose(_dense(out), reference(a, kind, self_loops),
                               rtol=1e-12, atol=1e-15)
    assert np.all(np.isfinite(np.asarray(out.data)))


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize(("kind", "self_loops"), KIND_SELF_LOOPS)
def test_under_jit_with_stored_diagonal(graph, kind, self_loops):
    a = GRAPHS[graph]
    prepared = add_self_loops(_csr(a), 0.0)  # same matrix, diagonal stored
    fn = jax.jit(lambda m: normalized_adjacency(m, kind, self_loops=self_loops))
    out = fn(prepared)
    np.testing.assert_allclose(_dense(out), reference(a, kind, self_loops),
                               rtol=1e-12, atol=1e-15)
    eager = normalized_adjacency(prepared, kind, self_loops=self_loops)
    np.testing.assert_allclose(np.asarray(out.data), np.asarray(eager.data), rtol=1e-15)


@pytest.mark.parametrize("kind", ["sym", "random_walk"])
def test_under_jit_without_diagonal_for_kinds_that_keep_the_structure(kind):
    a = GRAPHS["directed"]
    csr = _csr(a)
    out = jax.jit(lambda m: normalized_adjacency(m, kind))(csr)
    assert out.nnz == csr.nnz
    np.testing.assert_allclose(_dense(out), reference(a, kind, False),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("convert", [np.asarray, sp.csr_array, sp.coo_matrix], ids=[
    "dense", "csr_array", "coo_matrix"])
def test_accepts_dense_and_scipy_inputs(convert):
    a = GRAPHS["weighted"]
    out = normalized_adjacency(convert(a), "gcn")
    np.testing.assert_allclose(_dense(out), reference(a, "gcn", True), rtol=1e-12)


def test_integer_adjacency_gives_float_result():
    a = (GRAPHS["undirected"] > 0).astype(np.int32)
    out = normalized_adjacency(CSR.from_dense(a), "sym")
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_allclose(_dense(out), reference(a, "sym", False), rtol=1e-12)


def test_isolated_nodes_give_zero_rows_and_no_nan():
    a = GRAPHS["undirected"]
    for kind in ("sym", "random_walk", "laplacian"):
        dense = np.asarray(normalized_adjacency(_csr(a), kind).to_scipy().toarray())
        assert np.all(np.isfinite(dense))
        for i in (3, 7):
            assert not dense[i].any() and not dense[:, i].any()
    # with self loops an isolated node keeps its own loop, normalised to 1
    gcn = np.asarray(normalized_adjacency(_csr(a), "gcn").to_scipy().toarray())
    assert gcn[3, 3] == 1 and np.count_nonzero(gcn[3]) == 1


def test_empty_graph_is_all_zero():
    a = np.zeros((4, 4))
    for kind in ("sym", "random_walk", "laplacian"):
        assert not _dense(normalized_adjacency(a, kind)).any()


def test_gradients_are_finite_with_isolated_nodes():
    csr = add_self_loops(_csr(GRAPHS["undirected"]), 0.0)

    def loss(data):
        m = normalized_adjacency(dataclasses.replace(csr, data=data), "sym")
        return jnp.sum(m.data ** 2)

    grad = jax.grad(loss)(csr.data)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_gcn_largest_eigenvalue_is_one_with_sqrt_degree_eigenvector():
    # Karate club: connected. N = D~^-1/2 (A + I) D~^-1/2 is similar to the random walk matrix
    # D~^-1 (A + I), whose largest eigenvalue is 1; its eigenvector is D~^1/2 1 = sqrt(deg + 1).
    a = nx.to_numpy_array(nx.karate_club_graph(), weight=None)
    n_hat = np.asarray(normalized_adjacency(_csr(a), "gcn").to_scipy().toarray())
    eigvals, eigvecs = np.linalg.eigh(n_hat)
    assert abs(eigvals[-1] - 1) < 1e-10
    assert eigvals[0] > -1 + 1e-3  # self loops keep the spectrum away from -1
    expected = np.sqrt(a.sum(1) + 1)
    expected /= np.linalg.norm(expected)
    assert abs(abs(eigvecs[:, -1] @ expected) - 1) < 1e-10
    np.testing.assert_allclose(n_hat @ expected, expected, rtol=1e-12)


@pytest.mark.parametrize("self_loops", [False, True])
def test_random_walk_rows_sum_to_one(self_loops):
    a = GRAPHS["directed"]
    out = normalized_adjacency(_csr(a), "random_walk", self_loops=self_loops)
    sums = _dense(out).sum(1)
    has_out = (a.sum(1) > 0) | self_loops
    np.testing.assert_allclose(sums[has_out], 1.0, rtol=1e-14)
    assert not sums[~has_out].any()


def test_directed_convention_out_degree_left_in_degree_right():
    # 0 -> 1, 0 -> 2, 1 -> 2: out-degrees (2, 1, 0), in-degrees (0, 1, 2)
    a = np.zeros((3, 3))
    a[0, 1] = a[0, 2] = a[1, 2] = 1.0
    out = np.asarray(normalized_adjacency(_csr(a), "sym").to_scipy().toarray())
    assert out[0, 1] == pytest.approx(1 / np.sqrt(2 * 1), rel=1e-15)
    assert out[0, 2] == pytest.approx(1 / np.sqrt(2 * 2), rel=1e-15)
    assert out[1, 2] == pytest.approx(1 / np.sqrt(1 * 2), rel=1e-15)
    rw = np.asarray(normalized_adjacency(_csr(a), "random_walk").to_scipy().toarray())
    assert rw[0].tolist() == [0, 0.5, 0.5] and rw[1].tolist() == [0, 0, 1] and not rw[2].any()


def test_laplacian_matches_networkx():
    for name in ("undirected", "weighted"):
        a = GRAPHS[name]
        g = nx.from_numpy_array(a)
        expected = nx.normalized_laplacian_matrix(g, nodelist=range(len(a))).toarray()
        out = np.asarray(normalized_adjacency(_csr(a), "laplacian").to_scipy().toarray())
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


def test_sym_with_self_loops_equals_gcn():
    csr = _csr(GRAPHS["weighted"])
    np.testing.assert_array_equal(
        _dense(normalized_adjacency(csr, "sym", self_loops=True)),
        _dense(normalized_adjacency(csr, "gcn")),
    )


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: gcn, sym, random_walk, laplacian"):
        normalized_adjacency(np.eye(2), "row")


def test_non_square_adjacency_is_rejected():
    with pytest.raises(ValueError, match=r"adj: expected a square"):
        normalized_adjacency(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"adj: expected a square"):
        add_self_loops(np.ones((2, 3)))


def test_bad_input_type_is_named():
    with pytest.raises(TypeError, match="adj: expected a CSR"):
        normalized_adjacency("not a matrix")


# --- degrees and self loops ----------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS)
def test_degrees_are_row_and_column_sums(graph):
    a = GRAPHS[graph]
    np.testing.assert_allclose(np.asarray(degrees(_csr(a), "out")), a.sum(1), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(degrees(_csr(a), "in")), a.sum(0), rtol=1e-14)
    jitted = jax.jit(degrees, static_argnames="direction")(_csr(a), direction="in")
    np.testing.assert_allclose(np.asarray(jitted), a.sum(0), rtol=1e-14)


def test_degrees_unknown_direction():
    with pytest.raises(ValueError, match="direction: expected one of"):
        degrees(np.eye(2), "both")


def test_add_self_loops_adds_to_existing_diagonal():
    a = np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = add_self_loops(_csr(a), 1.5)
    np.testing.assert_array_equal(_dense(out), a + 1.5 * np.eye(3))
    assert out.nnz == 5
    m = out.to_scipy()
    assert m.has_canonical_format or (np.all(np.diff(m.indptr) >= 0))
    assert np.array_equal(np.asarray(out.row_ids), np.repeat(np.arange(3), np.diff(m.indptr)))


def test_add_self_loops_with_zero_weight_stores_the_diagonal():
    a = GRAPHS["undirected"]
    csr = _csr(a)
    out = add_self_loops(csr, 0.0)
    assert out.nnz == csr.nnz + len(a)
    np.testing.assert_array_equal(_dense(out), a)
    assert add_self_loops(out, 0.0) is out  # already stored: unchanged


def test_add_self_loops_refuses_to_run_under_jit():
    with pytest.raises(TypeError, match="cannot run under jit"):
        jax.jit(add_self_loops)(_csr(np.eye(3)))




def test_vmap_and_grad_over_values_with_a_fixed_structure():
    # The structure is concrete (closed over), the values traced: the diagonal can still be
    # inserted on the host, and the values follow through vmap and grad.
    a = GRAPHS["weighted"]
    csr = _csr(a)
    scales = jnp.array([1.0, 2.0, 0.5])

    def gcn_values(s):
        return normalized_adjacency(dataclasses.replace(csr, data=csr.data * s), "gcn").data

    batched = jax.vmap(gcn_values)(scales)
    for s, row in zip(np.asarray(scales), np.asarray(batched), strict=True):
        expected = reference(a * s, "gcn", True)
        out = normalized_adjacency(_csr(a * s), "gcn")
        np.testing.assert_allclose(_dense(dataclasses.replace(out, data=jnp.asarray(row))),
                                   expected, rtol=1e-12, atol=1e-15)
    grad = jax.grad(lambda s: gcn_values(s).sum())(1.0)
    assert np.isfinite(float(grad))
