"""Faithfulness of ``emulate`` to the program it runs: custom derivative rules, PRNG internals
and bit manipulation, constants, the primitive table, shard_map, static arguments, name stacks,
unmatched rules, the emulation trace, scan iterations, NNX and equinox paths.

References: JAX itself (``jax.grad`` of the plain function, the plain PRNG), ``ml_dtypes`` casts,
and the same model computed layer by layer.
"""

import warnings

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import PartitionSpec as P

from dp2ejax.arith import PrecisionPolicy, Rule, emulate
from dp2ejax.arith.emulate import UnmatchedRuleWarning, module_path
from dp2ejax.arith.primitives import RULE_KINDS, rule_kind
from dp2ejax.arith.trace import NonFiniteWarning

F32 = jnp.float32


# --- custom derivative rules ----------------------------------------------------------------------


@jax.custom_jvp
def safe_log(x):
    return jnp.log(x)


safe_log.defjvp(lambda p, t: (safe_log(p[0]), t[0] / jnp.maximum(p[0], 1.0)))


@jax.custom_vjp
def doubled_grad_sin(x):
    return jnp.sin(x)


doubled_grad_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2.0 * g,))


def test_relu_rule_survives():
    """JAX's relu has a custom_jvp with derivative 0 at 0; differentiating max(x, 0) would
    give 0.5."""
    for policy in ("fp32", "bf16"):
        assert float(jax.grad(emulate(jax.nn.relu, policy))(F32(0.0))) == 0.0
        assert float(jax.grad(emulate(jax.nn.relu, policy))(F32(2.0))) == 1.0


def test_user_custom_jvp_and_vjp_rules_are_used():
    x = jnp.array([0.25, 3.0], F32)
    for policy in ("fp32", "bf16"):
        grad = jax.grad(lambda v, p=policy: jnp.sum(emulate(safe_log, p)(v)))(x)
        np.testing.assert_array_equal(grad, np.float32([1.0, 1.0 / 3.0]))  # 1/max(x, 1)
        grad = jax.grad(lambda v, p=policy: jnp.sum(emulate(doubled_grad_sin, p)(v)))(x)
        np.testing.assert_array_equal(grad, [2.0, 2.0])
    # the forward pass is still emulated under the rule
    np.testing.assert_array_equal(
        emulate(safe_log, "bf16")(x),
        np.log(np.asarray(x, np.float32)).astype(ml_dtypes.bfloat16).astype(np.float32))


def test_emulate_of_grad_rounds_the_rule():
    """emulate(jax.grad(f)): the rule's own operations (1 / max(x, 1)) are in the program and
    rounded: 1/3 in bf16."""
    got = emulate(jax.grad(lambda v: safe_log(v)), "bf16")(F32(3.0))
    assert float(got) == float(np.float32(1 / 3).astype(ml_dtypes.bfloat16))


def test_remat_and_jit_keep_working_under_grad():
    f = jax.checkpoint(lambda x: jnp.sin(x) * x)
    x = jnp.linspace(0.1, 1.0, 5, dtype=F32)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(emulate(f, "fp32")(v)))(x),
                               jax.grad(lambda v: jnp.sum(f(v)))(x), rtol=1e-6)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: jnp.sum(emulate(f, "bf16")(v))))(x)
    assert any(rule_kind(e.primitive) == "remat" for e in jaxpr.jaxpr.eqns)


# --- bits, PRNG -----------------------------------------------------------------------------------


def test_prng_internals_run_at_carrier_precision():
    key = jax.random.key(0)
    normal = emulate(lambda k: jax.random.normal(k, (20000,)), "bf16")(key)
    np.testing.assert_array_equal(normal, jax.random.normal(key, (20000,)))
    assert bool(jnp.all(jnp.isfinite(normal)))
    mask = emulate(lambda k: jax.random.bernoulli(k, 0.9, (20000,)), "bf16")(key)
    np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.9, (20000,)))


def test_flax_dropout_keeps_its_rate():
    drop = nn.Dropout(0.1, deterministic=False)
    x = jnp.ones((40000,), F32)
    rngs = {"dropout": jax.random.key(1)}
    out = emulate(lambda x: drop.apply({}, x, rngs=rngs), "bf16")(x)
    kept = float(jnp.mean(out != 0))
    assert kept == float(jnp.mean(drop.apply({}, x, rngs=rngs) != 0))
    assert abs(kept - 0.9) < 0.006  # 4 sigma of a binomial of 40000


def test_bitcast_is_not_rounded():
    def f(x):
        bits = lax.bitcast_convert_type(x, jnp.uint32) | jnp.uint32(1)
        return lax.bitcast_convert_type(bits, F32)

    x = jnp.array([1.0, 3.14159, -2.5e-3], F32)
    np.testing.assert_array_equal(emulate(f, "bf16")(x), f(x))
    assert rule_kind(lax.bitcast_convert_type_p) == "bits"


# --- constants ------------------------------------------------------------------------------------


def masked_attention_logits():
    x = jax.random.normal(jax.random.key(0), (2, 4, 8), F32)
    pad = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0]])  # the second sequence is all padding
    mask = nn.combine_masks(nn.make_attention_mask(pad, pad), nn.make_causal_mask(pad))
    layer = nn.SelfAttention(num_heads=2, qkv_features=8)
    params = layer.init(jax.random.key(1), x, mask=mask)
    return layer, params, x, mask


MX_INPUTS = PrecisionPolicy("bf16", [Rule("mxfp8_e4m3", kinds=("matmul_inputs",))])


@pytest.mark.parametrize("policy", ["bf16", pytest.param("fp16", marks=pytest.mark.slow),
                                    "fp8_e4m3", pytest.param("fp8_e5m2", marks=pytest.mark.slow),
                                    pytest.param(MX_INPUTS, marks=pytest.mark.slow)],
                         ids=["bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "mx_inputs"])
def test_masked_flax_attention_stays_finite(policy):
    """Flax fills masked scores with finfo(float32).min; fully padded rows must not become
    -inf - -inf = NaN (nor NaN in e4m3, which has no infinity), and softmax's -inf identity
    must not make MX blocks NaN."""
    layer, params, x, mask = masked_attention_logits()
    out = jax.jit(emulate(lambda p, x: layer.apply(p, x, mask=mask), policy))(params, x)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_softmax_under_fp8_elementwise_is_not_nan():
    x = jnp.array([[1.0, 2.0, -3.0, 0.5]], F32)
    policy = PrecisionPolicy("fp32", [Rule("fp8_e4m3", kinds=("elementwise", "reduction"))])
    out = emulate(jax.nn.softmax, policy)(x)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(jnp.sum(out), 1.0, atol=0.1)


def test_constants_saturate_and_the_trace_says_so():
    x = jnp.array([1.0, 2.0], F32)
    f = lambda x: jnp.where(x > 1.5, x, jnp.finfo(F32).min) - 1.0  # noqa: E731
    out, trace = emulate(f, "bf16", trace=True)(x)
    big = float(jnp.finfo(jnp.bfloat16).min)
    np.testing.assert_array_equal(out, [big, 1.0])  # big - 1 rounds back to big
    assert trace.totals()["saturated"] == 1 and trace.totals()["overflow"] == 0
    # a computed value overflows as the format says
    out = emulate(lambda x: x * 1e38, "bf16")(jnp.array([10.0], F32))
    assert bool(jnp.isinf(out[0]))


# --- the primitive table --------------------------------------------------------------------------


def test_unknown_primitive_is_an_error_naming_it():
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    prim = Primitive("my_mystery_op")
    prim.def_impl(lambda x: x * 2)
    prim.def_abstract_eval(lambda x: x)
    mlir.register_lowering(prim, mlir.lower_fun(lambda x: x * 2, multiple_results=False))
    with pytest.raises(NotImplementedError, match="my_mystery_op"):
        emulate(lambda x: prim.bind(x), "bf16")(jnp.ones(3))


def test_every_table_entry_names_a_known_kind():
    assert rule_kind(lax.add_p) == "arithmetic"
    assert rule_kind(lax.scan_p) == "scan"
    assert set(RULE_KINDS) >= {"arithmetic", "data_movement", "bits", "call", "custom_jvp",
                               "custom_vjp", "scan", "while", "cond", "shard_map"}


def test_shard_map_is_emulated():
    mesh = jax.make_mesh((2,), ("x",))

    def f(a):
        return lax.psum(jnp.sin(a) * 1.001, "x")

    mapped = jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P())
    x = jax.device_put(jnp.linspace(0.0, 1.0, 8, dtype=F32),
                       jax.sharding.NamedSharding(mesh, P("x")))
    got = jax.jit(emulate(mapped, "fp32"))(x)
    np.testing.assert_allclose(got, mapped(x), rtol=1e-6)
    assert not np.array_equal(jax.jit(emulate(mapped, "bf16"))(x), mapped(x))


# --- arguments, name stacks -----------------------------------------------------------------------


def test_python_int_argument_stays_static():
    f = lambda x, n: x.reshape(n, -1).sum(axis=1)  # noqa: E731
    x = jnp.arange(6.0, dtype=F32)
    np.testing.assert_array_equal(emulate(f, "bf16")(x, 2), f(x, 2))


def test_name_stacks_survive_a_second_pass():
    model = nn.Sequential([nn.Dense(4), nn.Dense(2)])
    x = jnp.ones((1, 3), F32)
    params = model.init(jax.random.key(0), x)
    emulated = emulate(model.apply, "fp32")
    paths = {module_path(e) for e in jax.make_jaxpr(emulated)(params, x).jaxpr.eqns}
    assert any(p.endswith("layers_1") for p in paths), paths
    # a rule of an outer emulate applies to the paths of the inner one's operations
    policy = PrecisionPolicy("fp32", [Rule("bf16", path="layers_1")])
    twice = jax.jit(emulate(emulated, policy, strict=True))(params, x)
    np.testing.assert_array_equal(twice, jax.jit(emulate(model.apply, policy))(params, x))


def test_unmatched_rule_warns_once_or_raises():
    model = nn.Dense(2)
    x = jnp.ones((1, 3), F32)
    params = model.init(jax.random.key(0), x)
    policy = PrecisionPolicy("fp32", [Rule("bf16", path="dense_0")])
    emulated = emulate(model.apply, policy)
    with pytest.warns(UnmatchedRuleWarning, match="dense_0"):
        emulated(params, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulated(params, x)  # once
    with pytest.raises(ValueError, match="dense_0"):
        emulate(model.apply, policy, strict=True)(params, x)


# --- the emulation trace --------------------------------------------------------------------------


def test_trace_counts_and_first_nonfinite():
    def f(x):
        small = x * 1e-6  # underflows in fp16 for x ~ 1e-3
        big = jnp.exp(x * 20.0)  # overflows for x = 1
        return small, big - big  # inf - inf: NaN from non-NaN operands

    x = jnp.array([1e-3, 1.0], F32)
    with pytest.warns(NonFiniteWarning, match=r"exp at .*test_faithful.py"):
        _, trace = emulate(f, "fp16", trace=True)(x)
    totals = trace.totals()
    assert totals["underflow"] == 1 and totals["overflow"] == 1 and totals["nan"] == 1
    assert trace.first_nonfinite().primitive == "exp"
    data = trace.to_dict()
    assert {r["kind"] for r in data["rules"]} == {"elementwise"}
    assert "first non-finite" in trace.summary()
    # jit-compatible: the trace is a pytree
    _, jitted = jax.jit(emulate(f, "fp16", trace=True))(x)
    np.testing.assert_array_equal(jitted.counts, trace.counts)


# --- scan iterations, NNX and equinox paths -------------------------------------------------------


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(4)(x)), None


class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                          length=3)
        return scanned(name="layers")(x, None)[0]


def test_each_scan_iteration_has_its_own_path():
    model = Stack()
    x = jax.random.normal(jax.random.key(0), (2, 4), F32)
    params = model.init(jax.random.key(1), x)
    policy = PrecisionPolicy("fp32", [Rule("bf16", path="layers/2")])
    out, trace = jax.jit(emulate(model.apply, policy, strict=True, trace=True))(params, x)
    # reference: the first two blocks in fp32, the third emulated alone in bf16
    block = Block()
    layer = lambda i: {"params": jax.tree_util.tree_map(  # noqa: E731
        lambda a: a[i], params["params"]["layers"])}
    h = x
    for i in range(2):
        h = jax.jit(emulate(block.apply, "fp32"))(layer(i), h, None)[0]
    expected = jax.jit(emulate(block.apply, "bf16"))(layer(2), h, None)[0]
    np.testing.assert_array_equal(out, expected)
    paths = {(row[0], row[2]) for row in trace.rule_counts}
    assert ("Stack/layers/2/Dense_0", "bf16") in paths
    assert ("Stack/layers/0-1/Dense_0", "fp32") in paths
    # a rule that does not tell iterations apart leaves the scan one loop
    jaxpr = jax.make_jaxpr(emulate(model.apply, PrecisionPolicy(
        "fp32", [Rule("bf16", path="Dense_0")])))(params, x)
    assert sum(e.primitive.name == "scan" for e in jaxpr.jaxpr.eqns) == 1


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([NNXBlock(rngs), NNXBlock(rngs)])
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def test_nnx_attribute_paths():
    model = NNXNet(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 4), F32)
    policy = PrecisionPolicy("fp32", [Rule("bf16", path="layers/0")])
    out, trace = jax.jit(emulate(model, policy, strict=True, trace=True))(x)
    expected = model.out(model.layers[1](jax.jit(emulate(model.layers[0], "bf16"))(x)))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert not np.allclose(out, model(x), rtol=1e-5)
    paths = {row[0] for row in trace.rule_counts}
    assert {"layers/0/linear", "layers/1/linear", "out"} <= paths, paths


def test_equinox_attribute_paths():
    mlp = eqx.nn.MLP(4, 2, 8, 2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(3), (4,), F32)
    policy = PrecisionPolicy("fp32", [Rule("bf16", path="layers/1")])
    out = jax.jit(lambda v: emulate(lambda m, v: m(v), policy, strict=True)(mlp, v))(x)
    h = mlp.activation(mlp.layers[0](x))
    h = mlp.activation(jax.jit(emulate(mlp.layers[1], "bf16"))(h))
    np.testing.assert_allclose(out, mlp.layers[2](h), rtol=1e-6)
    assert not np.allclose(out, mlp(x), rtol=1e-5)
