"""Tests for dp2ejax.graph.generators.chung_lu (power-law graphs of the expected-degree model).

The degree tail is checked by the log-log slope of the degree CCDF, fitted by least squares on
12 log-spaced degrees from ``2 * average_degree`` up to the 50th largest degree. The model's
weights have a CCDF of slope exactly ``1 - exponent``; a node's degree is about Poisson of its
weight, whose spread (sqrt(20) at d = 20) lifts the low end of the fitted range, and the 50
largest degrees are left out, where a few nodes make the curve jump. Measured over seeds 0-2,
n = 20000 and 50000, exponents 2.2, 2.5 and 3: the slope is 0.04-0.11 steeper than ``1 -
exponent``; the tolerance 0.2 covers that with a margin and still tells 2.2 from 2.5 from 3
(0.3 apart) and from a Poisson graph (whose CCDF at 2x its mean falls off a cliff).
"""

import time

import jax
import numpy as np
import pytest

from dp2ejax.graph import Graph, chung_lu, erdos_renyi

N = 20_000
SLOPE_TOLERANCE = 0.2


def _degrees(g, which: str) -> np.ndarray:
    m = g.adjacency.to_scipy()
    if which == "out":
        return np.diff(m.indptr)
    return np.bincount(m.indices, minlength=g.num_nodes)


def _ccdf_slope(degrees: np.ndarray, low: float, top_left_out: int = 50) -> float:
    high = np.sort(degrees)[-top_left_out]
    xs = np.unique(np.round(np.logspace(np.log10(low), np.log10(high), 12)))
    ys = np.array([np.mean(degrees >= x) for x in xs])
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _assert_simple(g):
    """No self loops, no duplicate edges (they would be summed to 2), symmetric if undirected."""
    m = g.adjacency.to_scipy()
    assert m.diagonal().sum() == 0
    assert np.all(m.data == 1)
    if not g.directed:
        assert (m != m.T).nnz == 0


@pytest.mark.parametrize("exponent", [2.2, 2.5, 3.0])
@pytest.mark.parametrize("directed", [True, False])
def test_degree_ccdf_slope_is_one_minus_exponent(exponent, directed):
    g = chung_lu(N, exponent=exponent, average_degree=10, seed=1, directed=directed)
    degrees = _degrees(g, "in")  # undirected: the degree
    assert abs(_ccdf_slope(degrees, 20) - (1 - exponent)) <= SLOPE_TOLERANCE


def test_heavy_tail_unlike_erdos_renyi():
    g = chung_lu(N, exponent=2.5, average_degree=10, seed=0)
    for which in ("in", "out"):
        degrees = _degrees(g, which)
        assert degrees.max() > 50 * degrees.mean()  # about 100x here
    # a G(n, p) graph of the same mean degree: max degree about 2.5x the mean
    poisson = _degrees(erdos_renyi(N, 10 / N, seed=0, directed=True), "out")
    assert poisson.max() < 4 * poisson.mean()


@pytest.mark.parametrize("directed", [True, False])
def test_simple_graph_with_the_expected_edge_count(directed):
    g = chung_lu(N, average_degree=10, seed=2, directed=directed, name="web")
    assert isinstance(g, Graph)
    assert g.num_nodes == N and g.directed == directed and g.name == "web"
    assert g.labels is None and g.features is None
    assert g.adjacency.data.dtype == np.float32
    _assert_simple(g)
    drawn = 10 * N if directed else 5 * N
    assert 0.98 * drawn <= g.num_edges <= drawn  # self loops and repeats dropped: ~0.5 % here


def test_sparse_directed_graph_has_dangling_nodes_as_expected():
    """A node's out-degree is about Poisson(m w_i / sum w), so ``mean(exp(-m p_i))`` of the nodes
    are dangling; dropping self loops and repeats adds a few (a node whose only out-edge was a
    self loop or a repeat)."""
    degree, exponent = 4, 2.5
    g = chung_lu(N, exponent=exponent, average_degree=degree, seed=3)
    dangling = np.mean(_degrees(g, "out") == 0)
    weights = np.arange(1, N + 1) ** (-1 / (exponent - 1))
    expected = np.mean(np.exp(-degree * N * weights / weights.sum()))
    sd = np.sqrt(expected / N)  # a sum of independent indicators: variance <= mean
    assert expected > 0.05  # a sparse enough setting to have many
    assert expected - 5 * sd <= dangling <= expected + 5 * sd + 0.005


def test_same_seed_same_graph_and_keys_accepted():
    def structure(g):
        m = g.adjacency.to_scipy()
        return m.indptr, m.indices

    for a, b in zip(structure(chung_lu(2000, seed=7)), structure(chung_lu(2000, seed=7)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert chung_lu(2000, seed=7).num_edges != chung_lu(2000, seed=8).num_edges
    key = jax.random.key(7)
    for a, b in zip(structure(chung_lu(2000, seed=key)), structure(chung_lu(2000, seed=key)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("kwargs", "argument"), [
    (dict(num_nodes=1), "num_nodes"),
    (dict(num_nodes=100.0), "num_nodes"),
    (dict(num_nodes=True), "num_nodes"),
    (dict(exponent=2.0), "exponent"),
    (dict(exponent=1.5), "exponent"),
    (dict(exponent=float("nan")), "exponent"),
    (dict(exponent="2.5"), "exponent"),
    (dict(average_degree=0), "average_degree"),
    (dict(average_degree=-3.0), "average_degree"),
    (dict(average_degree=float("inf")), "average_degree"),
    (dict(seed=-1), "seed"),
    (dict(seed="0"), "seed"),
])
def test_bad_arguments_are_named(kwargs, argument):
    call = dict(num_nodes=100, seed=0) | kwargs
    with pytest.raises(ValueError, match=f"^{argument}:"):
        chung_lu(call.pop("num_nodes"), **call)


@pytest.mark.slow
def test_a_million_nodes_in_seconds():
    start = time.perf_counter()
    g = chung_lu(10**6, average_degree=10, seed=0)
    seconds = time.perf_counter() - start
    assert g.num_nodes == 10**6 and g.num_edges > 9.9 * 10**6
    assert seconds < 30, seconds  # about 3 s on 2 busy CPU cores
