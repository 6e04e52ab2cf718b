"""Named attention masks as :class:`~dp2ejax.attention.mask.BlockMask`: causal, sliding window,
global tokens, strided and dilated (Sparse Transformer, Longformer), BigBird, packed documents,
and one mask per head.

Every constructor works block-wise on the host: it decides analytically which blocks are empty,
full or partial, and evaluates element masks only for the partial ones (for the position-difference
patterns -- causal, local, strided, dilated -- one element pattern per distinct block offset), so
``q_len = 16384`` builds in milliseconds and the ``q_len x kv_len`` matrix is never formed.

Positions are absolute indices from 0 in both sequences; ``offset`` (where offered) shifts the
queries for decoding against a longer cache: query ``i`` is placed at key position ``i + offset``.
Masks combine with ``|`` and ``&``: a causal sliding window with 4 global tokens is
``local(L, 1024, causal=True) | (global_tokens(L, 4) & causal(L))``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dp2ejax.attention.mask import BlockMask, _block_size

__all__ = ["bigbird", "causal", "dilated", "document", "global_tokens", "local", "per_head",
           "strided"]

_CHUNK_ELEMENTS = 1 << 22  # element blocks evaluated at once by the generic path


# --- position-difference patterns ----------------------------------------------------------------


def causal(q_len: int, kv_len: int | None = None, block_size: int | tuple[int, int] = 128, *,
           offset: int = 0) -> BlockMask:
    """Causal mask: query ``i`` sees keys ``k <= i + offset``.

    Blocks wholly below the diagonal are full, those straddling it partial (element mask), those
    above it dropped.

    Args:
      q_len: query length, a multiple of the query block size.
      kv_len: key length (default ``q_len``), a multiple of the key block size.
      block_size: an int, or ``(block_q, block_kv)``.
      offset: shift of the diagonal; decoding ``q_len`` new tokens after a cache of ``c`` tokens
        (``kv_len = c + q_len``) uses ``offset = c``. Negative offsets leave the first
        ``-offset`` query rows empty (see :attr:`BlockMask.empty_rows`).

    Returns:
      A ``BlockMask`` with ``mask_batch = mask_heads = 1``.

    Example:
      >>> m = causal(8, block_size=4)
      >>> m.layout[0, 0].astype(int).tolist(), m.density
      ([[1, 0], [1, 1]], 0.5625)
      >>> causal(4, 8, block_size=4, offset=4).to_dense()[0, 0].astype(int).tolist()
      [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    """  # noqa: E501
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    offset = _int(offset, "offset")
    return _toeplitz(lambda d: d >= 0, q_len, kv_len, block_q, block_kv, offset)


def local(q_len: int, window: int, kv_len: int | None = None,
          block_size: int | tuple[int, int] = 128, *, causal: bool = False,
          offset: int = 0) -> BlockMask:
    """Sliding window: query ``i`` sees keys with ``|i + offset - k| < window``, or with
    ``causal=True`` keys in ``(i + offset - window, i + offset]``.

    So every query sees ``window`` keys when causal (itself and ``window - 1`` before it), and
    ``2 * window - 1`` otherwise (away from the ends). A "causal sliding window of 1024" is
    ``local(L, 1024, causal=True)``.

    Args:
      q_len: query length, a multiple of the query block size.
      window: positive int, the reach of the window (see above).
      kv_len: key length (default ``q_len``).
      block_size: an int, or ``(block_q, block_kv)``.
      causal: keep only keys at or before the query.
      offset: query shift (see :func:`causal`).

    Returns:
      A ``BlockMask`` with ``mask_batch = mask_heads = 1``.

    Example:
      >>> local(8, 2, block_size=4, causal=True).to_dense()[0, 0, :4].astype(int).tolist()
      [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
      >>> local(16, 4, block_size=4).layout[0, 0].astype(int).tolist()
      [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    """  # noqa: E501
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    window = _positive_int(window, "window")
    offset = _int(offset, "offset")
    if causal:
        return _toeplitz(lambda d: (d >= 0) & (d < window), q_len, kv_len, block_q, block_kv,
                         offset)
    return _toeplitz(lambda d: np.abs(d) < window, q_len, kv_len, block_q, block_kv, offset)


def strided(q_len: int, stride: int, kv_len: int | None = None,
            block_size: int | tuple[int, int] = 128, *, causal: bool = True,
            with_local: bool = True, offset: int = 0) -> BlockMask:
    """Strided attention of the Sparse Transformer (Child et al. 2019, section 4.2).

    With ``d = i + offset - k`` the distance from query ``i`` back to key ``k``, the paper's two
    parts are the local part ``0 <= d <= stride`` ("the previous l locations", l = ``stride``)
    and the strided part ``d % stride == 0``; this builds their union (the paper's "merged
    head"), which is exactly ``0 <= d < stride or (d >= 0 and d % stride == 0)`` since
    ``d = stride`` is in both. ``with_local=False`` keeps only the strided part (the paper's
    second head; pair it with ``local(..., window=stride + 1, causal=True)`` through
    :func:`per_head` for the factorised two-head form). ``causal=False`` makes both parts
    symmetric: ``|d| < stride or d % stride == 0``.

    Args:
      q_len: query length, a multiple of the query block size.
      stride: positive int, the paper's ``l`` (about ``sqrt(q_len)``).
      kv_len: key length (default ``q_len``).
      block_size: an int, or ``(block_q, block_kv)``.
      causal: keep only keys at or before the query (``d >= 0``).
      with_local: include the local part.
      offset: query shift (see :func:`causal`).

    Returns:
      A ``BlockMask`` with ``mask_batch = mask_heads = 1``.

    Example:
      >>> m = strided(8, 3, block_size=4)
      >>> m.to_dense()[0, 0, 7].astype(int).tolist()
      [0, 1, 0, 0, 1, 1, 1, 1]
      >>> strided(8, 3, block_size=4, with_local=False).to_dense()[0, 0, 7].astype(int).tolist()
      [0, 1, 0, 0, 1, 0, 0, 1]
    """
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    stride = _positive_int(stride, "stride")
    offset = _int(offset, "offset")

    def keep(d):
        near = (np.abs(d) < stride) if with_local else np.zeros(d.shape, bool)
        kept = near | (d % stride == 0)
        return kept & (d >= 0) if causal else kept

    return _toeplitz(keep, q_len, kv_len, block_q, block_kv, offset)


def dilated(q_len: int, window: int, dilation: int, kv_len: int | None = None,
            block_size: int | tuple[int, int] = 128, *, causal: bool = False,
            offset: int = 0) -> BlockMask:
    """Dilated sliding window (Longformer, Beltagy et al. 2020): every ``dilation``-th key within
    ``window`` steps.

    With ``d = i + offset - k``: keys with ``d % dilation == 0`` and ``|d| < window * dilation``
    (``0 <= d < window * dilation`` when causal), i.e. ``window`` keys per side counting the
    query itself; ``dilation=1`` is :func:`local`.

    Args:
      q_len: query length, a multiple of the query block size.
      window: positive int, keys per side (including the query's own position).
      dilation: positive int, the step between kept keys.
      kv_len: key length (default ``q_len``).
      block_size: an int, or ``(block_q, block_kv)``.
      causal: keep only keys at or before the query.
      offset: query shift (see :func:`causal`).

    Returns:
      A ``BlockMask`` with ``mask_batch = mask_heads = 1``.

    Example:
      >>> dilated(8, 2, 3, block_size=4).to_dense()[0, 0, 4].astype(int).tolist()
      [0, 1, 0, 0, 1, 0, 0, 1]
      >>> dilated(8, 2, 3, block_size=4, causal=True).to_dense()[0, 0, 4].astype(int).tolist()
      [0, 1, 0, 0, 1, 0, 0, 0]
    """
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    window = _positive_int(window, "window")
    dilation = _positive_int(dilation, "dilation")
    offset = _int(offset, "offset")
    reach = window * dilation

    def keep(d):
        kept = (d % dilation == 0) & (np.abs(d) < reach)
        return kept & (d >= 0) if causal else kept

    return _toeplitz(keep, q_len, kv_len, block_q, block_kv, offset)


# --- other element patterns ----------------------------------------------------------------------


def global_tokens(q_len: int, num_global: int, kv_len: int | None = None,
                  block_size: int | tuple[int, int] = 128) -> BlockMask:
    """Global tokens: the first ``num_global`` queries see every key, and every query sees the
    first ``num_global`` keys. Combine with a local pattern: ``local(...) | global_tokens(...)``
    (and ``& causal(...)`` for a causal model).

    Args:
      q_len: query length, a multiple of the query block size.
      num_global: positive int, how many leading tokens are global.
      kv_len: key length (default ``q_len``).
      block_size: an int, or ``(block_q, block_kv)``.

    Returns:
      A ``BlockMask`` with ``mask_batch = mask_heads = 1``.

    Example:
      >>> m = global_tokens(12, 2, block_size=4)
      >>> m.layout[0, 0].astype(int).tolist(), len(m.partial_masks)
      ([[1, 1, 1], [1, 0, 0], [1, 0, 0]], 3)
      >>> m.to_dense()[0, 0, 5].astype(int).tolist()
      [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    """
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    num_global = _positive_int(num_global, "num_global")
    q_start, kv_start = _block_starts(q_len, block_q), _block_starts(kv_len, block_kv)
    candidate = (q_start[:, None] < num_global) | (kv_start[None, :] < num_global)
    full = ((q_start[:, None] + block_q <= num_global)
            | (kv_start[None, :] + block_kv <= num_global))

    def elements(b, h, q, k):
        return (q < num_global) | (k < num_global)

    return _from_candidates(candidate[None, None], full[None, None], elements, q_len, kv_len,
                            block_q, block_kv)


def document(segment_ids_q, segment_ids_kv=None, block_size: int | tuple[int, int] = 128, *,
             causal: bool = False) -> BlockMask:
    """Packed documents: a query sees only keys of its own segment (``ids_q[i] == ids_kv[k]``),
    and with ``causal=True`` only those at or before it (``k <= i``).

    Any integers serve as ids (they need not be sorted or contiguous; give padding its own id).
    Blocks are ruled out from each block's range of ids, so for sorted (packed) ids only the
    blocks near the diagonal are evaluated element-wise.

    Args:
      segment_ids_q: integer array ``[q_len]``, or ``[batch, q_len]`` for one mask per batch
        element.
      segment_ids_kv: integer array ``[kv_len]`` or ``[batch, kv_len]``; default
        ``segment_ids_q``. Batch sizes must match or be 1.
      block_size: an int, or ``(block_q, block_kv)``; the lengths must be multiples of it.
      causal: also require ``k <= i``.

    Returns:
      A ``BlockMask`` with ``mask_batch`` the batch size (1 for 1-D ids), ``mask_heads = 1``.

    Example:
      >>> m = document([0, 0, 0, 1, 1, 1, 1, 1], block_size=4)
      >>> m.to_dense()[0, 0, 2:4].astype(int).tolist()
      [[1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]]
      >>> document([[0] * 8, [0] * 4 + [1] * 4], block_size=4).layout.astype(int).tolist()
      [[[[1, 1], [1, 1]]], [[[1, 0], [0, 1]]]]
    """
    ids_q = _segment_ids(segment_ids_q, "segment_ids_q")
    ids_kv = ids_q if segment_ids_kv is None else _segment_ids(segment_ids_kv, "segment_ids_kv")
    (bq, q_len), (bk, kv_len) = ids_q.shape, ids_kv.shape
    if bq != bk and 1 not in (bq, bk):
        raise ValueError(f"segment_ids_q has batch {bq} and segment_ids_kv batch {bk}; they must "
                         f"be equal or 1")
    batch = max(bq, bk)
    block_q, block_kv = _block_size(block_size)
    _lengths(q_len, kv_len, (block_q, block_kv), names=("segment_ids_q length",
                                                        "segment_ids_kv length"))
    q_blocks = ids_q.reshape(bq, -1, block_q)
    kv_blocks = ids_kv.reshape(bk, -1, block_kv)
    q_min, q_max = q_blocks.min(-1)[:, :, None], q_blocks.max(-1)[:, :, None]
    kv_min, kv_max = kv_blocks.min(-1)[:, None, :], kv_blocks.max(-1)[:, None, :]
    candidate = (q_min <= kv_max) & (kv_min <= q_max)
    full = (q_min == q_max) & (kv_min == kv_max) & (q_min == kv_min)
    if causal:
        q_start, kv_start = _block_starts(q_len, block_q), _block_starts(kv_len, block_kv)
        candidate = candidate & (kv_start[None, :] <= q_start[:, None] + block_q - 1)
        full = full & (kv_start[None, :] + block_kv - 1 <= q_start[:, None])
    shape = (batch, 1) + candidate.shape[1:]
    candidate = np.broadcast_to(candidate[:, None], shape)
    full = np.broadcast_to(full[:, None], shape)

    def elements(b, h, q, k):
        same = ids_q[np.minimum(b, bq - 1), q] == ids_kv[np.minimum(b, bk - 1), k]
        return same & (k <= q) if causal else same

    return _from_candidates(candidate, full, elements, q_len, kv_len, block_q, block_kv)


# --- block patterns ------------------------------------------------------------------------------


def bigbird(q_len: int, block_size: int | tuple[int, int] = 64, *, window_blocks: int = 3,
            global_blocks: int = 2, random_blocks: int = 3, seed: int = 0,
            kv_len: int | None = None, heads: int = 1) -> BlockMask:
    """BigBird block-sparse pattern (Zaheer et al. 2020), every kept block full.

    In block units, query block ``i`` keeps: the window of key blocks ``|i - j| <=
    window_blocks // 2``; the first ``global_blocks`` key blocks, and every key block if ``i``
    is one of the first ``global_blocks`` query blocks (global rows and columns; the paper's
    ITC reference makes the first and the last block global, combine with
    ``BlockMask.from_layout`` for that); and ``random_blocks`` further key blocks drawn
    uniformly without replacement from those not already kept (all of them where fewer
    remain; global rows have none left). The draws come from ``np.random.default_rng(seed)``, one
    independent set per head when ``heads > 1``, so the mask is a function of its arguments.

    Args:
      q_len: query length, a multiple of the query block size.
      block_size: an int, or ``(block_q, block_kv)``.
      window_blocks: positive odd int, the width of the block window.
      global_blocks: non-negative int, leading global blocks.
      random_blocks: non-negative int, random key blocks per query block row.
      seed: seed of the generator.
      kv_len: key length (default ``q_len``).
      heads: the mask's head count (``mask_heads``).

    Returns:
      A ``BlockMask`` of shape ``(1, heads, q_blocks, kv_blocks)``, no partial blocks.

    Example:
      >>> m = bigbird(512, 64, window_blocks=3, global_blocks=1, random_blocks=2, seed=0)
      >>> m.shape, m.layout.sum(-1)[0, 0].tolist(), len(m.partial_masks)
      ((1, 1, 8, 8), [8, 5, 6, 6, 6, 6, 6, 5], 0)
    """
    q_len, kv_len, block_q, block_kv = _lengths(q_len, kv_len, block_size)
    window_blocks = _positive_int(window_blocks, "window_blocks")
    if window_blocks % 2 == 0:
        raise ValueError(f"window_blocks must be odd (the query block and as many on each "
                         f"side), got {window_blocks}")
    global_blocks = _non_negative_int(global_blocks, "global_blocks")
    random_blocks = _non_negative_int(random_blocks, "random_blocks")
    heads = _positive_int(heads, "heads")
    seed = _non_negative_int(seed, "seed")
    nq, nk = q_len // block_q, kv_len // block_kv
    i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
    fixed = (np.abs(i - j) <= window_blocks // 2) | (i < global_blocks) | (j < global_blocks)
    layout = np.broadcast_to(fixed, (heads, nq, nk)).copy()
    if random_blocks:
        # Random scores per (head, row, key block); the random_blocks smallest among the free
        # blocks are kept: a uniform draw without replacement, vectorised over rows and heads.
        scores = np.random.default_rng(seed).random((heads, nq, nk))
        scores = np.where(fixed, np.inf, scores)
        order = np.argsort(scores, axis=-1, kind="stable")[..., :random_blocks]
        free = (~fixed).sum(-1)[:, None]  # 0 on global rows
        take = np.broadcast_to(np.arange(order.shape[-1]) < free, order.shape)
        h, r, _ = np.nonzero(take)
        layout[h, r, order[take]] = True
    return BlockMask.from_layout(layout[None], (block_q, block_kv))


# --- combination ---------------------------------------------------------------------------------


def per_head(*masks: BlockMask) -> BlockMask:
    """One mask per head: stacks masks with ``mask_heads = 1`` along the head axis.

    The masks need the same lengths and block sizes; their ``mask_batch`` must be equal or 1.

    Args:
      *masks: ``BlockMask`` objects, head ``h`` of the result being ``masks[h]``.

    Returns:
      A ``BlockMask`` with ``mask_heads = len(masks)``.

    Example:
      >>> m = per_head(causal(8, block_size=4), local(8, 2, block_size=4))
      >>> m.shape, m.layout.sum((2, 3)).tolist()
      ((1, 2, 2, 2), [[3, 4]])
    """
    if not masks:
        raise ValueError("per_head needs at least one mask")
    for index, m in enumerate(masks):
        if not isinstance(m, BlockMask):
            raise ValueError(f"per_head mask {index} is a {type(m).__name__}, not a BlockMask")
        if m.shape[1] != 1:
            raise ValueError(f"per_head mask {index} already has mask_heads={m.shape[1]}; "
                             f"per_head stacks masks with mask_heads=1")
        geometry = (m.q_len, m.kv_len, m.block_q, m.block_kv)
        first = (masks[0].q_len, masks[0].kv_len, masks[0].block_q, masks[0].block_kv)
        if geometry != first:
            raise ValueError(
                f"per_head mask {index} has (q_len, kv_len, block_q, block_kv) = {geometry}, "
                f"mask 0 has {first}; all masks need the same lengths and blocks")
    batches = {m.shape[0] for m in masks}
    if len(batches - {1}) > 1:
        raise ValueError(f"per_head masks have mask_batch sizes {sorted(batches)}; they must be "
                         f"equal or 1")
    batch = max(batches)
    first = masks[0]
    layouts, codes, tables = [], [], []
    start = 0
    for m in masks:
        layouts.append(np.broadcast_to(m.layout, (batch, 1) + m.shape[2:]))
        ids = np.broadcast_to(m.partial_ids, (batch, 1) + m.shape[2:])
        codes.append(np.where(ids >= 0, ids + start, -1))
        tables.append(m.partial_masks)
        start += len(m.partial_masks)
    layout = np.concatenate(layouts, axis=1)
    ids = np.concatenate(codes, axis=1)
    patterns = np.concatenate(tables) if start else np.zeros((0, first.block_q, first.block_kv),
                                                             bool)
    patterns, remap = _dedup(patterns)
    ids = np.where(ids >= 0, remap[np.maximum(ids, 0)] if len(remap) else -1, -1)
    return BlockMask(layout, first.block_q, first.block_kv, first.q_len, first.kv_len,
                     ids.astype(np.int32), patterns)


# --- builders ------------------------------------------------------------------------------------


def _toeplitz(keep: Callable[[np.ndarray], np.ndarray], q_len: int, kv_len: int, block_q: int,
              block_kv: int, offset: int) -> BlockMask:
    """A mask that depends only on ``d = q + offset - k``: ``keep(d)`` is evaluated once on every
    difference that occurs, each block's kept count over its range of differences (all of which
    occur in it) says empty / full / partial, and the element pattern of a partial block depends
    only on ``q_start - k_start``, so it is built once per distinct value."""
    d_min = -(kv_len - 1)
    keep_d = np.asarray(keep(np.arange(d_min, q_len) + offset), bool)
    prefix = np.concatenate([[0], np.cumsum(keep_d)])
    q_start, kv_start = _block_starts(q_len, block_q), _block_starts(kv_len, block_kv)
    lo = q_start[:, None] - (kv_start[None, :] + block_kv - 1) - d_min
    hi = q_start[:, None] + block_q - 1 - kv_start[None, :] - d_min
    count = prefix[hi + 1] - prefix[lo]
    layout = count > 0
    partial = layout & (count < block_q + block_kv - 1)
    ids = np.full(layout.shape, -1, np.int32)
    rows, cols = np.nonzero(partial)
    patterns = np.zeros((0, block_q, block_kv), bool)
    if rows.size:
        start = q_start[rows] - kv_start[cols] - d_min
        unique, first, inverse = np.unique(start, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first-occurrence order, as BlockMask's
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        grid = np.arange(block_q)[:, None] - np.arange(block_kv)[None, :]
        patterns, remap = _dedup(keep_d[unique[order][:, None, None] + grid])
        ids[rows, cols] = remap[rank[inverse.reshape(-1)]]
    return BlockMask(layout[None, None], block_q, block_kv, q_len, kv_len, ids[None, None],
                     patterns)


def _from_candidates(candidate: np.ndarray, full: np.ndarray, elements: Callable, q_len: int,
                     kv_len: int, block_q: int, block_kv: int) -> BlockMask:
    """A mask from ``candidate`` blocks (``bool[mb, mh, nq, nk]``: may keep something), the
    ``full`` ones among them (known to keep everything), and ``elements(b, h, q, k) -> bool``
    evaluated with broadcasting on the other candidates only, a bounded number at a time."""
    layout = np.array(full, bool)
    ids = np.full(layout.shape, -1, np.int32)
    where = np.nonzero(candidate & ~full)
    count = where[0].size
    packed, places = [], []
    q_range, kv_range = np.arange(block_q)[:, None], np.arange(block_kv)[None, :]
    chunk = max(1, _CHUNK_ELEMENTS // (block_q * block_kv))
    for begin in range(0, count, chunk):
        b, h, i, j = (w[begin:begin + chunk] for w in where)
        blocks = np.broadcast_to(
            np.asarray(elements(b[:, None, None], h[:, None, None],
                                i[:, None, None] * block_q + q_range,
                                j[:, None, None] * block_kv + kv_range), bool),
            (len(b), block_q, block_kv)).reshape(len(b), -1)
        kept, whole = blocks.any(-1), blocks.all(-1)
        layout[b[kept], h[kept], i[kept], j[kept]] = True
        part = kept & ~whole
        packed.append(np.packbits(blocks[part], axis=-1))
        places.append(tuple(w[part] for w in (b, h, i, j)))
    patterns = np.zeros((0, block_q, block_kv), bool)
    if packed and sum(len(p) for p in packed):
        bits = np.concatenate(packed)
        place = tuple(np.concatenate([p[axis] for p in places]) for axis in range(4))
        first, remap = _first_unique(bits)
        patterns = np.unpackbits(bits[first], axis=-1, count=block_q * block_kv).astype(bool)
        patterns = patterns.reshape(-1, block_q, block_kv)
        ids[place] = remap
    return BlockMask(layout, block_q, block_kv, q_len, kv_len, ids, patterns)


def _dedup(patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct element patterns in first-occurrence order, and each input's index among them."""
    if not len(patterns):
        return patterns, np.zeros(0, np.int32)
    first, remap = _first_unique(np.packbits(patterns.reshape(len(patterns), -1), axis=-1))
    return patterns[first], remap


def _first_unique(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the distinct rows of a 2-D array in first-occurrence order, and each row's
    index among them."""
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.reshape(-1)].astype(np.int32)


# --- validation ----------------------------------------------------------------------------------


def _lengths(q_len, kv_len, block_size, names=("q_len", "kv_len")) -> tuple[int, int, int, int]:
    q_len = _positive_int(q_len, names[0])
    kv_len = q_len if kv_len is None else _positive_int(kv_len, names[1])
    block_q, block_kv = _block_size(block_size)
    for name, length, block in ((names[0], q_len, block_q), (names[1], kv_len, block_kv)):
        if length % block:
            raise ValueError(f"{name}={length} is not a multiple of the block size {block} "
                             f"(block_size={block_size!r}); pad the sequence or choose another "
                             f"block size")
    return q_len, kv_len, block_q, block_kv


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _positive_int(value, name: str) -> int:
    value = _int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _non_negative_int(value, name: str) -> int:
    value = _int(value, name)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def _block_starts(length: int, block: int) -> np.ndarray:
    return np.arange(0, length, block)


def _segment_ids(ids, name: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [length] or [batch, length], got "
                         f"{array.shape}")
    return array.reshape((1,) * (2 - array.ndim) + array.shape)
