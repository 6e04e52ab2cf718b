"""Sparse matrices as pytrees and their products with skinny dense matrices.

:class:`CSR` is the matrix to multiply with (its ``@`` uses :class:`DegreeBuckets`, a padded-row
layout built at construction); :class:`COO` holds triplets with duplicates, to assemble one.
"""

from dp2ejax.sparse.buckets import DegreeBuckets
from dp2ejax.sparse.coo import COO
from dp2ejax.sparse.csr import CSR

__all__ = ["COO", "CSR", "DegreeBuckets"]
