"""Degree buckets: a padded-row (sliced ELL) layout of a sparse matrix for a fast SpMM on CPU.

The rows of the matrix are grouped by their number of stored values (their degree); each group
(bucket) is a dense ``[rows, width]`` block of column indices and of positions into the matrix's
``data``, every row padded to the bucket's width. The product of a bucket with a dense ``x`` is
one XLA loop fusion: for each of the bucket's rows, ``sum_j value[j] * x[column[j]]`` with the
``width`` terms unrolled, so that no ``[nnz, k]`` intermediate is ever written (the segment-sum
product writes, then scatter-adds, one). Each bucket's rows are then written in place into the
output. Widths are the degree itself up to 8, then rounded up to a quarter of the degree's
binade (multiples of 2 in [8, 16), of 4 in [16, 32), …): at most 4 buckets per binade, and at
most 25 % (typically ~5 %) padding. Padded terms are masked with a select, so the result is the
exact sum of the stored products, added in column order as SciPy does (XLA may fuse a multiply
and an add into one FMA), whatever the padded columns of ``x`` hold (inf and NaN included).

The layout holds only the matrix's structure (values are read from ``data`` through ``slots``),
so a matrix with new values (scaled, normalised, cast, differentiated) keeps its buckets. It is
built on the host from concrete indices (:func:`build_buckets`), not under ``jit``.

Example:
  >>> import numpy as np
  >>> import jax.numpy as jnp
  >>> indptr, indices = np.array([0, 2, 2, 3]), np.array([0, 2, 1])
  >>> b = build_buckets(indices, indptr)
  >>> [c.shape for c in b.columns]  # rows of degree 1, then of degree 2; the empty row is left
  [(1, 1), (1, 2)]
  >>> data = jnp.array([1.0, 2.0, 3.0])
  >>> np.asarray(bucket_matmul(b, data, jnp.array([1.0, 10.0, 100.0]), 3)).tolist()
  [201.0, 0.0, 30.0]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Buckets at most this wide are one fusion with every term unrolled; wider ones loop over
# chunks of CHUNK_WIDTH columns (their widths are multiples of it, see bucket_widths).
MAX_UNROLLED_WIDTH = 64
CHUNK_WIDTH = 16


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DegreeBuckets:
    """The rows of a sparse matrix grouped by padded degree (see the module docstring).

    Bucket ``b`` holds ``r_b`` rows padded to width ``w_b``; rows with no stored value are in
    no bucket. Padding uses column 0 and slot 0 and is masked by ``degrees``.

    Attributes:
      rows: per bucket, ``[r_b]`` int32 row numbers, ascending.
      columns: per bucket, ``[r_b, w_b]`` int32 column of each term (0 where padded).
      slots: per bucket, ``[r_b, w_b]`` int32 position of each term's value in ``data`` (0 where
        padded).
      degrees: per bucket, ``[r_b]`` int32 number of stored values of each row.
      full_widths: static, per bucket, the smallest degree in it: terms ``j < full_widths[b]``
        need no mask.
    """

    rows: tuple[jax.Array, ...]
    columns: tuple[jax.Array, ...]
    slots: tuple[jax.Array, ...]
    degrees: tuple[jax.Array, ...]
    full_widths: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def widths(self) -> tuple[int, ...]:
        """The padded width of each bucket."""
        return tuple(int(c.shape[1]) for c in self.columns)

    @property
    def padded_terms(self) -> int:
        """Terms computed, padding included (``nnz`` when nothing is padded)."""
        return sum(int(c.shape[0]) * int(c.shape[1]) for c in self.columns)

    def __repr__(self) -> str:
        return f"DegreeBuckets(widths={self.widths}, rows={[int(r.shape[0]) for r in self.rows]})"


def bucket_widths(degrees: np.ndarray) -> np.ndarray:
    """The padded width of rows of the given degrees: the degree up to 8, then rounded up to a
    multiple of a quarter of its binade (2 in [8, 16), 4 in [16, 32), 8 in [32, 64), …).

    Widths above ``MAX_UNROLLED_WIDTH`` are multiples of ``CHUNK_WIDTH``.

    Example:
      >>> bucket_widths(np.array([0, 3, 8, 9, 17, 33, 65])).tolist()
      [0, 3, 8, 10, 20, 40, 80]
    """
    degrees = np.asarray(degrees, dtype=np.int64)
    binade = np.floor(np.log2(np.maximum(degrees, 1))).astype(np.int64)
    granule = np.where(degrees <= 8, 1, 2 ** np.maximum(binade - 2, 0))
    return -(-degrees // granule) * granule


def build_buckets(indices, indptr) -> DegreeBuckets:
    """Builds the degree buckets of a CSR structure on the host.

    Args:
      indices: ``[nnz]`` column of each stored value (concrete: NumPy or a JAX array outside
        ``jit``).
      indptr: ``[n_rows + 1]`` offsets of each row's values.

    Returns:
      The :class:`DegreeBuckets` of the structure.
    """
    indices = np.asarray(indices, dtype=np.int32)
    indptr = np.asarray(indptr, dtype=np.int64)
    degrees = np.diff(indptr)
    widths = bucket_widths(degrees)
    rows, columns, slots, degs, full = [], [], [], [], []
    for width in np.unique(widths[widths > 0]):
        members = np.flatnonzero(widths == width).astype(np.int32)
        member_degrees = degrees[members]
        terms = np.arange(width)
        valid = terms[None, :] < member_degrees[:, None]
        positions = np.where(valid, indptr[members][:, None] + terms[None, :], 0)
        rows.append(jnp.asarray(members))
        columns.append(jnp.asarray(np.where(valid, indices[positions], 0).astype(np.int32)))
        slots.append(jnp.asarray(positions.astype(np.int32)))
        degs.append(jnp.asarray(member_degrees.astype(np.int32)))
        full.append(int(member_degrees.min()))
    return DegreeBuckets(tuple(rows), tuple(columns), tuple(slots), tuple(degs), tuple(full))


def _gather_rows(x: jax.Array, columns: jax.Array) -> jax.Array:
    return x.at[columns].get(mode="promise_in_bounds")


def _bucket_product(columns, slots, degrees, full_width, data, x) -> jax.Array:
    """``[r_b, k]`` products of one bucket's rows with ``x`` (``[n_cols, k]``)."""
    n, width = columns.shape
    values = data.at[slots].get(mode="promise_in_bounds")

    def term(j, cols, vals, masked):
        product = vals[:, j, None] * _gather_rows(x, cols[:, j])
        return jnp.where(masked[:, j, None], product, 0) if masked is not None else product

    if width <= MAX_UNROLLED_WIDTH:
        masked = None
        if full_width < width:
            masked = jnp.arange(width)[None, :] < degrees[:, None]
        acc = term(0, columns, values, masked if full_width == 0 else None)
        for j in range(1, width):
            acc = acc + term(j, columns, values, masked if j >= full_width else None)
        return acc

    def chunk(c, acc):
        start = c * CHUNK_WIDTH
        cols = lax.dynamic_slice_in_dim(columns, start, CHUNK_WIDTH, axis=1)
        vals = lax.dynamic_slice_in_dim(values, start, CHUNK_WIDTH, axis=1)
        masked = (start + jnp.arange(CHUNK_WIDTH))[None, :] < degrees[:, None]
        for j in range(CHUNK_WIDTH):
            acc = acc + term(j, cols, vals, masked)
        return acc

    dtype = jnp.result_type(data.dtype, x.dtype)
    return lax.fori_loop(0, width // CHUNK_WIDTH, chunk, jnp.zeros((n, x.shape[1]), dtype))


def bucket_matmul(buckets: DegreeBuckets, data: jax.Array, x: jax.Array, n_rows: int):
    """``A @ x`` for the matrix with structure ``buckets`` and values ``data``.

    Args:
      buckets: the matrix's :class:`DegreeBuckets`.
      data: ``[nnz]`` values, in CSR order.
      x: ``[n_cols]`` or ``[n_cols, k]`` dense operand (not checked here).
      n_rows: the matrix's number of rows.

    Returns:
      ``[n_rows]`` or ``[n_rows, k]``, of ``data`` and ``x``'s promoted dtype.
    """
    matrix = x if x.ndim == 2 else x[:, None]
    dtype = jnp.result_type(data.dtype, x.dtype)
    out = jnp.zeros((n_rows, matrix.shape[1]), dtype)
    for rows, columns, slots, degrees, full in zip(
        buckets.rows, buckets.columns, buckets.slots, buckets.degrees, buckets.full_widths,
        strict=True,
    ):
        part = _bucket_product(columns, slots, degrees, full, data, matrix).astype(dtype)
        out = out.at[rows].set(part, unique_indices=True, mode="promise_in_bounds")
    return out if x.ndim == 2 else out[:, 0]
