"""Block-sparse attention: masks that keep blocks of the score matrix, and attention that
computes only those blocks."""

from dp2ejax.attention.mask import BlockMask

__all__ = ["BlockMask"]
