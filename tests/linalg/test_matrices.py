"""matrix_with_condition: the requested condition number and singular values, determinism."""

import numpy as np
import pytest

from dp2ejax.linalg.matrices import matrix_with_condition, random_orthogonal, singular_values


@pytest.mark.parametrize("mode", ["geometric", "arithmetic", "one_small"])
@pytest.mark.parametrize("cond", [1.0, 10.0, 1e4, 1e8])
def test_condition_number_as_requested(mode, cond):
    a = matrix_with_condition(40, cond, seed=3, mode=mode)
    assert a.shape == (40, 40) and a.dtype == np.float64
    # NumPy's SVD of the product: exact up to ~u * cond, well inside 1e-6 for cond <= 1e8
    assert np.linalg.cond(a) == pytest.approx(cond, rel=1e-6)
    sigma = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(sigma, singular_values(40, cond, mode), rtol=1e-6, atol=1e-15)


def test_singular_value_modes():
    np.testing.assert_allclose(singular_values(3, 100.0, "geometric"), [1.0, 0.1, 0.01])
    np.testing.assert_allclose(singular_values(3, 100.0, "arithmetic"), [1.0, 0.505, 0.01])
    np.testing.assert_allclose(singular_values(3, 100.0, "one_small"), [1.0, 1.0, 0.01])


def test_deterministic_for_a_seed():
    a = matrix_with_condition(12, 1e3, seed=7)
    np.testing.assert_array_equal(a, matrix_with_condition(12, 1e3, seed=7))
    assert not np.allclose(a, matrix_with_condition(12, 1e3, seed=8))


def test_orthogonal_factors_are_orthogonal():
    q = random_orthogonal(30, np.random.default_rng(0))
    np.testing.assert_allclose(q.T @ q, np.eye(30), atol=1e-13)


def test_dtype_and_small_sizes():
    assert matrix_with_condition(5, 10.0, dtype=np.float32).dtype == np.float32
    assert matrix_with_condition(1, 1.0).shape == (1, 1)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(n=0, cond=10.0), "n: expected an integer >= 1"),
    (dict(n=2.5, cond=10.0), "n: expected an integer"),
    (dict(n=4, cond=0.5), "cond: expected a finite number >= 1"),
    (dict(n=4, cond=float("inf")), "cond: expected a finite number >= 1"),
    (dict(n=4, cond="big"), "cond: expected a number"),
    (dict(n=1, cond=10.0), "1 x 1 matrix"),
    (dict(n=4, cond=10.0, mode="random"), "mode: unknown mode 'random'"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        matrix_with_condition(**kwargs)


def test_nonsymmetric_matrix_names_and_errors():
    from dp2ejax.config import EIGS_MATRICES
    from dp2ejax.linalg.matrices import NONSYMMETRIC_MATRICES, nonsymmetric_matrix

    assert EIGS_MATRICES == NONSYMMETRIC_MATRICES  # config.py lists them without importing jax
    for name in NONSYMMETRIC_MATRICES:
        a = nonsymmetric_matrix(name, 40, seed=1)
        assert a.shape == (40, 40) and (a != a.T).nnz > 0
    # the six planted eigenvalues of "random_diagonal" dominate its spectrum
    top = np.sort(np.abs(np.linalg.eigvals(nonsymmetric_matrix("random_diagonal", 200).toarray())))
    assert top[-1] > 9.5 and top[-7] < 8.0
    with pytest.raises(ValueError, match="name: unknown matrix 'tridiagonal'"):
        nonsymmetric_matrix("tridiagonal", 40)
    with pytest.raises(ValueError, match="n: expected an int >= 8"):
        nonsymmetric_matrix("banded", 4)
