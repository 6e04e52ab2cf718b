"""Floating-point formats: what values a format can represent.

A :class:`FloatFormat` describes an IEEE-754-style binary format by its exponent and fraction
widths and by what it does with the encodings at the top of the exponent range (infinities,
NaN, or more finite values). The registry :data:`FORMATS` holds the formats of AI and HPC
hardware; :func:`get_format` turns a name into a format and checks it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

OverflowBehaviour = Literal["inf", "nan", "saturate"]


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with 1 sign bit, ``exponent_bits`` and ``mantissa_bits``.

    Attributes:
      name: identifier used in policies, reports and errors.
      exponent_bits: width of the exponent field (>= 1).
      mantissa_bits: width of the fraction field, without the implicit leading bit (>= 0).
      has_subnormals: whether values below the smallest normal are representable (gradual
        underflow). Without them, the only value below the smallest normal is zero.
      has_inf: whether the top exponent field encodes infinities (IEEE style). If not, the top
        exponent field holds finite values (and NaN, see ``has_nan``).
      has_nan: whether the format can represent NaN. In a format without infinities, NaN takes
        the single all-ones encoding (the ``fn`` formats such as ``float8_e4m3fn``).
      overflow: what a finite value beyond the largest finite number becomes when rounded:
        ``"inf"`` (IEEE), ``"nan"`` (formats with NaN but no infinity, as ``ml_dtypes`` casts) or
        ``"saturate"`` (the largest finite value, for formats with neither).
      bias: exponent bias; ``None`` means the IEEE default ``2**(exponent_bits - 1) - 1``.

    Example:
      >>> fmt = FloatFormat("fp8_e4m3", 4, 3, has_inf=False, overflow="nan")
      >>> fmt.max_finite, fmt.min_subnormal
      (448.0, 0.001953125)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    has_subnormals: bool = True
    has_inf: bool = True
    has_nan: bool = True
    overflow: OverflowBehaviour = "inf"
    bias: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"FloatFormat name must be a non-empty string, got {self.name!r}")
        for field in ("exponent_bits", "mantissa_bits"):
            value = getattr(self, field)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"FloatFormat {field} must be an int, got {value!r}")
            object.__setattr__(self, field, int(value))  # NumPy ints: math.ldexp rejects them
        if not 1 <= self.exponent_bits <= 11:
            raise ValueError(
                f"FloatFormat exponent_bits must be in 1..11 (the float64 carrier's width), "
                f"got {self.exponent_bits}"
            )
        if not 0 <= self.mantissa_bits <= 52:
            raise ValueError(
                f"FloatFormat mantissa_bits must be in 0..52 (the float64 carrier's width), "
                f"got {self.mantissa_bits}"
            )
        if self.overflow not in ("inf", "nan", "saturate"):
            raise ValueError(
                f"FloatFormat overflow must be 'inf', 'nan' or 'saturate', got {self.overflow!r}"
            )
        if self.overflow == "inf" and not self.has_inf:
            raise ValueError(f"format {self.name!r}: overflow='inf' needs has_inf=True")
        if self.overflow == "nan" and not self.has_nan:
            raise ValueError(f"format {self.name!r}: overflow='nan' needs has_nan=True")
        if self.has_inf and not self.has_nan:
            raise ValueError(f"format {self.name!r}: IEEE-style infinities need has_nan=True")
        if self.max_exponent < self.min_exponent:
            raise ValueError(f"format {self.name!r} has no normal binade (bias {self.bias})")
        if not self.has_inf and self.has_nan and self.mantissa_bits == 0 and self.exponent_bits < 2:
            raise ValueError(f"format {self.name!r} has no finite value besides NaN")

    # --- derived quantities -------------------------------------------------------------------

    @property
    def exponent_bias(self) -> int:
        """The exponent bias (IEEE default unless ``bias`` was given)."""
        return (1 << (self.exponent_bits - 1)) - 1 if self.bias is None else self.bias

    @property
    def total_bits(self) -> int:
        """Storage size in bits: sign + exponent + fraction."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def precision(self) -> int:
        """Significand precision p in bits, the implicit bit included."""
        return self.mantissa_bits + 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal binade (emin)."""
        return 1 - self.exponent_bias

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite binade (emax)."""
        top_field = (1 << self.exponent_bits) - 1
        if self.has_inf:
            top_field -= 1
        elif self.has_nan and self.mantissa_bits == 0:
            top_field -= 1  # the all-ones encoding is NaN, leaving nothing else in that binade
        return top_field - self.exponent_bias

    @property
    def max_finite(self) -> float:
        """The largest finite value."""
        fraction_ulps = (1 << self.mantissa_bits) - 1
        if not self.has_inf and self.has_nan and self.mantissa_bits > 0:
            fraction_ulps -= 1  # all-ones fraction in the top binade is NaN
        return math.ldexp(1.0 + fraction_ulps / (1 << self.mantissa_bits), self.max_exponent)

    @property
    def min_normal(self) -> float:
        """The smallest positive normal value, 2**emin."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def min_subnormal(self) -> float:
        """The smallest positive value: 2**(emin - mantissa_bits), or the smallest normal if the
        format has no subnormals."""
        if not self.has_subnormals:
            return self.min_normal
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """Machine epsilon: the distance from 1 to the next larger value, 2**-mantissa_bits."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-p, the bound on the relative error of round-to-nearest."""
        return math.ldexp(1.0, -self.precision)

    def fits_in(self, dtype) -> bool:
        """Whether every value of this format is exactly representable in ``dtype``."""
        carrier = carrier_format(dtype)
        return self.is_subset_of(carrier)

    def is_subset_of(self, other: FloatFormat) -> bool:
        """Whether every finite value of this format is a value of ``other``.

        Example:
          >>> get_format("bf16").is_subset_of(get_format("fp32"))
          True
          >>> get_format("bf16").is_subset_of(get_format("fp16"))
          False
        """
        if self.mantissa_bits > other.mantissa_bits or self.max_finite > other.max_finite:
            return False
        if self.min_subnormal < other.min_subnormal:
            return False
        # Values between other's smallest subnormal and smallest normal need other's subnormals.
        if not other.has_subnormals and self.min_subnormal < other.min_normal:
            return False
        # Every finite binade of self has at most other's precision once exponents are aligned;
        # self's smallest quantum is a multiple of other's, checked above.
        return True

    def describe(self) -> str:
        """A one-line human description, e.g. for reports."""
        specials = []
        if self.has_inf:
            specials.append("inf")
        if self.has_nan:
            specials.append("nan")
        return (
            f"{self.name}: e{self.exponent_bits}m{self.mantissa_bits} ({self.total_bits} bits), "
            f"max {self.max_finite:.6g}, min normal {self.min_normal:.6g}, "
            f"min subnormal {self.min_subnormal:.6g}, eps {self.epsilon:.3g}, "
            f"specials {'/'.join(specials) or 'none'}, overflow -> {self.overflow}"
        )

    def to_dict(self) -> dict:
        """A JSON/TOML-friendly dict; :func:`get_format` accepts it back."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if
                getattr(self, f.name) is not None}


def _ieee(name: str, e: int, m: int) -> FloatFormat:
    return FloatFormat(name, e, m)


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        _ieee("fp64", 11, 52),
        _ieee("fp32", 8, 23),
        _ieee("tf32", 8, 10),
        _ieee("bf16", 8, 7),
        _ieee("fp16", 5, 10),
        # OCP 8-bit floating point (OFP8): E4M3 has no infinity, NaN is S.1111.111.
        FloatFormat("fp8_e4m3", 4, 3, has_inf=False, has_nan=True, overflow="nan"),
        _ieee("fp8_e5m2", 5, 2),
        # OCP Microscaling element formats: neither infinities nor NaN, overflow saturates.
        FloatFormat("fp6_e3m2", 3, 2, has_inf=False, has_nan=False, overflow="saturate"),
        FloatFormat("fp6_e2m3", 2, 3, has_inf=False, has_nan=False, overflow="saturate"),
        FloatFormat("fp4_e2m1", 2, 1, has_inf=False, has_nan=False, overflow="saturate"),
    )
}
"""The named formats. Aliases (``float32``, ``bfloat16``, ``e4m3``…) are in :data:`ALIASES`."""

ALIASES: dict[str, str] = {
    "float64": "fp64", "double": "fp64", "f64": "fp64",
    "float32": "fp32", "single": "fp32", "f32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "e4m3": "fp8_e4m3", "fp8_e4m3fn": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "float6_e3m2fn": "fp6_e3m2", "e3m2": "fp6_e3m2",
    "float6_e2m3fn": "fp6_e2m3", "e2m3": "fp6_e2m3",
    "fp4": "fp4_e2m1", "float4_e2m1fn": "fp4_e2m1", "e2m1": "fp4_e2m1",
}

_CARRIERS = {
    np.dtype(np.float64): FORMATS["fp64"],
    np.dtype(np.float32): FORMATS["fp32"],
    np.dtype(np.float16): FORMATS["fp16"],
}


def carrier_format(dtype) -> FloatFormat:
    """The :class:`FloatFormat` of a NumPy/JAX floating dtype (float64, float32, float16,
    bfloat16) that carries emulated values.

    Raises:
      ValueError: if ``dtype`` is not one of those.
    """
    import ml_dtypes

    dt = np.dtype(dtype)
    if dt == np.dtype(ml_dtypes.bfloat16):
        return FORMATS["bf16"]
    if dt not in _CARRIERS:
        raise ValueError(
            f"x must have a floating dtype float64, float32, float16 or bfloat16 to carry "
            f"emulated values, got dtype {dt}"
        )
    return _CARRIERS[dt]


def get_format(fmt: str | FloatFormat | dict) -> FloatFormat:
    """Returns the :class:`FloatFormat` for a name, an alias, a format, or a dict of fields.

    Names are case-insensitive; ``"e<E>m<M>"`` (e.g. ``"e6m9"``) builds a custom IEEE-style
    format with E exponent and M fraction bits.

    Example:
      >>> get_format("bf16").mantissa_bits
      7
      >>> get_format("e3m4").max_finite
      15.5

    Raises:
      ValueError: for an unknown name, with the list of known ones.
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, dict):
        try:
            return FloatFormat(**fmt)
        except TypeError as err:
            raise ValueError(f"format dict {fmt!r} has bad fields: {err}") from None
    if not isinstance(fmt, str):
        raise ValueError(f"format must be a name, a FloatFormat or a dict, got {fmt!r}")
    key = fmt.strip().lower()
    key = ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    custom = _parse_custom(key)
    if custom is not None:
        return custom
    raise ValueError(
        f"unknown format {fmt!r}; known: {', '.join(FORMATS)} (aliases: {', '.join(ALIASES)}), "
        f"or 'e<E>m<M>' for a custom IEEE-style format"
    )


def _parse_custom(key: str) -> FloatFormat | None:
    import re

    match = re.fullmatch(r"e(\d+)m(\d+)", key)
    if match is None:
        return None
    return FloatFormat(key, int(match.group(1)), int(match.group(2)))
