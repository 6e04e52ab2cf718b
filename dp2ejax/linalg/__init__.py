"""Mixed-precision linear algebra: iterative refinement (low-precision LU, high-precision
residuals; LU-IR and GMRES-IR), PageRank, truncated SVD and the unite-and-conquer eigensolver,
each in any format of the arithmetic core."""

from dp2ejax.linalg.eigs import UCResult, eigs_uc
from dp2ejax.linalg.matrices import matrix_with_condition, nonsymmetric_matrix
from dp2ejax.linalg.pagerank import PageRankResult, pagerank
from dp2ejax.linalg.refine import IRResult, lu_blocked, lu_rounded, solve_ir
from dp2ejax.linalg.svd import SVDResult, svds

__all__ = [
    "IRResult",
    "PageRankResult",
    "SVDResult",
    "UCResult",
    "eigs_uc",
    "lu_blocked",
    "lu_rounded",
    "matrix_with_condition",
    "nonsymmetric_matrix",
    "pagerank",
    "solve_ir",
    "svds",
]
