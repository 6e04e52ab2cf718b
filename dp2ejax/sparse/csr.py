"""Compressed sparse row matrices as pytrees, and their product with skinny dense matrices."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from dp2ejax.sparse.buckets import DegreeBuckets, bucket_matmul, build_buckets


def _concrete(*arrays) -> list[np.ndarray] | None:
    """Host copies of ``arrays``, or None when one of them is a tracer (under jit/vmap)."""
    try:
        return [np.asarray(a) for a in arrays]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_dense_operand(x: Any, size: int, what: str) -> jax.Array:
    """``x`` as a JAX array of shape ``[size]`` or ``[size, k]``, or a ValueError naming it."""
    if hasattr(x, "todense") and not hasattr(x, "__array__"):
        raise TypeError(f"x: expected a dense array, got {type(x).__name__} (sparse @ sparse is "
                        "not supported; call .todense() on one side)")
    x = jnp.asarray(x)
    if x.ndim not in (1, 2) or x.shape[0] != size:
        raise ValueError(f"x: expected shape [{size}] or [{size}, k] to multiply {what}, got "
                         f"{x.shape}")
    return x


# Jitted once per shape, so that eager calls do not dispatch the unrolled kernel op by op.
_bucket_matmul = jax.jit(bucket_matmul, static_argnums=3)


@functools.partial(jax.jit, static_argnums=4)
def _segment_matmul(data, indices, row_ids, x, n_rows):
    """``A @ x`` by segment sums: products of the gathered rows, summed per row."""
    gathered = jnp.take(x, indices, axis=0)
    values = data.reshape((-1,) + (1,) * (x.ndim - 1))
    return jax.ops.segment_sum(values * gathered, row_ids, num_segments=n_rows,
                               indices_are_sorted=True)


def _check_vector(d: Any, size: int, name: str, what: str) -> jax.Array:
    d = jnp.asarray(d)
    if d.shape != (size,):
        raise ValueError(f"{name}: expected shape [{size}] ({what}), got {d.shape}")
    return d


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class CSR:
    """A sparse matrix in compressed sparse row form, as a pytree.

    ``data``, ``indices``, ``indptr`` and ``row_ids`` are array leaves (so a ``CSR`` passes
    through ``jit``, ``vmap`` and ``grad`` with respect to ``data``); ``shape`` is static.
    ``row_ids[j]`` is the row of the ``j``-th stored value: it is ``indptr`` expanded, kept so
    that products need no search under ``jit``.

    ``buckets`` is the same structure grouped by row degree (:mod:`dp2ejax.sparse.buckets`): the
    layout of the fast product. The host constructors (``from_scipy``, ``from_dense``, ``eye``,
    :meth:`COO.to_csr`, and :meth:`transpose` outside ``jit``) build it; methods that change only
    the values (``with_data``, ``astype``, ``scale_rows``, ``scale_cols``, ``row_normalize``)
    keep it. A matrix without it (``buckets=False``, or transposed under ``jit``) multiplies by
    segment sums: the same exact sum, several times slower on CPU.

    Why buckets are the default (CPU, random matrices with ~16 values per row, float32,
    n = 2**16..2**20, k = 16..128; benchmarks/RESULTS.md, "SpMM"): they compute each row's sum in
    one fused loop that reads ``x``'s rows straight from their gathers, where the segment-sum
    product first writes an ``[nnz, k]`` array of products and then scatter-adds it: the buckets
    are 2.9-6.7x faster, 1.15-2.7x faster than SciPy (single-threaded) and on par with or
    faster than jax.experimental.sparse's BCSR (a native CPU kernel; 0.8-1.35x), with a 16-layer
    propagation of a 2**24-edge graph needing ~1.4 GB instead of ~5.4 GB. A padded ELL of the
    whole matrix (every row padded to the longest) pays for its padding, and a reduction over
    the padded axis compiles to a slow loop on XLA:CPU; the unrolled per-bucket sum does not.

    Under :func:`dp2ejax.emulate` the two products round differently: the bucketed one is a
    chain of additions, each rounded (``sequential`` accumulation, and a large program to
    compile with random rounding), the segment-sum one is one reduction per row, rounded once
    (``exact`` accumulation, as a dense matmul). :meth:`without_buckets` gives the second;
    :func:`dp2ejax.graph.emulation_operator` does so for the graph code.

    Attributes:
      data: ``[nnz]`` stored values.
      indices: ``[nnz]`` int32 column of each stored value, sorted within a row.
      indptr: ``[n_rows + 1]`` int32 offsets of each row's values in ``data``.
      row_ids: ``[nnz]`` int32 row of each stored value.
      shape: ``(n_rows, n_cols)``.
      buckets: the :class:`~dp2ejax.sparse.buckets.DegreeBuckets` of the structure, or None.

    Example:
      >>> import numpy as np
      >>> a = CSR.from_dense(np.array([[0.0, 2.0], [1.0, 0.0]]))
      >>> a.nnz
      2
      >>> np.asarray(a @ np.ones((2, 3))).tolist()
      [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]
    """

    data: jax.Array
    indices: jax.Array
    indptr: jax.Array
    row_ids: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    buckets: DegreeBuckets | None = None

    # --- properties ------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Number of stored values (explicit zeros included)."""
        return int(self.data.shape[-1])

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    def __repr__(self) -> str:
        layout = "buckets" if self.buckets is not None else "segments"
        return f"CSR(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, product={layout})"

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_scipy(cls, matrix: Any, dtype=None, *, buckets: bool = True) -> CSR:
        """Builds a ``CSR`` from any SciPy sparse matrix or array (duplicates are summed).

        Args:
          matrix: a ``scipy.sparse`` matrix or array, of any format.
          dtype: the dtype of ``data`` (default: the matrix's, as JAX stores it).
          buckets: build the degree buckets of the fast product (host work of ``O(nnz)``).

        Returns:
          The ``CSR`` matrix, column indices sorted within each row.

        Example:
          >>> import scipy.sparse as sp
          >>> CSR.from_scipy(sp.eye(3, format="coo"), dtype="float32")
          CSR(shape=(3, 3), nnz=3, dtype=float32, product=buckets)
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(
                f"matrix: expected a scipy.sparse matrix or array, got {type(matrix).__name__}"
            )
        m = sp.csr_matrix(matrix)
        m.sum_duplicates()
        m.sort_indices()
        data = np.asarray(m.data if dtype is None else m.data.astype(dtype))
        return cls._from_host(data, m.indices, m.indptr, m.shape, buckets=buckets)

    @classmethod
    def from_dense(cls, matrix: Any, dtype=None, *, buckets: bool = True) -> CSR:
        """Builds a ``CSR`` from a dense 2-D array, keeping its non-zero entries.

        Example:
          >>> CSR.from_dense([[1.0, 0.0], [0.0, 0.0]]).nnz
          1
        """
        import scipy.sparse as sp

        dense = np.asarray(matrix)
        if dense.ndim != 2:
            raise ValueError(f"matrix: expected a 2-D array, got shape {dense.shape}")
        return cls.from_scipy(sp.csr_matrix(dense), dtype=dtype, buckets=buckets)

    @classmethod
    def eye(cls, n: int, dtype=jnp.float32) -> CSR:
        """The ``n x n`` identity.

        Example:
          >>> import numpy as np
          >>> np.asarray(CSR.eye(2) @ np.array([3.0, 4.0])).tolist()
          [3.0, 4.0]
        """
        if int(n) < 0:
            raise ValueError(f"n: expected a non-negative size, got {n}")
        n = int(n)
        return cls._from_host(np.ones(n, dtype), np.arange(n), np.arange(n + 1), (n, n))

    @classmethod
    def _from_host(cls, data, indices, indptr, shape, buckets: bool = True) -> CSR:
        indptr = np.asarray(indptr, dtype=np.int64)
        counts = np.diff(indptr)
        row_ids = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return cls(
            data=jnp.asarray(data),
            indices=jnp.asarray(np.asarray(indices, dtype=np.int32)),
            indptr=jnp.asarray(indptr.astype(np.int32)),
            row_ids=jnp.asarray(row_ids),
            shape=(int(shape[0]), int(shape[1])),
            buckets=build_buckets(indices, indptr) if buckets else None,
        )

    def with_buckets(self) -> CSR:
        """This matrix with the degree buckets of the fast product built (host work; outside
        ``jit`` only). A matrix that has them is returned as is."""
        if self.buckets is not None:
            return self
        host = _concrete(self.indices, self.indptr)
        if host is None:
            raise ValueError("with_buckets: the structure (indices, indptr) is traced; build the "
                             "buckets outside jit and pass the matrix in")
        return dataclasses.replace(self, buckets=build_buckets(*host))

    def without_buckets(self) -> CSR:
        """This matrix with the segment-sum product (for comparisons)."""
        return dataclasses.replace(self, buckets=None)

    # --- conversions -----------------------------------------------------------------------

    def to_scipy(self):
        """Returns the matrix as a ``scipy.sparse.csr_array`` (a host copy)."""
        import scipy.sparse as sp

        return sp.csr_array(
            (np.asarray(self.data), np.asarray(self.indices), np.asarray(self.indptr)),
            shape=self.shape,
        )

    def todense(self) -> jax.Array:
        """Returns the ``[n_rows, n_cols]`` dense matrix (jittable)."""
        dense = jnp.zeros(self.shape, self.data.dtype)
        return dense.at[self.row_ids, self.indices].add(self.data)

    # --- same structure, new values ---------------------------------------------------------

    def with_data(self, data: Any) -> CSR:
        """The same structure with the values ``data`` (``[nnz]``; jittable, differentiable).

        Example:
          >>> import numpy as np
          >>> a = CSR.eye(2).with_data(np.array([2.0, 3.0]))
          >>> np.asarray(a.todense()).tolist()
          [[2.0, 0.0], [0.0, 3.0]]
        """
        data = jnp.asarray(data)
        if data.shape != (self.nnz,):
            raise ValueError(f"data: expected shape [{self.nnz}] (one value per stored entry), "
                             f"got {data.shape}")
        return dataclasses.replace(self, data=data)

    def astype(self, dtype) -> CSR:
        """The same matrix with ``data`` cast to ``dtype``."""
        return dataclasses.replace(self, data=self.data.astype(dtype))

    def scale_rows(self, d: Any) -> CSR:
        """``diag(d) @ A``: row ``i`` multiplied by ``d[i]`` (``d``: ``[n_rows]``; jittable).

        Example:
          >>> import numpy as np
          >>> a = CSR.from_dense(np.array([[1.0, 2.0], [3.0, 0.0]]))
          >>> np.asarray(a.scale_rows(np.array([10.0, -1.0])).todense()).tolist()
          [[10.0, 20.0], [-3.0, 0.0]]
        """
        d = _check_vector(d, self.n_rows, "d", "one factor per row")
        return dataclasses.replace(self, data=self.data * d[self.row_ids])

    def scale_cols(self, d: Any) -> CSR:
        """``A @ diag(d)``: column ``j`` multiplied by ``d[j]`` (``d``: ``[n_cols]``; jittable).

        Example:
          >>> import numpy as np
          >>> a = CSR.from_dense(np.array([[1.0, 2.0], [3.0, 0.0]]))
          >>> np.asarray(a.scale_cols(np.array([10.0, -1.0])).todense()).tolist()
          [[10.0, -2.0], [30.0, 0.0]]
        """
        d = _check_vector(d, self.n_cols, "d", "one factor per column")
        return dataclasses.replace(self, data=self.data * d[self.indices])

    def row_normalize(self) -> CSR:
        """Each row divided by its sum, so that it sums to 1 (jittable, differentiable).

        Rows whose sum is zero (empty rows among them) are left unchanged: no NaN or inf.
        Needs floating-point ``data``.

        Example:
          >>> import numpy as np
          >>> a = CSR.from_dense(np.array([[1.0, 3.0], [0.0, 0.0]])).row_normalize()
          >>> np.asarray(a.todense()).tolist()
          [[0.25, 0.75], [0.0, 0.0]]
        """
        if not jnp.issubdtype(self.dtype, jnp.inexact):
            raise TypeError(f"row_normalize: expected floating-point data, got {self.dtype} "
                            "(cast first with .astype(jnp.float32))")
        sums = self.row_sums()
        nonzero = sums != 0
        factors = jnp.where(nonzero, 1 / jnp.where(nonzero, sums, 1), 1)
        return self.scale_rows(factors)

    # --- reductions -------------------------------------------------------------------------

    def row_sums(self) -> jax.Array:
        """``[n_rows]`` sum of each row (``A @ 1``; jittable)."""
        return jax.ops.segment_sum(self.data, self.row_ids, num_segments=self.n_rows,
                                   indices_are_sorted=True)

    def col_sums(self) -> jax.Array:
        """``[n_cols]`` sum of each column (``1 @ A``; jittable)."""
        return jax.ops.segment_sum(self.data, self.indices, num_segments=self.n_cols)

    def diagonal(self) -> jax.Array:
        """``[min(n_rows, n_cols)]`` main diagonal (duplicates summed; jittable).

        Example:
          >>> import numpy as np
          >>> np.asarray(CSR.from_dense(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])).diagonal())
          array([1., 0.]...)
        """
        size = min(self.shape)
        on_diagonal = self.row_ids == self.indices
        values = jnp.where(on_diagonal, self.data, jnp.zeros((), self.dtype))
        rows = jnp.where(on_diagonal, self.row_ids, size)  # off-diagonal: dropped
        return jax.ops.segment_sum(values, rows, num_segments=size)

    # --- transpose --------------------------------------------------------------------------

    def transpose(self, *, buckets: bool = True) -> CSR:
        """``A^T`` as a ``CSR`` (jittable: a stable sort of the stored values by column).

        Outside ``jit`` the result also gets its degree buckets (the fast product; host work of
        ``O(nnz)``) unless ``buckets=False``; under ``jit`` it multiplies by segment sums.

        Example:
          >>> import numpy as np
          >>> a = CSR.from_dense(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
          >>> np.asarray(a.T.todense()).tolist()
          [[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]
        """
        structure = _concrete(self.indices, self.indptr)
        if structure is None:  # traced: XLA's stable sort by column
            order = jnp.argsort(self.indices, stable=True)
            counts = jnp.bincount(self.indices, length=self.n_cols)
            indptr = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                      jnp.cumsum(counts).astype(jnp.int32)])
            indices, row_ids = self.row_ids[order], self.indices[order]
        else:  # SciPy's CSR -> CSC counting sort, O(nnz): 0.1 s at 10**7 values, XLA's 4 s
            cols, indptr = structure
            positions = sp.csr_matrix((np.arange(cols.size, dtype=np.int64), cols, indptr),
                                      shape=self.shape).tocsc()
            order = positions.data
            indptr, indices = positions.indptr.astype(np.int32), positions.indices.astype(np.int32)
            row_ids = np.repeat(np.arange(self.n_cols, dtype=np.int32), np.diff(indptr))
        host = (indices, indptr) if structure is not None and buckets else None
        return CSR(
            data=self.data[order],
            indices=jnp.asarray(indices),
            indptr=jnp.asarray(indptr),
            row_ids=jnp.asarray(row_ids),
            shape=(self.n_cols, self.n_rows),
            buckets=None if host is None else build_buckets(*host),
        )

    @property
    def T(self) -> CSR:  # noqa: N802 - NumPy's name
        """``A^T`` (see :meth:`transpose`)."""
        return self.transpose()

    # --- products ---------------------------------------------------------------------------

    def matmul(self, x: Any) -> jax.Array:
        """``A @ x`` for a dense ``x`` of shape ``[n_cols]`` or ``[n_cols, k]`` (jittable).

        Args:
          x: the dense operand.

        Returns:
          ``[n_rows]`` or ``[n_rows, k]``: each entry the exact sum of the stored products
          (in column order with the buckets), in the promoted dtype of ``data`` and ``x``.
        """
        x = check_dense_operand(x, self.n_cols, f"a {self.shape} CSR matrix")
        if self.buckets is not None:
            return _bucket_matmul(self.buckets, self.data, x, self.n_rows)
        return _segment_matmul(self.data, self.indices, self.row_ids, x, self.n_rows)

    def __matmul__(self, x):
        return self.matmul(x)

    def rmatmul(self, x: Any) -> jax.Array:
        """``x @ A`` for a dense ``x`` of shape ``[n_rows]`` or ``[m, n_rows]`` (jittable).

        Example:
          >>> import numpy as np
          >>> a = CSR.from_dense(np.array([[1.0, 2.0], [0.0, 3.0]]))
          >>> np.asarray(np.array([1.0, 10.0]) @ a).tolist()
          [1.0, 32.0]
        """
        if hasattr(x, "todense") and not hasattr(x, "__array__"):
            raise TypeError(f"x: expected a dense array, got {type(x).__name__}")
        x = jnp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.n_rows:
            raise ValueError(f"x: expected shape [{self.n_rows}] or [m, {self.n_rows}] to "
                             f"multiply a {self.shape} CSR matrix from the left, got {x.shape}")
        columns = x.T  # [n_rows] or [n_rows, m]
        gathered = jnp.take(columns, self.row_ids, axis=0)
        values = self.data.reshape((-1,) + (1,) * (x.ndim - 1))
        out = jax.ops.segment_sum(values * gathered, self.indices, num_segments=self.n_cols)
        return out.T

    def __rmatmul__(self, x):
        return self.rmatmul(x)

    # NumPy would otherwise try to multiply element by element when an ndarray is on the left.
    __array_priority__ = 1000
    __array_ufunc__ = None
