"""``block_sparse_attention`` against a dense float64 masked-softmax reference.

Masks are built with ``BlockMask.from_mask_fn`` / ``from_dense`` directly (no named patterns).
Each case compiles one function returning the output and the gradients of a random linear
functional of it (compile time dominates on CPU, so cases are few and each covers several
patterns: a per-head mask gives every head its own pattern).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import dp2ejax
from dp2ejax.attention.kernel import block_sparse_attention
from dp2ejax.attention.mask import BlockMask

BATCH, HEADS, HEAD_DIM = 2, 4, 16


def dense_reference(q, k, v, mask: BlockMask, scale=None):
    """Masked softmax attention on the full score matrix (fully masked rows -> 0), written so
    that its jax.grad is finite everywhere."""
    heads, kv_heads = q.shape[2], k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    keep = jnp.broadcast_to(jnp.asarray(mask.to_dense()), scores.shape)
    row_max = jax.lax.stop_gradient(jnp.max(jnp.where(keep, scores, -jnp.inf), -1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
    e = jnp.where(keep, jnp.exp(jnp.where(keep, scores, row_max) - row_max), 0)
    total = e.sum(-1, keepdims=True)
    return jnp.einsum("bhqk,bkhd->bqhd", e / jnp.where(total > 0, total, 1), v)


def inputs(seed, q_len, kv_len, kv_heads, dtype, heads=HEADS, batch=BATCH):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, q_len, heads, HEAD_DIM))
    k = rng.normal(size=(batch, kv_len, kv_heads, HEAD_DIM))
    v = rng.normal(size=(batch, kv_len, kv_heads, HEAD_DIM))
    weights = rng.normal(size=(batch, q_len, heads, HEAD_DIM))
    return [jnp.asarray(x, dtype) for x in (q, k, v)], jnp.asarray(weights)


def value_and_grads(attention):
    """One compiled function: the output and d(sum(out * weights))/d(q, k, v)."""
    def loss(q, k, v, weights):
        out = attention(q, k, v)
        return jnp.sum(out.astype(weights.dtype) * weights), out
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def relative_error(x, reference):
    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    return np.max(np.abs(x - reference)) / np.max(np.abs(reference))


# --- masks: each a (mask, kv_heads) case -----------------------------------------------------


def causal_mask():  # shared by batch and heads; square blocks
    return BlockMask.from_mask_fn(lambda b, h, i, j: j <= i, 64, 64, 16), 2


def per_head_mask():  # one pattern per head, rectangular blocks, q_len != kv_len
    def fn(b, h, i, j):
        causal = j <= 2 * i + 1
        window = np.abs(2 * i - j) < 24  # sliding window
        global_tokens = (j < 8) | (i < 4) | (i == j)  # global rows and columns
        strided = causal & ((2 * i - j) % 8 == 0)
        return np.select([h == 0, h == 1, h == 2], [causal, window, global_tokens], strided)
    return BlockMask.from_mask_fn(fn, 64, 128, (16, 32), heads=HEADS), 2


def per_batch_mask():  # documents (batch 0) and a random layout with random partial blocks
    rng = np.random.default_rng(1)
    docs = np.repeat(np.arange(4), [10, 30, 20, 36])
    dense0 = docs[:, None] == docs[None, :]
    layout = rng.random((3, 6)) < 0.5
    blocks = np.kron(layout, np.ones((32, 16), bool))
    partial = rng.random((3, 6)) < 0.5
    dense1 = blocks & (~np.kron(partial, np.ones((32, 16), bool)) | (rng.random((96, 96)) < 0.6))
    mask = BlockMask.from_dense(np.stack([dense0, dense1])[:, None], (32, 16))
    assert mask.shape[:2] == (2, 1) and len(mask.partial_masks) > 2
    return mask, 1


def empty_rows_mask():  # per batch and head; rows keeping nothing, a whole empty query block
    def fn(b, h, i, j):
        return (j <= i + 8 * h) & (i >= 16 + b) & (i % 16 != 5 + h)
    return BlockMask.from_mask_fn(fn, 64, 64, 16, batch=BATCH, heads=HEADS), 4


def named_patterns_mask():  # the named patterns of dp2ejax.attention.patterns, one per head
    from dp2ejax.attention import patterns

    return patterns.per_head(
        patterns.bigbird(64, 16, window_blocks=1, global_blocks=1, random_blocks=1, seed=3),
        patterns.dilated(64, 6, 3, block_size=16, causal=True),
        patterns.document(np.repeat(np.arange(3), [20, 30, 14]), block_size=16, causal=True),
        patterns.local(64, 20, block_size=16) | patterns.global_tokens(64, 4, block_size=16),
    ), 2


CASES = {"causal": causal_mask, "per_head": per_head_mask, "per_batch": per_batch_mask,
         "empty_rows": empty_rows_mask, "named_patterns": named_patterns_mask}


@pytest.fixture(scope="module")
def masks():
    return {name: make() for name, make in CASES.items()}


def check_case(mask, kv_heads, dtype, out_tol, grad_tol, seed=0, scale=None):
    (q, k, v), weights = inputs(seed, mask.q_len, mask.kv_len, kv_heads, dtype)
    fn = value_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, mask, scale=scale))
    grads, out = fn(q, k, v, weights)
    assert out.dtype == dtype and out.shape == q.shape
    assert all(g.dtype == dtype for g in grads)
    exact = [x.astype(jnp.float64) for x in (q, k, v)]  # the same (rounded) inputs in float64
    ref_loss = jax.value_and_grad(
        lambda q, k, v: jnp.sum(dense_reference(q, k, v, mask, scale) * weights),
        argnums=(0, 1, 2))
    _, ref_grads = ref_loss(*exact)
    ref_out = dense_reference(*exact, mask, scale)
    assert relative_error(out, ref_out) < out_tol
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert np.all(np.isfinite(np.asarray(grad, np.float64)))
        assert relative_error(grad, ref) < grad_tol
    return out, grads


def test_banded_masks_read_diagonal_slices_others_gather():
    from dp2ejax.attention import patterns
    from dp2ejax.attention.kernel import _plan

    q = jnp.zeros((1, 256, 2, 8))
    window = patterns.local(256, 40, block_size=16, causal=True)
    random = patterns.bigbird(256, 16, window_blocks=1, global_blocks=1, random_blocks=2, seed=0)
    plan, arrays = _plan(q, q, q, window, None, None, "xla", False)
    assert plan.slots.mode == plan.slots_t.mode == "diagonal" and len(arrays) == 4
    assert plan.slots.pad == (3, 0) and plan.slots_t.pad == (0, 3)
    plan, arrays = _plan(q, q, q, random, None, None, "xla", False)
    assert plan.slots.mode == plan.slots_t.mode == "gather" and len(arrays) == 6
    plan, _ = _plan(q, q, q, window, None, None, "pallas", True)  # Pallas reads the compact form
    assert plan.slots.mode == "gather" and plan.slots_t.mode == "diagonal"


@pytest.mark.parametrize("name", list(CASES))
def test_float64_equals_dense(masks, name):
    check_case(*masks[name], jnp.float64, 1e-12, 1e-12)


@pytest.mark.parametrize("name", ["per_head", "per_batch"])
def test_float32_equals_dense(masks, name):
    # float32 matmuls and statistics: a few float32 ulps (2**-24) times the reduction lengths.
    check_case(*masks[name], jnp.float32, 1e-5, 1e-5)


def test_bfloat16_equals_dense(masks):
    # bf16 inputs (the reference uses the same rounded inputs in float64); what remains is the
    # bf16 rounding of the probabilities (and of ds in the backward) before their matmuls
    # (unit roundoff 2**-9 = 2e-3) and of the bf16 output: errors of a few 2**-9, < 2e-2.
    check_case(*masks["per_head"], jnp.bfloat16, 2e-2, 2e-2)


def test_multi_query_equals_dense(masks):
    # kv_heads=1 with a per-head mask (the per-batch case covers kv_heads=1 with a shared mask).
    mask, _ = masks["per_head"]
    check_case(mask, 1, jnp.float64, 1e-12, 1e-12, seed=3, scale=0.3)


def test_empty_rows_are_zero_with_finite_gradients(masks):
    mask, kv_heads = masks["empty_rows"]
    out, grads = check_case(mask, kv_heads, jnp.float32, 1e-5, 1e-5)
    empty = ~mask.to_dense().any(-1)  # [batch, heads, q_len]
    assert empty.any() and empty[:, :, :16].all()
    out = np.asarray(out).transpose(0, 2, 1, 3)  # [batch, heads, q_len, d]
    assert np.all(out[empty] == 0)
    dq = np.asarray(grads[0]).transpose(0, 2, 1, 3)
    assert np.all(dq[empty] == 0)


def test_emulated_bfloat16(masks):
    # Every operation (matmuls, exp, running max/sum, division) rounded to bf16 in float32: the
    # result is a bf16 computation's (errors of a few 2**-9 of max|out|, < 5e-2 against the
    # exact result) and no longer the float32 one (which is within 1e-6).
    mask, kv_heads = masks["causal"]
    (q, k, v), _ = inputs(5, 64, 64, kv_heads, jnp.float32)
    emulated = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, mask, policy="bf16"))
    out = emulated(q, k, v)
    exact = dense_reference(*(x.astype(jnp.float64) for x in (q, k, v)), mask)
    assert out.dtype == jnp.float32
    assert 1e-3 < relative_error(out, exact) < 5e-2


def test_stochastic_rounding_policy_needs_and_uses_the_key(masks):
    # Stochastic rounding to bf16 is unbiased: the mean of many independently rounded runs is
    # closer to the exact result than one run (the errors are independent per key).
    mask, kv_heads = masks["causal"]
    (q, k, v), _ = inputs(6, 64, 64, kv_heads, jnp.float32)
    policy = dp2ejax.PrecisionPolicy.uniform("bf16", mode="stochastic")
    with pytest.raises(ValueError, match="rounding_key"):
        block_sparse_attention(q, k, v, mask, policy=policy)
    run = jax.jit(jax.vmap(lambda key: block_sparse_attention(q, k, v, mask, policy=policy,
                                                              rounding_key=key)))
    outs = run(jax.random.split(jax.random.key(0), 16))
    exact = dense_reference(*(x.astype(jnp.float64) for x in (q, k, v)), mask)
    assert not np.array_equal(outs[0], outs[1])  # different keys round differently
    single = relative_error(outs[0], exact)
    assert 1e-3 < single < 5e-2
    assert relative_error(outs.mean(0), exact) < single / 2


def test_vmap_over_extra_axis(masks):
    mask, kv_heads = masks["causal"]
    (q, k, v), _ = inputs(6, 64, 64, kv_heads, jnp.float64, batch=3 * BATCH)
    stacked = [x.reshape(3, BATCH, *x.shape[1:]) for x in (q, k, v)]
    out = jax.jit(jax.vmap(lambda q, k, v: block_sparse_attention(q, k, v, mask)))(*stacked)
    np.testing.assert_allclose(out.reshape(q.shape), dense_reference(q, k, v, mask), atol=1e-12)


def test_memory_is_linear_in_sequence_length():
    # 16384 x 16384 with a 512-wide local window in 128-blocks: compile only (about 1 s).
    length, dense_scores_bytes = 16384, 16384**2 * 4  # 1 GiB of float32 scores
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: np.abs(i - j) < 256, length, length, 128)
    shape = jax.ShapeDtypeStruct((1, length, 1, 64), jnp.float32)
    forward = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, mask))
    memory = forward.lower(shape, shape, shape).compile().memory_analysis()
    # measured (JAX 0.10, CPU): temp 24 MiB + output 4 MiB
    assert memory.temp_size_in_bytes + memory.output_size_in_bytes < dense_scores_bytes / 16
    gradient = jax.jit(jax.grad(lambda q, k, v: block_sparse_attention(q, k, v, mask).sum(),
                                argnums=(0, 1, 2)))
    memory = gradient.lower(shape, shape, shape).compile().memory_analysis()
    # measured: temp 34 MiB + output 12 MiB
    assert memory.temp_size_in_bytes + memory.output_size_in_bytes < dense_scores_bytes / 16


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_over_batch_and_heads(axis_type):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")
    heads, kv_heads = 8, 4
    mask = BlockMask.from_mask_fn(lambda b, h, i, j: (j <= i) & (i - j < 8 * (h + 1) + b),
                                  64, 64, 16, batch=BATCH, heads=heads)
    (q, k, v), _ = inputs(7, 64, 64, kv_heads, jnp.float64, heads=heads)
    mesh = jax.make_mesh((2, 4), ("data", "heads"), axis_types=(axis_type,) * 2)
    sharding = NamedSharding(mesh, P("data", None, "heads", None))
    sharded = [jax.device_put(x, sharding) for x in (q, k, v)]
    forward = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, mask))
    gradient = jax.jit(jax.grad(lambda q, k, v: block_sparse_attention(q, k, v, mask).sum(),
                                argnums=(0, 1, 2)))
    out = forward(*sharded)
    assert out.sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_allclose(out, dense_reference(q, k, v, mask), atol=1e-12)
    np.testing.assert_allclose(out, forward(q, k, v), atol=1e-14)
    for grad, unsharded in zip(gradient(*sharded), gradient(q, k, v), strict=True):
        assert grad.sharding.is_equivalent_to(sharding, 4)
        np.testing.assert_allclose(grad, unsharded, atol=1e-13)
    if axis_type == AxisType.Auto:  # GSPMD keeps the batched gathers local: no communication
        text = forward.lower(*sharded).compile().as_text()
        assert not any(op in text for op in ("all-gather", "all-to-all", "collective-permute"))
    # A stochastic-rounding policy: its key is replicated to every shard.
    policy = dp2ejax.PrecisionPolicy.uniform("bf16", mode="stochastic")
    rounded = jax.jit(lambda q, k, v, key: block_sparse_attention(
        q, k, v, mask, policy=policy, rounding_key=key))(*sharded, jax.random.key(1))
    assert rounded.sharding.is_equivalent_to(sharding, 4)
    assert 1e-4 < relative_error(rounded, out) < 5e-2


def test_errors(masks):
    mask, _ = masks["causal"]  # q_len = kv_len = 64
    q = jnp.zeros((2, 64, 4, 16))
    kv = jnp.zeros((2, 64, 2, 16))
    call = block_sparse_attention
    with pytest.raises(ValueError, match="q must have shape"):
        call(q[0], kv, kv, mask)
    with pytest.raises(ValueError, match="k must have shape"):
        call(q, kv[0], kv, mask)
    with pytest.raises(ValueError, match="head_dim"):
        call(q, kv[..., :8], kv[..., :8], mask)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        call(q, kv, kv[..., :1, :], mask)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        call(q, jnp.zeros((2, 64, 3, 16)), jnp.zeros((2, 64, 3, 16)), mask)
    with pytest.raises(ValueError, match="q_len=64, kv_len=64 but the sequences have q_len=32"):
        call(q[:, :32], kv, kv, mask)
    with pytest.raises(ValueError, match="kv_len=32"):
        call(q, kv[:, :32], kv[:, :32], mask)
    per_head = BlockMask.from_mask_fn(lambda b, h, i, j: j <= i, 64, 64, 16, heads=3)
    with pytest.raises(ValueError, match="mask batch/heads"):
        call(q, kv, kv, per_head)
    per_batch = BlockMask.from_mask_fn(lambda b, h, i, j: j <= i, 64, 64, 16, batch=3)
    with pytest.raises(ValueError, match="mask batch/heads"):
        call(q, kv, kv, per_batch)
    with pytest.raises(ValueError, match="unknown implementation 'cuda'"):
        call(q, kv, kv, mask, implementation="cuda")
    with pytest.raises(ValueError, match="q must be a floating-point"):
        call(q.astype(jnp.int32), kv, kv, mask)
    with pytest.raises(ValueError, match="same dtype"):
        call(q, kv.astype(jnp.float16), kv.astype(jnp.float16), mask)
    with pytest.raises(ValueError, match="mask must be a BlockMask"):
        call(q, kv, kv, np.ones((64, 64), bool))
