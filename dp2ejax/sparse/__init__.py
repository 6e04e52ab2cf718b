"""Sparse matrices as pytrees and their products with skinny dense matrices."""

from dp2ejax.sparse.csr import CSR

__all__ = ["CSR"]
