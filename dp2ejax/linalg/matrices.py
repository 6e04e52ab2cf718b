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
