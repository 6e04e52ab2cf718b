"""Row-partitioned sparse matrices: each device holds a block of rows, and the dense operand is
exchanged with collectives — all of it (all-gather) or only the rows each block needs (halo).

For ``y = A @ x`` with ``A`` split into ``p`` blocks of consecutive rows and ``x`` into the same
row blocks, device ``i`` computes ``y_i = A_i @ x``. ``A_i`` touches the columns of its own block
(local ``x_i``) and some others (its halo). Two ways to get them:

* ``"allgather"``: ``x`` is all-gathered, every device receives the ``(p - 1) n / p`` rows it
  does not hold, whatever it needs;
* ``"halo"``: every device receives only the rows it needs, by ``collective_permute`` s: in
  round ``d`` each device ``j`` sends device ``j + d (mod p)`` the rows of its block that one
  reads (padded to the longest such message of the round, as a collective needs equal sizes on
  every device); rounds where nobody needs anything are skipped.

Graphs whose rows are ordered by community (or by a partitioner) need few halo rows; a random
order needs almost everything, and the all-gather is then as good. The number of bytes each
moves is counted from the compiled program (:func:`collective_bytes`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dp2ejax.sparse import CSR

EXCHANGES = ("allgather", "halo")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class PartitionedCSR:
    """A square-or-rectangular sparse matrix split by rows over one mesh axis.

    Build it with :meth:`from_csr`. ``A @ x`` (``x`` ``[n_cols, k]``, any sharding) returns
    ``[n_rows, k]`` split by rows over the same axis, computed under ``jax.shard_map``.

    Attributes:
      data, local_rows, columns: ``[p, nnz_max]`` per block: values (0 for padding), row within
        the block, and column into the block's *extended* operand (own rows, then received
        rows); sharded over ``axis``.
      send: (halo only) one ``[p, m_d]`` array per round ``d`` of :attr:`shifts`: ``send[r][j]``
        the rows of block ``j`` (local indices, padded with 0) that block ``j + shifts[r]``
        needs; empty for the all-gather.
      shape: ``(n_rows, n_cols)`` of the whole matrix; ``rows_per_block`` ``ceil(n / p)``.
      mesh, axis: the mesh and the axis the rows are split over.
      exchange: ``"allgather"`` or ``"halo"``.
      halo_rows: rows that really need to move (sum over blocks of their distinct off-block
        columns), before padding.
    """

    data: jax.Array
    local_rows: jax.Array
    columns: jax.Array
    send: tuple[jax.Array, ...]
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    rows_per_block: int = dataclasses.field(metadata=dict(static=True))
    mesh: Mesh = dataclasses.field(metadata=dict(static=True))
    axis: str = dataclasses.field(metadata=dict(static=True))
    exchange: str = dataclasses.field(metadata=dict(static=True))
    halo_rows: int = dataclasses.field(metadata=dict(static=True))
    shifts: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def num_blocks(self) -> int:
        return self.mesh.shape[self.axis]

    def __repr__(self) -> str:
        return (f"PartitionedCSR(shape={self.shape}, blocks={self.num_blocks} over "
                f"{self.axis!r}, exchange={self.exchange!r}, halo_rows={self.halo_rows})")

    @classmethod
    def from_csr(cls, matrix: CSR, mesh: Mesh, axis: str = "rows", *,
                 exchange: str = "halo") -> PartitionedCSR:
        """Splits ``matrix`` (square: its columns index the same rows as ``x``) by rows over
        ``mesh``'s ``axis`` (host work, ``O(nnz)``).

        Args:
          matrix: a :class:`dp2ejax.sparse.CSR` with ``n_rows == n_cols`` (the operator of a
            graph propagation; the operand is split like the rows).
          mesh: the device mesh.
          axis: the mesh axis of the row blocks.
          exchange: ``"halo"`` (only the needed rows move) or ``"allgather"``.

        Example:
          >>> import numpy as np, scipy.sparse as sp
          >>> from dp2ejax.parallel import make_mesh
          >>> mesh = make_mesh({"rows": 4}, devices=jax.devices()[:4])
          >>> a = CSR.from_scipy(sp.diags([1.0, 2.0, 1.0], [-1, 0, 1], shape=(8, 8)))
          >>> pa = PartitionedCSR.from_csr(a, mesh, "rows")
          >>> pa.halo_rows, pa.shifts  # tridiagonal: one row from each neighbouring block
          (6, (1, 3))
          >>> np.asarray(pa @ np.ones((8, 1)))[:, 0].tolist()
          [3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0]
        """
        if not isinstance(matrix, CSR):
            raise TypeError(f"matrix: expected a dp2ejax.sparse.CSR, got {type(matrix).__name__}")
        if matrix.n_rows != matrix.n_cols:
            raise ValueError(f"matrix: expected a square matrix (its columns split like its "
                             f"rows), got shape {matrix.shape}")
        if axis not in mesh.shape:
            raise ValueError(f"axis {axis!r} is not a mesh axis; the mesh has "
                             f"{dict(mesh.shape)}")
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
        p = mesh.shape[axis]
        n = matrix.n_rows
        rows_per_block = max(1, math.ceil(n / p))
        indices = np.asarray(matrix.indices, np.int64)
        values = np.asarray(matrix.data)
        row_of = np.asarray(matrix.row_ids, np.int64)
        block_of_row = row_of // rows_per_block
        block_of_col = indices // rows_per_block
        starts = np.searchsorted(block_of_row, np.arange(p + 1)) if len(row_of) else np.zeros(
            p + 1, np.int64)
        nnz_max = max(int(np.diff(starts).max()) if len(row_of) else 0, 1)
        data = np.zeros((p, nnz_max), values.dtype)
        local_rows = np.zeros((p, nnz_max), np.int32)
        columns = np.zeros((p, nnz_max), np.int32)
        # needs[i][j]: sorted distinct columns of block j that block i reads (j != i)
        needs = [[np.zeros(0, np.int64)] * p for _ in range(p)]
        for i in range(p):
            lo, hi = starts[i], starts[i + 1]
            cols, col_blocks = indices[lo:hi], block_of_col[lo:hi]
            data[i, :hi - lo] = values[lo:hi]
            local_rows[i, :hi - lo] = row_of[lo:hi] - i * rows_per_block
            for j in np.unique(col_blocks):
                if j != i:
                    needs[i][j] = np.unique(cols[col_blocks == j])
        halo_rows = sum(len(needs[i][j]) for i in range(p) for j in range(p))
        if exchange == "allgather":
            for i in range(p):
                lo, hi = starts[i], starts[i + 1]
                columns[i, :hi - lo] = indices[lo:hi]  # into the gathered [p * rows, k]
            send, shifts = [], ()
        else:
            # round d: block j sends block (j + d) % p what it needs; width m_d of the round
            widths = {d: max(len(needs[(j + d) % p][j]) for j in range(p)) for d in range(1, p)}
            shifts = tuple(d for d in range(1, p) if widths[d])
            offsets, start = {}, rows_per_block  # where round d's rows sit in the operand
            for d in shifts:
                offsets[d], start = start, start + widths[d]
            send = [np.zeros((p, widths[d]), np.int32) for d in shifts]
            for r, d in enumerate(shifts):
                for j in range(p):
                    need = needs[(j + d) % p][j]
                    send[r][j, :len(need)] = need - j * rows_per_block
            for i in range(p):
                lo, hi = starts[i], starts[i + 1]
                cols, col_blocks = indices[lo:hi], block_of_col[lo:hi]
                extended = np.where(col_blocks == i, cols - i * rows_per_block, 0)
                for j in range(p):
                    if j != i and len(needs[i][j]):
                        here = col_blocks == j
                        extended[here] = (offsets[(i - j) % p]
                                          + np.searchsorted(needs[i][j], cols[here]))
                columns[i, :hi - lo] = extended
        sharding = NamedSharding(mesh, P(axis))
        put = lambda a: jax.device_put(a, sharding)  # noqa: E731
        return cls(put(data), put(local_rows), put(columns), tuple(put(a) for a in send),
                   matrix.shape, rows_per_block, mesh, axis, exchange, int(halo_rows), shifts)

    def matmul(self, x: jax.Array) -> jax.Array:
        """``A @ x`` for ``x`` of shape ``[n_cols, k]`` (or ``[n_cols]``); the result is split
        by rows over the mesh axis."""
        x = jnp.asarray(x)
        n = self.shape[1]
        if x.ndim not in (1, 2) or x.shape[0] != n:
            raise ValueError(f"x: expected shape [{n}] or [{n}, k] to multiply a {self.shape} "
                             f"PartitionedCSR, got {x.shape}")
        vector = x.ndim == 1
        x2 = x[:, None] if vector else x
        padded_rows = self.rows_per_block * self.num_blocks
        if padded_rows != n:
            x2 = jnp.pad(x2, ((0, padded_rows - n), (0, 0)))
        x2 = jax.lax.with_sharding_constraint(x2, NamedSharding(self.mesh, P(self.axis)))
        y = _partitioned_product(self, x2)[:self.shape[0]]
        return y[:, 0] if vector else y

    def __matmul__(self, x):
        return self.matmul(x)


@jax.jit  # eagerly, shard_map would dispatch its body operation by operation
def _partitioned_product(a: PartitionedCSR, x: jax.Array) -> jax.Array:
    axis, rows = a.axis, a.rows_per_block
    dtype = jnp.result_type(a.data.dtype, x.dtype)

    p = a.num_blocks

    def block(data, local_rows, columns, send, x_local):
        data, local_rows, columns = data[0], local_rows[0], columns[0]
        if a.exchange == "allgather":
            operand = jax.lax.all_gather(x_local, axis, tiled=True)
        else:
            received = [jax.lax.ppermute(x_local[rows_to_send[0]], axis,
                                         [(j, (j + d) % p) for j in range(p)])
                        for d, rows_to_send in zip(a.shifts, send, strict=True)]
            operand = jnp.concatenate([x_local, *received])
        products = data[:, None].astype(dtype) * operand[columns].astype(dtype)
        return jax.ops.segment_sum(products, local_rows, num_segments=rows,
                                   indices_are_sorted=True)

    spec = P(axis)
    send_specs = tuple(spec for _ in a.send)
    return jax.shard_map(block, mesh=a.mesh, in_specs=(spec, spec, spec, send_specs, spec),
                         out_specs=spec, check_vma=False)(a.data, a.local_rows, a.columns,
                                                          a.send, x)


_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\(?[a-z0-9]+\[[0-9,]*\][^=]*?)\s+(?P<op>all-gather|all-to-all|all-reduce|"
    r"collective-permute|reduce-scatter)(?:-start)?\(")
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
          "s8": 1, "u8": 1, "pred": 1, "s16": 2, "u16": 2}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of the results of each kind of collective in a compiled (per-device) HLO text,
    summed over its instructions: what one device receives (all-gather: the gathered array,
    own part included; all-to-all: the exchanged buffer).

    Example:
      >>> collective_bytes("%ag = f32[8,4]{1,0} all-gather(f32[2,4]{1,0} %x), dimensions={0}")
      {'all-gather': 128}
    """
    totals: dict[str, int] = {}
    hlo_text = re.sub(r"/\*.*?\*/", "", hlo_text)
    for match in _COLLECTIVE.finditer(hlo_text):
        size = 0
        for dtype, dims in _ARRAY.findall(match.group("shape")):
            count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
            size += count * _BYTES.get(dtype, 4)
        totals[match.group("op")] = totals.get(match.group("op"), 0) + size
    return totals
