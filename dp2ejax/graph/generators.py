"""Random and classic graphs as :class:`~dp2ejax.graph.data.Graph`: SBM, CSBM, Erdos-Renyi,
Chung-Lu power law, ...

The random generators are vectorised with NumPy. The block models are exact: for each pair of
blocks the number of edges is drawn from its binomial distribution, then that many distinct node
pairs are drawn uniformly among the block pair's possible ones (never looping over node pairs in
Python), so a graph with ``2**20`` nodes and millions of edges takes seconds; ``chung_lu`` draws
power-law-weighted endpoints and drops repeats. Generated graphs have no self loops and no
duplicate edges; undirected graphs are stored symmetric; adjacency values are float32 ones. The
same ``seed`` (an int or a ``jax.random`` key) gives the same graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dp2ejax.graph.data import Graph, _seed_entropy


def stochastic_block_model(
    sizes: Sequence[int],
    p_in: float,
    p_out: float,
    *,
    seed: Any,
    directed: bool = False,
    name: str = "sbm",
) -> Graph:
    """A stochastic block model: nodes in blocks, edges independent with block-pair probability.

    Nodes ``0 .. sizes[0]-1`` form block 0, the next ``sizes[1]`` block 1, and so on; each pair
    of distinct nodes is an edge with probability ``p_in`` inside a block and ``p_out`` between
    blocks (for a directed graph each ordered pair independently). The expected number of
    undirected edges is ``p_in * sum_b C(s_b, 2) + p_out * sum_{a<b} s_a s_b``.

    Args:
      sizes: the block sizes (non-negative ints).
      p_in: the edge probability inside a block, in ``[0, 1]``.
      p_out: the edge probability between blocks, in ``[0, 1]``.
      seed: an int seed or a ``jax.random`` key.
      directed: draw each ordered pair independently (a directed graph).
      name: the graph's name.

    Returns:
      The ``Graph``, with ``labels`` the block of each node.

    Example:
      >>> g = stochastic_block_model([3, 3], 1.0, 0.0, seed=0)
      >>> g.num_nodes, g.num_edges, g.labels.tolist()
      (6, 6, [0, 0, 0, 1, 1, 1])
    """
    sizes = _check_sizes(sizes)
    for arg, p in (("p_in", p_in), ("p_out", p_out)):
        _check_probability(arg, p)
    k = len(sizes)
    probs = np.full((k, k), float(p_out))
    np.fill_diagonal(probs, float(p_in))
    rng = np.random.default_rng(_seed_entropy(seed))
    labels = np.repeat(np.arange(k, dtype=np.int32), sizes)
    return _graph_from_pairs(
        *_sample_block_pairs(sizes, probs, rng, directed), int(sizes.sum()), directed,
        name=name, labels=labels, num_classes=k,
    )


def erdos_renyi(num_nodes: int, p: float, *, seed: Any, directed: bool = False,
                name: str = "erdos_renyi") -> Graph:
    """An Erdos-Renyi ``G(n, p)`` graph: each pair of distinct nodes is an edge with chance ``p``.

    Args:
      num_nodes: the number of nodes ``n``.
      p: the edge probability, in ``[0, 1]``.
      seed: an int seed or a ``jax.random`` key.
      directed: draw each ordered pair independently (a directed graph).
      name: the graph's name.

    Returns:
      The ``Graph`` (no labels). The expected number of edges is ``p n (n - 1) / 2``
      (``p n (n - 1)`` directed).

    Example:
      >>> erdos_renyi(5, 1.0, seed=0).num_edges
      10
    """
    sizes = _check_sizes([num_nodes], argname="num_nodes")
    _check_probability("p", p)
    rng = np.random.default_rng(_seed_entropy(seed))
    rows, cols = _sample_block_pairs(sizes, np.array([[float(p)]]), rng, directed)
    return _graph_from_pairs(rows, cols, int(num_nodes), directed, name=name)


def contextual_sbm(
    num_nodes: int,
    num_classes: int = 2,
    *,
    feature_dim: int,
    signal: float,
    seed: Any,
    avg_degree: float | None = None,
    homophily: float | None = None,
    p_in: float | None = None,
    p_out: float | None = None,
    directed: bool = False,
    name: str = "csbm",
) -> Graph:
    """A contextual stochastic block model (Deshpande et al., 2018): an SBM with Gaussian features.

    Classes are contiguous blocks of sizes as equal as possible (the first ``num_nodes %
    num_classes`` one larger). Node ``i`` of class ``c`` has features ``mu_c + z_i`` with ``z_i``
    standard normal: the class means ``mu_c`` are the vertices of a regular simplex centred at
    the origin, with edge length ``signal``, in a random orientation of ``R^feature_dim`` (for
    two classes ``mu = +-(signal / 2) u`` for a random unit ``u``, the model of the paper). So
    any two class means are ``signal`` apart, in units of the noise's standard deviation.

    The edges are given either by ``avg_degree`` and ``homophily`` (the expected degree and the
    expected fraction of a node's edges inside its class: ``p_in = homophily * avg_degree /
    (n/k - 1)``, ``p_out = (1 - homophily) * avg_degree / (n - n/k)``) or by ``p_in`` and
    ``p_out`` directly.

    Args:
      num_nodes: the number of nodes ``n``.
      num_classes: the number of classes ``k``.
      feature_dim: the feature dimension (at least ``k - 1``).
      signal: the distance between any two class means.
      seed: an int seed or a ``jax.random`` key.
      avg_degree, homophily: the expected degree and within-class edge fraction in ``[0, 1]``.
      p_in, p_out: the edge probabilities inside and between classes (instead of the above).
      directed: draw each ordered pair independently (a directed graph).
      name: the graph's name.

    Returns:
      The ``Graph`` with float32 ``features`` ``[n, feature_dim]`` and ``labels`` (the classes).

    Example:
      >>> g = contextual_sbm(100, 2, feature_dim=8, signal=3.0, avg_degree=5, homophily=0.9,
      ...                    seed=0)
      >>> g.features.shape, g.num_classes
      ((100, 8), 2)
    """
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if not isinstance(num_nodes, int | np.integer) or num_nodes < num_classes:
        raise ValueError(f"num_nodes: expected an int >= num_classes={num_classes}, "
                         f"got {num_nodes!r}")
    if not isinstance(feature_dim, int | np.integer) or feature_dim < max(num_classes - 1, 1):
        raise ValueError(f"feature_dim: expected an int >= max(num_classes - 1, 1) = "
                         f"{max(num_classes - 1, 1)}, got {feature_dim!r}")
    by_degree = avg_degree is not None or homophily is not None
    by_probability = p_in is not None or p_out is not None
    if by_degree == by_probability or (by_degree and (avg_degree is None or homophily is None)) \
            or (by_probability and (p_in is None or p_out is None)):
        raise ValueError(
            "contextual_sbm: give either avg_degree and homophily, or p_in and p_out; got "
            f"avg_degree={avg_degree}, homophily={homophily}, p_in={p_in}, p_out={p_out}"
        )
    n, k = int(num_nodes), int(num_classes)
    if by_degree:
        if avg_degree < 0:
            raise ValueError(f"avg_degree: expected a non-negative degree, got {avg_degree}")
        _check_probability("homophily", homophily)
        block = n / k
        p_in = homophily * avg_degree / (block - 1) if block > 1 else 0.0
        p_out = (1 - homophily) * avg_degree / (n - block) if k > 1 else 0.0
        for arg, p in (("p_in", p_in), ("p_out", p_out)):
            if p > 1:
                raise ValueError(
                    f"avg_degree, homophily: avg_degree={avg_degree} with homophily={homophily} "
                    f"needs {arg} = {p:.3g} > 1 for {n} nodes in {k} classes"
                )
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    rng = np.random.default_rng(_seed_entropy(seed))
    graph = stochastic_block_model(sizes, p_in, p_out, seed=int(rng.integers(2**63)),
                                   directed=directed, name=name)
    means = _simplex_means(k, int(feature_dim), float(signal), rng)
    noise = rng.standard_normal((n, int(feature_dim)), dtype=np.float32)
    labels = np.asarray(graph.labels)
    return graph.with_features(means.astype(np.float32)[labels] + noise)


def barabasi_albert(num_nodes: int, m: int, *, seed: Any, name: str = "barabasi_albert") -> Graph:
    """A Barabasi-Albert preferential-attachment graph (``networkx.barabasi_albert_graph``).

    Each new node attaches to ``m`` existing nodes with probability proportional to their
    degree. It runs in networkx's Python loop (about ten seconds for a million nodes), unlike
    the vectorised generators of this module.

    Args:
      num_nodes: the number of nodes ``n``.
      m: the edges each new node brings, ``1 <= m < n``.
      seed: an int seed (passed to networkx as is) or a ``jax.random`` key.
      name: the graph's name.

    Returns:
      The undirected ``Graph`` with ``m (n - m)`` edges.

    Example:
      >>> barabasi_albert(10, 2, seed=0).num_edges
      16
    """
    import networkx as nx

    if not isinstance(m, int | np.integer) or not 1 <= m < num_nodes:
        raise ValueError(f"m: expected an int with 1 <= m < num_nodes={num_nodes}, got {m!r}")
    entropy = _seed_entropy(seed)
    if not isinstance(entropy, int):  # a jax key: networkx takes an int seed
        entropy = int(np.random.default_rng(entropy).integers(2**63))
    g = nx.barabasi_albert_graph(int(num_nodes), int(m), seed=entropy)
    return Graph.from_networkx(g, weight=None, name=name)


def chung_lu(num_nodes: int, *, exponent: float = 2.5, average_degree: float = 10.0,
             seed: Any, directed: bool = True, name: str = "chung_lu") -> Graph:
    """A power-law graph of the Chung-Lu (expected-degree) model, sampled vectorised.

    Node weights follow a power law: the ``r``-th largest is ``w_r = (r + 1)^(-1 / (exponent -
    1))`` (Chung and Lu, "Connected components in random graphs with given expected degree
    sequences", Ann. Combin. 6, 2002), so the share of nodes of weight above ``w`` falls as
    ``w^(1 - exponent)`` and so does the degree CCDF: ``P(degree = d) ~ d^-exponent``. The ranks
    are given to the nodes in a random order (node 0 is not the largest hub). Then ``m`` edges
    are drawn independently, each endpoint with probability ``w_i / sum(w)`` (for a directed
    graph, a source and a target; the same weights give in- and out-degrees), and self loops
    and repeated edges are dropped. ``m = average_degree * n`` for a directed graph (the mean
    out-degree, which equals the mean in-degree), ``average_degree * n / 2`` undirected: the
    graph has slightly fewer edges than that, the drawn repeats among the hubs (0.3 % at
    the defaults and ``n = 10**6``). Node ``i`` thus has expected degree about
    ``average_degree * w_i / mean(w)``; a directed graph has dangling nodes (no out-edge), about
    ``exp(-expected out-degree)`` of the light ones.

    Everything is a few NumPy array operations (a multinomial count of each node's endpoints, a
    shuffle of ``m`` of them, a sort to drop repeats): ``n = 10**6``, ``average_degree = 10``
    takes about 2 s, then building the ``Graph``'s ``CSR`` a few more.

    Args:
      num_nodes: the number of nodes ``n`` (>= 2).
      exponent: the power-law exponent ``gamma`` of the degree distribution, > 2 (so that the
        mean degree is finite; real networks: 2 to 3).
      average_degree: the mean degree before repeats are dropped (> 0; out-degree if directed).
      seed: an int seed or a ``jax.random`` key.
      directed: a directed graph (default) or an undirected one (stored symmetric).
      name: the graph's name.

    Returns:
      The ``Graph``: ``[n, n]`` float32 adjacency of ones, no self loops, no duplicate edges, no
      labels or features.

    Raises:
      ValueError: ``num_nodes`` not an int >= 2, ``exponent`` not > 2, ``average_degree`` not
        positive and finite, or a bad ``seed``; each names the argument.

    Example:
      >>> g = chung_lu(10_000, exponent=2.5, average_degree=8, seed=0)
      >>> g.num_nodes, g.directed, 75_000 < g.num_edges <= 80_000
      (10000, True, True)
      >>> out_degree = np.diff(g.adjacency.to_scipy().indptr)
      >>> bool(out_degree.max() > 20 * out_degree.mean()), bool((out_degree == 0).any())
      (True, True)
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int | np.integer) \
            or num_nodes < 2:
        raise ValueError(f"num_nodes: expected an int >= 2, got {num_nodes!r}")
    if isinstance(exponent, bool) or not isinstance(exponent, int | float | np.number) \
            or not np.isfinite(exponent) or not exponent > 2:
        raise ValueError(f"exponent: expected a finite number > 2 (a finite mean degree), got "
                         f"{exponent!r}")
    if isinstance(average_degree, bool) or not isinstance(
            average_degree, int | float | np.number) or not np.isfinite(average_degree) \
            or not average_degree > 0:
        raise ValueError(f"average_degree: expected a positive finite number, got "
                         f"{average_degree!r}")
    try:
        entropy = _seed_entropy(seed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"seed: {str(err).removeprefix('key_or_seed: ')}") from None
    n = int(num_nodes)
    rng = np.random.default_rng(entropy)
    weights = np.arange(1, n + 1, dtype=np.float64) ** (-1.0 / (float(exponent) - 1.0))
    weights /= weights.sum()
    node_of_rank = rng.permutation(n)
    count = round(float(average_degree) * n / (1 if directed else 2))
    # m independent endpoints, as a multinomial count per node (O(n)), listed in node order;
    # shuffling one side pairs them up at random, which makes the m pairs independent draws.
    rows = np.repeat(node_of_rank, rng.multinomial(count, weights))
    cols = np.repeat(node_of_rank, rng.multinomial(count, weights))
    rng.shuffle(cols)
    if not directed:
        rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
    keys = _sorted_unique((rows.astype(np.int64) * n + cols)[rows != cols])
    return _graph_from_pairs(keys // n, keys % n, n, directed, name=name)


def random_features(graph: Graph, dim: int, *, seed: Any, scale: float = 1.0) -> Graph:
    """Returns ``graph`` with i.i.d. Gaussian features ``N(0, scale**2)`` of dimension ``dim``.

    Args:
      graph: the graph.
      dim: the feature dimension.
      seed: an int seed or a ``jax.random`` key.
      scale: the standard deviation.

    Returns:
      The graph with float32 ``features`` ``[n, dim]``.

    Example:
      >>> random_features(erdos_renyi(4, 0.5, seed=0), 3, seed=1).features.shape
      (4, 3)
    """
    if not isinstance(dim, int | np.integer) or dim < 0:
        raise ValueError(f"dim: expected a non-negative int, got {dim!r}")
    rng = np.random.default_rng(_seed_entropy(seed))
    noise = rng.standard_normal((graph.num_nodes, int(dim)), dtype=np.float32)
    return graph.with_features(noise * np.float32(scale))


def _karate_club() -> tuple[Any, str | None]:
    import networkx as nx

    return nx.karate_club_graph(), "club"


def _les_miserables() -> tuple[Any, str | None]:
    import networkx as nx

    return nx.les_miserables_graph(), None


def _florentine_families() -> tuple[Any, str | None]:
    import networkx as nx

    return nx.florentine_families_graph(), None


def _davis_southern_women() -> tuple[Any, str | None]:
    import networkx as nx

    return nx.davis_southern_women_graph(), "bipartite"


NETWORKX_GRAPHS: dict[str, Callable[[], tuple[Any, str | None]]] = {
    "karate_club": _karate_club,
    "les_miserables": _les_miserables,
    "florentine_families": _florentine_families,
    "davis_southern_women": _davis_southern_women,
}


def networkx_graph(name: str, *, weighted: bool = False) -> Graph:
    """One of the small graphs bundled with networkx, as a ``Graph``.

    ``"karate_club"`` (34 nodes, 78 edges; labels: 0 for Mr. Hi's club, 1 for the officer's),
    ``"les_miserables"`` (77 nodes, 254 edges; no labels), ``"florentine_families"`` (15 nodes,
    20 edges; no labels), ``"davis_southern_women"`` (32 nodes, 89 edges, bipartite; labels: 0
    for the 18 women, 1 for the 14 events). Nodes are numbered in networkx's node order.

    Args:
      name: the graph's name.
      weighted: keep the edge weights (karate club: interaction counts; Les Miserables:
        co-occurrences) instead of 0/1 entries.

    Returns:
      The undirected ``Graph``.

    Example:
      >>> g = networkx_graph("karate_club")
      >>> g.num_nodes, g.num_edges, g.num_classes
      (34, 78, 2)
    """
    if name not in NETWORKX_GRAPHS:
        raise ValueError(f"name: unknown networkx graph {name!r}; known: "
                         f"{', '.join(NETWORKX_GRAPHS)}")
    g, label_attr = NETWORKX_GRAPHS[name]()
    return Graph.from_networkx(g, labels=label_attr, weight="weight" if weighted else None,
                               name=name)


# --- sampling ------------------------------------------------------------------------------------


def _sample_block_pairs(
    sizes: np.ndarray, probs: np.ndarray, rng: np.random.Generator, directed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(rows, cols)`` of an SBM with block-pair probabilities ``probs`` (``u < v`` if
    undirected), each pair of distinct nodes drawn independently."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows, cols = [], []
    k = len(sizes)
    for a in range(k):
        for b in range(k) if directed else range(a, k):
            sa, sb = int(sizes[a]), int(sizes[b])
            if a != b:
                pairs = sa * sb
            elif directed:
                pairs = sa * (sa - 1)
            else:
                pairs = sa * (sa - 1) // 2
            if pairs == 0 or probs[a, b] == 0:
                continue
            count = int(rng.binomial(pairs, probs[a, b]))
            idx = _sample_distinct(rng, pairs, count)
            if a != b:
                u, v = idx // sb, idx % sb
            elif directed:
                u, r = idx // (sa - 1), idx % (sa - 1)
                v = r + (r >= u)
            else:
                u, v = _unrank_lower_triangle(idx)
            rows.append(u + offsets[a])
            cols.append(v + offsets[b])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _sample_distinct(rng: np.random.Generator, population: int, count: int) -> np.ndarray:
    """``count`` distinct ints drawn uniformly from ``[0, population)`` (sorted).

    Draws with replacement, drops repeats and draws the shortfall again until there are
    ``count``: the process treats all values alike, so the final set is uniform among the sets
    of that size. Dense draws (over a quarter of the population) use a permutation instead.
    """
    if count * 4 > population:
        return np.sort(rng.permutation(population)[:count])
    chosen = _sorted_unique(rng.integers(0, population, size=count, dtype=np.int64))
    while len(chosen) < count:
        more = rng.integers(0, population, size=count - len(chosen), dtype=np.int64)
        chosen = _sorted_unique(np.concatenate([chosen, more]))
    return chosen


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (NumPy 2.3+'s hash-based ``np.unique`` is slower on int64)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _unrank_lower_triangle(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``idx`` in ``[0, s (s - 1) / 2)`` to the pair ``(i, j)``, ``j < i``, of that rank in
    row-major order of the strict lower triangle; exact in int64 after the float estimate."""
    i = np.floor((1 + np.sqrt(1 + 8 * idx.astype(np.float64))) / 2).astype(np.int64)
    for _ in range(2):  # the float square root can be off by one either way
        i = np.where(i * (i - 1) // 2 > idx, i - 1, i)
        i = np.where((i + 1) * i // 2 <= idx, i + 1, i)
    return i, idx - i * (i - 1) // 2


def _graph_from_pairs(rows, cols, n: int, directed: bool, *, name: str, labels=None,
                      num_classes=None) -> Graph:
    import scipy.sparse as sp

    if not directed:
        rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    index_dtype = np.int32 if n < 2**31 else np.int64
    matrix = sp.csr_array(
        (np.ones(len(rows), np.float32), (rows.astype(index_dtype), cols.astype(index_dtype))),
        shape=(n, n),
    )
    return Graph.from_adjacency(matrix, labels=labels, name=name, directed=directed,
                                num_classes=num_classes)


def _simplex_means(k: int, dim: int, signal: float, rng: np.random.Generator) -> np.ndarray:
    """``[k, dim]`` vertices of a centred regular simplex with edge ``signal``, randomly turned."""
    if k == 1:
        return np.zeros((1, dim))
    centred = np.eye(k) - 1.0 / k  # vertices sqrt(2) apart, in a (k - 1)-dimensional subspace
    u, s, _ = np.linalg.svd(centred)
    coords = u[:, : k - 1] * s[: k - 1]  # the same vertices in k - 1 coordinates
    basis, _ = np.linalg.qr(rng.standard_normal((dim, k - 1)))
    return coords @ basis.T * (signal / np.sqrt(2.0))


def _check_sizes(sizes, argname: str = "sizes") -> np.ndarray:
    arr = np.asarray(sizes)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0):
        raise ValueError(f"{argname}: expected non-negative ints, got {sizes!r}")
    return arr.astype(np.int64)


def _check_probability(argname: str, p) -> None:
    if not (isinstance(p, int | float | np.integer | np.floating) and 0 <= p <= 1):
        raise ValueError(f"{argname}: expected a probability in [0, 1], got {p!r}")
