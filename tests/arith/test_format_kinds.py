"""Posit, integer and block-scaled formats plug into round_to, policies, emulate and CESTAC like
the IEEE-style ones. The kernels themselves are pinned down in test_posit.py, test_integer.py
and test_blockscaled.py; here: the wiring, against independent NumPy/ml_dtypes references."""

from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dp2ejax import cestac
from dp2ejax.arith import NATIVE, PrecisionPolicy, Rule, emulate, get_format, round_to
from dp2ejax.arith.blockscaled import round_block_scaled
from dp2ejax.arith.integer import round_int
from dp2ejax.arith.posit import round_posit


def mx_reference(x, element_dtype, emax, axis, block=32):
    """OCP MX v1.0 fake quantisation in NumPy float64 (blocks along ``axis``): E8M0 scale
    2**(floor(log2 amax) - emax), elements saturated and cast by ml_dtypes (nearest-even)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    n = x.shape[-1]
    pad = -n % block
    blocks = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], -1, block)
    amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    _, exponent = np.frexp(amax)  # amax = m * 2**exponent, m in [0.5, 1): floor(log2) = e - 1
    scale = np.ldexp(1.0, np.maximum(exponent - 1 - emax, -127))
    top = float(ml_dtypes.finfo(element_dtype).max)
    elements = np.clip(blocks / scale, -top, top).astype(element_dtype).astype(np.float64)
    out = (elements * scale).reshape(*x.shape[:-1], -1)[..., :n]
    return np.moveaxis(out, -1, axis)


def test_round_to_dispatches_every_kind():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)) * 10.0)
    np.testing.assert_array_equal(round_to(x, "posit16"), round_posit(x, get_format("posit16")))
    np.testing.assert_array_equal(round_to(x, "mxfp4"),
                                  round_block_scaled(x, get_format("mxfp4")))
    np.testing.assert_array_equal(round_to(x, "mxfp4", axis=0),
                                  round_block_scaled(x, get_format("mxfp4"), axis=0))
    np.testing.assert_array_equal(round_to(x, "int8_channel"),
                                  round_int(x, get_format("int8_channel")))
    np.testing.assert_array_equal(
        round_to(x, "mxfp8_e4m3"), mx_reference(x, ml_dtypes.float8_e4m3fn, 8, -1))
    np.testing.assert_array_equal(
        round_to(x, "mxfp4", axis=0), mx_reference(x, ml_dtypes.float4_e2m1fn, 2, 0, ))


@pytest.mark.parametrize("fmt", ["posit8", "mxfp4", "nvfp4", "int4_block16", "mxint8"])
def test_straight_through_gradient(fmt):
    x = jnp.linspace(-3.0, 3.0, 64)
    grad = jax.grad(lambda v: jnp.sum(round_to(v, fmt) * jnp.arange(64.0)))(x)
    np.testing.assert_array_equal(grad, jnp.arange(64.0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="wider dtype than bfloat16"):
        round_to(jnp.ones(32, jnp.bfloat16), "mxfp4")
    with pytest.raises(ValueError, match="axis applies to block-scaled and integer"):
        round_to(jnp.ones(32), "fp16", axis=0)
    with pytest.raises(ValueError, match="axis must be an int in"):
        round_to(jnp.ones((2, 32)), "mxfp4", axis=2)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        round_to(jnp.ones(32), "posit16", "stochastic")


def test_policy_round_trips_every_kind():
    policy = PrecisionPolicy(default="posit16_es1", rules=[
        Rule("mxfp4", kinds=("matmul_rhs",)),
        Rule("int4_channel", path="Dense_1", kinds=("matmul_lhs",)),
        Rule(get_format({"kind": "block_scaled", "name": "mx6", "element": "fp6_e2m3",
                         "block_size": 16}), kinds=("elementwise",)),
    ])
    assert PrecisionPolicy.from_json(policy.to_json()) == policy
    assert policy.resolve("Dense_0", "matmul_lhs").format.name == "posit16_es1"
    assert policy.resolve("Dense_0", "matmul_rhs").format.name == "mxfp4"
    assert policy.resolve("Dense_1", "matmul_lhs").format.name == "int4_channel"
    # a matmul_inputs rule covers both operands
    both = PrecisionPolicy(default="fp32", rules=[Rule("int8", kinds=("matmul_inputs",))])
    assert both.resolve("x", "matmul_lhs").format.name == "int8"
    assert both.resolve("x", "matmul_rhs").format.name == "int8"


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(48)(x))
        return nn.Dense(8)(x)


def test_emulate_mlp_with_mxfp4_weights_and_mxfp8_activations():
    """Every Dense computes x @ W with x in MXFP8 (E4M3) blocked along its last axis (the
    contraction) and W in MXFP4 blocked along its first axis (the contraction), the rest in
    float64: equal to NumPy doing the same, up to the order of the float64 sums (1e-12)."""
    model = MLP()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 64)))
    variables = model.init(jax.random.key(0), x)
    policy = PrecisionPolicy(default=Rule(NATIVE), rules=[
        Rule("mxfp4", kinds=("matmul_rhs",)),
        Rule("mxfp8_e4m3", kinds=("matmul_lhs",)),
    ])
    out = jax.jit(emulate(model.apply, policy))(variables, x)

    h = np.asarray(x)
    for i, layer in enumerate(("Dense_0", "Dense_1")):
        params = variables["params"][layer]
        w = mx_reference(params["kernel"], ml_dtypes.float4_e2m1fn, 2, 0)
        a = mx_reference(h, ml_dtypes.float8_e4m3fn, 8, -1)
        h = a @ w + np.asarray(params["bias"])
        if i == 0:
            h = np.maximum(h, 0.0)
    np.testing.assert_allclose(out, h, rtol=1e-12, atol=1e-12)
    plain = model.apply(variables, x)
    assert np.max(np.abs(np.asarray(plain) - h)) > 1e-3  # the formats did change the result


def test_emulate_int8_matmul_is_exact_integer_arithmetic():
    """int8 operands with per-tensor scales: the codes are dotted exactly (here in Python
    integers), then scaled once; emulate agrees to the last two ulps of the rescale."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 40)), rng.standard_normal((40, 3))
    policy = PrecisionPolicy(default=Rule(NATIVE), rules=[Rule("int8", kinds=("matmul_inputs",))])
    out = np.asarray(emulate(lambda p, q: p @ q, policy)(jnp.asarray(a), jnp.asarray(b)))
    sa, sb = np.max(np.abs(a)) / 127, np.max(np.abs(b)) / 127
    qa, qb = np.round(a / sa).astype(np.int64), np.round(b / sb).astype(np.int64)
    exact = np.array([[sum(int(u) * int(v) for u, v in zip(row, col, strict=True))
                       for col in qb.T] for row in qa], dtype=np.float64)
    np.testing.assert_allclose(out, exact * sa * sb, rtol=5e-16, atol=0)


def test_int_matmul_refuses_blocked_accumulation():
    policy = PrecisionPolicy(default=Rule(NATIVE), rules=[
        Rule("int8", kinds=("matmul_inputs",)),
        Rule("fp16", kinds=("matmul_accumulation",), accumulation="blocked(8)"),
    ])
    with pytest.raises(ValueError, match="accumulate exactly in int32"):
        emulate(lambda p, q: p @ q, policy)(jnp.ones((2, 16)), jnp.ones((16, 2)))


def test_cestac_on_posits_and_mx():
    """A sum of well-scaled positive terms keeps nearly all of the format's digits; an exact
    cancellation in posit16 keeps none. Digits are capped at the format's precision."""
    terms = jnp.linspace(1.0, 2.0, 16)
    for fmt in ("posit16", "mxfp8_e4m3"):
        result = cestac.analyze(jnp.sum, terms, fmt=fmt, samples=4, key=jax.random.key(0))
        precision = get_format(fmt).precision
        assert result.max_digits == pytest.approx(precision * np.log10(2), abs=0.1)
        assert float(result.digits) >= result.max_digits - 2.0, (fmt, result.digits)
    cancel = cestac.analyze(lambda v: (v + 1e-3) - v, jnp.float64(1000.0), fmt="posit16",
                            samples=4, key=jax.random.key(1))
    assert bool(cancel.computational_zero)


@pytest.mark.parametrize("fmt", ["bf16", "fp64", "posit16"])
def test_quire_accumulation_rounds_the_exact_dot_product_once(fmt):
    """Products of bf16 values spanning 2**±30, summed with cancellation: the quire's result is
    the exact sum (Python rationals) rounded once to the format, in every element; the plain
    float64 dot product misses some of them in fp64."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 50)) * np.exp2(rng.integers(-30, 30, (3, 50)))
    b = rng.standard_normal((50, 4)) * np.exp2(rng.integers(-30, 30, (50, 4)))
    a, b = (np.asarray(round_to(jnp.asarray(v), "bf16")) for v in (a, b))
    policy = PrecisionPolicy(default=Rule(NATIVE), rules=[
        Rule(fmt, kinds=("matmul_accumulation",), accumulation="quire")])
    out = np.asarray(jax.jit(emulate(lambda p, q: p @ q, policy))(jnp.asarray(a), jnp.asarray(b)))
    sums = [[sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(row, col, strict=True))
             for col in b.T] for row in a]
    exact = np.array([[float(v) for v in row] for row in sums])  # correctly rounded float64
    if fmt == "fp64":
        np.testing.assert_array_equal(out, exact)
        assert np.any(a @ b != exact)
        return
    # The exact sum rounded to odd in float64 (truncated, last bit set if inexact) rounds to
    # nearest in any format of <= 51 bits as the exact sum does (Boldo and Melquiond 2008).
    odd = np.array([[_round_to_odd(v) for v in row] for row in sums])
    np.testing.assert_array_equal(out, round_to(jnp.asarray(odd), fmt))


def _round_to_odd(value: Fraction) -> float:
    nearest = float(value)
    if Fraction(nearest) == value:
        return nearest
    if abs(Fraction(nearest)) > abs(value):
        nearest = float(np.nextafter(nearest, 0.0))
    return float((np.array(nearest).view(np.uint64) | np.uint64(1)).view(np.float64))


def test_quire_parses_and_refuses_other_products():
    from dp2ejax.arith import Accumulation

    assert str(Accumulation.parse("quire")) == "quire" and Accumulation.parse("quire").quire
    with pytest.raises(ValueError, match="both a quire and blocked"):
        Accumulation(4, quire=True)
    policy = PrecisionPolicy(default=Rule("posit16", accumulation="quire"))
    assert PrecisionPolicy.from_json(policy.to_json()) == policy
