"""Tests for dp2ejax.arith.emulate: per-operation rounding of whole JAX functions.

References are independent of the interpreter: NumPy with ``ml_dtypes`` casts (float32 carrier,
round after every operation), or JAX code written by hand with :func:`round_to` after every
primitive of the function's jaxpr.

Most comparisons are bit for bit. Where the float32 value *before* a rounding depends on the
implementation (the summation order of a float32 matmul, XLA's float32 ``tanh``, which is up to
~4.3 float32 ulps from the true value), the reference computes the true value in float64 and
:func:`_round_unambiguous` asserts that every float32 within a stated error bound of it rounds to
the same target value. Then any correct implementation must give the reference's bits, and the
bit-for-bit comparison is honest rather than lucky: if a seed ever lands near a rounding
boundary, the guard fails and says so, instead of the comparison failing obscurely.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

from dp2ejax.arith import PrecisionPolicy, Rule, emulate, round_to

F32 = np.float32
BF16_POLICY = PrecisionPolicy.uniform("bf16")
FP32_POLICY = PrecisionPolicy.uniform("fp32")


def jemulate(fn, policy):
    """``jax.jit(emulate(fn, policy))``: compiling once is much faster than running the rounding
    kernels op by op (test_jit_equals_eager checks that both give the same bits)."""
    return jax.jit(emulate(fn, policy))


# --- NumPy reference helpers ----------------------------------------------------------------------


def _cast(dtype):
    """float32 -> ``dtype`` -> float32 with ml_dtypes/NumPy casts (round to nearest even)."""

    def cast(x):
        return np.asarray(x, F32).astype(dtype).astype(F32)

    return cast


to_bf16 = _cast(ml_dtypes.bfloat16)
to_fp16 = _cast(np.float16)
to_e4m3 = _cast(ml_dtypes.float8_e4m3fn)


def _round_unambiguous(exact, error_bound, cast):
    """``cast(float32(exact))``, after asserting that every float32 within ``error_bound`` of the
    float64 value ``exact`` rounds to the same value (rounding is monotone, so checking the two
    ends of the interval suffices)."""
    exact = np.asarray(exact, np.float64)
    low = cast((exact - error_bound).astype(F32))
    high = cast((exact + error_bound).astype(F32))
    ambiguous = np.flatnonzero(low != high)
    assert ambiguous.size == 0, (
        f"test data too close to a rounding boundary at flat indices {ambiguous}: the reference "
        f"cannot tell how an implementation rounds there; change the seed"
    )
    return cast(exact.astype(F32))


def _ref_dot(a, b, cast):
    """Matmul of float32 arrays whose values lie in a format of <= 11 significant bits (products
    exact in float32), summed in float32 by an unknown order, rounded once with ``cast``.

    The float64 sum is the true sum to within K 2**-53 sum|products|; any float32 summation
    order is within (K - 1) 2**-24 sum|products| of the true sum. K 2**-24 sum|products| bounds
    both.
    """
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bound = a64.shape[-1] * 2.0**-24 * (np.abs(a64) @ np.abs(b64))
    return _round_unambiguous(a64 @ b64, bound, cast)


def _ref_tanh(x, cast):
    """XLA's float32 tanh rounded with ``cast``. XLA's CPU tanh was measured within 4.3 float32
    ulps of the true value (410k samples); the bound allows 8."""
    exact = np.tanh(np.asarray(x, np.float64))
    bound = 8.0 * np.spacing(np.abs(exact).astype(F32)).astype(np.float64)
    return _round_unambiguous(exact, bound, cast)


def _bits(x):
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_bitwise_equal(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(
        _bits(actual), _bits(expected), err_msg=f"\nactual={actual}\nexpected={expected}"
    )


def assert_in_format(x, cast):
    x = np.asarray(x, F32)
    np.testing.assert_array_equal(cast(x), x, err_msg="values not representable in the format")


def _nice_bf16(rng, shape):
    """bf16 values with magnitudes in [0.5, 2) and random signs (float32). Products of two lie
    on a 2**-16 grid below 4 in magnitude, so sums of up to 64 of them (< 256) need at most 24
    significant bits: every float32 summation order is exact."""
    mag = rng.uniform(0.5, 2.0, shape)
    return to_bf16(np.where(rng.random(shape) < 0.5, -mag, mag))


def _normal(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(F32)


# --- 1. a Flax MLP under bf16 against NumPy + ml_dtypes -------------------------------------------


class MLP(nn.Module):
    """Dense -> gelu(tanh approximation) -> Dense -> tanh -> Dense, with random biases."""

    features: tuple[int, ...] = (8, 6, 3)

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, bias_init=nn.initializers.normal(0.5))
        x = dense(self.features[0])(x)
        x = nn.gelu(x, approximate=True)
        x = dense(self.features[1])(x)
        x = jnp.tanh(x)
        return dense(self.features[2])(x)


@pytest.fixture(scope="module")
def mlp():
    model = MLP()
    x = jnp.asarray(_normal(0, (6, 5)))
    params = model.init(jax.random.key(1), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    return model, params, x


# The gelu(approximate=True) primitive sequence the reference mirrors; if JAX changes how gelu is
# written, this list (not an obscure bit mismatch) says so.
_GELU_PRIMS = ["integer_pow", "mul", "add", "mul", "tanh", "add", "mul", "mul"]
_GELU_C1 = F32(0.044715)
_GELU_C2 = F32(np.sqrt(2 / np.pi))


def _numpy_mlp_bf16(params, x):
    """The MLP in NumPy: operands rounded to bf16 as they enter an operation (params, inputs and
    literal constants alike), each operation computed in float32, each result rounded."""
    p = {
        name: {k: np.asarray(v) for k, v in layer.items()}
        for name, layer in params["params"].items()
    }

    def dense(h, layer):
        y = _ref_dot(to_bf16(h), to_bf16(layer["kernel"]), to_bf16)
        return to_bf16(y + to_bf16(layer["bias"]))  # float32 add is IEEE on both sides

    j = dense(np.asarray(x), p["Dense_0"])
    # gelu(j) = j * 0.5 * (1 + tanh(sqrt(2/pi) * (j + 0.044715 j**3))), op by op as the jaxpr.
    cube = to_bf16(j * j * j)  # j**3 of a bf16 value has <= 24 bits: exact in float32
    m = to_bf16(j + to_bf16(to_bf16(_GELU_C1) * cube))
    n = to_bf16(to_bf16(_GELU_C2) * m)
    q = to_bf16(F32(0.5) * to_bf16(F32(1.0) + _ref_tanh(n, to_bf16)))
    g = to_bf16(j * q)
    t = _ref_tanh(dense(g, p["Dense_1"]), to_bf16)
    return dense(t, p["Dense_2"])


def test_mlp_bf16_matches_numpy_bit_for_bit(mlp):
    model, params, x = mlp
    jaxpr = jax.make_jaxpr(model.apply)(params, x).jaxpr
    prims = [e.primitive.name for e in jaxpr.eqns]
    assert prims[3:11] == _GELU_PRIMS, prims
    literals = [v.val for e in jaxpr.eqns[3:11] for v in e.invars if hasattr(v, "val")]
    assert [F32(v) for v in literals] == [_GELU_C1, _GELU_C2, 1.0, 0.5]

    out = jemulate(model.apply, BF16_POLICY)(params, x)
    expected = _numpy_mlp_bf16(params, x)
    assert_bitwise_equal(out, expected)
    # The comparison has teeth: bf16 rounding moved the result away from the float32 model.
    plain = np.asarray(model.apply(params, x))
    assert np.max(np.abs(plain - expected)) > 1e-3


# --- 2. matmul accumulation models ----------------------------------------------------------------


def _matmul(a, b):
    return a @ b


def _ref_blocked(a, b, block, cast):
    """Running sum rounded with ``cast`` after adding each block's sum (exact for _nice_bf16
    data, computed in float64 and converted exactly to float32)."""
    acc = np.zeros((a.shape[0], b.shape[1]), F32)
    for start in range(0, a.shape[1], block):
        part = a[:, start : start + block].astype(np.float64) @ b[start : start + block].astype(
            np.float64
        )
        assert np.array_equal(part.astype(F32), part)  # exact, as _nice_bf16 promises
        acc = cast(acc + part.astype(F32))  # float32 add (IEEE), then round
    return acc


def test_sequential_dot_matches_rounding_loop():
    a, b = _normal(2, (3, 40)), _normal(3, (40, 4))
    out = jemulate(_matmul, PrecisionPolicy.uniform("bf16", accumulation="sequential"))(a, b)

    a16, b16 = to_bf16(a), to_bf16(b)
    acc = np.zeros((3, 4), F32)
    for k in range(40):
        # a bf16 x bf16 product is exact in float32; the float32 add is IEEE: no ambiguity.
        acc = to_bf16(acc + a16[:, k : k + 1] * b16[k : k + 1, :])
    assert_bitwise_equal(out, acc)
    exact = jemulate(_matmul, BF16_POLICY)(a, b)
    assert not np.array_equal(np.asarray(exact), acc)  # the models differ on this data


def test_sequential_dot_stagnates():
    # Adding 1 to a bf16 running sum stops at 256 (256 + 1 ties to even, back to 256).
    ones_row, ones_col = jnp.ones((1, 512), F32), jnp.ones((512, 1), F32)
    seq = jemulate(_matmul, PrecisionPolicy.uniform("bf16", accumulation="sequential"))
    assert float(seq(ones_row, ones_col)[0, 0]) == 256.0
    assert float(jemulate(_matmul, BF16_POLICY)(ones_row, ones_col)[0, 0]) == 512.0
    blocked = jemulate(_matmul, PrecisionPolicy.uniform("bf16", accumulation="blocked(4)"))
    assert float(blocked(ones_row, ones_col)[0, 0]) == 512.0  # 4s added to a sum < 512: exact


@pytest.mark.parametrize("block", [1, 3, 8, 16])
def test_blocked_dot_matches_block_loop(block):
    rng = np.random.default_rng(block)
    a, b = _nice_bf16(rng, (3, 40)), _nice_bf16(rng, (40, 5))
    policy = PrecisionPolicy.uniform("bf16", accumulation=f"blocked({block})")
    out = jemulate(_matmul, policy)(a, b)
    assert_bitwise_equal(out, _ref_blocked(a, b, block, to_bf16))
    if block < 16:
        assert not np.array_equal(np.asarray(out), np.asarray(jemulate(_matmul, BF16_POLICY)(a, b)))


@pytest.mark.parametrize("block", [40, 64])
def test_blocked_with_whole_k_is_exact(block):
    # _nice_bf16 data: the float32 dot is exact whatever the order, so "exact" and one block
    # of all K products must agree bit for bit.
    rng = np.random.default_rng(7)
    a, b = _nice_bf16(rng, (3, 40)), _nice_bf16(rng, (40, 5))
    blocked = jemulate(_matmul, PrecisionPolicy.uniform("bf16", accumulation=f"blocked({block})"))
    exact = jemulate(_matmul, BF16_POLICY)(a, b)
    assert_bitwise_equal(blocked(a, b), exact)
    assert_bitwise_equal(exact, to_bf16(a.astype(np.float64) @ b.astype(np.float64)))


_BATCHED = {
    "bij,bjk->bik": ((2, 3, 4), (2, 4, 5)),
    "bijk,bjkl->bil": ((2, 3, 4, 5), (2, 4, 5, 3)),
    "ijk,kjl->li": ((3, 4, 5), (5, 4, 2)),
}


@pytest.mark.parametrize("spec", list(_BATCHED))
@pytest.mark.parametrize("accumulation", ["exact", "sequential", "blocked(3)"])
def test_batched_dot_general_in_carrier_format_is_plain(spec, accumulation):
    """fp64 in a float64 carrier rounds nothing. With exact-sum data (bf16 values: float64 sums
    of these are exact in any order), every accumulation model must reproduce plain einsum, so
    a transposition/reshape bug in the blocked layout shows up as wrong values."""
    rng = np.random.default_rng(11)
    shape_a, shape_b = _BATCHED[spec]
    a = _nice_bf16(rng, shape_a).astype(np.float64)
    b = _nice_bf16(rng, shape_b).astype(np.float64)
    f = functools.partial(jnp.einsum, spec)
    out = jemulate(f, PrecisionPolicy.uniform("fp64", accumulation=accumulation))(a, b)
    assert_bitwise_equal(out, f(a, b))
    if accumulation == "exact":  # and with general data too, where nothing is exact
        a, b = _normal(12, shape_a).astype(np.float64), _normal(13, shape_b).astype(np.float64)
        out = jemulate(f, PrecisionPolicy.uniform("fp64"))(a, b)
        assert_bitwise_equal(out, f(a, b))


def test_batched_sequential_order_follows_lhs_contracting_dims():
    """A dot_general with a batch dim and two contracting dims given in a permuted order: the
    sequential running sum visits the contracted pairs in row-major order of the lhs
    contracting dims as listed in dimension_numbers (here k outer, j inner)."""
    B, J, I, K, L = 2, 3, 2, 4, 3
    lhs, rhs = _normal(20, (B, J, I, K)), _normal(21, (K, B, L, J))
    dims = (((3, 1), (0, 3)), ((0,), (1,)))

    def f(x, y):
        return lax.dot_general(x, y, dims)

    out = jemulate(f, PrecisionPolicy.uniform("bf16", accumulation="sequential"))(lhs, rhs)
    l16, r16 = to_bf16(lhs), to_bf16(rhs)
    acc = np.zeros((B, I, L), F32)
    for k in range(K):
        for j in range(J):
            acc = to_bf16(acc + l16[:, j, :, k][:, :, None] * r16[k, :, :, j][:, None, :])
    assert_bitwise_equal(out, acc)


def test_batched_blocked_keeps_batch_and_free_dims_apart():
    """Each output element sums K equal products p[b, i, l] (so the order cannot matter); the
    bf16 sequential sum of K = 20 * 16 = 320 copies is computed by a scalar loop."""
    alpha = to_bf16(_normal(30, (2, 3)))  # [b, i]
    beta = to_bf16(_normal(31, (2, 4)))  # [b, l]
    lhs = np.broadcast_to(alpha[:, :, None, None], (2, 3, 20, 16)).copy()
    rhs = np.broadcast_to(beta[:, None, None, :], (2, 20, 16, 4)).copy()
    f = functools.partial(jnp.einsum, "bijk,bjkl->bil")
    out = jemulate(f, PrecisionPolicy.uniform("bf16", accumulation="sequential"))(lhs, rhs)
    product = alpha[:, :, None] * beta[:, None, :]  # exact in float32
    acc = np.zeros_like(product)
    for _ in range(320):
        acc = to_bf16(acc + product)
    assert_bitwise_equal(out, acc)
    assert not np.array_equal(acc, to_bf16(product * F32(320)))  # stagnation happened


# --- 3. per-layer policies ------------------------------------------------------------------------


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, bias_init=nn.initializers.normal(0.5))
        x = jnp.tanh(dense(7)(x))
        x = jnp.tanh(dense(6)(x))
        return dense(3)(x)


def _with_intermediates(model):
    def apply(params, x):
        out, state = model.apply(params, x, capture_intermediates=True, mutable=["intermediates"])
        inter = state["intermediates"]
        return out, [inter[f"Dense_{i}"]["__call__"][0] for i in range(3)]

    return apply


def test_rule_for_one_layer_changes_only_that_layer():
    model = TwoLayer()
    # Seeds for which the fp16 rounding of the float32 matmul is order-independent (see
    # _round_unambiguous; fp16 keeps 3 more bits than bf16, so many seeds are not).
    x = jnp.asarray(_normal(41, (4, 5)))
    params = model.init(jax.random.key(2), x)
    apply = _with_intermediates(model)
    policy = PrecisionPolicy(default="fp32", rules=[Rule("fp16", path="Dense_1")])

    (plain_out, plain_layers) = apply(params, x)
    (out, layers) = jemulate(apply, policy)(params, x)

    # Dense_0 is fp32 in a float32 carrier: exactly the plain computation.
    assert_bitwise_equal(layers[0], plain_layers[0])
    # Dense_1, given the same input, equals the fp16 computation of that layer alone.
    p1 = params["params"]["Dense_1"]
    h = np.asarray(jnp.tanh(layers[0]))  # the fp32 tanh between the layers is not rounded
    y = _ref_dot(to_fp16(h), to_fp16(p1["kernel"]), to_fp16)
    expected1 = to_fp16(y + to_fp16(p1["bias"]))
    assert_bitwise_equal(layers[1], expected1)
    assert not np.array_equal(np.asarray(layers[1]), np.asarray(plain_layers[1]))
    # Dense_2 is fp32 again: the plain layer applied to the (rounded) Dense_1 output.
    dense2 = nn.Dense(3).apply({"params": params["params"]["Dense_2"]}, jnp.tanh(layers[1]))
    assert_bitwise_equal(layers[2], dense2)
    assert_bitwise_equal(out, layers[2])
    assert not np.array_equal(np.asarray(out), np.asarray(plain_out))


class NamedLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.Dense(4, name="Dense_1")(x)
        b = nn.Dense(4, name="Dense_10")(x)
        return a, b


def test_path_pattern_matches_whole_components():
    model = NamedLayers()
    x = jnp.asarray(_normal(41, (3, 5)))
    params = model.init(jax.random.key(3), x)
    a, b = jemulate(
        model.apply, PrecisionPolicy(default="fp32", rules=[Rule("bf16", path="Dense_1")])
    )(params, x)
    plain_a, plain_b = model.apply(params, x)
    assert_in_format(a, to_bf16)
    assert not np.array_equal(np.asarray(a), np.asarray(plain_a))
    assert_bitwise_equal(b, plain_b)  # "Dense_1" does not match "NamedLayers/Dense_10"

    # A wildcard pattern does, and the first matching rule wins over later ones.
    policy = PrecisionPolicy(
        default="fp32", rules=[Rule("fp16", path="Dense_1"), Rule("bf16", path="Dense_1*")]
    )
    a, b = jemulate(model.apply, policy)(params, x)
    assert_in_format(a, to_fp16)
    assert not np.array_equal(to_bf16(a), np.asarray(a))  # fp16, not bf16
    assert_in_format(b, to_bf16)


def test_kinds_restrict_a_rule():
    # bf16 matmul inputs only: the dot sees bf16 operands, its float32 sum and the elementwise
    # add after it stay at the fp32 default.
    policy = PrecisionPolicy(default="fp32", rules=[Rule("bf16", kinds=("matmul_inputs",))])

    def f(a, b, c):
        return a @ b + c * 1.1

    a, b, c = _normal(50, (3, 6)), _normal(51, (6, 4)), _normal(52, (3, 4))
    out = jemulate(f, policy)(a, b, c)
    expected = jnp.asarray(to_bf16(a)) @ jnp.asarray(to_bf16(b)) + jnp.asarray(c) * F32(1.1)
    assert_bitwise_equal(out, expected)
    assert not np.array_equal(to_bf16(out), np.asarray(out))  # the result is not rounded

    # The converse: elementwise rounding only leaves the matmul alone.
    policy = PrecisionPolicy(default="fp32", rules=[Rule("bf16", kinds=("elementwise",))])
    out = jemulate(f, policy)(a, b, c)
    dot = np.asarray(jnp.asarray(a) @ jnp.asarray(b))
    expected = to_bf16(to_bf16(dot) + to_bf16(to_bf16(c) * to_bf16(F32(1.1))))
    assert_bitwise_equal(out, expected)


# --- 4. control flow and call primitives ----------------------------------------------------------


r = jax.jit(functools.partial(round_to, fmt="bf16"))  # hand-placed roundings of the references


def _scan_fn(c0, xs):
    def body(c, x):
        c = c * 0.75 + x
        return c, jnp.sin(c)

    return lax.scan(body, c0, xs)


def _scan_ref(c0, xs, r=r):
    c, ys = r(c0), []
    for x in xs:
        c = r(r(c * 0.75) + r(x))
        ys.append(r(jnp.sin(c)))
    return c, jnp.stack(ys)


def _while_fn(x):
    return lax.while_loop(lambda v: jnp.max(v) < 10.0, lambda v: v * 1.3 + 0.1, x)


def _while_ref(x, r=r):
    v = r(x)
    while bool(jnp.max(v) < 10.0):
        v = r(r(v * r(F32(1.3))) + r(F32(0.1)))
    return v


def _cond_fn(x):
    return lax.cond(jnp.sum(x) > 0, lambda v: jnp.exp(v) * 0.3, lambda v: v - 1.7, x)


def _cond_ref(x, r=r):
    if bool(r(jnp.sum(r(x))) > 0):
        return r(r(jnp.exp(r(x))) * r(F32(0.3)))
    return r(r(x) - r(F32(1.7)))


def _fori_fn(x):
    return lax.fori_loop(0, 5, lambda i, v: v * 0.9 + i.astype(v.dtype) * 0.01, x)


def _fori_ref(x, r=r):
    v = r(x)
    for i in range(5):
        v = r(r(v * r(F32(0.9))) + r(r(F32(i)) * r(F32(0.01))))
    return v


def _remat_fn(x):
    return jax.checkpoint(lambda v: jnp.sin(v) * jnp.cos(v))(x)


def _remat_ref(x, r=r):
    return r(r(jnp.sin(r(x))) * r(jnp.cos(r(x))))


def _jit_fn(x):
    return jax.jit(lambda v: jax.jit(lambda y: y * y + 1.0)(v) * 3.0)(x)


def _jit_ref(x, r=r):
    return r(r(r(r(x) * r(x)) + 1.0) * 3.0)


def _relu_fn(x):
    return jax.nn.relu(x * 1.1)


def _relu_ref(x, r=r):
    return jnp.maximum(r(r(x) * r(F32(1.1))), 0.0)


def _softmax_fn(x):
    return jax.nn.softmax(x, axis=-1)


def _softmax_ref(x, r=r):
    x = r(x)
    m = jnp.max(x, axis=-1, keepdims=True)  # max/reduce_max of bf16 values are bf16
    e = r(jnp.exp(r(x - m)))
    return r(e / r(jnp.sum(e, axis=-1, keepdims=True)))


@jax.custom_vjp
def _sin2(x):
    return jnp.sin(x) * 2.0


_sin2.defvjp(lambda x: (_sin2(x), x), lambda x, g: (g * jnp.cos(x) * 2.0,))


def _custom_vjp_fn(x):
    return _sin2(x) + 0.5


def _custom_vjp_ref(x, r=r):
    return r(r(r(jnp.sin(r(x))) * 2.0) + 0.5)


_CONTROL_FLOW = {
    "scan": (_scan_fn, _scan_ref, lambda: (F32(0.3), _normal(60, (5,)))),
    "while": (_while_fn, _while_ref, lambda: (np.abs(_normal(61, (3,))) + F32(0.5),)),
    "cond_true": (_cond_fn, _cond_ref, lambda: (np.abs(_normal(62, (4,))),)),
    "cond_false": (_cond_fn, _cond_ref, lambda: (-np.abs(_normal(63, (4,))),)),
    "fori_loop": (_fori_fn, _fori_ref, lambda: (_normal(64, (4,)),)),
    "checkpoint": (_remat_fn, _remat_ref, lambda: (_normal(65, (4,)),)),
    "nested_jit": (_jit_fn, _jit_ref, lambda: (_normal(66, (4,)),)),
    "custom_jvp_relu": (_relu_fn, _relu_ref, lambda: (_normal(67, (6,)),)),
    "custom_jvp_softmax": (_softmax_fn, _softmax_ref, lambda: (_normal(68, (2, 5)),)),
    "custom_vjp": (_custom_vjp_fn, _custom_vjp_ref, lambda: (_normal(69, (4,)),)),
}


@pytest.mark.parametrize("name", list(_CONTROL_FLOW))
def test_control_flow_bf16_matches_hand_rounded_reference(name):
    fn, ref, make_args = _CONTROL_FLOW[name]
    args = [jnp.asarray(a) for a in make_args()]
    out = jemulate(fn, BF16_POLICY)(*args)
    expected = ref(*args)
    jax.tree.map(assert_bitwise_equal, out, expected)
    for leaf in jax.tree.leaves(out):
        assert_in_format(leaf, to_bf16)
    # Rounding to the carrier's own format rounds nothing: the result is the same computation
    # in IEEE float32 arithmetic, one operation at a time (eager NumPy-like ops; not the plain
    # jitted function, where XLA contracts a * b + c into a fused multiply-add).
    ieee = ref(*args, r=lambda v: v)
    jax.tree.map(assert_bitwise_equal, jemulate(fn, FP32_POLICY)(*args), ieee)
    # And bf16 did change something (the reference is not the plain function).
    plain = jax.tree.leaves(fn(*args))
    assert any(
        not np.array_equal(np.asarray(o), np.asarray(p))
        for o, p in zip(jax.tree.leaves(out), plain, strict=True)
    )


def test_while_loop_trip_count_follows_rounded_values():
    # 1.003 rounds to 1.0 in bf16, so the emulated loop never grows x: it stops at the trip
    # limit carried in the state, while the float32 loop exits early.
    def f(x):
        def body(s):
            i, v = s
            return i + 1, v * 1.003

        return lax.while_loop(lambda s: (s[1] < 1.5) & (s[0] < 200), body, (0, x))

    x = jnp.float32(1.0)
    assert int(f(x)[0]) == 136  # 1.003**136 >= 1.5
    trips, value = jemulate(f, BF16_POLICY)(x)
    assert int(trips) == 200 and float(value) == 1.0


# --- 5. transformations ---------------------------------------------------------------------------


def _layer(w, x):
    return jnp.sum(jnp.tanh(x @ w) * 1.5, axis=-1)


@pytest.fixture(scope="module")
def layer_data():
    rng = np.random.default_rng(70)
    # Exact-sum data for the matmul (see _nice_bf16), so that batching a matrix-vector product
    # into a matrix-matrix one cannot change a float32 sum.
    return jnp.asarray(_nice_bf16(rng, (8, 4))), jnp.asarray(_nice_bf16(rng, (5, 8)))


@pytest.mark.parametrize("mode", ["nearest", "stochastic"])
def test_jit_equals_eager(mode):
    # Eager emulation runs every rounding kernel op by op (slow: one shape, few ops here).
    x = jnp.asarray(_normal(72, (6,)))
    emulated = emulate(
        lambda v: jnp.sum(jnp.tanh(v * 1.5) + v), PrecisionPolicy.uniform("bf16", mode=mode)
    )
    key = {"rounding_key": jax.random.key(0)} if mode == "stochastic" else {}
    eager = emulated(x, **key)
    assert_bitwise_equal(jax.jit(emulated)(x, **key), eager)
    assert_in_format(eager, to_bf16)


def test_vmap_equals_loop(layer_data):
    w, x = layer_data
    emulated = emulate(_layer, BF16_POLICY)
    batched = jax.jit(jax.vmap(emulated, in_axes=(None, 0)))(w, x)
    looped = jnp.stack([jax.jit(emulated)(w, row) for row in x])
    assert_bitwise_equal(batched, looped)
    assert_in_format(batched, to_bf16)


def test_grad_is_straight_through():
    x = jnp.asarray(_normal(71, (6,)))
    # d/dx sum(x * c) is the constant as the emulated forward pass used it: bf16(1.1).
    g = jax.grad(emulate(lambda v: jnp.sum(v * 1.1), BF16_POLICY))(x)
    assert_bitwise_equal(g, jnp.full(6, to_bf16(F32(1.1))[()]))
    # d/dx sum(x * x) = 2 * (x as the forward pass rounded it).
    g = jax.grad(emulate(lambda v: jnp.sum(v * v), BF16_POLICY))(x)
    assert_bitwise_equal(g, 2 * to_bf16(x))


def test_grad_of_emulated(layer_data):
    w, x = layer_data

    def loss(w, x):
        return jnp.sum(_layer(w, x) ** 2)

    plain = jax.grad(loss)(w, x)
    # Eager on both sides: under jit, XLA fuses the (unrounded, carrier) backward pass
    # differently, e.g. into fused multiply-adds.
    assert_bitwise_equal(jax.grad(emulate(loss, FP32_POLICY))(w, x), plain)
    g = jax.jit(jax.grad(emulate(loss, BF16_POLICY)))(w, x)
    assert np.all(np.isfinite(g))
    # The forward values carry a relative error of a few bf16 unit roundoffs (2**-9) per op,
    # about 6 ops deep; the backward pass is in float32. 2**-4 of the gradient's scale is a
    # loose bound for that, and still fails for a wrong or missing gradient.
    np.testing.assert_allclose(g, plain, atol=2.0**-4 * float(jnp.max(jnp.abs(plain))))
    assert not np.array_equal(np.asarray(g), np.asarray(plain))


def test_emulate_of_grad(layer_data):
    w, x = layer_data

    def loss(w, x):
        return jnp.sum(_layer(w, x) ** 2)

    plain = jax.grad(loss)(w, x)
    assert_bitwise_equal(jemulate(jax.grad(loss), FP32_POLICY)(w, x), plain)
    g = jax.jit(emulate(jax.grad(loss), BF16_POLICY))(w, x)
    assert_in_format(g, to_bf16)  # the backward pass is rounded too
    np.testing.assert_allclose(g, plain, atol=2.0**-4 * float(jnp.max(jnp.abs(plain))))


@pytest.mark.parametrize("mode", ["stochastic", "random"])
def test_random_modes_need_and_follow_the_key(layer_data, mode):
    w, x = layer_data
    emulated = jax.jit(emulate(_layer, PrecisionPolicy.uniform("bf16", mode=mode)))
    with pytest.raises(ValueError, match="rounding_key"):
        emulate(_layer, PrecisionPolicy.uniform("bf16", mode=mode))(w, x)
    k0, k1 = jax.random.key(0), jax.random.key(1)
    out0 = emulated(w, x, rounding_key=k0)
    assert_bitwise_equal(emulated(w, x, rounding_key=k0), out0)
    assert not np.array_equal(np.asarray(emulated(w, x, rounding_key=k1)), np.asarray(out0))
    assert_in_format(out0, to_bf16)
    # Each op moves a value by at most one bf16 ulp (relative 2**-7) instead of half of one;
    # a few ops deep, 2**-4 relative to the output scale is a loose bound.
    plain = _layer(w, x)
    np.testing.assert_allclose(out0, plain, atol=2.0**-4 * float(jnp.max(jnp.abs(plain))))

    keys = jax.random.split(jax.random.key(2), 4)
    batched = jax.jit(jax.vmap(lambda k: emulated(w, x, rounding_key=k)))(keys)
    assert_bitwise_equal(batched, jnp.stack([emulated(w, x, rounding_key=k) for k in keys]))
    assert len({np.asarray(b).tobytes() for b in batched}) == 4


def _accumulate_scan(c):
    return lax.scan(lambda c, _: (c + 0.001, None), c, length=200)[0]


def _accumulate_while(c):
    return lax.while_loop(lambda s: s[0] < 200, lambda s: (s[0] + 1, s[1] + 0.001), (0, c))[1]


@pytest.mark.parametrize("loop", [_accumulate_scan, _accumulate_while])
def test_stochastic_rounding_in_loops_draws_fresh_bits_per_iteration(loop):
    """1 + 200 * 0.001 in bf16: round to nearest stagnates at 1 (0.001 is below half an ulp,
    2**-8), stochastic rounding adds one ulp 2**-7 with probability p = bf16(0.001) / 2**-7
    each step, so the result is 1 + 2**-7 * Binomial(200, p): mean 1.2014, standard deviation
    0.037. The 5-sigma bound fails if iterations reused one key (every step would round the
    same way: 1.0 or 2.56)."""
    c = jnp.float32(1.0)
    assert float(jemulate(loop, BF16_POLICY)(c)) == 1.0
    stochastic = jemulate(loop, PrecisionPolicy.uniform("bf16", mode="stochastic"))
    p = float(to_bf16(F32(0.001))) / 2.0**-7
    mean, sigma = 1 + 2.0**-7 * 200 * p, 2.0**-7 * np.sqrt(200 * p * (1 - p))
    for seed in range(3):
        value = float(stochastic(c, rounding_key=jax.random.key(seed)))
        assert abs(value - mean) < 5 * sigma, value
        assert_in_format(np.float32(value), to_bf16)


def test_rule_with_random_mode_needs_key_even_if_default_is_nearest():
    policy = PrecisionPolicy(default="bf16", rules=[Rule("bf16", path="nowhere", mode="random")])
    with pytest.raises(ValueError, match="rounding_key"):
        emulate(lambda v: v * 1.1, policy)(jnp.ones(3, F32))


# --- smaller semantics ----------------------------------------------------------------------------


def test_literals_are_rounded_and_data_movement_is_not():
    x = jnp.asarray(_normal(80, (2, 3)))
    out = jemulate(lambda v: v * 0.1, BF16_POLICY)(jnp.ones(3, F32))
    assert_bitwise_equal(out, np.full(3, to_bf16(to_bf16(F32(0.1))), F32))  # 0.10009765625
    moved = jemulate(lambda v: jnp.concatenate([v.T.reshape(-1), v[0, ::-1]]), BF16_POLICY)(x)
    assert_bitwise_equal(moved, jnp.concatenate([x.T.reshape(-1), x[0, ::-1]]))


def test_fp8_elementwise_matches_ml_dtypes():
    a, b, c = (_normal(s, (64,), 4.0) for s in (81, 82, 83))
    out = jemulate(lambda a, b, c: a * b + c, "fp8_e4m3")(a, b, c)
    # e4m3 x e4m3 products (8 significant bits) are exact in float32; the add is IEEE.
    expected = to_e4m3(to_e4m3(to_e4m3(a) * to_e4m3(b)) + to_e4m3(c))
    assert_bitwise_equal(out, expected)


def test_saturate():
    x = jnp.asarray([1e5, -7e4, 3.0], F32)
    out = jemulate(lambda v: v * 2.0, PrecisionPolicy.uniform("fp16", saturate=True))(x)
    assert_bitwise_equal(out, np.asarray([65504.0, -65504.0, 6.0], F32))
    out = jemulate(lambda v: v * 2.0, "fp16")(x)
    assert_bitwise_equal(out, np.asarray([np.inf, -np.inf, 6.0], F32))


def test_native_rule_leaves_ops_alone():
    policy = PrecisionPolicy(default="bf16", rules=[Rule("native", kinds=("elementwise",))])
    a, b = _normal(84, (3, 4)), _normal(85, (3, 4))
    out = jemulate(lambda a, b: jnp.sum(a * b + 0.1), policy)(a, b)
    # Only the reduction rounds (its operand and its result). The native a * b + 0.1 is XLA's
    # float32: a rounded product then a rounded sum, or one fused multiply-add under jit; the
    # bound (an ulp of each) admits both.
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    exact = a64 * b64 + np.float64(F32(0.1))
    bound = (np.spacing(np.abs(a * b)) + np.spacing(np.abs(exact).astype(F32))).astype(np.float64)
    terms = _round_unambiguous(exact, bound, to_bf16).astype(np.float64)
    expected = _round_unambiguous(terms.sum(), 12 * 2.0**-24 * np.abs(terms).sum(), to_bf16)
    assert_bitwise_equal(out, expected)


def test_fp32_policy_is_ieee_operation_by_operation():
    # Every result is rounded to fp32 on its own, as NumPy computes. (The plain jitted function
    # differs on XLA:CPU, which contracts a * b + c into a fused multiply-add.)
    a, b, c = (_normal(s, (4096,)) for s in (88, 89, 90))
    out = jemulate(lambda a, b, c: a * b + c, FP32_POLICY)(a, b, c)
    assert_bitwise_equal(out, a * b + c)


def test_low_precision_computation_is_not_widened():
    x = jnp.asarray(_normal(86, (5,))).astype(jnp.bfloat16)

    def f(v):
        return jnp.tanh(v) * 3.0

    # bf16 in a bfloat16 computation and fp32 (wider than it) both leave it as JAX computes it.
    assert_bitwise_equal(jemulate(f, BF16_POLICY)(x), f(x))
    assert_bitwise_equal(jemulate(f, FP32_POLICY)(x), f(x))
    out = jemulate(f, "fp8_e5m2")(x)
    assert out.dtype == jnp.bfloat16
    e5m2 = np.asarray(out).astype(ml_dtypes.float8_e5m2).astype(ml_dtypes.bfloat16)
    assert_bitwise_equal(out, e5m2)


def test_python_bool_arguments_stay_static():
    class Flagged(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            y = nn.Dense(3)(x)
            return y * 2.0 if train else y

    model = Flagged()
    x = jnp.asarray(_normal(87, (2, 4)))
    params = model.init(jax.random.key(4), x)
    # The flag is bound outside jit, so emulate receives a Python bool (not a jit tracer).
    out = jax.jit(functools.partial(emulate(model.apply, FP32_POLICY), train=True))(params, x)
    assert_bitwise_equal(out, model.apply(params, x, train=True))
    assert not np.array_equal(np.asarray(out), np.asarray(model.apply(params, x)))


# --- 7. errors ------------------------------------------------------------------------------------


def test_fp64_policy_on_float32_raises():
    with pytest.raises(ValueError, match=r"float32.*float64.*x64"):
        emulate(lambda v: v * 2.0, PrecisionPolicy.uniform("fp64"))(jnp.ones(3, F32))
    # A rule that only reaches the matmul inputs needs no float64: float32 inputs are fp64
    # values already (rounding them is exact), so the product is the fp32 one.
    policy = PrecisionPolicy(
        default="fp32", rules=[Rule("fp64", path="Dense_0", kinds=("matmul_inputs",))]
    )
    model = nn.Dense(2, name="Dense_0")
    x = jnp.ones((1, 3), F32)
    params = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(emulate(model.apply, policy)(params, x),
                                  emulate(model.apply, "fp32")(params, x))
    # while a float32 result under an fp64 accumulation rule is refused, naming the path
    policy = PrecisionPolicy(default="fp32", rules=[Rule("fp64", path="Dense_0")])
    with pytest.raises(ValueError, match=r"'fp64'.*Dense_0.*dot_general"):
        emulate(model.apply, policy)(params, x)


@pytest.mark.parametrize("policy", [42, None, {"default": "bf16"}, Rule("bf16")])
def test_non_policy_raises(policy):
    with pytest.raises(ValueError, match="PrecisionPolicy"):
        emulate(lambda v: v, policy)


def test_unknown_format_name_raises():
    with pytest.raises(ValueError, match="unknown format 'fp7'"):
        emulate(lambda v: v, "fp7")


def test_blocked_convolution_is_refused():
    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1,), "VALID")

    x, k = jnp.ones((1, 2, 8), F32), jnp.ones((3, 2, 3), F32)
    assert jemulate(conv, BF16_POLICY)(x, k).shape == (1, 3, 6)  # exact accumulation works
    with pytest.raises(NotImplementedError, match="dot_general only"):
        emulate(conv, PrecisionPolicy.uniform("bf16", accumulation="sequential"))(x, k)


def test_scatter_add_is_emulated():
    # The gradient of a gather is a scatter-add: index 2 receives bf16(1.1) twice, and the sum
    # 2 * bf16(1.1) is representable in bf16 (a doubling), so it comes back exactly.
    idx = jnp.array([0, 2, 2])
    x = jnp.asarray(_normal(91, (4,)))
    g = jemulate(jax.grad(lambda v: jnp.sum(v[idx] * 1.1)), BF16_POLICY)(x)
    assert_in_format(g, to_bf16)
    c = float(to_bf16(np.float32(1.1)))
    np.testing.assert_array_equal(np.asarray(g), np.array([c, 0.0, 2 * c, 0.0], np.float32))
    # x.at[i].add of three values in bf16: each operand rounded, the sum rounded once.
    upd = jnp.array([1.001, 2.003, 3.007], F32)
    out = jemulate(lambda v, u: v.at[idx].add(u), BF16_POLICY)(jnp.zeros(4, F32), upd)
    assert_in_format(out, to_bf16)
    u = to_bf16(np.asarray(upd))
    np.testing.assert_array_equal(
        np.asarray(out), np.array([u[0], 0.0, to_bf16(np.float32(u[1] + u[2])), 0.0], np.float32)
    )


def test_sparse_bcoo_product_follows_the_matmul_rules():
    # A BCOO product is a matmul: a policy that rounds only matmuls to bf16 rounds it exactly
    # as it rounds the dense product of the same matrix, and sequential accumulation is refused
    # with a clear error rather than silently ignored.
    from jax.experimental import sparse

    policy = PrecisionPolicy(
        default="native", rules=[Rule("bf16", kinds=("matmul_inputs", "matmul_accumulation"))]
    )
    rng = np.random.default_rng(7)
    dense = (rng.standard_normal((6, 5)) * (rng.random((6, 5)) < 0.5)).astype(F32)
    x = rng.standard_normal((5, 3)).astype(F32)
    a = sparse.BCOO.fromdense(jnp.asarray(dense))
    got = jemulate(lambda m, v: m @ v, policy)(a, jnp.asarray(x))
    want = jemulate(lambda m, v: m @ v, policy)(jnp.asarray(dense), jnp.asarray(x))
    assert_bitwise_equal(got, want)
    assert_in_format(got, to_bf16)
    assert not np.array_equal(np.asarray(got), dense @ x)
    with pytest.raises(NotImplementedError, match="dot_general only"):
        emulate(lambda m, v: m @ v, PrecisionPolicy.uniform("bf16", accumulation="sequential"))(
            a, jnp.asarray(x))
