"""Tests for dp2ejax.graph.data: the Graph pytree, networkx conversions, splits, connectivity."""


import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax.graph.data import Graph, SplitMasks, as_csr
from dp2ejax.sparse import CSR


def _dense(g):
    return g.adjacency.to_scipy().toarray()


@pytest.fixture(scope="module")
def karate():
    return Graph.from_networkx(nx.karate_club_graph(), labels="club", weight=None)


def _labelled_graph(sizes, seed=0):
    """A ring of sum(sizes) nodes whose labels are the blocks 0, 1, ... of the given sizes."""
    n = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    perm = np.random.default_rng(seed).permutation(n)
    return Graph.from_networkx(nx.cycle_graph(n), labels=labels[perm])


# --- construction and checks ---------------------------------------------------------------------


def test_from_adjacency_infers_metadata():
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)
    g = Graph.from_adjacency(a, features=np.ones((3, 2)), labels=[0, 2, 1], name="p3")
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_classes) == (3, 2, 2, 3)
    assert not g.directed and g.name == "p3"
    assert g.labels.dtype == jnp.int32
    d = Graph.from_adjacency(np.triu(a))
    assert d.directed and d.num_edges == 2 and d.labels is None and d.num_classes is None


@pytest.mark.parametrize("convert", [CSR.from_dense, sp.csr_array, sp.coo_array, np.asarray])
def test_from_adjacency_accepts_csr_scipy_dense(convert):
    a = np.array([[0.0, 2.0], [2.0, 0.0]])
    g = Graph.from_adjacency(convert(a))
    assert isinstance(g.adjacency, CSR)
    np.testing.assert_array_equal(_dense(g), a)


def test_inconsistent_shapes_are_rejected():
    a = CSR.from_dense(np.eye(3))
    with pytest.raises(ValueError, match=r"features: expected shape \[n, f\] with n = 3"):
        Graph(adjacency=a, features=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"features: expected shape \[n, f\]"):
        Graph(adjacency=a, features=jnp.ones(3))
    with pytest.raises(ValueError, match=r"labels: expected shape \[3\]"):
        Graph(adjacency=a, labels=jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"adjacency: expected a square"):
        Graph(adjacency=CSR.from_dense(np.ones((2, 3))))
    g = Graph(adjacency=a)
    with pytest.raises(ValueError, match=r"features: expected shape"):
        g.with_features(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"labels: expected shape"):
        g.with_labels([0, 1])


def test_bad_labels_are_rejected():
    a = np.eye(3)
    with pytest.raises(ValueError, match="labels: expected integers"):
        Graph.from_adjacency(a, labels=[0.5, 1, 0])
    with pytest.raises(ValueError, match="labels: expected non-negative"):
        Graph.from_adjacency(a, labels=[0, -1, 0])
    with pytest.raises(ValueError, match="labels: expected class ids below num_classes=2"):
        Graph.from_adjacency(a, labels=[0, 2, 0], num_classes=2)


def test_num_edges_counts_undirected_self_loops_once():
    a = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert Graph.from_adjacency(a).num_edges == 4  # two edges, two loops
    assert Graph.from_adjacency(a, directed=True).num_edges == 6


def test_with_features_and_labels_replace_leaves(karate):
    g = karate.with_features(np.ones((34, 3), np.float32))
    assert g.num_features == 3 and g.labels is karate.labels
    assert g.with_features(None).features is None
    h = g.with_labels(np.arange(34) % 4)
    assert h.num_classes == 4 and h.features is g.features
    assert h.with_labels(None).num_classes is None


# --- pytree --------------------------------------------------------------------------------------


def test_graph_is_a_pytree_with_static_metadata(karate):
    g = karate.with_features(np.eye(34, dtype=np.float32))
    leaves, treedef = jax.tree_util.tree_flatten(g)
    assert sum(leaf is g.features or leaf is g.labels for leaf in leaves) == 2
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.name == "Zachary's Karate Club" and rebuilt.num_classes == 2

    @jax.jit
    def aggregate(graph):
        return graph.adjacency @ graph.features, graph.num_nodes

    out, n = aggregate(g)
    assert n == 34
    np.testing.assert_array_equal(np.asarray(out), _dense(g))
    # metadata is static: a graph with another name retraces, the same one does not
    scaled = jax.tree_util.tree_map(lambda x: x * 2 if x.dtype == jnp.float32 else x, g)
    assert scaled.name == g.name


def test_vmap_over_stacked_features(karate):
    feats = jnp.ones((5, 34, 2))

    def run(f):
        return (karate.with_features(f).adjacency @ f).sum()

    out = jax.jit(jax.vmap(run))(feats)
    assert out.shape == (5,)
    np.testing.assert_allclose(np.asarray(out), 2 * _dense(karate).sum())


# --- networkx ------------------------------------------------------------------------------------


def test_karate_from_networkx(karate):
    assert (karate.num_nodes, karate.num_edges, karate.num_classes) == (34, 78, 2)
    labels = np.asarray(karate.labels)
    clubs = [nx.karate_club_graph().nodes[i]["club"] for i in range(34)]
    assert [("Mr. Hi", "Officer")[c] for c in labels] == clubs
    assert _dense(karate).sum() == 156 and np.all(_dense(karate) == _dense(karate).T)


def test_networkx_round_trip_keeps_edges_weights_labels_and_features():
    g = nx.DiGraph()
    g.add_weighted_edges_from([(0, 1, 0.5), (1, 2, 2.0), (2, 0, 1.5), (2, 3, 1.0)])
    for v in g:
        g.nodes[v]["x"] = np.array([v, -v], np.float32)
        g.nodes[v]["y"] = "ab"[v % 2]
    graph = Graph.from_networkx(g, features="x", labels="y", name="toy")
    assert graph.directed and graph.num_edges == 4 and graph.num_classes == 2
    back = graph.to_networkx()
    assert back.is_directed() and back.name == "toy"
    assert sorted(back.edges(data="weight")) == sorted(g.edges(data="weight"))
    assert [back.nodes[v]["label"] for v in range(4)] == [0, 1, 0, 1]
    again = Graph.from_networkx(back, features="features", labels="label")
    np.testing.assert_array_equal(_dense(again), _dense(graph))
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(graph.features))
    np.testing.assert_array_equal(np.asarray(again.labels), np.asarray(graph.labels))


def test_from_networkx_missing_label_attribute():
    with pytest.raises(ValueError, match="labels: node attribute 'club' is missing"):
        Graph.from_networkx(nx.path_graph(3), labels="club")


# --- splits --------------------------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint(karate):
    a = karate.split(3)
    b = karate.split(3)
    c = karate.split(4)
    assert isinstance(a, SplitMasks)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.train), np.asarray(c.train))
    masks = np.stack([np.asarray(m) for m in a])
    assert masks.dtype == bool and np.all(masks.sum(0) == 1)  # fractions sum to 1: a partition


def test_split_is_stratified_per_class():
    g = _labelled_graph([50, 30, 20])
    masks = g.split(0, train=0.5, val=0.2, test=0.3)
    labels = np.asarray(g.labels)
    for c, size in enumerate([50, 30, 20]):
        counts = [int(np.asarray(m)[labels == c].sum()) for m in masks]
        assert counts == [round(0.5 * size), round(0.2 * size), size - round(0.7 * size)]


def test_split_with_counts_per_class_leaves_the_rest_out():
    g = _labelled_graph([30, 30, 40])
    masks = g.split(1, train=5, val=10, test=12)
    labels = np.asarray(g.labels)
    for c in range(3):
        assert [int(np.asarray(m)[labels == c].sum()) for m in masks] == [5, 10, 12]
    assert int(sum(np.asarray(m).sum() for m in masks)) == 3 * 27


def test_split_without_labels_and_with_jax_keys():
    g = Graph.from_networkx(nx.path_graph(20))
    typed = g.split(jax.random.key(7), train=0.25, val=0.25, test=0.5)
    raw = g.split(jax.random.PRNGKey(7), train=0.25, val=0.25, test=0.5)
    assert [int(np.asarray(m).sum()) for m in typed] == [5, 5, 10]
    np.testing.assert_array_equal(np.asarray(typed.train), np.asarray(raw.train))


def test_split_argument_errors(karate):
    with pytest.raises(ValueError, match="must sum to at most 1"):
        karate.split(0, train=0.7, val=0.3, test=0.3)
    with pytest.raises(ValueError, match="val: expected a fraction"):
        karate.split(0, val=-0.1)
    with pytest.raises(TypeError, match="key_or_seed: expected an int seed or a jax.random key"):
        karate.split("seed")


# --- connectivity --------------------------------------------------------------------------------


def test_is_connected():
    assert Graph.from_networkx(nx.path_graph(4)).is_connected()
    two = nx.Graph([(0, 1), (2, 3)])
    assert not Graph.from_networkx(two).is_connected()
    chain = Graph.from_networkx(nx.DiGraph([(0, 1), (1, 2)]))
    assert chain.is_connected() and not chain.is_connected(strong=True)
    cycle = Graph.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0)]))
    assert cycle.is_connected(strong=True)
    assert not Graph.from_adjacency(np.zeros((0, 0))).is_connected()


def test_as_csr_errors_name_the_argument():
    with pytest.raises(TypeError, match="adjacency: expected a CSR"):
        Graph.from_adjacency(np.ones(3))
    assert as_csr(Graph.from_adjacency(np.eye(2))).shape == (2, 2)
