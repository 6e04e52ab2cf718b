"""Tests for dp2ejax.arith.formats: the format registry, derived constants, names and checks.

Derived constants are compared with ``ml_dtypes.finfo`` / ``numpy.finfo`` (an independent
reference); they are all powers of two or short binary fractions, so equality is exact.
"""

import dataclasses
import itertools

import ml_dtypes
import numpy as np
import pytest

from dp2ejax.arith import ALIASES, FORMATS, FloatFormat, carrier_format, get_format
from dp2ejax.arith.formats import BlockScaledFormat, IntFormat, PositFormat

# (format, reference dtype) for every format that numpy or ml_dtypes implements.
FINFO_PAIRS = [
    (FORMATS["fp64"], np.float64),
    (FORMATS["fp32"], np.float32),
    (FORMATS["bf16"], ml_dtypes.bfloat16),
    (FORMATS["fp16"], np.float16),
    (FORMATS["fp8_e4m3"], ml_dtypes.float8_e4m3fn),
    (FORMATS["fp8_e5m2"], ml_dtypes.float8_e5m2),
    (FORMATS["fp6_e3m2"], ml_dtypes.float6_e3m2fn),
    (FORMATS["fp6_e2m3"], ml_dtypes.float6_e2m3fn),
    (FORMATS["fp4_e2m1"], ml_dtypes.float4_e2m1fn),
    # IEEE-style customs: e4m3 with infinities is ml_dtypes' float8_e4m3 (max 240).
    (FloatFormat("x", 4, 3), ml_dtypes.float8_e4m3),
    (get_format("e3m4"), ml_dtypes.float8_e3m4),
]


def _pair_id(pair):
    return f"{pair[0].name}-{np.dtype(pair[1]).name}"


def _all_values(dtype) -> np.ndarray:
    """Every finite value of a float type of at most 16 bits, from all its bit patterns."""
    bits = ml_dtypes.finfo(dtype).bits
    codes = np.arange(2**bits, dtype=np.uint16 if bits == 16 else np.uint8)
    with np.errstate(invalid="ignore"):
        values = codes.view(dtype).astype(np.float64)
    return values[np.isfinite(values)]


def test_registry_holds_the_documented_formats():
    assert list(FORMATS) == [
        "fp64",
        "fp32",
        "tf32",
        "bf16",
        "fp16",
        "fp8_e4m3",
        "fp8_e5m2",
        "fp6_e3m2",
        "fp6_e2m3",
        "fp4_e2m1",
        "mxfp8_e4m3",
        "mxfp8_e5m2",
        "mxfp6_e3m2",
        "mxfp6_e2m3",
        "mxfp4",
        "mxint8",
        "nvfp4",
        "int8",
        "int4",
        "posit8",
        "posit16",
        "posit32",
    ]
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        assert get_format(fmt.to_dict()) == fmt


@pytest.mark.parametrize(
    "name, fields",
    [
        # (exponent_bits, mantissa_bits, has_inf, has_nan, overflow, total_bits)
        ("fp64", (11, 52, True, True, "inf", 64)),
        ("fp32", (8, 23, True, True, "inf", 32)),
        ("tf32", (8, 10, True, True, "inf", 19)),
        ("bf16", (8, 7, True, True, "inf", 16)),
        ("fp16", (5, 10, True, True, "inf", 16)),
        ("fp8_e4m3", (4, 3, False, True, "nan", 8)),
        ("fp8_e5m2", (5, 2, True, True, "inf", 8)),
        ("fp6_e3m2", (3, 2, False, False, "saturate", 6)),
        ("fp6_e2m3", (2, 3, False, False, "saturate", 6)),
        ("fp4_e2m1", (2, 1, False, False, "saturate", 4)),
    ],
)
def test_format_fields(name, fields):
    fmt = FORMATS[name]
    assert (
        fmt.exponent_bits,
        fmt.mantissa_bits,
        fmt.has_inf,
        fmt.has_nan,
        fmt.overflow,
        fmt.total_bits,
    ) == fields
    assert fmt.has_subnormals
    assert fmt.precision == fmt.mantissa_bits + 1
    assert fmt.unit_roundoff == fmt.epsilon / 2


@pytest.mark.parametrize("pair", FINFO_PAIRS, ids=_pair_id)
def test_constants_match_finfo(pair):
    fmt, dtype = pair
    info = ml_dtypes.finfo(dtype)  # delegates to numpy.finfo for float16/32/64
    # Exact equality: every constant is a dyadic rational that float64 holds exactly.
    assert fmt.max_finite == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.epsilon == float(info.eps)
    assert fmt.mantissa_bits == info.nmant
    assert fmt.exponent_bits == info.nexp
    assert fmt.total_bits == info.bits


@pytest.mark.parametrize(
    "pair", [p for p in FINFO_PAIRS if np.dtype(p[1]).itemsize <= 2], ids=_pair_id
)
def test_constants_are_the_extremes_of_the_value_set(pair):
    """max_finite / min_normal / min_subnormal against the enumerated values of the type."""
    fmt, dtype = pair
    values = _all_values(dtype)
    positive = values[values > 0]
    assert positive.max() == fmt.max_finite
    assert positive.min() == fmt.min_subnormal
    assert positive[positive >= fmt.min_normal].min() == fmt.min_normal
    # Below min_normal: exactly the 2**m - 1 subnormals k * min_subnormal.
    subnormals = np.sort(positive[positive < fmt.min_normal])
    np.testing.assert_array_equal(
        subnormals, np.arange(1, 2**fmt.mantissa_bits) * fmt.min_subnormal
    )
    # epsilon: 1 + epsilon is the successor of 1.
    assert positive[positive > 1].min() == 1 + fmt.epsilon


def test_tf32_constants():
    # No numpy/ml_dtypes type for tf32: e8m10 with fp32's exponent range.
    tf32 = FORMATS["tf32"]
    assert tf32.max_finite == (2 - 2.0**-10) * 2.0**127
    assert tf32.min_normal == 2.0**-126
    assert tf32.min_subnormal == 2.0**-136
    assert tf32.epsilon == 2.0**-10


def test_docstring_example_and_custom_format_constants():
    fmt = FloatFormat("fp8_e4m3", 4, 3, has_inf=False, overflow="nan")
    assert (fmt.max_finite, fmt.min_subnormal) == (448.0, 0.001953125)
    assert fmt == FORMATS["fp8_e4m3"]
    e6m9 = get_format("e6m9")
    assert (e6m9.exponent_bits, e6m9.mantissa_bits, e6m9.exponent_bias) == (6, 9, 31)
    assert e6m9.max_finite == (2 - 2.0**-9) * 2.0**31
    assert e6m9.min_subnormal == 2.0 ** (-30 - 9)
    # Explicit bias and no subnormals.
    biased = FloatFormat("b", 5, 2, bias=10, has_subnormals=False)
    assert (biased.min_exponent, biased.max_exponent) == (-9, 20)
    assert biased.min_subnormal == biased.min_normal == 2.0**-9


@pytest.mark.parametrize(
    "alias, target",
    [
        ("float64", "fp64"),
        ("double", "fp64"),
        ("f64", "fp64"),
        ("float32", "fp32"),
        ("single", "fp32"),
        ("f32", "fp32"),
        ("bfloat16", "bf16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        ("f16", "fp16"),
        ("e4m3", "fp8_e4m3"),
        ("fp8_e4m3fn", "fp8_e4m3"),
        ("float8_e4m3fn", "fp8_e4m3"),
        ("e5m2", "fp8_e5m2"),
        ("float8_e5m2", "fp8_e5m2"),
        ("float6_e3m2fn", "fp6_e3m2"),
        ("e3m2", "fp6_e3m2"),
        ("float6_e2m3fn", "fp6_e2m3"),
        ("e2m3", "fp6_e2m3"),
        ("fp4", "fp4_e2m1"),
        ("float4_e2m1fn", "fp4_e2m1"),
        ("e2m1", "fp4_e2m1"),
        # case and surrounding space are ignored
        ("  BF16 ", "bf16"),
        ("FP8_E4M3", "fp8_e4m3"),
        ("Float32", "fp32"),
    ],
)
def test_get_format_aliases(alias, target):
    assert get_format(alias) is FORMATS[target]


def test_every_alias_and_name_resolves():
    for alias, target in ALIASES.items():
        assert get_format(alias) is FORMATS[target]
    for name, fmt in FORMATS.items():
        assert get_format(name) is fmt
        assert get_format(fmt) is fmt
        assert get_format(fmt.to_dict()) == fmt


@pytest.mark.parametrize("e, m", [(2, 0), (2, 5), (3, 4), (6, 9), (8, 0), (11, 52), (10, 30)])
def test_get_format_custom_names(e, m):
    fmt = get_format(f"e{e}m{m}")
    assert (fmt.exponent_bits, fmt.mantissa_bits) == (e, m)
    assert (fmt.has_inf, fmt.has_nan, fmt.has_subnormals, fmt.overflow) == (True, True, True, "inf")
    bias = 2 ** (e - 1) - 1
    assert fmt.max_finite == (2 - 2.0**-m) * 2.0 ** (2**e - 2 - bias)
    assert fmt.min_subnormal == 2.0 ** (1 - bias - m)
    assert get_format(f"E{e}M{m}") == fmt


def test_get_format_custom_names_out_of_range():
    with pytest.raises(ValueError, match="exponent_bits"):
        get_format("e12m3")
    with pytest.raises(ValueError, match="exponent_bits"):
        get_format("e0m3")
    with pytest.raises(ValueError, match="mantissa_bits"):
        get_format("e8m53")


@pytest.mark.parametrize("bad", ["fp7", "bf17", "e4m", "m3e4", "fp8", "", "float8_e4m3fnuz"])
def test_get_format_unknown_name(bad):
    with pytest.raises(ValueError) as info:
        get_format(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in FORMATS:
        assert name in message
    assert "e<E>m<M>" in message


@pytest.mark.parametrize("bad", [3, 3.5, None, np.float32])
def test_get_format_bad_type(bad):
    with pytest.raises(ValueError, match="format must be a name"):
        get_format(bad)


def test_get_format_bad_dict():
    with pytest.raises(ValueError, match="bad fields"):
        get_format({"name": "x", "exponent_bits": 4, "mantissa_bits": 3, "colour": "red"})
    with pytest.raises(ValueError, match="bad fields"):
        get_format({"name": "x", "exponent_bits": 4})  # mantissa_bits missing
    with pytest.raises(ValueError, match="exponent_bits"):
        get_format({"name": "x", "exponent_bits": 0, "mantissa_bits": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="", exponent_bits=4, mantissa_bits=3), "non-empty string"),
        (dict(name=5, exponent_bits=4, mantissa_bits=3), "non-empty string"),
        (dict(name="x", exponent_bits=4.0, mantissa_bits=3), "exponent_bits must be an int"),
        (dict(name="x", exponent_bits=True, mantissa_bits=3), "exponent_bits must be an int"),
        (dict(name="x", exponent_bits=4, mantissa_bits="3"), "mantissa_bits must be an int"),
        (dict(name="x", exponent_bits=0, mantissa_bits=3), "exponent_bits must be in 1..11"),
        (dict(name="x", exponent_bits=12, mantissa_bits=3), "exponent_bits must be in 1..11"),
        (dict(name="x", exponent_bits=4, mantissa_bits=-1), "mantissa_bits must be in 0..52"),
        (dict(name="x", exponent_bits=4, mantissa_bits=53), "mantissa_bits must be in 0..52"),
        (dict(name="x", exponent_bits=4, mantissa_bits=3, overflow="wrap"), "overflow must be"),
        (dict(name="x", exponent_bits=4, mantissa_bits=3, has_inf=False), "needs has_inf"),
        (
            dict(
                name="x",
                exponent_bits=4,
                mantissa_bits=3,
                has_inf=False,
                has_nan=False,
                overflow="nan",
            ),
            "needs has_nan",
        ),
        (dict(name="x", exponent_bits=4, mantissa_bits=3, has_nan=False), "need has_nan"),
        # One exponent bit: IEEE-style its only field besides 0 holds infinities; in an fn
        # format with no fraction bits its only encoding besides 0 is NaN.
        (dict(name="x", exponent_bits=1, mantissa_bits=3), "no normal binade"),
        (
            dict(name="x", exponent_bits=1, mantissa_bits=0, has_inf=False, overflow="nan"),
            "no normal binade",
        ),
    ],
)
def test_bad_fields_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FloatFormat(**kwargs)


def test_numpy_integer_fields_are_accepted():
    fmt = FloatFormat("x", np.int64(4), np.int32(3))
    assert fmt.max_finite == 240.0 and fmt.min_subnormal == 2.0**-9
    assert fmt == FloatFormat("x", 4, 3)
    assert type(fmt.to_dict()["exponent_bits"]) is int  # stays TOML/JSON friendly


def test_format_is_frozen_and_hashable():
    fmt = FORMATS["bf16"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.mantissa_bits = 3
    # Hashable and equal by value: usable as a static argument of jax.jit.
    assert hash(FloatFormat("bf16", 8, 7)) == hash(fmt)
    assert {fmt: 1}[FloatFormat("bf16", 8, 7)] == 1


def test_describe_and_to_dict():
    text = FORMATS["fp8_e4m3"].describe()
    assert text.startswith("fp8_e4m3: e4m3 (8 bits), max 448")
    assert "specials nan" in text and "overflow -> nan" in text
    assert "specials none" in FORMATS["fp4_e2m1"].describe()
    assert FORMATS["fp4_e2m1"].to_dict() == {
        "name": "fp4_e2m1",
        "exponent_bits": 2,
        "mantissa_bits": 1,
        "has_subnormals": True,
        "has_inf": False,
        "has_nan": False,
        "overflow": "saturate",
    }
    biased = FloatFormat("b", 5, 2, bias=10)
    assert biased.to_dict()["bias"] == 10 and get_format(biased.to_dict()) == biased


@pytest.mark.parametrize(
    "small, big, expected",
    [
        ("bf16", "fp32", True),
        ("bf16", "fp16", False),  # range
        ("fp16", "bf16", False),  # precision
        ("fp16", "fp32", True),
        ("tf32", "fp32", True),
        ("fp32", "tf32", False),
        ("fp32", "fp64", True),
        ("fp64", "fp32", False),
        ("fp8_e4m3", "fp16", True),
        ("fp8_e5m2", "fp16", True),
        ("fp8_e5m2", "bf16", True),
        ("fp8_e4m3", "fp8_e5m2", False),
        ("fp8_e5m2", "fp8_e4m3", False),
        ("fp4_e2m1", "fp6_e2m3", True),
        ("fp4_e2m1", "fp6_e3m2", True),
        ("fp6_e3m2", "fp8_e4m3", True),
        ("fp6_e2m3", "fp6_e3m2", False),
    ],
)
def test_is_subset_of_examples(small, big, expected):
    assert FORMATS[small].is_subset_of(FORMATS[big]) is expected


def test_is_subset_of_subnormal_cases():
    nosub = FloatFormat("e5m2_nosub", 5, 2, has_subnormals=False)
    assert nosub.is_subset_of(FORMATS["fp8_e5m2"])
    assert not FORMATS["fp8_e5m2"].is_subset_of(nosub)  # e5m2 subnormals are missing
    for fmt in FORMATS.values():
        if isinstance(fmt, FloatFormat | PositFormat):
            assert fmt.is_subset_of(fmt)
            assert fmt.is_subset_of(FORMATS["fp64"])
        else:  # values depend on data-dependent scales: never a fixed subset
            assert not fmt.is_subset_of(fmt)
            assert not fmt.is_subset_of(FORMATS["fp64"])


def test_posit_subsets():
    p8, p16, p32 = (FORMATS[f"posit{n}"] for n in (8, 16, 32))
    assert p8.is_subset_of(p16) and p16.is_subset_of(p32) and not p32.is_subset_of(p16)
    assert not p16.is_subset_of(get_format("posit32_es1"))  # a different es: other values
    assert p16.is_subset_of(FORMATS["fp32"])  # 11 fraction bits, 2**±56
    assert not p16.is_subset_of(FORMATS["fp16"]) and not p32.is_subset_of(FORMATS["fp32"])
    assert p16.maxpos == 2.0**56 and p16.minpos == 2.0**-56 and p32.max_fraction_bits == 27


def test_other_format_kinds_by_name_and_dict():
    assert get_format("posit16_es1") == PositFormat("posit16_es1", 16, 1)
    assert get_format("int4_block64") == IntFormat("int4_block64", 4, "block", block_size=64)
    assert get_format("INT8_channel").granularity == "channel"
    assert get_format("mxfp8") is FORMATS["mxfp8_e4m3"]
    custom = BlockScaledFormat("mxfp6_b16", "fp6_e2m3", block_size=16, axis=0)
    assert get_format(custom.to_dict()) == custom
    assert custom.bits_per_value == 6.5 and FORMATS["nvfp4"].bits_per_value == 4.5
    assert FORMATS["mxfp4"].element_max == 6.0 and FORMATS["mxfp4"].element_emax == 2
    assert FORMATS["mxint8"].element_max == 127 / 64


@pytest.mark.parametrize("bad, message", [
    ({"kind": "posit", "name": "p", "nbits": 2}, "nbits must be an int in 3..64"),
    ({"kind": "posit", "nbits": 8}, "missing 1 required positional argument: .name."),
    ({"kind": "int", "name": "i", "bits": 17}, "bits must be an int in 2..16"),
    ({"kind": "int", "name": "i", "granularity": "row"}, "granularity must be"),
    ({"kind": "block_scaled", "name": "b", "element": "fp16"}, "element must be 'int8' or"),
    ({"kind": "block_scaled", "name": "b", "element": "fp4", "scale": "e5m2"}, "scale must be"),
    ({"kind": "tensor"}, "unknown kind 'tensor'"),
    ("posit", "unknown format 'posit'"),
])
def test_bad_format_specs_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        get_format(bad)


# Formats whose whole value set numpy/ml_dtypes can enumerate (at most 16 bits).
_ENUMERABLE = [p for p in FINFO_PAIRS if np.dtype(p[1]).itemsize <= 2]


@pytest.mark.parametrize(
    "a, b",
    list(itertools.product(_ENUMERABLE, repeat=2)),
    ids=[f"{_pair_id(a)}-in-{_pair_id(b)}" for a, b in itertools.product(_ENUMERABLE, repeat=2)],
)
def test_is_subset_of_matches_value_sets(a, b):
    """is_subset_of against brute force: are all of a's finite values among b's?"""
    values_a = _all_values(a[1])
    values_b = _all_values(b[1])
    assert a[0].is_subset_of(b[0]) == bool(np.all(np.isin(values_a, values_b)))


@pytest.mark.parametrize("pair", _ENUMERABLE, ids=_pair_id)
def test_fits_in_matches_value_sets(pair):
    fmt, dtype = pair
    values = _all_values(dtype)
    for carrier in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
        with np.errstate(over="ignore"):
            round_trip = values.astype(carrier).astype(np.float64)
        assert fmt.fits_in(carrier) == bool(np.all(round_trip == values)), carrier


def test_carrier_format():
    assert carrier_format(np.float64) is FORMATS["fp64"]
    assert carrier_format(np.float32) is FORMATS["fp32"]
    assert carrier_format(np.float16) is FORMATS["fp16"]
    assert carrier_format(ml_dtypes.bfloat16) is FORMATS["bf16"]
    assert carrier_format("float32") is FORMATS["fp32"]
    for bad in (np.int32, ml_dtypes.float8_e4m3fn, np.complex64):
        with pytest.raises(ValueError, match=f"got dtype {np.dtype(bad).name}"):
            carrier_format(bad)
    with pytest.raises(ValueError, match="got dtype int32"):
        FORMATS["bf16"].fits_in(np.int32)
