"""Oversmoothing metrics: how far node features are from being all alike.

Every metric is a function of node features ``x`` of shape ``[n, f]`` (and, for the Dirichlet
energy, of the propagation matrix). The array metrics are pure and jittable; the spectral ones
(:func:`dominant_eigenspace`, :func:`second_eigenvalue_magnitude`) are host-side set-up in
float64 with NumPy/SciPy.

A propagation matrix ``P`` is a dense ``[n, n]`` array or anything with ``P @ x`` and
``P.shape`` (e.g. :class:`dp2ejax.sparse.CSR`).

References:
  - Cai & Wang, "A note on over-smoothing for graph neural networks", ICML GRL+ workshop 2020.
  - Rusch, Bronstein & Mishra, "A survey on oversmoothing in graph neural networks", 2023.
  - Chen, Lin, Li, Li, Zhou & Sun, "Measuring and relieving the over-smoothing problem for graph
    neural networks from the topological view", AAAI 2020 (MAD).
  - Oono & Suzuki, "Graph neural networks exponentially lose expressive power for node
    classification", ICLR 2020.
  - Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Dense host eigensolvers below this size, ARPACK (scipy.sparse.linalg) above.
DENSE_EIGEN_LIMIT = 2000


def _check_features(x, name: str = "x") -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected node features of shape [n, f], got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    return x


def _check_propagation(P, n: int) -> None:
    shape = tuple(getattr(P, "shape", ()))
    if shape != (n, n):
        raise ValueError(
            f"P: expected a square propagation matrix of shape ({n}, {n}) to match x, got "
            f"shape {shape}")


def dirichlet_energy(x: jax.Array, P: Any, *, relative: bool = False) -> jax.Array:
    """Normalised Dirichlet energy ``trace(xᵀ (I - P) x)`` of node features ``x``.

    For the symmetric normalised propagation ``P = D̃^-1/2 Ã D̃^-1/2`` (``Ã = A + I`` or any
    symmetric non-negative ``Ã`` with degrees ``d̃``) it equals
    ``½ Σ_ij ã_ij ‖x_i/√d̃_i - x_j/√d̃_j‖²`` (Cai & Wang 2020; Rusch, Bronstein & Mishra 2023):
    zero exactly when every column of ``x`` lies along ``√d̃``, the limit of oversmoothing.
    It is computed as ``Σ x ⊙ (x - P x)`` (the difference first, which loses less to
    cancellation than ``‖x‖² - ⟨x, P x⟩``).

    Args:
      x: ``[n, f]`` node features.
      P: ``[n, n]`` propagation matrix (dense array or :class:`~dp2ejax.sparse.CSR`).
      relative: divide by ``‖x‖_F²`` (a scale-free energy in ``[0, 2]`` for such ``P``).

    Returns:
      A scalar in ``x``'s dtype.

    Example:
      >>> import numpy as np
      >>> P = np.full((3, 3), 1 / 3)          # the complete graph K3 with self-loops
      >>> float(dirichlet_energy(np.ones((3, 2)), P))     # constant features: no energy
      0.0
      >>> round(float(dirichlet_energy(np.eye(3)[:, :2], P)), 6)
      1.333333
    """
    x = _check_features(x)
    _check_propagation(P, x.shape[0])
    energy = jnp.sum(x * (x - P @ x))
    if relative:
        energy = energy / jnp.sum(x * x)
    return energy


def mean_average_distance(
    x: jax.Array, mask: jax.Array | None = None, *, chunk_size: int = 1024
) -> jax.Array:
    """Mean Average Distance (MAD) of node features (Chen et al., AAAI 2020).

    ``D_ij = 1 - cos(x_i, x_j)`` for the node pairs kept by ``mask`` (all pairs by default;
    the diagonal is 0). Each node's average is over its kept pairs with a non-zero distance,
    ``D̄_i = Σ_j D_ij / #{j : D_ij > 0}`` (0 when there is none), and MAD is the mean of
    ``D̄_i`` over all nodes, as the authors' reference code computes it. It is 0 when all
    features point the same way. A zero feature vector has cosine 0 with everything (distance
    1), as in scikit-learn.

    Memory is ``O(chunk_size · n)``: the rows are processed in chunks of ``chunk_size``.

    Args:
      x: ``[n, f]`` node features.
      mask: optional ``[n, n]`` boolean (or 0/1) mask of the pairs to measure, e.g. the
        adjacency for the neighbours' MAD.
      chunk_size: rows per chunk (static).

    Returns:
      A scalar in ``[0, 2]`` in ``x``'s dtype.

    Example:
      >>> import numpy as np
      >>> float(mean_average_distance(np.array([[1.0, 0.0], [0.0, 1.0]])))  # orthogonal
      1.0
      >>> float(mean_average_distance(np.array([[1.0, 0.0], [3.0, 0.0]])))  # parallel
      0.0
    """
    x = _check_features(x)
    n = x.shape[0]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (n, n):
            raise ValueError(f"mask: expected shape ({n}, {n}) to match x, got {mask.shape}")
        mask = mask.astype(bool)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    unit = x / jnp.where(norms > 0, norms, 1)
    rows = jnp.arange(n)

    def node_means(start, unit_rows, mask_rows):
        distance = jnp.clip(1 - unit_rows @ unit.T, 0, 2)
        diagonal = (start + jnp.arange(unit_rows.shape[0]))[:, None] == rows[None, :]
        distance = jnp.where(diagonal, 0, distance)
        if mask_rows is not None:
            distance = jnp.where(mask_rows, distance, 0)
        kept = jnp.sum(distance > 0, axis=1)
        return jnp.sum(distance, axis=1) / jnp.maximum(kept, 1)

    if n <= chunk_size:
        per_node = node_means(0, unit, mask)
    else:
        chunks = -(-n // chunk_size)
        pad = chunks * chunk_size - n
        unit_chunks = jnp.pad(unit, ((0, pad), (0, 0))).reshape(chunks, chunk_size, -1)
        starts = jnp.arange(chunks) * chunk_size
        if mask is None:
            per_node = lax.map(lambda a: node_means(a[0], a[1], None), (starts, unit_chunks))
        else:
            mask_chunks = jnp.pad(mask, ((0, pad), (0, 0))).reshape(chunks, chunk_size, n)
            per_node = lax.map(lambda a: node_means(*a), (starts, unit_chunks, mask_chunks))
        per_node = per_node.reshape(-1)[:n]
    return jnp.mean(per_node)


def _host_matrix(P) -> Any:
    """``P`` as a float64 SciPy sparse or NumPy dense matrix, on the host."""
    import scipy.sparse as sp

    if sp.issparse(P):
        return sp.csr_matrix(P, dtype=np.float64)
    if hasattr(P, "to_scipy"):
        return sp.csr_matrix(P.to_scipy(), dtype=np.float64)
    dense = np.asarray(P, dtype=np.float64)
    if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
        raise ValueError(f"P: expected a square [n, n] matrix, got shape {dense.shape}")
    return dense


def _is_symmetric(m) -> bool:
    import scipy.sparse as sp

    diff = abs(m - m.T)
    largest = diff.max() if sp.issparse(m) else np.max(diff)
    scale = abs(m).max() if sp.issparse(m) else np.max(np.abs(m))
    return bool(largest <= 1e-12 * max(float(scale), 1e-300))


def _leading_eigenpairs(P, count: int, vectors: bool):
    """The ``count`` eigenvalues of largest magnitude (descending), and their eigenvectors."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    m = _host_matrix(P)
    n = m.shape[0]
    if not isinstance(count, int) or not 1 <= count <= n:
        raise ValueError(f"k: expected an int in [1, {n}], got {count!r}")
    symmetric = _is_symmetric(m)
    if n <= DENSE_EIGEN_LIMIT or count >= n - 1:
        dense = m.toarray() if sp.issparse(m) else m
        if symmetric:
            values, vecs = np.linalg.eigh(dense)
        else:
            values, vecs = np.linalg.eig(dense)
    else:
        solver = spla.eigsh if symmetric else spla.eigs
        values, vecs = solver(m, k=count, which="LM")
    order = np.argsort(-np.abs(values), kind="stable")[:count]
    return values[order], (vecs[:, order] if vectors else None)


def dominant_eigenspace(P: Any, k: int = 1) -> np.ndarray:
    """An orthonormal basis of the span of the ``k`` dominant eigenvectors of ``P``.

    Dominant means largest eigenvalue magnitude. Host-side, in float64 (NumPy for
    ``n <= DENSE_EIGEN_LIMIT``, ARPACK via SciPy above): this is set-up, not a hot path. For the
    GCN normalisation ``D̃^-1/2 (A + I) D̃^-1/2`` of a connected graph the dominant eigenvector
    (eigenvalue 1) is ``√d̃ / ‖√d̃‖``; a graph with ``c`` components needs ``k = c``. For a
    non-symmetric ``P`` (random walk) the right eigenvectors are orthonormalised (QR; a complex
    pair contributes its real and imaginary parts). Signs are fixed so that each column's
    largest-magnitude entry is positive.

    Args:
      P: ``[n, n]`` propagation matrix (NumPy/JAX array, SciPy sparse, or ``CSR``).
      k: dimension of the eigenspace.

    Returns:
      ``U``: a float64 NumPy array ``[n, k]`` with orthonormal columns.

    Example:
      >>> import numpy as np
      >>> A = np.ones((3, 3)) - np.eye(3)                   # a triangle
      >>> d = (A + np.eye(3)).sum(1)
      >>> P = (A + np.eye(3)) / np.sqrt(np.outer(d, d))
      >>> np.round(dominant_eigenspace(P)[:, 0] ** 2, 6).tolist()   # ∝ d̃ = (3, 3, 3)
      [0.333333, 0.333333, 0.333333]
    """
    _, vecs = _leading_eigenpairs(P, k, vectors=True)
    if np.iscomplexobj(vecs):
        parts = np.concatenate([vecs.real, vecs.imag], axis=1)
        basis, r = np.linalg.qr(parts)
        keep = np.abs(np.diag(r)) > 1e-10 * np.max(np.abs(np.diag(r)))
        vecs = basis[:, keep][:, :k]
    else:
        vecs, _ = np.linalg.qr(vecs)
    peak = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[peak, np.arange(vecs.shape[1])])
    return np.ascontiguousarray(vecs * np.where(signs == 0, 1.0, signs))


def eigenspace_distance(x: jax.Array, basis: jax.Array, *, relative: bool = False) -> jax.Array:
    """Distance ``‖x - U Uᵀ x‖_F`` of node features to the span of the dominant eigenvectors.

    With ``U`` from :func:`dominant_eigenspace`, ``U Uᵀ x`` is the part of ``x`` that repeated
    propagation keeps; what remains decays like ``|λ₂|^ℓ`` under ``ℓ`` propagations, the
    quantity oversmoothing drives to zero (Oono & Suzuki 2020: distance to the subspace
    ``M = U ⊗ R^f``).

    Args:
      x: ``[n, f]`` node features.
      basis: ``[n, k]`` orthonormal basis ``U``.
      relative: divide by ``‖x‖_F`` (the share of ``x`` outside the eigenspace, in [0, 1]).

    Returns:
      A scalar in the promoted dtype of ``x`` and ``basis``.

    Example:
      >>> import numpy as np
      >>> U = np.full((4, 1), 0.5)                               # the constant direction
      >>> float(eigenspace_distance(np.full((4, 3), 2.0), U))    # in the eigenspace
      0.0
      >>> float(eigenspace_distance(np.array([[1.0], [-1.0], [1.0], [-1.0]]), U, relative=True))
      1.0
    """
    x = _check_features(x)
    basis = jnp.asarray(basis)
    if basis.ndim != 2 or basis.shape[0] != x.shape[0]:
        raise ValueError(
            f"basis: expected shape [{x.shape[0]}, k] to match x of shape {x.shape}, got "
            f"{basis.shape}")
    dtype = jnp.promote_types(x.dtype, basis.dtype)
    x = x.astype(dtype)
    basis = basis.astype(dtype)
    residual = x - basis @ (basis.T @ x)
    distance = jnp.sqrt(jnp.sum(residual * residual))
    if relative:
        distance = distance / jnp.sqrt(jnp.sum(x * x))
    return distance


def _singular_values(x: jax.Array) -> jax.Array:
    return jnp.linalg.svd(x, compute_uv=False)


def effective_rank(x: jax.Array) -> jax.Array:
    """Effective rank ``exp(H(p))`` of ``x`` (Roy & Vetterli 2007).

    ``p_i = σ_i / Σ_j σ_j`` are the normalised singular values and ``H(p) = -Σ p_i log p_i``
    their Shannon entropy: a real number between 1 (rank one) and ``min(n, f)`` (all singular
    values equal). A zero matrix has effective rank 0.

    Args:
      x: ``[n, f]`` node features.

    Returns:
      A scalar in ``x``'s dtype.

    Example:
      >>> import numpy as np
      >>> round(float(effective_rank(np.diag([1.0, 1.0, 1.0, 0.0]))), 6)
      3.0
      >>> round(float(effective_rank(np.outer(np.arange(1.0, 5.0), np.ones(3)))), 6)
      1.0
    """
    x = _check_features(x)
    sigma = _singular_values(x)
    total = jnp.sum(sigma)
    p = sigma / jnp.where(total > 0, total, 1)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0))
    return jnp.where(total > 0, jnp.exp(entropy), 0).astype(sigma.dtype)


def numerical_rank(x: jax.Array, rtol: float | None = None) -> jax.Array:
    """Number of singular values of ``x`` above ``rtol · σ_max``.

    Args:
      x: ``[n, f]`` node features.
      rtol: relative threshold; default ``eps · max(n, f)`` with ``eps`` the machine epsilon
        of ``x``'s dtype (as ``numpy.linalg.matrix_rank``). Pass a format's epsilon when ``x``
        holds values of a narrower emulated format.

    Returns:
      An int32 scalar.

    Example:
      >>> import numpy as np
      >>> int(numerical_rank(np.outer(np.arange(1.0, 5.0), np.ones(3))))
      1
      >>> int(numerical_rank(np.diag([1.0, 1e-3, 1e-9]), rtol=1e-6))
      2
    """
    x = _check_features(x)
    sigma = _singular_values(x)
    if rtol is None:
        rtol = float(jnp.finfo(x.dtype).eps) * max(x.shape)
    top = jnp.max(sigma) if sigma.size else jnp.zeros((), sigma.dtype)
    return jnp.sum((sigma > rtol * top) & (top > 0)).astype(jnp.int32)


def leading_eigenvalue_magnitudes(P: Any, count: int) -> np.ndarray:
    """The ``count`` largest eigenvalue magnitudes of ``P``, descending, in float64 (host)."""
    values, _ = _leading_eigenpairs(P, count, vectors=False)
    return np.abs(values).astype(np.float64)


def second_eigenvalue_magnitude(P: Any) -> float:
    """``|λ₂|``: the second largest eigenvalue magnitude of ``P``, in float64 via NumPy/SciPy.

    For the GCN normalisation of a connected non-bipartite graph the largest is ``λ₁ = 1``
    (eigenvector ``√d̃``) and ``|λ₂| < 1`` is the rate at which repeated propagation forgets
    everything else: ``‖x_ℓ - U Uᵀ x_ℓ‖ <= |λ₂|^ℓ ‖x_0 - U Uᵀ x_0‖``. It is the largest of
    ``|λ|`` over the rest of the spectrum (the most negative eigenvalue included). A graph with
    several components has ``|λ₂| = 1``. Dense eigenvalues for ``n <= DENSE_EIGEN_LIMIT``,
    ``scipy.sparse.linalg.eigsh``/``eigs`` above.

    Args:
      P: ``[n, n]`` propagation matrix (NumPy/JAX array, SciPy sparse, or ``CSR``), ``n >= 2``.

    Returns:
      A Python float.

    Example:
      >>> import numpy as np
      >>> P = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
      >>> round(second_eigenvalue_magnitude(P), 6)
      0.5
    """
    return float(leading_eigenvalue_magnitudes(P, 2)[1])
