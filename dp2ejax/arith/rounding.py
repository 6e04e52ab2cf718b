"""Bit-exact rounding of carrier floats (float64/32/16, bfloat16) to any :class:`FloatFormat`.

The rounding works on the carrier's bit pattern with integer operations only, so it is exact on
every backend: XLA may keep excess precision in float convert round trips (it does on GPUs), but
it never changes integer arithmetic. Each element is split into an integer significand ``sig``
(implicit bit included) and an exponent; the number ``s`` of low significand bits the target
format cannot hold follows from the exponent (more of them in the target's subnormal range);
those bits decide, per rounding mode, whether the kept part is incremented; the result is put
back together with one integer addition that lets a carry ripple into the exponent field.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.formats import (
    BlockScaledFormat,
    FloatFormat,
    Format,
    IntFormat,
    PositFormat,
    carrier_format,
    get_format,
)
from dp2ejax.arith.random_bits import RandomBitGenerator, random_bits

RoundingMode = Literal["nearest", "toward_zero", "up", "down", "stochastic", "random"]
ROUNDING_MODES: tuple[str, ...] = ("nearest", "toward_zero", "up", "down", "stochastic", "random")
RANDOM_MODES: frozenset[str] = frozenset({"stochastic", "random"})

_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}
_SINT = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def check_mode(mode: str) -> str:
    """Returns ``mode`` if it is a known rounding mode, else raises a ValueError naming it."""
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; known: {', '.join(ROUNDING_MODES)}")
    return mode


def round_to(
    x,
    fmt: str | Format,
    mode: RoundingMode = "nearest",
    key: jax.Array | None = None,
    *,
    saturate: bool = False,
    rng: RandomBitGenerator = "hash",
    axis: int | None = None,
) -> jax.Array:
    """Rounds ``x`` to the values representable in ``fmt``; the result keeps ``x``'s dtype.

    Args:
      x: float64, float32, float16 or bfloat16 array (the carrier), any shape.
      fmt: a format name (``"bf16"``, ``"fp8_e4m3"``, ``"e6m9"``, ``"mxfp4"``, ``"nvfp4"``,
        ``"int8_channel"``, ``"posit16"``…) or a format object; it must fit in ``x``'s dtype.
        Block-scaled (MX, NVFP4) and integer formats return the dequantized values (fake
        quantisation); posits saturate at minpos/maxpos and turn NaN and infinities into NaN.
      mode: ``"nearest"`` (ties to even), ``"toward_zero"``, ``"up"`` (toward +inf), ``"down"``
        (toward -inf), ``"stochastic"`` (up with probability equal to the distance to the lower
        neighbour in units of the gap: unbiased) or ``"random"`` (CESTAC: either neighbour with
        probability 1/2). Representable values are returned unchanged in every mode.
      key: a PRNG key, required by the ``stochastic`` and ``random`` modes.
      saturate: if True, values beyond the largest finite value (infinities included) become
        ±max instead of what the format's ``overflow`` says.
      rng: where the random bits of the random modes come from: ``"hash"`` (a fast
        counter-based hash seeded from ``key``) or ``"jax"`` (``jax.random.bits``); see
        :func:`dp2ejax.arith.random_bits`.
      axis: for block-scaled and per-channel/per-block integer formats, the axis of the blocks
        (channels); default the format's own ``axis`` (the last).

    Returns:
      An array like ``x`` whose values all belong to ``fmt``. NaN stays NaN, also in formats
      without NaN. Overflow follows ``fmt.overflow``: ``inf`` (IEEE), ``nan`` (``fp8_e4m3``, as
      ``ml_dtypes`` casts) or ``saturate`` (fp6/fp4 formats); directed modes that round toward
      zero give ±max instead, as IEEE 754 prescribes. Infinite inputs stay infinite in formats
      with infinities, become NaN in ``nan``-overflow formats and ±max in saturating ones.
      The gradient is straight-through (the identity).

    Example:
      >>> import jax.numpy as jnp
      >>> round_to(jnp.float32(1 / 3), "bf16")
      Array(0.33398438, dtype=float32)
      >>> round_to(jnp.array([0.3, 1000.0], jnp.float32), "fp8_e4m3")
      Array([0.3125,    nan], dtype=float32)
    """
    fmt = get_format(fmt)
    check_mode(mode)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    carrier = carrier_format(x.dtype)
    if axis is not None:
        if isinstance(fmt, FloatFormat | PositFormat):
            raise ValueError(f"axis applies to block-scaled and integer formats, not to "
                             f"{fmt.name!r}")
        if not isinstance(axis, int) or not -x.ndim <= axis < max(x.ndim, 1):
            raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}) for x of shape "
                             f"{x.shape}, got {axis!r}")
    if isinstance(fmt, PositFormat):
        from dp2ejax.arith.posit import check_carrier

        check_carrier(fmt, x.dtype)  # the range must fit; posit32 rounds float32 inputs exactly
    elif isinstance(fmt, FloatFormat) and not fmt.fits_in(x.dtype):
        raise ValueError(
            f"format {fmt.name!r} (e{fmt.exponent_bits}m{fmt.mantissa_bits}) is wider than x's "
            f"dtype {x.dtype} ({carrier.name}); pass x in a wider dtype (float64 needs "
            f"jax.config.update('jax_enable_x64', True))"
        )
    elif not fmt.fits_in(x.dtype):
        raise ValueError(
            f"format {fmt.name!r} needs x in a wider dtype than {x.dtype}: pass float32 or "
            f"float64 (float64 needs jax.config.update('jax_enable_x64', True))")
    bits = _random_bits_for(mode, key, x, rng)
    if isinstance(fmt, FloatFormat) and carrier.is_subset_of(fmt) and not saturate:
        return x
    return _round_straight_through(x, bits, fmt, mode, saturate, axis)


def _random_bits_for(mode: str, key, x, rng):
    if mode not in RANDOM_MODES:
        return None
    if key is None:
        raise ValueError(f"rounding mode {mode!r} needs a PRNG key: pass key=")
    return random_bits(key, x.shape, x.dtype, rng)


def _fast_nearest_applies(carrier: FloatFormat, fmt: FloatFormat) -> bool:
    """Whether the two-branch nearest kernel is exact: the target's subnormal quantum must be
    reachable by an exact power-of-two scaling in the carrier, and lie above the carrier's
    subnormal range (so that flushing carrier subnormals would not change a result)."""
    if fmt.min_exponent == carrier.min_exponent:
        return fmt.has_subnormals
    inverse_quantum = fmt.mantissa_bits - fmt.min_exponent
    return (fmt.min_exponent - fmt.mantissa_bits - 1 > carrier.min_exponent
            and inverse_quantum <= carrier.max_exponent)


def round_kernel(x: jax.Array, fmt: Format, mode: str, random_bits: jax.Array | None = None,
                 *, saturate: bool = False, axis: int | None = None) -> jax.Array:
    """The rounding kernel of :func:`round_to` for every kind of format, without checks or
    gradient rule (``saturate`` concerns float formats, ``axis`` block-scaled and integer
    ones)."""
    if isinstance(fmt, FloatFormat):
        return round_bits(x, fmt, mode, random_bits, saturate=saturate)
    if isinstance(fmt, PositFormat):
        from dp2ejax.arith.posit import round_posit

        return round_posit(x, fmt, mode, random_bits)
    if isinstance(fmt, BlockScaledFormat):
        from dp2ejax.arith.blockscaled import round_block_scaled

        return round_block_scaled(x, fmt, mode, random_bits, axis=axis)
    if isinstance(fmt, IntFormat):
        from dp2ejax.arith.integer import round_int

        return round_int(x, fmt, mode, random_bits, axis=axis)
    raise ValueError(f"not a format: {fmt!r}")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _round_straight_through(x, random_bits, fmt, mode, saturate, axis=None):
    return round_kernel(x, fmt, mode, random_bits, saturate=saturate, axis=axis)


@_round_straight_through.defjvp
def _round_straight_through_jvp(fmt, mode, saturate, axis, primals, tangents):
    x, random_bits = primals
    x_dot, _ = tangents
    return _round_straight_through(x, random_bits, fmt, mode, saturate, axis), x_dot


def round_bits(
    x: jax.Array,
    fmt: FloatFormat,
    mode: str,
    random_bits: jax.Array | None = None,
    *,
    saturate: bool = False,
) -> jax.Array:
    """The rounding kernel of :func:`round_to`, without checks or gradient rule.

    ``random_bits`` is an unsigned integer array of ``x``'s shape and width, needed by the
    ``stochastic`` and ``random`` modes. Useful where random bits are drawn once for many
    roundings (e.g. inside :func:`dp2ejax.emulate`).
    """
    carrier = carrier_format(x.dtype)
    nbits = 8 * x.dtype.itemsize
    uint, sint = _UINT[x.dtype.itemsize], _SINT[x.dtype.itemsize]
    mc, m = carrier.mantissa_bits, fmt.mantissa_bits

    def u(value):
        return np.array(value, dtype=uint)

    bits = lax.bitcast_convert_type(x, uint)
    sign = bits & u(1 << (nbits - 1))
    magnitude = bits ^ sign
    if mode == "nearest" and _fast_nearest_applies(carrier, fmt):
        result = _nearest_magnitude(x, magnitude, carrier, fmt, uint)
        return _finish(x, magnitude, sign, result, fmt, mode, saturate, uint)
    field = magnitude >> u(mc)
    field_eff = jnp.maximum(field, u(1))
    sig = (magnitude & u((1 << mc) - 1)) | jnp.where(field > 0, u(1 << mc), u(0))

    # Number of low significand bits to drop: the target's quantum at |x| over the carrier's
    # (2**unit, with |x| = sig * 2**unit). The quantum is 2**(e - m) for |x| in the target's
    # binade e >= emin, 2**(emin - m) below it (subnormals), or 2**emin (no subnormals: only 0
    # and the smallest normal are left). Carrier subnormals take their true exponent from the
    # bit length of sig. Beyond nbits - 1 dropped bits, all of sig is dropped anyway.
    emin = fmt.min_exponent
    unit = field_eff.astype(sint) - sint(carrier.exponent_bias + mc)
    bit_length = sint(nbits) - lax.clz(sig).astype(sint)
    exponent = jnp.where(field > 0, unit + sint(mc), unit + bit_length - sint(1))
    if fmt.has_subnormals:
        quantum = jnp.maximum(exponent, sint(emin)) - sint(m)
        tiny = exponent < sint(emin - m)  # |x| < the smallest subnormal
    else:
        tiny = exponent < sint(emin)  # |x| < the smallest normal
        quantum = jnp.where(tiny, sint(emin), exponent - sint(m))
    shift_true = quantum - unit
    shift = jnp.minimum(shift_true, sint(nbits - 1)).astype(uint)

    one = u(1)
    low_mask = (one << shift) - one
    low = sig & low_mask
    kept = sig ^ low
    negative = sign != 0
    if mode == "nearest":
        half = (low_mask >> one) + one
        odd = ((kept >> shift) & one) == one
        increment = (low > half) | ((low == half) & odd)
    elif mode == "toward_zero":
        increment = jnp.zeros(x.shape, bool)
    elif mode == "up":
        increment = (low != 0) & ~negative
    elif mode == "down":
        increment = (low != 0) & negative
    elif mode == "stochastic":
        # Up with probability low / 2**shift_true: compare the top shift_true random bits.
        shift_true_u = shift_true.astype(uint)
        top_random = random_bits >> jnp.minimum(u(nbits) - jnp.minimum(shift_true_u, u(nbits)),
                                                u(nbits - 1))
        beyond = sig >> jnp.minimum(shift_true_u - u(nbits), u(nbits - 1))
        increment = jnp.where(shift_true_u <= nbits, top_random < low, random_bits < beyond)
        increment = increment & (low != 0)
    elif mode == "random":
        increment = (low != 0) & ((random_bits >> u(nbits - 1)) == one)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}; known: {', '.join(ROUNDING_MODES)}")

    rounded_sig = kept + jnp.where(increment, one << shift, u(0))
    # field_eff << mc + rounded_sig - 2**mc rebuilds the magnitude; a carry out of the fraction
    # field moves to the next binade, and a carrier subnormal (field 0) comes back unchanged.
    regular = (field_eff << u(mc)) + rounded_sig - u(1 << mc)
    tiny_bits = _bits_of(fmt.min_subnormal, x.dtype, uint)
    result = jnp.where(tiny, jnp.where(increment, tiny_bits, u(0)), regular)
    return _finish(x, magnitude, sign, result, fmt, mode, saturate, uint)


def _nearest_magnitude(x, magnitude, carrier: FloatFormat, fmt: FloatFormat, uint):
    """Round-to-nearest-even of |x| in fewer operations than the general kernel.

    In the target's normal range the number of dropped bits is the constant mc - m, so adding
    half an ulp (minus one, plus the kept part's last bit) to the magnitude's bits and masking
    rounds ties to even, the carry rippling into the exponent. Below the target's smallest
    normal, |x| is scaled by the inverse of the target's quantum (a power of two, exact), rounded
    to an integer (exact) and scaled back (exact).
    """
    shift = carrier.mantissa_bits - fmt.mantissa_bits
    u = functools.partial(np.array, dtype=uint)
    if shift > 0:
        odd = (magnitude >> u(shift)) & u(1)
        keep_mask = u(~((1 << shift) - 1) & _ones(uint))
        normal = (magnitude + u((1 << (shift - 1)) - 1) + odd) & keep_mask
    else:
        normal = magnitude
    if fmt.min_exponent == carrier.min_exponent:
        return normal
    min_normal_bits = _bits_of(fmt.min_normal, x.dtype, uint)
    absolute = lax.bitcast_convert_type(magnitude, x.dtype)
    if fmt.has_subnormals:
        quantum = fmt.min_subnormal
        steps = lax.round(absolute * np.array(1.0 / quantum, x.dtype),
                          lax.RoundingMethod.TO_NEAREST_EVEN)
        small = lax.bitcast_convert_type(steps * np.array(quantum, x.dtype), uint)
    else:
        small = jnp.where(absolute > np.array(fmt.min_normal / 2, x.dtype), min_normal_bits, u(0))
    return jnp.where(magnitude < min_normal_bits, small, normal)


def _ones(uint) -> int:
    return (1 << (8 * np.dtype(uint).itemsize)) - 1


def _finish(x, magnitude, sign, result, fmt: FloatFormat, mode: str, saturate: bool, uint):
    """Applies overflow, infinities, NaN and the sign to a rounded magnitude ``result``."""
    negative = sign != 0
    max_bits = _bits_of(fmt.max_finite, x.dtype, uint)
    inf_bits = _bits_of(np.inf, x.dtype, uint)
    nan_bits = _bits_of(np.nan, x.dtype, uint)
    if mode == "toward_zero":
        toward_zero = True
    elif mode == "up":
        toward_zero = negative
    elif mode == "down":
        toward_zero = ~negative
    else:
        toward_zero = False
    saturating = saturate or fmt.overflow == "saturate"
    if saturating:
        overflow_bits = max_bits
    else:
        overflow_bits = jnp.where(toward_zero, max_bits,
                                  inf_bits if fmt.overflow == "inf" else nan_bits)
    is_inf = magnitude == inf_bits
    if fmt.has_inf and not saturate:
        inf_result = inf_bits
    else:
        inf_result = max_bits if saturating else nan_bits
    result = jnp.where(result > max_bits, overflow_bits, result)
    result = jnp.where(is_inf, inf_result, result) | sign
    rounded = lax.bitcast_convert_type(result, x.dtype)
    return jnp.where(jnp.isnan(x), x, rounded)


def _bits_of(value: float, dtype, uint) -> np.ndarray:
    return np.array(value, dtype=np.dtype(dtype)).view(np.dtype(uint))
