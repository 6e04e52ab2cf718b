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
    size = int(np.prod(shape, dtype=np.int64))
    counter = lax.iota(jnp.uint32, size).reshape(shape) if size else jnp.zeros(shape, jnp.uint32)
    h = _triple32(_triple32(counter ^ seed[0]) ^ seed[1])
    if width == 4:
        return h
    if width == 2:
        return (h >> np.uint32(16)).astype(jnp.uint16)
    low = _triple32(h + np.uint32(0x9E3779B9))
    return (h.astype(jnp.uint64) << np.uint64(32)) | low.astype(jnp.uint64)
