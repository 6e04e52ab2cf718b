"""Bit-exact rounding of carrier floats (float32, float64) to posits (Posit Standard 2022).

A posit<n, es> encodes ``sign, regime, exponent, fraction`` in n bits: the regime is a run of
equal bits ended by the opposite bit (or by the end of the word), ``es`` exponent bits follow,
the rest is fraction. A value ``2**k * (1 + f)`` with ``k = r * 2**es + e`` has a regime of
``r + 2`` bits (``r >= 0``) or ``1 - r`` bits (``r < 0``), so at scale ``k`` the posit keeps

    ``f_k = n - 1 - regime_length(k) - es``

fraction bits; ``f_k < 0`` means that ``-f_k`` low exponent bits are cut off (they decode as 0).

The standard rounds on the bit string: the unbounded encoding is cut after ``n - 1`` bits and
rounded to nearest, ties to even, on the kept encoding with a guard and a sticky bit. Cutting
the encoding after its ``f_k``-th fraction bit is cutting the carrier's significand at the same
place, so the rounding here never builds the encoding: it drops the low
``s = mantissa_bits - f_k`` bits of the carrier's magnitude bits, as
:func:`dp2ejax.arith.rounding.round_bits` does. When ``f_k < 0`` the dropped bits reach into the
exponent field; adding the carrier's bias plus one first makes the field's low bits those of
``k``, so that dropping them and adding ``1 << s`` steps ``k`` from one posit to the next, as
incrementing the kept encoding does. The one place where the kept encoding's last bit is not a
bit of ``k`` or of the fraction is a regime that fills all ``n - 1`` bits (``f_k = -es``):
there the last bit is the regime's terminator, which decides ties.

No value underflows to zero or overflows: magnitudes beyond ``maxpos`` become ``maxpos`` and
nonzero magnitudes below ``minpos`` become ``minpos``, in every rounding mode (the standard's
rule, also what the Stillwater Universal library and SoftPosit do). NaN and infinities become
NaR, carried as NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.formats import PositFormat, carrier_format

_UINT = {4: jnp.uint32, 8: jnp.uint64}
_SINT = {4: jnp.int32, 8: jnp.int64}
_BITS_DTYPE = ((8, jnp.uint8), (16, jnp.uint16), (32, jnp.uint32), (64, jnp.uint64))


def check_carrier(fmt: PositFormat, dtype) -> None:
    """Raises a ValueError unless every posit scale of ``fmt`` is a normal scale of ``dtype``
    (float32 or float64): posit32 needs float32 at least, posit64 float64."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"posit format {fmt.name!r} needs a float32 or float64 carrier, "
                         f"got dtype {dtype}")
    carrier = carrier_format(dtype)
    if fmt.max_scale > carrier.max_exponent or -fmt.max_scale < carrier.min_exponent:
        raise ValueError(
            f"posit format {fmt.name!r} (maxpos 2^{fmt.max_scale}, minpos 2^-{fmt.max_scale}) "
            f"does not fit in the normal range of {dtype.name} (2^{carrier.min_exponent} .. "
            f"2^{carrier.max_exponent}); pass a wider dtype (float64 needs "
            f"jax.config.update('jax_enable_x64', True))")


def round_posit(
    x: jax.Array,
    fmt: PositFormat,
    mode: str = "nearest",
    random_bits: jax.Array | None = None,
) -> jax.Array:
    """Rounds ``x`` to the posit lattice of ``fmt``, bit for bit as the Posit Standard 2022.

    Args:
      x: ``Float[Array, "*shape"]``, float32 or float64 (the carrier).
      fmt: the posit format; its ``maxpos`` and ``minpos`` must be normal carrier values.
      mode: ``"nearest"`` (the standard's rounding: ties to even on the encoding),
        ``"toward_zero"``, ``"up"``, ``"down"``, ``"stochastic"`` (away from zero with
        probability (|x| - lower) / (upper - lower) between the two neighbouring posits; exact
        where the neighbours share a binade, to the carrier's precision where exponent bits are
        cut off) or ``"random"`` (CESTAC: either neighbour with probability 1/2).
      random_bits: ``UInt[Array, "*shape"]`` of ``x``'s width (uint32 for float32, uint64 for
        float64), needed by ``stochastic`` and ``random``.

    Returns:
      ``Float[Array, "*shape"]`` like ``x``: every value a posit. Zeros become +0, NaN and
      infinities NaN (NaR); nonzero magnitudes are clamped to [minpos, maxpos] in every mode.

    Example:
      >>> import jax.numpy as jnp
      >>> from dp2ejax.arith.formats import get_format
      >>> x = jnp.array([1 / 3, 3.3, 1e9, -1e-9, 0.0, jnp.inf], jnp.float32)
      >>> round_posit(x, get_format("posit8"))  # maxpos 2**24, minpos 2**-24
      Array([ 3.4375000e-01,  3.2500000e+00,  1.6777216e+07, -5.9604645e-08,
              0.0000000e+00,            nan], dtype=float32)
    """
    check_carrier(fmt, x.dtype)
    carrier = carrier_format(x.dtype)
    width = 8 * x.dtype.itemsize
    uint, sint = _UINT[x.dtype.itemsize], _SINT[x.dtype.itemsize]
    mc, n, es = carrier.mantissa_bits, fmt.nbits, fmt.es

    def u(value):
        return np.array(value, dtype=uint)

    def i(value):
        return np.array(value, dtype=sint)

    bits = lax.bitcast_convert_type(x, uint)
    sign = bits & u(1 << (width - 1))
    magnitude = bits ^ sign
    negative = sign != 0
    min_bits = _bits_of(fmt.minpos, x.dtype, uint)
    max_bits = _bits_of(fmt.maxpos, x.dtype, uint)

    # Scale k and the posit's fraction bits f_k there (only used where minpos <= |x| < maxpos).
    k = (magnitude >> u(mc)).astype(sint) - i(carrier.exponent_bias)
    r = k >> i(es)
    regime_length = jnp.where(r >= 0, r + i(2), i(1) - r)
    shift = jnp.maximum(regime_length + i(mc + es + 1 - n), i(0)).astype(uint)  # s = mc - f_k
    one = u(1)
    # The exponent field plus one holds k + 2**(E-1): its low es bits are those of k.
    lifted = magnitude + u(1 << mc)
    low_mask = (one << shift) - one
    low = lifted & low_mask
    kept = lifted ^ low

    if mode == "nearest":
        half = (low_mask >> one) + one
        odd = jnp.where(regime_length == i(n - 1), r < 0, ((kept >> shift) & one) == one)
        increment = (low > half) | ((low == half) & odd)
    elif mode == "toward_zero":
        increment = jnp.zeros(x.shape, bool)
    elif mode == "up":
        increment = (low != 0) & ~negative
    elif mode == "down":
        increment = (low != 0) & negative
    elif mode == "stochastic":
        increment = (low != 0) & _stochastic_up(x, magnitude, kept, low, shift, random_bits,
                                                 carrier, uint, sint)
    elif mode == "random":
        increment = (low != 0) & ((random_bits >> u(width - 1)) == one)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}")

    rounded = kept + jnp.where(increment, one << shift, u(0)) - u(1 << mc)
    result = jnp.where(magnitude < min_bits, min_bits, rounded)
    result = jnp.where(magnitude >= max_bits, max_bits, result)
    result = jnp.where(magnitude == 0, u(0), result | sign)
    out = lax.bitcast_convert_type(result, x.dtype)
    return jnp.where(jnp.isfinite(x), out, np.array(np.nan, x.dtype))


def _stochastic_up(x, magnitude, kept, low, shift, random_bits, carrier, uint, sint):
    """Whether stochastic rounding moves |x| up to the next posit.

    Where the dropped bits are fraction bits (``s <= mantissa_bits``) the two neighbours share a
    binade and the probability low / 2**s is exact: the top s random bits are compared with
    ``low``. Where exponent bits are cut off, the neighbours are 2**a and 2**(a + q) and the
    probability (|x| - 2**a) / (2**(a + q) - 2**a) is computed in the carrier (relative error
    a few carrier ulps) and compared with a uniform draw of mantissa_bits + 1 bits.
    """
    width = 8 * x.dtype.itemsize
    mc = carrier.mantissa_bits

    def u(value):
        return np.array(value, dtype=uint)

    top_random = random_bits >> jnp.minimum(u(width) - shift, u(width - 1))
    in_binade = top_random < low
    # Exponent bits cut: kept holds the lower neighbour's exponent (plus one, see round_posit).
    lower_exponent = (kept >> u(mc)).astype(sint) - np.array(carrier.exponent_bias + 1, sint)
    gap_exponent = (shift - u(mc)).astype(sint)  # q: the neighbours are 2**a and 2**(a + 2**q)
    dtype = x.dtype
    scaled = lax.bitcast_convert_type(
        magnitude - (lower_exponent.astype(uint) << u(mc)), dtype)  # |x| / 2**a, in [1, 2**Q)
    gap = lax.bitcast_convert_type(
        ((np.array(carrier.exponent_bias, sint) + (np.array(1, sint) << gap_exponent))
         .astype(uint) << u(mc)), dtype)  # 2**(2**q)
    probability = (scaled - np.array(1, dtype)) / (gap - np.array(1, dtype))
    draw = (random_bits >> u(width - mc - 1)).astype(dtype) * np.array(2.0 ** -(mc + 1), dtype)
    across_binades = draw < probability
    return jnp.where(shift <= u(mc), in_binade, across_binades)


def _bits_of(value: float, dtype, uint) -> np.ndarray:
    return np.array(value, dtype=np.dtype(dtype)).view(np.dtype(uint))


def bits_dtype(fmt: PositFormat):
    """The unsigned integer dtype that holds ``fmt``'s encodings (uint8 .. uint64)."""
    return next(dtype for size, dtype in _BITS_DTYPE if fmt.nbits <= size)


def _word(dtype, fmt: PositFormat):
    """The unsigned working word for encoding/decoding ``fmt`` in a ``dtype`` carrier."""
    wide = np.dtype(dtype).itemsize == 8 or fmt.nbits > 32
    if wide and not jax.config.jax_enable_x64:
        raise ValueError(f"posit format {fmt.name!r} with dtype {np.dtype(dtype)} needs 64-bit "
                         f"integers: jax.config.update('jax_enable_x64', True)")
    return (jnp.uint64, jnp.int64, 64) if wide else (jnp.uint32, jnp.int32, 32)


def posit_to_bits(x: jax.Array, fmt: PositFormat) -> jax.Array:
    """The n-bit encodings of values already on ``fmt``'s lattice (round with
    :func:`round_posit` first; values off the lattice give meaningless bits).

    Negative posits are the two's complement of their magnitude's encoding, NaN and infinities
    are NaR (``1 << (nbits - 1)``), zero is 0.

    Args:
      x: ``Float[Array, "*shape"]``, float32 or float64.
      fmt: the posit format.

    Returns:
      ``UInt[Array, "*shape"]`` of the smallest unsigned dtype with ``nbits`` bits
      (uint8/uint16/uint32/uint64), the encoding in its low ``nbits`` bits.

    Example:
      >>> import jax.numpy as jnp
      >>> from dp2ejax.arith.formats import get_format
      >>> posit_to_bits(jnp.array([1.0, -1.0, 3.0, 0.0, jnp.nan]), get_format("posit8"))
      Array([ 64, 192,  76,   0, 128], dtype=uint8)
    """
    check_carrier(fmt, x.dtype)
    carrier = carrier_format(x.dtype)
    word, sword, _ = _word(x.dtype, fmt)
    mc, n, es = carrier.mantissa_bits, fmt.nbits, fmt.es
    cuint = _UINT[x.dtype.itemsize]
    carrier_bits = lax.bitcast_convert_type(x, cuint)
    magnitude = (carrier_bits & np.array((1 << (8 * x.dtype.itemsize - 1)) - 1, cuint))
    negative = (carrier_bits >> np.array(8 * x.dtype.itemsize - 1, cuint)) != 0
    k = (magnitude >> np.array(mc, cuint)).astype(sword) - np.array(carrier.exponent_bias, sword)
    k = jnp.clip(k, -fmt.max_scale, fmt.max_scale)
    fraction = (magnitude & np.array((1 << mc) - 1, cuint)).astype(word)

    def w(value):
        return np.array(value, dtype=word)

    def s(value):
        return np.array(value, dtype=sword)

    def shifted(value, amount):  # value * 2**amount, amount of either sign
        left = value << jnp.clip(amount, 0, 63).astype(word)
        right = value >> jnp.clip(-amount, 0, 63).astype(word)
        return jnp.where(amount >= 0, left, right)

    r = k >> s(es)
    e = (k & s((1 << es) - 1)).astype(word)
    regime_length = jnp.where(r >= 0, r + s(2), s(1) - r)
    regime = jnp.where(r >= 0, (w(1) << jnp.maximum(r + s(2), 0).astype(word)) - w(2), w(1))
    fraction_bits = s(n - 1 - es) - regime_length
    body = (shifted(regime, s(n - 1) - regime_length) | shifted(e, fraction_bits)
            | shifted(fraction, fraction_bits - s(mc)))
    body = jnp.where(k >= fmt.max_scale, w((1 << (n - 1)) - 1), body & w((1 << (n - 1)) - 1))
    modulus_mask = w((1 << n) - 1) if n < 64 else w(-1 % (1 << 64))
    encoding = jnp.where(negative, (w(0) - body) & modulus_mask, body)
    encoding = jnp.where(magnitude == 0, w(0), encoding)
    encoding = jnp.where(jnp.isfinite(x), encoding, w(1 << (n - 1)))
    return encoding.astype(bits_dtype(fmt))


def posit_from_bits(bits: jax.Array, fmt: PositFormat, dtype=jnp.float32) -> jax.Array:
    """Decodes n-bit posit encodings to ``dtype`` values, exactly.

    Args:
      bits: ``UInt[Array, "*shape"]``, the encodings in the low ``nbits`` bits (higher bits
        are ignored).
      fmt: the posit format; every posit must be a ``dtype`` value (range and fraction bits),
        else a ValueError says so.
      dtype: float32 or float64.

    Returns:
      ``Float[Array, "*shape"]`` of ``dtype``: NaR decodes to NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from dp2ejax.arith.formats import get_format
      >>> posit_from_bits(jnp.array([64, 192, 76, 1, 127, 128], jnp.uint8), get_format("posit8"))
      Array([ 1.0000000e+00, -1.0000000e+00,  3.0000000e+00,  5.9604645e-08,
              1.6777216e+07,            nan], dtype=float32)
    """
    dtype = np.dtype(dtype)
    check_carrier(fmt, dtype)
    carrier = carrier_format(dtype)
    if fmt.max_fraction_bits > carrier.mantissa_bits:
        raise ValueError(f"posit format {fmt.name!r} has up to {fmt.max_fraction_bits} fraction "
                         f"bits, more than {dtype.name} holds ({carrier.mantissa_bits}); decode "
                         f"to float64")
    word, sword, width = _word(dtype, fmt)
    mc, n, es = carrier.mantissa_bits, fmt.nbits, fmt.es

    def w(value):
        return np.array(value, dtype=word)

    encoding = jnp.asarray(bits).astype(word)
    if n < width:
        encoding = encoding & w((1 << n) - 1)
    nar = w(1 << (n - 1))
    negative = (encoding & nar) != 0
    modulus_mask = w((1 << n) - 1) if n < 64 else w(-1 % (1 << 64))
    body = jnp.where(negative, (w(0) - encoding) & modulus_mask, encoding)
    aligned = body << w(width - n + 1)  # the n - 1 bits after the sign, at the top
    ones_run = (aligned >> w(width - 1)) == w(1)
    run = lax.clz(jnp.where(ones_run, ~aligned, aligned)).astype(sword)
    r = jnp.where(ones_run, run - np.array(1, sword), -run)
    rest = (aligned << run.astype(word)) << w(1)  # drop the regime and its terminator
    if es:
        e = (rest >> w(width - es)).astype(sword)
        fraction = rest << w(es)
    else:
        e = np.array(0, sword)
        fraction = rest
    k = r * np.array(1 << es, sword) + e
    field = (k + np.array(carrier.exponent_bias, sword)).astype(word)
    magnitude = (field << w(mc)) | (fraction >> w(width - mc))
    cuint = _UINT[dtype.itemsize]
    sign = jnp.where(negative, w(1 << (8 * dtype.itemsize - 1)), w(0))
    value = lax.bitcast_convert_type((magnitude | sign).astype(cuint), dtype)
    value = jnp.where(body == 0, np.array(0, dtype), value)
    return jnp.where(encoding == nar, np.array(np.nan, dtype), value)
