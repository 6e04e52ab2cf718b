"""Tests for dp2ejax.graph.io: round trips, SciPy interoperability, malformed files.

SciPy's own readers and writers (``scipy.io.mmread``/``mmwrite``, ``scipy.sparse.load_npz``/
``save_npz``) are the independent references for the Matrix Market and npz formats.
"""

import gzip

import networkx as nx
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from dp2ejax.graph.data import Graph
from dp2ejax.graph.io import (
    load_edge_list,
    load_graph,
    load_mtx,
    load_npz,
    save_edge_list,
    save_graph,
    save_mtx,
    save_npz,
)


def _dense(g):
    return g.adjacency.to_scipy().toarray()


def _assert_same_graph(a, b, *, payload=False):
    assert a.num_nodes == b.num_nodes and a.directed == b.directed
    assert a.adjacency.dtype == b.adjacency.dtype
    np.testing.assert_array_equal(_dense(a), _dense(b))
    if payload:
        for x, y in ((a.features, b.features), (a.labels, b.labels)):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert (a.name, a.num_classes) == (b.name, b.num_classes)


def _karate():
    return Graph.from_networkx(nx.karate_club_graph(), labels="club", weight=None,
                               name="karate")


def _weighted_directed():
    """Directed, float32 weights that are not short decimals, a self loop, an isolated last
    node (only the header keeps it in an edge list), features and labels."""
    a = np.zeros((6, 6), np.float32)
    a[0, 1], a[1, 0], a[1, 2], a[3, 3], a[4, 2] = 0.1, 2.5, 1 / 3, 7.0, 1e-8
    rng = np.random.default_rng(0)
    return Graph.from_adjacency(a, rng.standard_normal((6, 3)).astype(np.float32),
                                [0, 1, 2, 0, 1, 2], name="wd", directed=True)


def _weighted_undirected():
    g = nx.les_miserables_graph()
    return Graph.from_networkx(g, weight="weight", name="lesmis")


GRAPHS = {"karate": _karate, "weighted_directed": _weighted_directed,
          "weighted_undirected": _weighted_undirected}


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("suffix", [".txt", ".csv", ".tsv", ".edges", ".el", ".txt.gz"])
def test_edge_list_round_trip(tmp_path, graph, suffix):
    g = GRAPHS[graph]()
    path = tmp_path / f"g{suffix}"
    save_graph(g, path)
    back = load_graph(path, directed=g.directed)
    _assert_same_graph(g, back)
    assert back.name == "g"


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("suffix", [".mtx", ".mtx.gz"])
def test_mtx_round_trip(tmp_path, graph, suffix):
    g = GRAPHS[graph]()
    path = tmp_path / f"g{suffix}"
    save_graph(g, path)
    _assert_same_graph(g, load_graph(path))
    if suffix == ".mtx":  # SciPy reads what we write (float32 values: 9 digits, read in float64)
        read = scipy.io.mmread(path).toarray().astype(g.adjacency.dtype)
        np.testing.assert_array_equal(read, _dense(g))


@pytest.mark.parametrize("graph", GRAPHS)
def test_npz_round_trip_keeps_features_labels_and_metadata(tmp_path, graph):
    g = GRAPHS[graph]()
    path = tmp_path / "g.npz"
    save_npz(g, path)
    _assert_same_graph(g, load_graph(path), payload=True)
    # the adjacency is a regular scipy.sparse.save_npz file
    np.testing.assert_array_equal(sp.load_npz(path).toarray(), _dense(g))


def test_save_edge_list_writes_undirected_edges_once(tmp_path):
    path = tmp_path / "k.txt"
    save_edge_list(_karate(), path)
    lines = [x for x in path.read_text().splitlines() if not x.startswith("#")]
    assert len(lines) == 78
    assert all(int(u) <= int(v) for u, v in (x.split() for x in lines))


def test_saving_an_asymmetric_undirected_graph_is_refused(tmp_path):
    bad = Graph.from_adjacency(np.triu(np.ones((3, 3)), 1), directed=False)
    with pytest.raises(ValueError, match="undirected but its adjacency is not symmetric"):
        save_mtx(bad, tmp_path / "bad.mtx")


# --- edge lists ----------------------------------------------------------------------------------


def test_edge_list_parsing_rules(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("# SNAP-like header\n# Nodes: 8 Edges: 4\n\n0 1\n1 0  # again, reversed\n"
                    "2,3\n 3\t4 \n4 4\n")
    g = load_edge_list(path)
    assert g.num_nodes == 8 and not g.directed  # the header's node count
    expected = np.zeros((8, 8))
    for u, v in [(0, 1), (2, 3), (3, 4)]:
        expected[u, v] = expected[v, u] = 1
    expected[4, 4] = 1
    np.testing.assert_array_equal(_dense(g), expected)
    assert g.num_edges == 4
    d = load_edge_list(path, directed=True, num_nodes=10)
    assert d.num_nodes == 10 and d.num_edges == 5


def test_weighted_edge_list_keeps_the_last_weight(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("0 1 0.5\n1 2 2\n1 0 4.0\n")
    g = load_edge_list(path)
    np.testing.assert_array_equal(_dense(g), [[0, 4, 0], [4, 0, 2], [0, 2, 0]])
    assert g.adjacency.dtype == np.float32
    unweighted = load_edge_list(path, weighted=False, dtype=np.float64)
    np.testing.assert_array_equal(_dense(unweighted), [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def test_explicit_delimiter(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("0;1\n1;2\n")
    assert load_edge_list(path, delimiter=";").num_edges == 2
    path.write_text("0;1\n1;;2\n")
    with pytest.raises(ValueError, match="line 2: empty field"):
        load_edge_list(path, delimiter=";")


def test_empty_edge_list(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n")
    assert load_edge_list(path).num_nodes == 0
    assert load_edge_list(path, num_nodes=3).num_edges == 0


@pytest.mark.parametrize(("body", "kwargs", "message"), [
    ("0 1\n1 2\n1 x\n", {}, r"line 3: non-integer node id 'x'"),
    ("0 1\n1 2\n1.5 2\n", {}, r"line 3: non-integer node id '1.5'"),
    ("0 1\n1 2\n-1 2\n", {}, r"line 3: negative node id -1"),
    ("0 1\n1 2\n1 2 3\n", {}, r"line 3: expected 2 columns \(u v\), got 3"),
    ("0 1\n1 2\n3\n", {"weighted": False}, r"line 3: expected 2 or 3 columns \(u v\), got 1"),
    ("0 1 1\n1 2 1\n1 2\n", {}, r"line 3: expected 3 columns \(u v weight\), got 2"),
    ("0 1 1\n1 2\n", {"weighted": True}, r"line 2: expected 3 columns"),
    ("0 1 1\n1 2 1\n1 2 heavy\n", {}, r"line 3: non-numeric weight 'heavy'"),
    ("0 1 1\n1 2 1\n1 2 nan\n", {}, r"line 3: non-finite weight 'nan'"),
    ("# c\n0 1\n1 5\n", {"num_nodes": 5}, r"line 3: node id 5 out of range for num_nodes=5"),
    ("0 1 2 3\n", {}, r"line 1: expected 2 or 3 columns"),
])
def test_malformed_edge_lists_name_file_and_line(tmp_path, body, kwargs, message):
    path = tmp_path / "bad.txt"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as info:
        load_edge_list(path, **kwargs)
    assert str(path) in str(info.value)


# --- Matrix Market -------------------------------------------------------------------------------


def _mtx(tmp_path, text, name="m.mtx"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_mtx_symmetry_kinds(tmp_path):
    sym = load_mtx(_mtx(tmp_path, "%%MatrixMarket matrix coordinate real symmetric\n% c\n"
                                  "3 3 3\n2 1 0.5\n3 3 2\n3 2 1e-3\n"), dtype=np.float64)
    np.testing.assert_array_equal(_dense(sym), [[0, 0.5, 0], [0.5, 0, 1e-3], [0, 1e-3, 2]])
    assert not sym.directed
    skew = load_mtx(_mtx(tmp_path, "%%MatrixMarket matrix coordinate integer skew-symmetric\n"
                                   "2 2 1\n2 1 3\n"))
    np.testing.assert_array_equal(_dense(skew), [[0, -3], [3, 0]])
    assert skew.directed
    general = load_mtx(_mtx(tmp_path, "%%MatrixMarket matrix coordinate pattern general\n"
                                      "2 2 2\n1 2\n2 1\n"))
    assert not general.directed  # a symmetric general matrix is an undirected graph
    assert load_mtx(_mtx(tmp_path, "%%matrixmarket MATRIX Coordinate Pattern General\n"
                                   "2 2 1\n1 2\n")).directed


def test_mtx_written_by_scipy(tmp_path):
    rng = np.random.default_rng(1)
    m = sp.random(20, 20, density=0.2, random_state=rng, format="coo")
    m = m + m.T
    path = tmp_path / "scipy.mtx"
    scipy.io.mmwrite(path, m, symmetry="symmetric")
    g = load_mtx(path, dtype=np.float64)
    np.testing.assert_allclose(_dense(g), m.toarray(), rtol=1e-15)
    assert not g.directed


@pytest.mark.parametrize(("text", "message"), [
    ("%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n",
     r"line 1: unsupported layout 'array'"),
    ("%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 1\n",
     r"line 1: expected the banner"),
    ("", r"line 1: expected the banner"),
    ("%%MatrixMarket matrix coordinate complex general\n2 2 1\n1 1 1 0\n",
     r"line 1: unsupported field 'complex'"),
    ("%%MatrixMarket matrix coordinate real hermitian\n2 2 1\n1 1 1\n",
     r"line 1: unsupported symmetry 'hermitian'"),
    ("%%MatrixMarket matrix coordinate real general\n% c\n2 2\n1 1 1\n",
     r"line 3: expected the size line"),
    ("%%MatrixMarket matrix coordinate real general\n% c\n2 x 1\n1 1 1\n",
     r"line 3: non-integer size 'x'"),
    ("%%MatrixMarket matrix coordinate real general\n2 3 1\n1 1 1\n",
     r"line 2: expected a square matrix"),
    ("%%MatrixMarket matrix coordinate real general\n% only comments\n",
     r"line 3: missing the size line"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 3\n1 1 1\n2 2 1\n",
     r"line 4: the file ends after 2 entries, but line 2 declares 3"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 1\n2 2 1\n",
     r"line 4: more entries than the 1 declared on line 2"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n3 1 1\n",
     r"line 4: row index 3 out of range 1..2"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n1 0 1\n",
     r"line 4: column index 0 out of range 1..2 \(Matrix Market indices are 1-based\)"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 1 abc\n",
     r"line 4: non-numeric value 'abc'"),
    ("%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 1\n2 1 1.5\n",
     r"line 4: non-integer value '1.5'"),
    ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 1\n",
     r"line 4: expected 3 columns \(i j value\)"),
    ("%%MatrixMarket matrix coordinate pattern general\n2 2 2\n1 1\n2 1 1\n",
     r"line 4: expected 2 columns \(i j\)"),
    ("%%MatrixMarket matrix coordinate real symmetric\n2 2 2\n1 1 1\n1 2 1\n",
     r"line 4: entry \(1, 2\) above the diagonal in a symmetric file"),
    ("%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 2\n2 1 1\n2 2 1\n",
     r"line 4: diagonal entry \(2, 2\) in a skew-symmetric file"),
])
def test_malformed_mtx_name_file_and_line(tmp_path, text, message):
    path = _mtx(tmp_path, text, "bad.mtx")
    with pytest.raises(ValueError, match=message) as info:
        load_mtx(path)
    assert str(path) in str(info.value)


# --- npz -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_npz_from_scipy_save_npz(tmp_path, fmt):
    m = sp.random(15, 15, density=0.2, random_state=np.random.default_rng(2), format=fmt)
    path = tmp_path / "m.npz"
    sp.save_npz(path, m)
    g = load_npz(path)
    np.testing.assert_array_equal(_dense(g), m.toarray())
    assert g.directed and g.name == "m" and g.features is None


def test_npz_plain_numpy_layouts(tmp_path):
    a = np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], np.float64)
    m = sp.csr_array(a)
    path = tmp_path / "csr.npz"
    feats, labels = np.arange(6.0).reshape(3, 2), np.array([1, 0, 1])
    np.savez(path, indptr=m.indptr, indices=m.indices, data=m.data, shape=m.shape,
             features=feats, labels=labels)
    g = load_npz(path)
    np.testing.assert_array_equal(_dense(g), a)
    assert not g.directed and g.num_classes == 2
    np.testing.assert_array_equal(np.asarray(g.features), feats)
    coo = tmp_path / "coo.npz"
    np.savez(coo, row=np.array([0, 2]), col=np.array([1, 0]), shape=np.array([4, 4]))
    g = load_npz(coo, dtype=np.float32)
    assert g.num_nodes == 4 and g.num_edges == 2 and g.adjacency.dtype == np.float32


@pytest.mark.parametrize(("arrays", "message"), [
    (dict(rows=np.arange(2), cols=np.arange(2)), r"found: cols, rows"),
    (dict(), r"found: none"),
    (dict(row=np.array([0, 1]), col=np.array([1])), r"row and col differ in length"),
    (dict(row=np.array([0, -1]), col=np.array([1, 0])), r"negative node ids"),
    (dict(row=np.array([0, 5]), col=np.array([1, 0]), shape=np.array([3, 3])),
     r"node id 5 out of range"),
    (dict(indptr=np.array([0, 1, 2]), indices=np.array([1, 7]), data=np.ones(2),
          shape=np.array([2, 2])), r"do not form a sparse matrix"),
    (dict(row=np.array([0]), col=np.array([1]), shape=np.array([2, 3])),
     r"expected a square adjacency"),
    (dict(row=np.array([0]), col=np.array([1]), labels=np.array([0, 1, 1])),
     r"labels: expected shape \[2\]"),
])
def test_malformed_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_that_is_not_an_archive(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        load_npz(path)


# --- dispatch and missing files ------------------------------------------------------------------


def test_unknown_extension_lists_the_known_ones(tmp_path):
    path = tmp_path / "g.graphml"
    path.write_text("")
    with pytest.raises(ValueError, match=r"unknown graph file extension '.graphml'.*known: "
                                         r"\.txt, \.edges, \.el, \.csv, \.tsv, \.mtx, \.npz"):
        load_graph(path)
    with pytest.raises(ValueError, match="unknown graph file extension"):
        save_graph(_karate(), tmp_path / "g.npz.gz")


@pytest.mark.parametrize("loader", [load_edge_list, load_mtx, load_npz, load_graph])
def test_missing_file_names_the_path(tmp_path, loader):
    path = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        loader(path)


def test_gzip_edge_list_written_by_hand(tmp_path):
    path = tmp_path / "g.el.gz"
    with gzip.open(path, "wt") as f:
        f.write("0 1\n1 2\n")
    g = load_graph(path)
    assert g.num_edges == 2 and g.name == "g"
