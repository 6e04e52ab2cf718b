"""``Graph``: an adjacency matrix with optional node features and labels, as a pytree.

The adjacency is a :class:`dp2ejax.sparse.CSR` (``n x n``, weighted or 0/1, directed allowed;
undirected graphs are stored symmetric, each edge once in each direction). Features and labels
are array leaves beside it; the name, whether the graph is directed and the number of classes are
static metadata, so a ``Graph`` passes through ``jit`` and ``vmap`` like any pytree. Host-side
helpers (conversion to and from networkx, train/val/test splits, connectivity) read the leaves
with NumPy and are meant to run outside ``jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.sparse import CSR


class SplitMasks(NamedTuple):
    """Boolean node masks of a train/validation/test split (each ``bool[n]``)."""

    train: jax.Array
    val: jax.Array
    test: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Graph:
    """A graph: ``CSR`` adjacency, optional node features and labels, static metadata.

    Attributes:
      adjacency: ``[n, n]`` :class:`~dp2ejax.sparse.CSR`; entry ``(u, v)`` is the weight of the
        edge ``u -> v``. Undirected graphs hold both ``(u, v)`` and ``(v, u)``.
      features: ``[n, f]`` node features, or ``None``.
      labels: ``int32[n]`` node labels in ``[0, num_classes)``, or ``None``.
      name: a name for reports (static).
      directed: whether edges are directed (static).
      num_classes: the number of label classes, or ``None`` without labels (static).

    The constructor checks that ``features`` has ``n`` rows and ``labels`` ``n`` entries (when
    they are arrays; batched leaves, with leading axes, are checked on their trailing axes).
    :meth:`from_adjacency` also converts SciPy or dense adjacencies and infers the metadata.

    Example:
      >>> import numpy as np
      >>> g = Graph.from_adjacency(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]),
      ...                          labels=np.array([0, 1, 0]))
      >>> g.num_nodes, g.num_edges, g.directed, g.num_classes
      (3, 2, False, 2)
    """

    adjacency: CSR
    features: jax.Array | None = None
    labels: jax.Array | None = None
    name: str = dataclasses.field(default="graph", metadata=dict(static=True))
    directed: bool = dataclasses.field(default=False, metadata=dict(static=True))
    num_classes: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        # jax rebuilds pytrees with tracers or placeholder leaves: check only array-like leaves.
        if not isinstance(self.adjacency, CSR):
            return
        shape = self.adjacency.shape
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"adjacency: expected a square [n, n] matrix, got shape {shape}")
        n = shape[0]
        f_shape = getattr(self.features, "shape", None)
        if f_shape is not None and (len(f_shape) < 2 or f_shape[-2] != n):
            raise ValueError(
                f"features: expected shape [n, f] with n = {n} rows (one per node), got {f_shape}"
            )
        l_shape = getattr(self.labels, "shape", None)
        if l_shape is not None and (len(l_shape) < 1 or l_shape[-1] != n):
            raise ValueError(f"labels: expected shape [{n}] (one per node), got {l_shape}")

    # --- sizes -----------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """The number of nodes ``n`` (static)."""
        return self.adjacency.shape[0]

    @property
    def num_edges(self) -> int:
        """The number of edges (host-side): stored entries, each undirected edge counted once.

        For an undirected graph a self loop is one stored entry and one edge; every other edge
        is two stored entries.
        """
        if self.directed:
            return self.adjacency.nnz
        loops = int(np.count_nonzero(np.asarray(self.adjacency.indices)
                                     == np.asarray(self.adjacency.row_ids)))
        return (self.adjacency.nnz + loops) // 2

    @property
    def num_features(self) -> int | None:
        """The feature dimension ``f``, or ``None`` without features."""
        return None if self.features is None else int(self.features.shape[-1])

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_adjacency(
        cls,
        adjacency: Any,
        features: Any = None,
        labels: Any = None,
        *,
        name: str = "graph",
        directed: bool | None = None,
        num_classes: int | None = None,
        dtype: Any = None,
    ) -> Graph:
        """Builds a ``Graph`` from a ``CSR``, SciPy sparse or dense adjacency (host-side).

        Args:
          adjacency: ``[n, n]`` ``CSR``, SciPy sparse matrix/array or dense array.
          features: ``[n, f]`` array or ``None``.
          labels: ``[n]`` integer array or ``None``; stored as int32.
          name: the graph's name.
          directed: whether the graph is directed; ``None`` infers it (directed unless the
            adjacency is symmetric).
          num_classes: the number of classes; ``None`` infers ``max(labels) + 1``.
          dtype: the adjacency's value dtype; ``None`` keeps it.

        Returns:
          The ``Graph``.
        """
        adj = as_csr(adjacency, dtype=dtype, argname="adjacency")
        if directed is None:
            directed = not _is_symmetric(adj)
        if labels is not None:
            labels_np = np.asarray(labels)
            if labels_np.size and not np.issubdtype(labels_np.dtype, np.integer):
                if not np.all(np.equal(np.mod(labels_np, 1), 0)):
                    raise ValueError(f"labels: expected integers, got dtype {labels_np.dtype}")
            if labels_np.size and labels_np.min() < 0:
                raise ValueError(f"labels: expected non-negative class ids, got {labels_np.min()}")
            if num_classes is None:
                num_classes = int(labels_np.max()) + 1 if labels_np.size else 0
            elif labels_np.size and labels_np.max() >= num_classes:
                raise ValueError(
                    f"labels: expected class ids below num_classes={num_classes}, "
                    f"got {labels_np.max()}"
                )
            labels = jnp.asarray(labels_np.astype(np.int32))
        if features is not None:
            features = jnp.asarray(features)
        return cls(
            adjacency=adj,
            features=features,
            labels=labels,
            name=str(name),
            directed=bool(directed),
            num_classes=None if num_classes is None else int(num_classes),
        )

    @classmethod
    def from_networkx(
        cls,
        g: Any,
        *,
        features: Any = None,
        labels: Any = None,
        weight: str | None = "weight",
        name: str | None = None,
        dtype: Any = np.float32,
    ) -> Graph:
        """Builds a ``Graph`` from a networkx graph; node ``i`` is the ``i``-th of ``g.nodes``.

        Args:
          g: a ``networkx.Graph`` or ``DiGraph`` (multigraph edges are summed).
          features: ``[n, f]`` array, or the name of a node attribute holding each node's
            feature vector, or ``None``.
          labels: ``[n]`` integer array, or the name of a node attribute holding each node's
            class (any sortable values: classes are numbered in sorted order), or ``None``.
          weight: the edge attribute holding weights (``None``: every edge weighs 1; edges
            without the attribute weigh 1).
          name: the graph's name; ``None`` uses ``g.name`` or ``"graph"``.
          dtype: the adjacency's value dtype.

        Returns:
          The ``Graph`` (``directed`` is ``g.is_directed()``).

        Example:
          >>> import networkx as nx
          >>> g = Graph.from_networkx(nx.path_graph(4))
          >>> g.num_nodes, g.num_edges
          (4, 3)
        """
        import networkx as nx

        nodes = list(g.nodes)
        adj = nx.to_scipy_sparse_array(g, nodelist=nodes, weight=weight, dtype=dtype, format="csr")
        if isinstance(features, str):
            features = np.stack([np.asarray(g.nodes[v][features]) for v in nodes])
        if isinstance(labels, str):
            attr = labels
            missing = [v for v in nodes if attr not in g.nodes[v]]
            if missing:
                raise ValueError(f"labels: node attribute {attr!r} is missing on node "
                                 f"{missing[0]!r}")
            values = [g.nodes[v][attr] for v in nodes]
            classes = sorted(set(values))
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[x] for x in values], dtype=np.int32)
        return cls.from_adjacency(
            adj,
            features,
            labels,
            name=name or getattr(g, "name", "") or "graph",
            directed=g.is_directed(),
        )

    def to_networkx(self) -> Any:
        """Returns a networkx ``Graph``/``DiGraph`` (host-side) with nodes ``0..n-1``.

        Edges carry their value as the ``"weight"`` attribute; nodes carry ``"label"`` (an int)
        and ``"features"`` (a NumPy vector) when the graph has them.

        Returns:
          The networkx graph.

        Example:
          >>> import networkx as nx
          >>> Graph.from_networkx(nx.cycle_graph(5)).to_networkx().number_of_edges()
          5
        """
        import networkx as nx

        create = nx.DiGraph if self.directed else nx.Graph
        g = nx.from_scipy_sparse_array(self.adjacency.to_scipy(), create_using=create)
        g.name = self.name
        if self.labels is not None:
            labels = np.asarray(self.labels)
            nx.set_node_attributes(g, {i: int(c) for i, c in enumerate(labels)}, "label")
        if self.features is not None:
            feats = np.asarray(self.features)
            nx.set_node_attributes(g, {i: feats[i] for i in range(len(feats))}, "features")
        return g

    # --- derived graphs --------------------------------------------------------------------------

    def with_features(self, features: Any) -> Graph:
        """Returns a copy with ``features`` (``[n, f]`` array, or ``None`` to drop them)."""
        return dataclasses.replace(
            self, features=None if features is None else jnp.asarray(features)
        )

    def with_labels(self, labels: Any, num_classes: int | None = None) -> Graph:
        """Returns a copy with ``labels`` (``[n]`` ints or ``None``), as :meth:`from_adjacency`."""
        if labels is None:
            return dataclasses.replace(self, labels=None, num_classes=None)
        return Graph.from_adjacency(
            self.adjacency, self.features, labels, name=self.name, directed=self.directed,
            num_classes=num_classes,
        )

    # --- host-side analyses ----------------------------------------------------------------------

    def split(
        self,
        key_or_seed: Any,
        train: float | int = 0.6,
        val: float | int = 0.2,
        test: float | int = 0.2,
    ) -> SplitMasks:
        """Random train/validation/test node masks (host-side), stratified by class.

        With labels, each class is split separately, so every mask holds (up to rounding) the
        same class proportions; without labels, all nodes are split together. A float is a
        fraction of the (class's) nodes; an int a number of nodes (per class with labels, as in
        the Planetoid splits). Counts are cumulative roundings, so fractions summing to 1 put
        every node in exactly one mask; fractions summing to less leave the rest unassigned.

        Args:
          key_or_seed: an int seed or a ``jax.random`` key; the same one gives the same split.
          train, val, test: fractions in ``[0, 1]`` (summing to at most 1) or node counts.

        Returns:
          ``SplitMasks(train, val, test)``, disjoint ``bool[n]`` arrays.

        Example:
          >>> import networkx as nx
          >>> g = Graph.from_networkx(nx.path_graph(10))
          >>> m = g.split(0, train=0.5, val=0.2, test=0.3)
          >>> [int(x.sum()) for x in m]
          [5, 2, 3]
        """
        sizes = (train, val, test)
        fractions = not any(isinstance(s, int | np.integer) and not isinstance(s, bool)
                            for s in sizes)
        for arg, s in zip(("train", "val", "test"), sizes, strict=True):
            if s < 0 or (fractions and s > 1):
                raise ValueError(f"{arg}: expected a fraction in [0, 1] or a count >= 0, got {s}")
        if fractions and sum(sizes) > 1 + 1e-9:
            raise ValueError(f"train, val, test: fractions must sum to at most 1, got {sum(sizes)}")
        rng = np.random.default_rng(_seed_entropy(key_or_seed))
        n = self.num_nodes
        groups = [np.arange(n)]
        if self.labels is not None:
            labels = np.asarray(self.labels)
            groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        which = np.full(n, -1, np.int8)
        for nodes in groups:
            nodes = rng.permutation(nodes)
            if fractions:
                bounds = np.round(np.cumsum(sizes) * len(nodes)).astype(np.int64)
            else:
                bounds = np.cumsum(sizes).astype(np.int64)
            bounds = np.minimum(bounds, len(nodes))
            starts = np.concatenate([[0], bounds[:-1]])
            for part, (lo, hi) in enumerate(zip(starts, bounds, strict=True)):
                which[nodes[lo:hi]] = part
        return SplitMasks(*(jnp.asarray(which == part) for part in range(3)))

    def is_connected(self, *, strong: bool = False) -> bool:
        """Whether the graph is connected (host-side, ``scipy.sparse.csgraph``).

        Args:
          strong: for a directed graph, ask for strong connectivity (every node reaches every
            other along edge directions); the default asks for weak connectivity (connected
            when directions are ignored). Undirected graphs ignore it.

        Returns:
          ``True`` when there is one connected component (an empty graph is not connected).

        Example:
          >>> import networkx as nx
          >>> Graph.from_networkx(nx.path_graph(3)).is_connected()
          True
        """
        from scipy.sparse.csgraph import connected_components

        if self.num_nodes == 0:
            return False
        count, _ = connected_components(
            self.adjacency.to_scipy(),
            directed=self.directed,
            connection="strong" if strong else "weak",
        )
        return count == 1


def as_csr(matrix: Any, dtype: Any = None, *, argname: str = "adj") -> CSR:
    """Converts a ``CSR``, SciPy sparse matrix/array or dense 2-D array to a ``CSR``.

    A ``CSR`` is returned unchanged when ``dtype`` is ``None`` or its own; otherwise its values
    are cast (jittable). The other inputs are converted on the host.

    Args:
      matrix: the matrix.
      dtype: the value dtype of the result, or ``None`` to keep the input's.
      argname: the argument name used in error messages.

    Returns:
      The ``CSR``.
    """
    if isinstance(matrix, Graph):
        matrix = matrix.adjacency
    if isinstance(matrix, CSR):
        if dtype is None or matrix.data.dtype == dtype:
            return matrix
        return dataclasses.replace(matrix, data=matrix.data.astype(dtype))
    import scipy.sparse as sp

    if sp.issparse(matrix):
        return CSR.from_scipy(matrix, dtype=dtype)
    try:
        dense = np.asarray(matrix)
    except Exception as e:  # noqa: BLE001 - reported with the argument's name below
        raise TypeError(f"{argname}: expected a CSR, a scipy.sparse matrix or a dense array, "
                        f"got {type(matrix).__name__}") from e
    if dense.ndim != 2 or dense.dtype == object:
        raise TypeError(f"{argname}: expected a CSR, a scipy.sparse matrix or a 2-D dense array, "
                        f"got {type(matrix).__name__} of shape {dense.shape}")
    return CSR.from_dense(dense, dtype=dtype)


def _is_symmetric(adj: CSR) -> bool:
    m = adj.to_scipy()
    if m.shape[0] != m.shape[1]:
        return False
    diff = (m - m.T).tocsr()
    diff.eliminate_zeros()
    return diff.nnz == 0


def _seed_entropy(key_or_seed: Any):
    """A NumPy seed from an int seed or a ``jax.random`` key (typed or raw ``uint32[2]``)."""
    if isinstance(key_or_seed, int | np.integer) and not isinstance(key_or_seed, bool):
        if key_or_seed < 0:
            raise ValueError(f"key_or_seed: expected a non-negative seed, got {key_or_seed}")
        return int(key_or_seed)
    if isinstance(key_or_seed, jax.Array | np.ndarray):
        key = key_or_seed
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        bits = np.asarray(key)
        if np.issubdtype(bits.dtype, np.unsignedinteger):
            return [int(b) for b in bits.ravel()]
    raise TypeError(f"key_or_seed: expected an int seed or a jax.random key, got "
                    f"{type(key_or_seed).__name__}")
