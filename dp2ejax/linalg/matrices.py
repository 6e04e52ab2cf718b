"""Test matrices with a chosen 2-norm condition number: ``U diag(sigma) V^T``.

The construction of Higham's ``randsvd`` (MATLAB ``gallery('randsvd', ...)``): random orthogonal
factors ``U`` and ``V`` (the Q factor of the QR factorisation of a Gaussian matrix, its columns'
signs fixed so that ``R`` has a positive diagonal: Haar-distributed, Mezzadri 2007) and singular
values from 1 down to ``1 / cond``. Everything runs in NumPy float64 on the host, from a seeded
``numpy.random.Generator``: the same ``(n, cond, seed, mode)`` gives the same matrix on every
machine with the same NumPy.
"""

from __future__ import annotations

import numpy as np

SINGULAR_VALUE_MODES = ("geometric", "arithmetic", "one_small")


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed ``[n, n]`` orthogonal matrix (QR of a Gaussian, signs fixed).

    Example:
      >>> import numpy as np
      >>> q = random_orthogonal(3, np.random.default_rng(0))
      >>> bool(np.allclose(q.T @ q, np.eye(3)))
      True
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs  # column j times sign(r_jj): the decomposition is then unique


def singular_values(n: int, cond: float, mode: str = "geometric") -> np.ndarray:
    """``n`` singular values from 1 down to ``1 / cond``, largest first.

    Modes (Higham's randsvd modes 3, 4 and 2): ``"geometric"`` (``sigma_i = cond**(-i/(n-1))``),
    ``"arithmetic"`` (equally spaced), ``"one_small"`` (all 1 except the last, ``1 / cond``).

    Example:
      >>> singular_values(3, 100.0).tolist()
      [1.0, 0.1, 0.01]
    """
    if mode not in SINGULAR_VALUE_MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; known: {', '.join(SINGULAR_VALUE_MODES)}")
    if n == 1:
        return np.ones(1)
    t = np.arange(n) / (n - 1)
    if mode == "geometric":
        return cond ** (-t)
    if mode == "arithmetic":
        return 1.0 - t * (1.0 - 1.0 / cond)
    sigma = np.ones(n)
    sigma[-1] = 1.0 / cond
    return sigma


def matrix_with_condition(
    n: int,
    cond: float,
    *,
    seed: int = 0,
    mode: str = "geometric",
    dtype=np.float64,
) -> np.ndarray:
    """A random ``[n, n]`` matrix ``U diag(sigma) V^T`` whose 2-norm condition number is ``cond``.

    Args:
      n: the size (>= 1; ``n = 1`` only with ``cond = 1``).
      cond: the condition number ``sigma_max / sigma_min`` (>= 1, finite).
      seed: seed of the NumPy generator of ``U`` and ``V``: same seed, same matrix.
      mode: how the singular values fall from 1 to ``1 / cond`` (see :func:`singular_values`).
      dtype: the dtype of the result (built in float64, then cast; a narrower dtype changes the
        condition number).

    Returns:
      A NumPy array. Its condition number as NumPy computes it matches ``cond`` to the rounding
      errors of the construction (relative ~1e-13 at ``cond = 1e6``, ``u * cond`` in general).

    Example:
      >>> import numpy as np
      >>> a = matrix_with_condition(20, 1e4, seed=1)
      >>> a.shape, round(float(np.linalg.cond(a)))
      ((20, 20), 10000)
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    try:
        cond = float(cond)
    except (TypeError, ValueError):
        raise ValueError(f"cond: expected a number >= 1, got {cond!r}") from None
    if not np.isfinite(cond) or cond < 1:
        raise ValueError(f"cond: expected a finite number >= 1, got {cond!r}")
    if n == 1 and cond != 1:
        raise ValueError(f"cond: a 1 x 1 matrix has condition number 1, got cond={cond!r}")
    sigma = singular_values(int(n), cond, mode)
    rng = np.random.default_rng(seed)
    u = random_orthogonal(int(n), rng)
    v = random_orthogonal(int(n), rng)
    return ((u * sigma) @ v.T).astype(dtype)


NONSYMMETRIC_MATRICES = ("random_diagonal", "banded", "directed_sbm")


def nonsymmetric_matrix(name: str, n: int, *, seed: int = 0):
    """A non-symmetric sparse test matrix of order ``n`` for eigensolvers (SciPy CSR, float64).

    - ``"random_diagonal"``: random sparse (about 6 Gaussian values per row) plus a diagonal
      with six large eigenvalues 10, 9.5, 9, 8.6, 8.3, 8 above a bulk in [-5, 5];
    - ``"banded"``: convection-diffusion-like pentadiagonal, a growing reaction term
      ``10 (i / n)^4`` on the diagonal and skew (convective) neighbours: clustered complex
      eigenvalues near 9.5 (restarted Arnoldi's hard case);
    - ``"directed_sbm"``: adjacency of a directed stochastic block model (four blocks of 15, 25,
      35 and 25 % of the nodes, ``p_in`` 0.3, ``p_out`` 0.02): four eigenvalues above the bulk.

    ``seed`` seeds the random ones (``"banded"`` is deterministic).

    Example:
      >>> a = nonsymmetric_matrix("banded", 8)
      >>> a.shape, a.nnz, bool((a != a.T).nnz > 0)
      ((8, 8), 27, True)
    """
    import scipy.sparse as sp

    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 8:
        raise ValueError(f"n: expected an int >= 8, got {n!r}")
    rng = np.random.default_rng(seed)
    if name == "random_diagonal":
        noise = sp.random(n, n, density=min(1.0, 6.0 / n), random_state=rng, format="csr",
                          data_rvs=rng.standard_normal)
        diagonal = np.concatenate([[10, 9.5, 9, 8.6, 8.3, 8.0], rng.uniform(-5, 5, n - 6)])
        return (noise + sp.diags_array(diagonal)).tocsr()
    if name == "banded":
        d = 10 * (np.arange(n) / n) ** 4
        return sp.diags_array([-0.3 * np.ones(n - 1), d, 0.3 * np.ones(n - 1),
                               0.1 * np.ones(n - 2)], offsets=[-1, 0, 1, 2]).tocsr()
    if name == "directed_sbm":
        sizes = np.diff(np.round(np.array([0, 0.15, 0.4, 0.75, 1.0]) * n).astype(int))
        blocks = np.repeat(np.arange(4), sizes)
        p = np.where(blocks[:, None] == blocks[None, :], 0.3, 0.02)
        adjacency = (rng.random((n, n)) < p).astype(float)
        np.fill_diagonal(adjacency, 0)
        return sp.csr_array(adjacency)
    raise ValueError(f"name: unknown matrix {name!r}; known: {', '.join(NONSYMMETRIC_MATRICES)}")
