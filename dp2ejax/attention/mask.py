"""``BlockMask``: which (query block, key block) pairs attention computes.

A mask over a ``q_len x kv_len`` score matrix is stored block-wise: a boolean ``layout`` of shape
``[mask_batch, mask_heads, q_blocks, kv_blocks]`` (``mask_batch`` is 1 or the batch, likewise
``mask_heads``: a mask shared by every batch element or head has size 1 there) says which blocks
are kept; a kept block is either *full* (every element kept) or *partial*, in which case
``partial_ids`` points into ``partial_masks``, the distinct element patterns of the partial blocks
(a causal mask has one: the lower triangle of a diagonal block). Masks live on the host (NumPy):
they are static structure, known when the kernel is traced, like a block size.

The kernel reads the compact form (:meth:`BlockMask.compact`): for each query block the list of
kept key blocks, padded to the longest list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class BlockMask:
    """A block-sparse attention mask (see the module docstring).

    Attributes:
      layout: ``bool[mask_batch, mask_heads, q_blocks, kv_blocks]``: kept blocks.
      block_q, block_kv: block sizes (rectangular blocks allowed).
      q_len, kv_len: sequence lengths (multiples of the block sizes).
      partial_ids: ``int32[mask_batch, mask_heads, q_blocks, kv_blocks]``: -1 for a full (or
        dropped) block, else the index of the block's element pattern in ``partial_masks``.
      partial_masks: ``bool[num_patterns, block_q, block_kv]``: element masks of partial blocks,
        none of them all-True or all-False.

    Example:
      >>> import numpy as np
      >>> m = BlockMask.from_dense(np.tril(np.ones((8, 8), bool)), block_size=4)
      >>> m.layout[0, 0].astype(int).tolist(), m.block_density, m.density, len(m.partial_masks)
      ([[1, 0], [1, 1]], 0.75, 0.5625, 1)
    """

    layout: np.ndarray
    block_q: int
    block_kv: int
    q_len: int
    kv_len: int
    partial_ids: np.ndarray
    partial_masks: np.ndarray

    def __post_init__(self):
        layout = np.asarray(self.layout)
        if layout.dtype != np.bool_ or layout.ndim != 4:
            raise ValueError(f"BlockMask layout must be a bool array [mask_batch, mask_heads, "
                             f"q_blocks, kv_blocks], got {layout.dtype} of shape {layout.shape}")
        for name in ("block_q", "block_kv", "q_len", "kv_len"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockMask {name} must be a positive int, got {value!r}")
        if layout.shape[2:] != (self.q_len // self.block_q, self.kv_len // self.block_kv) or (
                self.q_len % self.block_q or self.kv_len % self.block_kv):
            raise ValueError(
                f"BlockMask layout {layout.shape[2:]} does not tile q_len={self.q_len}, "
                f"kv_len={self.kv_len} with blocks ({self.block_q}, {self.block_kv})")
        ids = np.asarray(self.partial_ids, np.int32)
        masks = np.asarray(self.partial_masks, bool).reshape(-1, self.block_q, self.block_kv)
        if ids.shape != layout.shape:
            raise ValueError(f"BlockMask partial_ids shape {ids.shape} must equal the layout's "
                             f"{layout.shape}")
        if ids.size and (ids.max() >= len(masks) or ids.min() < -1 or np.any(ids[~layout] != -1)):
            raise ValueError("BlockMask partial_ids must be -1 or index partial_masks, and -1 "
                             "wherever the layout drops the block")
        for name, value in (("layout", layout), ("partial_ids", ids), ("partial_masks", masks)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_layout(cls, layout, block_size: int | tuple[int, int]) -> BlockMask:
        """Every kept block full. ``layout`` is ``bool[q_blocks, kv_blocks]``, or with leading
        ``[mask_heads]`` or ``[mask_batch, mask_heads]`` axes."""
        layout = _as_4d(np.asarray(layout), "layout")
        if layout.dtype != np.bool_:
            raise ValueError(f"layout must be a bool array, got {layout.dtype}")
        block_q, block_kv = _block_size(block_size)
        return cls(layout, block_q, block_kv, layout.shape[2] * block_q, layout.shape[3] * block_kv,
                   np.full(layout.shape, -1, np.int32), np.zeros((0, block_q, block_kv), bool))

    @classmethod
    def from_dense(cls, mask, block_size: int | tuple[int, int]) -> BlockMask:
        """From an element mask ``bool[q_len, kv_len]`` (or with leading ``[mask_heads]`` or
        ``[mask_batch, mask_heads]`` axes): blocks with no kept element are dropped, blocks with
        some are partial, blocks with all are full."""
        mask = _as_4d(np.asarray(mask), "mask")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be a bool array, got {mask.dtype}")
        block_q, block_kv = _block_size(block_size)
        mb, mh, q_len, kv_len = mask.shape
        _check_tiles(q_len, kv_len, block_q, block_kv)
        blocks = mask.reshape(mb, mh, q_len // block_q, block_q, kv_len // block_kv, block_kv)
        return cls._from_blocks(blocks.transpose(0, 1, 2, 4, 3, 5), block_q, block_kv)

    @classmethod
    def from_mask_fn(cls, mask_fn: Callable, q_len: int, kv_len: int,
                     block_size: int | tuple[int, int], batch: int = 1,
                     heads: int = 1) -> BlockMask:
        """From ``mask_fn(b, h, q_idx, kv_idx) -> bool`` evaluated with NumPy broadcasting, one
        query block at a time (never the whole ``q_len x kv_len`` matrix at once). ``batch`` and
        ``heads`` are the mask's own sizes (1: the same for every batch element / head)."""
        block_q, block_kv = _block_size(block_size)
        _check_tiles(q_len, kv_len, block_q, block_kv)
        nq, nk = q_len // block_q, kv_len // block_kv
        b = np.arange(batch)[:, None, None, None]
        h = np.arange(heads)[None, :, None, None]
        kv = np.arange(kv_len)[None, None, None, :]
        layout = np.zeros((batch, heads, nq, nk), bool)
        ids = np.full(layout.shape, -1, np.int32)
        patterns: dict[bytes, int] = {}
        masks: list[np.ndarray] = []
        for i in range(nq):
            q = np.arange(i * block_q, (i + 1) * block_q)[None, None, :, None]
            row = np.broadcast_to(np.asarray(mask_fn(b, h, q, kv), bool),
                                  (batch, heads, block_q, kv_len))
            blocks = row.reshape(batch, heads, block_q, nk, block_kv).transpose(0, 1, 3, 2, 4)
            layout[:, :, i], ids[:, :, i] = _classify(blocks, patterns, masks)
        return cls(layout, block_q, block_kv, q_len, kv_len, ids, _stack(masks, block_q, block_kv))

    @classmethod
    def _from_blocks(cls, blocks: np.ndarray, block_q: int, block_kv: int) -> BlockMask:
        """From element blocks ``bool[mb, mh, nq, nk, block_q, block_kv]``."""
        patterns: dict[bytes, int] = {}
        masks: list[np.ndarray] = []
        layout, ids = _classify(blocks, patterns, masks)
        mb, mh, nq, nk = layout.shape
        return cls(layout, block_q, block_kv, nq * block_q, nk * block_kv, ids,
                   _stack(masks, block_q, block_kv))

    # --- views -----------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(mask_batch, mask_heads, q_blocks, kv_blocks)``."""
        return tuple(self.layout.shape)

    @property
    def density(self) -> float:
        """Kept elements over all elements (partial blocks count their kept elements)."""
        counts = np.concatenate([[0, self.block_q * self.block_kv],
                                 self.partial_masks.sum((1, 2))])
        kept = counts[np.where(self.layout, self.partial_ids + 2, 0)].sum()
        return float(kept) / (self.layout.shape[0] * self.layout.shape[1] * self.q_len
                              * self.kv_len)

    @property
    def block_density(self) -> float:
        """Kept blocks over all blocks: the share of the score matrix the kernel computes."""
        return float(self.layout.mean())

    @property
    def empty_rows(self) -> np.ndarray:
        """``bool[mb, mh, q_len]``: query rows that keep no key.

        Such rows are legal (a causal mask with a negative offset, a document whose segment is
        missing from the keys): attention over no key gives a zero output row. The pattern
        constructors do not reject them; check ``mask.empty_rows.any()`` where a model must not
        have any. Computed block-wise, without the dense mask.

        Example:
          >>> import numpy as np
          >>> m = BlockMask.from_dense(np.tril(np.ones((4, 4), bool), -1), block_size=2)
          >>> m.empty_rows[0, 0].tolist()
          [True, False, False, False]
        """
        rows = np.concatenate([np.zeros((1, self.block_q), bool), np.ones((1, self.block_q), bool),
                               self.partial_masks.any(-1)])
        kept = rows[self._codes()].any(axis=3)  # [mb, mh, q_blocks, block_q]
        mb, mh = self.shape[:2]
        return ~kept.reshape(mb, mh, self.q_len)

    def compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kernel's form: for each query block, its kept key blocks in increasing order.

        Returns:
          ``(kv_blocks, kv_counts, partial_ids)``: ``int32[mb, mh, q_blocks, max_kept]`` key block
          indices (padding repeats the last kept index, or 0 for an empty row),
          ``int32[mb, mh, q_blocks]`` how many are kept, and ``int32[mb, mh, q_blocks, max_kept]``
          the element pattern of each listed block (-1: full; padding: -1).
        """
        counts = self.layout.sum(-1).astype(np.int32)
        max_kept = max(int(counts.max()) if counts.size else 0, 1)
        order = np.argsort(~self.layout, axis=-1, kind="stable")[..., :max_kept]
        valid = np.arange(max_kept) < counts[..., None]
        last = np.take_along_axis(order, np.maximum(counts - 1, 0)[..., None], axis=-1)
        kv_blocks = np.where(valid, order, np.where(counts[..., None] > 0, last, 0))
        ids = np.where(valid, np.take_along_axis(self.partial_ids, order, axis=-1), -1)
        return kv_blocks.astype(np.int32), counts, ids.astype(np.int32)

    def diagonals(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's banded form: the block diagonals ``j - i`` that hold kept blocks.

        For banded masks (windows, causal windows, documents) there are few diagonals, and a
        diagonal's key blocks for all query blocks are one contiguous slice of the keys.

        Returns:
          ``(offsets, table_ids)``: ``int32[mb, mh, num_diagonals]`` the offsets ``j - i`` in
          increasing order (padding for a (batch, head) with fewer diagonals: 0, with nothing
          kept), and ``int32[mb, mh, q_blocks, num_diagonals]`` the element pattern of block
          ``(i, i + offset)``: 0 dropped (or outside the matrix), 1 full, ``2 + p`` partial
          pattern ``p`` — indices into ``[zeros, ones, *partial_masks]``, as in
          :meth:`block_elements`.
        """
        mb, mh, nq, nk = self.layout.shape
        rows, cols = np.arange(nq)[:, None], np.arange(nk)[None, :]
        kept_offsets = [np.unique((cols - rows)[self.layout[b, h]])
                        for b in range(mb) for h in range(mh)]
        width = max(max((len(o) for o in kept_offsets), default=0), 1)
        offsets = np.zeros((mb * mh, width), np.int32)
        for n, o in enumerate(kept_offsets):
            offsets[n, :len(o)] = o
        offsets = offsets.reshape(mb, mh, width)
        count = np.array([len(o) for o in kept_offsets]).reshape(mb, mh)
        j = np.arange(nq)[None, None, :, None] + offsets[:, :, None, :]  # [mb, mh, nq, S]
        inside = (j >= 0) & (j < nk) & (np.arange(width) < count[..., None, None])
        jc = np.clip(j, 0, nk - 1)
        kept = np.take_along_axis(self.layout, jc, axis=-1) & inside
        ids = np.take_along_axis(self.partial_ids, jc, axis=-1)
        return offsets, np.where(kept, ids + 2, 0).astype(np.int32)

    def block_elements(self) -> np.ndarray:
        """``bool[mb, mh, nq, nk, block_q, block_kv]``: every block's element mask (for tests
        and small sizes)."""
        table = np.concatenate([np.zeros((1, self.block_q, self.block_kv), bool),
                                np.ones((1, self.block_q, self.block_kv), bool),
                                self.partial_masks])
        return table[np.where(self.layout, self.partial_ids + 2, 0)]

    def to_dense(self) -> np.ndarray:
        """``bool[mb, mh, q_len, kv_len]``: the element mask (for tests and small sizes)."""
        blocks = self.block_elements()
        mb, mh = self.shape[:2]
        return blocks.transpose(0, 1, 2, 4, 3, 5).reshape(mb, mh, self.q_len, self.kv_len)

    # --- combination -----------------------------------------------------------------------------

    def __or__(self, other: BlockMask) -> BlockMask:
        """Union: an element is kept if either mask keeps it."""
        return self._combine(other, np.logical_or, "|")

    def __and__(self, other: BlockMask) -> BlockMask:
        """Intersection: an element is kept if both masks keep it."""
        return self._combine(other, np.logical_and, "&")

    def _combine(self, other: BlockMask, op, symbol: str) -> BlockMask:
        if not isinstance(other, BlockMask):
            return NotImplemented
        if (self.block_q, self.block_kv, self.q_len, self.kv_len) != (
                other.block_q, other.block_kv, other.q_len, other.kv_len):
            raise ValueError(
                f"masks combined with {symbol} need the same lengths and block sizes, got "
                f"({self.q_len}, {self.kv_len}) blocks ({self.block_q}, {self.block_kv}) and "
                f"({other.q_len}, {other.kv_len}) blocks ({other.block_q}, {other.block_kv})")
        try:
            shape = np.broadcast_shapes(self.shape, other.shape)
        except ValueError:
            raise ValueError(f"masks combined with {symbol} have incompatible batch/head sizes "
                             f"{self.shape[:2]} and {other.shape[:2]}") from None
        layout = op(np.broadcast_to(self.layout, shape), np.broadcast_to(other.layout, shape))
        any_kept = np.broadcast_to(self.layout, shape) | np.broadcast_to(other.layout, shape)
        a, b = (np.broadcast_to(m._codes(), shape) for m in (self, other))
        ids = np.full(shape, -1, np.int32)
        patterns: dict[bytes, int] = {}
        masks: list[np.ndarray] = []
        where = np.nonzero(any_kept)
        if where[0].size:
            elements = op(self._table()[a[where]], other._table()[b[where]])
            kept, pattern = _classify(elements, patterns, masks)
            layout = np.zeros(shape, bool)
            layout[where] = kept
            ids[where] = pattern
        return BlockMask(layout, self.block_q, self.block_kv, self.q_len, self.kv_len, ids,
                         _stack(masks, self.block_q, self.block_kv))

    def _codes(self) -> np.ndarray:
        return np.where(self.layout, self.partial_ids + 2, 0)

    def _table(self) -> np.ndarray:
        return np.concatenate([np.zeros((1, self.block_q, self.block_kv), bool),
                               np.ones((1, self.block_q, self.block_kv), bool),
                               self.partial_masks])

    def __repr__(self) -> str:
        return (f"BlockMask(shape={self.shape}, blocks=({self.block_q}, {self.block_kv}), "
                f"block_density={self.block_density:.4g}, partial_patterns="
                f"{len(self.partial_masks)})")


def _block_size(block_size) -> tuple[int, int]:
    sizes = (block_size, block_size) if isinstance(block_size, int | np.integer) else block_size
    try:
        block_q, block_kv = (int(s) for s in sizes)
    except (TypeError, ValueError):
        raise ValueError(f"block_size must be an int or a pair of ints, got {block_size!r}") \
            from None
    if block_q < 1 or block_kv < 1 or isinstance(block_size, bool):
        raise ValueError(f"block_size must be positive, got {block_size!r}")
    return block_q, block_kv


def _check_tiles(q_len: int, kv_len: int, block_q: int, block_kv: int) -> None:
    if q_len % block_q or kv_len % block_kv:
        raise ValueError(
            f"sequence lengths (q_len={q_len}, kv_len={kv_len}) must be multiples of the block "
            f"sizes ({block_q}, {block_kv}); pad the sequences or choose another block size")


def _as_4d(array: np.ndarray, name: str) -> np.ndarray:
    if not 2 <= array.ndim <= 4:
        raise ValueError(f"{name} must have 2 to 4 axes ([mask_batch, mask_heads,] rows, "
                         f"columns), got shape {array.shape}")
    return array.reshape((1,) * (4 - array.ndim) + array.shape)


def _classify(blocks: np.ndarray, patterns: dict[bytes, int], masks: list[np.ndarray]):
    """Kept flags and pattern ids of element blocks ``bool[..., block_q, block_kv]``; new partial
    patterns are appended to ``masks`` (deduplicated through ``patterns``)."""
    flat = blocks.reshape(*blocks.shape[:-2], -1)
    kept = flat.any(-1)
    partial = kept & ~flat.all(-1)
    ids = np.full(kept.shape, -1, np.int32)
    for index in zip(*np.nonzero(partial), strict=True):
        key = np.packbits(flat[index]).tobytes()
        if key not in patterns:
            patterns[key] = len(masks)
            masks.append(blocks[index])
        ids[index] = patterns[key]
    return kept, ids


def _stack(masks: list[np.ndarray], block_q: int, block_kv: int) -> np.ndarray:
    if not masks:
        return np.zeros((0, block_q, block_kv), bool)
    return np.stack(masks).astype(bool)
