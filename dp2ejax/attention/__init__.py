"""Block-sparse attention: masks that keep blocks of the score matrix, and attention that
computes only those blocks."""

from dp2ejax.attention.kernel import block_sparse_attention
from dp2ejax.attention.layers import BlockSparseAttention, BlockSparseTransformerBlock
from dp2ejax.attention.mask import BlockMask
from dp2ejax.attention.patterns import (
    bigbird,
    causal,
    dilated,
    document,
    global_tokens,
    local,
    per_head,
    strided,
)

__all__ = [
    "BlockMask",
    "BlockSparseAttention",
    "BlockSparseTransformerBlock",
    "bigbird",
    "block_sparse_attention",
    "causal",
    "dilated",
    "document",
    "global_tokens",
    "local",
    "per_head",
    "strided",
]
