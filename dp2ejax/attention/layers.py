"""Flax linen layers over :func:`block_sparse_attention`: an attention layer and a pre-norm
transformer block.

The mask is static structure, like a kernel size: it is given when the module is built (a
:class:`BlockMask` is hashable by identity, so a module holding one can be a static argument)
and fixes the sequence lengths the module accepts.

Submodules are named so that :func:`dp2ejax.emulate` policies can target them by path:
``BlockSparseAttention`` has ``query``, ``key``, ``value`` and ``out`` (``nn.DenseGeneral``)
projections; ``BlockSparseTransformerBlock`` has ``attention_norm``, ``attention`` (the layer
above), ``mlp_norm``, ``mlp_in`` and ``mlp_out``. For example
``Rule("bf16", path="attention/query")`` rounds only the query projections.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dp2ejax.attention.kernel import block_sparse_attention
from dp2ejax.attention.mask import BlockMask

Dtype = Any
Initializer = Any


class BlockSparseAttention(nn.Module):
    """Multi-head (grouped-query, multi-query) attention computing only a mask's kept blocks.

    ``x`` ``[batch, q_len, features]`` is projected to queries ``[batch, q_len, num_heads,
    head_dim]``; ``context`` (default ``x``) ``[batch, kv_len, context_features]`` to keys and
    values ``[batch, kv_len, num_kv_heads, head_dim]``; :func:`block_sparse_attention` combines
    them and ``out`` projects the heads back to ``out_features`` (default ``features``).

    Attributes:
      num_heads: query heads.
      head_dim: features per head.
      mask: the :class:`BlockMask` (``q_len`` and ``kv_len`` must match the inputs; its head
        axis is 1 or ``num_heads``, its batch axis 1 or the batch).
      num_kv_heads: key/value heads (default ``num_heads``); it must divide ``num_heads``:
        each group of ``num_heads // num_kv_heads`` query heads shares one (1: multi-query).
      out_features: output features (default: the input's).
      use_bias: biases in the four projections.
      scale: score scale (default ``1 / sqrt(head_dim)``).
      dtype: computation dtype (default: inferred from inputs and parameters, as Flax does).
      param_dtype: parameter dtype.
      kernel_init, bias_init: initialisers of the projections.
      policy, precision, implementation, interpret: passed to :func:`block_sparse_attention`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dp2ejax.attention.patterns import causal
      >>> layer = BlockSparseAttention(num_heads=4, head_dim=8, mask=causal(64, block_size=16))
      >>> x = jnp.ones((2, 64, 32))
      >>> params = jax.jit(layer.init)(jax.random.key(0), x)
      >>> jax.jit(layer.apply)(params, x).shape
      (2, 64, 32)
    """

    num_heads: int
    head_dim: int
    mask: BlockMask
    num_kv_heads: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    scale: float | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    policy: Any = None
    precision: Any = None
    implementation: str = "xla"
    interpret: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
                 rounding_key: jax.Array | None = None) -> jax.Array:
        """Attention of ``x`` over ``context`` (default: self-attention).

        Args:
          x: ``[batch, q_len, features]``.
          context: ``[batch, kv_len, context_features]``; default ``x``.
          rounding_key: PRNG key for a ``policy`` with stochastic / random rounding.

        Returns:
          ``[batch, q_len, out_features]``.
        """
        context = x if context is None else context
        num_kv_heads = self._check(x, context)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
                     kernel_init=self.kernel_init, bias_init=self.bias_init,
                     precision=self.precision)
        q = nn.DenseGeneral((self.num_heads, self.head_dim), name="query", **dense)(x)
        k = nn.DenseGeneral((num_kv_heads, self.head_dim), name="key", **dense)(context)
        v = nn.DenseGeneral((num_kv_heads, self.head_dim), name="value", **dense)(context)
        out = block_sparse_attention(q, k, v, self.mask, scale=self.scale, policy=self.policy,
                                     precision=self.precision,
                                     implementation=self.implementation,
                                     interpret=self.interpret, rounding_key=rounding_key)
        features = x.shape[-1] if self.out_features is None else self.out_features
        return nn.DenseGeneral(features, axis=(-2, -1), name="out", **dense)(out)

    def _check(self, x, context) -> int:
        """Validates the configuration against the inputs; returns the key/value head count."""
        if not isinstance(self.mask, BlockMask):
            raise ValueError(f"BlockSparseAttention mask must be a BlockMask, got "
                             f"{type(self.mask).__name__}")
        num_kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        for name, value in (("num_heads", self.num_heads), ("head_dim", self.head_dim),
                            ("num_kv_heads", num_kv_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockSparseAttention {name} must be a positive int, got "
                                 f"{value!r}")
        if self.num_heads % num_kv_heads:
            raise ValueError(f"BlockSparseAttention num_kv_heads={num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if x.ndim != 3 or context.ndim != 3 or context.shape[0] != x.shape[0]:
            raise ValueError(f"BlockSparseAttention expects x [batch, q_len, features] and "
                             f"context [batch, kv_len, features] with the same batch, got "
                             f"{x.shape} and {context.shape}")
        if (x.shape[1], context.shape[1]) != (self.mask.q_len, self.mask.kv_len):
            raise ValueError(f"BlockSparseAttention inputs have q_len={x.shape[1]}, "
                             f"kv_len={context.shape[1]}, but the mask is for "
                             f"q_len={self.mask.q_len}, kv_len={self.mask.kv_len}")
        mask_batch, mask_heads = self.mask.shape[:2]
        if mask_batch not in (1, x.shape[0]) or mask_heads not in (1, self.num_heads):
            raise ValueError(f"BlockSparseAttention mask batch/head sizes ({mask_batch}, "
                             f"{mask_heads}) must be 1 or (batch={x.shape[0]}, "
                             f"num_heads={self.num_heads})")
        return num_kv_heads


class BlockSparseTransformerBlock(nn.Module):
    """A pre-LayerNorm transformer block with block-sparse self-attention.

    ``x + attention(norm(x))``, then ``x + mlp(norm(x))`` with a GELU MLP of hidden width
    ``mlp_ratio * width``.

    Attributes:
      width: features of the residual stream (the input's last axis must equal it).
      num_heads: query heads.
      mask: the :class:`BlockMask` (square: ``q_len == kv_len`` the input's length).
      head_dim: features per head (default ``width // num_heads``).
      num_kv_heads: key/value heads (default ``num_heads``).
      mlp_ratio: hidden width of the MLP over ``width``.
      use_bias: biases in the projections and the MLP.
      layer_norm_epsilon: epsilon of both LayerNorms.
      dtype, param_dtype: as in :class:`BlockSparseAttention`.
      policy, precision, implementation, interpret: passed to the attention kernel.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dp2ejax.attention.patterns import local
      >>> block = BlockSparseTransformerBlock(width=32, num_heads=4,
      ...                                     mask=local(64, 16, block_size=16, causal=True))
      >>> x = jnp.ones((2, 64, 32))
      >>> params = jax.jit(block.init)(jax.random.key(0), x)
      >>> jax.jit(block.apply)(params, x).shape
      (2, 64, 32)
    """

    width: int
    num_heads: int
    mask: BlockMask
    head_dim: int | None = None
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    use_bias: bool = True
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    policy: Any = None
    precision: Any = None
    implementation: str = "xla"
    interpret: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, rounding_key: jax.Array | None = None) -> jax.Array:
        """``x`` ``[batch, seq_len, width]`` -> ``[batch, seq_len, width]``; ``rounding_key``
        for an attention ``policy`` with stochastic / random rounding."""
        if x.ndim != 3 or x.shape[-1] != self.width:
            raise ValueError(f"BlockSparseTransformerBlock expects x [batch, seq_len, "
                             f"width={self.width}], got shape {x.shape}")
        if self.head_dim is None and self.width % self.num_heads:
            raise ValueError(f"BlockSparseTransformerBlock width={self.width} is not a multiple "
                             f"of num_heads={self.num_heads}; give head_dim explicitly")
        hidden = int(round(self.mlp_ratio * self.width))
        if hidden < 1:
            raise ValueError(f"BlockSparseTransformerBlock mlp_ratio={self.mlp_ratio} gives no "
                             f"hidden units at width={self.width}")
        head_dim = self.width // self.num_heads if self.head_dim is None else self.head_dim
        norm = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                    param_dtype=self.param_dtype)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
                     precision=self.precision)
        h = nn.LayerNorm(name="attention_norm", **norm)(x)
        x = x + BlockSparseAttention(
            num_heads=self.num_heads, head_dim=head_dim, mask=self.mask,
            num_kv_heads=self.num_kv_heads, use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, policy=self.policy, precision=self.precision,
            implementation=self.implementation, interpret=self.interpret,
            name="attention")(h, rounding_key=rounding_key)
        h = nn.LayerNorm(name="mlp_norm", **norm)(x)
        h = nn.Dense(hidden, name="mlp_in", **dense)(h)
        h = nn.Dense(self.width, name="mlp_out", **dense)(nn.gelu(h))
        return x + h
