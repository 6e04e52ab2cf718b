"""Tests for dp2ejax.attention.pallas: the block-sparse Pallas forward kernel (interpret mode).

Reference: dense masked softmax attention in float64 NumPy from ``BlockMask.to_dense()`` (so it
shares nothing with the kernel's block loop, compact form or online softmax). Tolerances:

* float32 inputs: the kernel accumulates in float32 over at most 128 keys with online rescaling;
  each step adds a few ulps (6e-8) of rounding, so observed errors are ~3e-7. ``rtol=1e-5`` (with
  ``atol=1e-6`` for outputs near zero) leaves a wide margin yet catches any wrong mask element
  (a missed or extra key moves the output by ~1e-2 or more).
* bfloat16 inputs: the reference uses the same bf16-rounded inputs, so the error comes from the
  kernel's cast of the probabilities to bf16 before ``p @ v`` (relative 2^-9 per term) and the bf16
  output (2^-9): ``2e-2``. ``lse`` is float32 from exact bf16 products: ``1e-5`` relative.

Shapes are tiny (interpret mode is slow); each shape/mask combination compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dp2ejax.attention.mask import BlockMask
from dp2ejax.attention.pallas import pallas_forward

F32_TOL = dict(rtol=1e-5, atol=1e-6)
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


def reference(q, k, v, mask: BlockMask, scale: float):
    """Dense float64 ``(out, lse)``; empty rows give ``(0, -inf)``."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    dense = mask.to_dense()  # [mb, mh, q_len, kv_len], broadcasts over batch/heads
    scores = np.where(dense, np.einsum("bqhd,bkhd->bhqk", q, k) * scale, -np.inf)
    row_max = scores.max(-1, keepdims=True)
    empty = np.isneginf(row_max)
    shifted = np.exp(scores - np.where(empty, 0.0, row_max))
    total = shifted.sum(-1, keepdims=True)
    lse = np.where(empty, -np.inf, np.log(np.where(empty, 1.0, total)) + row_max)[..., 0]
    probs = shifted / np.where(empty, 1.0, total)
    return np.einsum("bhqk,bkhd->bqhd", probs, v), lse


def run(q, k, v, mask: BlockMask, scale: float, **kwargs):
    kv_blocks, kv_counts, partial_ids = mask.compact()
    return pallas_forward(q, k, v, kv_blocks, kv_counts, partial_ids, mask.partial_masks,
                          scale=scale, block_q=mask.block_q, block_kv=mask.block_kv,
                          interpret=True, **kwargs)


def qkv(rng, batch, q_len, kv_len, heads, kv_heads, head_dim=16, dtype=np.float32):
    q = rng.standard_normal((batch, q_len, heads, head_dim))
    k = rng.standard_normal((batch, kv_len, kv_heads, head_dim))
    v = rng.standard_normal((batch, kv_len, kv_heads, head_dim))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def random_dense_mask(rng, lead, q_len, kv_len, block_q, block_kv, allowed=None):
    """Element mask ``bool[*lead, q_len, kv_len]``: each block dropped, full or random partial
    with probabilities 0.4 / 0.3 / 0.3; ``allowed`` (``bool[*lead, q_blocks, kv_blocks]``)
    forces blocks to be dropped."""
    nq, nk = q_len // block_q, kv_len // block_kv
    state = rng.choice(3, size=(*lead, nq, nk), p=[0.4, 0.3, 0.3])
    if allowed is not None:
        state = np.where(allowed, state, 0)
    expand = np.kron(state, np.ones((block_q, block_kv), int))
    return (expand == 1) | ((expand == 2) & (rng.random(expand.shape) < 0.5))


def check(out, lse, ref_out, ref_lse, tol, lse_tol=F32_TOL):
    out = np.asarray(out.astype(jnp.float32))
    np.testing.assert_allclose(out, ref_out, **tol)
    np.testing.assert_allclose(np.asarray(lse), ref_lse, **lse_tol)


def test_causal_grouped_query_float32():
    rng = np.random.default_rng(0)
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: i >= j, 64, 64, 16)
    q, k, v = qkv(rng, batch=2, q_len=64, kv_len=64, heads=2, kv_heads=1)
    out, lse = run(q, k, v, mask, scale=0.25)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (2, 2, 64) and lse.dtype == jnp.float32
    check(out, lse, *reference(q, k, v, mask, 0.25), F32_TOL)


def test_random_layout_with_partial_blocks_rectangular():
    rng = np.random.default_rng(1)
    mask = BlockMask.from_dense(random_dense_mask(rng, (), 64, 128, 16, 32), (16, 32))
    assert len(mask.partial_masks) > 0 and 0 < mask.block_density < 1
    q, k, v = qkv(rng, batch=1, q_len=64, kv_len=128, heads=2, kv_heads=2)
    check(*run(q, k, v, mask, scale=0.3), *reference(q, k, v, mask, 0.3), F32_TOL)


def test_per_batch_and_per_head_masks():
    rng = np.random.default_rng(2)

    def window(b, h, i, j):  # causal sliding window, its width depends on batch and head
        return (i >= j) & (i - j < 8 + 16 * h + 24 * b)

    mask = BlockMask.from_mask_fn(window, 128, 128, 16, batch=2, heads=2)
    assert mask.shape[:2] == (2, 2)
    q, k, v = qkv(rng, batch=2, q_len=128, kv_len=128, heads=2, kv_heads=1)
    check(*run(q, k, v, mask, scale=0.25), *reference(q, k, v, mask, 0.25), F32_TOL)


def test_empty_rows_give_zero_and_minus_inf():
    rng = np.random.default_rng(3)
    dense = np.tril(np.ones((64, 64), bool))
    dense[:16] = False  # query block 0: no kept block at all
    dense[20] = False  # one row of a partially kept query block
    mask = BlockMask.from_dense(dense, 16)
    assert mask.compact()[1][0, 0, 0] == 0
    q, k, v = qkv(rng, batch=1, q_len=64, kv_len=64, heads=2, kv_heads=1)
    out, lse = run(q, k, v, mask, scale=0.25)
    empty = ~dense.any(-1)
    assert np.all(np.asarray(out)[:, empty] == 0)
    assert np.all(np.isneginf(np.asarray(lse)[:, :, empty]))
    check(out, lse, *reference(q, k, v, mask, 0.25), F32_TOL)


def test_bfloat16_inputs():
    rng = np.random.default_rng(4)
    mask = BlockMask.from_dense(random_dense_mask(rng, (2,), 64, 64, 16, 16), 16)
    q, k, v = qkv(rng, batch=1, q_len=64, kv_len=64, heads=2, kv_heads=1, dtype=jnp.bfloat16)
    out, lse = run(q, k, v, mask, scale=0.25)
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    check(out, lse, *reference(q, k, v, mask, 0.25), BF16_TOL, lse_tol=F32_TOL)


def test_dropped_blocks_are_never_read():
    """NaN in every key/value block that no query block of a kv head keeps: if the kernel
    touched one (even multiplied by a zero probability) the output would be NaN."""
    rng = np.random.default_rng(5)
    heads = kv_heads = 2
    nq, nk, block = 4, 8, 16
    parity = np.arange(nk) % 2 == np.arange(heads)[:, None]  # head h keeps columns of parity h
    allowed = np.broadcast_to(parity[:, None, :], (heads, nq, nk))
    mask = BlockMask.from_dense(
        random_dense_mask(rng, (heads,), nq * block, nk * block, block, block, allowed), block)
    q, k, v = qkv(rng, batch=2, q_len=nq * block, kv_len=nk * block, heads=heads,
                  kv_heads=kv_heads)
    unused = ~mask.layout[0].any(axis=1)  # [heads == kv_heads, kv_blocks]
    assert unused.sum() >= nk  # at least the other parity's columns
    poison = np.repeat(unused.T, block, axis=0)[None, :, :, None]  # [1, kv_len, kv_heads, 1]
    k_nan, v_nan = (jnp.where(poison, jnp.nan, x) for x in (k, v))
    out, lse = run(q, k_nan, v_nan, mask, scale=0.25)
    assert np.all(np.isfinite(np.asarray(out)))
    check(out, lse, *reference(q, k, v, mask, 0.25), F32_TOL)


def test_inside_jit_matches_eager():
    rng = np.random.default_rng(6)
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: i >= j, 64, 64, 16)
    q, k, v = qkv(rng, batch=1, q_len=64, kv_len=64, heads=2, kv_heads=2)
    kv_blocks, kv_counts, partial_ids = mask.compact()

    @jax.jit
    def attend(q, k, v, kv_blocks, kv_counts, partial_ids, partial_masks):
        return pallas_forward(q, k, v, kv_blocks, kv_counts, partial_ids, partial_masks,
                              scale=0.25, block_q=16, block_kv=16, interpret=True)

    jitted = attend(q, k, v, kv_blocks, kv_counts, partial_ids, mask.partial_masks)
    eager = run(q, k, v, mask, scale=0.25)
    for a, b in zip(jitted, eager, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_shapes_are_rejected():
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: i >= j, 64, 64, 16, heads=3)
    q, k, v = qkv(np.random.default_rng(7), batch=1, q_len=64, kv_len=64, heads=2, kv_heads=1)
    with pytest.raises(ValueError, match="mask batch/heads must be 1 or equal"):
        run(q, k, v, mask, scale=0.25)
    k3, v3 = (jnp.concatenate([x] * 3, axis=2) for x in (k, v))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        run(q, k3, v3, BlockMask.from_mask_fn(lambda b, h, i, j: i >= j, 64, 64, 16),
            scale=0.25)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_to_triton_for_gpu(dtype):
    """Cross-platform lowering (no GPU needed): the kernel passes the Pallas Triton lowering
    (power-of-two tiles, supported primitives) and becomes a Triton custom call."""
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: (i >= j) & (i - j < 40), 128, 128, (32, 16),
                                  heads=4)
    q = jax.ShapeDtypeStruct((2, 128, 4, 64), dtype)
    k = jax.ShapeDtypeStruct((2, 128, 2, 64), dtype)
    lowered = pallas_forward.trace(q, k, k, *mask.compact(), mask.partial_masks, scale=0.125,
                                   block_q=32, block_kv=16).lower(lowering_platforms=("cuda",))
    assert "__gpu$xla.gpu.triton" in lowered.as_text()


def test_block_sparse_attention_pallas_path_forward_and_gradients():
    """``implementation="pallas"`` (this forward, the XLA custom backward) equals the XLA path
    in the output and in the gradients w.r.t. q, k, v (float32: 1e-5 relative)."""
    from dp2ejax.attention import block_sparse_attention

    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, 2, 64, 64, 2, 1)
    mask = BlockMask.from_dense(random_dense_mask(rng, (1, 2), 64, 64, 16, 16), 16)
    weights = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    def loss(implementation, q, k, v):
        out = block_sparse_attention(q, k, v, mask, implementation=implementation,
                                     interpret=True)
        return jnp.sum(out * weights)

    pallas = jax.value_and_grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2))(q, k, v)
    xla = jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(pallas[0], xla[0], rtol=1e-5)
    for got, want in zip(pallas[1], xla[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
