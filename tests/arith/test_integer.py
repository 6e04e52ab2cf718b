"""Tests for dp2ejax.arith.integer: symmetric integer formats with absmax scales.

References, all in NumPy, written independently of the JAX code:

* ``ref_round``: per-group scales found by looping over the groups (tensor, each channel, each
  block, the short last block included) with ``np.max`` or ``np.percentile`` (NumPy's default
  ``method="linear"``), ``scale = clip_at * (1 / qmax)``, then ``np.round`` (ties to even) /
  ``np.trunc`` / ``np.ceil`` / ``np.floor`` of ``clip(x * (1 / scale), -qmax, qmax)``, times
  the scale: the IEEE operations that integer.py's docstring specifies, on the same inputs, so
  results are compared bit for bit (sign of zero included, NaN where NaN), in float64 and
  float32.
* ``ref_operand`` + ``np.einsum`` on int64: the integer codes of a dot operand dotted exactly
  (|sum| < 2**31 here), converted to float64 (exact below 2**53) and multiplied once by the
  product of the two scales.

JAX work is batched into a few compiled functions shared between tests (``functools.cache``):
compiling is most of the cost of these tests.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dp2ejax.arith.integer as integer
from dp2ejax.arith.formats import IntFormat
from dp2ejax.arith.integer import (
    dequantize_int,
    int_dot_general,
    int_scales,
    quantize_int,
    round_int,
)
from dp2ejax.arith.random_bits import random_bits

DIRECTED = {"nearest": np.round, "toward_zero": np.trunc, "up": np.ceil, "down": np.floor}
ALL_MODES = (*DIRECTED, "stochastic", "random")


# --- NumPy references -------------------------------------------------------------------------


def ref_group_scale(group: np.ndarray, fmt: IntFormat):
    """Scale of one group (any shape), in the group's dtype."""
    dtype = group.dtype.type
    if group.size == 0:
        return dtype(1)
    if not np.all(np.isfinite(group)):
        return dtype(np.nan)
    mag = np.abs(group)
    clip_at = mag.max()
    if fmt.percentile is not None:
        p = np.percentile(mag, float(fmt.percentile))  # method="linear", NumPy's default
        clip_at = p if p > 0 else clip_at
    if clip_at == 0:
        return dtype(1)
    scale = dtype(clip_at) * (dtype(1) / dtype(fmt.qmax))
    return max(scale, np.finfo(dtype).tiny)


def ref_scales_full(x: np.ndarray, fmt: IntFormat, axis: int) -> np.ndarray:
    """The scale of every element of x (x's shape)."""
    out = np.empty_like(x)
    if fmt.granularity == "tensor":
        out[...] = ref_group_scale(x, fmt)
        return out
    moved_x, moved_out = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    if fmt.granularity == "channel":
        for i in range(moved_x.shape[0]):
            moved_out[i] = ref_group_scale(moved_x[i], fmt)
        return out
    moved_x, moved_out = np.moveaxis(x, axis, -1), np.moveaxis(out, axis, -1)
    for index in np.ndindex(moved_x.shape[:-1]):
        for start in range(0, moved_x.shape[-1], fmt.block_size):
            stop = start + fmt.block_size
            moved_out[index][start:stop] = ref_group_scale(moved_x[index][start:stop], fmt)
    return out


def ref_round(x: np.ndarray, fmt: IntFormat, mode: str, axis: int) -> np.ndarray:
    scale = ref_scales_full(x, fmt, axis)
    q = DIRECTED[mode](np.clip(x * (1 / scale), -fmt.qmax, fmt.qmax))
    q[q == 0] = 0  # +0
    return q * scale


def group_any(a: np.ndarray, fmt: IntFormat, axis: int) -> np.ndarray:
    """Whether any element of each scale group is true."""
    if fmt.granularity == "tensor":
        return np.array([a.any()])
    moved = np.moveaxis(a, axis, -1)
    if fmt.granularity == "channel":
        return moved.reshape(-1, moved.shape[-1]).any(axis=0)
    return np.stack([moved[..., i: i + fmt.block_size].any(axis=-1)
                     for i in range(0, moved.shape[-1], fmt.block_size)])


def assert_same(actual, expected):
    """Bit for bit: equal values, equal sign of zero, NaN where NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(actual[finite], expected[finite])
    np.testing.assert_array_equal(np.signbit(actual[finite]), np.signbit(expected[finite]))


def make_data(shape=(6, 70), seed=0) -> np.ndarray:
    """Normal values with outliers (2 % of them times 100), an all-zero row 1, an all-zero
    column 5, an all-zero block of 16 (columns 16..31 of the last row) and a row 3 of mostly
    zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x[rng.random(shape) < 0.02] *= 100.0
    x[1] = 0.0
    x[:, 5] = 0.0
    x[-1, 16:32] = 0.0
    x[3, 1:] = 0.0
    return x


# --- round_int --------------------------------------------------------------------------------


GRANULARITIES = ("tensor", "channel", "block")
# Every granularity meets every bit width, both carriers and both axes: (bits, dtype, axis)
# rotate. Percentile 99 clips the outliers; 50 on groups of mostly zeros falls back to the
# absmax.
ROTATION = ((2, np.float64, -1), (4, np.float32, 0), (8, np.float64, 0), (16, np.float32, -1))
REFERENCE_CASES = {
    (granularity, percentile, bits): (
        IntFormat(f"int{bits}", bits, granularity, block_size=16, percentile=percentile),
        dtype, axis, 0 if percentile is None else 1)
    for granularity in GRANULARITIES
    for percentile, rotation in ((None, ROTATION), (99.0, ROTATION[1:2]), (50.0, ROTATION[2:3]))
    for bits, dtype, axis in rotation
}


@functools.cache
def reference_outputs() -> dict:
    """round_int in the four directed modes for every case of REFERENCE_CASES, compiled once
    (one compilation per call shape costs more than the checks)."""
    cases = list(REFERENCE_CASES.values())
    xs = [jnp.asarray(make_data(seed=seed).astype(dtype)) for _, dtype, _, seed in cases]
    outs = jax.jit(lambda xs: [[round_int(x, fmt, mode, axis=axis) for mode in DIRECTED]
                               for x, (fmt, _, axis, _) in zip(xs, cases, strict=True)])(xs)
    return dict(zip(REFERENCE_CASES, outs, strict=True))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("percentile", [None, 99.0, 50.0])
def test_round_int_matches_numpy_reference(granularity, percentile):
    """Bits 2, 4, 8, 16 (percentile: 4 and 8), float32 and float64, channels and blocks (of 16,
    a short last one of 6) along either axis, four directed modes; data with outliers and
    all-zero groups; percentile scales from np.percentile (method "linear")."""
    outputs = reference_outputs()
    for key, (fmt, dtype, axis, seed) in REFERENCE_CASES.items():
        if key[:2] != (granularity, percentile):
            continue
        x = make_data(seed=seed).astype(dtype)
        for mode, out in zip(DIRECTED, outputs[key], strict=True):
            assert_same(out, ref_round(x, fmt, mode, axis))
        # The absmax (or percentile) element of every group lands on +-qmax * scale: each
        # group has its own scale, the outliers of other groups notwithstanding.
        nearest = np.abs(np.asarray(outputs[key][0]))
        top = fmt.qmax * ref_scales_full(x, fmt, axis)
        assert np.all(nearest <= top)
        np.testing.assert_array_equal(group_any(nearest == top, fmt, axis),
                                      group_any(x != 0, fmt, axis))
        if percentile == 99.0:
            assert np.max(nearest) < np.max(np.abs(x))  # the outliers are clipped


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_scales_shape_and_percentile_match_numpy(granularity):
    """Scales as documented (shape; percentile = np.percentile(|x|, p), method "linear", bit for
    bit; all-zero groups 1)."""
    x = make_data((5, 7, 40), seed=1)
    fmt = IntFormat("t", 8, granularity, axis=1, block_size=3, percentile=99.5)
    scales = np.asarray(int_scales(jnp.asarray(x), fmt))
    mag = np.abs(x)
    if granularity == "tensor":
        assert scales.shape == (1, 1, 1)
        expected = np.percentile(mag, 99.5, keepdims=True) * (1 / 127)
    elif granularity == "channel":
        assert scales.shape == (1, 7, 1)
        expected = np.percentile(mag, 99.5, axis=(0, 2), keepdims=True) * (1 / 127)
    else:
        assert scales.shape == (5, 3, 40)  # ceil(7 / 3) blocks along axis 1: sizes 3, 3, 1
        expected = np.concatenate([
            np.percentile(mag[:, 0:3], 99.5, axis=1, keepdims=True),
            np.percentile(mag[:, 3:6], 99.5, axis=1, keepdims=True),
            mag[:, 6:7]], axis=1) * (1 / 127)
        # Zero groups (row 1 is zero) fall back to the absmax, 0, hence scale 1.
        absmax = np.concatenate([mag[:, 0:3].max(1, keepdims=True),
                                 mag[:, 3:6].max(1, keepdims=True), mag[:, 6:7]], axis=1)
        absmax = absmax * (1 / 127)
        expected = np.where(expected > 0, expected, absmax)
    expected = np.where(expected == 0, 1.0, expected)
    np.testing.assert_array_equal(scales, expected)


def test_all_zero_groups_and_empty_and_scalar():
    x = np.zeros((3, 8))
    x[0, 0] = 2.0
    for fmt in ("int8", "int4_channel", "int8_block4"):
        scales = np.asarray(int_scales(jnp.asarray(x), fmt, axis=0))
        out = np.asarray(round_int(jnp.asarray(x), fmt, axis=0))
        assert not np.any(np.isnan(scales)) and not np.any(np.isnan(out))
        np.testing.assert_array_equal(out, x)  # zeros stay (+)zeros, 2 is qmax * scale
        assert not np.any(np.signbit(out))
    np.testing.assert_array_equal(int_scales(jnp.zeros((2, 3)), "int8_channel"), np.ones((1, 3)))
    assert round_int(jnp.zeros((0, 5)), "int8_block4").shape == (0, 5)
    assert int_scales(jnp.zeros((3, 0)), "int8_block4").shape == (3, 0)
    assert int_scales(jnp.zeros((3, 5)), "int8_block4").shape == (3, 2)
    codes, scales = quantize_int(jnp.float64(-3.3), "int4_channel")  # 0-d: its own scale
    assert codes.shape == scales.shape == () and int(codes) == -7
    assert float(scales) == -(-3.3 * (1 / 7))
    assert float(round_int(jnp.float64(0.0), "int4")) == 0.0


NON_FINITE_FORMATS = ("int8", "int8_channel", "int4_block8",
                      IntFormat("p", 8, "channel", percentile=90.0))
NON_FINITE_VALUES = (np.nan, np.inf, -np.inf)


def non_finite_data() -> np.ndarray:
    """Three copies of the test data with x[2, 9] = NaN, inf, -inf."""
    x = np.stack([make_data(seed=3)] * 3)
    x[:, 2, 9] = NON_FINITE_VALUES
    return x


@functools.cache
def non_finite_outputs() -> list:
    def one(x, fmt):
        codes, scales = quantize_int(x, fmt, axis=0)
        return (round_int(x, fmt, axis=0), codes, scales,
                dequantize_int(codes, scales, fmt, axis=0))

    return jax.jit(lambda xs: [jax.vmap(lambda x, f=fmt: one(x, f))(xs)
                               for fmt in NON_FINITE_FORMATS])(jnp.asarray(non_finite_data()))


@pytest.mark.parametrize("fmt_index", range(len(NON_FINITE_FORMATS)))
@pytest.mark.parametrize("value_index", range(len(NON_FINITE_VALUES)))
def test_non_finite_values_poison_their_group_only(fmt_index, value_index):
    """A NaN or infinity makes its whole scale group NaN (no finite wrong value, even where the
    percentile would clip it) and leaves the other groups as if it were not there."""
    fmt = integer._int_format(NON_FINITE_FORMATS[fmt_index], "fmt")
    x = non_finite_data()[value_index]
    out, codes, scales, dequantized = (np.asarray(a[value_index])
                                       for a in non_finite_outputs()[fmt_index])
    assert_same(out, ref_round(x, fmt, "nearest", 0))
    # The tensor's one group, or the channel (row 2 with axis 0) or the block (rows 0..5 of
    # column 9) holding it.
    poisoned = np.zeros(x.shape, bool)
    poisoned[{"tensor": np.s_[:, :], "channel": np.s_[2, :], "block": np.s_[:, 9]}[
        fmt.granularity]] = True
    np.testing.assert_array_equal(np.isnan(out), poisoned)
    assert np.any(np.isnan(scales))
    np.testing.assert_array_equal(codes[np.isnan(out)], 0)
    assert_same(dequantized, out)


# --- quantize / dequantize --------------------------------------------------------------------


QUANTIZE_FORMATS = (IntFormat("int2", 2), IntFormat("int4_channel", 4, "channel"),
                    IntFormat("int16_block5", 16, "block", block_size=5),
                    IntFormat("p", 12, "block", block_size=8, percentile=95.0))
QUANTIZE_JOBS = [(fmt, axis, mode) for fmt in QUANTIZE_FORMATS
                 for axis, mode in ((0, "nearest"), (0, "up"), (-1, "stochastic"), (0, "random"))]


@functools.cache
def quantize_outputs() -> list:
    x = jnp.asarray(make_data(seed=4))
    bits = random_bits(jax.random.key(7), x.shape, x.dtype)

    @jax.jit
    def run(x, bits):
        out = []
        for fmt, axis, mode in QUANTIZE_JOBS:
            codes, scales = quantize_int(x, fmt, axis, mode, bits)
            out.append((codes, dequantize_int(codes, scales, fmt, axis),
                        round_int(x, fmt, mode, bits, axis=axis)))
        return out

    return run(x, bits)


@pytest.mark.parametrize("fmt", QUANTIZE_FORMATS, ids=lambda f: f.name)
def test_quantize_dequantize_is_round_int(fmt):
    """Deterministic and random modes: codes of the documented dtype within [-qmax, qmax] (and
    reaching it), and codes * scales is round_int bit for bit."""
    results = [r for job, r in zip(QUANTIZE_JOBS, quantize_outputs(), strict=True)
               if job[0] == fmt]
    assert len(results) == 4
    for codes, dequantized, rounded in results:
        assert codes.dtype == (jnp.int8 if fmt.bits <= 8 else jnp.int16)
        assert codes.shape == (6, 70)
        c = np.asarray(codes)
        assert c.min() >= -fmt.qmax and c.max() <= fmt.qmax
        assert c.max() == fmt.qmax or c.min() == -fmt.qmax  # the range is used
        assert_same(dequantized, rounded)


def test_quantize_dequantize_eagerly():
    """The public functions compile their own kernels when called outside jit."""
    x = jnp.asarray(make_data(seed=4))
    codes, scales = quantize_int(x, "int8_block16", 0)
    assert codes.dtype == jnp.int8 and scales.shape == (1, 70)
    assert_same(dequantize_int(codes, scales, "int8_block16", 0),
                round_int(x, "int8_block16", axis=0))


# --- directed and random modes ----------------------------------------------------------------


def test_directed_modes_bracket_and_random_modes_pick_a_neighbour():
    """With a power-of-two scale every quotient and product is exact, so the brackets are exact:
    down <= x <= up, up - down in {0, scale}, |toward_zero| <= |x|, |nearest - x| <= scale / 2,
    and the random modes return down or up (x itself when it is representable)."""
    rng = np.random.default_rng(5)
    scale = 2.0**-3
    x = rng.uniform(-127, 127, (64, 50)) * scale
    x[0, 0] = 127 * scale  # absmax: scale = 2**-3 exactly
    x[1, :10] = np.arange(10) * scale  # representable values
    x[2, :10] = (np.arange(10) + 0.5) * scale  # ties
    bits = random_bits(jax.random.key(1), x.shape, x.dtype)
    down, up, tz, near, stochastic, random = jax.jit(lambda x, bits: [
        round_int(x, "int8", m, bits if m in ("stochastic", "random") else None)
        for m in ("down", "up", "toward_zero", "nearest", "stochastic", "random")])(
        jnp.asarray(x), bits)
    down, up, tz, near = (np.asarray(a) for a in (down, up, tz, near))
    assert np.all(down <= x) and np.all(x <= up)
    assert set(np.unique(up - down)) <= {0.0, scale}
    np.testing.assert_array_equal(up == down, x / scale == np.round(x / scale))
    assert np.all(np.abs(tz) <= np.abs(x)) and np.all(np.abs(near - x) <= scale / 2)
    np.testing.assert_array_equal(near[2, :10], np.round(np.arange(10) + 0.5) * scale)  # even
    for out in (np.asarray(stochastic), np.asarray(random)):
        assert np.all((out == down) | (out == up))
        np.testing.assert_array_equal(out[1, :10], x[1, :10])
        assert np.any(out != down) and np.any(out != up)  # both neighbours occur


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stochastic_rounding_is_unbiased(dtype):
    """N = 20000 independent roundings of each of 8 values x_j = (i_j + f_j) * scale: the count
    of rounding up is Binomial(N, f_j); it must lie within 5 standard deviations
    sqrt(N f (1 - f)) of N f (a false alarm has probability < 1e-6 per value). Random mode goes
    up with probability 1/2 for the non-representable values."""
    n = 20000
    fractions = np.array([0.0, 0.5, 0.25, 0.75, 0.1, 0.9, 0.01, 2.0**-10])
    ints = np.array([0, 3, -5, 2, -1, 6, 0, -4])
    scale = 2.0**-2
    x = np.broadcast_to((ints + np.sign(ints + 0.5) * fractions) * scale, (n, 8)).astype(dtype)
    x[0, 0] = 7 * scale  # absmax: int4 scale 2**-2 exactly
    bits = random_bits(jax.random.key(11), x.shape, x.dtype)
    down, stochastic, random = jax.jit(lambda x, bits: (
        round_int(x, "int4", "toward_zero"), round_int(x, "int4", "stochastic", bits),
        round_int(x, "int4", "random", bits)))(jnp.asarray(x), bits)
    down = np.asarray(down)[1:]
    for out, mode, p_up in ((stochastic, "stochastic", fractions),
                            (random, "random", np.where(fractions > 0, 0.5, 0))):
        out = np.asarray(out)[1:]
        away = np.abs(out) > np.abs(down)  # away from zero = up in magnitude
        count = away.sum(axis=0)
        expected = (n - 1) * p_up
        sigma = np.sqrt((n - 1) * p_up * (1 - p_up))
        assert np.all(np.abs(count - expected) <= 5 * sigma + 1e-9), (mode, count, expected)
        if mode == "stochastic":
            mean = out.mean(axis=0, dtype=np.float64)
            tol = 5 * scale * np.sqrt(fractions * (1 - fractions) / (n - 1)) + 1e-12
            assert np.all(np.abs(mean - x[1:].mean(axis=0, dtype=np.float64)) <= tol)


# --- int_dot_general --------------------------------------------------------------------------


def ref_operand(x: np.ndarray, fmt: IntFormat, contracting: tuple[int, ...]):
    """Codes (int64, x's shape) and scales (x's shape, constant where the format shares them)
    for a dot operand: channel groups are the non-contracting indices, blocks run along the
    (single) contracting axis."""
    x = np.asarray(x)
    scale = np.empty_like(x)
    if fmt.granularity == "tensor":
        scale[...] = ref_group_scale(x, fmt)
    elif fmt.granularity == "channel":
        free = [a for a in range(x.ndim) if a not in contracting]
        for index in np.ndindex(*(x.shape[a] for a in free)):
            where = [slice(None)] * x.ndim
            for a, i in zip(free, index, strict=True):
                where[a] = i
            scale[tuple(where)] = ref_group_scale(x[tuple(where)], fmt)
    else:
        (axis,) = contracting
        scale = ref_scales_full(x, fmt, axis)
    codes = np.round(np.clip(x * (1 / scale), -fmt.qmax, fmt.qmax)).astype(np.int64)
    return codes, scale


# (lhs shape, rhs shape, dimension_numbers, einsum of lhs, rhs -> output)
DOT_CASES = [
    ((5, 40), (40, 3), (((1,), (0,)), ((), ())), "mk,kn->mn"),
    ((2, 4, 33), (2, 33, 3), (((2,), (1,)), ((0,), (0,))), "bmk,bkn->bmn"),
    ((4, 2, 33), (3, 33, 2), (((2,), (1,)), ((1,), (2,))), "mbk,nkb->bmn"),
    ((4, 6, 5), (5, 6, 3), (((1, 2), (1, 0)), ((), ())), "mkj,jkn->mn"),
]


def _outer_scales(spec, lhs_scale, rhs_scale, dims):
    """The product lhs_scale * rhs_scale in the output layout (each is constant along its
    contracting axes: take index 0 there). One multiply per element."""
    (lc, rc), _ = dims
    left, right = spec.split("->")[0].split(",")
    sl = lhs_scale[tuple(0 if a in lc else slice(None) for a in range(lhs_scale.ndim))]
    sr = rhs_scale[tuple(0 if a in rc else slice(None) for a in range(rhs_scale.ndim))]
    left = "".join(c for a, c in enumerate(left) if a not in lc)
    right = "".join(c for a, c in enumerate(right) if a not in rc)
    return np.einsum(f"{left},{right}->{spec.split('->')[1]}", sl, sr)


DOT_FORMATS = [("int8", "int8"), ("int8_channel", "int4_channel"), ("int4", "int8_channel"),
               (IntFormat("p", 6, "channel", percentile=90.0), "int2")]
# Each layout with two pairs of formats, each pair on two layouts.
EXACT_JOBS = [(case, DOT_FORMATS[(case + shift) % 4]) for case in range(4) for shift in (0, 1)]
BLOCK_JOBS = [
    (0, ("int8_block8", "int8_block8")),
    (0, ("int8_block32", "int4_block32")),
    (1, ("int4_block16", "int8_channel")),
    (2, ("int8", IntFormat("p", 8, "block", block_size=8, percentile=75.0))),
]
MATMUL_FORMATS = ("int8", "int4_channel", "int8_block16")


def exact_operands(case: int):
    lhs_shape, rhs_shape, _, _ = DOT_CASES[case]
    rng = np.random.default_rng(case)
    lhs, rhs = rng.standard_normal(lhs_shape), rng.standard_normal(rhs_shape)
    lhs[0] *= 50.0  # an outlier row
    return lhs, rhs


def block_operands(case: int):
    lhs_shape, rhs_shape, _, _ = DOT_CASES[case]
    rng = np.random.default_rng(10 + case)
    lhs, rhs = rng.standard_normal(lhs_shape), rng.standard_normal(rhs_shape)
    lhs[..., :8] *= 30.0  # one loud block
    return lhs, rhs


def matmul_operands():
    rng = np.random.default_rng(20)
    a, b = rng.standard_normal((7, 50)), rng.standard_normal((50, 9))
    a[:, 3] *= 40.0
    return a, b


@functools.cache
def dot_outputs() -> dict:
    """Every int_dot_general (and round_int) result of the three tests below, compiled once."""
    jobs = {}
    for case, formats in EXACT_JOBS:
        jobs["exact", case, formats] = (*exact_operands(case), DOT_CASES[case][2], formats)
    for case, formats in BLOCK_JOBS:
        jobs["block", case, formats] = (*block_operands(case), DOT_CASES[case][2], formats)
    for fmt in MATMUL_FORMATS:
        jobs["matmul", fmt] = (*matmul_operands(), (((1,), (0,)), ((), ())), (fmt, fmt))

    def run(operands):
        out = []
        for key, (lhs, rhs) in zip(jobs, operands, strict=True):
            dims, formats = jobs[key][2:]
            product = int_dot_general(lhs, rhs, dims, *formats)
            if key[0] == "matmul":  # per-row / per-column channels, or blocks along k
                channel = "channel" in key[1]
                product = (product, round_int(lhs, key[1], axis=0 if channel else 1),
                           round_int(rhs, key[1], axis=1 if channel else 0))
            out.append(product)
        return out

    operands = [(jnp.asarray(job[0]), jnp.asarray(job[1])) for job in jobs.values()]
    return dict(zip(jobs, jax.jit(run)(operands), strict=True))


@pytest.mark.parametrize(("case", "formats"), EXACT_JOBS)
def test_int_dot_general_is_exact_integer_arithmetic(case, formats):
    """Bit for bit against the exact integer dot: float64(sum of int64 products) times
    (lhs_scale * rhs_scale). Both sides make the same two IEEE roundings (the scale product,
    then the product with the exactly converted integer), so the results are identical."""
    _, _, dims, spec = DOT_CASES[case]
    lhs, rhs = exact_operands(case)
    fmts = [integer._int_format(f, "fmt") for f in formats]
    out = np.asarray(dot_outputs()["exact", case, formats])
    cl, sl = ref_operand(lhs, fmts[0], dims[0][0])
    cr, sr = ref_operand(rhs, fmts[1], dims[0][1])
    acc = np.einsum(spec, cl, cr)  # int64: exact
    assert acc.dtype == np.int64 and np.abs(acc).max() < 2**31
    expected = acc.astype(np.float64) * _outer_scales(spec, sl, sr, dims)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)
    # The same numbers as a float matmul of the fake-quantized values, up to float rounding.
    np.testing.assert_allclose(out, np.einsum(spec, cl * sl, cr * sr), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("case", "formats"), BLOCK_JOBS)
def test_int_dot_general_blocks(case, formats):
    """Blocks along the contraction (40 = 5 * 8 or 32 + 8, 33 = 4 * 8 + 1 or 2 * 16 + 1: short
    last blocks): each block's exact integer partial sum times the product of its two block
    scales (the same two roundings on both sides), these terms added in block order in float64:
    bit for bit. And the sum is within the recursive-summation bound
    (blocks - 1) * eps * sum |term| + eps * |sum| of the exact (math.fsum) sum of the terms."""
    _, _, dims, spec = DOT_CASES[case]
    lhs, rhs = block_operands(case)
    fmts = [integer._int_format(f, "fmt") for f in formats]
    out = np.asarray(dot_outputs()["block", case, formats])
    (lc,), (rc,) = dims[0]
    cl, sl = ref_operand(lhs, fmts[0], (lc,))
    cr, sr = ref_operand(rhs, fmts[1], (rc,))
    block = next(f.block_size for f in fmts if f.granularity == "block")
    k = lhs.shape[lc]
    terms = []
    for start in range(0, k, block):
        take_l = np.take(cl, range(start, min(start + block, k)), axis=lc)
        take_r = np.take(cr, range(start, min(start + block, k)), axis=rc)
        acc = np.einsum(spec, take_l, take_r)
        assert np.abs(acc).max() < 2**31
        scale_l = np.take(sl, range(start, start + 1), axis=lc)
        scale_r = np.take(sr, range(start, start + 1), axis=rc)
        terms.append(acc.astype(np.float64) * _outer_scales(spec, scale_l, scale_r, dims))
    in_order = terms[0]
    for term in terms[1:]:
        in_order = in_order + term
    np.testing.assert_array_equal(out, in_order)
    terms = np.stack(terms)
    exact = np.vectorize(lambda *t: math.fsum(t))(*terms)
    eps = np.finfo(np.float64).eps
    bound = (len(terms) - 1) * eps * np.abs(terms).sum(0) + eps * np.abs(exact)
    assert np.all(np.abs(out - exact) <= bound)
    assert not np.allclose(out, np.einsum(spec, lhs, rhs), rtol=1e-6)  # it did quantize


@pytest.mark.parametrize("fmt", MATMUL_FORMATS)
def test_int_dot_general_equals_float_matmul_of_fake_quantized_values(fmt):
    """round_int with per-row (lhs, axis 0) and per-column (rhs, axis 1) channels, or blocks
    along the contraction, gives the values int_dot_general multiplies; their float64 matmul
    differs only by rounding: |diff| <= (k + 3) * eps * (|A| @ |B|) (k products and sums, the
    fake-quantized values rounded once each, the rescale)."""
    a, b = matmul_operands()
    out, fa, fb = (np.asarray(v) for v in dot_outputs()["matmul", fmt])
    bound = (50 + 3) * np.finfo(np.float64).eps * (np.abs(fa) @ np.abs(fb))
    assert np.all(np.abs(out - fa @ fb) <= bound)
    assert np.max(np.abs(out - a @ b)) > 1e-4  # quantisation error is visible, rounding is not


def test_int_dot_general_float32_and_preferred_type():
    rng = np.random.default_rng(21)
    a, b = rng.standard_normal((4, 20)), rng.standard_normal((20, 3))
    dims = (((1,), (0,)), ((), ()))
    out32 = int_dot_general(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), dims,
                            "int8", "int8")
    out64 = int_dot_general(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), dims,
                            "int8", "int8", preferred_element_type=jnp.float64)
    assert out32.dtype == jnp.float32 and out64.dtype == jnp.float64
    # Same float32 scales and codes; only the rescale's two float32 roundings differ.
    np.testing.assert_allclose(out32, out64, rtol=2.5 * 2.0**-24, atol=0)


def test_int_dot_general_widens_to_int64_or_refuses():
    """int16 codes: 32767**2 * 8 > 2**31 - 1, so int32 could overflow. With x64 on the codes
    accumulate exactly in int64; without, a ValueError says why."""
    a = np.ones((3, 8))
    a[1, ::2] = -0.75
    b = np.ones((8, 2))
    b[:, 1] = 0.5
    dims = (((1,), (0,)), ((), ()))
    fmt = integer._int_format("int16", "fmt")
    out = np.asarray(int_dot_general(jnp.asarray(a), jnp.asarray(b), dims, fmt, fmt))
    cl, sl = ref_operand(a, fmt, (1,))
    cr, sr = ref_operand(b, fmt, (0,))
    acc = cl @ cr
    assert np.abs(acc).max() > 2**31  # would have overflowed int32
    np.testing.assert_array_equal(out, acc.astype(np.float64) * (sl[0, 0] * sr[0, 0]))
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="int32 accumulation .* can overflow"):
            int_dot_general(jnp.ones((3, 8), jnp.float32), jnp.ones((8, 2), jnp.float32), dims,
                            "int16", "int16")
        small = int_dot_general(jnp.ones((3, 8), jnp.float32), jnp.ones((8, 2), jnp.float32),
                                dims, "int8", "int8")
        np.testing.assert_array_equal(small, np.full((3, 2), 8.0, np.float32))


def test_int_dot_general_nan_reaches_its_scale_group():
    a, b = np.ones((3, 4)), np.ones((4, 2))
    a[1, 2] = np.nan
    dims = (((1,), (0,)), ((), ()))
    per_row = np.asarray(int_dot_general(jnp.asarray(a), jnp.asarray(b), dims, "int8_channel",
                                         "int8_channel"))
    np.testing.assert_array_equal(np.isnan(per_row), [[False] * 2, [True] * 2, [False] * 2])
    r = 1 / 127  # scale of a row or column of ones; the codes are all 127
    np.testing.assert_array_equal(per_row[[0, 2]], 4 * 127 * 127 * (r * r))
    assert np.all(np.isnan(int_dot_general(jnp.asarray(a), jnp.asarray(b), dims, "int8",
                                           "int8")))


# --- transformations and errors ---------------------------------------------------------------


def test_jit_and_vmap_agree_with_eager():
    x = jnp.asarray(make_data(seed=30))
    bits = random_bits(jax.random.key(3), x.shape, x.dtype)
    jitted = jax.jit(round_int, static_argnums=(1, 2), static_argnames=("axis",))
    for fmt, mode in (("int4_block16", "stochastic"), ("int8_channel", "nearest")):
        assert_same(jitted(x, fmt, mode, bits, axis=0), round_int(x, fmt, mode, bits, axis=0))
    # vmap over rows with a per-tensor format = a per-row scale.
    rows = jax.vmap(lambda r: round_int(r, "int8"))(x)
    assert_same(rows, round_int(x, "int8_channel", axis=0))
    dot = jax.jit(int_dot_general, static_argnums=(2, 3, 4))
    dims = (((1,), (0,)), ((), ()))
    w = x.T[:, :5]
    assert_same(dot(x, w, dims, "int8_block8", "int8_block8"),
                int_dot_general(x, w, dims, "int8_block8", "int8_block8"))


def test_bad_arguments_are_named():
    x = jnp.ones((2, 3))
    dims = (((1,), (0,)), ((), ()))
    with pytest.raises(ValueError, match="lhs must be a float32 or float64"):
        int_dot_general(jnp.ones((2, 3), jnp.int32), x.T, dims, "int8", "int8")
    with pytest.raises(ValueError, match="rhs must be a float32 or float64"):
        int_dot_general(x, jnp.ones((3, 2), jnp.bfloat16), dims, "int8", "int8")
    with pytest.raises(ValueError, match="rhs_fmt must be an integer format"):
        int_dot_general(x, x.T, dims, "int8", "bf16")
    with pytest.raises(ValueError, match="lhs_fmt: unknown format"):
        int_dot_general(x, x.T, dims, "int99x", "int8")
    with pytest.raises(ValueError, match="different block sizes"):
        int_dot_general(x, x.T, dims, "int8_block2", "int8_block4")
    with pytest.raises(ValueError, match="do not fit"):
        int_dot_general(x, x, dims, "int8", "int8")
    with pytest.raises(ValueError, match="preferred_element_type"):
        int_dot_general(x, x.T, dims, "int8", "int8", preferred_element_type=jnp.float16)
    with pytest.raises(ValueError, match="x must be a float32"):
        round_int(jnp.ones(3, jnp.float16), "int8")
    with pytest.raises(ValueError, match="unknown rounding mode"):
        round_int(x, "int8", "sideways")
    with pytest.raises(ValueError, match="needs random_bits"):
        round_int(x, "int8", "stochastic")
    with pytest.raises(ValueError, match="random_bits must be"):
        round_int(x, "int8", "random", jnp.zeros((2, 3), jnp.uint32))
    with pytest.raises(ValueError, match="axis must be an int"):
        round_int(x, "int8_channel", axis=2)
    with pytest.raises(ValueError, match="fmt must be an integer format"):
        quantize_int(x, "fp8_e4m3")

