"""Tests for dp2ejax.graph.generators.

Edge counts are checked against their exact expectation: the number of edges of an SBM is a sum
of independent binomials, so it lies within 5 standard deviations of its mean except with
probability below 1e-6 (Chebyshev would give 4%, but the count is close to normal here); the
seeds are fixed, so the tests are deterministic anyway.
"""

import time

import jax
import numpy as np
import pytest

from dp2ejax.graph import generators
from dp2ejax.graph.generators import (
    NETWORKX_GRAPHS,
    barabasi_albert,
    contextual_sbm,
    erdos_renyi,
    networkx_graph,
    random_features,
    stochastic_block_model,
)

SIGMAS = 5  # tolerance on edge counts, in standard deviations


def _structure(g):
    m = g.adjacency.to_scipy()
    return m.indptr.copy(), m.indices.copy(), m.data.copy()


def _assert_simple(g):
    """No self loops, no duplicate edges (duplicates would be summed to 2), symmetric if
    undirected."""
    m = g.adjacency.to_scipy()
    assert m.diagonal().sum() == 0
    assert np.all(m.data == 1)
    if not g.directed:
        assert (m != m.T).nnz == 0


def _assert_same(g, h):
    for x, y in zip(_structure(g), _structure(h), strict=True):
        np.testing.assert_array_equal(x, y)


# --- SBM and Erdos-Renyi -------------------------------------------------------------------------


@pytest.mark.parametrize("directed", [False, True])
def test_sbm_edge_counts_within_tolerance(directed):
    sizes, p_in, p_out = [200, 300, 100], 0.08, 0.01
    g = stochastic_block_model(sizes, p_in, p_out, seed=0, directed=directed)
    _assert_simple(g)
    assert g.directed == directed and g.num_nodes == 600 and g.num_classes == 3
    labels = np.asarray(g.labels)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], sizes))
    m = g.adjacency.to_scipy().tocoo()
    same = labels[m.row] == labels[m.col]
    factor = 1 if directed else 2  # stored entries per edge
    inside = sum(s * (s - 1) for s in sizes) // factor
    between = (600**2 - sum(s * s for s in sizes)) // factor
    for count, pairs, p in ((same.sum() // factor, inside, p_in),
                            ((~same).sum() // factor, between, p_out)):
        mean, std = pairs * p, np.sqrt(pairs * p * (1 - p))
        assert abs(count - mean) < SIGMAS * std, (count, mean, std)


@pytest.mark.parametrize("directed", [False, True])
def test_erdos_renyi_edge_count_within_tolerance(directed):
    n, p = 400, 0.03
    g = erdos_renyi(n, p, seed=5, directed=directed)
    _assert_simple(g)
    pairs = n * (n - 1) // (1 if directed else 2)
    assert abs(g.num_edges - pairs * p) < SIGMAS * np.sqrt(pairs * p * (1 - p))


def test_erdos_renyi_pairs_are_uniform():
    # Every pair of 6 nodes appears with frequency p over 300 graphs (std 0.029): within 5 sigma.
    n, p, runs = 6, 0.5, 300
    counts = np.zeros((n, n))
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        rows, cols = generators._sample_block_pairs(np.array([n]), np.array([[p]]), rng, False)
        assert np.all(rows > cols)
        np.add.at(counts, (rows, cols), 1)
    freq = counts[np.tril_indices(n, -1)] / runs
    assert np.all(np.abs(freq - p) < SIGMAS * np.sqrt(p * (1 - p) / runs))


def test_extreme_probabilities():
    full = erdos_renyi(7, 1.0, seed=0)
    assert full.num_edges == 21
    assert erdos_renyi(7, 0.0, seed=0).num_edges == 0
    assert erdos_renyi(7, 1.0, seed=0, directed=True).num_edges == 42
    blocks = stochastic_block_model([3, 4], 1.0, 0.0, seed=0)
    assert blocks.num_edges == 3 + 6 and not blocks.is_connected()
    assert stochastic_block_model([0, 3], 1.0, 1.0, seed=0).num_edges == 3


def test_unrank_lower_triangle_is_exact():
    s = 9
    i, j = generators._unrank_lower_triangle(np.arange(s * (s - 1) // 2))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [
        (a, b) for a in range(s) for b in range(a)]
    # near 2**40 pairs the float estimate of i can be off by one: the correction makes it exact
    big = np.random.default_rng(0).integers(0, 2**40, 10**5) | 0
    big = np.concatenate([big, [k * (k - 1) // 2 for k in range(2**20 - 3, 2**20 + 3)]])
    i, j = generators._unrank_lower_triangle(big)
    assert np.all(i * (i - 1) // 2 <= big) and np.all(big < i * (i + 1) // 2)
    assert np.all((0 <= j) & (j < i))


@pytest.mark.parametrize("make", [
    lambda seed: stochastic_block_model([20, 30], 0.3, 0.05, seed=seed),
    lambda seed: stochastic_block_model([20, 30], 0.3, 0.05, seed=seed, directed=True),
    lambda seed: erdos_renyi(50, 0.1, seed=seed),
    lambda seed: contextual_sbm(60, 3, feature_dim=4, signal=1.0, avg_degree=4, homophily=0.7,
                                seed=seed),
    lambda seed: barabasi_albert(50, 3, seed=seed),
], ids=["sbm", "sbm_directed", "erdos_renyi", "csbm", "barabasi_albert"])
def test_deterministic_for_a_seed(make):
    a, b, c = make(11), make(11), make(12)
    _assert_same(a, b)
    assert not all(np.array_equal(x, y) for x, y in zip(_structure(a), _structure(c),
                                                       strict=False))
    if a.features is not None:
        np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
    _assert_simple(a)


def test_jax_key_seeds():
    key = jax.random.key(3)
    _assert_same(erdos_renyi(30, 0.2, seed=key), erdos_renyi(30, 0.2, seed=key))


def test_argument_errors():
    with pytest.raises(ValueError, match=r"p_in: expected a probability in \[0, 1\]"):
        stochastic_block_model([3, 3], 1.5, 0.1, seed=0)
    with pytest.raises(ValueError, match="sizes: expected non-negative ints"):
        stochastic_block_model([3, -1], 0.5, 0.1, seed=0)
    with pytest.raises(ValueError, match="num_nodes: expected non-negative ints"):
        erdos_renyi(2.5, 0.1, seed=0)
    with pytest.raises(ValueError, match="give either avg_degree and homophily, or p_in"):
        contextual_sbm(10, 2, feature_dim=2, signal=1.0, seed=0)
    with pytest.raises(ValueError, match="give either avg_degree and homophily, or p_in"):
        contextual_sbm(10, 2, feature_dim=2, signal=1.0, seed=0, avg_degree=3, p_in=0.1)
    with pytest.raises(ValueError, match="feature_dim: expected an int >="):
        contextual_sbm(10, 4, feature_dim=2, signal=1.0, seed=0, p_in=0.1, p_out=0.1)
    with pytest.raises(ValueError, match="needs p_in = .* > 1"):
        contextual_sbm(10, 2, feature_dim=2, signal=1.0, seed=0, avg_degree=9, homophily=1.0)
    with pytest.raises(ValueError, match="m: expected an int with 1 <= m < num_nodes"):
        barabasi_albert(5, 5, seed=0)


# --- CSBM ----------------------------------------------------------------------------------------


def test_csbm_class_means_are_signal_apart():
    n, k, dim, signal = 3000, 3, 16, 4.0
    g = contextual_sbm(n, k, feature_dim=dim, signal=signal, avg_degree=6, homophily=0.8,
                       seed=1)
    x, labels = np.asarray(g.features, np.float64), np.asarray(g.labels)
    assert x.shape == (n, dim) and g.num_classes == k
    assert np.bincount(labels).tolist() == [1000, 1000, 1000]
    means = np.stack([x[labels == c].mean(0) for c in range(k)])
    # each empirical mean is off by noise of std 1/sqrt(1000) per coordinate: the distance
    # between two of them by about sqrt(2 * 16 / 1000) = 0.18; 0.6 is over 3 of those
    for a in range(k):
        for b in range(a):
            assert abs(np.linalg.norm(means[a] - means[b]) - signal) < 0.6
    # the noise is standard normal around each class mean
    residual = x - means[labels]
    assert abs(residual.std() - 1) < 0.02
    # and the means are centred (a regular simplex around the origin)
    assert np.linalg.norm(means.mean(0)) < 0.2


def test_csbm_degree_and_homophily():
    n, d, h = 4000, 8.0, 0.75
    g = contextual_sbm(n, 4, feature_dim=3, signal=1.0, avg_degree=d, homophily=h, seed=2)
    _assert_simple(g)
    m = g.adjacency.to_scipy().tocoo()
    labels = np.asarray(g.labels)
    # n * d / 2 = 16000 expected edges, std < sqrt(16000); stored entries / n = 2 edges / n
    assert abs(m.nnz / n - d) < 2 * SIGMAS * np.sqrt(n * d / 2) / n
    within = np.mean(labels[m.row] == labels[m.col])
    assert abs(within - h) < 0.02  # binomial std of the fraction ~0.004


def test_csbm_with_probabilities_and_two_classes():
    g = contextual_sbm(101, 2, feature_dim=1, signal=2.0, p_in=0.2, p_out=0.01, seed=0,
                       directed=True)
    assert g.directed and np.bincount(np.asarray(g.labels)).tolist() == [51, 50]
    _assert_simple(g)


# --- networkx graphs, BA, random features --------------------------------------------------------


@pytest.mark.parametrize(("name", "nodes", "edges", "classes"), [
    ("karate_club", 34, 78, [17, 17]),
    ("les_miserables", 77, 254, None),
    ("florentine_families", 15, 20, None),
    ("davis_southern_women", 32, 89, [18, 14]),
])
def test_networkx_graphs(name, nodes, edges, classes):
    g = networkx_graph(name)
    assert (g.num_nodes, g.num_edges, g.directed, g.name) == (nodes, edges, False, name)
    _assert_simple(g)
    if classes is None:
        assert g.labels is None
    else:
        assert np.bincount(np.asarray(g.labels)).tolist() == classes


def test_networkx_graph_weights_and_unknown_name():
    assert set(NETWORKX_GRAPHS) == {"karate_club", "les_miserables", "florentine_families",
                                    "davis_southern_women"}
    weighted = networkx_graph("les_miserables", weighted=True)
    assert weighted.adjacency.to_scipy().data.max() > 1
    with pytest.raises(ValueError, match="known: karate_club, les_miserables"):
        networkx_graph("cora")


def test_barabasi_albert_edge_count():
    g = barabasi_albert(200, 3, seed=4)
    assert g.num_edges == 3 * (200 - 3) and g.is_connected()
    _assert_simple(g)


def test_random_features():
    g = random_features(erdos_renyi(50, 0.1, seed=0), 7, seed=3, scale=2.0)
    x = np.asarray(g.features)
    assert x.shape == (50, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.asarray(
        random_features(erdos_renyi(50, 0.1, seed=0), 7, seed=3, scale=2.0).features))
    assert 1.5 < x.std() < 2.5


@pytest.mark.slow
def test_a_million_nodes_in_seconds():
    n = 2**20
    start = time.perf_counter()
    g = stochastic_block_model([n // 4] * 4, 32 / n, 8 / n, seed=0)
    seconds = time.perf_counter() - start
    assert g.num_nodes == n and g.num_edges > 10**6
    assert seconds < 30, seconds  # about 3 s on 2 busy CPU cores
