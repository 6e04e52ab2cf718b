"""Tests for dp2ejax.arith.blockscaled: OCP MX v1.0 and NVFP4.

The reference below is written from the specifications with NumPy, independently of dp2ejax's
rounding kernel:

* element formats are enumerated (every finite value of each element format, from its exponent
  width, fraction width, bias and NaN/inf encodings as the OCP MX v1.0 spec lists them) and a
  value is rounded by picking its neighbours in that sorted table (ties to the even code);
* OCP MX (spec Section 6.3): ``shared_exp = floor(log2(amax)) - emax`` from ``np.frexp`` in
  float64, clamped at -127, NaN above 127 or for a non-finite amax; ``np.ldexp`` scalings in
  float64 are exact for these inputs;
* NVFP4: ``s_t = amax / 2688``, ``s_b = e4m3(amax_block / (6 s_t))`` (nearest, ties to even,
  saturated at 448), ``P = e2m1(V / (s_b s_t))``, value ``P s_b s_t``, with Transformer Engine's
  float operations (encode scale 2688 / amax, multiplications by reciprocals) done in NumPy in
  float32 / the carrier dtype (IEEE, correctly rounded, no flushing).

Comparisons are bit for bit (uint views; any NaN equals any NaN). Compiled functions are shared
through ``functools.cache`` so each (format, dtype, axis) compiles once.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dp2ejax.arith import get_format, random_bits, round_to
from dp2ejax.arith.blockscaled import (
    QuantizedArray,
    dequantize,
    quantize,
    round_block_scaled,
)

MX_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8")
ALL_FORMATS = MX_FORMATS + ("nvfp4",)
DETERMINISTIC = ("nearest", "toward_zero", "up", "down")
DTYPES = (np.float32, np.float64)
UINT = {4: np.uint32, 8: np.uint64}

# --- the reference -------------------------------------------------------------------------------

# Element formats as OCP MX v1.0 Tables 1-2 give them: (exponent bits, fraction bits, bias,
# encodings at the top of the exponent range that are not finite values), and emax.
ELEMENTS = {
    "fp8_e4m3": (4, 3, 7, "s.1111.111 is NaN"),
    "fp8_e5m2": (5, 2, 15, "s.11111.xx is inf/NaN"),
    "fp6_e3m2": (3, 2, 3, None),
    "fp6_e2m3": (2, 3, 1, None),
    "fp4_e2m1": (2, 1, 1, None),
}
EMAX = {
    "mxfp8_e4m3": 8,
    "mxfp8_e5m2": 15,
    "mxfp6_e3m2": 4,
    "mxfp6_e2m3": 2,
    "mxfp4": 2,
    "mxint8": 0,
}
MX_ELEMENT = {
    "mxfp8_e4m3": "fp8_e4m3",
    "mxfp8_e5m2": "fp8_e5m2",
    "mxfp6_e3m2": "fp6_e3m2",
    "mxfp6_e2m3": "fp6_e2m3",
    "mxfp4": "fp4_e2m1",
    "mxint8": "int8",
}


@functools.cache
def element_table(element: str) -> np.ndarray:
    """Non-negative finite values of an element format, ascending, in code order."""
    if element == "int8":
        return np.arange(128) / 64.0
    e, m, bias, _ = ELEMENTS[element]
    values = []
    for field in range(1 << e):
        for frac in range(1 << m):
            if element == "fp8_e4m3" and field == 15 and frac == 7:
                continue
            if element == "fp8_e5m2" and field == 31:
                continue
            if field == 0:
                values.append(frac / (1 << m) * 2.0 ** (1 - bias))
            else:
                values.append((1 + frac / (1 << m)) * 2.0 ** (field - bias))
    table = np.array(values)
    assert np.all(np.diff(table) > 0)
    return table


def ref_round_element(v: np.ndarray, element: str, mode: str) -> np.ndarray:
    """Rounds float64 values to an element format, saturating at its largest value."""
    table = element_table(element)
    mag = np.abs(v)
    hi_index = np.clip(np.searchsorted(table, mag, side="left"), 0, len(table) - 1)
    exact = table[hi_index] == mag
    lo_index = np.where(exact | (table[hi_index] < mag), hi_index, hi_index - 1)
    lo, hi = table[lo_index], table[hi_index]
    if mode == "nearest":
        tie_hi = (hi_index % 2) == 0
        pick_hi = (hi - mag < mag - lo) | ((hi - mag == mag - lo) & tie_hi)
    elif mode == "toward_zero":
        pick_hi = np.zeros(v.shape, bool)
    elif mode == "up":
        pick_hi = v > 0
    elif mode == "down":
        pick_hi = v < 0
    else:
        raise ValueError(mode)
    out = np.where(pick_hi & ~exact, hi, lo)
    out = np.where(mag >= table[-1], table[-1], out)  # saturate (also the top binade's tail)
    out = np.copysign(out, v)
    if element == "int8":
        out = np.where(out == 0, 0.0, out)  # integers have no -0
    return np.where(np.isnan(v), np.nan, out)


def to_blocks(x: np.ndarray, axis: int, block_size: int):
    moved = np.moveaxis(x, axis, -1)
    length = moved.shape[-1]
    nblocks = -(-length // block_size)
    padded = np.zeros(moved.shape[:-1] + (nblocks * block_size,), x.dtype)
    padded[..., :length] = moved

    def restore(y):
        y = y.reshape(moved.shape[:-1] + (nblocks * block_size,))[..., :length]
        return np.moveaxis(y, -1, axis)

    return padded.reshape(moved.shape[:-1] + (nblocks, block_size)), restore


def ref_mx(x: np.ndarray, name: str, mode: str = "nearest", axis: int = -1) -> np.ndarray:
    """OCP MX v1.0 Section 6.3, in float64."""
    blocks, restore = to_blocks(x.astype(np.float64), axis, 32)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=-1, keepdims=True)  # NaN propagates
    _, exponent = np.frexp(np.where(np.isfinite(amax) & (amax > 0), amax, 1.0))
    shared = exponent - 1 - EMAX[name]  # frexp: amax = f * 2**exponent, f in [0.5, 1)
    nan_block = ~np.isfinite(amax) | (shared > 127)
    shared = np.where(amax == 0, -127, np.maximum(shared, -127))
    shared = np.where(nan_block, 0, shared)
    elements = ref_round_element(np.ldexp(blocks, -shared), MX_ELEMENT[name], mode)
    out = np.where(nan_block, np.nan, np.ldexp(elements, shared))
    return restore(out).astype(x.dtype)  # exact: every value fits the carrier


def ref_nvfp4(x: np.ndarray, mode: str = "nearest", axis: int = -1) -> np.ndarray:
    """NVFP4 with Transformer Engine's float operations (scalars float32, the rest in the
    carrier dtype c)."""
    c, f32 = x.dtype.type, np.float32
    f32_max = f32(np.finfo(f32).max)
    finite = np.abs(x[np.isfinite(x)])
    amax_t = c(finite.max()) if finite.size else c(0)
    with np.errstate(divide="ignore", over="ignore"):
        encode = f32(c(2688) / amax_t) if amax_t > 0 else f32(1)
    encode = min(encode, f32_max)
    encode = f32(1) if encode == 0 else encode
    s_t = f32(1) / encode
    blocks, restore = to_blocks(x, axis, 16)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    nan_block = ~np.isfinite(amax)
    ratio = np.where(nan_block, c(0), amax) * c(encode * f32(1 / 6))
    table = element_table("fp8_e4m3")
    s_b = c(
        np.minimum(ref_round_element(ratio.astype(np.float64), "fp8_e4m3", "nearest"), table[-1])
    )
    with np.errstate(divide="ignore", invalid="ignore", under="ignore", over="ignore"):
        coefficient = np.minimum(c(1) / (s_b * c(s_t)), c(f32_max))
        scaled = np.where(s_b == 0, blocks * c(0), blocks * coefficient)
    elements = c(ref_round_element(scaled.astype(np.float64), "fp4_e2m1", mode))
    with np.errstate(invalid="ignore", under="ignore"):
        out = np.where(nan_block, c(np.nan), (elements * s_b) * c(s_t))
    return restore(out)


def reference(x: np.ndarray, name: str, mode: str = "nearest", axis: int = -1) -> np.ndarray:
    return ref_nvfp4(x, mode, axis) if name == "nvfp4" else ref_mx(x, name, mode, axis)


# --- helpers -------------------------------------------------------------------------------------


def assert_bitwise_equal(actual, expected, context=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, context
    uint = UINT[actual.dtype.itemsize]
    same = (actual.view(uint) == expected.view(uint)) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(same):
        where = np.argwhere(~same)[:5]
        details = [(tuple(i), actual[tuple(i)], expected[tuple(i)]) for i in where]
        raise AssertionError(f"{context}: {np.sum(~same)} mismatches, e.g. {details}")


dequantize_jit = jax.jit(dequantize)


@functools.cache
def rounder(name: str, axis: int):
    """One compiled function per (format, axis) giving every deterministic mode."""
    return jax.jit(
        lambda x: [round_block_scaled(x, name, mode, axis=axis) for mode in DETERMINISTIC]
    )


def make_tensor(dtype, block_size: int, seed: int = 0) -> np.ndarray:
    """(6, 3 blocks + 7) with block magnitudes 1e-6..1e6 and special blocks in row 0:
    zeros | NaN inside | top-of-binade (saturating) | partial block with an inf in row 1."""
    rng = np.random.default_rng(seed)
    length = 3 * block_size + 7
    nblocks = 4
    magnitude = 10.0 ** rng.uniform(-6, 6, (6, nblocks))
    x = rng.standard_normal((6, nblocks * block_size)) * np.repeat(magnitude, block_size, 1)
    x = x[:, :length].astype(dtype)
    x[0, :block_size] = 0
    x[0, block_size + 3] = np.nan
    # amax with significand 1.999: its scaled value is beyond every element format's max.
    x[0, 2 * block_size : 3 * block_size] = np.linspace(-1, 1, block_size) * 3.0
    x[0, 2 * block_size] = 1.999 * 2.0**5
    x[1, 3 * block_size + 2] = -np.inf
    x[2, block_size : 2 * block_size] *= 1e-3  # a few ties and exact values too
    x[3, :8] = [0.5, 0.75, 1.25, 3.5, -0.25, 0.0, -0.0, 1.0]
    return x


# --- bit-exact comparison with the reference -----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_matches_reference(name, dtype):
    fmt = get_format(name)
    x = make_tensor(dtype, fmt.block_size)
    for mode, out in zip(DETERMINISTIC, rounder(name, -1)(jnp.asarray(x)), strict=True):
        assert_bitwise_equal(out, reference(x, name, mode), f"{name} {dtype.__name__} {mode}")
    assert np.isnan(np.asarray(out)[0, fmt.block_size : 2 * fmt.block_size]).all()
    assert np.all(np.asarray(out)[0, : fmt.block_size] == 0)


@pytest.mark.parametrize("name", ("mxfp6_e2m3", "nvfp4"))
def test_axis_other_than_last(name):
    fmt = get_format(name)
    x = np.ascontiguousarray(make_tensor(np.float32, fmt.block_size, seed=1).T)  # blocks on 0
    out = rounder(name, 0)(jnp.asarray(x))
    for mode, result in zip(DETERMINISTIC, out, strict=True):
        assert_bitwise_equal(result, reference(x, name, mode, axis=0), f"{name} axis 0 {mode}")
    # the same as blocking the transposed array along its last axis
    assert_bitwise_equal(np.asarray(out[0]).T, rounder(name, -1)(jnp.asarray(x.T))[0])


def blocks_of(magnitudes, dtype, seed: int) -> np.ndarray:
    """make_tensor's shape (6, 103), filled block by block (32 values, the 4th block partial)
    with uniform values times the given magnitudes, zeros after them."""
    rng = np.random.default_rng(seed)
    flat = np.zeros((6, 4 * 32))
    for i, m in enumerate(magnitudes):
        flat[i // 4, 32 * (i % 4) : 32 * (i % 4 + 1)] = rng.uniform(-1, 1, 32) * m
    return flat[:, :103].astype(dtype)


@pytest.mark.parametrize("name", MX_FORMATS)
def test_tiny_and_huge_blocks_float32(name):
    """Blocks whose scale is clamped at 2**-127 or whose values are float32 subnormals (the
    integer scaling path), next to huge ones: still the spec's values, subnormals kept."""
    magnitudes = [1e-30, 1e-39, 1e-44, 3e-36, 1.0, 3.4e38, 1e30, 1e-20, 1e-37]
    x = blocks_of(magnitudes, np.float32, seed=2)
    x[0, 40] = 2.0**-149
    for mode, out in zip(DETERMINISTIC, rounder(name, -1)(jnp.asarray(x)), strict=True):
        assert_bitwise_equal(out, ref_mx(x, name, mode), f"{name} tiny {mode}")
    assert np.any((np.asarray(out) != 0) & (np.abs(np.asarray(out)) < 2.0**-126))


@pytest.mark.parametrize("name", ("mxfp8_e5m2", "mxfp4", "mxint8"))
def test_extreme_blocks_float64(name):
    """float64: shared exponents above 127 (NaN blocks) and below -127 (clamped)."""
    x = blocks_of([1e-300, 1e-45, 1e38, 1e300, 1.0, 1e-310], np.float64, seed=3)
    for mode, out in zip(DETERMINISTIC, rounder(name, -1)(jnp.asarray(x)), strict=True):
        expected = ref_mx(x, name, mode)
        assert_bitwise_equal(out, expected, f"{name} float64 extremes {mode}")
    assert np.isnan(np.asarray(out)[0, 96:]).all()  # 1e300: shared exponent > 127
    # 'down' (the last mode): the 1e-300 block's negatives round away from zero, positives to 0
    np.testing.assert_array_equal(np.asarray(out)[0, :32] != 0, x[0, :32] < 0)


def test_tiny_value_in_large_block_rounds_up():
    """A tiny nonzero element whose scaled value underflows still rounds up in mode 'up'."""
    x = np.zeros((6, 103), np.float32)
    x[0, :2], x[0, 31] = [1e-40, -1e-40], 1e30
    _, _, up, down = (np.asarray(r) for r in rounder("mxfp8_e4m3", -1)(jnp.asarray(x)))
    smallest = 2.0 ** (math.floor(math.log2(1e30)) - 8 - 9)  # X times e4m3's 2**-9
    assert up[0, 0] == np.float32(smallest) and up[0, 1] == 0
    assert down[0, 0] == 0 and down[0, 1] == -np.float32(smallest)


def test_round_to_uses_it():
    x = jnp.asarray(make_tensor(np.float32, 32, seed=0))
    rounded = jax.jit(lambda v: round_to(v, "mxfp6_e3m2"))(x)
    assert_bitwise_equal(rounded, rounder("mxfp6_e3m2", -1)(x)[0])


# --- transformations ------------------------------------------------------------------------------


def test_jit_equals_eager_and_vmap():
    """Eager, jit and vmap over rows agree (MX blocks never cross rows; NVFP4's tensor scale
    would be per row under vmap, so it is left out)."""
    x = jnp.asarray(make_tensor(np.float32, 32, seed=0))
    jitted = rounder("mxfp4", -1)(x)[0]
    assert_bitwise_equal(round_block_scaled(x, "mxfp4"), jitted)
    assert_bitwise_equal(jax.jit(jax.vmap(lambda r: round_block_scaled(r, "mxfp4")))(x), jitted)


# --- quantize / dequantize ------------------------------------------------------------------------


@functools.cache
def quantize_jit(name: str, axis: int):
    return jax.jit(lambda x: quantize(x, name, axis=axis))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_quantize_dequantize_exact(name, dtype):
    fmt = get_format(name)
    x = make_tensor(dtype, fmt.block_size, seed=6)
    q = quantize_jit(name, -1)(jnp.asarray(x))
    assert q.codes.dtype == jnp.uint8 and q.scales.dtype == jnp.uint8
    assert_bitwise_equal(dequantize_jit(q), rounder(name, -1)(jnp.asarray(x))[0], name)
    nblocks = 6 * 4
    expected = math.ceil(x.size * fmt.element_bits / 8) + nblocks + (4 if fmt.tensor_scale else 0)
    assert q.nbytes == expected
    if name == "nvfp4":
        assert q.tensor_scale.dtype == jnp.float32
        amax = x.dtype.type(np.max(np.abs(x[np.isfinite(x)])))
        assert q.tensor_scale == np.float32(1) / np.float32(x.dtype.type(2688) / amax)
        assert q.scales[0, 1] == 0x7F  # NaN block: the E4M3 NaN pattern
    else:
        assert q.tensor_scale is None
        assert q.scales[0, 1] == 255 and q.scales[0, 0] == 0  # NaN; zero block clamped


@pytest.mark.parametrize("name", ("mxfp6_e2m3", "nvfp4"))
def test_packed_sizes_and_partial_groups(name):
    """ceil(n * bits / 8) code bytes for any n (fp6: n padded with zero codes to a multiple of
    4 to pack, trailing padding bytes dropped), one scale byte per block; exact round trips."""
    fmt = get_format(name)
    sizes = (1, 2, 3, 37)
    rng = np.random.default_rng(9)
    xs = [jnp.asarray(rng.standard_normal((2, n)) * 5, jnp.float32) for n in sizes]
    qs, rounded = jax.jit(
        lambda xs: ([quantize(x, name) for x in xs], [round_block_scaled(x, name) for x in xs])
    )(xs)
    decoded = jax.jit(lambda qs: [dequantize(q) for q in qs])(qs)
    for n, q, d, r in zip(sizes, qs, decoded, rounded, strict=True):
        nblocks = 2 * math.ceil(n / fmt.block_size)
        assert q.codes.size == math.ceil(2 * n * fmt.element_bits / 8), n
        assert q.scales.size == nblocks, n
        assert q.nbytes == q.codes.size + nblocks + (4 if fmt.tensor_scale else 0), n
        assert_bitwise_equal(d, r, f"{name} n={n}")


def test_element_codes_are_the_format_bit_patterns():
    """mxfp8_e4m3 codes equal ml_dtypes' float8_e4m3fn bytes of the scaled elements; mxint8 codes
    are the two's complement of k."""
    import ml_dtypes

    x = np.array([1.0, -0.0, 3.0, -448.0 / 2**8, 0.0078125, 1.75, -2.0, 0.5] * 4, np.float32)
    q = quantize_jit("mxfp8_e4m3", -1)(jnp.asarray(x))
    shared = int(q.scales[0]) - 127
    elements = np.ldexp(ref_mx(x, "mxfp8_e4m3").astype(np.float64), -shared)
    expected = elements.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(np.asarray(q.codes), expected)
    qi = quantize_jit("mxint8", -1)(jnp.asarray(x))
    k = np.round(
        np.ldexp(ref_mx(x, "mxint8").astype(np.float64), -(int(qi.scales[0]) - 127)) * 64
    ).astype(np.int8)
    np.testing.assert_array_equal(np.asarray(qi.codes), k.view(np.uint8))


def test_fp4_and_fp6_packing_layout():
    x = jnp.array([0.5, 1.0, -6.0, 3.0, 0.0, -0.5, 4.0, 2.0], jnp.float32)  # amax 6: X = 1
    q4 = quantize_jit("mxfp4", -1)(x)
    codes = [0b0001, 0b0010, 0b1111, 0b0101, 0b0000, 0b1001, 0b0110, 0b0100]
    packed = [codes[i] | (codes[i + 1] << 4) for i in range(0, 8, 2)]
    np.testing.assert_array_equal(np.asarray(q4.codes), packed)
    q6 = quantize_jit("mxfp6_e3m2", -1)(x[:5])  # e3m2, bias 3; amax 6 -> X = 2**(2 - 4)
    scaled = [v * 4 for v in (0.5, 1.0, -6.0, 3.0, 0.0)]  # 2, 4, -24, 12, 0
    six = [(4 << 2) | 0, (5 << 2) | 0, 32 | (7 << 2) | 2, (6 << 2) | 2, 0]
    assert [float(v) for v in scaled] == [2.0, 4.0, -24.0, 12.0, 0.0]
    word = six[0] | six[1] << 6 | six[2] << 12 | six[3] << 18
    expected = [word & 255, (word >> 8) & 255, word >> 16, six[4]]
    np.testing.assert_array_equal(np.asarray(q6.codes), expected)


def test_quantized_array_is_a_pytree():
    x = jnp.asarray(make_tensor(np.float32, 32, seed=0))
    for name, leaves in (("mxfp4", 2), ("nvfp4", 3)):
        q = quantize_jit(name, -1)(x)
        assert isinstance(q, QuantizedArray)
        flat, treedef = jax.tree_util.tree_flatten(q)
        assert len(flat) == leaves
        back = jax.tree_util.tree_unflatten(treedef, flat)
        assert back.shape == q.shape and back.format == q.format and back.axis == q.axis
        assert_bitwise_equal(dequantize_jit(back), rounder(name, -1)(x)[0])
        doubled = jax.tree_util.tree_map(lambda a: a, q)
        assert doubled.nbytes == q.nbytes


# --- random modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("mxfp4", "mxint8", "nvfp4"))
def test_stochastic_is_unbiased_and_random_is_fair(name):
    """N = 4000 copies of one block. Each stochastic result is one of the value's two neighbours
    lo < v < hi, hi with probability p = (v - lo) / (hi - lo); the mean is within 5 standard
    errors (hi - lo) * sqrt(p (1 - p) / N) of v (a false alarm has probability < 1e-5 over the
    test). Mode 'random' picks hi with probability 1/2: share within 5 * sqrt(0.25 / N)."""
    fmt = get_format(name)
    n = 4000
    row = np.random.default_rng(8).uniform(-1, 1, fmt.block_size) * 3.3
    x = np.tile(row, (n, 1)).astype(np.float32)
    lo = ref_mx(x[:1], name, "down")[0] if name != "nvfp4" else ref_nvfp4(x[:1], "down")[0]
    hi = ref_mx(x[:1], name, "up")[0] if name != "nvfp4" else ref_nvfp4(x[:1], "up")[0]
    jx = jnp.asarray(x)
    for mode, key in (("stochastic", 1), ("random", 2)):
        bits = random_bits(jax.random.key(key), x.shape, jnp.float32)
        out = np.asarray(jax.jit(round_block_scaled, static_argnums=(1, 2))(jx, name, mode, bits))
        assert np.all((out == lo) | (out == hi)), mode
        lo, hi = lo.astype(np.float64), hi.astype(np.float64)
        inexact = lo != hi
        assert inexact.sum() >= fmt.block_size // 2
        share_hi = np.mean(out == hi, axis=0)
        if mode == "stochastic":
            v = row.astype(np.float32).astype(np.float64)
            p = np.where(inexact, (v - lo) / np.where(inexact, hi - lo, 1), 0)
            expected = np.where(inexact, v, lo)  # lo == hi: exact, or saturated (mean = lo)
            tolerance = 5 * (hi - lo) * np.sqrt(p * (1 - p) / n) + 1e-12
            mean = out.astype(np.float64).mean(axis=0)
            assert np.all(np.abs(mean - expected) <= tolerance), mode
        else:
            assert np.all(np.abs(share_hi[inexact] - 0.5) <= 5 * np.sqrt(0.25 / n)), mode


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_cause():
    x = jnp.ones(4, jnp.float32)
    with pytest.raises(ValueError, match="not block-scaled"):
        round_block_scaled(x, "bf16")
    with pytest.raises(ValueError, match="needs random_bits"):
        round_block_scaled(x, "mxfp4", "stochastic")
    with pytest.raises(ValueError, match="float32 or float64"):
        round_block_scaled(x.astype(jnp.bfloat16), "mxfp4")
    with pytest.raises(ValueError, match="axis"):
        quantize(x, "mxfp4", axis=1)
