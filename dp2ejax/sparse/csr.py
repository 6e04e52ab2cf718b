"""Compressed sparse row matrices as pytrees, and their product with skinny dense matrices."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CSR:
    """A sparse matrix in compressed sparse row form, as a pytree.

    ``data``, ``indices``, ``indptr`` and ``row_ids`` are array leaves (so a ``CSR`` passes
    through ``jit``, ``vmap`` over stacked matrices and ``grad`` with respect to ``data``);
    ``shape`` is static. ``row_ids[j]`` is the row of the ``j``-th stored value: it is
    ``indptr`` expanded, kept so that products need no search under ``jit``.

    Attributes:
      data: ``[nnz]`` stored values.
      indices: ``[nnz]`` int32 column of each stored value, sorted within a row.
      indptr: ``[n_rows + 1]`` int32 offsets of each row's values in ``data``.
      row_ids: ``[nnz]`` int32 row of each stored value.
      shape: ``(n_rows, n_cols)``.

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

    @property
    def nnz(self) -> int:
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

    @classmethod
    def from_scipy(cls, matrix: Any, dtype=None) -> CSR:
        """Builds a ``CSR`` from any SciPy sparse matrix or array (duplicates are summed)."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(
                f"matrix: expected a scipy.sparse matrix or array, got {type(matrix).__name__}"
            )
        m = sp.csr_matrix(matrix)
        m.sum_duplicates()
        m.sort_indices()
        data = np.asarray(m.data if dtype is None else m.data.astype(dtype))
        return cls._from_host(data, m.indices, m.indptr, m.shape)

    @classmethod
    def from_dense(cls, matrix: Any, dtype=None) -> CSR:
        """Builds a ``CSR`` from a dense 2-D array, keeping its non-zero entries."""
        import scipy.sparse as sp

        dense = np.asarray(matrix)
        if dense.ndim != 2:
            raise ValueError(f"matrix: expected a 2-D array, got shape {dense.shape}")
        return cls.from_scipy(sp.csr_matrix(dense), dtype=dtype)

    @classmethod
    def _from_host(cls, data, indices, indptr, shape) -> CSR:
        indptr = np.asarray(indptr, dtype=np.int64)
        counts = np.diff(indptr)
        row_ids = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return cls(
            data=jnp.asarray(data),
            indices=jnp.asarray(np.asarray(indices, dtype=np.int32)),
            indptr=jnp.asarray(indptr.astype(np.int32)),
            row_ids=jnp.asarray(row_ids),
            shape=(int(shape[0]), int(shape[1])),
        )

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

    def matmul(self, x: jax.Array) -> jax.Array:
        """``self @ x`` for a dense ``x`` of shape ``[n_cols]`` or ``[n_cols, k]``."""
        x = jnp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[0] != self.n_cols:
            raise ValueError(
                f"x: expected shape [{self.n_cols}] or [{self.n_cols}, k] to multiply a "
                f"{self.shape} CSR matrix, got {x.shape}"
            )
        gathered = jnp.take(x, self.indices, axis=0)
        values = self.data.reshape((-1,) + (1,) * (x.ndim - 1))
        return jax.ops.segment_sum(
            values * gathered, self.row_ids, num_segments=self.n_rows, indices_are_sorted=True
        )

    def __matmul__(self, x):
        return self.matmul(x)
