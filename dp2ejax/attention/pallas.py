"""A Pallas forward kernel for block-sparse attention (written for the GPU Triton backend).

One program per ``(batch, head, query block)``; it loops only over the key blocks that the
:class:`~dp2ejax.attention.mask.BlockMask` keeps for its query block (the compact form of
:meth:`BlockMask.compact`), so dropped blocks are never loaded nor computed. Softmax is online
(FlashAttention-2: running max, running sum, float32 accumulator) and the output and the
log-sum-exp are written once at the end.

Runs on CPU with ``interpret=True`` (slow: for tests). The backward pass is the XLA one in
``kernel.py``; this module only computes ``(out, lse)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


def _block_sparse_kernel(kv_blocks_ref, kv_counts_ref, partial_ids_ref, q_ref, k_ref, v_ref,
                         masks_ref, out_ref, lse_ref, *, scale: float, block_kv: int):
    """One query block of one (batch, head).

    Refs (leading batch/head axes squeezed by the BlockSpecs):
      kv_blocks_ref, partial_ids_ref: ``int32[max_kept]``; kv_counts_ref: ``int32[1]``;
      q_ref: ``[block_q, head_dim]``; k_ref, v_ref: ``[kv_len, head_dim]`` (this head's kv head);
      masks_ref: ``int8[1 + num_patterns, block_q, block_kv]`` (entry 0 all ones: full block);
      out_ref: ``[block_q, head_dim]``; lse_ref: ``float32[block_q]``.
    """
    block_q, head_dim = q_ref.shape
    q = q_ref[...]

    def body(j, carry):
        acc, row_max, row_sum = carry
        start = pl.multiple_of(kv_blocks_ref[j] * block_kv, block_kv)
        k = k_ref[pl.ds(start, block_kv), :]
        v = v_ref[pl.ds(start, block_kv), :]
        # HIGHEST: on Triton, DEFAULT float32 dots run in TF32.
        scores = lax.dot_general(q, k, _NT, precision=lax.Precision.HIGHEST,
                                 preferred_element_type=jnp.float32) * scale
        keep = masks_ref[partial_ids_ref[j] + 1, :, :] != 0
        scores = jnp.where(keep, scores, -jnp.inf)
        new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
        # A row with nothing kept so far has max -inf: shift by 0 instead, so that
        # exp(-inf - shift) = 0 rather than exp(-inf + inf) = NaN.
        shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
        probs = jnp.exp(scores - shift[:, None])
        correction = jnp.exp(row_max - shift)
        row_sum = correction * row_sum + jnp.sum(probs, axis=-1)
        acc = correction[:, None] * acc + lax.dot_general(
            probs.astype(v.dtype), v, _NN, precision=lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32)
        return acc, new_max, row_sum

    init = (jnp.zeros((block_q, head_dim), jnp.float32),
            jnp.full((block_q,), -jnp.inf, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    acc, row_max, row_sum = lax.fori_loop(0, kv_counts_ref[0], body, init)
    kept = row_sum > 0
    out_ref[...] = (acc / jnp.where(kept, row_sum, 1.0)[:, None]).astype(out_ref.dtype)
    lse_ref[...] = jnp.where(kept, row_max + jnp.log(jnp.where(kept, row_sum, 1.0)), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("scale", "block_q", "block_kv", "interpret"))
def pallas_forward(q, k, v, kv_blocks, kv_counts, partial_ids, partial_masks, *, scale: float,
                   block_q: int, block_kv: int,
                   interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Block-sparse attention forward pass: ``(out, lse)``, visiting only the kept key blocks.

    Args:
      q: ``[batch, q_len, heads, head_dim]``.
      k, v: ``[batch, kv_len, kv_heads, head_dim]``, ``heads % kv_heads == 0``; head ``h`` reads
        kv head ``h // (heads // kv_heads)``.
      kv_blocks, kv_counts, partial_ids: :meth:`BlockMask.compact` of the mask:
        ``int32[mb, mh, q_len // block_q, max_kept]``, ``int32[mb, mh, q_len // block_q]``,
        ``int32[mb, mh, q_len // block_q, max_kept]`` (``mb`` 1 or ``batch``, ``mh`` 1 or
        ``heads``: broadcast).
      partial_masks: ``bool[num_patterns, block_q, block_kv]`` (``BlockMask.partial_masks``;
        partial id -1 means a full block).
      scale: multiplies ``q @ k.T`` before the softmax.
      block_q, block_kv: the mask's block sizes (``q_len``, ``kv_len`` multiples of them).
      interpret: run the kernel with the Pallas interpreter (CPU, tests).

    Returns:
      ``out``: ``[batch, q_len, heads, head_dim]`` in ``q.dtype``, softmax(scale * q k^T masked)
      @ v; ``lse``: ``float32[batch, heads, q_len]``, the log-sum-exp of the scaled masked scores.
      A row with no kept key gets ``out = 0`` and ``lse = -inf``.

    GPU (Triton) constraints, not checked here: ``block_q``, ``block_kv`` and ``head_dim`` powers
    of two and at least 16 (``tl.dot``); a K/V tile ``[block_kv, head_dim]`` and the whole query
    tile stay in registers/shared memory, so large ``head_dim`` wants smaller blocks. Float32
    dots run at ``Precision.HIGHEST`` (IEEE, not TF32). A full block costs one extra
    ``int8[block_q, block_kv]`` load (pattern 0 of the mask table, all ones), which keeps the
    loop branch-free.
    The Triton lowering is exercised on CPU by cross-platform lowering (tests); the kernel has not
    been compiled or run on a GPU.
    """
    batch, q_len, heads, head_dim = q.shape
    _, kv_len, kv_heads, _ = k.shape
    _check_shapes(q, k, v, kv_blocks, kv_counts, partial_ids, partial_masks, block_q, block_kv)
    mb, mh, q_blocks, max_kept = kv_blocks.shape
    group = heads // kv_heads

    def meta_index(b, h, i):
        return (b if mb > 1 else 0, h if mh > 1 else 0, i, 0)

    num_patterns = partial_masks.shape[0]
    masks = jnp.concatenate([jnp.ones((1, block_q, block_kv), jnp.int8),
                             jnp.asarray(partial_masks).astype(jnp.int8)])
    kernel = functools.partial(_block_sparse_kernel, scale=float(scale), block_kv=block_kv)
    meta_spec = pl.BlockSpec((None, None, None, max_kept), meta_index)
    kv_spec = pl.BlockSpec((None, kv_len, None, head_dim), lambda b, h, i: (b, 0, h // group, 0))
    q_spec = pl.BlockSpec((None, block_q, None, head_dim), lambda b, h, i: (b, i, h, 0))
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, q_blocks),
        in_specs=[
            meta_spec,
            pl.BlockSpec((None, None, None, 1), meta_index),
            meta_spec,
            q_spec,
            kv_spec,
            kv_spec,
            pl.BlockSpec((1 + num_patterns, block_q, block_kv), lambda b, h, i: (0, 0, 0)),
        ],
        out_specs=[
            q_spec,
            pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
        ],
        # Triton explicitly (JAX may default GPU Pallas to Mosaic GPU); ignored when interpreting.
        compiler_params=pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8,
                                                num_stages=2),
        interpret=interpret,
        name="block_sparse_attention_forward",
    )(kv_blocks.astype(jnp.int32), kv_counts.astype(jnp.int32)[..., None],
      partial_ids.astype(jnp.int32), q, k, v, masks)


def _check_shapes(q, k, v, kv_blocks, kv_counts, partial_ids, partial_masks, block_q, block_kv):
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"pallas_forward needs q [batch, q_len, heads, head_dim] and k, v "
                         f"[batch, kv_len, kv_heads, head_dim] of equal shapes, got q {q.shape}, "
                         f"k {k.shape}, v {v.shape}")
    batch, q_len, heads, head_dim = q.shape
    _, kv_len, kv_heads, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != head_dim or not kv_heads or heads % kv_heads:
        raise ValueError(f"k/v shape {k.shape} does not match q {q.shape}: need the same batch "
                         f"and head_dim, and heads ({heads}) a multiple of kv_heads ({kv_heads})")
    if q_len % block_q or kv_len % block_kv:
        raise ValueError(f"q_len={q_len}, kv_len={kv_len} must be multiples of the blocks "
                         f"({block_q}, {block_kv})")
    if kv_blocks.ndim != 4 or partial_ids.shape != kv_blocks.shape or (
            kv_counts.shape != kv_blocks.shape[:3]):
        raise ValueError(f"kv_blocks {kv_blocks.shape}, kv_counts {kv_counts.shape}, partial_ids "
                         f"{partial_ids.shape} are not BlockMask.compact() output")
    mb, mh, q_blocks, _ = kv_blocks.shape
    if mb not in (1, batch) or mh not in (1, heads) or q_blocks != q_len // block_q:
        raise ValueError(f"mask compact shape {kv_blocks.shape[:3]} does not fit batch={batch}, "
                         f"heads={heads}, q_blocks={q_len // block_q} (mask batch/heads must be "
                         f"1 or equal)")
    if partial_masks.ndim != 3 or partial_masks.shape[1:] != (block_q, block_kv):
        raise ValueError(f"partial_masks must be [num_patterns, {block_q}, {block_kv}], got "
                         f"{partial_masks.shape}")
