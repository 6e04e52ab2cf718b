"""pagerank: networkx's fp64 scores, ranking agreement and CESTAC digits in low formats."""

import json

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax.linalg.pagerank import pagerank
from dp2ejax.sparse import CSR


def er_graph():
    g = nx.gnp_random_graph(300, 0.01, seed=1, directed=True)  # ~13 dangling nodes
    rng = np.random.default_rng(0)
    for u, v in g.edges:
        g.edges[u, v]["weight"] = rng.uniform(0.5, 2.0)  # weighted edges
    return g


def scale_free_graph():
    g = nx.DiGraph(nx.scale_free_graph(400, seed=2))  # multi-edges merged; ~34 dangling
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    return g


def small_graph():
    return nx.DiGraph([(0, 1), (1, 2), (2, 0), (2, 3), (4, 0), (4, 3)])  # 3 is dangling


GRAPHS = {"erdos_renyi": er_graph, "scale_free": scale_free_graph, "small": small_graph}


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def graph(request):
    g = GRAPHS[request.param]()
    a = nx.to_scipy_sparse_array(g, nodelist=list(g))
    assert np.any(a.sum(axis=1) == 0)  # every test graph has dangling nodes
    return g, CSR.from_scipy(a, dtype=np.float64)


def networkx_scores(g, **kwargs):
    scores = nx.pagerank(g, alpha=0.85, tol=1e-13, max_iter=1000, **kwargs)
    return np.array([scores[v] for v in g])


def test_fp64_equals_networkx(graph):
    g, a = graph
    result = pagerank(a)
    assert result.status == "converged" and result.residuals[-1] < 1e-12
    assert np.max(np.abs(result.scores - networkx_scores(g))) < 1e-10
    assert result.kendall_tau_top_k is None  # nothing to compare with in fp64


def test_personalization_and_dangling_as_networkx():
    g = small_graph()
    p = np.array([1.0, 0.0, 2.0, 0.0, 1.0])
    d = np.array([0.0, 1.0, 0.0, 0.0, 3.0])
    a = nx.to_scipy_sparse_array(g, nodelist=list(g))
    result = pagerank(a, personalization=p, dangling=d)  # SciPy input accepted as is
    expected = networkx_scores(g, personalization=dict(enumerate(p)),
                               dangling=dict(enumerate(d)))
    assert np.max(np.abs(result.scores - expected)) < 1e-10


def test_low_precision_ranking_agreement():
    a = CSR.from_scipy(nx.to_scipy_sparse_array(scale_free_graph()), dtype=np.float64)
    bf16 = pagerank(a, storage_format="bf16")
    fp8 = pagerank(a, storage_format="fp8_e4m3")
    both = pagerank(a, storage_format="bf16", accumulation_format="bf16")
    # measured (scale-free, 400 nodes): tau 1.000 (bf16 storage), 0.956 (fp8 storage), 0.989
    # (bf16 storage and arithmetic); max |diff| 2.8e-4, 6.7e-3, 1.8e-3
    assert bf16.kendall_tau_top_k >= 0.9 and bf16.top_k_overlap >= 0.9
    assert fp8.kendall_tau_top_k <= bf16.kendall_tau_top_k
    assert fp8.max_abs_diff_fp64 > bf16.max_abs_diff_fp64 > 1e-6
    assert both.kendall_tau_top_k >= 0.8
    for result in (bf16, fp8, both):
        assert result.status in ("converged", "stalled")
        assert np.all(np.isfinite(result.scores))


def test_cestac_digits_fp32_above_bf16():
    a = CSR.from_scipy(nx.to_scipy_sparse_array(small_graph()), dtype=np.float64)
    fp32 = pagerank(a, storage_format="fp32", accumulation_format="fp32", cestac=True)
    bf16 = pagerank(a, storage_format="bf16", accumulation_format="bf16", cestac=True)
    # measured: median 6.8 digits (fp32), 1.8 (bf16)
    assert fp32.digits.shape == (5,)
    assert fp32.digits_median() > 5 > 3 > bf16.digits_median()
    assert np.min(fp32.digits) > np.max(bf16.digits)


def test_stalls_in_low_precision_instead_of_running_to_max_iter():
    a = CSR.from_scipy(nx.to_scipy_sparse_array(scale_free_graph()), dtype=np.float64)
    result = pagerank(a, accumulation_format="fp32", tol=1e-14)
    assert result.status == "stalled" and result.iterations < 1000
    assert min(result.residuals) > 1e-14 and len(result.residuals) == result.iterations


def test_max_iter_status():
    a = CSR.from_scipy(nx.to_scipy_sparse_array(small_graph()), dtype=np.float64)
    result = pagerank(a, max_iter=3)
    assert result.status == "max_iter" and result.iterations == 3 and not result.converged


def test_summary_and_dict():
    a = CSR.from_scipy(nx.to_scipy_sparse_array(small_graph()), dtype=np.float64)
    result = pagerank(a, storage_format="bf16")
    assert "Kendall tau of the top-5" in result.summary()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["top"] == result.top().tolist() and data["top_k"] == 5


@pytest.mark.parametrize(("matrix", "kwargs", "error", "match"), [
    (sp.csr_array(np.ones((2, 3))), {}, ValueError, "A: expected a square adjacency"),
    (sp.csr_array(np.array([[0.0, -1.0], [1.0, 0.0]])), {}, ValueError, "1 negative weight"),
    (sp.csr_array(np.array([[0.0, np.nan], [1.0, 0.0]])), {}, ValueError, "1 NaN or infinite"),
    (sp.csr_array(np.eye(2)), dict(alpha=1.0), ValueError, r"alpha: expected .* in \(0, 1\)"),
    (sp.csr_array(np.eye(2)), dict(alpha=0.0), ValueError, "alpha"),
    (sp.csr_array(np.eye(2)), dict(personalization=[1.0]), ValueError, "personalization"),
    (sp.csr_array(np.eye(2)), dict(dangling=[-1.0, 2.0]), ValueError, "dangling"),
    (sp.csr_array(np.eye(2)), dict(storage_format="fp7"), ValueError, "storage_format"),
    (sp.csr_array(np.eye(2)), dict(accumulation="pairwise"), ValueError, "accumulation"),
    (sp.csr_array(np.eye(2)), dict(tol=-1.0), ValueError, "tol"),
    (np.eye(2), {}, TypeError, "A: expected a CSR"),
])
def test_bad_input(matrix, kwargs, error, match):
    with pytest.raises(error, match=match):
        pagerank(matrix, **kwargs)


@pytest.mark.parametrize("accumulation", ["exact", "sequential"])
def test_iterate_is_in_the_accumulation_format(accumulation):
    from dp2ejax import round_to

    a = CSR.from_scipy(nx.to_scipy_sparse_array(small_graph()), dtype=np.float64)
    result = pagerank(a, accumulation_format="bf16", accumulation=accumulation)
    np.testing.assert_array_equal(np.asarray(round_to(result.scores, "bf16")), result.scores)
    assert result.accumulation == accumulation and result.kendall_tau_top_k is not None
