"""CESTAC random rounding at the carrier's own precision (fp64 in float64, fp32 in float32).

A format narrower than the carrier is rounded randomly from the carrier's extra bits. At the
carrier's own precision there are none: the operation's result is already rounded to nearest,
and random rounding needs the side of that result on which the exact value lies. Error-free
transformations give it exactly for add, sub, mul, div and sqrt (TwoSum; Dekker's TwoProduct
with Veltkamp's split, whose product is kept out of fused multiply-adds by an optimisation
barrier). The random result is then the nearest result or its neighbour on the exact value's
side, with probability 1/2 each; exact results stay unchanged.

For other operations (transcendental functions, matmuls, reductions) the side is unknown: the
result is kept with probability 1/2 and otherwise moved one ulp up or down at random. The error
is of the same size (one ulp), but exactly representable results of those operations are
perturbed too. Use ``accumulation="sequential"`` to give matmuls CADNA's operation-by-operation
semantics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EXACT_SIDE_PRIMITIVES = frozenset({"add", "sub", "mul", "div", "sqrt"})


def _split(a):
    """Veltkamp's split a = hi + lo, each half of the significand."""
    precision = jnp.finfo(a.dtype).nmant + 1
    factor = np.array(2.0 ** ((precision + 1) // 2) + 1.0, a.dtype)
    scaled = lax.optimization_barrier(factor * a)
    hi = scaled - (scaled - a)
    return hi, a - hi


def _product_error(a, b, p, multiply=jnp.multiply):
    """e with a * b = p + e exactly (Dekker's TwoProduct), for p = fl(a * b). ``multiply`` is
    the product of the halves: elementwise, or a one-term ``dot_general`` (the quire)."""
    ah, al = _split(a)
    bh, bl = _split(b)
    return ((multiply(ah, bh) - p) + multiply(ah, bl) + multiply(al, bh)) + multiply(al, bl)


def _sum_error(a, b, s):
    """e with a + b = s + e exactly (Knuth's TwoSum), for s = fl(a + b)."""
    bb = s - a
    return (a - (s - bb)) + (b - bb)


def exact_side(name: str, operands, out) -> jax.Array | None:
    """Sign of (exact result - out) for the primitives in :data:`EXACT_SIDE_PRIMITIVES`, else
    None. Operands and ``out`` are in one float dtype; the sign is -1, 0 or +1."""
    operands = [lax.stop_gradient(jnp.asarray(o, out.dtype)) for o in operands]
    out = lax.stop_gradient(out)
    if name == "add":
        error = _sum_error(*operands, out)
    elif name == "sub":
        error = _sum_error(operands[0], -operands[1], out)
    elif name == "mul":
        error = _product_error(*operands, out)
    elif name == "div":
        a, b = operands
        error = _residual(a, out, b) * jnp.sign(b)  # a/b - q has the sign of (a - q b) b
    elif name == "sqrt":
        (a,) = operands
        error = _residual(a, out, out)
    else:
        return None
    return jnp.sign(error)


def _residual(a, q, b):
    """a - q * b, with its sign right (q * b taken exactly as p + e)."""
    p = q * b
    return (a - p) - _product_error(q, b, p)


def random_round_at_carrier(name: str, operands, out, bits) -> jax.Array:
    """Random rounding of ``out = name(*operands)`` at the precision of its own dtype.

    ``bits``: unsigned random integers of ``out``'s shape and width (two bits are used).
    """
    nbits = 8 * out.dtype.itemsize
    uint = bits.dtype
    coin = (bits >> np.array(nbits - 1, uint)) == 1
    upward = ((bits >> np.array(nbits - 2, uint)) & np.array(1, uint)) == 1
    side = exact_side(name, operands, out)
    if side is None:
        direction = jnp.where(upward, 1.0, -1.0).astype(out.dtype)
        move = coin
    else:
        direction = side.astype(out.dtype)
        move = coin & (side != 0)
    target = jnp.where(direction > 0, jnp.inf, -jnp.inf).astype(out.dtype)
    neighbour = jnp.nextafter(out, target)
    moved = jnp.where(move & jnp.isfinite(out), neighbour, out)
    return _straight_through(out, moved)


@jax.custom_jvp
def _straight_through(out, moved):
    return moved


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    out, moved = primals
    out_dot, _ = tangents
    return moved, out_dot
