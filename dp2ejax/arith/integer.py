"""Symmetric integer formats with absmax scales: scales, codes, fake quantisation, integer matmul.

An :class:`~dp2ejax.arith.formats.IntFormat` of ``bits`` bits stores a value x as an integer
code ``q = clip(round(x / scale), -qmax, qmax)``, ``qmax = 2**(bits-1) - 1``, and a float
``scale = absmax / qmax`` shared by a group of values: the whole tensor, a channel or a block.

Everything here works in the float carrier (float32 or float64) with these IEEE operations,
each rounded to the carrier:

1. ``scale = clip_at * r`` with ``clip_at`` the group's absmax (or percentile, below) and
   ``r = 1 / qmax`` rounded to the carrier; then ``scale = max(scale, tiny)`` (``tiny`` the
   carrier's smallest normal number, so that ``1 / scale`` is finite: groups that small are
   quantised on the grid of ``tiny``);
2. ``inverse = 1 / scale``, per group;
3. ``y = x * inverse``, clipped to ``[-qmax, qmax]`` and rounded to an integer ``q``;
4. ``value = q * scale``.

Multiplications by reciprocals, not divisions, because XLA rewrites ``a / constant`` and
``a / broadcast(b)`` into multiplications by reciprocals under ``jit``: a literal ``x / scale``
would give other bits eagerly than compiled. Written this way, eager, ``jit`` and a NumPy
reference agree bit for bit; it is also PyTorch's ``fake_quantize`` arithmetic
(``round(x * (1 / scale))``). ``y`` may differ from the exact ``x / scale`` by an ulp or two, so
the absmax element itself may come out just below ``qmax``: the directed modes
(``"toward_zero"``, ``"down"`` for positive values) then round it to ``qmax - 1``.
XLA:CPU also contracts ``a * b + c`` into fused multiply-adds; where a product must be rounded
before a sum (the percentile's interpolation, the block sums of :func:`int_dot_general`) the
code keeps it so.

Scale groups and the shape of the scales (:func:`int_scales`):

* ``"tensor"``: one scale; ``scales.shape == (1,) * x.ndim``.
* ``"channel"``: one scale per index along ``axis``, the absmax taken over all the other axes;
  ``scales.shape`` is ``x.shape`` with every axis but ``axis`` set to 1.
* ``"block"``: one scale per block of ``block_size`` consecutive elements along ``axis`` (the
  last block may be shorter); ``scales.shape`` is ``x.shape`` with ``axis`` replaced by the
  number of blocks ``ceil(n / block_size)``; block ``j`` covers indices
  ``[j * block_size, (j + 1) * block_size)`` along ``axis``.

A 0-d ``x`` has one scale of shape ``()`` whatever the granularity.

Special groups:

* all zeros: scale 1, so zeros stay zeros without a 0/0 NaN;
* ``percentile`` calibration: the absmax is replaced by that percentile of ``|x|`` over the
  group, with NumPy's default ``method="linear"`` (index ``(n - 1) * p / 100`` in the sorted
  values, NumPy's two-sided interpolation), so values above it saturate at ``±qmax``; a
  percentile of 0 (a group of mostly zeros) falls back to the group's absmax;
* a NaN or an infinity anywhere in a group makes that group's scale NaN: every value of the
  group rounds to NaN (its integer codes are 0), never to a finite wrong value.

Zero codes give +0.0 (as integer hardware does): -0.3 * scale rounds to +0.0, not -0.0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.formats import IntFormat, get_format
from dp2ejax.arith.rounding import RANDOM_MODES, check_mode

DotDimensionNumbers = tuple[tuple[Sequence[int], Sequence[int]],
                            tuple[Sequence[int], Sequence[int]]]

_INT32_MAX = (1 << 31) - 1
_CARRIERS = (np.dtype(np.float32), np.dtype(np.float64))
_UINT = {4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


# --- checks at the public boundary ------------------------------------------------------------


def _int_format(fmt, name: str) -> IntFormat:
    try:
        fmt = get_format(fmt)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if not isinstance(fmt, IntFormat):
        raise ValueError(f"{name} must be an integer format (IntFormat, e.g. 'int8', "
                         f"'int4_channel', 'int8_block32'), got {fmt!r}")
    return fmt


def _float_operand(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype not in _CARRIERS:
        raise ValueError(f"{name} must be a float32 or float64 array (the carrier of integer "
                         f"formats), got dtype {x.dtype}")
    return x


def _resolve_axis(axis, fmt: IntFormat, ndim: int) -> int:
    axis = fmt.axis if axis is None else axis
    if not isinstance(axis, int | np.integer) or isinstance(axis, bool) or not (
            -ndim <= axis < ndim):
        raise ValueError(f"axis must be an int in [-{ndim}, {ndim}) for an array of rank {ndim}, "
                         f"got {axis!r}")
    return int(axis) % ndim


def _checked_axis(axis, fmt: IntFormat, x: jax.Array) -> int | None:
    """``axis`` (default ``fmt.axis``) as a non-negative int, checked against ``x``'s rank;
    None where no axis applies (tensor granularity, 0-d arrays)."""
    if fmt.granularity == "tensor" or x.ndim == 0:
        if axis is not None:
            _resolve_axis(axis, fmt, max(x.ndim, 1))
        return None
    return _resolve_axis(axis, fmt, x.ndim)


def _check_random_bits(random_bits, x: jax.Array, mode: str):
    if mode not in RANDOM_MODES:
        return None
    if random_bits is None:
        raise ValueError(f"rounding mode {mode!r} needs random_bits: unsigned integers of x's "
                         f"shape and width, e.g. dp2ejax.arith.random_bits(key, x.shape, x.dtype)")
    random_bits = jnp.asarray(random_bits)
    uint = _UINT[x.dtype.itemsize]
    if random_bits.shape != x.shape or random_bits.dtype != uint:
        raise ValueError(f"random_bits must be {uint} of shape {x.shape} (x is {x.dtype}), got "
                         f"{random_bits.dtype} of shape {random_bits.shape}")
    return random_bits


# --- scales -----------------------------------------------------------------------------------


def _percentile(abs_x: jax.Array, percent: float, axes: tuple[int, ...]) -> jax.Array:
    """``np.percentile(abs_x, percent, axis=axes, keepdims=True)`` (method "linear") with
    NumPy's own index and interpolation arithmetic (the index is static: the group size is)."""
    n = math.prod(abs_x.shape[a] for a in axes)
    kept = [a for a in range(abs_x.ndim) if a not in axes]
    keep_shape = tuple(1 if a in axes else abs_x.shape[a] for a in range(abs_x.ndim))
    if n == 0:
        return jnp.zeros(keep_shape, abs_x.dtype)
    flat = jnp.transpose(abs_x, (*kept, *axes)).reshape(*(abs_x.shape[a] for a in kept), n)
    ordered = jnp.sort(flat, axis=-1)
    index = (n - 1) * (percent / 100)
    below = min(math.floor(index), n - 1)
    above = min(below + 1, n - 1)
    weight = index - below
    a, b = ordered[..., below], ordered[..., above]
    diff = b - a
    # NumPy's _lerp: from the nearer end, so that weight 1 gives b exactly. XLA:CPU contracts
    # `a + d * w` into one fused multiply-add (one rounding where NumPy makes two); the
    # minimum with b (a no-op: 0 <= a <= b, so d * w <= b) stands between the product and the
    # sum, so that both stay rounded.
    if weight >= 0.5:
        value = b - jnp.minimum(diff * (1 - weight), b)
    else:
        value = a + jnp.minimum(diff * weight, b)
    return value.reshape(keep_shape)


def _group_scales(x: jax.Array, fmt: IntFormat, axes: tuple[int, ...]) -> jax.Array:
    """Scales of the groups that reduce ``axes`` of ``x`` (kept as size-1 axes)."""
    abs_x = jnp.abs(x)
    # XLA's max propagates NaN: absmax is NaN or inf exactly when the group holds one.
    absmax = jnp.max(abs_x, axis=axes, keepdims=True, initial=0)
    clip_at = absmax
    if fmt.percentile is not None:
        percentile = _percentile(abs_x, float(fmt.percentile), axes)
        clip_at = jnp.where(percentile > 0, percentile, absmax)
    reciprocal_qmax = np.asarray(1, x.dtype) / np.asarray(fmt.qmax, x.dtype)
    scale = jnp.maximum(clip_at * reciprocal_qmax, jnp.finfo(x.dtype).tiny)
    scale = jnp.where(absmax == 0, jnp.ones_like(scale), scale)
    return jnp.where(jnp.isfinite(absmax), scale, jnp.full_like(scale, jnp.nan))


def _block_scales(x: jax.Array, fmt: IntFormat, axis: int) -> jax.Array:
    """Scales of blocks along ``axis``: ``x.shape`` with ``axis`` -> ceil(n / block_size)."""
    moved = jnp.moveaxis(x, axis, -1)
    n, size = moved.shape[-1], fmt.block_size
    full = n // size
    parts = []
    if full:
        blocks = moved[..., : full * size].reshape(*moved.shape[:-1], full, size)
        parts.append(_group_scales(blocks, fmt, (blocks.ndim - 1,))[..., 0])
    if n % size:  # the short last block is its own group (its percentile uses its own length)
        parts.append(_group_scales(moved[..., full * size:], fmt, (moved.ndim - 1,)))
    if not parts:  # n == 0: no blocks
        scales = jnp.zeros((*moved.shape[:-1], 0), x.dtype)
    else:
        scales = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    return jnp.moveaxis(scales, -1, axis)


def _scales(x: jax.Array, fmt: IntFormat, axis: int | None) -> jax.Array:
    if x.ndim == 0:
        return _group_scales(x, fmt, ())
    if fmt.granularity == "tensor":
        return _group_scales(x, fmt, tuple(range(x.ndim)))
    axis = _resolve_axis(axis, fmt, x.ndim)
    if fmt.granularity == "channel":
        return _group_scales(x, fmt, tuple(a for a in range(x.ndim) if a != axis))
    return _block_scales(x, fmt, axis)


def _expand(scales: jax.Array, shape: tuple[int, ...], fmt: IntFormat,
            axis: int | None) -> jax.Array:
    """Scales broadcastable against an array of ``shape`` (blocks repeated along ``axis``)."""
    if fmt.granularity != "block" or len(shape) == 0:
        return scales
    axis = _resolve_axis(axis, fmt, len(shape))
    repeated = jnp.repeat(scales, fmt.block_size, axis=axis)
    return lax.slice_in_dim(repeated, 0, shape[axis], axis=axis)


def int_scales(x, fmt: str | IntFormat, axis: int | None = None) -> jax.Array:
    """The absmax (or percentile) scales of ``x`` in the integer format ``fmt``.

    Args:
      x: float32 or float64 array.
      fmt: an :class:`IntFormat` or its name (``"int8"``, ``"int4_channel"``,
        ``"int8_block32"``…).
      axis: the channel or block axis; default ``fmt.axis``. Ignored for tensor granularity.

    Returns:
      Scales in ``x``'s dtype: shape ``(1,) * x.ndim`` (tensor), ``x.shape`` with every axis
      but ``axis`` set to 1 (channel), or ``x.shape`` with ``axis`` replaced by the number of
      blocks ``ceil(n / block_size)`` (block). All-zero groups have scale 1; groups holding a
      NaN or an infinity have scale NaN.

    Example:
      >>> x = jnp.array([[1.0, -254.0], [0.5, 0.0]], jnp.float32)
      >>> int_scales(x, "int8")
      Array([[2.]], dtype=float32)
      >>> int_scales(x, "int8_channel", axis=0)
      Array([[2.        ],
             [0.00393701]], dtype=float32)
    """
    fmt = _int_format(fmt, "fmt")
    x = _float_operand(x, "x")
    return _int_scales_jit(x, fmt=fmt, axis=_checked_axis(axis, fmt, x))


@functools.partial(jax.jit, static_argnames=("fmt", "axis"))
def _int_scales_jit(x, *, fmt, axis):
    return _scales(x, fmt, axis)


# --- rounding in the scaled domain ------------------------------------------------------------


def _round_scaled(y: jax.Array, qmax: int, mode: str, random_bits) -> jax.Array:
    """Integer-valued floats ``round(clip(y, -qmax, qmax))`` (clipping first is the same as
    clipping after: qmax is an integer and every mode is monotone). NaN stays NaN; zeros are
    +0."""
    y = jnp.clip(y, -qmax, qmax)
    if mode == "nearest":
        q = jnp.round(y)  # ties to even
    elif mode == "toward_zero":
        q = jnp.trunc(y)
    elif mode == "up":
        q = jnp.ceil(y)
    elif mode == "down":
        q = jnp.floor(y)
    else:
        magnitude = jnp.abs(y)
        below = jnp.floor(magnitude)
        fraction = magnitude - below  # exact: the fractional bits of a float
        width = 8 * random_bits.dtype.itemsize
        if mode == "stochastic":
            # up iff bits < ceil(fraction * 2**width): probability exactly `fraction` when it is
            # a multiple of 2**-width (always when |y| >= 2**(p - width), p the carrier's
            # precision), else rounded up to the next multiple.
            threshold = jnp.ceil(fraction * float(2**width))
            threshold = jnp.where(jnp.isnan(threshold), 0, threshold).astype(random_bits.dtype)
            up = random_bits < threshold
        else:  # random: either neighbour with probability 1/2 (the top bit), unless exact
            top = random_bits >> np.array(width - 1, random_bits.dtype)
            up = (fraction != 0) & (top == 1)
        magnitude = below + up.astype(y.dtype)
        q = jnp.where(y < 0, -magnitude, magnitude)
    return jnp.where(q == 0, jnp.zeros_like(q), q)


def _codes_dtype(fmt: IntFormat):
    return jnp.int8 if fmt.bits <= 8 else jnp.int16


def _to_codes(q: jax.Array, fmt: IntFormat) -> jax.Array:
    return jnp.where(jnp.isnan(q), jnp.zeros_like(q), q).astype(_codes_dtype(fmt))


def round_int(x, fmt: str | IntFormat, mode: str = "nearest", random_bits=None,
              axis: int | None = None) -> jax.Array:
    """Fake quantisation: ``x`` rounded to ``scale * q``, q an integer code of ``fmt``.

    No gradient rule: :func:`dp2ejax.arith.round_to` wraps this with a straight-through one.

    Args:
      x: float32 or float64 array.
      fmt: an :class:`IntFormat` or its name.
      mode: how ``x / scale`` becomes an integer: ``"nearest"`` (ties to even),
        ``"toward_zero"``, ``"up"``, ``"down"``, ``"stochastic"`` (up with probability equal
        to the fractional part of ``|x / scale|``, away from zero: unbiased) or ``"random"``
        (either neighbour with probability 1/2, unless ``x / scale`` is an integer). Values
        beyond ``±qmax * scale`` (percentile calibration) saturate in every mode.
      random_bits: for the random modes, unsigned integers of ``x``'s shape and width, as
        :func:`dp2ejax.arith.random_bits` draws them.
      axis: the channel or block axis; default ``fmt.axis``.

    Returns:
      An array like ``x`` (NaN for the whole scale group of a NaN or an infinity).

    Example:
      >>> x = jnp.array([0.1, 0.8, -1.2, 3.5], jnp.float32)
      >>> round_int(x, "int4")  # scale 3.5 / 7 = 0.5
      Array([ 0. ,  1. , -1. ,  3.5], dtype=float32)
      >>> round_int(x, "int4", "toward_zero")
      Array([ 0. ,  0.5, -1. ,  3.5], dtype=float32)
      >>> round_int(x, "int4", "up")
      Array([ 0.5,  1. , -1. ,  3.5], dtype=float32)
    """
    fmt = _int_format(fmt, "fmt")
    x = _float_operand(x, "x")
    check_mode(mode)
    random_bits = _check_random_bits(random_bits, x, mode)
    return _round_int_jit(x, random_bits, fmt=fmt, mode=mode, axis=_checked_axis(axis, fmt, x))


@functools.partial(jax.jit, static_argnames=("fmt", "mode", "axis"))
def _round_int_jit(x, random_bits, *, fmt, mode, axis):
    scales = _scales(x, fmt, axis)
    inverse = _expand(1 / scales, x.shape, fmt, axis)
    q = _round_scaled(x * inverse, fmt.qmax, mode, random_bits)
    return q * _expand(scales, x.shape, fmt, axis)


def quantize_int(x, fmt: str | IntFormat, axis: int | None = None, mode: str = "nearest",
                 random_bits=None) -> tuple[jax.Array, jax.Array]:
    """The integer codes and scales of ``x`` in ``fmt``: ``dequantize_int`` of them is
    ``round_int(x, fmt, mode, random_bits, axis)`` bit for bit.

    Args:
      x, fmt, axis, mode, random_bits: as for :func:`round_int`.

    Returns:
      ``(codes, scales)``: codes of ``x``'s shape in ``[-qmax, qmax]``, int8 for ``bits <= 8``
      else int16 (0 in groups whose scale is NaN); scales as :func:`int_scales` returns them.

    Example:
      >>> codes, scales = quantize_int(jnp.array([0.1, 0.5, -1.0, 2.0]), "int4")
      >>> codes, scales
      (Array([ 0,  2, -4,  7], dtype=int8), Array([0.28571429], dtype=float64))
    """
    fmt = _int_format(fmt, "fmt")
    x = _float_operand(x, "x")
    check_mode(mode)
    random_bits = _check_random_bits(random_bits, x, mode)
    return _quantize_int_jit(x, random_bits, fmt=fmt, mode=mode,
                             axis=_checked_axis(axis, fmt, x))


@functools.partial(jax.jit, static_argnames=("fmt", "mode", "axis"))
def _quantize_int_jit(x, random_bits, *, fmt, mode, axis):
    scales = _scales(x, fmt, axis)
    q = _round_scaled(x * _expand(1 / scales, x.shape, fmt, axis), fmt.qmax, mode, random_bits)
    return _to_codes(q, fmt), scales


def dequantize_int(codes, scales, fmt: str | IntFormat, axis: int | None = None) -> jax.Array:
    """``codes * scales`` in the scales' dtype, block scales repeated along ``axis``.

    Example:
      >>> dequantize_int(jnp.array([1, -3, 7], jnp.int8), jnp.array([0.5]), "int4")
      Array([ 0.5, -1.5,  3.5], dtype=float64)
    """
    fmt = _int_format(fmt, "fmt")
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be an integer array, got dtype {codes.dtype}")
    scales = _float_operand(scales, "scales")
    axis = _checked_axis(axis, fmt, codes)
    return codes.astype(scales.dtype) * _expand(scales, codes.shape, fmt, axis)


# --- integer matmul ---------------------------------------------------------------------------


def _dimension_numbers(dimension_numbers, lhs: jax.Array, rhs: jax.Array):
    try:
        (lc, rc), (lb, rb) = dimension_numbers
        lc, rc, lb, rb = (tuple(int(d) for d in dims) for dims in (lc, rc, lb, rb))
    except (TypeError, ValueError):
        raise ValueError(f"dimension_numbers must be ((lhs_contracting, rhs_contracting), "
                         f"(lhs_batch, rhs_batch)), got {dimension_numbers!r}") from None
    lc = tuple(d % lhs.ndim if -lhs.ndim <= d < lhs.ndim else -1 for d in lc)
    lb = tuple(d % lhs.ndim if -lhs.ndim <= d < lhs.ndim else -1 for d in lb)
    rc = tuple(d % rhs.ndim if -rhs.ndim <= d < rhs.ndim else -1 for d in rc)
    rb = tuple(d % rhs.ndim if -rhs.ndim <= d < rhs.ndim else -1 for d in rb)
    ok = (len(lc) == len(rc) and len(lb) == len(rb) and -1 not in lc + lb + rc + rb
          and len(set(lc + lb)) == len(lc + lb) and len(set(rc + rb)) == len(rc + rb)
          and all(lhs.shape[i] == rhs.shape[j] for i, j in zip(lc + lb, rc + rb, strict=True)))
    if not ok:
        raise ValueError(f"dimension_numbers {dimension_numbers!r} do not fit lhs of shape "
                         f"{lhs.shape} and rhs of shape {rhs.shape}")
    return lc, rc, lb, rb


def _operand_codes(x3: jax.Array, fmt: IntFormat, block: int, blocks: int):
    """Codes ``(batch, free, blocks, block)`` and scales ``(batch|1, free|1, blocks|1)`` of an
    operand laid out as ``(batch, free, k)``."""
    k = x3.shape[-1]
    if fmt.granularity == "tensor":
        scales = _group_scales(x3, fmt, (0, 1, 2))
    elif fmt.granularity == "channel":  # one scale per non-contracting index
        scales = _group_scales(x3, fmt, (2,))
    else:
        scales = _block_scales(x3, fmt, 2)
    x4 = jnp.pad(x3, ((0, 0), (0, 0), (0, blocks * block - k))).reshape(*x3.shape[:2], blocks,
                                                                         block)
    q = _round_scaled(x4 * (1 / scales)[..., None], fmt.qmax, "nearest", None)
    return _to_codes(q, fmt), scales


def int_dot_general(lhs, rhs, dimension_numbers: DotDimensionNumbers, lhs_fmt: str | IntFormat,
                    rhs_fmt: str | IntFormat, *, preferred_element_type=None) -> jax.Array:
    """``lax.dot_general`` as integer hardware computes it: quantize both operands, dot the
    integer codes exactly, rescale.

    Scales per operand, by granularity:

    * ``"tensor"``: one scale.
    * ``"channel"``: one scale per non-contracting index (batch and free dimensions together),
      the absmax taken over the contracting dimensions: one per row of ``x`` and one per output
      column of ``w`` in ``x @ w``, so that they factor out of the sum. ``fmt.axis`` is
      ignored (the contracting dimensions decide).
    * ``"block"``: blocks of ``block_size`` along the contraction (several contracting
      dimensions are flattened, in ``lhs``'s order, into one); both operands' blocks must
      have the same size. ``fmt.axis`` is ignored.

    The codes are dotted with ``lax.dot_general(..., preferred_element_type=jnp.int32)``: exact
    whenever ``qmax_lhs * qmax_rhs * terms < 2**31`` (``terms``: the contraction length, or the
    block size: int8 up to 133144, int4 up to 43826196 terms). Beyond that the codes accumulate
    in int64 when 64-bit types are on (``jax_enable_x64``), and a ValueError says so otherwise.
    Without blocks the result is one rescale, ``float(acc) * (lhs_scale * rhs_scale)`` in the
    output dtype (two roundings, of the scale product and of the product; converting ``acc``
    is exact below 2**24 in float32 and 2**53 in float64). With blocks, each block's partial
    sum is rescaled that way by its two block scales (a channel or tensor operand's scale is
    the same for every block) and the rescaled partial sums are added in the float carrier in
    block order, left to right (one rounding per block, as a float accumulator would; the same
    on every backend and under ``jit``).

    NaN or infinity in an operand makes the output NaN where its scale group reaches: the whole
    output (tensor), the rows or columns of its channels, the outputs its blocks feed.

    Args:
      lhs, rhs: float32 or float64 arrays.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`` as
        for :func:`jax.lax.dot_general`.
      lhs_fmt, rhs_fmt: integer formats (:class:`IntFormat` or names) of the operands.
      preferred_element_type: float32 or float64 output dtype; default the operands' common
        float dtype.

    Returns:
      The ``(batch..., lhs_free..., rhs_free...)`` product in the output dtype.

    Example:
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> w = jnp.array([[1.0, 0.5], [-1.0, 0.25]])
      >>> int_dot_general(x, w, (((1,), (0,)), ((), ())), "int8_channel", "int8_channel")
      Array([[-0.99212598,  1.00787402],
             [-1.00787402,  2.50393701]], dtype=float64)
      >>> x @ w
      Array([[-1. ,  1. ],
             [-1. ,  2.5]], dtype=float64)
    """
    lhs_fmt = _int_format(lhs_fmt, "lhs_fmt")
    rhs_fmt = _int_format(rhs_fmt, "rhs_fmt")
    lhs = _float_operand(lhs, "lhs")
    rhs = _float_operand(rhs, "rhs")
    out_dtype = np.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    if out_dtype not in _CARRIERS:
        raise ValueError(f"preferred_element_type must be float32 or float64, got {out_dtype}")
    dims = _dimension_numbers(dimension_numbers, lhs, rhs)
    block_sizes = {f.block_size for f in (lhs_fmt, rhs_fmt) if f.granularity == "block"}
    if len(block_sizes) > 1:
        raise ValueError(f"lhs_fmt {lhs_fmt.name!r} and rhs_fmt {rhs_fmt.name!r} have different "
                         f"block sizes ({lhs_fmt.block_size} and {rhs_fmt.block_size}); block "
                         f"scales must cover the same stretch of the contraction")
    k = math.prod(lhs.shape[d] for d in dims[0])
    block = block_sizes.pop() if block_sizes else max(k, 1)
    terms = min(block, k)
    bound = lhs_fmt.qmax * rhs_fmt.qmax * terms
    if bound <= _INT32_MAX:
        acc_dtype = np.dtype(np.int32)
    elif jax.config.jax_enable_x64:
        acc_dtype = np.dtype(np.int64)
    else:
        raise ValueError(
            f"int32 accumulation of {lhs_fmt.name!r} x {rhs_fmt.name!r} codes over {terms} terms "
            f"can overflow (|sum| up to {bound} > 2**31 - 1); use fewer bits, a shorter "
            f"contraction or blocks, or enable jax_enable_x64 to accumulate in int64")
    return _int_dot_general_jit(lhs, rhs, dims=dims, lhs_fmt=lhs_fmt, rhs_fmt=rhs_fmt,
                                block=block, out_dtype=out_dtype, acc_dtype=acc_dtype)


@functools.partial(jax.jit, static_argnames=("dims", "lhs_fmt", "rhs_fmt", "block", "out_dtype",
                                             "acc_dtype"))
def _int_dot_general_jit(lhs, rhs, *, dims, lhs_fmt, rhs_fmt, block, out_dtype, acc_dtype):
    lc, rc, lb, rb = dims
    lfree = [d for d in range(lhs.ndim) if d not in lc + lb]
    rfree = [d for d in range(rhs.ndim) if d not in rc + rb]
    batch_shape = tuple(lhs.shape[d] for d in lb)
    m_shape = tuple(lhs.shape[d] for d in lfree)
    n_shape = tuple(rhs.shape[d] for d in rfree)
    k = math.prod(lhs.shape[d] for d in lc)
    nb, m, n = math.prod(batch_shape), math.prod(m_shape), math.prod(n_shape)
    lhs3 = jnp.transpose(lhs, (*lb, *lfree, *lc)).reshape(nb, m, k)
    rhs3 = jnp.transpose(rhs, (*rb, *rfree, *rc)).reshape(nb, n, k)
    blocks = -(-k // block)
    lhs_codes, lhs_scales = _operand_codes(lhs3, lhs_fmt, block, blocks)
    rhs_codes, rhs_scales = _operand_codes(rhs3, rhs_fmt, block, blocks)
    codes_dtype = jnp.int8 if max(lhs_fmt.bits, rhs_fmt.bits) <= 8 else jnp.int16
    acc = lax.dot_general(lhs_codes.astype(codes_dtype), rhs_codes.astype(codes_dtype),
                          (((3,), (3,)), ((2, 0), (2, 0))),
                          preferred_element_type=acc_dtype)  # (blocks, nb, m, n)
    lhs_scales = jnp.moveaxis(lhs_scales, 2, 0)[..., None].astype(out_dtype)  # (blocks, nb, m, 1)
    rhs_scales = jnp.moveaxis(rhs_scales, 2, 0)[..., None, :].astype(out_dtype)  # (., ., 1, n)
    partial = acc.astype(out_dtype) * (lhs_scales * rhs_scales)
    if blocks > 1:
        # XLA:CPU contracts `total + acc * scale` into a fused multiply-add, which would skip
        # the rounding of the rescaled partial sum. Times a 1 that the compiler cannot see is
        # 1: a contraction of that product with the sum is then exact, fma(t, 1, total).
        partial = partial * jnp.sign(jnp.abs(lhs_scales) + 1)
    if blocks == 0:
        out = jnp.zeros((nb, m, n), out_dtype)
    else:  # block by block, in order (a loop XLA does not reassociate)
        out, _ = lax.scan(lambda total, term: (total + term, None), partial[0], partial[1:])
    return out.reshape(*batch_shape, *m_shape, *n_shape)
