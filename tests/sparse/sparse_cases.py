"""Random sparse matrices for the sparse tests: rectangular, non-symmetric, with empty rows and
columns, and degrees spread enough to exercise every bucket kind (exact, padded and chunked)."""

import numpy as np
import scipy.sparse as sp


def random_matrix(n_rows, n_cols, density, seed, *, empty_rows=(), empty_cols=(), dense_rows=()):
    """A float64 ``scipy.sparse.csr_array`` with the given rows/columns emptied or filled."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    for i in dense_rows:
        dense[i] = rng.standard_normal(n_cols)
    dense[list(empty_rows)] = 0.0
    dense[:, list(empty_cols)] = 0.0
    return sp.csr_array(dense)


MATRICES = {
    "rect_tall": dict(n_rows=23, n_cols=11, density=0.3, seed=1, empty_rows=(0, 5, 22),
                      empty_cols=(3,)),
    "rect_wide": dict(n_rows=9, n_cols=150, density=0.1, seed=2, empty_rows=(4,),
                      empty_cols=(0, 149), dense_rows=(2, 7)),  # rows of 148 values: chunked
    "square": dict(n_rows=30, n_cols=30, density=0.3, seed=3, empty_cols=(29,)),
}


def zero_matrix(n_rows=6, n_cols=4):
    return sp.csr_array((n_rows, n_cols), dtype=np.float64)
