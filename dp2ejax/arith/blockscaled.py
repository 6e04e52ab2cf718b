"""Block-scaled formats: OCP Microscaling (MX v1.0) and NVIDIA NVFP4.

A block-scaled tensor stores, for every block of ``block_size`` consecutive elements along one
axis, one shared scale and one narrow element per value. :func:`round_block_scaled` rounds a
tensor to the values such a format can hold and returns them in the carrier dtype (fake
quantisation); :func:`quantize` returns the packed codes and scales themselves
(:class:`QuantizedArray`) and :func:`dequantize` decodes them, with
``dequantize(quantize(x)) == round_block_scaled(x)`` exactly.

**OCP MX v1.0** (Section 6.3 of the specification; the reference implementation is
microsoft/microxcaling ``mx/mx_ops.py::_quantize_mx``). For each block, with ``amax`` the
largest magnitude and ``emax`` the exponent of the element format's largest binade:
``shared_exp = floor(log2(amax)) - emax`` and the E8M0 scale is ``X = 2**shared_exp``. A
shared exponent below -127 is clamped to -127; above 127 the scale is E8M0's NaN. Each element
is ``P_i = round(V_i / X)`` in the element format, saturated to its largest normal (normal
values beyond are clamped), and the value is ``P_i * X``. MXINT8 elements are two's complement
with an implicit scale of 2**-6: ``P_i = clip(round(V_i / X * 64), -127, 127) / 64`` (they have
no negative zero). ``floor(log2)`` comes from the carrier's bits, and the scalings by ``X`` are
exact: a multiplication by a normal power of two where that is exact on every backend, integer
exponent arithmetic otherwise (XLA:CPU flushes float32 subnormals to zero in float arithmetic,
so float32 tensors with a nonzero block below about 1e-23 in magnitude, or an MXINT8 block
beyond 2**127, take the integer path; float64 never needs it).

**NaN and infinities (MX).** A NaN or an infinity anywhere in a block makes the block's scale
NaN, so the whole block becomes NaN (microxcaling does the same: ``log2`` of an infinite or NaN
``amax`` gives a shared exponent above 127, which it maps to NaN). An all-zero block stays zero
(its scale does not matter; it is stored as 2**-127).

**NVFP4** (NVIDIA: the "Introducing NVFP4" blog, cuBLAS block-scaled GEMMs; the arithmetic is
Transformer Engine's, ``common/cast/nvfp4/core_nvfp4.cuh`` and
``compute_nvfp4_scaling_coefficient``): E2M1 elements in blocks of 16, each block with an E4M3
scale ``s_b``, under one float32 per-tensor scale ``s_t``. Mathematically
``s_t = amax_tensor / (6 * 448)``, ``s_b = e4m3(amax_block / (6 * s_t))``,
``P_i = e2m1(V_i / (s_b * s_t))`` and the value is ``P_i * s_b * s_t``. In float arithmetic, as
Transformer Engine does it (every operation rounded to nearest even):

* ``S_enc = min(float32(2688 / amax_tensor), FLT_MAX)``, replaced by 1 if ``amax_tensor`` is 0
  or ``S_enc`` is 0; the stored tensor scale is ``s_t = 1 / S_enc`` (float32);
* ``s_b = e4m3(amax_block * (S_enc * float32(1/6)))`` rounded to nearest (ties to even) and
  **saturated** to 448: TE's ``compute_decoding_scaling_factor`` converts with CUDA's
  ``__nv_fp8_e4m3``, i.e. ``cvt.rn.satfinite.e4m3``;
* ``P_i = e2m1(V_i * r_b)`` saturated to ±6, with ``r_b = min(1 / (s_b * s_t), FLT_MAX)``
  (TE's exact-math encode coefficient), and the value is ``(P_i * s_b) * s_t``. A block with
  ``s_b = 0`` gives (signed) zeros, stored as zero codes.

Scalars are float32; the per-block and per-element operations run in the carrier dtype (float32
as in TE, or float64). Scaling multiplies by a reciprocal rather than dividing: XLA turns a
division by a broadcast scale into that multiplication anyway, so only this form is
reproducible. Tensors whose ``s_t`` is a float32 subnormal (``amax_tensor`` below about 3e-35)
lose it on backends that flush subnormals (XLA:CPU does), and so do intermediate values below
2**-126. A NaN or an infinity in a block makes that block NaN (its E4M3 scale is NaN); the
tensor scale is taken from the finite values.

**Rounding modes** apply to the elements (``nearest``, ``toward_zero``, ``up``, ``down``,
``stochastic``, ``random``, as in :func:`dp2ejax.round_to`); the scales are always computed
deterministically as above.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.formats import BlockScaledFormat, FloatFormat, carrier_format, get_format
from dp2ejax.arith.rounding import RANDOM_MODES, check_mode, round_bits

_UINT = {4: jnp.uint32, 8: jnp.uint64}
_SINT = {4: jnp.int32, 8: jnp.int64}
_HALF_UINT = {4: jnp.uint16, 8: jnp.uint32}
_E8M0_NAN = 255
_E8M0_BIAS = 127
_E4M3_NAN = 0x7F
_NVFP4_TENSOR_DIVISOR = 6.0 * 448.0

# MXINT8 elements k / 64, |k| <= 127, are exactly the values of this float format: one exponent
# bit with bias 1 (binade [1, 2) and, below it, "subnormals" with quantum 2**-6), six fraction
# bits, saturating. Rounding to it is rounding k to an integer, ties to even k.
_MXINT8_ELEMENT = FloatFormat(
    "mxint8_element", 1, 6, has_inf=False, has_nan=False, overflow="saturate", bias=1
)


def _element_format(fmt: BlockScaledFormat) -> FloatFormat:
    return _MXINT8_ELEMENT if fmt.element == "int8" else fmt.element_format


# --- public API ---------------------------------------------------------------------------------


def round_block_scaled(
    x: jax.Array,
    fmt: str | BlockScaledFormat,
    mode: str = "nearest",
    random_bits: jax.Array | None = None,
    axis: int | None = None,
) -> jax.Array:
    """Rounds ``x`` to a block-scaled format and returns the dequantized values (fake
    quantisation) in ``x``'s dtype.

    Args:
      x: float32 or float64 array.
      fmt: a :class:`BlockScaledFormat` or its name (``"mxfp8_e4m3"``, ``"mxfp4"``,
        ``"mxint8"``, ``"nvfp4"``…).
      mode: rounding mode of the elements (the scales are always rounded to nearest).
      random_bits: unsigned integers of ``x``'s shape and width, needed by the ``stochastic``
        and ``random`` modes (see :func:`dp2ejax.arith.random_bits`).
      axis: the axis along which blocks of ``fmt.block_size`` consecutive elements share a
        scale; default ``fmt.axis``. A partial last block is padded with zeros, which changes
        nothing.

    Returns:
      An array like ``x``. See the module docstring for the conversion, NaN and infinities.
      No gradient rule: :func:`dp2ejax.round_to` wraps this with a straight-through gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1.0, 0.3, -5.0, 100.0], jnp.float32)
      >>> round_block_scaled(x, "mxfp4")  # amax 100: scale 2**(6 - 2), elements 0, 0, -0.5, 6
      Array([ 0.,  0., -8., 96.], dtype=float32)
      >>> round_block_scaled(x, "mxint8")  # scale 2**6: 0.3 is 0.3 / 64 of it, rounds to 0
      Array([  1.,   0.,  -5., 100.], dtype=float32)
    """
    fmt, x, axis = _check(x, fmt, mode, random_bits, axis)
    if x.size == 0:
        return x
    blocks, restore = _to_blocks(x, axis, fmt.block_size)
    bits = None if random_bits is None else _to_blocks(random_bits, axis, fmt.block_size)[0]
    if fmt.scale == "e8m0":
        out = _mx_round(blocks, fmt, mode, bits)
    else:
        out = _nvfp4_round(blocks, x, fmt, mode, bits)
    return restore(out)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("codes", "scales", "tensor_scale"),
    meta_fields=("shape", "axis", "format", "dtype"),
)
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A tensor in a block-scaled format: packed element codes, block scales and (NVFP4) the
    per-tensor scale. A pytree: the arrays are leaves; shape, axis, format and dtype are static.

    Layout: ``axis`` is moved to the end; the elements, in row-major order of that array and
    without block padding, are packed into ``codes`` (uint8): one fp8/int8 code per byte, two
    fp4 codes per byte (the first in the low nibble), four fp6 codes per three bytes (a 24-bit
    little-endian word, the first code in its low bits; the element count is padded with zero
    codes to a multiple of 4 and the all-padding bytes at the end are dropped, so there are
    exactly ``ceil(6 n / 8)`` bytes). An element code is sign, exponent field and fraction
    field of the element format (MXINT8: the two's complement integer ``k`` of ``k / 64``).
    ``scales`` (uint8, the moved shape with the last axis replaced by the number of blocks)
    holds the E8M0 biased exponent (0..254, 255 = NaN) or, for NVFP4, the E4M3 bit pattern.
    ``tensor_scale`` is the float32 NVFP4 tensor scale, None for MX formats.

    Attributes:
      codes: packed element codes, uint8, 1-D.
      scales: block scales, uint8.
      tensor_scale: float32 scalar (NVFP4) or None.
      shape: shape of the original array.
      axis: the blocked axis of the original array (non-negative).
      format: the :class:`BlockScaledFormat`.
      dtype: name of the carrier dtype :func:`dequantize` returns.
    """

    codes: jax.Array
    scales: jax.Array
    tensor_scale: jax.Array | None
    shape: tuple[int, ...]
    axis: int
    format: BlockScaledFormat
    dtype: str

    @property
    def nbytes(self) -> int:
        """Storage in bytes: packed codes, block scales and the 4-byte tensor scale (NVFP4)."""
        extra = 0 if self.tensor_scale is None else 4
        return int(self.codes.size) + int(self.scales.size) + extra


def quantize(x: jax.Array, fmt: str | BlockScaledFormat, axis: int | None = None) -> QuantizedArray:
    """Quantizes ``x`` to a block-scaled format (round to nearest): packed codes and scales.

    Args:
      x: float32 or float64 array.
      fmt: a :class:`BlockScaledFormat` or its name.
      axis: the blocked axis; default ``fmt.axis``.

    Returns:
      A :class:`QuantizedArray` whose ``nbytes`` is the format's packed size; see its layout.

    Example:
      >>> import jax.numpy as jnp
      >>> q = quantize(jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32), "mxfp4")
      >>> q.codes.shape, q.scales.tolist(), q.nbytes
      ((32,), [125, 125], 34)
      >>> bool(jnp.all(dequantize(q) == round_block_scaled(
      ...     jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32), "mxfp4")))
      True
    """
    fmt, x, axis = _check(x, fmt, "nearest", None, axis)
    shape, dtype = tuple(x.shape), str(x.dtype)
    moved_shape = _moved_shape(shape, axis)
    if x.size == 0:
        nblocks = 0 if not moved_shape else -(-moved_shape[-1] // fmt.block_size)
        return QuantizedArray(
            jnp.zeros((0,), jnp.uint8),
            jnp.zeros(moved_shape[:-1] + (nblocks,), jnp.uint8),
            jnp.ones((), jnp.float32) if fmt.tensor_scale else None,
            shape,
            axis,
            fmt,
            dtype,
        )
    blocks, _ = _to_blocks(x, axis, fmt.block_size)
    element = _element_format(fmt)
    tensor_scale = None
    if fmt.scale == "e8m0":
        elements, shared, nan_block = _mx_elements(blocks, fmt, "nearest", None, exact=True)
        scale_codes = jnp.where(nan_block, _E8M0_NAN, shared + _E8M0_BIAS).astype(jnp.uint8)
    else:
        elements, block_scale, tensor_scale, nan_block = _nvfp4_elements(
            blocks, x, fmt, "nearest", None
        )
        scale_codes = jnp.where(
            nan_block, _E4M3_NAN, _element_codes(block_scale, get_format("fp8_e4m3"))
        )
        scale_codes = scale_codes.astype(jnp.uint8)
    elements = jnp.where(nan_block, jnp.zeros((), elements.dtype), elements)
    codes = _element_codes(elements, element, twos_complement=fmt.element == "int8")
    flat = codes.reshape(moved_shape[:-1] + (-1,))[..., : moved_shape[-1]].reshape(-1)
    return QuantizedArray(
        _pack(flat.astype(jnp.uint8), fmt.element_bits),
        scale_codes[..., 0],
        tensor_scale,
        shape,
        axis,
        fmt,
        dtype,
    )


def dequantize(q: QuantizedArray) -> jax.Array:
    """Decodes a :class:`QuantizedArray` into its values in the carrier dtype.

    ``dequantize(quantize(x, fmt)) == round_block_scaled(x, fmt)`` exactly (NaN where NaN).

    Example:
      >>> import jax.numpy as jnp
      >>> q = quantize(jnp.array([0.1, -3.0, 7.0], jnp.float32), "nvfp4")
      >>> q.codes.tolist(), q.scales.tolist(), float(q.tensor_scale)  # 7 / 2688
      ([208, 7], [126], 0.0026041667442768812)
      >>> dequantize(q)  # elements 0, -3, 6 times 448 * 7 / 2688 = 7 / 6
      Array([ 0. , -3.5,  7. ], dtype=float32)
    """
    fmt = q.format
    dtype = np.dtype(q.dtype)
    moved_shape = _moved_shape(q.shape, q.axis)
    n = int(np.prod(q.shape, dtype=np.int64))
    if n == 0:
        return jnp.zeros(q.shape, dtype)
    codes = _unpack(q.codes, fmt.element_bits, n).reshape(moved_shape)
    codes = jnp.moveaxis(codes, -1, q.axis).reshape(q.shape)
    blocks, restore = _to_blocks(codes, q.axis, fmt.block_size)
    table = jnp.asarray(_element_values(fmt), dtype)
    elements = table[blocks.astype(jnp.int32)]
    scales = q.scales[..., None]
    if fmt.scale == "e8m0":
        shared = scales.astype(_SINT[dtype.itemsize]) - _E8M0_BIAS
        carrier = carrier_format(dtype)
        out = _ldexp_exact(elements, shared, carrier)
        nan_block = scales == _E8M0_NAN
    else:
        e4m3 = jnp.asarray(_element_values(get_format("nvfp4"), scale=True), dtype)
        block_scale = e4m3[scales.astype(jnp.int32)]
        out = (elements * block_scale) * q.tensor_scale.astype(dtype)
        nan_block = (scales & 0x7F) == _E4M3_NAN
    out = jnp.where(nan_block, jnp.array(np.nan, dtype), out)
    return restore(out)


# --- checks and layout --------------------------------------------------------------------------


def _check(x, fmt, mode, random_bits, axis):
    fmt = get_format(fmt)
    if not isinstance(fmt, BlockScaledFormat):
        raise ValueError(
            f"format {fmt.name!r} is not block-scaled; block-scaled formats: "
            f"mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8, nvfp4"
        )
    check_mode(mode)
    x = jnp.asarray(x)
    if x.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(
            f"x must be a float32 or float64 array to carry {fmt.name!r} values, "
            f"got dtype {x.dtype}"
        )
    if mode in RANDOM_MODES and random_bits is None:
        raise ValueError(
            f"rounding mode {mode!r} needs random_bits (unsigned integers of x's shape and width)"
        )
    if random_bits is not None and tuple(random_bits.shape) != tuple(x.shape):
        raise ValueError(f"random_bits must have x's shape {x.shape}, got {random_bits.shape}")
    axis = fmt.axis if axis is None else axis
    ndim = max(x.ndim, 1)
    if not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must be an int in [-{ndim}, {ndim}) for x of shape {x.shape}, got {axis!r}"
        )
    return fmt, x, axis % ndim


def _moved_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    if not shape:
        return (1,)
    rest = shape[:axis] + shape[axis + 1 :]
    return rest + (shape[axis],)


def _to_blocks(x, axis: int, block_size: int):
    """(..., n) with ``axis`` moved last -> (..., nblocks, block_size), zero padded; and the
    function that undoes it."""
    shape = x.shape
    moved = jnp.moveaxis(x.reshape(1) if x.ndim == 0 else x, axis, -1)
    length = moved.shape[-1]
    nblocks = -(-length // block_size)
    pad = nblocks * block_size - length
    if pad:
        moved = jnp.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    blocks = moved.reshape(moved.shape[:-1] + (nblocks, block_size))

    def restore(y):
        y = y.reshape(y.shape[:-2] + (nblocks * block_size,))[..., :length]
        return jnp.moveaxis(y, -1, axis).reshape(shape) if shape else y.reshape(())

    return blocks, restore


# --- MX -----------------------------------------------------------------------------------------


def _uint(dtype):
    return _UINT[np.dtype(dtype).itemsize]


def _sint(dtype):
    return _SINT[np.dtype(dtype).itemsize]


def _magnitude_bits(x):
    nbits = 8 * x.dtype.itemsize
    uint = _uint(x.dtype)
    bits = lax.bitcast_convert_type(x, uint)
    sign = bits & np.array(1 << (nbits - 1), uint)
    return bits ^ sign, sign


def _nonzero_bits(mag):
    """mag != 0 for magnitude bits of carrier floats, subnormals included. Compared in two
    halves: LLVM rewrites ``(bitcast(v) & ~sign) != 0`` into the float compare ``v != 0``,
    which XLA:CPU evaluates with subnormals flushed to zero."""
    halves = lax.bitcast_convert_type(mag, _HALF_UINT[mag.dtype.itemsize])
    return (halves[..., 0] | halves[..., 1]) != 0


def _block_max(mag, inf_bits):
    """Maximum over the last axis (a block), keepdims, with NaN patterns lowered to infinity's.
    On XLA:CPU a reduction over a short minor axis is not vectorised (it costs about 4 rounding
    passes); reducing first across a middle axis, in 4 strided lanes, and then over the lanes
    is. The clamp between the two keeps XLA from merging them back into one reduction."""
    size = mag.shape[-1]
    if size % 4 or size == 4:
        return jnp.minimum(jnp.max(mag, axis=-1, keepdims=True), inf_bits)
    lanes = mag.reshape(mag.shape[:-1] + (size // 4, 4)).max(axis=-2)
    return jnp.minimum(lanes, inf_bits).max(axis=-1, keepdims=True)


def _floor_log2(mag, carrier: FloatFormat, sint):
    """floor(log2(|v|)) of positive finite magnitude bits (carrier subnormals included); a very
    negative number for zero."""
    nbits = 8 * np.dtype(sint).itemsize
    mc = carrier.mantissa_bits
    field = (mag >> np.array(mc, mag.dtype)).astype(sint)
    bit_length = sint(nbits) - lax.clz(mag).astype(sint)
    subnormal = sint(carrier.min_exponent - mc - 1) + bit_length
    return jnp.where(field > 0, field - sint(carrier.exponent_bias), subnormal)


def _power_of_two(k, dtype):
    """2.0**k for int k in the carrier's normal exponent range, built from bits."""
    carrier = carrier_format(dtype)
    uint = _uint(dtype)
    field = (k + carrier.exponent_bias).astype(uint)
    return lax.bitcast_convert_type(field << np.array(carrier.mantissa_bits, uint), dtype)


def _ldexp_exact(v, k, carrier: FloatFormat):
    """v * 2**k with integer operations only (immune to flushing subnormals). Exact whenever the
    result is representable and finite; a nonzero result below the carrier's subnormals becomes
    its smallest subnormal (only its sign and nonzeroness matter where that is used)."""
    dtype = v.dtype
    uint, sint = _uint(dtype), _sint(dtype)
    nbits, mc = 8 * dtype.itemsize, carrier.mantissa_bits
    frac_mask = np.array((1 << mc) - 1, uint)
    mag, sign = _magnitude_bits(v)
    field = (mag >> np.array(mc, uint)).astype(sint)
    bit_length = sint(nbits) - lax.clz(mag).astype(sint)
    # A carrier subnormal is normalised: its field-equivalent is bit_length - mc (<= 0).
    normal_input = field > 0
    field = jnp.where(normal_input, field, bit_length - sint(mc))
    shift_up = jnp.clip(sint(mc + 1) - bit_length, 0, nbits - 1).astype(uint)
    sig = jnp.where(normal_input, (mag & frac_mask) | np.array(1 << mc, uint), mag << shift_up)
    new_field = field + k.astype(sint)
    normal = (jnp.maximum(new_field, 1).astype(uint) << np.array(mc, uint)) | (sig & frac_mask)
    shift_down = jnp.clip(sint(1) - new_field, 0, nbits - 1).astype(uint)
    tiny = jnp.maximum(sig >> shift_down, np.array(1, uint))
    out = jnp.where(new_field >= 1, normal, tiny)
    out = jnp.where(_nonzero_bits(mag), out, np.array(0, uint)) | sign
    return lax.bitcast_convert_type(out, dtype)


def _nonzero_floor(scaled, x_mag, mode):
    """Directed and random modes: a nonzero value whose scaled copy underflowed to zero rounds
    like any value below the element's smallest subnormal; keep it nonzero (and signed)."""
    if mode not in ("up", "down", "random"):
        return scaled
    mag, sign = _magnitude_bits(scaled)
    lost = (mag == 0) & _nonzero_bits(x_mag)
    one = np.array(1, mag.dtype)
    return lax.bitcast_convert_type(jnp.where(lost, sign | one, mag | sign), scaled.dtype)


def _mx_scales(blocks, fmt: BlockScaledFormat):
    """Per-block shared exponent (clamped to [-127, 127]), NaN flag and block amax bits."""
    carrier = carrier_format(blocks.dtype)
    sint = _sint(blocks.dtype)
    mag, _ = _magnitude_bits(blocks)
    inf_bits = np.array(np.inf, blocks.dtype).view(np.dtype(mag.dtype))
    amax = _block_max(mag, inf_bits)
    shared = _floor_log2(amax, carrier, sint) - sint(fmt.element_emax)
    nan_block = (amax >= inf_bits) | (shared > _E8M0_BIAS)
    return jnp.clip(shared, -_E8M0_BIAS, _E8M0_BIAS), nan_block, amax, mag


def _mx_elements(blocks, fmt, mode, random_bits, *, exact: bool, scales=None):
    """Rounded elements P (carrier values), shared exponents and NaN flags of the blocks.
    ``exact`` scales with integer operations; otherwise by float multiplication (exact only
    where :func:`_mx_fast_is_exact` says so)."""
    shared, nan_block, _, mag = _mx_scales(blocks, fmt) if scales is None else scales
    element = _element_format(fmt)
    if exact:
        scaled = _ldexp_exact(blocks, -shared, carrier_format(blocks.dtype))
    else:
        scaled = blocks * _power_of_two(-shared, blocks.dtype)
    scaled = _nonzero_floor(scaled, mag, mode)
    elements = round_bits(scaled, element, mode, random_bits, saturate=True)
    if fmt.element == "int8":  # integers have no negative zero
        elements = jnp.where(elements == 0, jnp.zeros((), elements.dtype), elements)
    return elements, shared, nan_block


def _mx_fast_is_exact(shared, nan_block, amax, fmt: BlockScaledFormat, mode: str, dtype):
    """Whether multiplying by 2**-shared and 2**shared in float arithmetic is exact even where
    the backend flushes subnormals: both factors normal, every nonzero P * 2**shared normal, and
    any flushed subnormal input too small, relative to the element's smallest subnormal, to
    change its rounding (by a margin of 2**-32 for stochastic rounding's random bits)."""
    carrier = carrier_format(dtype)
    element = _element_format(fmt)
    if carrier.min_exponent <= -2 * _E8M0_BIAS - 64:  # float64: always
        return None
    log2_min_element = element.min_exponent - element.mantissa_bits
    lowest = carrier.min_exponent - log2_min_element + (32 if mode == "stochastic" else 1)
    fine = (shared >= lowest) & (shared <= carrier.max_exponent - 1)
    return jnp.all(fine | nan_block | ~_nonzero_bits(amax))


def _mx_round(blocks, fmt: BlockScaledFormat, mode, random_bits):
    scales = _mx_scales(blocks, fmt)
    shared, nan_block, amax, _ = scales
    carrier = carrier_format(blocks.dtype)

    def fast(blocks, random_bits):
        elements, shared, nan_block = _mx_elements(
            blocks, fmt, mode, random_bits, exact=False, scales=scales
        )
        # Here every non-NaN block with shared < emin of the carrier is all zeros, and the
        # bits of 2**shared then encode 0.0 (shared = -127 in float32) or a subnormal.
        out = elements * _power_of_two(shared, blocks.dtype)
        return jnp.where(nan_block, jnp.array(np.nan, out.dtype), out)

    def exact(blocks, random_bits):
        elements, shared, nan_block = _mx_elements(
            blocks, fmt, mode, random_bits, exact=True, scales=scales
        )
        out = _ldexp_exact(elements, shared, carrier)
        return jnp.where(nan_block, jnp.array(np.nan, out.dtype), out)

    fast_ok = _mx_fast_is_exact(shared, nan_block, amax, fmt, mode, blocks.dtype)
    if fast_ok is None:
        return fast(blocks, random_bits)
    return lax.cond(fast_ok, fast, exact, blocks, random_bits)


# --- NVFP4 --------------------------------------------------------------------------------------


def _nvfp4_elements(blocks, x, fmt: BlockScaledFormat, mode, random_bits):
    """Rounded elements, block scales s_b (carrier values), tensor scale s_t (float32) and NaN
    flags; the operations of the module docstring, in that order."""
    dtype = blocks.dtype
    f32_max = np.float32(np.finfo(np.float32).max)
    mag, _ = _magnitude_bits(blocks)
    inf_bits = np.array(np.inf, dtype).view(np.dtype(mag.dtype))
    x_mag, _ = _magnitude_bits(x)
    amax_tensor = jnp.max(jnp.where(x_mag < inf_bits, x_mag, np.array(0, mag.dtype)))
    amax_tensor = lax.bitcast_convert_type(amax_tensor, dtype)
    encode = (np.array(_NVFP4_TENSOR_DIVISOR, dtype) / amax_tensor).astype(jnp.float32)
    encode = jnp.minimum(encode, f32_max)
    encode = jnp.where((amax_tensor == 0) | (encode == 0), np.float32(1), encode)
    tensor_scale = np.float32(1) / encode
    s_t = tensor_scale.astype(dtype)

    amax_bits = _block_max(mag, inf_bits)
    nan_block = amax_bits >= inf_bits
    amax = lax.bitcast_convert_type(jnp.where(nan_block, np.array(0, mag.dtype), amax_bits), dtype)
    ratio = amax * (encode * np.float32(1 / 6)).astype(dtype)
    block_scale = round_bits(ratio, get_format("fp8_e4m3"), "nearest", saturate=True)
    zero_block = block_scale == 0
    coefficient = jnp.minimum(np.array(1, dtype) / (block_scale * s_t), np.array(f32_max, dtype))
    scaled = jnp.where(zero_block, blocks * jnp.zeros((), dtype), blocks * coefficient)
    scaled = _nonzero_floor(scaled, jnp.where(zero_block, np.array(0, mag.dtype), mag), mode)
    elements = round_bits(scaled, fmt.element_format, mode, random_bits, saturate=True)
    return elements, block_scale, tensor_scale, nan_block


def _nvfp4_round(blocks, x, fmt, mode, random_bits):
    elements, block_scale, tensor_scale, nan_block = _nvfp4_elements(
        blocks, x, fmt, mode, random_bits
    )
    out = (elements * block_scale) * tensor_scale.astype(blocks.dtype)
    return jnp.where(nan_block, jnp.array(np.nan, blocks.dtype), out)


# --- codes --------------------------------------------------------------------------------------


def _element_codes(values, element: FloatFormat, *, twos_complement: bool = False):
    """Bit patterns (sign, exponent field, fraction field) of values that are exact values of
    ``element`` and normal or zero in the carrier; with ``twos_complement`` (MXINT8) the
    magnitude code is the integer k of k / 64 and negatives are two's complement."""
    dtype = values.dtype
    carrier = carrier_format(dtype)
    uint, sint = _uint(dtype), _sint(dtype)
    nbits, mc = 8 * dtype.itemsize, carrier.mantissa_bits
    m, emin = element.mantissa_bits, element.min_exponent
    mag, sign = _magnitude_bits(values)
    exponent = (mag >> np.array(mc, uint)).astype(sint) - sint(carrier.exponent_bias)
    sig = (mag & np.array((1 << mc) - 1, uint)) | np.array(1 << mc, uint)
    top = sig >> np.array(mc - m, uint)
    normal = (jnp.maximum(exponent - sint(emin), 0).astype(uint) << np.array(m, uint)) + top
    shift = jnp.clip(sint(mc - m + emin) - exponent, 0, nbits - 1).astype(uint)
    code = jnp.where(exponent >= emin, normal, sig >> shift)
    code = jnp.where(mag == 0, np.array(0, uint), code)
    negative = sign != 0
    if twos_complement:
        code = jnp.where(negative, (np.array(256, uint) - code) & np.array(255, uint), code)
    else:
        code = code | jnp.where(
            negative, np.array(1 << (element.total_bits - 1), uint), np.array(0, uint)
        )
    return code.astype(jnp.uint8)


def _element_values(fmt: BlockScaledFormat, scale: bool = False) -> np.ndarray:
    """float64 value of every code (element codes, or with ``scale`` the E4M3 block scales)."""
    if fmt.element == "int8" and not scale:
        return np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64) / 64
    element = get_format("fp8_e4m3") if scale else fmt.element_format
    codes = np.arange(1 << element.total_bits)
    m, bits = element.mantissa_bits, element.total_bits
    sign = np.where(codes >> (bits - 1), -1.0, 1.0)
    field = (codes >> m) & ((1 << element.exponent_bits) - 1)
    frac = codes & ((1 << m) - 1)
    significand = np.where(field > 0, 1.0 + frac / (1 << m), frac / (1 << m))
    exponent = np.maximum(field, 1) - element.exponent_bias
    values = sign * np.ldexp(significand, exponent)
    top = (1 << element.exponent_bits) - 1
    if element.has_inf:
        values = np.where(field == top, np.where(frac == 0, sign * np.inf, np.nan), values)
    elif element.has_nan:
        values = np.where((field == top) & (frac == (1 << m) - 1), np.nan, values)
    return values


def _pack(codes, bits: int):
    """Packs a 1-D array of ``bits``-bit codes (uint8) into bytes."""
    n = codes.shape[0]
    if bits == 8:
        return codes
    if bits == 4:
        codes = jnp.pad(codes, (0, n % 2))
        pairs = codes.reshape(-1, 2)
        return pairs[:, 0] | (pairs[:, 1] << np.uint8(4))
    if bits == 6:
        codes = jnp.pad(codes, (0, -n % 4)).astype(jnp.uint32).reshape(-1, 4)
        word = (
            codes[:, 0]
            | (codes[:, 1] << np.uint32(6))
            | (codes[:, 2] << np.uint32(12))
            | (codes[:, 3] << np.uint32(18))
        )
        out = (
            jnp.stack(
                [
                    word & np.uint32(255),
                    (word >> np.uint32(8)) & np.uint32(255),
                    word >> np.uint32(16),
                ],
                axis=-1,
            )
            .reshape(-1)
            .astype(jnp.uint8)
        )
        return out[: -(-6 * n // 8)]
    raise ValueError(f"no packing for {bits}-bit codes")


def _unpack(packed, bits: int, n: int):
    """Inverse of :func:`_pack`: the first ``n`` codes."""
    if bits == 8:
        return packed[:n]
    if bits == 4:
        low, high = packed & np.uint8(15), packed >> np.uint8(4)
        return jnp.stack([low, high], axis=-1).reshape(-1)[:n]
    if bits == 6:
        groups = -(-n // 4)
        data = jnp.pad(packed, (0, 3 * groups - packed.shape[0])).astype(jnp.uint32)
        data = data.reshape(-1, 3)
        word = data[:, 0] | (data[:, 1] << np.uint32(8)) | (data[:, 2] << np.uint32(16))
        codes = jnp.stack([(word >> np.uint32(s)) & np.uint32(63) for s in (0, 6, 12, 18)], axis=-1)
        return codes.reshape(-1)[:n].astype(jnp.uint8)
    raise ValueError(f"no packing for {bits}-bit codes")
