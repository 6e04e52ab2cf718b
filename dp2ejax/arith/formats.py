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

    @property
    def bits_per_value(self) -> float:
        """Storage cost of one value in bits (what cost models price)."""
        return float(self.total_bits)

    def is_subset_of(self, other: Format) -> bool:
        """Whether every finite value of this format is a value of ``other`` (always False for
        block-scaled and integer formats, whose values depend on data-dependent scales).

        Example:
          >>> get_format("bf16").is_subset_of(get_format("fp32"))
          True
          >>> get_format("bf16").is_subset_of(get_format("fp16"))
          False
        """
        if not isinstance(other, FloatFormat):
            return False
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


def _check_int(owner: str, field: str, value, low: int, high: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or not (
            low <= value <= high):
        raise ValueError(f"{owner} {field} must be an int in {low}..{high}, got {value!r}")
    return int(value)


def _kind_dict(fmt, kind: str) -> dict:
    out = {"kind": kind}
    out.update({f.name: getattr(fmt, f.name) for f in dataclasses.fields(fmt)
                if getattr(fmt, f.name) is not None})
    return out


@dataclasses.dataclass(frozen=True)
class PositFormat:
    """A posit<nbits, es> format (Posit Standard 2022; the standard's posits have es = 2).

    A posit has a sign, a run-length regime, up to ``es`` exponent bits and the remaining bits
    as fraction: values are ``useed**r * 2**e * (1 + f)`` with ``useed = 2**(2**es)``, tapered
    precision (most fraction bits near 1), no subnormals, no infinities, and one NaR
    (not-a-real) that NaN and infinities become. Rounding never underflows to zero nor overflows:
    it saturates at ``minpos`` and ``maxpos``.

    Example:
      >>> p = get_format("posit16")
      >>> p.maxpos == 2.0**56, p.max_fraction_bits
      (True, 11)
    """

    name: str
    nbits: int
    es: int = 2

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PositFormat name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "nbits", _check_int("PositFormat", "nbits", self.nbits, 3, 64))
        object.__setattr__(self, "es", _check_int("PositFormat", "es", self.es, 0, 5))

    @property
    def useed(self) -> float:
        return math.ldexp(1.0, 1 << self.es)

    @property
    def max_scale(self) -> int:
        """log2(maxpos) = (nbits - 2) * 2**es; minpos = 2**-max_scale."""
        return (self.nbits - 2) << self.es

    @property
    def maxpos(self) -> float:
        return math.ldexp(1.0, self.max_scale)

    @property
    def minpos(self) -> float:
        return math.ldexp(1.0, -self.max_scale)

    @property
    def max_fraction_bits(self) -> int:
        """Fraction bits of the posits nearest 1 (regime of 2 bits, every exponent bit)."""
        return max(self.nbits - 3 - self.es, 0)

    @property
    def precision(self) -> int:
        """Significand precision in bits near 1, the implicit bit included."""
        return self.max_fraction_bits + 1

    @property
    def bits_per_value(self) -> float:
        return float(self.nbits)

    def is_subset_of(self, other: Format) -> bool:
        """Whether every posit value is a value of ``other`` (a float format, or a posit with
        the same ``es`` and at least as many bits)."""
        if isinstance(other, PositFormat):
            return other.es == self.es and other.nbits >= self.nbits
        if not isinstance(other, FloatFormat):
            return False
        return (self.max_fraction_bits <= other.mantissa_bits
                and self.maxpos <= other.max_finite and self.minpos >= other.min_normal)

    def fits_in(self, dtype) -> bool:
        return self.is_subset_of(carrier_format(dtype))

    def describe(self) -> str:
        return (f"{self.name}: posit<{self.nbits},{self.es}>, maxpos 2^{self.max_scale}, "
                f"minpos 2^-{self.max_scale}, up to {self.max_fraction_bits} fraction bits, NaR")

    def to_dict(self) -> dict:
        return _kind_dict(self, "posit")


IntGranularity = Literal["tensor", "channel", "block"]


@dataclasses.dataclass(frozen=True)
class IntFormat:
    """Symmetric signed integers of ``bits`` bits with absmax scales: a value x becomes
    ``scale * clip(round(x * (1 / scale)), -qmax, qmax)`` with ``qmax = 2**(bits-1) - 1`` and
    ``scale = absmax * (1 / qmax)`` (PyTorch's fake-quantize arithmetic) taken per tensor, per
    channel (every index along ``axis`` has its own scale) or per block of ``block_size``
    consecutive elements along ``axis``.
    ``percentile`` (e.g. 99.9) replaces the absmax by that percentile of |x| (calibration that
    clips outliers). Matmuls of integer operands accumulate exactly in int32 and rescale once.

    Example:
      >>> get_format("int8").qmax, get_format("int4_channel").granularity
      (127, 'channel')
    """

    name: str
    bits: int = 8
    granularity: IntGranularity = "tensor"
    axis: int = -1
    block_size: int = 32
    percentile: float | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"IntFormat name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "bits", _check_int("IntFormat", "bits", self.bits, 2, 16))
        if self.granularity not in ("tensor", "channel", "block"):
            raise ValueError(f"IntFormat granularity must be 'tensor', 'channel' or 'block', "
                             f"got {self.granularity!r}")
        object.__setattr__(self, "axis", _check_int("IntFormat", "axis", self.axis, -64, 63))
        object.__setattr__(self, "block_size",
                           _check_int("IntFormat", "block_size", self.block_size, 1, 1 << 20))
        if self.percentile is not None and not (
                isinstance(self.percentile, int | float) and 0 < self.percentile <= 100):
            raise ValueError(f"IntFormat percentile must be in (0, 100], got {self.percentile!r}")

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def precision(self) -> int:
        """Bits of the largest magnitudes (a digits cap for CESTAC)."""
        return self.bits - 1

    @property
    def bits_per_value(self) -> float:
        """Element bits plus the block's float32 scale spread over the block."""
        return self.bits + (32.0 / self.block_size if self.granularity == "block" else 0.0)

    def is_subset_of(self, other: Format) -> bool:
        return False

    def fits_in(self, dtype) -> bool:
        return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))

    def describe(self) -> str:
        where = {"tensor": "per tensor", "channel": f"per channel (axis {self.axis})",
                 "block": f"per block of {self.block_size} along axis {self.axis}"}
        clip = f", scale from the {self.percentile} percentile" if self.percentile else ""
        return (f"{self.name}: int{self.bits} symmetric [-{self.qmax}, {self.qmax}], absmax scale "
                f"{where[self.granularity]}{clip}")

    def to_dict(self) -> dict:
        return _kind_dict(self, "int")


@dataclasses.dataclass(frozen=True)
class BlockScaledFormat:
    """A block-scaled format: blocks of ``block_size`` consecutive elements along ``axis`` share
    one scale; each element is stored in a narrow ``element`` format.

    OCP Microscaling (MX) v1.0: E8M0 scales (a power of two, 2**-127 .. 2**127, with a NaN
    encoding) ``2**(floor(log2(amax)) - emax_elem)``, elements rounded and saturated to the
    element format's largest normal. NVFP4: E2M1 elements in blocks of 16 with an E4M3 scale
    ``amax / 6`` under a per-tensor float32 scale (``tensor_scale=True``).

    ``element`` names a :class:`FloatFormat` or is ``"int8"`` (MXINT8: two's complement with an
    implicit scale of 2**-6, values in [-127/64, 127/64]).

    Example:
      >>> f = get_format("mxfp4")
      >>> f.element, f.block_size, f.bits_per_value
      ('fp4_e2m1', 32, 4.25)
    """

    name: str
    element: str
    block_size: int = 32
    scale: str = "e8m0"
    axis: int = -1
    tensor_scale: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"BlockScaledFormat name must be a non-empty string, "
                             f"got {self.name!r}")
        if self.element != "int8":
            element = get_format(self.element)
            if not isinstance(element, FloatFormat) or element.total_bits > 8:
                raise ValueError(f"BlockScaledFormat element must be 'int8' or a float format of "
                                 f"at most 8 bits, got {self.element!r}")
            object.__setattr__(self, "element", element.name)
        if self.scale not in ("e8m0", "fp8_e4m3"):
            raise ValueError(f"BlockScaledFormat scale must be 'e8m0' (OCP MX) or 'fp8_e4m3' "
                             f"(NVFP4), got {self.scale!r}")
        object.__setattr__(self, "block_size", _check_int(
            "BlockScaledFormat", "block_size", self.block_size, 1, 1 << 20))
        object.__setattr__(self, "axis", _check_int("BlockScaledFormat", "axis", self.axis,
                                                    -64, 63))
        if self.tensor_scale and self.scale != "fp8_e4m3":
            raise ValueError("BlockScaledFormat tensor_scale needs scale='fp8_e4m3' (NVFP4)")

    @property
    def element_format(self) -> FloatFormat | None:
        """The element :class:`FloatFormat` (None for MXINT8's integers)."""
        return None if self.element == "int8" else get_format(self.element)

    @property
    def element_bits(self) -> int:
        return 8 if self.element == "int8" else self.element_format.total_bits

    @property
    def element_emax(self) -> int:
        """Exponent of the element format's largest binade (0 for MXINT8)."""
        return 0 if self.element == "int8" else self.element_format.max_exponent

    @property
    def element_max(self) -> float:
        """The element format's largest finite value (saturation bound)."""
        return 127 / 64 if self.element == "int8" else self.element_format.max_finite

    @property
    def scale_bits(self) -> int:
        return 8

    @property
    def precision(self) -> int:
        return 7 if self.element == "int8" else self.element_format.precision

    @property
    def bits_per_value(self) -> float:
        """Element bits plus the shared scale spread over the block (the per-tensor scale of
        NVFP4 is not counted)."""
        return self.element_bits + self.scale_bits / self.block_size

    def is_subset_of(self, other: Format) -> bool:
        return False

    def fits_in(self, dtype) -> bool:
        return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))

    def describe(self) -> str:
        extra = " under a per-tensor fp32 scale" if self.tensor_scale else ""
        return (f"{self.name}: {self.element} elements, blocks of {self.block_size} along axis "
                f"{self.axis}, {self.scale} scale{extra} ({self.bits_per_value:g} bits/value)")

    def to_dict(self) -> dict:
        return _kind_dict(self, "block_scaled")


Format = FloatFormat | PositFormat | IntFormat | BlockScaledFormat
"""Any format of the registry: every kind has ``name``, ``precision``, ``bits_per_value``,
``is_subset_of``, ``fits_in``, ``describe`` and ``to_dict``."""


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
    "mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e3m2", "mxfp4_e2m1": "mxfp4",
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


def get_format(fmt: str | Format | dict) -> Format:
    """Returns the format for a name, an alias, a format, or a dict of fields.

    Names are case-insensitive. Besides the registry :data:`FORMATS`: ``"e<E>m<M>"`` (e.g.
    ``"e6m9"``) is a custom IEEE-style format with E exponent and M fraction bits;
    ``"posit<N>"`` / ``"posit<N>_es<K>"`` a posit<N, K> (K = 2 by default); ``"int<B>"``,
    ``"int<B>_channel"`` or ``"int<B>_block<S>"`` a symmetric B-bit integer format with a scale
    per tensor, per channel (last axis) or per block of S. A dict is a format's ``to_dict()``:
    fields of :class:`FloatFormat`, or ``kind`` = ``"posit"``, ``"int"``, ``"block_scaled"``
    with the fields of that class.

    Example:
      >>> get_format("bf16").mantissa_bits
      7
      >>> get_format("e3m4").max_finite
      15.5
      >>> get_format("posit16_es1").es, get_format("int4_block64").block_size
      (1, 64)

    Raises:
      ValueError: for an unknown name, with the list of known ones.
    """
    if isinstance(fmt, FloatFormat | PositFormat | IntFormat | BlockScaledFormat):
        return fmt
    if isinstance(fmt, dict):
        fields = dict(fmt)
        kinds = {"posit": PositFormat, "int": IntFormat, "block_scaled": BlockScaledFormat,
                 "float": FloatFormat}
        kind = fields.pop("kind", "float")
        if kind not in kinds:
            raise ValueError(f"format dict {fmt!r} has unknown kind {kind!r}; known: "
                             f"{', '.join(kinds)}")
        try:
            return kinds[kind](**fields)
        except TypeError as err:
            raise ValueError(f"format dict {fmt!r} has bad fields: {err}") from None
    if not isinstance(fmt, str):
        raise ValueError(f"format must be a name, a format object or a dict, got {fmt!r}")
    key = fmt.strip().lower()
    key = ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    custom = _parse_custom(key)
    if custom is not None:
        return custom
    raise ValueError(
        f"unknown format {fmt!r}; known: {', '.join(FORMATS)} (aliases: {', '.join(ALIASES)}), "
        f"or 'e<E>m<M>' (custom IEEE-style), 'posit<N>[_es<K>]', 'int<B>[_channel|_block<S>]'"
    )


def _parse_custom(key: str) -> Format | None:
    import re

    match = re.fullmatch(r"e(\d+)m(\d+)", key)
    if match is not None:
        return FloatFormat(key, int(match.group(1)), int(match.group(2)))
    match = re.fullmatch(r"posit(\d+)(?:_es(\d+))?", key)
    if match is not None:
        es = 2 if match.group(2) is None else int(match.group(2))
        return PositFormat(key, int(match.group(1)), es)
    match = re.fullmatch(r"int(\d+)(?:_(channel)|_block(\d+))?", key)
    if match is not None:
        if match.group(2):
            return IntFormat(key, int(match.group(1)), "channel")
        if match.group(3):
            return IntFormat(key, int(match.group(1)), "block", block_size=int(match.group(3)))
        return IntFormat(key, int(match.group(1)))
    return None


FORMATS.update({
    f.name: f
    for f in (
        # OCP Microscaling Formats (MX) v1.0: blocks of 32, E8M0 scales
        BlockScaledFormat("mxfp8_e4m3", "fp8_e4m3"),
        BlockScaledFormat("mxfp8_e5m2", "fp8_e5m2"),
        BlockScaledFormat("mxfp6_e3m2", "fp6_e3m2"),
        BlockScaledFormat("mxfp6_e2m3", "fp6_e2m3"),
        BlockScaledFormat("mxfp4", "fp4_e2m1"),
        BlockScaledFormat("mxint8", "int8"),
        # NVIDIA NVFP4: blocks of 16, E4M3 block scales under a float32 tensor scale
        BlockScaledFormat("nvfp4", "fp4_e2m1", block_size=16, scale="fp8_e4m3",
                          tensor_scale=True),
        IntFormat("int8", 8),
        IntFormat("int4", 4),
        PositFormat("posit8", 8, 2),
        PositFormat("posit16", 16, 2),
        PositFormat("posit32", 32, 2),
    )
})
