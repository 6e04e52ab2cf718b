"""BlockSparseAttention and BlockSparseTransformerBlock: shapes, a float64 dense reference,
grouped-query parameters, training, gradients and emulation.

The reference recomputes the layer by hand in NumPy float64 from the layer's own parameters:
the four projections, then a dense softmax over the element mask ``mask.to_dense()``. In float64
the block-sparse kernel differs from it only by summation order (online softmax over blocks,
blocked matmuls): relative errors of a few ulps of float64 (~1e-16) times the reduction lengths,
so 1e-10 leaves a wide margin while any masking error (a dropped or extra key changes outputs
at order 1e-2) is caught.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dp2ejax
from dp2ejax import PrecisionPolicy, Rule
from dp2ejax.attention.layers import BlockSparseAttention, BlockSparseTransformerBlock
from dp2ejax.attention.mask import BlockMask
from dp2ejax.attention.patterns import causal, local

SEQ, BLOCK, WIDTH = 32, 8, 16


@pytest.fixture(scope="module")
def masks():
    """A causal mask, a causal sliding window (partial blocks at both ends of each row) and a
    per-head mask (head 1 drops a different set of blocks)."""
    rng = np.random.default_rng(0)
    per_head = rng.random((2, SEQ, SEQ)) < 0.4
    per_head |= np.eye(SEQ, dtype=bool)  # no empty rows
    return {
        "causal": causal(SEQ, block_size=BLOCK),
        "local": local(SEQ, 11, block_size=BLOCK, causal=True),
        "per_head": BlockMask.from_dense(per_head, block_size=BLOCK),
    }


def reference(params, x, context, mask, num_heads, num_kv_heads):
    """The layer in NumPy float64 with a dense masked softmax (see the module docstring)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)

    def project(name, inputs):
        return np.einsum("bsf,fhd->bshd", inputs, p[name]["kernel"]) + p[name]["bias"]

    q, k, v = project("query", x), project("key", context), project("value", context)
    group = num_heads // num_kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    keep = np.broadcast_to(mask.to_dense(), scores.shape)
    scores = np.where(keep, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", probs, v)
    return np.einsum("bthd,hdf->btf", out, p["out"]["kernel"]) + p["out"]["bias"]


def random_x(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("name, num_kv_heads", [("causal", 2), ("local", 1), ("per_head", 1)])
def test_attention_matches_dense_float64_reference(masks, name, num_kv_heads):
    layer = BlockSparseAttention(num_heads=2, head_dim=8, num_kv_heads=num_kv_heads,
                                 mask=masks[name], param_dtype=jnp.float64)
    x = random_x(1, (3, SEQ, WIDTH))
    params = jax.jit(layer.init)(jax.random.key(2), x)
    # non-zero biases, so that they are checked too
    params = jax.tree.map(lambda a: a + 0.1 * random_x(3, a.shape), params)
    out = jax.jit(layer.apply)(params, x)
    assert out.shape == x.shape and out.dtype == jnp.float64
    expected = reference(params, x, x, masks[name], 2, num_kv_heads)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-10)


def test_cross_attention_matches_reference():
    mask = BlockMask.from_dense(np.tril(np.ones((SEQ, 2 * SEQ), bool), k=SEQ), block_size=BLOCK)
    layer = BlockSparseAttention(num_heads=4, head_dim=4, num_kv_heads=2, mask=mask,
                                 out_features=5, param_dtype=jnp.float64)
    x, context = random_x(4, (2, SEQ, WIDTH)), random_x(5, (2, 2 * SEQ, 6))
    params = jax.jit(layer.init)(jax.random.key(6), x, context)
    out = jax.jit(layer.apply)(params, x, context)
    assert out.shape == (2, SEQ, 5)
    np.testing.assert_allclose(np.asarray(out), reference(params, x, context, mask, 4, 2),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_kv_heads", [None, 4, 2, 1])
def test_parameter_shapes_grouped_query(masks, num_kv_heads):
    layer = BlockSparseAttention(num_heads=4, head_dim=8, num_kv_heads=num_kv_heads,
                                 mask=masks["causal"])
    x = jnp.ones((1, SEQ, WIDTH), jnp.float32)
    params = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    kv = 4 if num_kv_heads is None else num_kv_heads
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {
        "query": {"kernel": (WIDTH, 4, 8), "bias": (4, 8)},
        "key": {"kernel": (WIDTH, kv, 8), "bias": (kv, 8)},
        "value": {"kernel": (WIDTH, kv, 8), "bias": (kv, 8)},
        "out": {"kernel": (4, 8, WIDTH), "bias": (WIDTH,)},
    }
    assert jax.tree.map(lambda a: a.dtype, params)["query"]["kernel"] == jnp.float32
    assert jax.eval_shape(layer.apply, {"params": params}, x).dtype == jnp.float32


def test_block_shapes_and_parameters(masks):
    block = BlockSparseTransformerBlock(width=WIDTH, num_heads=4, num_kv_heads=2, mlp_ratio=2,
                                        mask=masks["local"], use_bias=False)
    x = jnp.ones((2, SEQ, WIDTH), jnp.float32)
    params = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
    assert set(params) == {"attention_norm", "attention", "mlp_norm", "mlp_in", "mlp_out"}
    assert params["attention"]["key"]["kernel"].shape == (WIDTH, 2, 4)
    assert params["mlp_in"]["kernel"].shape == (WIDTH, 2 * WIDTH)
    assert "bias" not in params["mlp_in"] and "bias" not in params["attention"]["query"]
    assert jax.eval_shape(block.apply, {"params": params}, x).shape == x.shape


def test_block_matches_reference(masks):
    """The block's attention sublayer is the reference; the rest is standard Flax."""
    mask = masks["per_head"]
    block = BlockSparseTransformerBlock(width=WIDTH, num_heads=2, mask=mask,
                                        param_dtype=jnp.float64)
    x = random_x(7, (2, SEQ, WIDTH))
    params = jax.jit(block.init)(jax.random.key(8), x)
    p = jax.tree.map(np.asarray, params["params"])

    def norm(h, q):
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
        return h * q["scale"] + q["bias"]

    def gelu(h):  # tanh approximation, Flax's default
        return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))

    x = np.asarray(x)
    h = norm(x, p["attention_norm"])
    x1 = x + reference({"params": p["attention"]}, h, h, mask, 2, 2)
    h = gelu(norm(x1, p["mlp_norm"]) @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
    expected = x1 + h @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]
    np.testing.assert_allclose(np.asarray(jax.jit(block.apply)(params, x)), expected,
                               rtol=0, atol=1e-10)


class TinyModel(nn.Module):
    """Embedding, a block-sparse transformer block, a linear read-out."""

    mask: BlockMask

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(WIDTH, name="embed")(x)
        h = BlockSparseTransformerBlock(width=WIDTH, num_heads=2, num_kv_heads=1, mlp_ratio=2,
                                        mask=self.mask, name="block")(h)
        return nn.Dense(1, name="readout")(h)[..., 0]


def test_training_decreases_loss_and_grads_reach_every_parameter(masks):
    """A causal running-mean task (target: mean of the first input feature over the tokens
    seen so far) learnt with Adam; every parameter gets a non-zero gradient."""
    model = TinyModel(masks["causal"])
    x = random_x(9, (4, SEQ, 3), jnp.float32)
    target = jnp.cumsum(x[..., 0], axis=1) / jnp.arange(1, SEQ + 1)
    params = jax.jit(model.init)(jax.random.key(10), x)

    def loss_fn(params):
        return jnp.mean((model.apply(params, x) - target) ** 2)

    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = optimizer.init(params)
    losses = []
    for i in range(40):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
        if i == 0:
            flat = jax.tree_util.tree_flatten_with_path(grads)[0]
            assert len(flat) == 2 * 2 + 2 * 2 + 4 * 2 + 2 * 2  # embed/readout, block
            for path, g in flat:
                assert jnp.all(jnp.isfinite(g)), jax.tree_util.keystr(path)
                assert jnp.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_grad_matches_finite_differences(masks):
    layer = BlockSparseAttention(num_heads=2, head_dim=4, mask=masks["local"],
                                 param_dtype=jnp.float64)
    x = random_x(11, (2, SEQ, 8))
    params = jax.jit(layer.init)(jax.random.key(12), x)

    @jax.jit
    def loss(params, x):
        return jnp.sum(layer.apply(params, x) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    # against central differences along a random direction, in float64
    direction = jax.tree.map(lambda a: random_x(13, a.shape), (params, x))
    eps = 1e-6
    shifted = [loss(*jax.tree.map(lambda a, d, s=s: a + s * eps * d, (params, x), direction))
               for s in (1, -1)]
    numeric = (shifted[0] - shifted[1]) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                   jax.tree.leaves(direction), strict=True))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_emulated_policies(masks):
    layer = BlockSparseAttention(num_heads=2, head_dim=8, mask=masks["causal"])
    x = random_x(13, (2, SEQ, WIDTH), jnp.float32)
    params = jax.jit(layer.init)(jax.random.key(14), x)
    plain = jax.jit(layer.apply)(params, x)
    bf16 = jax.jit(dp2ejax.emulate(layer.apply, "bf16"))(params, x)
    assert bf16.shape == plain.shape and bf16.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(bf16))
    error = float(jnp.max(jnp.abs(bf16 - plain)) / jnp.max(jnp.abs(plain)))
    assert 0 < error < 0.1  # rounded (bf16 eps 2**-8) but close
    # per-layer: a rule naming the "query" submodule rounds only that projection, so the
    # deviation is non-zero but smaller than with everything rounded
    only_query = PrecisionPolicy(default="native", rules=[Rule("bf16", path="query")])
    q_only = jax.jit(dp2ejax.emulate(layer.apply, only_query))(params, x)
    assert 0 < float(jnp.max(jnp.abs(q_only - plain))) < error * float(jnp.max(jnp.abs(plain)))
    # the layer's own policy field reaches the kernel (traced only: the kernel's tests check it)
    inner = layer.clone(policy="bf16")
    assert jax.eval_shape(inner.apply, params, x).shape == plain.shape


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_heads=3, num_kv_heads=2), "must divide"),
    (dict(num_heads=2, head_dim=0), "head_dim"),
])
def test_errors_name_the_cause(masks, kwargs, message):
    layer = BlockSparseAttention(**{"head_dim": 4, "mask": masks["causal"], **kwargs})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, SEQ, 8)))


def test_errors_on_length_and_width_mismatch(masks):
    layer = BlockSparseAttention(num_heads=2, head_dim=4, mask=masks["causal"])
    with pytest.raises(ValueError, match="q_len=16"):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 16, 8)))
    block = BlockSparseTransformerBlock(width=WIDTH, num_heads=2, mask=masks["causal"])
    with pytest.raises(ValueError, match="width=16"):
        jax.eval_shape(block.init, jax.random.key(0), jnp.ones((1, SEQ, 8)))
    per_head = BlockSparseAttention(num_heads=4, head_dim=4, mask=masks["per_head"])
    with pytest.raises(ValueError, match="num_heads=4"):
        jax.eval_shape(per_head.init, jax.random.key(0), jnp.ones((1, SEQ, 8)))

