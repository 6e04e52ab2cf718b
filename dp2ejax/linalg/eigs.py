"""Unite and conquer eigensolver: several explicitly restarted Arnoldi co-methods that share
their best restart vector (MERAM).

The multiple explicitly restarted Arnoldi method (Emad, Petiton and Edjlali, "Multiple
explicitly restarted Arnoldi method for solving large eigenproblems", SIAM J. Sci. Comput.
27(1), 2005) runs ``p`` explicitly restarted Arnoldi processes (ERAM, Saad 1980) with different
subspace sizes (and here, formats) on the same matrix. After every cycle each co-method has
``k`` Ritz pairs; the co-methods exchange them, and each restarts from a vector built from the
best Ritz elements found by any of them:

- the *leader* (the co-method whose largest relative residual is the smallest this cycle)
  restarts from its own vector, as it would alone;
- every other co-method keeps its own wanted set and, for each of its pairs ``(theta_i, x_i)``,
  takes the Ritz vector with the smallest residual among its own and those of the other
  co-methods whose Ritz value lies within the residual radius ``max(rel_i, rel) |theta_i|`` of
  ``theta_i`` (the same eigenvalue, as far as the residuals can tell).

Why not MERAM's pairing by rank (pair ``i`` of every co-method taken from whichever has the
smallest residual for it)? When co-methods converge to different sets (a small subspace finding
the 5th eigenvalue instead of the 4th of a cluster), the rank pairing hands the others a vector
of an eigenvalue they do not want and they lose one they had: on the banded test matrix it took
35 cycles where its best co-method alone takes 18. Measured with the rule above (2026-11-23;
subspace sizes 12, 18, 24, ``tol`` 1e-10, at most 200 cycles; the three matrices of
``tests/linalg/test_eigs.py`` and seven variants: other seeds, ``n = 300``, stronger convection,
``k`` = 5 and 6): never more cycles than the best co-method alone; the same number on eight,
fewer on two: the convection-diffusion matrix with ``k = 5`` (``patience=1000``) takes 109
cycles, its best co-method alone 176 and the two others do not converge in 200; with ``k = 6``
it converges in 84 where no co-method does alone (to the wrong set, see below).
The result is the Ritz pairs of the co-method with the smallest largest residual.

As with any Arnoldi method restarted from one vector, on a clustered spectrum a run can
converge (small residuals) to eigenpairs that are not the ``k`` largest: an eigenvalue that the
start vector and its restarts barely contain is never found (seen with ``k = 6`` on the
convection-diffusion matrix, whose 5th eigenvalue 9.037 none of the co-methods kept). The
residuals certify eigenpairs, not their rank: give a larger subspace, or compare with a run
from another ``seed``.

One cycle of a co-method of subspace size ``m`` (carrier precision unless its format says
otherwise):

- Arnoldi: ``A V_m = V_m H_m + h_{m+1,m} v_{m+1} e_m^T``, each new vector orthogonalised by
  classical Gram-Schmidt applied twice (CGS2: as stable as modified Gram-Schmidt with
  reorthogonalisation, and made of matrix-vector products). In a format (``formats=``) the
  products with ``A`` and the orthogonalisation run under :func:`dp2ejax.emulate`.
- Ritz pairs: the eigenpairs ``(theta_i, y_i)`` of the Hessenberg ``H_m`` by
  ``jnp.linalg.eig`` in the carrier (complex) precision; note that ``jnp.linalg.eig`` is
  implemented on CPU only in JAX (LAPACK ``geev``): this solver runs on CPU devices. The ``k``
  wanted ones are those of largest modulus (``which="LM"``) or real part (``"LR"``); their
  residual norms ``||A x_i - theta_i x_i|| = |h_{m+1,m}| |e_m^T y_i|`` (Ritz vector
  ``x_i = V_m y_i`` of unit norm), relative to ``|theta_i|``.
- Restart vector: the real part of the sum of the wanted Ritz vectors, each weighted by its
  relative residual (floored at the carrier's epsilon; the least converged pairs get the most
  weight, as Saad suggests), every ``y_i`` first scaled so that its largest entry is real and
  positive (then a real eigenvector stays real, and a complex conjugate pair ``x, conj(x)``
  gives ``2 Re(x)``, whose Krylov space holds both). Arithmetic stays real. A single restart
  vector can lose an eigenvector it barely contains (the run then converges to another set):
  give at least one co-method a subspace well above ``k``.

A co-method whose residual becomes NaN is dropped at once; one that stalls (its own best
residual not improved for ``patience`` cycles, while another co-method holds the best
residual) is dropped too. The others go on; the dropped are listed in
:attr:`UCResult.dropped`.

With ``mesh=`` the co-methods run one per device along ``axis`` under ``jax.shard_map``, the
exchange being an ``all_gather`` of (residuals, weighted Ritz vectors) and an ``argmin`` on
every device (with ``mesh=None``, the same on stacked arrays). One program runs on every device,
so every co-method uses a Krylov buffer of the largest subspace size, its own size ``m``
being data (its Arnoldi loop stops at ``m``; the unused rows and columns of ``H`` are masked
out of the eigenproblem), and its format is a ``lax.switch`` branch. Without a mesh the same
per-co-method program runs for each co-method in turn on one device, so both give the same
results.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dp2ejax.arith import PrecisionPolicy, emulate
from dp2ejax.linalg.svd import carrier_dtype, prepare_operand, resolve_policy
from dp2ejax.sparse.csr import CSR

WHICH = ("LM", "LR")
DROP_REASONS = ("", "nan", "stalled", "padding")


@dataclasses.dataclass(frozen=True)
class UCResult:
    """The result of :func:`eigs_uc`.

    Attributes:
      eigenvalues: ``[k]`` complex, by decreasing modulus (``"LM"``) or real part (``"LR"``).
      eigenvectors: ``[n, k]`` complex Ritz vectors of unit norm.
      residuals: ``[k]`` relative residual estimates ``||A x - theta x|| / |theta|``.
      restarts: Arnoldi cycles run by the whole unite-and-conquer run (the first included).
      converged: whether the largest of ``residuals`` reached ``tol``.
      history: ``[restarts, p]`` largest relative residual of each co-method at each cycle
        (NaN once dropped).
      dropped: ``(co-method index, reason)`` pairs, reason ``"nan"`` or ``"stalled"``.
      best_method: the co-method whose Ritz pairs are returned.
      subspace_sizes: the subspace size of each co-method.
      formats: the format of each co-method.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array
    restarts: int
    converged: bool
    history: np.ndarray
    dropped: list[tuple[int, str]]
    best_method: int
    subspace_sizes: tuple[int, ...]
    formats: tuple[str, ...]


def arnoldi(a, v0: jax.Array, m: jax.Array | int, size: int) -> tuple[jax.Array, jax.Array]:
    """``m`` steps of Arnoldi from ``v0`` in buffers for ``size`` steps (``m <= size``; ``m``
    may be traced).

    Returns:
      ``V`` (``[n, size + 1]``, orthonormal columns ``0..m``, zero after) and the Hessenberg
      ``H`` (``[size + 1, size]``, zero outside its leading ``(m + 1) x m`` block) with
      ``A V[:, :m] = V[:, :m + 1] H[:m + 1, :m]``.

    Example:
      >>> import numpy as np
      >>> v, h = arnoldi(jnp.diag(jnp.array([3.0, 2.0, 1.0])), jnp.ones(3), 2, 2)
      >>> np.round(np.sort(np.linalg.eigvals(np.asarray(h[:2, :2])).real), 6).tolist()
      [1.183503, 2.816497]
    """
    n = v0.shape[0]
    dtype = v0.dtype
    tiny = jnp.finfo(dtype).tiny

    def step(j, carry):
        v, h = carry
        w = a @ v[:, j]
        coefficients = jnp.zeros(size + 1, dtype)
        for _ in range(2):  # CGS2
            c = v.T @ w
            w = w - v @ c
            coefficients = coefficients + c
        beta = jnp.linalg.norm(w)
        keep = beta > tiny  # beta = 0: an invariant subspace, the residuals are zero
        v = v.at[:, j + 1].set(jnp.where(keep, w / jnp.where(keep, beta, 1), 0))
        h = h.at[:, j].set(coefficients.at[j + 1].set(beta))
        return v, h

    start = v0 / jnp.linalg.norm(v0)
    init = (jnp.zeros((n, size + 1), dtype).at[:, 0].set(start),
            jnp.zeros((size + 1, size), dtype))
    return lax.fori_loop(0, m, step, init)


def ritz(v: jax.Array, h: jax.Array, m: jax.Array | int, k: int, which: str = "LM"):
    """The ``k`` wanted Ritz pairs of an Arnoldi factorisation of size ``m`` (see
    :func:`arnoldi`), in the carrier's complex precision.

    Returns:
      ``theta`` (``[k]`` complex), ``x`` (``[n, k]`` complex, unit columns), ``relative``
      (``[k]`` relative residual estimates; all NaN if ``H`` is not finite) and the real
      parts of the restart vector (``[n, k]``: each Ritz vector's real part times its weight).
    """
    size = h.shape[1]
    valid = jnp.arange(size) < m
    square = jnp.where(valid[:, None] & valid[None, :], h[:size], 0)
    finite = jnp.isfinite(square).all()
    theta, y = jnp.linalg.eig(jnp.where(finite, square, 0))  # CPU only in JAX (LAPACK geev)
    mass = jnp.sum(jnp.where(valid[:, None], jnp.abs(y) ** 2, 0), axis=0)
    score = jnp.abs(theta) if which == "LM" else theta.real
    score = jnp.where(mass > 0.5, score, -jnp.inf)  # the masked block's eigenvalues: never
    order = jnp.argsort(-score, stable=True)[:k]
    theta, y = theta[order], y[:, order]
    pivot = jnp.argmax(jnp.abs(y), axis=0)
    phase = y[pivot, jnp.arange(k)]
    y = y * (jnp.conj(phase) / jnp.maximum(jnp.abs(phase), jnp.finfo(v.dtype).tiny))
    beta = jnp.abs(h[m, m - 1])
    residual = beta * jnp.abs(y[m - 1])
    tiny = jnp.finfo(v.dtype).tiny
    relative = residual / jnp.maximum(jnp.abs(theta), tiny)
    relative = jnp.where(finite, relative, jnp.nan)
    x = v[:, :size].astype(y.dtype) @ y
    eps = jnp.finfo(v.dtype).eps
    weights = jnp.maximum(relative, eps)
    parts = jnp.real(x) * weights  # [n, k]: each wanted pair's share of the restart vector
    return theta, x, relative, parts


def _matched_restarts(thetas, rels, index, thetas_all, rels_all, parts_all):
    """The restart vector of each local co-method built from the best Ritz elements of all.

    For each of a co-method's own wanted pairs ``(theta_i, rel_i)``, the candidates are its own
    pair ``i`` and every pair ``(c, l)`` of the other co-methods whose Ritz value lies within
    the residual radius ``max(rel_i, rel_cl) |theta_i|`` of ``theta_i`` (the same eigenvalue,
    as far as the residuals can tell); the candidate with the smallest relative residual gives
    its weighted real part. A co-method thus keeps its own wanted set and improves each of its
    pairs from the others: a Ritz vector of an eigenvalue it does not want never enters its
    restart vector (matching by rank alone did that when co-methods converge to different sets).

    Args:
      thetas, rels: ``[L, k]`` the local co-methods' Ritz values and relative residuals.
      index: ``[L]`` their global indices.
      thetas_all, rels_all: ``[p, k]`` every co-method's (``rels_all`` inf where dropped).
      parts_all: ``[p, n, k]`` every co-method's weighted real parts (see :func:`ritz`).

    Returns:
      ``[L, n]`` restart vectors.
    """
    p, k = rels_all.shape
    distance = jnp.abs(thetas_all[None, None] - thetas[:, :, None, None])  # [L, k, p, k]
    radius = jnp.maximum(rels_all[None, None], rels[:, :, None, None]) * jnp.abs(
        thetas)[:, :, None, None]
    foreign = (jnp.arange(p) != index[:, None])[:, None, :, None]  # [L, 1, p, 1]
    itself = ((jnp.arange(p) == index[:, None])[:, None, :, None]
              & (jnp.arange(k)[:, None] == jnp.arange(k))[None, :, None, :])
    match = (foreign & (distance <= radius)) | itself
    score = jnp.where(match, rels_all[None, None], jnp.inf).reshape(*rels.shape, p * k)
    pick = jnp.argmin(score, axis=-1)  # [L, k]: the flat index (c * k + l) of the best match
    parts = parts_all.transpose(0, 2, 1).reshape(p * k, -1)  # [p k, n]
    return parts[pick].sum(axis=1)


def _arnoldi_branch(policy: PrecisionPolicy | None, size: int):
    """One co-method cycle's Krylov stage in ``policy``'s arithmetic (None: the carrier's)."""

    def run(a, v0, m):
        if policy is None:
            return arnoldi(a, v0, m, size)
        if isinstance(a, CSR):
            a = a.without_buckets()  # segment sums: far fewer operations to emulate
        return emulate(lambda a, v0, m: arnoldi(a, v0, m, size), policy)(a, v0, m)

    return run


def _uc_run(a, sizes, format_ids, alive, v0, *, policies, size, k, which, tol, max_restarts,
            share, patience, gather, first):
    """The unite-and-conquer loop over the local co-methods (``sizes``, ``format_ids``,
    ``alive``: one entry each); ``gather`` collects a local ``[L, ...]`` array into the global
    ``[p, ...]`` one, ``first`` is the global index of the first local co-method."""
    local = sizes.shape[0]
    n = v0.shape[0]
    dtype = v0.dtype
    cdtype = jnp.result_type(dtype, jnp.complex64)
    branches = [lambda a, v, m: (jnp.zeros((n, size + 1), dtype),
                                 jnp.zeros((size + 1, size), dtype))]
    branches += [_arnoldi_branch(p, size) for p in policies]
    total = gather(jnp.zeros(local)).shape[0]

    def cycle(state):
        starts, alive, reason, own_best, since, g_best, g_since, hist, r, _ = state[:10]
        thetas, xs, rels, restarts_vec = [], [], [], []
        for slot in range(local):
            branch = jnp.where(alive[slot], format_ids[slot] + 1, 0)
            v, h = lax.switch(branch, branches, a, starts[slot], sizes[slot])
            theta, x, rel, parts = ritz(v, h, jnp.maximum(sizes[slot], 1), k, which)
            thetas.append(theta)
            xs.append(x)
            rels.append(rel)
            restarts_vec.append(parts)
        thetas, xs, rels = jnp.stack(thetas), jnp.stack(xs), jnp.stack(rels)
        vectors = jnp.stack(restarts_vec)
        rho = jnp.max(rels, axis=1)
        failed = alive & ~jnp.isfinite(rho)
        reason = jnp.where(failed, 1, reason)
        alive = alive & ~failed
        improved = rho < own_best
        since = jnp.where(improved, 0, since + 1)
        own_best = jnp.where(improved, rho, own_best)
        rho_all = gather(jnp.where(alive, rho, jnp.inf))
        best = jnp.argmin(rho_all).astype(jnp.int32)
        best_rho = rho_all[best]
        index = first + jnp.arange(local)
        stalled = alive & (since >= patience) & (index != best)
        reason = jnp.where(stalled, 2, reason)
        hist = hist.at[r].set(gather(jnp.where(alive, rho, jnp.nan)))
        alive = alive & ~stalled
        g_improved = best_rho < g_best
        g_since = jnp.where(g_improved, 0, g_since + 1)
        g_best = jnp.minimum(g_best, best_rho)
        starts = vectors.sum(axis=2)  # each co-method's own restart vector
        if share:
            rel_all = gather(jnp.where(alive[:, None], rels, jnp.inf))  # [p, k]
            rel_all = jnp.where(jnp.isnan(rel_all), jnp.inf, rel_all)
            shared = _matched_restarts(thetas, rels, index, gather(thetas), rel_all,
                                       gather(vectors))
            starts = jnp.where((index == best)[:, None], starts, shared)  # the leader: its own
        return (starts, alive, reason, own_best, since, g_best, g_since, hist, r + 1,
                best_rho, best, thetas, xs, rels)

    def keep_going(state):
        alive, g_since, r, best_rho = state[1], state[6], state[8], state[9]
        any_alive = gather(alive).any()
        return (r < max_restarts) & any_alive & ~(best_rho <= tol) & (g_since < 2 * patience)

    init = (jnp.broadcast_to(v0, (local, n)), alive, jnp.where(alive, 0, 3),
            jnp.full(local, jnp.inf, dtype), jnp.zeros(local, jnp.int32),
            jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32),
            jnp.full((max_restarts, total), jnp.nan, dtype), jnp.asarray(0, jnp.int32),
            jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32),
            jnp.zeros((local, k), cdtype), jnp.zeros((local, n, k), cdtype),
            jnp.full((local, k), jnp.nan, dtype))
    state = lax.while_loop(keep_going, cycle, init)
    (_, _, reason, _, _, _, _, hist, r, best_rho, best, thetas, xs, rels) = state
    return (gather(thetas)[best], gather(xs)[best], gather(rels)[best], r, best_rho, best,
            hist, gather(reason))


def _check_int(value: Any, name: str, low: int, high: int | None = None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or (
            high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an int {bound}{why}, got {value!r}")
    return int(value)


def eigs_uc(a: Any, k: int, *, subspace_sizes: tuple[int, ...] | None = None,
            formats: tuple[Any, ...] | Any | None = None, tol: float = 1e-10,
            max_restarts: int = 100, which: str = "LM", seed: int = 0, mesh: Mesh | None = None,
            axis: str | None = None, share: bool = True, patience: int = 10) -> UCResult:
    """The ``k`` eigenvalues of largest modulus of a (non-symmetric, sparse) matrix, by unite
    and conquer: several restarted Arnoldi co-methods that share their best restart vector.

    Args:
      a: an ``[n, n]`` :class:`~dp2ejax.sparse.CSR`, SciPy sparse or dense matrix.
      k: how many eigenvalues, ``1 <= k < n - 1`` (as ``scipy.sparse.linalg.eigs``).
      subspace_sizes: one Krylov subspace size per co-method, each ``k < m <= n`` (default
        ``(2k + 2, 3k + 3, 4k + 4)`` capped at ``n``).
      formats: one format (name, format or :class:`~dp2ejax.PrecisionPolicy`) per co-method,
        or one for all (default: the carrier, float64 under x64).
      tol: stop when the wanted Ritz pairs' largest relative residual is at most ``tol``.
      max_restarts: the most Arnoldi cycles.
      which: ``"LM"`` (largest modulus) or ``"LR"`` (largest real part).
      seed: seed of the start vector, the same for every co-method.
      mesh: run the co-methods one per device along ``axis`` of this mesh (``shard_map``).
      axis: the mesh axis (default: the mesh's only axis).
      share: restart the co-methods from each other's best Ritz vectors (see the module
        docstring; False: independent ERAMs, the best one's result returned).
      patience: cycles without improvement after which a co-method is dropped (and the whole
        run stops after ``2 * patience`` cycles without a better residual).

    Returns:
      A :class:`UCResult`.

    Raises:
      ValueError: for a non-square or non-finite ``A``, ``k`` or a subspace size out of range,
        formats not matching the co-methods, an unknown ``which`` or a bad mesh axis.

    Example:
      >>> import numpy as np
      >>> a = np.diag(np.arange(1.0, 21.0)) + np.diag(np.ones(19), 1)
      >>> result = eigs_uc(a, 2, subspace_sizes=(6, 8))
      >>> np.round(np.asarray(result.eigenvalues).real, 8).tolist(), result.converged
      ([20.0, 19.0], True)
    """
    a, _ = prepare_operand(a)
    n, cols = a.shape
    if n != cols:
        raise ValueError(f"A: expected a square matrix, got shape {a.shape}")
    k = _check_int(k, "k", 1, n - 2, f" (k < n - 1 for an {n} x {n} matrix)")
    if which not in WHICH:
        raise ValueError(f"which: expected one of {WHICH}, got {which!r}")
    if subspace_sizes is None:
        subspace_sizes = tuple(min(n, c * (k + 1)) for c in (2, 3, 4))
    if isinstance(subspace_sizes, int | np.integer):
        subspace_sizes = (subspace_sizes,)
    sizes = tuple(_check_int(m, f"subspace_sizes[{i}]", k + 1, n,
                             f" (more than k = {k}, at most n = {n})")
                  for i, m in enumerate(subspace_sizes))
    if not sizes:
        raise ValueError("subspace_sizes: expected at least one co-method")
    if formats is None or isinstance(formats, str | PrecisionPolicy) or not isinstance(
            formats, tuple | list):
        formats = (formats,) * len(sizes)
    if len(formats) != len(sizes):
        raise ValueError(f"formats: expected one per co-method ({len(sizes)}), got "
                         f"{len(formats)}")
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    max_restarts = _check_int(max_restarts, "max_restarts", 1)
    patience = _check_int(patience, "patience", 1)
    dtype = carrier_dtype()
    policies, names, format_ids = [], [], []
    for i, fmt in enumerate(formats):
        policy, name = (None, np.dtype(dtype).name) if fmt is None else resolve_policy(
            fmt, dtype, where=f"formats[{i}]")
        if policy not in policies:
            policies.append(policy)
        format_ids.append(policies.index(policy))
        names.append(name)

    count = len(sizes)
    devices = 1
    if mesh is not None:
        if axis is None:
            if len(mesh.axis_names) != 1:
                raise ValueError(f"axis: the mesh has axes {mesh.axis_names}; name the one the "
                                 "co-methods run along")
            axis = mesh.axis_names[0]
        if axis not in mesh.axis_names:
            raise ValueError(f"axis: {axis!r} is not an axis of the mesh {mesh.axis_names}")
        devices = mesh.shape[axis]
    padded = math.ceil(count / devices) * devices
    pad = padded - count
    sizes_arr = jnp.asarray(sizes + (sizes[0],) * pad, jnp.int32)
    ids_arr = jnp.asarray(format_ids + [0] * pad, jnp.int32)
    alive = jnp.asarray([True] * count + [False] * pad)
    v0 = jax.random.normal(jax.random.key(seed), (n,), dtype)
    static = dict(policies=tuple(policies), size=max(sizes), k=k, which=which, tol=float(tol),
                  max_restarts=max_restarts, share=bool(share), patience=patience)
    if mesh is None:
        out = _run_local(a, sizes_arr, ids_arr, alive, v0, **static)
    else:
        out = _run_sharded(a, sizes_arr, ids_arr, alive, v0, mesh=mesh, axis=axis, **static)
    theta, x, rel, restarts, best_rho, best, hist, reason = out
    restarts = int(restarts)
    reason = np.asarray(reason)
    dropped = [(i, DROP_REASONS[int(reason[i])]) for i in range(count) if reason[i] in (1, 2)]
    return UCResult(eigenvalues=theta, eigenvectors=x, residuals=rel, restarts=restarts,
                    converged=bool(best_rho <= tol), history=np.asarray(hist)[:restarts, :count],
                    dropped=dropped, best_method=int(best), subspace_sizes=sizes,
                    formats=tuple(names))


_STATIC = ("policies", "size", "k", "which", "tol", "max_restarts", "share", "patience")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run_local(a, sizes, format_ids, alive, v0, **static):
    return _uc_run(a, sizes, format_ids, alive, v0, gather=lambda x: x, first=0, **static)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "mesh", "axis"))
def _run_sharded(a, sizes, format_ids, alive, v0, *, mesh, axis, **static):
    def per_device(a, sizes, format_ids, alive, v0):
        first = lax.axis_index(axis) * sizes.shape[0]
        return _uc_run(a, sizes, format_ids, alive, v0, first=first,
                       gather=lambda x: lax.all_gather(x, axis, tiled=True), **static)

    split = P(axis)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), split, split, split, P()),
                         out_specs=P(), check_vma=False)(a, sizes, format_ids, alive, v0)
