"""BlockMask and the named patterns against dense NumPy masks built from their definitions.

Every reference below is written from the pattern's definition on the whole ``q_len x kv_len``
grid (or with Python loops), independently of the block-wise constructors; sizes are small so
the dense forms are cheap. Exact equality: masks are booleans.
"""

import numpy as np
import pytest

from dp2ejax.attention.mask import BlockMask
from dp2ejax.attention.patterns import (
    bigbird,
    causal,
    dilated,
    document,
    global_tokens,
    local,
    per_head,
    strided,
)

# (q_len, kv_len, block_size): square, rectangular blocks both ways, kv longer and shorter.
GEOMETRIES = [
    (32, 32, 4),
    (32, 32, 8),
    (48, 64, (8, 4)),
    (48, 64, (4, 8)),
    (64, 48, (16, 8)),
    (32, 96, 16),
]


def grid(q_len, kv_len, offset=0):
    """Query positions (shifted by ``offset``) and key positions as broadcasting columns/rows."""
    return np.arange(q_len)[:, None] + offset, np.arange(kv_len)[None, :]


def check_against(mask: BlockMask, dense: np.ndarray):
    """``mask`` equals the dense reference, with consistent density, canonical partial
    patterns, and a ``from_dense`` round trip to the same blocks."""
    dense = np.asarray(dense, bool)
    dense4 = dense.reshape((1,) * (4 - dense.ndim) + dense.shape)
    got = mask.to_dense()
    assert got.shape == np.broadcast_shapes(got.shape, dense4.shape)
    np.testing.assert_array_equal(got, np.broadcast_to(dense4, got.shape))
    assert mask.density == pytest.approx(np.broadcast_to(dense4, got.shape).mean(), abs=1e-15)
    flat = mask.partial_masks.reshape(len(mask.partial_masks), mask.block_q * mask.block_kv)
    assert not flat.all(-1).any() and flat.any(-1).all(), "partial patterns must be partial"
    assert len({row.tobytes() for row in flat}) == len(flat), "duplicate partial patterns"
    block = (mask.block_q, mask.block_kv)
    again = BlockMask.from_dense(got, block)
    np.testing.assert_array_equal(again.layout, mask.layout)
    np.testing.assert_array_equal(again.to_dense(), got)
    if mask.shape[:2] == (1, 1):  # one pattern list in first-occurrence order: canonical
        np.testing.assert_array_equal(again.partial_ids, mask.partial_ids)
        np.testing.assert_array_equal(again.partial_masks, mask.partial_masks)


# --- position-difference patterns ----------------------------------------------------------------


@pytest.mark.parametrize("q_len, kv_len, block", GEOMETRIES)
@pytest.mark.parametrize("offset", [0, 5, -3])
def test_causal_matches_definition(q_len, kv_len, block, offset):
    q, k = grid(q_len, kv_len, offset)
    check_against(causal(q_len, kv_len, block, offset=offset), k <= q)


def test_causal_defaults_and_decoding():
    m = causal(16, block_size=4)
    assert (m.q_len, m.kv_len) == (16, 16)
    np.testing.assert_array_equal(m.layout[0, 0], np.tril(np.ones((4, 4), bool)))
    # Decoding 8 tokens after a cache of 24: the last rows of the full causal mask.
    np.testing.assert_array_equal(causal(8, 32, 4, offset=24).to_dense(),
                                  causal(32, block_size=4).to_dense()[:, :, 24:])


@pytest.mark.parametrize("q_len, kv_len, block", GEOMETRIES)
@pytest.mark.parametrize("window", [1, 3, 8, 13])
@pytest.mark.parametrize("is_causal", [False, True])
def test_local_matches_definition(q_len, kv_len, block, window, is_causal):
    q, k = grid(q_len, kv_len)
    dense = (k > q - window) & (k <= q) if is_causal else np.abs(q - k) < window
    check_against(local(q_len, window, kv_len, block, causal=is_causal), dense)


def test_local_with_offset_and_window_counts():
    q, k = grid(16, 24, 8)
    check_against(local(16, 5, 24, 8, causal=True, offset=8), (k > q - 5) & (k <= q))
    kept = local(64, 6, block_size=8, causal=True).to_dense()[0, 0].sum(-1)
    np.testing.assert_array_equal(kept, np.minimum(np.arange(64) + 1, 6))
    kept = local(64, 6, block_size=8).to_dense()[0, 0].sum(-1)
    assert kept[10:54].tolist() == [11] * 44  # 2 * window - 1 away from the ends


def strided_reference(q_len, kv_len, stride, is_causal, with_local, offset):
    """Child et al. (2019): A1 = {t..i} with t = max(0, i - l), A2 = {j: (i - j) mod l = 0}."""
    dense = np.zeros((q_len, kv_len), bool)
    for row in range(q_len):
        i = row + offset
        for j in range(kv_len):
            near = abs(i - j) <= stride if with_local else False
            every = (i - j) % stride == 0
            dense[row, j] = (near or every) and (j <= i or not is_causal)
    return dense


@pytest.mark.parametrize("q_len, kv_len, block", GEOMETRIES[:4])
@pytest.mark.parametrize("stride", [1, 3, 4, 7])
@pytest.mark.parametrize("is_causal, with_local", [(True, True), (True, False), (False, True),
                                                   (False, False)])
def test_strided_matches_sparse_transformer(q_len, kv_len, block, stride, is_causal, with_local):
    dense = strided_reference(q_len, kv_len, stride, is_causal, with_local, 0)
    check_against(strided(q_len, stride, kv_len, block, causal=is_causal, with_local=with_local),
                  dense)


def test_strided_offset_and_factorised_heads():
    check_against(strided(16, 4, 32, 8, offset=16),
                  strided_reference(16, 32, 4, True, True, 16))
    # Union of the paper's two heads = the merged pattern.
    two = per_head(local(32, 5, block_size=8, causal=True),
                   strided(32, 4, block_size=8, with_local=False))
    merged = two.to_dense().any(axis=1)
    np.testing.assert_array_equal(merged[0], strided(32, 4, block_size=8).to_dense()[0, 0])


def dilated_reference(q_len, kv_len, window, dilation, is_causal):
    dense = np.zeros((q_len, kv_len), bool)
    steps = range(0, window) if is_causal else range(-(window - 1), window)
    for i in range(q_len):
        for t in steps:
            j = i - t * dilation
            if 0 <= j < kv_len:
                dense[i, j] = True
    return dense


@pytest.mark.parametrize("q_len, kv_len, block", GEOMETRIES)
@pytest.mark.parametrize("window, dilation", [(1, 3), (2, 3), (4, 2), (3, 5)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_dilated_matches_definition(q_len, kv_len, block, window, dilation, is_causal):
    dense = dilated_reference(q_len, kv_len, window, dilation, is_causal)
    check_against(dilated(q_len, window, dilation, kv_len, block, causal=is_causal), dense)


def test_dilation_one_is_local():
    a, b = dilated(32, 5, 1, block_size=8), local(32, 5, block_size=8)
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())


# --- other element patterns ----------------------------------------------------------------------


@pytest.mark.parametrize("q_len, kv_len, block", GEOMETRIES)
@pytest.mark.parametrize("num_global", [1, 4, 7, 100])
def test_global_tokens_matches_definition(q_len, kv_len, block, num_global):
    q, k = grid(q_len, kv_len)
    dense = (q < num_global) | (k < num_global)
    check_against(global_tokens(q_len, num_global, kv_len, block), dense)


def document_reference(ids_q, ids_kv, is_causal):
    ids_q, ids_kv = np.atleast_2d(ids_q), np.atleast_2d(ids_kv)
    batch = max(len(ids_q), len(ids_kv))
    ids_q = np.broadcast_to(ids_q, (batch, ids_q.shape[1]))
    ids_kv = np.broadcast_to(ids_kv, (batch, ids_kv.shape[1]))
    dense = np.zeros((batch, 1, ids_q.shape[1], ids_kv.shape[1]), bool)
    for b in range(batch):
        for i, a in enumerate(ids_q[b]):
            for j, c in enumerate(ids_kv[b]):
                dense[b, 0, i, j] = a == c and (j <= i or not is_causal)
    return dense


@pytest.mark.parametrize("block", [4, 8, (8, 4), (4, 16)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_document_matches_definition(block, is_causal):
    rng = np.random.default_rng(0)
    packed = np.repeat(np.arange(5), [7, 1, 20, 4, 0 + 32])  # sorted, ragged lengths
    shuffled = rng.integers(-2, 3, 64)  # unsorted, negative ids
    batched = np.stack([packed, np.sort(shuffled), np.zeros(64, int)])
    for ids in (packed, shuffled, batched):
        mask = document(ids, block_size=block, causal=is_causal)
        assert mask.shape[:2] == (np.atleast_2d(ids).shape[0], 1)
        check_against(mask, document_reference(ids, ids, is_causal))


def test_document_separate_kv_and_broadcast_batch():
    ids_q = np.array([[0] * 8 + [1] * 8, [1] * 16], np.int32)
    ids_kv = np.repeat(np.arange(4), 8)  # one kv row shared by both batch elements
    mask = document(ids_q, ids_kv, block_size=8)
    assert mask.shape == (2, 1, 2, 4)
    check_against(mask, document_reference(ids_q, ids_kv, False))
    # Sorted ids: only the blocks where segments meet hold elements; the rest are full or empty.
    packed = np.repeat(np.arange(4), 256)
    m = document(packed, block_size=128)
    np.testing.assert_array_equal(m.layout[0, 0], np.kron(np.eye(4, dtype=bool),
                                                          np.ones((2, 2), bool)))
    assert len(m.partial_masks) == 0


# --- BigBird -------------------------------------------------------------------------------------


def test_bigbird_structure():
    nq = 16
    m = bigbird(nq * 8, 8, window_blocks=3, global_blocks=2, random_blocks=3, seed=1, heads=4)
    assert m.shape == (1, 4, nq, nq) and len(m.partial_masks) == 0
    assert np.all(m.partial_ids == -1)
    i, j = np.arange(nq)[:, None], np.arange(nq)[None, :]
    fixed = (np.abs(i - j) <= 1) | (i < 2) | (j < 2)
    layout = m.layout[0]
    assert np.all(layout[:, fixed]), "window and global blocks must be kept"
    random = layout & ~fixed
    np.testing.assert_array_equal(random[:, 2:].sum(-1), 3)
    assert not all(np.array_equal(layout[0], layout[h]) for h in range(1, 4)), \
        "heads must draw independently"
    np.testing.assert_array_equal(m.to_dense(), np.kron(m.layout, np.ones((8, 8), bool)))


def test_bigbird_random_blocks_where_possible_and_rectangular():
    # 6 key blocks; every row has at most 3 free blocks (row 3: window {2, 3, 4}, global {0}).
    m = bigbird(48, 8, window_blocks=3, global_blocks=1, random_blocks=4, seed=0)
    assert m.layout.all(), "fewer free blocks than random_blocks: take them all"
    m = bigbird(48, 8, window_blocks=3, global_blocks=1, random_blocks=2, seed=0)
    np.testing.assert_array_equal(m.layout[0, 0].sum(-1), [6, 5, 6, 6, 6, 5])
    r = bigbird(32, (8, 4), window_blocks=1, global_blocks=0, random_blocks=2, kv_len=64)
    assert r.shape == (1, 1, 4, 16)
    np.testing.assert_array_equal(r.layout[0, 0].sum(-1), 3)
    assert r.layout[0, 0, np.arange(4), np.arange(4)].all()


def test_bigbird_is_deterministic_for_a_seed():
    a = bigbird(256, 16, seed=7, heads=2)
    b = bigbird(256, 16, seed=7, heads=2)
    c = bigbird(256, 16, seed=8, heads=2)
    np.testing.assert_array_equal(a.layout, b.layout)
    assert not np.array_equal(a.layout, c.layout)
    no_random = bigbird(256, 16, random_blocks=0, seed=3)
    np.testing.assert_array_equal(no_random.layout, bigbird(256, 16, random_blocks=0,
                                                            seed=4).layout)


# --- per_head ------------------------------------------------------------------------------------


def test_per_head_stacks_dense_masks():
    parts = [causal(32, 48, (8, 16), offset=16), local(32, 6, 48, (8, 16)),
             global_tokens(32, 3, 48, (8, 16)), causal(32, 48, (8, 16), offset=16)]
    m = per_head(*parts)
    assert m.shape == (1, 4, 4, 3)
    check_against(m, np.concatenate([p.to_dense() for p in parts], axis=1))
    # Shared element patterns are stored once.
    assert len(m.partial_masks) == len({p.tobytes() for part in parts
                                        for p in part.partial_masks})
    # Batch 1 broadcasts against batch 2.
    doc = document(np.array([[0] * 16 + [1] * 16, [0] * 32]), block_size=8)
    mixed = per_head(doc, causal(32, block_size=8))
    assert mixed.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(mixed.to_dense()[:, 1], np.broadcast_to(
        causal(32, block_size=8).to_dense()[:, 0], (2, 32, 32)))
    np.testing.assert_array_equal(mixed.to_dense()[:, :1], doc.to_dense())


# --- BlockMask: compact, combination, empty rows, from_mask_fn -----------------------------------


def random_mask(rng, shape, block):
    """A dense mask with empty, full and partial blocks, and empty rows of blocks."""
    mb, mh, q_len, kv_len = shape
    bq, bk = block
    layout = rng.random((mb, mh, q_len // bq, kv_len // bk)) < 0.5
    full = rng.random(layout.shape) < 0.2
    dense = np.kron(layout, np.ones((bq, bk), bool)) & (rng.random(shape) < 0.7)
    dense |= np.kron(full, np.ones((bq, bk), bool))
    dense[..., :bq, :] = False  # an empty block row
    return dense


@pytest.mark.parametrize("block", [(4, 4), (4, 8), (8, 4)])
def test_compact_lists_kept_blocks_in_order(block):
    rng = np.random.default_rng(1)
    dense = random_mask(rng, (2, 3, 32, 64), block)
    m = BlockMask.from_dense(dense, block)
    kv_blocks, counts, ids = m.compact()
    assert kv_blocks.dtype == counts.dtype == ids.dtype == np.int32
    np.testing.assert_array_equal(counts, m.layout.sum(-1))
    assert kv_blocks.shape == ids.shape == m.shape[:3] + (max(counts.max(), 1),)
    for index in np.ndindex(*m.shape[:3]):
        kept = np.nonzero(m.layout[index])[0]
        n = len(kept)
        np.testing.assert_array_equal(kv_blocks[index][:n], kept)
        np.testing.assert_array_equal(ids[index][:n], m.partial_ids[index][kept])
        pad = kept[-1] if n else 0  # padding repeats the last kept block, 0 for an empty row
        assert np.all(kv_blocks[index][n:] == pad) and np.all(ids[index][n:] == -1)
    assert (counts == 0).any(), "the test mask must include an empty row"


@pytest.mark.parametrize("block", [(4, 4), (4, 8), (8, 4)])
def test_diagonals_rebuild_the_layout_and_patterns(block):
    rng = np.random.default_rng(2)
    dense = random_mask(rng, (2, 3, 32, 64), block)
    m = BlockMask.from_dense(dense, block)
    offsets, table_ids = m.diagonals()
    assert offsets.dtype == table_ids.dtype == np.int32
    assert table_ids.shape == m.shape[:3] + offsets.shape[-1:]
    mb, mh, nq, nk = m.layout.shape
    expected = np.where(m.layout, m.partial_ids + 2, 0)
    rebuilt = np.zeros_like(expected)
    for b, h, i, s in np.ndindex(mb, mh, nq, offsets.shape[-1]):
        if table_ids[b, h, i, s]:
            j = i + offsets[b, h, s]
            assert 0 <= j < nk and rebuilt[b, h, i, j] == 0  # each block listed once
            rebuilt[b, h, i, j] = table_ids[b, h, i, s]
    np.testing.assert_array_equal(rebuilt, expected)


def test_banded_masks_have_few_diagonals():
    window = local(256, 40, block_size=16, causal=True)  # keys (i - 40, i]: 4 block diagonals
    offsets, table_ids = window.diagonals()
    np.testing.assert_array_equal(offsets[0, 0], [-3, -2, -1, 0])
    assert table_ids[0, 0, 0].tolist() == [0, 0, 0, 2]  # the first row: only the diagonal
    assert table_ids.shape[-1] <= window.compact()[0].shape[-1]


def test_compact_of_an_all_empty_mask():
    m = BlockMask.from_layout(np.zeros((2, 3), bool), 4)
    kv_blocks, counts, ids = m.compact()
    assert kv_blocks.shape == (1, 1, 2, 1) and not kv_blocks.any()
    assert not counts.any() and np.all(ids == -1)


@pytest.mark.parametrize("shapes", [((1, 1), (1, 1)), ((1, 3), (1, 1)), ((2, 1), (1, 3)),
                                    ((2, 3), (2, 3)), ((1, 1), (2, 1))])
@pytest.mark.parametrize("block", [(4, 4), (8, 4)])
def test_union_and_intersection_equal_dense_or_and(shapes, block):
    rng = np.random.default_rng(2)
    da = random_mask(rng, shapes[0] + (32, 48), block)
    db = random_mask(rng, shapes[1] + (32, 48), block)
    a, b = BlockMask.from_dense(da, block), BlockMask.from_dense(db, block)
    union, inter = a | b, a & b
    expected_shape = np.broadcast_shapes(a.shape, b.shape)
    assert union.shape == inter.shape == expected_shape
    check_against(union, da | db)
    check_against(inter, da & db)


def test_combined_patterns_equal_dense_combination():
    q, k = grid(64, 64)
    m = local(64, 9, block_size=8, causal=True) | (global_tokens(64, 3, block_size=8)
                                                   & causal(64, block_size=8))
    check_against(m, ((k > q - 9) & (k <= q)) | (((q < 3) | (k < 3)) & (k <= q)))
    heads = per_head(causal(64, block_size=8), local(64, 4, block_size=8))
    docs = document(np.array([[0] * 32 + [1] * 32, [0] * 64]), block_size=8)
    both = heads & docs
    assert both.shape == (2, 2, 8, 8)
    check_against(both, heads.to_dense() & docs.to_dense())


def test_combination_errors():
    a = per_head(causal(32, block_size=8), causal(32, block_size=8))
    b = per_head(*[causal(32, block_size=8)] * 3)
    with pytest.raises(ValueError, match="batch/head"):
        _ = a | b
    with pytest.raises(ValueError, match="block sizes"):
        _ = causal(32, block_size=8) & causal(32, block_size=4)
    with pytest.raises(ValueError, match="lengths"):
        _ = causal(32, block_size=8) | causal(32, 40, block_size=8)
    with pytest.raises(TypeError):
        _ = causal(32, block_size=8) | np.ones((32, 32), bool)


def test_empty_rows():
    m = causal(16, 16, 4, offset=-3)
    assert m.empty_rows.shape == (1, 1, 16)
    assert m.empty_rows[0, 0].tolist() == [True] * 3 + [False] * 13
    rng = np.random.default_rng(3)
    dense = random_mask(rng, (2, 3, 32, 48), (4, 8))
    dense[0, 1, 5] = False  # an empty row inside a kept block row
    m = BlockMask.from_dense(dense, (4, 8))
    np.testing.assert_array_equal(m.empty_rows, ~dense.any(-1))
    assert m.empty_rows[0, 1, 5]
    ids = np.array([0] * 8 + [1] * 8)
    assert document(ids, np.full(16, 1), block_size=8).empty_rows[0, 0, :8].all()


def test_from_mask_fn_with_batch_and_head_dependence():
    def mask_fn(b, h, q, k):
        return (k <= q + 4 * h) & ((k + b) % 3 != 0)

    m = BlockMask.from_mask_fn(mask_fn, 32, 48, (8, 4), batch=2, heads=3)
    assert m.shape == (2, 3, 4, 12)
    b, h = np.arange(2)[:, None, None, None], np.arange(3)[None, :, None, None]
    q, k = np.arange(32)[:, None], np.arange(48)[None, :]
    check_against(m, mask_fn(b, h, q, k))
    assert not np.array_equal(m.layout[0, 0], m.layout[0, 2]), "heads differ"
    # The same rule through from_mask_fn and through the pattern gives the same mask.
    fn = BlockMask.from_mask_fn(lambda b, h, q, k: k <= q, 32, 32, 8)
    pattern = causal(32, block_size=8)
    np.testing.assert_array_equal(fn.layout, pattern.layout)
    np.testing.assert_array_equal(fn.partial_masks, pattern.partial_masks)


# --- long sequences: built block-wise ------------------------------------------------------------


def test_long_causal_and_local_are_built_block_wise():
    n, block = 16384, 128
    blocks = n // block
    c = causal(n, block_size=block)
    np.testing.assert_array_equal(c.layout[0, 0], np.tril(np.ones((blocks, blocks), bool)))
    assert len(c.partial_masks) == 1
    np.testing.assert_array_equal(c.partial_masks[0], np.tril(np.ones((block, block), bool)))
    assert np.array_equal(np.nonzero(c.partial_ids[0, 0] >= 0)[0], np.arange(blocks))
    assert c.density == pytest.approx((n + 1) / (2 * n))

    window = 1024
    w = local(n, window, block_size=block, causal=True)
    i, j = np.arange(blocks)[:, None], np.arange(blocks)[None, :]
    reach = window // block  # 8 blocks back, the 9th back holds the window's tail
    np.testing.assert_array_equal(w.layout[0, 0], (j <= i) & (j >= i - reach))
    assert len(w.partial_masks) == 2  # the diagonal triangle and the window's far edge
    kept = np.minimum(np.arange(n) + 1, window).sum()
    assert w.density == pytest.approx(kept / n**2)
    assert not w.empty_rows.any()

    g = global_tokens(n, 64, block_size=block)
    assert g.layout[0, 0].sum() == 2 * blocks - 1 and len(g.partial_masks) == 3
    s = strided(n, block, block_size=block)
    np.testing.assert_array_equal(s.layout[0, 0], j <= i)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("build, names", [
    (lambda: causal(30, block_size=8), "q_len=30"),
    (lambda: causal(32, 36, block_size=8), "kv_len=36"),
    (lambda: causal(32, block_size=(8, 5)), "kv_len=32"),
    (lambda: causal(0), "q_len"),
    (lambda: causal(32, block_size=0), "block_size"),
    (lambda: causal(32, block_size=8, offset=1.5), "offset"),
    (lambda: local(32, 0, block_size=8), "window"),
    (lambda: local(32, -2, block_size=8), "window"),
    (lambda: local(32, 2.0, block_size=8), "window"),
    (lambda: dilated(32, 0, 2, block_size=8), "window"),
    (lambda: dilated(32, 2, 0, block_size=8), "dilation"),
    (lambda: strided(32, 0, block_size=8), "stride"),
    (lambda: strided(32, -1, block_size=8), "stride"),
    (lambda: global_tokens(32, 0, block_size=8), "num_global"),
    (lambda: bigbird(64, 8, window_blocks=2), "window_blocks"),
    (lambda: bigbird(64, 8, window_blocks=0), "window_blocks"),
    (lambda: bigbird(64, 8, global_blocks=-1), "global_blocks"),
    (lambda: bigbird(64, 8, random_blocks=-1), "random_blocks"),
    (lambda: bigbird(64, 8, heads=0), "heads"),
    (lambda: bigbird(60, 8), "q_len=60"),
    (lambda: document(np.zeros(32, np.float32), block_size=8), "segment_ids_q"),
    (lambda: document(np.zeros(32, bool), block_size=8), "segment_ids_q"),
    (lambda: document(np.zeros((2, 2, 8), int), block_size=8), "segment_ids_q"),
    (lambda: document(np.zeros(30, int), block_size=8), "segment_ids_q length"),
    (lambda: document(np.zeros(32, int), np.zeros(36, int), block_size=8),
     "segment_ids_kv length"),
    (lambda: document(np.zeros(32, int), np.zeros(32, float), block_size=8), "segment_ids_kv"),
    (lambda: document(np.zeros((2, 32), int), np.zeros((3, 32), int), block_size=8),
     "segment_ids_kv batch 3"),
    (lambda: per_head(), "at least one"),
    (lambda: per_head(causal(32, block_size=8), causal(32, block_size=4)), "mask 1"),
    (lambda: per_head(causal(32, block_size=8), causal(32, 40, block_size=8)), "mask 1"),
    (lambda: per_head(per_head(causal(32, block_size=8), causal(32, block_size=8))),
     "mask_heads=2"),
    (lambda: per_head(causal(32, block_size=8), np.ones((32, 32), bool)), "not a BlockMask"),
    (lambda: per_head(document(np.zeros((2, 32), int), block_size=8),
                      document(np.zeros((3, 32), int), block_size=8)), "mask_batch"),
])
def test_invalid_input_raises_naming_the_argument(build, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        build()
