"""Truncated SVD of dense and sparse (CSR) matrices in any floating-point format.

Two methods, both built from products with ``A`` and ``A^T`` and from Gram-Schmidt
orthogonalisation (so ``A`` may be a :class:`~dp2ejax.sparse.CSR` of any size):

- ``"randomized"``: the randomized range finder with power iterations (Halko, Martinsson and
  Tropp, SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1): ``Y = A Omega`` for a Gaussian
  ``Omega`` with ``k + oversampling`` columns, re-orthonormalised after every product of the
  ``power_iterations`` rounds ``Q <- orth(A orth(A^T Q))``, then the small SVD of ``B = Q^T A``.
- ``"lanczos"``: Golub-Kahan-Lanczos bidiagonalisation ``A V = U B`` with full
  reorthogonalisation of both bases, then the SVD of the ``L x L`` upper bidiagonal ``B``.

In a format other than the carrier's (``format="bf16"``, or any ``PrecisionPolicy``), the
products with ``A`` and the orthogonalisation (classical Gram-Schmidt applied twice, made of
matrix-vector products, so that :func:`dp2ejax.emulate` rounds every operation: the matmul
inputs, their results, the norms and the divisions) run under ``emulate`` with the format's
policy; the final small dense SVD (of ``B``) runs in the carrier precision on the rounded
``B``, and ``U``, ``s`` and ``Vt`` are rounded to the policy's default format. The carrier is
float64 when x64 is enabled, float32 otherwise; a format wider than the carrier is an error.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith import PrecisionPolicy, emulate, get_format, round_to
from dp2ejax.arith.formats import carrier_format
from dp2ejax.cestac.analyze import random_policy
from dp2ejax.cestac.digits import precision_digits, significant_digits
from dp2ejax.sparse.csr import CSR

METHODS = ("randomized", "lanczos")


@dataclasses.dataclass(frozen=True)
class SVDResult:
    """A truncated SVD ``A ~ U diag(s) Vt``.

    Attributes:
      U: ``[m, k]`` left singular vectors (orthonormal columns), or None when not asked for.
      s: ``[k]`` singular values, in decreasing order.
      Vt: ``[k, n]`` right singular vectors (orthonormal rows), or None when not asked for.
      method: ``"randomized"`` or ``"lanczos"``.
      format: the name of the format (or the policy) the products ran in.
      matvecs: products of ``A`` or ``A^T`` with one vector (a block of ``l`` columns counts ``l``).
      digits: ``[k]`` CESTAC exact significant digits of each singular value (with
        ``cestac=True``), or None.
    """

    U: jax.Array | None
    s: jax.Array
    Vt: jax.Array | None
    method: str
    format: str
    matvecs: int
    digits: np.ndarray | None = None


def carrier_dtype():
    """float64 when x64 is enabled, float32 otherwise: the dtype the solvers compute in."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def resolve_policy(fmt: Any, dtype, where: str = "format") -> tuple[PrecisionPolicy | None, str]:
    """The policy that emulates ``fmt`` in ``dtype``, or None when ``dtype`` already computes it
    (a uniform round-to-nearest format at least as wide as the carrier); and its name.

    Raises:
      ValueError: for an unknown format, or one wider than ``dtype`` can carry.
    """
    if isinstance(fmt, PrecisionPolicy):
        policy, name = fmt, "policy"
    else:
        try:
            f = get_format(fmt)
        except (TypeError, KeyError) as error:
            raise ValueError(f"{where}: unknown format {fmt!r} ({error})") from None
        policy, name = PrecisionPolicy.uniform(f), f.name
    for f in policy.formats():
        if not f.fits_in(dtype):
            raise ValueError(
                f"{where}: format {f.name!r} does not fit in the carrier {np.dtype(dtype)}; "
                "enable float64 (jax.config.update('jax_enable_x64', True)) or pick a narrower "
                "format")
    default = policy.default
    native = (not policy.rules and default.mode == "nearest" and not default.saturate and (
        default.format is None or carrier_format(dtype).is_subset_of(default.format)))
    return (None if native else policy), name


def prepare_operand(a: Any, name: str = "A") -> tuple[Any, Any]:
    """``(A, A^T)`` in the carrier dtype, with ``A^T`` built once (outside jit) for a CSR; a
    ValueError if ``A`` is not 2-D or holds NaN/inf."""
    dtype = carrier_dtype()
    if isinstance(a, CSR):
        a = a.astype(dtype)
        if not bool(jnp.isfinite(a.data).all()):
            raise ValueError(f"{name} holds NaN or inf values; clean them before solving")
        return a, a.transpose(buckets=a.buckets is not None)  # A^T in A's product layout
    if hasattr(a, "tocsr") and hasattr(a, "nnz"):  # a SciPy sparse matrix
        return prepare_operand(CSR.from_scipy(a, dtype=np.dtype(dtype)), name)
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix (dense or CSR), got shape {a.shape}")
    a = a.astype(dtype)
    if not bool(jnp.isfinite(a).all()):
        raise ValueError(f"{name} holds NaN or inf values; clean them before solving")
    return a, a.T


def orthonormalize(y: jax.Array, q: jax.Array | None = None) -> jax.Array:
    """Orthonormal columns spanning ``y`` ([m, l]), and orthogonal to ``q``'s if given, by
    classical Gram-Schmidt applied twice (CGS2), one column at a time.

    A column that is numerically dependent on the previous ones becomes zero (no NaN).

    Example:
      >>> import numpy as np
      >>> q = orthonormalize(jnp.array([[3.0, 1.0], [4.0, 1.0]]))
      >>> np.round(np.asarray(q.T @ q), 6).tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    m, l = y.shape
    basis = jnp.zeros((m, l), y.dtype) if q is None else jnp.concatenate(
        [q, jnp.zeros((m, l), y.dtype)], axis=1)
    offset = 0 if q is None else q.shape[1]

    def column(j, basis):
        v = y[:, j]
        size = jnp.linalg.norm(v)
        for _ in range(2):
            v = v - basis @ (basis.T @ v)
        norm = jnp.linalg.norm(v)
        # dependent columns: relative to the column's own size, at the carrier's precision
        keep = norm > 16 * jnp.finfo(y.dtype).eps * size
        v = jnp.where(keep, v / jnp.where(keep, norm, 1), 0)
        return basis.at[:, offset + j].set(v)

    basis = lax.fori_loop(0, l, column, basis)
    return basis[:, offset:]


def _randomized_range(a, at, omega, power_iterations: int):
    """``Q`` ([m, l], orthonormal) and ``B = Q^T A`` ([l, n]) of the range finder."""
    def power(_, carry):  # a loop, so that each product with A appears once in the program
        _, _, z = carry
        q = orthonormalize(a @ z)
        w = at @ q
        return q, w, orthonormalize(w)

    m, n, l = a.shape[0], at.shape[0], omega.shape[1]
    init = (jnp.zeros((m, l), omega.dtype), jnp.zeros((n, l), omega.dtype), omega)
    q, w, _ = lax.fori_loop(0, power_iterations + 1, power, init)
    return q, w.T


def _golub_kahan(a, at, v0, steps: int):
    """``U`` ([m, L]), ``V`` ([n, L]), the diagonal ``alpha`` and superdiagonal ``beta`` of the
    bidiagonal ``B`` with ``A V = U B``, by Golub-Kahan-Lanczos with full reorthogonalisation
    (CGS2 against every previous vector)."""
    m, n = a.shape[0], at.shape[0]
    dtype = v0.dtype
    tiny = jnp.finfo(dtype).tiny

    def normalise(w):
        norm = jnp.linalg.norm(w)
        keep = norm > tiny
        return jnp.where(keep, w / jnp.where(keep, norm, 1), 0), norm

    def step(j, carry):
        u_basis, v_basis, alpha, beta = carry
        v = v_basis[:, j]
        w = a @ v
        for _ in range(2):
            w = w - u_basis @ (u_basis.T @ w)
        u, a_j = normalise(w)
        u_basis = u_basis.at[:, j].set(u)
        w = at @ u
        for _ in range(2):
            w = w - v_basis @ (v_basis.T @ w)
        v_next, b_j = normalise(w)
        v_basis = v_basis.at[:, j + 1].set(v_next)
        return u_basis, v_basis, alpha.at[j].set(a_j), beta.at[j].set(b_j)

    v0, _ = normalise(v0)
    init = (jnp.zeros((m, steps), dtype), jnp.zeros((n, steps + 1), dtype).at[:, 0].set(v0),
            jnp.zeros(steps, dtype), jnp.zeros(steps, dtype))
    u_basis, v_basis, alpha, beta = lax.fori_loop(0, steps, step, init)
    return u_basis, v_basis[:, :steps], alpha, beta[: steps - 1]


def _reduce(a, at, start, *, method: str, steps: int):
    """The range/Krylov stage: ``(left, right, small)`` with ``A ~ left @ small @ right^T``:
    ``(Q, None, B = Q^T A)`` (randomized) or ``(U, V, bidiagonal B)`` (Lanczos)."""
    if method == "randomized":
        q, b = _randomized_range(a, at, start, steps)
        return q, None, b
    left, right, alpha, beta = _golub_kahan(a, at, start, steps)
    return left, right, jnp.diag(alpha) + jnp.diag(beta, 1)


def _singular_values(a, at, start, *, method: str, k: int, steps: int) -> jax.Array:
    """The ``k`` singular values from the range/Krylov stage and the small SVD (unrounded: the
    caller emulates it)."""
    small = _reduce(a, at, start, method=method, steps=steps)[2]
    return jnp.linalg.svd(small, compute_uv=False)[:k]


@functools.partial(jax.jit, static_argnames=("method", "policy", "k", "steps"))
def _cestac_digits(a, at, start, keys, *, method: str, policy: PrecisionPolicy, k: int,
                   steps: int) -> jax.Array:
    """CESTAC digits of the singular values: one emulated run per key with random rounding."""
    values = emulate(functools.partial(_singular_values, method=method, k=k, steps=steps),
                     policy)
    samples = jax.vmap(lambda key: values(a, at, start, rounding_key=key))(keys)
    formats = policy.formats()
    bits = min(f.precision for f in formats) if formats else jnp.finfo(start.dtype).nmant + 1
    return significant_digits(samples, max_digits=precision_digits(bits))


@functools.partial(jax.jit, static_argnames=("method", "policy", "k", "steps",
                                             "return_vectors"))
def _svds_program(a, at, start, *, method: str, policy: PrecisionPolicy | None, k: int,
                  steps: int, return_vectors: bool):
    """The whole computation, one compiled program per configuration: the Krylov/range stage
    (emulated when ``policy`` is given), the small SVD in the carrier, the vectors."""

    def emulated(fn):
        return fn if policy is None else emulate(fn, policy)

    left, right, small = emulated(functools.partial(_reduce, method=method, steps=steps))(
        a, at, start)
    u_small, s, vt = jnp.linalg.svd(small, full_matrices=False)  # Lanczos: small is square
    s, u, vt_out = s[:k], None, None
    if return_vectors:
        u = emulated(jnp.matmul)(left, u_small[:, :k])
        vt_out = vt[:k] if right is None else emulated(jnp.matmul)(right, vt[:k].T).T
    fmt = None if policy is None else policy.default.format
    if fmt is not None:
        s = round_to(s, fmt)
        if return_vectors:
            u, vt_out = round_to(u, fmt), round_to(vt_out, fmt)
    return u, s, vt_out


def _check_k(k: Any, m: int, n: int) -> int:
    limit = min(m, n)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < limit:
        raise ValueError(f"k: expected an int with 1 <= k < min(m, n) = {limit} for a {m} x {n} "
                         f"matrix, got {k!r}")
    return int(k)


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def svds(a: Any, k: int, *, method: str = "randomized", format: Any = "fp64",
         oversampling: int = 10, power_iterations: int = 2, lanczos_steps: int | None = None,
         seed: int = 0, return_vectors: bool = True, cestac: bool = False,
         cestac_samples: int = 3, key: jax.Array | None = None) -> SVDResult:
    """The ``k`` largest singular triplets of ``A`` (dense or CSR), in any format.

    Args:
      a: an ``[m, n]`` dense array, a :class:`~dp2ejax.sparse.CSR` or a SciPy sparse matrix.
      k: how many singular values, ``1 <= k < min(m, n)`` (as ``scipy.sparse.linalg.svds``).
      method: ``"randomized"`` (range finder with power iterations) or ``"lanczos"``
        (Golub-Kahan bidiagonalisation with full reorthogonalisation).
      format: the format of the products and the orthogonalisation (a name, a format or a
        :class:`~dp2ejax.PrecisionPolicy`); see the module docstring for what is rounded.
      oversampling: extra columns of the randomized test matrix (``l = k + oversampling``,
        capped at ``min(m, n)``).
      power_iterations: rounds of ``A A^T`` in the randomized method (each improves the
        singular values by a factor ``(s_{l+1} / s_j)^2``; needs a gap after ``s_k``).
      lanczos_steps: size ``L`` of the bidiagonal (default ``min(min(m, n), max(2k + 30, 3k))``;
        ``L = min(m, n)`` is a full factorisation).
      seed: seed of the Gaussian test matrix or the Lanczos start vector.
      return_vectors: also return ``U`` and ``Vt``.
      cestac: also give the CESTAC exact significant digits of each singular value
        (``digits``): the range/Krylov stage and the small SVD run ``cestac_samples`` times
        with random rounding (:func:`dp2ejax.cestac.random_policy`) of the same format, from the
        same test matrix or start vector. They measure the rounding errors only, not the
        method's own error (a randomized SVD without a spectral gap can hold 15 exact digits of
        inaccurate singular values). Each sample is an emulated run: about 15 s of compilation on
        a CPU in fp32 or below; in the carrier's own format (fp64 under x64) random rounding
        needs error-free transformations of every operation and compiles for minutes.
      cestac_samples: the number of samples (>= 2; CADNA uses 3).
      key: PRNG key of the random roundings (default ``jax.random.key(0)``).

    Returns:
      An :class:`SVDResult`.

    Raises:
      ValueError: for ``k`` out of range, NaN/inf in ``A``, an unknown method or format, or
        ``cestac_samples`` below 2.

    Example:
      >>> import numpy as np
      >>> a = np.diag([5.0, 4.0, 3.0, 2.0, 1.0])
      >>> np.round(np.asarray(svds(a, 2).s), 8).tolist()
      [5.0, 4.0]
      >>> np.round(np.asarray(svds(a, 2, method="lanczos", format="bf16").s), 3).tolist()
      [5.0, 4.0]
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    a, at = prepare_operand(a)
    m, n = a.shape
    k = _check_k(k, m, n)
    dtype = carrier_dtype()
    policy, name = resolve_policy(format, dtype)
    if policy is not None and isinstance(a, CSR):
        # Emulated, the bucket kernel unrolls into ~40x more operations to round (slow to
        # compile); segment sums round the products and each row's sum once, as the policy's
        # "exact" accumulation does for dense matmuls.
        a, at = a.without_buckets(), at.without_buckets()
    key = jax.random.key(seed)
    if method == "randomized":
        oversampling = _check_count(oversampling, "oversampling", 0)
        power_iterations = _check_count(power_iterations, "power_iterations", 0)
        width = min(k + oversampling, min(m, n))
        start = jax.random.normal(key, (n, width), dtype)
        steps = power_iterations
        matvecs = width * (2 * power_iterations + 2)
    else:
        limit = min(m, n)
        steps = min(limit, max(2 * k + 30, 3 * k)) if lanczos_steps is None else lanczos_steps
        steps = _check_count(steps, "lanczos_steps", k)
        if steps > limit:
            raise ValueError(f"lanczos_steps: expected at most min(m, n) = {limit}, got {steps}")
        start = jax.random.normal(key, (n,), dtype)
        matvecs = 2 * steps
    if cestac:
        cestac_samples = _check_count(cestac_samples, "cestac_samples", 2)
    u, s, vt = _svds_program(a, at, start, method=method, policy=policy, k=k, steps=steps,
                             return_vectors=bool(return_vectors))
    digits = None
    if cestac:
        keys = jax.random.split(jax.random.key(0) if key is None else key, cestac_samples)
        noisy = random_policy(policy, carrier_format(dtype))
        digits = np.asarray(_cestac_digits(a, at, start, keys, method=method, policy=noisy, k=k,
                                           steps=steps), np.float64)
    return SVDResult(U=u, s=s, Vt=vt, method=method, format=name, matvecs=int(matvecs),
                     digits=digits)

