"""Tests for dp2ejax.graph.metrics: every metric against a float64 NumPy/SciPy reference, under
jit and vmap, with dense and CSR propagation matrices.

Graphs are built here with networkx and SciPy (not dp2ejax.graph's own loaders), and the GCN
normalisation D̃^-1/2 (A + I) D̃^-1/2 is computed directly.
"""


import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax.graph import metrics
from dp2ejax.graph.metrics import (
    dirichlet_energy,
    dominant_eigenspace,
    effective_rank,
    eigenspace_distance,
    leading_eigenvalue_magnitudes,
    mean_average_distance,
    numerical_rank,
    second_eigenvalue_magnitude,
)
from dp2ejax.sparse import CSR


def gcn_normalised(graph):
    """(P, Ã, d̃): the GCN propagation matrix of a networkx graph, in float64 SciPy CSR."""
    a = nx.to_scipy_sparse_array(graph, format="csr", dtype=np.float64)
    a_tilde = sp.csr_matrix(a + sp.eye(a.shape[0]))
    d = np.asarray(a_tilde.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(1 / np.sqrt(d))
    return sp.csr_matrix(inv_sqrt @ a_tilde @ inv_sqrt), a_tilde, d


@pytest.fixture(scope="module")
def karate():
    graph = nx.Graph(nx.karate_club_graph().edges())  # unweighted
    P, a_tilde, d = gcn_normalised(graph)
    x = np.random.default_rng(1).standard_normal((P.shape[0], 5))
    return P, a_tilde, d, x


def test_dirichlet_energy_trace_form_equals_pairwise_form(karate):
    P, a_tilde, d, x = karate
    a = a_tilde.toarray()
    scaled = x / np.sqrt(d)[:, None]
    pairwise = 0.5 * sum(
        a[i, j] * np.sum((scaled[i] - scaled[j]) ** 2)
        for i in range(len(d)) for j in range(len(d)))
    trace = np.trace(x.T @ (np.eye(len(d)) - P.toarray()) @ x)
    assert trace == pytest.approx(pairwise, rel=1e-12)
    for operator in (CSR.from_scipy(P), jnp.asarray(P.toarray())):
        energy = jax.jit(dirichlet_energy)(jnp.asarray(x), operator)
        assert float(energy) == pytest.approx(pairwise, rel=1e-12)
        relative = dirichlet_energy(x, operator, relative=True)
        assert float(relative) == pytest.approx(pairwise / np.sum(x * x), rel=1e-12)
        assert 0 <= float(relative) <= 2


def test_dirichlet_energy_vanishes_on_the_dominant_direction(karate):
    P, _, d, _ = karate
    x = np.sqrt(d)[:, None] * np.array([[1.0, -2.0, 0.5]])
    assert abs(float(dirichlet_energy(x, CSR.from_scipy(P)))) < 1e-12 * np.sum(x * x)


def test_dirichlet_energy_under_vmap(karate):
    P, _, _, x = karate
    stacked = jnp.stack([jnp.asarray(x), 2 * jnp.asarray(x)])
    energies = jax.vmap(dirichlet_energy, in_axes=(0, None))(stacked, CSR.from_scipy(P))
    assert float(energies[1]) == pytest.approx(4 * float(energies[0]), rel=1e-12)


def mad_reference(x, mask=None):
    """MAD by a double loop (Chen et al. 2020, as their reference code averages)."""
    n = len(x)
    mask = np.ones((n, n), bool) if mask is None else mask
    node_means = []
    for i in range(n):
        kept = []
        for j in range(n):
            if i == j or not mask[i, j]:
                continue
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            cos = 0.0 if ni == 0 or nj == 0 else x[i] @ x[j] / (ni * nj)
            if 1 - cos > 0:
                kept.append(1 - cos)
        node_means.append(np.mean(kept) if kept else 0.0)
    return float(np.mean(node_means))


def test_mad_against_a_double_loop():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 3))
    x[1], x[3] = [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]  # a parallel pair: distance exactly 0
    mask = rng.random((7, 7)) < 0.5
    assert float(mean_average_distance(x)) == pytest.approx(mad_reference(x), abs=1e-12)
    assert float(mean_average_distance(x, mask)) == pytest.approx(mad_reference(x, mask),
                                                                  abs=1e-12)
    x[5] = 0.0  # a zero row: cosine 0 with every other row
    assert float(mean_average_distance(x)) == pytest.approx(mad_reference(x), abs=1e-12)


def test_mad_chunks_agree_and_jit():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((23, 4)))
    mask = jnp.asarray(np.random.default_rng(4).random((23, 23)) < 0.3)
    full = mean_average_distance(x, mask)
    chunked = jax.jit(lambda v, m: mean_average_distance(v, m, chunk_size=5))(x, mask)
    assert float(chunked) == pytest.approx(float(full), abs=1e-12)
    assert float(mean_average_distance(x, chunk_size=4)) == pytest.approx(
        float(mean_average_distance(x)), abs=1e-12)


def test_mad_of_collapsed_features_is_zero():
    x = np.outer(np.arange(1.0, 6.0), [1.0, 2.0])  # every row along (1, 2)
    assert float(mean_average_distance(x)) < 1e-12


def test_effective_rank_of_a_known_spectrum():
    rng = np.random.default_rng(5)
    sigma = np.array([4.0, 2.0, 1.0, 0.5, 0.0])
    left, _ = np.linalg.qr(rng.standard_normal((9, 5)))
    right, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    x = left @ np.diag(sigma) @ right.T
    p = sigma[sigma > 0] / sigma.sum()
    expected = np.exp(-np.sum(p * np.log(p)))
    assert float(jax.jit(effective_rank)(x)) == pytest.approx(expected, rel=1e-10)
    assert float(effective_rank(np.zeros((3, 2)))) == 0.0
    assert int(numerical_rank(x)) == 4
    assert int(numerical_rank(x, rtol=0.3)) == 2  # 1 / 4 < 0.3 < 2 / 4


def test_dominant_eigenspace_is_the_sqrt_degree_direction(karate):
    P, _, d, _ = karate
    for operator in (P, CSR.from_scipy(P), P.toarray(), jnp.asarray(P.toarray())):
        basis = dominant_eigenspace(operator)
        assert basis.shape == (len(d), 1) and basis.dtype == np.float64
        np.testing.assert_allclose(basis[:, 0], np.sqrt(d) / np.linalg.norm(np.sqrt(d)),
                                   atol=1e-12)


def test_eigenspace_distance_against_numpy(karate):
    P, _, d, x = karate
    basis = dominant_eigenspace(P)
    inside = np.sqrt(d)[:, None] * np.array([[3.0, -1.0]])
    assert float(eigenspace_distance(inside, basis)) < 1e-12 * np.linalg.norm(inside)
    expected = np.linalg.norm(x - basis @ (basis.T @ x))
    assert float(jax.jit(eigenspace_distance)(x, basis)) == pytest.approx(expected, rel=1e-12)
    relative = eigenspace_distance(x, basis, relative=True)
    assert float(relative) == pytest.approx(expected / np.linalg.norm(x), rel=1e-12)
    two = dominant_eigenspace(P, 2)
    np.testing.assert_allclose(two.T @ two, np.eye(2), atol=1e-12)


def test_second_eigenvalue_magnitude_dense_and_sparse_paths(karate, monkeypatch):
    P, _, _, _ = karate
    magnitudes = np.sort(np.abs(np.linalg.eigvalsh(P.toarray())))[::-1]
    assert second_eigenvalue_magnitude(P) == pytest.approx(magnitudes[1], abs=1e-12)
    assert second_eigenvalue_magnitude(CSR.from_scipy(P)) == pytest.approx(magnitudes[1],
                                                                            abs=1e-12)
    monkeypatch.setattr(metrics, "DENSE_EIGEN_LIMIT", 4)  # force ARPACK
    np.testing.assert_allclose(leading_eigenvalue_magnitudes(P, 3), magnitudes[:3], atol=1e-10)
    basis = dominant_eigenspace(CSR.from_scipy(P))
    assert abs(basis[:, 0] @ dominant_eigenspace(P.toarray())[:, 0]) == pytest.approx(1, 1e-10)


def test_non_symmetric_random_walk_operator(karate):
    _, a_tilde, d, _ = karate
    walk = sp.diags(1 / d) @ a_tilde  # D̃^-1 Ã: right eigenvector 1, eigenvalues as the GCN's
    basis = dominant_eigenspace(walk)
    np.testing.assert_allclose(basis[:, 0], np.full(len(d), 1 / np.sqrt(len(d))), atol=1e-10)
    P, _, _ = gcn_normalised(nx.Graph(nx.karate_club_graph().edges()))
    assert second_eigenvalue_magnitude(walk) == pytest.approx(second_eigenvalue_magnitude(P),
                                                              abs=1e-10)


def test_errors_name_the_argument():
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"P: expected a square propagation matrix of shape"):
        dirichlet_energy(x, np.eye(3))
    with pytest.raises(ValueError, match=r"x: expected node features of shape \[n, f\]"):
        dirichlet_energy(np.ones(4), np.eye(4))
    with pytest.raises(ValueError, match=r"mask: expected shape \(4, 4\)"):
        mean_average_distance(x, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"basis: expected shape \[4, k\]"):
        eigenspace_distance(x, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 4\]"):
        dominant_eigenspace(np.eye(4), 5)
