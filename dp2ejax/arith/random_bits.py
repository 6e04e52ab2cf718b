"""Random bits for stochastic and CESTAC rounding.

Rounding needs one random word per element, and drawing it with ``jax.random.bits`` (Threefry)
costs 30-50x the rounding itself on a CPU. The default generator here is a counter-based hash:
64 bits drawn once from the key seed Chris Wellons' ``triple32`` integer hash (the 32-bit mixer
with the lowest known avalanche bias), applied twice to each element's flat index. It is fused
into the rounding kernel by XLA. ``rng="jax"`` draws with ``jax.random.bits`` instead.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

RandomBitGenerator = Literal["hash", "jax"]
RANDOM_BIT_GENERATORS = ("hash", "jax")
_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _triple32(h: jax.Array) -> jax.Array:
    def c(v):
        return np.uint32(v)

    h = h ^ (h >> c(17))
    h = h * c(0xED5AD4BB)
    h = h ^ (h >> c(11))
    h = h * c(0xAC4C1B51)
    h = h ^ (h >> c(15))
    h = h * c(0x31848BAB)
    return h ^ (h >> c(14))


def _triple32_int(h: int) -> int:
    """:func:`_triple32` on a Python int (for constants: no NumPy overflow warnings)."""
    m = 0xFFFFFFFF
    h ^= h >> 17
    h = (h * 0xED5AD4BB) & m
    h ^= h >> 11
    h = (h * 0xAC4C1B51) & m
    h ^= h >> 15
    h = (h * 0x31848BAB) & m
    return h ^ (h >> 14)


def random_bits(
    key: jax.Array, shape: tuple[int, ...], dtype, rng: RandomBitGenerator = "hash"
) -> jax.Array:
    """Uniform random unsigned integers of ``dtype``'s width (16, 32 or 64 bits) in ``shape``.

    Args:
      key: a JAX PRNG key (typed or raw uint32).
      shape: output shape.
      dtype: the float dtype the bits are for (its width sets the integer width), or a uint dtype.
      rng: ``"hash"`` (default, fast; element counters wrap after 2**32 elements) or ``"jax"``
        (``jax.random.bits`` with the key's own implementation).

    Example:
      >>> bits = random_bits(jax.random.key(0), (4,), jnp.float32)
      >>> bits.dtype
      dtype('uint32')
    """
    width = np.dtype(dtype).itemsize
    uint = _UINT[width]
    if rng == "jax":
        return jax.random.bits(key, shape, uint)
    if rng != "hash":
        raise ValueError(f"rng must be one of {RANDOM_BIT_GENERATORS}, got {rng!r}")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    return _counter_hash(seed[0], seed[1], shape, width)


def _counter_hash(seed0, seed1, shape, width: int) -> jax.Array:
    """``triple32(triple32(index ^ seed0) ^ seed1)`` of every element's flat index, as words of
    ``width`` bytes (a 64-bit word takes a second hash for its low half)."""
    size = int(np.prod(shape, dtype=np.int64))
    counter = lax.iota(jnp.uint32, size).reshape(shape) if size else jnp.zeros(shape, jnp.uint32)
    h = _triple32(_triple32(counter ^ seed0) ^ seed1)
    if width == 4:
        return h
    if width == 2:
        return (h >> np.uint32(16)).astype(jnp.uint16)
    low = _triple32(h + np.uint32(0x9E3779B9))
    return (h.astype(jnp.uint64) << np.uint64(32)) | low.astype(jnp.uint64)


def site_bits(seed: jax.Array, site: int, shape: tuple[int, ...], dtype) -> jax.Array:
    """Random words for rounding site number ``site`` of a program, from a ``seed`` of two
    uint32 drawn once per program (per loop body) with ``jax.random.bits``: the site index is
    mixed into the hash instead of deriving a key per site with Threefry (two Threefry calls
    per site made emulated programs compile 20x slower than nearest rounding).

    Example:
      >>> seed = jax.random.bits(jax.random.key(0), (2,), jnp.uint32)
      >>> bool(jnp.any(site_bits(seed, 0, (8,), jnp.float32) != site_bits(seed, 1, (8,),
      ...                                                                    jnp.float32)))
      True
    """
    mix = np.uint32(_triple32_int((int(site) * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF))
    return _counter_hash(seed[0], seed[1] ^ mix, shape, np.dtype(dtype).itemsize)
