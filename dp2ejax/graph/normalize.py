"""Degrees, self loops and normalised adjacency matrices (GCN, symmetric, random walk, Laplacian).

Conventions, for an adjacency ``A`` whose entry ``(u, v)`` is the weight of the edge ``u -> v``:

* the out-degree of ``u`` is the row sum ``sum_v A[u, v]``, the in-degree of ``v`` the column sum
  ``sum_u A[u, v]`` (weighted degrees; for an undirected, symmetric ``A`` they agree);
* the symmetric kinds scale rows by the out-degree and columns by the in-degree,
  ``D_out^-1/2 A D_in^-1/2``, which is ``D^-1/2 A D^-1/2`` for undirected graphs, so that
  ``N @ x`` averages ``x`` over the out-neighbours of each node;
* a node with zero degree gets a zero scale (never ``inf`` or ``NaN``): its rows (and, for the
  symmetric kinds, columns) of the result are zero. Weights are assumed non-negative; a degree
  that is not positive counts as zero.

Adding self loops changes the sparsity structure, which a jitted function cannot do: outside
``jit``, :func:`normalized_adjacency` first makes room for the diagonal on the host, then runs
the jittable scaling; under ``jit`` the ``CSR`` must already store every diagonal entry (pass
``add_self_loops(adj, 0.0)``, which stores explicit zeros) and self loops are added in place.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.graph.data import as_csr
from dp2ejax.sparse import CSR

NORMALIZATION_KINDS = ("gcn", "sym", "random_walk", "laplacian")
_DEFAULT_SELF_LOOPS = {"gcn": True, "sym": False, "random_walk": False, "laplacian": False}
_DIRECTIONS = ("out", "in")


def degrees(adj: Any, direction: str = "out") -> jax.Array:
    """Weighted node degrees: row sums (``"out"``) or column sums (``"in"``) of ``adj``.

    Jittable for a ``CSR``; SciPy sparse and dense inputs are converted on the host first.

    Args:
      adj: ``[n, m]`` ``CSR``, SciPy sparse matrix or dense array.
      direction: ``"out"`` (sum over each row, length ``n``) or ``"in"`` (sum over each column,
        length ``m``).

    Returns:
      The degrees, in ``adj``'s value dtype.

    Example:
      >>> import numpy as np
      >>> a = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
      >>> degrees(a, "out").tolist(), degrees(a, "in").tolist()
      ([2.0, 1.0, 0.0], [0.0, 1.0, 2.0])
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected one of {_DIRECTIONS}, got {direction!r}")
    a = as_csr(adj)
    if direction == "out":
        return jax.ops.segment_sum(a.data, a.row_ids, a.n_rows, indices_are_sorted=True)
    return jax.ops.segment_sum(a.data, a.indices, a.n_cols)


def add_self_loops(adj: Any, weight: float = 1.0) -> CSR:
    """Returns ``adj + weight * I`` as a ``CSR`` that stores every diagonal entry (host-side).

    Existing diagonal entries get ``weight`` **added** (so ``A + I`` of a graph that already has
    a self loop of weight 1 has 2 there, as in Kipf & Welling's ``A~ = A + I``). Missing ones are
    inserted, even when ``weight`` is 0: ``add_self_loops(adj, 0.0)`` is the same matrix with its
    diagonal stored explicitly, the structure that jitted normalisation needs. When the diagonal
    is already stored and ``weight`` is 0, ``adj`` is returned as is.

    The new structure is computed with NumPy, so ``adj``'s ``indices`` and ``row_ids`` must be
    concrete (not traced by ``jit``); its values may be traced (under ``grad`` or ``vmap``).

    Args:
      adj: ``[n, n]`` ``CSR``, SciPy sparse matrix or dense array.
      weight: the value added to each diagonal entry.

    Returns:
      The ``CSR``, in ``adj``'s value dtype.

    Example:
      >>> import numpy as np
      >>> a = add_self_loops(np.array([[0.0, 1.0], [1.0, 3.0]]))
      >>> a.nnz, a.todense().tolist()
      (4, [[1.0, 1.0], [1.0, 4.0]])
    """
    a = as_csr(adj)
    n = _check_square(a, "adj")
    structure = _host_structure(a)
    if structure is None:
        raise TypeError(
            "adj: add_self_loops changes the sparsity structure and cannot run under jit; call "
            "it outside jit (add_self_loops(adj, 0.0) stores the diagonal for jitted code)"
        )
    indices, row_ids = structure
    on_diag = indices == row_ids
    if weight == 0 and np.count_nonzero(on_diag) == n and _diag_unique(row_ids[on_diag], n):
        return a
    if n == 0:
        return a
    diag_keys = np.arange(n, dtype=np.int64) * (n + 1)
    keys = row_ids * n + indices
    unique = np.sort(np.concatenate([keys, diag_keys]))
    unique = unique[np.concatenate([[True], unique[1:] != unique[:-1]])]
    old_at, diag_at = np.searchsorted(unique, keys), np.searchsorted(unique, diag_keys)
    try:
        host = np.asarray(a.data)
    except jax.errors.TracerArrayConversionError:  # traced values: move them with jnp
        host = None
    if host is not None:
        data = np.zeros(len(unique), host.dtype)
        np.add.at(data, old_at, host)
        data[diag_at] += np.asarray(weight, host.dtype)
    else:
        data = jnp.zeros(len(unique), a.data.dtype).at[old_at].add(a.data)
        data = data.at[diag_at].add(jnp.asarray(weight, a.data.dtype))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(unique // n, minlength=n))])
    import scipy.sparse as sp

    structure = sp.csr_array((np.zeros(len(unique), np.float32), unique % n, indptr), shape=(n, n))
    return dataclasses.replace(CSR.from_scipy(structure), data=jnp.asarray(data))


def normalized_adjacency(adj: Any, kind: str = "gcn", *, self_loops: bool | None = None) -> CSR:
    """A normalised adjacency (or normalised Laplacian) of ``adj``, as a ``CSR``.

    Kinds (``A`` is ``adj``, plus ``I`` when self loops are added; ``D_out``/``D_in`` its out-
    and in-degree matrices, equal for undirected graphs; see the module docstring):

    * ``"gcn"``: ``D~_out^-1/2 (A + I) D~_in^-1/2`` (Kipf & Welling 2017; self loops by default);
    * ``"sym"``: ``D_out^-1/2 A D_in^-1/2`` (no self loops by default);
    * ``"random_walk"``: ``D_out^-1 A``, row-stochastic (rows of zero out-degree stay zero);
    * ``"laplacian"``: ``I - D_out^-1/2 A D_in^-1/2``, the symmetric normalised Laplacian; the
      ``I`` term is 1 for nodes with an edge (in or out) and 0 for isolated nodes, whose rows and
      columns are zero (Chung's convention, as ``networkx.normalized_laplacian_matrix``).

    The result has ``adj``'s sparsity structure, plus the diagonal when self loops are added or
    for the Laplacian. Outside ``jit`` the diagonal is inserted on the host; under ``jit`` the
    ``CSR`` must already store it (``add_self_loops(adj, 0.0)``), else the missing diagonal
    entries are left out of the result. Integer adjacencies give float results.

    Args:
      adj: ``[n, n]`` ``CSR`` (jittable), SciPy sparse matrix or dense array.
      kind: one of ``"gcn"``, ``"sym"``, ``"random_walk"``, ``"laplacian"``.
      self_loops: add ``I`` to ``A`` before normalising; ``None`` uses the kind's default
        (``True`` for ``"gcn"``, ``False`` otherwise). ``normalized_adjacency(a, "sym",
        self_loops=True)`` equals ``normalized_adjacency(a, "gcn")``.

    Returns:
      The normalised ``[n, n]`` ``CSR``.

    Example:
      >>> import numpy as np
      >>> a = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
      >>> np.round(np.asarray(normalized_adjacency(a, "gcn").todense(), float), 3).tolist()
      [[0.333, 0.408, 0.408], [0.408, 0.5, 0.0], [0.408, 0.0, 0.5]]
      >>> normalized_adjacency(a, "random_walk").todense().tolist()
      [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    if kind not in NORMALIZATION_KINDS:
        known = ", ".join(NORMALIZATION_KINDS)
        raise ValueError(f"kind: unknown normalisation {kind!r}; known: {known}")
    if self_loops is None:
        self_loops = _DEFAULT_SELF_LOOPS[kind]
    a = as_csr(adj)
    _check_square(a, "adj")
    if not jnp.issubdtype(a.data.dtype, jnp.inexact):
        a = dataclasses.replace(a, data=a.data.astype(jnp.result_type(float)))
    needs_diagonal = self_loops or kind == "laplacian"
    if needs_diagonal and _host_structure(a) is not None:
        a = add_self_loops(a, 0.0)
    return _scale(a, kind, bool(self_loops))


@functools.partial(jax.jit, static_argnames=("kind", "self_loops"))
def _scale(a: CSR, kind: str, self_loops: bool) -> CSR:
    """The jittable part of :func:`normalized_adjacency` (one compiled program when eager)."""
    diag = a.indices == a.row_ids
    data = a.data
    if self_loops:
        data = data + jnp.where(diag, jnp.ones((), data.dtype), jnp.zeros((), data.dtype))
    rows = jax.ops.segment_sum(data, a.row_ids, a.n_rows, indices_are_sorted=True)
    cols = jax.ops.segment_sum(data, a.indices, a.n_cols)
    if kind == "random_walk":
        data = data * _inverse_power(rows, 1.0)[a.row_ids]
    else:
        data = data * _inverse_power(rows, 0.5)[a.row_ids]
        data = data * _inverse_power(cols, 0.5)[a.indices]
    if kind == "laplacian":
        has_edge = (rows > 0) | (cols > 0)
        data = jnp.where(diag & has_edge[a.row_ids], 1 - data, -data)
    return dataclasses.replace(a, data=data)


def _inverse_power(x: jax.Array, p: float) -> jax.Array:
    """``x ** -p`` where ``x > 0``, else 0, with no ``inf`` or ``NaN`` in values or gradients."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1) ** -p, 0)


def _host_structure(a: CSR) -> tuple[np.ndarray, np.ndarray] | None:
    """``(indices, row_ids)`` as int64 NumPy arrays, or ``None`` when they are traced."""
    try:
        return np.asarray(a.indices, dtype=np.int64), np.asarray(a.row_ids, dtype=np.int64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_square(a: CSR, argname: str) -> int:
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{argname}: expected a square [n, n] adjacency, got shape {a.shape}")
    return a.shape[0]


def _diag_unique(rows_on_diag: np.ndarray, n: int) -> bool:
    return bool(np.all(np.bincount(rows_on_diag, minlength=n) == 1))
