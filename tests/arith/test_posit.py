"""Posit rounding against the Stillwater Universal library (universal-dtypes) and SoftPosit.

Both references are independent implementations of the Posit Standard 2022 conversion from
double: Universal for the es = 2 posits (and its es = 0/1 variants), SoftPosit for posit16 with
es = 1 (SoftPosit's ``posit16``). Encodings are compared bit for bit.
"""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import softposit
import universal_dtypes as ud

from dp2ejax.arith.formats import PositFormat, get_format
from dp2ejax.arith.posit import posit_from_bits, posit_to_bits, round_posit
from dp2ejax.arith.random_bits import random_bits

MODES = ("nearest", "toward_zero", "up", "down", "stochastic", "random")
CARRIERS = (np.float64, np.float32)
# format name -> (universal dtype, the NumPy uint its encodings are viewed as)
UNIVERSAL = {
    "posit8": (ud.posit8, np.uint8),
    "posit16": (ud.posit16, np.uint16),
    "posit32": (ud.posit32, np.uint32),
    "posit64": (ud.posit64, np.uint64),
    "posit8_es0": (ud.posit8e0, np.uint8),
    "posit8_es1": (ud.posit8e1, np.uint8),
    "posit16_es1": (ud.posit16e1, np.uint16),
    "posit12": (ud.posit12, np.uint16),
}

_round = jax.jit(round_posit, static_argnames=("fmt", "mode"))
_to_bits = jax.jit(posit_to_bits, static_argnames=("fmt",))
_from_bits = jax.jit(posit_from_bits, static_argnames=("fmt", "dtype"))


@functools.partial(jax.jit, static_argnames="fmt")
def _nearest_bits(x, fmt):
    return posit_to_bits(round_posit(x, fmt), fmt)


@functools.partial(jax.jit, static_argnames="fmt")
def _every_mode(x, fmt, key):
    """x rounded in every mode (one compilation for all six): mode -> array."""
    bits = random_bits(key, x.shape, x.dtype)
    return {mode: round_posit(x, fmt, mode, bits) for mode in MODES}


def rounded_bits(x: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(_nearest_bits(jnp.asarray(x), get_format(name)))


def universal_bits(x: np.ndarray, name: str) -> np.ndarray:
    dtype, uint = UNIVERSAL[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "out of range ... saturated"
        return np.asarray(x, np.float64).astype(dtype).view(uint)


def universal_lattice(name: str) -> np.ndarray:
    """Every finite posit of a format up to 16 bits, sorted, decoded by Universal."""
    dtype, uint = UNIVERSAL[name]
    nbits = get_format(name).nbits
    values = np.arange(1 << nbits, dtype=np.uint64).astype(uint).view(dtype).astype(np.float64)
    return np.sort(values[np.isfinite(values)])


def assert_bits_equal(ours, reference, x):
    bad = ours != reference
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} differ, e.g. x={x[bad][:4]} ours={ours[bad][:4]} "
        f"reference={reference[bad][:4]}")


def tie_points(lattice: np.ndarray) -> np.ndarray:
    """The points where nearest rounding on the encoding switches between neighbours a < b:
    the arithmetic midpoint where a guard bit after the kept bits is a fraction bit, and the
    power of two 2**((log2 a + log2 b) / 2) where it is a cut-off exponent bit (the neighbours
    are then powers of two at least 4 apart)."""
    a, b = lattice[:-1], lattice[1:]
    same_sign = (a > 0) | (b < 0)
    a, b = a[same_sign], b[same_sign]
    geometric = np.sign(a) * np.sqrt(a * b)
    return np.where(b / a >= 4, geometric, (a + b) / 2)


def wide_random(rng, count: int, max_scale: int) -> np.ndarray:
    """Normal samples scaled over 2**±(1.25 max_scale): beyond maxpos and below minpos too."""
    exponents = rng.uniform(-1.25 * max_scale, 1.25 * max_scale, count)
    return rng.standard_normal(count) * np.exp2(np.round(exponents))


def edge_inputs(lattice: np.ndarray, fmt: PositFormat) -> np.ndarray:
    """Every posit, every value midpoint and tie point, the carrier values beside them, and
    values beyond maxpos, below minpos and the specials."""
    midpoints = (lattice[1:] + lattice[:-1]) / 2
    ties = tie_points(lattice)
    centres = np.concatenate([midpoints, ties])
    specials = [fmt.maxpos * 1.5, fmt.maxpos * 2**40, fmt.minpos / 2, fmt.minpos / 3,
                fmt.minpos * 2**-40, 1e300, 1e-300, 5e-324, np.inf, np.nan, 0.0]
    specials = np.array(specials + [-v for v in specials])
    return np.concatenate([lattice, centres, np.nextafter(centres, np.inf),
                           np.nextafter(centres, -np.inf), lattice * 1.25, specials])


# --- nearest against the references ------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["posit8", "posit16", "posit12", "posit8_es0", "posit8_es1",
                                  "posit16_es1"])
def test_nearest_matches_universal_on_edges_and_random(name, carrier):
    fmt = get_format(name)
    lattice = universal_lattice(name)
    rng = np.random.default_rng(fmt.nbits * 10 + fmt.es)
    x64 = np.concatenate([edge_inputs(lattice, fmt), wide_random(rng, 20_000, fmt.max_scale)])
    with np.errstate(over="ignore", under="ignore"):
        x = x64.astype(carrier)
    assert_bits_equal(rounded_bits(x, name), universal_bits(x, name), x)


def test_tie_points_depend_on_the_encoding_not_the_value():
    # posit8 (es=2): 2**20 = 0b0_1111110 and 2**24 = maxpos = 0b0_1111111 are neighbours; the
    # cut-off exponent bits decide, so 2**22 is the tie (to even: 2**20) and anything above it
    # goes to 2**24, even values much nearer to 2**20.
    fmt = get_format("posit8")
    x = np.array([2.0**22, 2.0**22 * 1.01, 2.0**22 * 0.99, -(2.0**22) * 1.01,
                  2.0**-22, 2.0**-22 * 0.99])
    expected = np.array([2.0**20, 2.0**24, 2.0**20, -(2.0**24),
                         2.0**-20, 2.0**-24])  # 0b0000001|10...: a tie, odd -> up to 2**-20
    np.testing.assert_array_equal(np.asarray(_round(jnp.asarray(x), fmt, "nearest")), expected)
    assert_bits_equal(rounded_bits(x, "posit8"), universal_bits(x, "posit8"), x)


def test_posit32_million_random_values_float64():
    rng = np.random.default_rng(32)
    x = wide_random(rng, 1_000_000, 120)
    assert_bits_equal(rounded_bits(x, "posit32"), universal_bits(x, "posit32"), x)


def test_posit32_in_float32_and_posit64_in_float64():
    rng = np.random.default_rng(3264)
    x32 = wide_random(rng, 100_000, 100).astype(np.float32)  # float32's range: ±2**126
    assert_bits_equal(rounded_bits(x32, "posit32"), universal_bits(x32, "posit32"), x32)
    x64 = wide_random(rng, 100_000, 248)
    assert_bits_equal(rounded_bits(x64, "posit64"), universal_bits(x64, "posit64"), x64)


def test_posit16_es1_matches_softposit():
    fmt = get_format("posit16_es1")
    lattice = np.array([softposit.convertP16ToDouble(softposit.posit16(bits=int(b)).v)
                        for b in range(1 << 16) if b != 1 << 15])
    lattice = np.sort(lattice)
    rng = np.random.default_rng(161)
    x = np.concatenate([edge_inputs(lattice, fmt), wide_random(rng, 20_000, fmt.max_scale)])
    reference = np.array([softposit.convertDoubleToP16(float(v)).v for v in x], np.uint16)
    assert_bits_equal(rounded_bits(x, "posit16_es1"), reference, x)
    with np.errstate(over="ignore", under="ignore"):  # float32: a subset, to keep it fast
        x32 = rng.choice(x, 50_000, replace=False).astype(np.float32)
    reference = np.array([softposit.convertDoubleToP16(float(v)).v for v in x32], np.uint16)
    assert_bits_equal(rounded_bits(x32, "posit16_es1"), reference, x32)


def textbook_encoding(x: float, nbits: int, es: int) -> int:
    """The standard's conversion, spelled out on Python strings: the unbounded encoding of x
    (regime, es exponent bits, float64's 52 fraction bits) cut after nbits - 1 bits and rounded
    to nearest, ties to even, with guard and sticky bits; no underflow, no overflow."""
    if x == 0:
        return 0
    if not math.isfinite(x):
        return 1 << (nbits - 1)
    mantissa, exponent = math.frexp(abs(x))  # |x| = mantissa * 2**exponent, mantissa in [0.5, 1)
    scale, fraction = exponent - 1, int(mantissa * 2**53) - 2**52
    max_scale = (nbits - 2) << es
    if scale >= max_scale:
        body = (1 << (nbits - 1)) - 1
    elif scale < -max_scale:
        body = 1
    else:
        r, e = scale >> es, scale & ((1 << es) - 1)
        regime = "1" * (r + 1) + "0" if r >= 0 else "0" * -r + "1"
        string = regime + (format(e, f"0{es}b") if es else "") + format(fraction, "052b")
        string = string.ljust(nbits + 1, "0")
        body = int(string[: nbits - 1], 2)
        guard, sticky = string[nbits - 1] == "1", "1" in string[nbits:]
        body += guard and (sticky or body & 1)
    return (-body) % (1 << nbits) if x < 0 else body


@pytest.mark.parametrize("nbits, es", [(3, 0), (5, 1), (10, 3), (20, 5), (48, 1)])
def test_nearest_matches_textbook_conversion_for_other_sizes(nbits, es):
    fmt = PositFormat(f"posit{nbits}_es{es}", nbits, es)
    lattice = np.asarray(_from_bits(jnp.arange(1 << min(nbits, 12), dtype=jnp.uint64),
                                    fmt, np.float64))
    lattice = np.sort(lattice[np.isfinite(lattice)])
    rng = np.random.default_rng(nbits * 8 + es)
    x = np.concatenate([edge_inputs(lattice, fmt), wide_random(rng, 3000, fmt.max_scale)])
    reference = np.array([textbook_encoding(float(v), nbits, es) for v in x], np.uint64)
    assert_bits_equal(rounded_bits(x, fmt.name).astype(np.uint64), reference, x)


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["posit8", "posit16", "posit16_es1", "posit8_es0"])
def test_bits_round_trip_every_encoding(name, carrier):
    fmt = get_format(name)
    dtype, uint = UNIVERSAL[name]
    encodings = np.arange(1 << fmt.nbits, dtype=np.uint64).astype(uint)
    decoded = np.asarray(_from_bits(jnp.asarray(encodings), fmt, carrier))
    reference = encodings.view(dtype).astype(np.float64)
    np.testing.assert_array_equal(decoded.astype(np.float64), reference)  # NaR: NaN both
    back = np.asarray(_to_bits(jnp.asarray(decoded), fmt))
    assert back.dtype == uint
    np.testing.assert_array_equal(back, encodings)


def test_bits_round_trip_posit32():
    fmt = get_format("posit32")
    dtype, uint = UNIVERSAL["posit32"]
    rng = np.random.default_rng(fmt.nbits)
    encodings = rng.integers(0, np.iinfo(uint).max, 50_000, dtype=uint, endpoint=True)
    encodings[:4] = [0, 1, 1 << (fmt.nbits - 1), (1 << (fmt.nbits - 1)) - 1]
    decoded = np.asarray(_from_bits(jnp.asarray(encodings), fmt, np.float64))
    np.testing.assert_array_equal(decoded, encodings.view(dtype).astype(np.float64))
    np.testing.assert_array_equal(np.asarray(_to_bits(jnp.asarray(decoded), fmt)), encodings)


def test_carrier_checks_name_format_and_dtype():
    with pytest.raises(ValueError, match=r"posit64.*float32"):
        round_posit(jnp.ones(3, jnp.float32), get_format("posit64"))
    with pytest.raises(ValueError, match=r"posit16.*float16"):
        round_posit(jnp.ones(3, jnp.float16), get_format("posit16"))
    with pytest.raises(ValueError, match=r"posit32.*fraction bits.*float32"):
        posit_from_bits(jnp.ones(3, jnp.uint32), get_format("posit32"), jnp.float32)
    # posit32's range fits float32 (2**±120), its 27 fraction bits do not: rounding still works.
    assert float(_round(jnp.float32(1 / 3), get_format("posit32"))) == np.float32(1 / 3)


# --- specials and saturation -------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda d: d.__name__)
def test_specials_and_saturation_in_every_mode(carrier):
    fmt = get_format("posit16")
    big, tiny = fmt.maxpos, fmt.minpos
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, big * 3, -big * 3, big, -big, 1e38,
                  tiny / 3, -tiny / 3, tiny / 2, tiny * 0.75, tiny, -tiny, 1e-38, 1e-40],
                 carrier)  # 1e-40 is a float32 subnormal
    expected = np.array([np.nan, np.nan, np.nan, 0.0, 0.0, big, -big, big, -big, big,
                         tiny, -tiny, tiny, tiny, tiny, -tiny, tiny, tiny], carrier)
    for mode, out in _every_mode(jnp.asarray(x), fmt, jax.random.key(0)).items():
        out = np.asarray(out)
        np.testing.assert_array_equal(out, expected, err_msg=mode)
        assert not np.signbit(out[3:5]).any(), f"{mode}: zeros must come back as +0"


# --- other modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["posit8", "posit16", "posit16_es1"])
def test_directed_modes_are_the_lattice_neighbours(name, carrier):
    fmt = get_format(name)
    lattice = universal_lattice(name)
    rng = np.random.default_rng(7)
    x = np.concatenate([edge_inputs(lattice, fmt), wide_random(rng, 20_000, fmt.max_scale)])
    with np.errstate(over="ignore", under="ignore"):
        x = x.astype(carrier)
    x = x[np.isfinite(x) & (x != 0)]
    wide = x.astype(np.float64)
    clamped = np.sign(wide) * np.clip(np.abs(wide), fmt.minpos, fmt.maxpos)
    below = lattice[np.searchsorted(lattice, clamped, side="right") - 1]  # largest <= x
    above = lattice[np.searchsorted(lattice, clamped, side="left")]  # smallest >= x
    outside = np.abs(wide) != np.abs(clamped)  # saturated in every mode
    below = np.where(outside, clamped, below)
    above = np.where(outside, clamped, above)
    toward_zero = np.where(wide > 0, below, above)
    out = {mode: np.asarray(values).astype(np.float64)
           for mode, values in _every_mode(jnp.asarray(x), fmt, jax.random.key(1)).items()}
    for mode, expected in (("down", below), ("up", above), ("toward_zero", toward_zero)):
        np.testing.assert_array_equal(out[mode], expected, err_msg=mode)
    for mode in ("nearest", "stochastic", "random"):
        assert ((out[mode] == below) | (out[mode] == above)).all(), mode


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda d: d.__name__)
def test_representable_values_unchanged_in_every_mode(carrier):
    fmt = get_format("posit16")
    lattice = universal_lattice("posit16").astype(carrier)  # posit16 fits float32 exactly
    uint = np.dtype(f"u{lattice.itemsize}")
    for mode, out in _every_mode(jnp.asarray(lattice), fmt, jax.random.key(2)).items():
        np.testing.assert_array_equal(np.asarray(out).view(uint), lattice.view(uint),
                                      err_msg=mode)


DRAWS = 100_000


@pytest.mark.parametrize(
    "name, carrier, x, lower, upper",
    [
        # neighbours in one binade: probability exact (the low bits over the gap)
        ("posit16", np.float64, 1 / 3, 2730 / 8192, 2731 / 8192),
        ("posit16", np.float32, -1 / 3, -2731 / 8192, -2730 / 8192),
        # exponent bits cut off: posit16 (es=2) has no posit between 2**52 and 2**56
        ("posit16", np.float64, 3 * 2.0**52, 2.0**52, 2.0**56),
        ("posit8", np.float32, -3e-7, -(2.0**-20), -(2.0**-24)),
    ],
    ids=["one-binade-f64", "one-binade-f32", "exponent-cut-f64", "above-minpos-f32"],
)
def test_stochastic_is_unbiased_and_random_is_fair(name, carrier, x, lower, upper):
    fmt = get_format(name)
    x = carrier(x)
    xs = jnp.full((DRAWS,), x)
    p_up = (float(x) - lower) / (upper - lower)  # probability of the upper neighbour
    for mode, expected_share in (("stochastic", p_up), ("random", 0.5)):
        bits = random_bits(jax.random.key(3), xs.shape, carrier)
        out = np.asarray(_round(xs, fmt, mode, bits)).astype(np.float64)
        assert set(np.unique(out)) <= {lower, upper}, mode
        share = np.mean(out == upper)
        # 5 binomial standard deviations: a false failure has probability below 1e-6.
        tolerance = 5 * np.sqrt(expected_share * (1 - expected_share) / DRAWS)
        assert abs(share - expected_share) <= tolerance, (mode, share, expected_share)
    # Unbiased: the mean of the stochastic roundings is x within the same tolerance in value.
    bits = random_bits(jax.random.key(4), xs.shape, carrier)
    mean = np.mean(np.asarray(_round(xs, fmt, "stochastic", bits)).astype(np.float64))
    tolerance = 5 * np.sqrt(p_up * (1 - p_up) / DRAWS) * (upper - lower)
    assert abs(mean - float(x)) <= abs(tolerance)


def test_jit_and_vmap_match_eager():
    fmt = get_format("posit16")
    x = jnp.asarray(wide_random(np.random.default_rng(9), 256, fmt.max_scale)).reshape(16, 16)
    bits = random_bits(jax.random.key(5), x.shape, x.dtype)
    eager = round_posit(x, fmt, "stochastic", bits)
    jitted = jax.jit(lambda v, b: round_posit(v, fmt, "stochastic", b))(x, bits)
    mapped = jax.jit(jax.vmap(lambda v, b: round_posit(v, fmt, "stochastic", b)))(x, bits)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(eager))
    assert eager.shape == x.shape and eager.dtype == x.dtype

