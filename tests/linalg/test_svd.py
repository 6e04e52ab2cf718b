"""svds against scipy.sparse.linalg.svds, in fp64 and in low-precision formats."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from dp2ejax import get_format
from dp2ejax.linalg.svd import svds
from dp2ejax.sparse.csr import CSR

K = 5


def _sparse_with_gap():
    """150 x 100, 5% random values plus five planted large values: s_1..s_5 ~ 10..6, then a
    gap to s_6 ~ 2 (so the randomized method converges fast)."""
    rng = np.random.default_rng(0)
    noise = sp.random(150, 100, density=0.05, random_state=rng, format="csr")
    planted = sp.csr_matrix((np.array([10.0, 9, 8, 7, 6]), (np.arange(5), np.arange(5))),
                            shape=(150, 100))
    return (noise + planted).tocsr()


def _dense_decaying():
    """80 x 60 with singular values 2**-i (i = 0..59): a decaying spectrum."""
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((80, 60)))
    v, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    return (u * 2.0 ** -np.arange(60)) @ v.T


SPARSE = _sparse_with_gap()
DENSE = _dense_decaying()
CASES = {
    "sparse": (CSR.from_scipy(SPARSE, buckets=False), SPARSE),
    "sparse-buckets": (CSR.from_scipy(SPARSE), SPARSE),
    "dense": (DENSE, DENSE),
}


def _reference(matrix):
    s = sla.svds(sp.csr_matrix(matrix), K, random_state=0, tol=0, return_singular_vectors=False)
    return np.sort(s)[::-1]


def _check_orthonormal(result, tol):
    u, vt = np.asarray(result.U), np.asarray(result.Vt)
    assert np.abs(u.T @ u - np.eye(K)).max() <= tol
    assert np.abs(vt @ vt.T - np.eye(K)).max() <= tol


# fp64: 1e-10 relative to s_1. The randomized method reaches it with 6 power iterations on the
# sparse matrix (error ~ s_1 (s_16 / s_5)^(2(2q+1)); measured 2e-9 with q = 4) and with the
# default 2 on the decaying spectrum (s_16 / s_5 = 2**-11).
@pytest.mark.parametrize("method, case", [(m, c) for m in ("randomized", "lanczos")
                                          for c in sorted(CASES)
                                          if (m, c) != ("randomized", "sparse-buckets")])
def test_fp64_matches_scipy(case, method):
    a, matrix = CASES[case]
    q = 6 if case.startswith("sparse") else 2
    result = svds(a, K, method=method, power_iterations=q)
    ref = _reference(matrix)
    assert result.s.shape == (K,) and result.U.shape == (matrix.shape[0], K)
    assert result.Vt.shape == (K, matrix.shape[1])
    assert np.all(np.diff(np.asarray(result.s)) <= 0)
    assert np.abs(np.asarray(result.s) - ref).max() <= 1e-10 * ref[0]
    _check_orthonormal(result, 1e-12)
    # the vectors are singular vectors, A v = s u: to 1e-8 s_1 by Lanczos; the randomized
    # vectors converge as the square root of the values (error ~ (s_16 / s_5)^(2q+1)): 1e-4 s_1
    vector_tol = 1e-8 if method == "lanczos" else 1e-4
    dense = np.asarray(matrix.todense() if sp.issparse(matrix) else matrix)
    residual = dense @ np.asarray(result.Vt).T - np.asarray(result.U) * np.asarray(result.s)
    assert np.abs(residual).max() <= vector_tol * ref[0]


# Low precision: |s_i - s_i(scipy)| <= C eps_format s_1 with C = 4. The products round A and
# every result once (relative error eps/2 each), so the computed factorisation is that of a
# matrix within a few eps ||A|| of A (Weyl: singular values move by as much); the measured
# errors are 0.4-0.9 eps s_1, C = 4 leaves room for other seeds. The bases are orthonormal to
# the same C eps (CGS2 in the format, then rounded to it).
@pytest.mark.parametrize("fmt", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["randomized", "lanczos"])
def test_low_precision_within_format_accuracy(fmt, method):
    a, matrix = CASES["sparse"]
    eps = get_format(fmt).epsilon
    result = svds(a, K, method=method, format=fmt, power_iterations=4)
    ref = _reference(matrix)
    assert result.format == fmt
    assert np.abs(np.asarray(result.s) - ref).max() <= 4 * eps * ref[0]
    _check_orthonormal(result, 4 * eps)


def test_scipy_input_and_no_vectors():
    result = svds(SPARSE, 2, method="lanczos", return_vectors=False)
    assert result.U is None and result.Vt is None
    assert result.matvecs == 2 * min(100, 2 * 2 + 30)
    np.testing.assert_allclose(np.asarray(result.s), _reference(SPARSE)[:2], rtol=1e-10)


@pytest.mark.parametrize("k", [0, 100, 150, 2.0])
def test_bad_k(k):
    with pytest.raises(ValueError, match=r"k: .*min\(m, n\) = 100"):
        svds(SPARSE, k)


def test_bad_input():
    bad = DENSE.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        svds(bad, 2)
    with pytest.raises(ValueError, match="NaN"):
        svds(CSR.from_dense(np.where(np.isnan(bad), np.inf, bad)), 2)
    with pytest.raises(ValueError, match="method"):
        svds(DENSE, 2, method="qr")
    with pytest.raises(ValueError, match="unknown format 'fp7'"):
        svds(DENSE, 2, format="fp7")
    with pytest.raises(ValueError, match="2-D"):
        svds(np.ones(5), 1)


def test_cestac_digits_bound_the_rounding_error():
    # Lanczos on a small sparse matrix: with fp64 the method error is ~1e-15, so the bf16
    # run's error is its rounding error; CESTAC's digits (3 samples) must match it within a
    # digit (CESTAC's estimate is reliable to about one digit) and not exceed bf16's 2.4.
    rng = np.random.default_rng(1)
    matrix = sp.random(60, 40, density=0.1, random_state=rng, format="csr")
    exact = np.sort(sla.svds(matrix, 3, tol=1e-14, random_state=0)[1])[::-1]
    result = svds(matrix, 3, method="lanczos", format="bf16", cestac=True)
    assert result.digits.shape == (3,)
    actual = -np.log10(np.abs(np.asarray(result.s) - exact) / exact)
    assert np.all(result.digits >= 1.0) and np.all(result.digits <= 2.41)
    assert np.all(actual >= result.digits - 1.0)
    with pytest.raises(ValueError, match="cestac_samples"):
        svds(matrix, 3, cestac=True, cestac_samples=1)
