"""Coordinate-format sparse matrices as pytrees: triplets, duplicates allowed and summed."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.sparse.csr import CSR, _concrete, check_dense_operand


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class COO:
    """A sparse matrix as ``(row, col, value)`` triplets, as a pytree.

    Triplets may repeat a position: every product and conversion sums them. Use it to assemble
    a matrix (edge lists), then :meth:`to_csr` for the fast product.

    Attributes:
      row: ``[nnz]`` int32 row of each triplet.
      col: ``[nnz]`` int32 column of each triplet.
      data: ``[nnz]`` value of each triplet.
      shape: static ``(n_rows, n_cols)``.

    Example:
      >>> import numpy as np
      >>> a = COO.from_triplets([0, 0, 1], [1, 1, 0], [1.0, 2.0, 5.0], shape=(2, 2))
      >>> np.asarray(a.todense()).tolist()
      [[0.0, 3.0], [5.0, 0.0]]
      >>> np.asarray(a @ np.array([1.0, 1.0])).tolist()
      [3.0, 5.0]
    """

    row: jax.Array
    col: jax.Array
    data: jax.Array
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    @property
    def nnz(self) -> int:
        """Number of triplets (duplicates counted separately)."""
        return int(self.data.shape[-1])

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self) -> str:
        return f"COO(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype})"

    @classmethod
    def from_triplets(cls, row: Any, col: Any, data: Any, shape: tuple[int, int]) -> COO:
        """Builds a ``COO`` from equal-length ``row``, ``col`` and ``data`` arrays.

        Args:
          row: ``[nnz]`` integer row of each value, in ``[0, n_rows)``.
          col: ``[nnz]`` integer column of each value, in ``[0, n_cols)``.
          data: ``[nnz]`` values.
          shape: ``(n_rows, n_cols)``.

        Returns:
          The ``COO`` matrix (bounds are checked when the indices are concrete).
        """
        if len(tuple(shape)) != 2 or any(int(s) < 0 for s in shape):
            raise ValueError(f"shape: expected (n_rows, n_cols) >= 0, got {shape!r}")
        shape = (int(shape[0]), int(shape[1]))
        row, col, data = jnp.asarray(row), jnp.asarray(col), jnp.asarray(data)
        for name, array in (("row", row), ("col", col), ("data", data)):
            if array.ndim != 1:
                raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
        if not row.shape == col.shape == data.shape:
            raise ValueError(f"row, col, data: expected equal lengths, got {row.shape[0]}, "
                             f"{col.shape[0]}, {data.shape[0]}")
        for name, array, size in (("row", row, shape[0]), ("col", col, shape[1])):
            if not jnp.issubdtype(array.dtype, jnp.integer):
                raise TypeError(f"{name}: expected integer indices, got {array.dtype}")
            host = _concrete(array)
            if host is not None and host[0].size and not (0 <= host[0].min()
                                                          and host[0].max() < size):
                raise ValueError(f"{name}: expected indices in [0, {size}), got values in "
                                 f"[{host[0].min()}, {host[0].max()}]")
        return cls(row.astype(jnp.int32), col.astype(jnp.int32), data, shape)

    @classmethod
    def from_scipy(cls, matrix: Any, dtype=None) -> COO:
        """Builds a ``COO`` from any SciPy sparse matrix or array (a COO's duplicates kept)."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(
                f"matrix: expected a scipy.sparse matrix or array, got {type(matrix).__name__}"
            )
        m = matrix.tocoo()
        data = m.data if dtype is None else m.data.astype(dtype)
        return cls.from_triplets(m.row.astype(np.int32), m.col.astype(np.int32), data, m.shape)

    @classmethod
    def from_dense(cls, matrix: Any, dtype=None) -> COO:
        """Builds a ``COO`` from a dense 2-D array, keeping its non-zero entries (row-major)."""
        dense = np.asarray(matrix)
        if dense.ndim != 2:
            raise ValueError(f"matrix: expected a 2-D array, got shape {dense.shape}")
        row, col = np.nonzero(dense)
        data = dense[row, col] if dtype is None else dense[row, col].astype(dtype)
        return cls.from_triplets(row.astype(np.int32), col.astype(np.int32), data, dense.shape)

    def to_scipy(self):
        """Returns a ``scipy.sparse.coo_array`` host copy (duplicates kept)."""
        import scipy.sparse as sp

        return sp.coo_array(
            (np.asarray(self.data), (np.asarray(self.row), np.asarray(self.col))), shape=self.shape
        )

    def to_csr(self, *, buckets: bool = True) -> CSR:
        """The same matrix as a :class:`CSR`, duplicates summed (host-side, outside ``jit``)."""
        return CSR.from_scipy(self.to_scipy(), buckets=buckets)

    def todense(self) -> jax.Array:
        """Returns the ``[n_rows, n_cols]`` dense matrix, duplicates summed (jittable)."""
        return jnp.zeros(self.shape, self.dtype).at[self.row, self.col].add(self.data)

    def transpose(self) -> COO:
        """``A^T`` (jittable: the index arrays swap)."""
        return COO(self.col, self.row, self.data, (self.shape[1], self.shape[0]))

    @property
    def T(self) -> COO:  # noqa: N802 - NumPy's name
        return self.transpose()

    def matmul(self, x: Any) -> jax.Array:
        """``A @ x`` for a dense ``x`` of shape ``[n_cols]`` or ``[n_cols, k]`` (jittable; a
        segment sum over the triplets' rows, duplicates summed)."""
        x = check_dense_operand(x, self.shape[1], f"a {self.shape} COO matrix")
        gathered = jnp.take(x, self.col, axis=0)
        values = self.data.reshape((-1,) + (1,) * (x.ndim - 1))
        return jax.ops.segment_sum(values * gathered, self.row, num_segments=self.shape[0])

    def __matmul__(self, x):
        return self.matmul(x)

    __array_priority__ = 1000
    __array_ufunc__ = None
