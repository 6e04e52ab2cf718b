"""Tests for dp2ejax.arith.rounding.round_to.

Two independent references:

* ``ml_dtypes`` / NumPy casts for round-to-nearest-even into the formats they implement. They
  are compared bit for bit (uint views; any NaN equals any NaN).
* ``reference_round`` below: |x| / quantum is an exact power-of-two scaling in float64,
  ``np.rint`` / ``np.floor`` / ``np.ceil`` round it to an integer (exactly, ties to even), and
  times quantum is exact again. It covers every deterministic mode and any format, so formats
  without an ml_dtypes type (tf32, customs) are checked bit for bit too.

Compiled functions are shared: ``round_all`` runs one jitted function per (carrier dtype,
format, saturate) that returns all six modes, always on chunks of the same length.
"""

import fractions
import functools
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp2ejax.arith import (
    FORMATS,
    ROUNDING_MODES,
    FloatFormat,
    carrier_format,
    get_format,
    round_to,
)

DETERMINISTIC_MODES = ("nearest", "toward_zero", "up", "down")
RANDOM_MODES = ("stochastic", "random")
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

# Custom formats. The first two have ml_dtypes types; the others exercise code paths the
# registry formats do not reach.
IEEE_E4M3 = FloatFormat("ieee_e4m3", 4, 3)  # ml_dtypes.float8_e4m3 (with infinities, max 240)
E3M4 = get_format("e3m4")  # ml_dtypes.float8_e3m4
NOSUB = FloatFormat("e5m2_nosub", 5, 2, has_subnormals=False)  # flush to zero below 2**-14
# Quantum inside the carrier's subnormal range, so that round-to-nearest takes the general
# (integer) kernel instead of the two-branch fast one: on float32 ...
TINY_F32 = FloatFormat("e7m4_b124", 7, 4, bias=124)  # 2**-127 .. 7.75
# ... and on float64.
TINY_F64 = FloatFormat("e10m4_b1020", 10, 4, bias=1020)  # 2**-1023 .. 7.75

# Formats with an ml_dtypes (or NumPy) type: the reference for round to nearest.
ML_TYPES = {
    FORMATS["fp32"]: np.float32,
    FORMATS["bf16"]: ml_dtypes.bfloat16,
    FORMATS["fp16"]: np.float16,
    FORMATS["fp8_e4m3"]: ml_dtypes.float8_e4m3fn,
    FORMATS["fp8_e5m2"]: ml_dtypes.float8_e5m2,
    FORMATS["fp6_e3m2"]: ml_dtypes.float6_e3m2fn,
    FORMATS["fp6_e2m3"]: ml_dtypes.float6_e2m3fn,
    FORMATS["fp4_e2m1"]: ml_dtypes.float4_e2m1fn,
    IEEE_E4M3: ml_dtypes.float8_e4m3,
    E3M4: ml_dtypes.float8_e3m4,
}
SMALL_ML_FORMATS = [f for f in ML_TYPES if f.total_bits <= 16]
CUSTOM_FORMATS = [FORMATS["tf32"], NOSUB, TINY_F32, TINY_F64]

CARRIERS = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


def combos(*carrier_names, formats=None):
    """(carrier dtype, format) pairs where the format fits."""
    formats = list(ML_TYPES) + CUSTOM_FORMATS + [FORMATS["fp64"]] if formats is None else formats
    return [
        pytest.param(CARRIERS[c], f, id=f"{c}-{f.name}")
        for c in carrier_names
        for f in formats
        if f.fits_in(CARRIERS[c])
    ]


# --- helpers --------------------------------------------------------------------------------


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(UINT[a.dtype.itemsize])


def same_bits(actual, expected) -> np.ndarray:
    """Elementwise: identical bit patterns, or both NaN (of any sign and payload)."""
    actual = np.asarray(actual)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.asarray(expected).astype(actual.dtype)
        both_nan = np.isnan(actual.astype(np.float64)) & np.isnan(expected.astype(np.float64))
    return (_bits(actual) == _bits(expected)) | both_nan


def assert_same_bits(actual, expected, x, what=""):
    same = same_bits(actual, expected)
    if not same.all():
        bad = np.flatnonzero(~same.reshape(-1))[:8]
        flat = [np.asarray(a).reshape(-1) for a in (x, actual, expected)]
        examples = "; ".join(
            f"x={float(flat[0][i])!r}: got {float(flat[1][i])!r}, want {float(flat[2][i])!r}"
            for i in bad
        )
        raise AssertionError(f"{what}: {(~same).sum()} of {same.size} differ. {examples}")


def cast(x: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dtype)


def ml_round(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Round to nearest with an ml_dtypes/NumPy cast, back in x's dtype."""
    return cast(cast(x, ML_TYPES[fmt]), x.dtype)


def reference_round(x, fmt: FloatFormat, mode: str, saturate: bool = False) -> np.ndarray:
    """Independent float64 reference for the deterministic modes, with the overflow, infinity
    and NaN rules of round_to's docstring. Exact: see the module docstring."""
    x = np.asarray(x).astype(np.float64)
    a = np.abs(x)
    finite = np.isfinite(a)
    _, e = np.frexp(np.where(finite & (a > 0), a, 1.0))
    e = e.astype(np.int64) - 1  # floor(log2 |x|)
    if fmt.has_subnormals:
        log2_quantum = np.maximum(e, fmt.min_exponent) - fmt.mantissa_bits
    else:
        log2_quantum = np.where(e >= fmt.min_exponent, e - fmt.mantissa_bits, fmt.min_exponent)
    quantum = np.ldexp(1.0, log2_quantum)
    scaled = np.where(finite, a, 0.0) / quantum
    negative = np.signbit(x)
    if mode == "nearest":
        steps = np.rint(scaled)
    elif mode == "toward_zero":
        steps = np.floor(scaled)
    elif mode == "up":
        steps = np.where(negative, np.floor(scaled), np.ceil(scaled))
    elif mode == "down":
        steps = np.where(negative, np.ceil(scaled), np.floor(scaled))
    else:
        raise ValueError(mode)
    with np.errstate(over="ignore"):
        magnitude = steps * quantum
    shrinks = {"nearest": False, "toward_zero": True, "up": negative, "down": ~negative}[mode]
    saturating = saturate or fmt.overflow == "saturate"
    big = {"inf": np.inf, "nan": np.nan, "saturate": fmt.max_finite}[fmt.overflow]
    overflow = fmt.max_finite if saturating else np.where(shrinks, fmt.max_finite, big)
    magnitude = np.where(magnitude > fmt.max_finite, overflow, magnitude)
    if saturate:
        infinite = fmt.max_finite
    elif fmt.has_inf:
        infinite = np.inf
    else:
        infinite = big
    magnitude = np.where(np.isinf(a), infinite, magnitude)
    return np.where(np.isnan(x), np.nan, np.copysign(magnitude, x))


@functools.cache
def format_values(fmt: FloatFormat) -> np.ndarray:
    """All finite values of a format of at most 19 bits, sorted, one zero; decoded from the
    fields (test_format_values_match_ml_dtypes checks this against ml_dtypes)."""
    e_bits, m_bits, bias = fmt.exponent_bits, fmt.mantissa_bits, fmt.exponent_bias
    field = np.arange(2**e_bits)[:, None]
    fraction = np.arange(2**m_bits)[None, :]
    valid = np.ones((2**e_bits, 2**m_bits), bool)
    if fmt.has_inf:
        valid[-1, :] = False
    elif fmt.has_nan:
        valid[-1, -1 if m_bits else slice(None)] = False
    subnormal = np.ldexp(fraction.astype(np.float64), 1 - bias - m_bits)
    if not fmt.has_subnormals:
        subnormal = np.zeros_like(subnormal)
    normal = np.ldexp((2**m_bits + fraction).astype(np.float64), field - bias - m_bits)
    positive = np.where(field == 0, subnormal, normal)[valid]
    return np.unique(np.concatenate([-positive, positive]))


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


CHUNK = 1 << 17  # every call of a compiled rounder has this length: one compilation each


@functools.cache
def _rounder(dtype: np.dtype, fmt: FloatFormat, saturate: bool):
    def all_modes(x, key):
        return tuple(round_to(x, fmt, mode, key, saturate=saturate) for mode in ROUNDING_MODES)

    return jax.jit(all_modes)


def round_all(x, fmt: FloatFormat, *, saturate: bool = False, seed: int = 0) -> dict:
    """{mode: round_to(x, fmt, mode)} for all six modes, through the shared compiled rounder."""
    x = np.asarray(x)
    flat = x.reshape(-1)
    rounder = _rounder(x.dtype, fmt, saturate)
    key = jax.random.key(seed)
    pieces = {mode: [] for mode in ROUNDING_MODES}
    for i, start in enumerate(range(0, max(flat.size, 1), CHUNK)):
        chunk = flat[start : start + CHUNK]
        padded = np.zeros(CHUNK, x.dtype)
        padded[: chunk.size] = chunk
        for mode, result in zip(
            ROUNDING_MODES, rounder(padded, jax.random.fold_in(key, i)), strict=True
        ):
            assert result.dtype == x.dtype
            pieces[mode].append(np.asarray(result)[: chunk.size])
    return {mode: np.concatenate(p).reshape(x.shape) for mode, p in pieces.items()}


def _overflow_step(fmt: FloatFormat) -> float:
    """The gap above max_finite: where the next value would be with more exponent range."""
    return 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)


@functools.cache
def bulk_inputs(dtype: np.dtype, fmt: FloatFormat) -> tuple[np.ndarray, int]:
    """About 200,000 finite values of ``dtype`` to round to ``fmt``; the first ``n_random`` are
    random (bit patterns, then log-uniform), the rest are exact ties, values one carrier ulp
    from a tie, the format's own values (subnormals included) and overflow-threshold values."""
    rng = np.random.default_rng(_seed(dtype.name, fmt))
    uint = UINT[dtype.itemsize]
    n = 80_000
    patterns = rng.integers(0, np.iinfo(uint).max, n, dtype=uint, endpoint=True).view(dtype)
    patterns = patterns[np.isfinite(patterns)]
    info = ml_dtypes.finfo(dtype)
    top = min(fmt.max_finite * 4, float(info.max))
    bottom = max(fmt.min_subnormal / 8, float(info.smallest_subnormal))
    magnitude = np.exp(rng.uniform(np.log(bottom), np.log(top), n))
    log_uniform = cast(magnitude * rng.choice([-1.0, 1.0], n), dtype)

    # The format's values and the midpoints between neighbours.
    if fmt.total_bits <= 19:
        values = format_values(fmt)
        upper = values[1:]
        values = values[:-1]
    else:  # fp32 in float64: random float32 values, normal and subnormal, and their successors
        bits32 = np.concatenate(
            [
                rng.integers(0, 2**32, 20_000, dtype=np.uint32),
                rng.integers(0, 2**23, 5_000, dtype=np.uint32)
                | (rng.integers(0, 2, 5_000, dtype=np.uint32) << 31),
            ]
        )
        values32 = bits32.view(np.float32)
        values32 = values32[np.abs(cast(values32, np.float64)) < fmt.max_finite]
        values = values32.astype(np.float64)
        upper = np.nextafter(values32, np.float32(np.inf)).astype(np.float64)
    if values.size > 70_000:  # tf32: keep the subnormal and top binades, sample the rest
        edge = (np.abs(values) < 4 * fmt.min_normal) | (np.abs(values) > fmt.max_finite / 4)
        keep = edge | (rng.random(values.size) < 60_000 / values.size)
        values, upper = values[keep], upper[keep]
    step = _overflow_step(fmt)
    beyond = fmt.max_finite + step / 2  # the tie between max_finite and the overflow value
    midpoints = np.concatenate([(values + upper) / 2, [beyond, -beyond]])
    midpoints_c = cast(midpoints, dtype)
    exact = midpoints_c.astype(np.float64) == midpoints
    if carrier_format(dtype).is_subset_of(fmt):  # round_to is the identity: no ties exist
        midpoints_c = midpoints_c[exact]
    else:
        assert exact.all(), "ties must be exact in the carrier"
    inf = np.array(np.inf, dtype)
    near_ties = [midpoints_c, np.nextafter(midpoints_c, inf), np.nextafter(midpoints_c, -inf)]

    special = [
        0.0,
        fmt.max_finite,
        fmt.min_normal,
        fmt.min_subnormal,
        fmt.min_subnormal / 2,
        fmt.max_finite + step,
        fmt.max_finite + 2 * step,
        2 * fmt.max_finite + 2 * step,
        float(info.max),
        float(info.smallest_subnormal),
        float(info.smallest_normal),
    ]
    special = cast(np.array([s for s in special if s <= float(info.max)]), dtype)
    with np.errstate(over="ignore"):
        special = np.concatenate([special, np.nextafter(special, inf), np.nextafter(special, -inf)])
    special = np.concatenate([special, -special])
    x = np.concatenate([patterns, log_uniform, *near_ties, cast(values, dtype), special])
    x = x[np.isfinite(x)]
    return x, patterns.size + log_uniform.size


# --- the reference helpers themselves ---------------------------------------------------------


@pytest.mark.parametrize("fmt", SMALL_ML_FORMATS, ids=lambda f: f.name)
def test_format_values_match_ml_dtypes(fmt):
    dtype = ML_TYPES[fmt]
    bits = ml_dtypes.finfo(dtype).bits
    codes = np.arange(2**bits, dtype=np.uint16 if bits == 16 else np.uint8)
    values = cast(codes.view(dtype), np.float64)
    np.testing.assert_array_equal(format_values(fmt), np.unique(values[np.isfinite(values)]))


@pytest.mark.parametrize("fmt", SMALL_ML_FORMATS, ids=lambda f: f.name)
def test_reference_round_matches_ml_dtypes(fmt):
    """The float64 reference agrees with ml_dtypes on float32 inputs (no double rounding)."""
    x, _ = bulk_inputs(np.dtype(np.float32), fmt)
    assert_same_bits(cast(reference_round(x, fmt, "nearest"), np.float32), ml_round(x, fmt), x)


# --- round to nearest against ml_dtypes -------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, fmt",
    combos("float32", formats=[f for f in ML_TYPES if f.name != "fp32"])
    + combos("float64", formats=[FORMATS["fp32"], FORMATS["fp16"]]),
)
def test_nearest_matches_ml_dtypes(dtype, fmt):
    """Bit for bit on ~200k values per format (about 2 million per carrier over the formats):
    random bit patterns, log-uniform values, every tie of the format and its neighbours in the
    carrier, subnormals, zeros, overflow threshold. (float64 -> fp32/fp16 are NumPy's own,
    correctly rounded casts.)"""
    x, _ = bulk_inputs(dtype, fmt)
    ours = round_all(x, fmt)["nearest"]
    assert_same_bits(ours, ml_round(x, fmt), x, f"{fmt.name} from {dtype}")


def _distance_value(r: float, fmt: FloatFormat, x: float) -> fractions.Fraction:
    """A rounded value as a number for distance comparisons: overflow (inf or NaN) counts as the
    next value above max_finite."""
    if np.isfinite(r):
        return fractions.Fraction(r)
    return fractions.Fraction(np.copysign(fmt.max_finite + _overflow_step(fmt), x))


@pytest.mark.parametrize(
    "dtype, fmt",
    combos("float64", formats=[f for f in ML_TYPES if f.name not in ("fp32", "fp16")]),
)
def test_nearest_float64_beats_ml_dtypes_double_rounding(dtype, fmt):
    """ml_dtypes casts float64 to its types through float32, rounding twice. Where we differ:
    only at inputs that are not float32 values, and ours is the correctly rounded one (checked
    with exact fractions). On random inputs such differences are rare (< 0.1%)."""
    x, n_random = bulk_inputs(dtype, fmt)
    ours = round_all(x, fmt)["nearest"]
    ml = ml_round(x, fmt)
    differ = ~same_bits(ours, ml)
    assert not np.any(differ & (cast(x, np.float32).astype(np.float64) == x))
    assert differ[:n_random].mean() < 1e-3
    assert_same_bits(ours, reference_round(x, fmt, "nearest"), x, "vs float64 reference")
    rng = np.random.default_rng(0)
    index = np.flatnonzero(differ)
    for i in rng.choice(index, min(index.size, 2000), replace=False):
        exact = fractions.Fraction(float(x[i]))
        ours_value = _distance_value(float(ours[i]), fmt, float(x[i]))
        ml_value = _distance_value(float(ml[i]), fmt, float(x[i]))
        ours_distance, ml_distance = abs(ours_value - exact), abs(ml_value - exact)
        assert ours_distance <= ml_distance, (x[i], ours[i], ml[i])
        if ours_distance == ml_distance:  # a tie: ours must be the even neighbour
            steps = ours_value / abs(ours_value - ml_value)
            assert steps.denominator == 1 and steps.numerator % 2 == 0, (x[i], ours[i], ml[i])


@pytest.mark.parametrize("dtype, fmt", combos("float32", "float64"))
def test_deterministic_modes_match_reference(dtype, fmt):
    """Every deterministic mode, bit for bit, against the float64 reference; this covers tf32
    and custom formats (no subnormals, custom bias) that ml_dtypes lacks."""
    x, _ = bulk_inputs(dtype, fmt)
    x = np.concatenate([x, np.array([np.inf, -np.inf, np.nan], dtype)])
    results = round_all(x, fmt)
    for mode in DETERMINISTIC_MODES:
        assert_same_bits(results[mode], reference_round(x, fmt, mode), x, mode)


# --- specials and overflow ------------------------------------------------------------------


def _expected_for_infinity(fmt: FloatFormat, saturate: bool = False) -> float:
    if saturate or fmt.overflow == "saturate":
        return fmt.max_finite
    return np.inf if fmt.has_inf else np.nan


@pytest.mark.parametrize("dtype, fmt", combos("float32", "float64", "bfloat16", "float16"))
def test_nan_and_infinities_in_every_mode(dtype, fmt):
    """NaN stays NaN in every format and mode (ml_dtypes gives -0.0 in fp4/fp6: we keep NaN);
    infinities stay infinite (IEEE), become NaN (fp8_e4m3) or saturate (fp6/fp4)."""
    uint = UINT[dtype.itemsize]
    nbits = 8 * dtype.itemsize
    exponent_mask = np.array(np.inf, dtype).view(uint)
    payload_nans = np.array(
        [exponent_mask | uint(1), exponent_mask | uint(3) | (uint(1) << uint(nbits - 1))], uint
    ).view(dtype)  # signalling NaNs with payloads, both signs
    x = np.concatenate([np.array([np.nan, -np.nan, np.inf, -np.inf], dtype), payload_nans])
    results = round_all(x, fmt)
    expected = _expected_for_infinity(fmt)
    for mode, r in results.items():
        assert np.isnan(cast(r[[0, 1, 4, 5]], np.float64)).all(), mode
        assert_same_bits(r[2:4], np.array([expected, -expected]), x[2:4], mode)
    if fmt in ML_TYPES:
        assert_same_bits(results["nearest"][2:4], ml_round(x[2:4], fmt), x[2:4])


@pytest.mark.parametrize(
    "fmt, at_tie, beyond",
    [
        # IEEE: max_finite has an odd significand, so the tie at max + gap/2 goes to the (even)
        # overflow value. fp8_e4m3: 448 = 1.110b * 2**8 is even, so the tie stays at 448.
        ("fp16", np.inf, np.inf),
        ("bf16", np.inf, np.inf),
        ("fp8_e5m2", np.inf, np.inf),
        ("fp8_e4m3", 448.0, np.nan),
        ("fp6_e3m2", 28.0, 28.0),
        ("fp6_e2m3", 7.5, 7.5),
        ("fp4_e2m1", 6.0, 6.0),
    ],
)
def test_overflow_threshold(fmt, at_tie, beyond):
    """Hand-written expectations around max + gap/2, checked against ml_dtypes as well."""
    fmt = FORMATS[fmt]
    threshold = np.float32(fmt.max_finite + _overflow_step(fmt) / 2)
    assert float(threshold) == fmt.max_finite + _overflow_step(fmt) / 2
    x = np.array(
        [
            fmt.max_finite,
            np.nextafter(threshold, np.float32(0)),
            threshold,
            np.nextafter(threshold, np.float32(np.inf)),
            np.finfo(np.float32).max,
        ],
        np.float32,
    )
    x = np.concatenate([x, -x])
    ours = round_all(x, fmt)["nearest"]
    expected = np.array([fmt.max_finite, fmt.max_finite, at_tie, beyond, beyond])
    assert_same_bits(ours, np.concatenate([expected, -expected]), x)
    assert_same_bits(ours, ml_round(x, fmt), x)


def _big_values(dtype, fmt: FloatFormat) -> np.ndarray:
    """Finite values of ``dtype`` beyond fmt's max_finite, from just above to the carrier max."""
    carrier_max = float(ml_dtypes.finfo(dtype).max)
    step = _overflow_step(fmt)
    candidates = [
        fmt.max_finite + step / 2,
        fmt.max_finite + step,
        3 * (fmt.max_finite + step),
        carrier_max,
    ]
    big = cast(np.array([c for c in candidates if c <= carrier_max]), dtype)
    just_above = np.nextafter(cast(np.array(fmt.max_finite), dtype), np.array(np.inf, dtype))
    big = np.concatenate([[just_above], big])  # [just above max, the tie, beyond the tie...]
    assert np.all(big.astype(np.float64) > fmt.max_finite)
    return big


@pytest.mark.parametrize(
    "dtype, fmt",
    combos(
        "float32",
        "float64",
        formats=[f for f in list(ML_TYPES) + CUSTOM_FORMATS if f.name not in ("fp32",)],
    ),
)
def test_directed_modes_overflow(dtype, fmt):
    """Beyond max_finite: rounding toward zero gives ±max; away from zero gives the format's
    overflow value (inf, NaN for fp8_e4m3); saturating formats give ±max in every mode."""
    big = _big_values(dtype, fmt)
    results = round_all(np.concatenate([big, -big]), fmt)
    n = big.size
    over = {"inf": np.inf, "nan": np.nan, "saturate": fmt.max_finite}[fmt.overflow]
    top = fmt.max_finite
    expected = {
        "toward_zero": (top, -top),
        "up": (over, -top),
        "down": (top, -over),
    }
    for mode, (positive, negative) in expected.items():
        want = np.concatenate([np.full(n, positive), np.full(n, negative)])
        assert_same_bits(results[mode], want, np.concatenate([big, -big]), mode)
    # Round to nearest: max just above it, the overflow value beyond the tie at max + gap/2.
    nearest = results["nearest"]
    assert_same_bits(nearest[[0, n]], [top, -top], big[[0, 0]])
    assert_same_bits(nearest[2:n], np.full(n - 2, over), big[2:])
    assert_same_bits(nearest[n + 2 :], np.full(n - 2, -over), -big[2:])


@pytest.mark.parametrize(
    "dtype, fmt",
    [
        pytest.param(CARRIERS[c], FORMATS[f], id=f"{c}-{f}")
        for c, f in [
            # nan-overflow, identity shortcut (fp32 on float32), saturating, IEEE; 16-bit carrier
            ("float32", "fp8_e4m3"),
            ("float32", "fp32"),
            ("float32", "fp4_e2m1"),
            ("float64", "fp16"),
            ("float64", "fp64"),
            ("bfloat16", "fp8_e5m2"),
        ]
    ],
)
def test_saturate_maps_overflow_and_infinities_to_max(dtype, fmt):
    big = (
        _big_values(dtype, fmt)
        if fmt.max_finite < float(ml_dtypes.finfo(dtype).max)
        else np.array([], dtype)
    )
    x = np.concatenate([big, np.array([np.inf], dtype)])
    x = np.concatenate([x, -x, np.array([np.nan, 1.0, 0.0], dtype)])
    n = x.size - 3
    results = round_all(x, fmt, saturate=True)
    want = np.copysign(fmt.max_finite, x[:n].astype(np.float64))
    for mode, r in results.items():
        assert_same_bits(r[:n], want, x[:n], mode)
        assert np.isnan(float(r[n])) and float(r[n + 1]) == 1.0 and float(r[n + 2]) == 0.0, mode


# --- directed modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, fmt",
    combos(
        "float32",
        "float64",
        formats=[f for f in list(ML_TYPES) + CUSTOM_FORMATS if f.name != "fp32"],
    )
    + combos("float64", formats=[FORMATS["fp32"]]),
)
def test_directed_modes_bracket_x(dtype, fmt):
    """down <= x <= up, both representable and adjacent (consecutive values of the format);
    toward_zero is the one nearer zero; nearest, stochastic and random give one of the two;
    every mode keeps x's sign, zeros included."""
    x, _ = bulk_inputs(dtype, fmt)
    x = x[np.abs(x.astype(np.float64)) <= fmt.max_finite]
    r = round_all(x, fmt, seed=1)
    x64 = x.astype(np.float64)
    down, up = r["down"].astype(np.float64), r["up"].astype(np.float64)
    assert np.all(down <= x64) and np.all(x64 <= up)
    if fmt.total_bits <= 19:
        table = format_values(fmt)
        i = np.searchsorted(table, down)
        assert np.array_equal(table[i], down), "down is not a value of the format"
        split = down != up
        assert np.array_equal(table[i[split] + 1], up[split]), "down, up are not neighbours"
        assert np.array_equal(np.isin(x64, table), ~split)
    else:  # fp32: neighbours via nextafter in float32
        down32, up32 = down.astype(np.float32), up.astype(np.float32)
        assert np.array_equal(down32.astype(np.float64), down)
        assert np.array_equal(up32.astype(np.float64), up)
        split = down != up
        assert np.array_equal(np.nextafter(down32[split], np.float32(np.inf)), up32[split])
        assert np.array_equal(down32 == x64, ~split)
    # Representable according to round_to itself.
    assert_same_bits(round_all(r["down"], fmt)["nearest"], r["down"], r["down"], "down")
    assert_same_bits(round_all(r["up"], fmt)["nearest"], r["up"], r["up"], "up")
    assert_same_bits(r["toward_zero"], np.where(np.signbit(x64), up, down), x, "toward_zero")
    nearest = r["nearest"].astype(np.float64)
    assert np.all((nearest == down) | (nearest == up))
    # The nearer one; differences of float32 values are exact in float64, and in float64 they
    # are exact where down <= x <= up <= 2 * down (Sterbenz), or down == 0.
    assert np.all(np.abs(nearest - x64) <= np.minimum(x64 - down, up - x64))
    for mode in RANDOM_MODES:
        value = r[mode].astype(np.float64)
        assert np.all((value == down) | (value == up)), mode
    for mode, value in r.items():
        assert np.array_equal(np.signbit(value), np.signbit(x)), mode


@pytest.mark.parametrize("dtype, fmt", combos("float32", "float64", "bfloat16", "float16"))
def test_representable_values_unchanged_in_every_mode(dtype, fmt):
    """All values of formats up to 19 bits (both zeros), random float32/float64 values for fp32
    and fp64; bit for bit in all six modes."""
    rng = np.random.default_rng(_seed("representable", dtype.name, fmt))
    if fmt.total_bits <= 19:
        values = format_values(fmt)
        if values.size > 100_000:
            values = rng.choice(values, 100_000, replace=False)
        x = cast(np.concatenate([values, [-0.0]]), dtype)
    else:
        uint = UINT[fmt.total_bits // 8]
        x = rng.integers(0, np.iinfo(uint).max, 50_000, dtype=uint, endpoint=True).view(
            np.float32 if fmt.total_bits == 32 else np.float64
        )
        x = cast(x[np.isfinite(x)], dtype)
    for mode, r in round_all(x, fmt, seed=2).items():
        assert_same_bits(r, x, x, mode)


# --- 16-bit carriers ------------------------------------------------------------------------


def _all_16bit(dtype) -> np.ndarray:
    return np.arange(2**16, dtype=np.uint16).view(dtype)


@pytest.mark.parametrize("dtype, fmt", combos("bfloat16", "float16"))
def test_16bit_carrier_exhaustive(dtype, fmt):
    """Every bfloat16/float16 bit pattern: nearest equals the ml_dtypes cast (NaN inputs stay
    NaN), and every deterministic mode equals rounding the same value carried in float32."""
    x = _all_16bit(dtype)
    results = round_all(x, fmt)
    is_nan = np.isnan(cast(x, np.float64))
    if fmt in ML_TYPES:
        assert_same_bits(results["nearest"][~is_nan], ml_round(x[~is_nan], fmt), x[~is_nan])
    wide = round_all(x.astype(np.float32), fmt)
    for mode in DETERMINISTIC_MODES:
        assert results[mode].dtype == dtype
        assert_same_bits(results[mode], wide[mode], x, mode)
        assert np.isnan(cast(results[mode][is_nan], np.float64)).all()


# --- stochastic and random rounding --------------------------------------------------------

N_SAMPLES = 1 << 20

STOCHASTIC_CASES = {
    # carrier, format: x values (normal range, target subnormal range, below the smallest
    # subnormal, and far below it: up-probability ~ 2**-12 .. 2**-7; for a float32/float64
    # carrier in its normal range the kernel then compares all random bits to a shifted
    # significand, a separate branch).
    ("float32", "bf16"): [1 + 0.3 * 2**-7, -2.6, 1.37 * 2**-130, 0.3 * 2**-133, 1.5 * 2**-145],
    ("float32", "fp8_e4m3"): [1.3, 300.7, -1.3 * 2**-8, 0.3 * 2**-9, 1.25 * 2**-20],
    ("float64", "fp32"): [1 + 0.3 * 2**-23, -7e30, 1.3 * 2**-140, 0.3 * 2**-149, 1.25 * 2**-162],
    ("float64", "fp4_e2m1"): [2.7, 5.1, 0.8, -0.2, 1.5 * 2**-15],
    ("float16", "fp8_e5m2"): [1.3, -700.3, 1.3 * 2**-15, 0.3 * 2**-16, 3 * 2**-24],
}


@functools.cache
def stochastic_samples(carrier: str, fmt_name: str, rng: str):
    """N_SAMPLES stochastic and random roundings of each x, in one vectorized call."""
    dtype, fmt = CARRIERS[carrier], FORMATS[fmt_name]
    x = cast(np.array(STOCHASTIC_CASES[carrier, fmt_name]), dtype)

    @jax.jit
    def sample(x, key):
        broadcast = jnp.broadcast_to(x[:, None], (x.size, N_SAMPLES))
        return (
            round_to(broadcast, fmt, "stochastic", key, rng=rng),
            round_to(broadcast, fmt, "random", key, rng=rng),
        )

    stochastic, random = sample(x, jax.random.key(_seed(carrier, fmt_name, rng) % 2**31))
    lo = reference_round(x, fmt, "down")
    hi = reference_round(x, fmt, "up")
    return (
        x,
        lo,
        hi,
        np.asarray(stochastic).astype(np.float64),
        np.asarray(random).astype(np.float64),
    )


STOCHASTIC_PARAMS = [
    pytest.param(c, f, rng, id=f"{c}-{f}-{rng}")
    for (c, f) in STOCHASTIC_CASES
    for rng in ("hash", "jax")
]


@pytest.mark.parametrize("carrier, fmt_name, rng", STOCHASTIC_PARAMS)
def test_stochastic_rounding_is_unbiased(carrier, fmt_name, rng):
    """Mean of 2**20 samples equals x, and the up-fraction equals p = (x - lo) / gap, within 5
    standard errors gap * sqrt(p (1 - p) / N): each check fails by chance with probability
    ~6e-7 (the keys are fixed, so outcomes are reproducible)."""
    x, lo, hi, samples, _ = stochastic_samples(carrier, fmt_name, rng)
    for i in range(x.size):
        assert lo[i] < hi[i], "x must not be representable"
        gap = hi[i] - lo[i]
        p = float(
            (fractions.Fraction(float(x[i])) - fractions.Fraction(lo[i])) / fractions.Fraction(gap)
        )
        assert np.all((samples[i] == lo[i]) | (samples[i] == hi[i]))
        sigma = np.sqrt(p * (1 - p) / N_SAMPLES)
        up_fraction = np.mean(samples[i] == hi[i])
        assert abs(up_fraction - p) <= 5 * sigma, (x[i], up_fraction, p)
        # samples - lo is 0 or gap exactly, so this mean carries no rounding error to speak of
        mean = lo[i] + np.mean(samples[i] - lo[i])
        assert abs(mean - float(x[i])) <= 5 * gap * sigma, (x[i], mean)


@pytest.mark.parametrize("carrier, fmt_name, rng", STOCHASTIC_PARAMS)
def test_random_rounding_picks_each_neighbour_half_the_time(carrier, fmt_name, rng):
    """CESTAC random rounding: only the two neighbours, each with frequency 1/2 within 5 sigma
    (sigma = 0.5 / sqrt(N)); consecutive elements uncorrelated within 5 / sqrt(N)."""
    x, lo, hi, _, samples = stochastic_samples(carrier, fmt_name, rng)
    limit = 5 * 0.5 / np.sqrt(N_SAMPLES)
    for i in range(x.size):
        assert np.all((samples[i] == lo[i]) | (samples[i] == hi[i]))
        up = samples[i] == hi[i]
        assert abs(up.mean() - 0.5) <= limit, (x[i], up.mean())
        correlation = np.corrcoef(up[:-1], up[1:])[0, 1]
        assert abs(correlation) <= 5 / np.sqrt(N_SAMPLES), (x[i], correlation)


# Eager (op-by-op) execution compiles every primitive anew for each input shape and dtype, about
# 2 s a time: the eager calls below all use this one shape.
EAGER_SHAPE = (4, 64)


def _all_modes(fmt, key, rng="hash"):
    def round_every_mode(v):
        return tuple(round_to(v, fmt, mode, key, rng=rng) for mode in ROUNDING_MODES)

    return round_every_mode


@pytest.mark.parametrize("rng", ["hash", "jax"])
def test_keys_drive_the_randomness(rng):
    """The same key gives the same result, another key another one; a legacy raw uint32 key
    works like the typed key it holds."""
    x = jnp.full(EAGER_SHAPE, 1 + 2.0**-8, jnp.float32)  # halfway between two bf16 values
    for mode in RANDOM_MODES:
        first = round_to(x, "bf16", mode, jax.random.key(0), rng=rng)
        again = round_to(x, "bf16", mode, jax.random.key(0), rng=rng)
        other = round_to(x, "bf16", mode, jax.random.key(1), rng=rng)
        raw = round_to(x, "bf16", mode, jax.random.PRNGKey(0), rng=rng)
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(first, raw)
        # 256 fair coin flips each: equal by chance with probability 2**-256
        assert not np.array_equal(first, other)
        assert 0 < np.mean(np.asarray(first) > 1) < 1


def test_unknown_rng_raises():
    with pytest.raises(ValueError, match="rng must be one of"):
        round_to(jnp.ones(3), "bf16", "stochastic", jax.random.key(0), rng="mt19937")


# --- transformations and dtypes --------------------------------------------------------------

TRANSFORM_CASES = [
    pytest.param(np.dtype(np.float32), "bf16", id="float32-bf16"),
    pytest.param(np.dtype(np.float64), "fp8_e4m3", id="float64-fp8_e4m3"),
    pytest.param(np.dtype(ml_dtypes.bfloat16), "fp4_e2m1", id="bfloat16-fp4_e2m1"),
    pytest.param(np.dtype(np.float16), "fp8_e5m2", id="float16-fp8_e5m2"),
]


def _transform_input(dtype, shape=EAGER_SHAPE) -> np.ndarray:
    """Normal, subnormal-range and overflowing values of the target formats."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-12, 12, shape))
    return cast(x, dtype)


@pytest.mark.parametrize("dtype, fmt", TRANSFORM_CASES)
def test_jit_and_vmap_match_eager(dtype, fmt):
    """All six modes: jit equals eager, vmap over rows equals rounding row by row (the same key
    for each row); the result keeps the input's dtype and shape."""
    x = _transform_input(dtype)
    f = _all_modes(fmt, jax.random.key(4))
    eager = f(jnp.asarray(x))
    jitted = jax.jit(f)(x)
    batched = jax.jit(jax.vmap(f))(x)
    one_row = jax.jit(f)
    rows = [one_row(row) for row in x]
    for i, mode in enumerate(ROUNDING_MODES):
        assert eager[i].dtype == dtype and eager[i].shape == x.shape, mode
        assert_same_bits(np.asarray(jitted[i]), np.asarray(eager[i]), x, f"jit {mode}")
        stacked = np.stack([np.asarray(r[i]) for r in rows])
        assert_same_bits(np.asarray(batched[i]), stacked, x, f"vmap {mode}")


@pytest.mark.parametrize("rng", ["hash", "jax"])
def test_vmap_over_keys(rng):
    """Batching the key equals calling with each key; different keys give different rows."""
    x = jnp.asarray(_transform_input(np.float32))
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(lambda key: _all_modes("fp8_e5m2", key, rng)(x)))(keys)
    for k, key in enumerate(keys):
        one_by_one = _all_modes("fp8_e5m2", key, rng)(x)  # eager
        for i, mode in enumerate(ROUNDING_MODES):
            np.testing.assert_array_equal(batched[i][k], one_by_one[i], err_msg=mode)
    for i, mode in enumerate(ROUNDING_MODES):
        differs = not np.array_equal(batched[i][0], batched[i][1])
        assert differs == (mode in RANDOM_MODES), mode


@pytest.mark.parametrize("dtype, fmt", TRANSFORM_CASES[:2])
def test_grad_is_straight_through(dtype, fmt):
    """d/dx sum(round_to(x) * w) == w exactly in every mode, overflowing elements included,
    eager and under jit."""
    x = _transform_input(dtype)
    weights = [
        cast(np.random.default_rng(6 + i).standard_normal(EAGER_SHAPE), dtype)
        for i in range(len(ROUNDING_MODES))
    ]
    key = jax.random.key(7)

    def loss(*xs):  # one copy of x per mode, so that each gradient is its own
        return sum(
            jnp.sum(round_to(v, fmt, mode, key) * w)
            for v, mode, w in zip(xs, ROUNDING_MODES, weights, strict=True)
        )

    argnums = tuple(range(len(ROUNDING_MODES)))
    for grad in (jax.grad(loss, argnums), jax.jit(jax.grad(loss, argnums))):
        for mode, g, w in zip(
            ROUNDING_MODES, grad(*[x] * len(ROUNDING_MODES)), weights, strict=True
        ):
            assert g.dtype == dtype
            np.testing.assert_array_equal(g, w, err_msg=mode)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16, np.float16])
def test_shapes_and_dtypes_kept(dtype):
    """The result has x's dtype and shape (scalars and empty arrays included), in every mode."""
    key = jax.random.key(0)
    for shape in [(), (0,), (3, 0, 2), (2, 3, 5)]:
        x = jax.ShapeDtypeStruct(shape, dtype)
        for r in jax.eval_shape(_all_modes("fp8_e5m2", key), x):
            assert r.dtype == dtype and r.shape == shape, shape


def test_scalar_and_empty_inputs_run():
    f = jax.jit(_all_modes("bf16", jax.random.key(0)))
    for r in f(jnp.float32(1 / 3)):
        assert r.shape == () and r.dtype == jnp.float32
        assert float(r) in (0.33203125, 0.333984375)
    for r in f(jnp.zeros((0, 3), jnp.float32)):
        assert r.shape == (0, 3) and r.dtype == jnp.float32


def test_docstring_examples():
    # round_all: the jitted rounder shared with the other tests.
    assert float(round_all(np.float32(1 / 3), FORMATS["bf16"])["nearest"]) == 0.333984375
    r = round_all(np.array([0.3, 1000.0], np.float32), FORMATS["fp8_e4m3"])["nearest"]
    assert r[0] == 0.3125 and np.isnan(r[1])


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, fmt, dtype_name",
    [
        (np.float32, "fp64", "float32"),
        (ml_dtypes.bfloat16, "fp32", "bfloat16"),
        (ml_dtypes.bfloat16, "fp16", "bfloat16"),
        (np.float16, "bf16", "float16"),
        (np.float32, "e9m3", "float32"),
    ],
)
def test_format_wider_than_carrier_raises(dtype, fmt, dtype_name):
    with pytest.raises(ValueError, match=f"wider than x's dtype {dtype_name}"):
        round_to(jnp.ones(3, dtype), fmt)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int64, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_float_input_raises(dtype):
    with pytest.raises(ValueError, match=f"floating-point array, got dtype {np.dtype(dtype)}"):
        round_to(jnp.ones(3, dtype), "bf16")


def test_unknown_mode_raises_listing_modes():
    with pytest.raises(ValueError) as info:
        round_to(jnp.ones(3), "bf16", "nearest_even")
    assert "'nearest_even'" in str(info.value)
    for mode in ROUNDING_MODES:
        assert mode in str(info.value)


@pytest.mark.parametrize("mode", RANDOM_MODES)
def test_random_modes_need_a_key(mode):
    with pytest.raises(ValueError, match="needs a PRNG key: pass key="):
        round_to(jnp.ones(3), "bf16", mode)


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="unknown format 'fp7'"):
        round_to(jnp.ones(3), "fp7")


# --- property-based ---------------------------------------------------------------------------

PROPERTY_FORMATS = [f for f in FORMATS.values() if isinstance(f, FloatFormat)] + [
    IEEE_E4M3,
    E3M4,
    NOSUB,
    TINY_F32,
    TINY_F64,
    get_format("e6m9"),
]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_property_every_mode_gives_a_neighbour(data):
    """Any format x mode x values: deterministic modes equal the reference; every result is a
    value of the format within one gap of x (one of the two neighbours)."""
    dtype = data.draw(st.sampled_from([CARRIERS[c] for c in ("float16", "float32", "float64")]))
    fmt = data.draw(
        st.sampled_from(
            [
                f
                for f in PROPERTY_FORMATS
                if f.fits_in(dtype)
            ]
        )
    )
    bound = min(fmt.max_finite, float(np.finfo(dtype).max))
    values = data.draw(
        st.lists(st.floats(-bound, bound, width=8 * dtype.itemsize), min_size=1, max_size=16)
    )
    x = np.array(values, dtype)
    results = round_all(x, fmt, seed=data.draw(st.integers(0, 2**31 - 1)))
    for mode in DETERMINISTIC_MODES:
        assert_same_bits(results[mode], reference_round(x, fmt, mode), x, mode)
    down = reference_round(x, fmt, "down")
    up = reference_round(x, fmt, "up")
    for mode, r in results.items():
        r64 = r.astype(np.float64)
        assert_same_bits(r, reference_round(r, fmt, "nearest"), r, f"{mode} representable")
        assert np.all((r64 == down) | (r64 == up)), mode
        with np.errstate(over="ignore"):
            assert np.all(np.abs(r64 - x.astype(np.float64)) <= up - down), mode


# --- carrier subnormals below the format's normal range ---------------------------


@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
def test_no_subnormal_format_flushes_carrier_subnormals(mode):
    ftz = FloatFormat("fp32_ftz", 8, 23, has_subnormals=False)
    x = np.array([2.0**-130, 0.75 * 2.0**-126, -(2.0**-149)], np.float32)
    assert_same_bits(round_all(x, ftz)[mode], reference_round(x, ftz, mode), x)


@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
def test_custom_bias_format_has_normals_among_carrier_subnormals(mode):
    fmt = FloatFormat("e8m3_b140", 8, 3, bias=140)  # normal down to 2**-139; fits float32
    x = np.array([1.5 * 2.0**-130, 1.3 * 2.0**-131], np.float32)
    assert_same_bits(round_all(x, fmt)[mode], reference_round(x, fmt, mode), x)
