"""Mixed-precision iterative refinement: LU-IR and GMRES-IR (Carson and Higham, SISC 2017, 2018).

``solve_ir`` solves ``A x = b`` with an LU factorisation computed in a low format ``u_f``
(fp8, fp16, bf16, fp32: emulated bit for bit through :func:`dp2ejax.round_to`, or, with
``factorization="blocked"``, a blocked LU on native dtypes as a GPU runs it: see below), and
refines the solution with residuals in ``u_r`` and corrections in the working format ``u``:

============  ============================================================================
step          precision
============  ============================================================================
LU            ``u_f``: every division, product and difference of the right-looking LU with
              partial pivoting rounded to ``factor_format`` (no fused multiply-add); with
              ``factorization="blocked"``, the blocked LU below
x_0           ``u``: triangular solves on the rounded factors, in ``working_format``
r_i           ``u_r``: ``b - A x_i`` in ``residual_format`` (default: the working format)
d_i (LU-IR)   ``u``: triangular solves on the rounded factors
d_i (GMRES)   ``u``: left-preconditioned GMRES on ``U^-1 L^-1 A d = U^-1 L^-1 r_i`` (modified
              Gram-Schmidt, Givens rotations), preconditioner and products with ``A`` in ``u``
x_{i+1}       ``u``: ``x_i + d_i`` rounded to ``working_format``
============  ============================================================================

The blocked LU (``factorization="blocked"``, :func:`lu_blocked`; formats with a native JAX dtype:
fp64, fp32, bf16, fp16) is a right-looking LU with partial pivoting by column blocks of
``block_size``, jitted once per ``(n, block_size, u_f)``:

=====================  =================================================================
step                   precision
=====================  =================================================================
panel ``[n, bs]``      float32 (float64 for fp64 factors): ``lax.linalg.lu`` (getrf) with
                       partial pivoting, the row swaps applied to whole rows
``U12 = L11^-1 A12``   float32 (float64): triangular solve
``A22 -= L21 U12``     a matmul with operands cast to ``u_f``'s dtype (bfloat16, float16,
                       float32, float64) and products accumulated in float32 (float64):
                       the tensor-core update; ``A22`` stored in float32 (float64)
=====================  =================================================================

Its factors are float32 numbers whose error comes from the ``u_f`` operands of the updates:
``|P A - L U| <~ (2 u_f + n u_fp32) |L| |U|`` against the emulated LU's ``n u_f |L| |U|``, and
the same refinement follows. Measured (2026-11-23, Gaussian ``A``, n = 256 and 512, block 32):
``||P A - L U|| / ||A||`` about half the emulated LU's in bf16 and fp16 (fewer roundings), so
LU-IR's limits are at least the emulated ones (n = 64, block 8, seed 0: bf16 blocked LU-IR
converged at kappa = 1e3 where the emulated one stagnated, both fail from 1e4; fp16 blocked
converged at 1e4). The float32 and float64 updates ask for ``Precision.HIGHEST`` (a GPU's
default would be TF32). On a CPU, XLA may carry out bfloat16 and float16 matmuls by converting
them to float32 (the products of two such numbers are exact in float32, so only the order of the
sums differs): CPU timings of the blocked path are not tensor-core timings.

Carson and Higham allow the triangular solves of LU-IR in ``u_f`` or ``u``; they are in ``u``
here (the factors' own errors dominate). Their GMRES-IR applies the preconditioned operator in
``u_r = u^2``; here it runs in ``u`` (their two-precision variant, as most implementations).
Formats other than fp64 for the working and residual steps are emulated with
:func:`dp2ejax.emulate` (one rounding per elementary operation and per dot product); fp64 steps
run natively in float64. The backward and forward errors that drive the stopping tests are
always measured in float64.

Scaling before the low-precision factorisation (Higham, Pranesh and Zounon, SISC 2019): rows and
then columns are scaled by powers of two so each has its largest entry in ``(1/2, 1]``, then the
whole matrix by ``mu = 2**floor(log2(0.1 * x_max))`` (at most ``2**16``), with ``x_max`` the
format's largest finite value: fp16's range is used without overflow (headroom 16 for element
growth) and far from its underflow. Powers of two are exact, so the scaling adds no rounding
error; it is undone exactly in the triangular solves. Partial pivoting's element growth can
exceed that headroom (about ``n^(2/3)`` on random matrices: 35 at ``n = 512``): a factorisation
that overflows (non-finite entries, not a zero pivot) is tried again with ``mu / 16``, down to
``mu = 1``; ``IRResult.scaling`` and ``overflow_retries`` say which ``mu`` was used.

Stopping (host-side, after each refinement step ``i``, ``eta_i`` the normwise backward error):
``eta_i <= tol`` -> ``"converged"``; ``x_i`` not finite, or ``eta_i`` above both ``eta_0`` and
``2 * eta_{i-1}`` -> ``"diverged"``; the smallest ``eta`` not halved in two steps ->
``"stagnated"``; ``max_iter`` steps -> ``"max_iter"``. A zero, infinite or NaN pivot (singular
matrix, underflow or overflow in the low format) -> ``"factorization_failed"`` with the column,
and ``x`` all NaN: no status but ``"converged"`` comes with a solution to trust.

Measured limits (the emulated LU, 2026-11-23: ``A = matrix_with_condition(50, kappa,
seed=s)``, geometric singular values, ``b = A @ ones``, seeds 0, 1, 2, fp64 working and residual
formats, ``tol = sqrt(n) u = 7.9e-16``, GMRES tolerance 1e-4; kappa from 10 to 1e14 by factors
of sqrt(10)). "Last" is the largest kappa at which all three seeds converged, "none from" the
smallest from which no seed converged (stagnated, diverged or max_iter, reported so):

==========  ========================  ===========  ============  ============================
factors     method                    last         none from     steps at the last kappa
==========  ========================  ===========  ============  ============================
fp16        LU-IR, max_iter=100       3.2e3        3.2e4         15-18 refinement steps
fp16        LU-IR, max_iter=10        3.2e2        3.2e3         7-8 (1e3: 9-11)
fp16        GMRES-IR, Krylov <= 10    3.2e4        1e5           5-6 (1e5: max_iter)
fp16        GMRES-IR, Krylov <= n     1e14 (all)   --            GMRES steps: 6-8 at 1e4, 18-21
                                                                 at 1e5, 31-32 at 1e6, 40 at
                                                                 1e7, n = 50 from 3.2e8 on
bf16        LU-IR, max_iter=100       3.2e2        1e3           17-24
bf16        LU-IR, max_iter=10        10           1e2           9
bf16        GMRES-IR, Krylov <= 10    3.2e3        1e4 (*)       6-7 (* one seed: max_iter)
bf16        GMRES-IR, Krylov <= n     1e14 (all)   --            GMRES steps: 9 at 1e3, 23-26
                                                                 at 1e4, 36-38 at 1e5, 46-47
                                                                 at 1e6, n from 3.2e6 on
==========  ========================  ===========  ============  ============================

Theory (Carson and Higham 2017, 2018): LU-IR converges if ``kappa u_f`` is well below 1:
``kappa < 1/u_f = 2048`` for fp16 and 256 for bf16 (measured: 3.2e3 and 3.2e2, the usual factor
of a few from the pessimism of the bounds). GMRES-IR's sufficient condition with ``u = u_r`` is
``u kappa(U^-1 L^-1 A) ~ u (kappa u_f)^2 < 1``, i.e. ``kappa < u^-1/2 u_f^-1``: 1.9e11 (fp16),
2.4e10 (bf16); the preconditioner keeps GMRES short while ``kappa u_f^2`` is at most about 1
(4e6 for fp16, 7e4 for bf16): the measured GMRES steps pass half of ``n`` there. With a Krylov
dimension up to ``n`` GMRES is a direct solver in exact arithmetic, so on these small matrices
it converges beyond the bound, at the cost of ``n`` steps; with a short Krylov budget the limit
is a decade (bf16) to a decade and a half (fp16) beyond LU-IR's. ``tests/linalg/test_refine.py``
pins these with a margin of a decade.
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

from dp2ejax.arith.emulate import emulate
from dp2ejax.arith.formats import FloatFormat, get_format
from dp2ejax.arith.policy import PrecisionPolicy
from dp2ejax.arith.rounding import round_to

IR_METHODS = ("lu", "gmres")
IR_FACTORIZATIONS = ("emulated", "blocked")
IR_STATUSES = ("converged", "stagnated", "diverged", "max_iter", "factorization_failed")

_THETA = 0.1  # Higham, Pranesh and Zounon's fraction of x_max used by the scaled matrix
_MAX_LIFT = 2.0**16
_HEADROOM_STEP = 2.0**4  # after an overflowing factorisation: mu / 16, 16x more room


# --- formats --------------------------------------------------------------------------------


def _float_format(fmt: Any, name: str) -> FloatFormat:
    """``fmt`` as an IEEE-style :class:`FloatFormat` that float64 carries, or a ValueError naming
    the argument."""
    try:
        f = get_format(fmt)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{name}: {err}") from None
    if not isinstance(f, FloatFormat):
        raise ValueError(f"{name}: expected an IEEE-style float format (fp64, fp32, bf16, fp16, "
                         f"fp8_e4m3, ...), got {f.name!r}")
    if not f.fits_in(np.float64):
        raise ValueError(f"{name}: format {f.name!r} is wider than float64")
    return f


def _in_format(fn, fmt_name: str):
    """``fn`` with every operation rounded to ``fmt_name``; fp64 runs natively."""
    if fmt_name == "fp64":
        return fn
    return emulate(fn, PrecisionPolicy.uniform(fmt_name))


# --- the low-precision LU ---------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fmt",))
def lu_rounded(a: jax.Array, fmt: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Right-looking LU with partial pivoting, every operation's result rounded to ``fmt``.

    ``a`` is rounded to ``fmt`` first; then at step ``k`` the multipliers ``l_ik = fl(a_ik /
    a_kk)`` and the updates ``a_ij = fl(a_ij - fl(l_ik * a_kj))`` are rounded (round to nearest,
    two roundings per update: no fused multiply-add), on a float64 carrier, in a
    ``lax.fori_loop`` (explicit :func:`~dp2ejax.round_to` calls: faster to compile and run than
    :func:`~dp2ejax.emulate` of the same loop, with the same roundings).

    Args:
      a: ``[n, n]`` float64 matrix (scaled to ``fmt``'s range by the caller).
      fmt: the factorisation format's name.

    Returns:
      ``(lu, perm, failed)``: ``lu`` holds the unit lower factor below the diagonal and the
      upper factor on and above it (``a[perm] = L @ U`` up to the roundings), ``perm`` the row
      permutation, ``failed`` the first column whose pivot was zero or whose row of ``U`` or
      column of ``L`` was not finite, or -1.

    Example:
      >>> import jax, numpy as np
      >>> jax.config.update("jax_enable_x64", True)
      >>> lu, perm, failed = lu_rounded(np.array([[1.0, 2.0], [3.0, 4.0]]), "fp16")
      >>> np.asarray(lu).tolist(), np.asarray(perm).tolist(), int(failed)
      ([[3.0, 4.0], [0.333251953125, 0.6669921875]], [1, 0], -1)
    """
    n = a.shape[0]
    idx = jnp.arange(n)

    def rnd(v):
        return round_to(v, fmt)

    def step(k, state):
        a, perm, failed = state
        p = jnp.argmax(jnp.where(idx >= k, jnp.abs(a[:, k]), -1.0))
        row_k, row_p = a[k], a[p]
        a = a.at[k].set(row_p).at[p].set(row_k)
        perm = perm.at[k].set(perm[p]).at[p].set(perm[k])
        pivot = a[k, k]
        usable = (pivot != 0) & jnp.isfinite(pivot)
        below = idx > k
        l = jnp.where(below, rnd(a[:, k] / jnp.where(usable, pivot, 1.0)), 0.0)
        u_row = jnp.where(below, a[k], 0.0)
        update = rnd(a - rnd(l[:, None] * u_row[None, :]))
        a = jnp.where(below[:, None] & below[None, :], update, a)
        a = a.at[:, k].set(jnp.where(below, l, a[:, k]))
        finite = jnp.all(jnp.isfinite(l)) & jnp.all(jnp.isfinite(jnp.where(idx >= k, a[k], 0.0)))
        failed = jnp.where((failed < 0) & ~(usable & finite), k, failed).astype(failed.dtype)
        return a, perm, failed

    init = (rnd(a), jnp.arange(n), jnp.asarray(-1, jnp.int32))
    return lax.fori_loop(0, n, step, init)


# --- the blocked LU on native dtypes (what a GPU runs) -----------------------------------------

# The formats the blocked LU runs natively: the trailing updates' operands are cast to these.
_NATIVE_FACTOR_DTYPES = {"fp64": jnp.float64, "fp32": jnp.float32, "bf16": jnp.bfloat16,
                         "fp16": jnp.float16}
# The blocked LU's blocks run in up to this many lax.fori_loops ("stages"), each on a static
# trailing window that shrinks from stage to stage (see _lu_blocked).
_LU_STAGES = 4


def _native_factor_name(fmt: FloatFormat, name: str) -> str:
    """The name of the native JAX dtype's format equal to ``fmt`` (``"e8m7"`` is bf16), or a
    ValueError naming the argument."""
    for native in _NATIVE_FACTOR_DTYPES:
        if dataclasses.replace(fmt, name=native) == get_format(native):
            return native
    raise ValueError(
        f"{name}: the blocked LU (factorization='blocked') needs a format with a native JAX "
        f"dtype ({', '.join(_NATIVE_FACTOR_DTYPES)}), got {fmt.name!r}; "
        "factorization='emulated' handles any format")


def _check_block_size(block_size: Any) -> int:
    if (isinstance(block_size, bool) or not isinstance(block_size, int | np.integer)
            or block_size < 1):
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    return int(block_size)


def _lu_blocked_stage(a, perm, failed, *, first_block: int, stop_block: int, bs: int, n: int,
                      fmt: str):
    """Blocks ``first_block .. stop_block - 1`` of the blocked LU of the padded ``[N, N]`` matrix
    ``a``, in a ``lax.fori_loop`` on the static trailing window ``a[o:, o:]``, ``o = first_block *
    bs``; the stage's row swaps reach the columns left of the window once, at the end."""
    storage = jnp.float64 if fmt == "fp64" else jnp.float32  # also the panels' dtype
    operand = _NATIVE_FACTOR_DTYPES[fmt]
    # float32 matmuls would run in TF32 on a GPU's tensor cores at the default precision
    precision = lax.Precision.HIGHEST if fmt in ("fp64", "fp32") else lax.Precision.DEFAULT
    o = first_block * bs
    width = a.shape[0] - o
    rows = jnp.arange(width)
    unit_lower = jnp.tril(jnp.ones((bs, bs), bool), -1)

    def block(t, state):
        w, stage_rows, failed = state
        c = t * bs  # the block's first row and column in the window
        panel = lax.dynamic_slice(w, (0, c), (width, bs))
        # rows c.. of the panel moved to the top over zero rows: a fixed-shape [width, bs] panel
        # whose zero rows partial pivoting never picks (unless the column is all zero: failed)
        active = lax.dynamic_slice(jnp.concatenate([panel, jnp.zeros_like(panel)]), (c, 0),
                                   (width, bs))
        lu_p, swaps, perm_p = lax.linalg.lu(active)
        # the panel's row swaps on whole rows: row c + q <- row c + perm_p[q] for the <= 2 bs
        # rows q that the swaps touch (a zero row picked clips; flagged below as a failure)
        touched = jnp.concatenate([jnp.arange(bs, dtype=swaps.dtype), swaps])
        dst = jnp.minimum(c + touched, width - 1)
        src = jnp.minimum(c + perm_p[touched], width - 1)
        w = w.at[dst].set(w[src])
        stage_rows = stage_rows.at[dst].set(stage_rows[src])
        shifted = lax.dynamic_slice(jnp.concatenate([jnp.zeros_like(lu_p), lu_p]),
                                    (width - c, 0), (width, bs))
        new_panel = jnp.where(rows[:, None] >= c, shifted, panel)
        w = lax.dynamic_update_slice(w, new_panel, (0, c))
        # U12 = L11^-1 A12 in the panels' dtype, on the block's rows right of the block
        strip = lax.dynamic_slice(w, (c, 0), (bs, width))
        l11 = jnp.where(unit_lower, lu_p[:bs], 0.0) + jnp.eye(bs, dtype=storage)
        u12 = lax.linalg.triangular_solve(l11, strip, left_side=True, lower=True,
                                          unit_diagonal=True)
        right = rows[None, :] >= c + bs
        u12 = jnp.where(right, u12, 0.0)
        w = lax.dynamic_update_slice(w, jnp.where(right, u12, strip), (c, 0))
        # A22 -= L21 U12: the tensor-core matmul, operands in the factor format, accumulated in
        # the storage dtype; zero rows and columns outside A22 leave the rest of w unchanged
        l21 = jnp.where(rows[:, None] >= c + bs, new_panel, 0.0)
        update = jnp.matmul(l21.astype(operand), u12.astype(operand), precision=precision,
                            preferred_element_type=storage)
        w = w - update
        # failure: a zero or non-finite pivot (or one from the zero rows), or a non-finite entry
        # in a column of L or a row of U (an overflow of the trailing matrix shows in a later
        # panel)
        pivots = jnp.diagonal(lu_p[:bs])
        bad = ((pivots == 0) | ~jnp.isfinite(pivots) | (perm_p[:bs] >= width - c)
               | ~jnp.all(jnp.isfinite(lu_p), axis=0) | ~jnp.all(jnp.isfinite(u12), axis=1))
        column = o + c + jnp.arange(bs)
        bad = bad & (column < n)  # the identity padding is no column of A
        failed = jnp.where((failed < 0) & jnp.any(bad), column[jnp.argmax(bad)], failed)
        return w, stage_rows, failed.astype(jnp.int32)

    init = (a[o:, o:], jnp.arange(width), failed)
    w, stage_rows, failed = lax.fori_loop(0, stop_block - first_block, block, init)
    a = a.at[o:, o:].set(w).at[o:, :o].set(a[o:, :o][stage_rows])
    return a, perm.at[o:].set(perm[o:][stage_rows]), failed


@functools.partial(jax.jit, static_argnames=("fmt", "block_size"))
def _lu_blocked(a: jax.Array, fmt: str, block_size: int):
    n = a.shape[0]
    blocks = -(-n // block_size)
    size = blocks * block_size
    storage = jnp.float64 if fmt == "fp64" else jnp.float32
    # padded to whole blocks with an identity block: no pivot search of a column of A sees a
    # non-zero padding entry, and the padding rows and columns stay the identity
    padded = jnp.eye(size, dtype=storage).at[:n, :n].set(a.astype(storage))
    state = (padded, jnp.arange(size, dtype=jnp.int32), jnp.asarray(-1, jnp.int32))
    # Fixed shapes, so one compiled loop body per stage instead of one per block (a Python loop
    # over blocks would compile n / block_size bodies: 128 at n = 16384): each stage works on a
    # static trailing window (the rows and columns of its blocks and beyond) and loops over its
    # blocks with dynamic slices. Each block's rank-block_size update covers the whole window
    # (masked to A22), so with one stage the updates would cost 2 N^3 flops and read and write
    # the whole matrix once per block; with 4 stages of equal block counts about 0.47 of that
    # (exactly shrinking windows: 1/3), for 4 bodies to compile (~1 s each on a CPU). Fewer
    # than 4 blocks a stage save less than they cost to compile: small matrices get fewer.
    stages = max(1, min(_LU_STAGES, blocks // 4))
    bounds = [round(j * blocks / stages) for j in range(stages + 1)]
    for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
        state = _lu_blocked_stage(*state, first_block=first, stop_block=stop, bs=block_size, n=n,
                                  fmt=fmt)
    lu, perm, failed = state
    return lu[:n, :n].astype(jnp.float64), perm[:n], failed


def lu_blocked(a: jax.Array, fmt: str | FloatFormat, *,
               block_size: int = 128) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Right-looking blocked LU with partial pivoting on native dtypes: the LU a GPU runs.

    For each column block of ``block_size`` columns: the ``[n, block_size]`` panel is factored
    with partial pivoting (:func:`jax.lax.linalg.lu`, i.e. getrf) in float32 (float64 when
    ``fmt`` is fp64), the row swaps applied to whole rows; ``U12 = L11^-1 A12`` by a triangular
    solve in the same dtype; then ``A22 -= L21 @ U12`` is a matmul whose operands are cast to
    ``fmt``'s dtype (bfloat16, float16, float32, float64) with products accumulated in float32
    (float64): the update a GPU runs on its tensor cores. ``A22`` is stored in float32 (float64)
    between blocks. Jitted once per ``(n, block_size, fmt)``: the blocks run in a few
    ``lax.fori_loop`` stages on a matrix padded to whole blocks with an identity block.

    Args:
      a: ``[n, n]`` float64 matrix (scaled to ``fmt``'s range by the caller).
      fmt: ``"fp64"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (or a :class:`FloatFormat` equal to
        one of them): the format of the trailing updates' operands.
      block_size: columns per block (at most ``n`` are used).

    Returns:
      ``(lu, perm, failed)``: ``[n, n]`` float64 ``lu`` with the unit lower factor below the
      diagonal and the upper factor on and above it (``a[perm] = L @ U`` up to the roundings),
      ``[n]`` int32 ``perm``, and ``failed`` the first column whose pivot was zero or not
      finite, or whose column of ``L`` or row of ``U`` was not finite, or -1 (the factors are
      meaningless when it is not -1). The factors are float32 numbers (float64 for fp64),
      not numbers of ``fmt``: its precision enters through the updates' operands.

    Raises:
      ValueError: ``a`` not square, ``fmt`` without a native dtype, or ``block_size`` not an
        int >= 1.

    Example:
      >>> import jax, numpy as np
      >>> jax.config.update("jax_enable_x64", True)
      >>> lu, perm, failed = lu_blocked(np.array([[1.0, 2.0], [3.0, 4.0]]), "bf16", block_size=1)
      >>> np.asarray(lu).tolist(), np.asarray(perm).tolist(), int(failed)
      ([[3.0, 4.0], [0.3333333432674408, 0.6640625]], [1, 0], -1)

      The multiplier 1/3 is a float32 number, but the update ``2 - 4/3`` used its bf16 value
      (0.333984375): ``2 - 4 * 0.333984375 = 0.6640625``.
    """
    f = _float_format(fmt, "fmt")
    native = _native_factor_name(f, "fmt")
    block_size = _check_block_size(block_size)
    a = jnp.asarray(a, jnp.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"a: expected a non-empty square matrix, got shape {a.shape}")
    return _lu_blocked(a, native, min(block_size, a.shape[0]))


def _scaling(a: np.ndarray, fmt: FloatFormat) -> tuple[np.ndarray, np.ndarray, float]:
    """Powers of two ``r``, ``s``, ``mu`` with ``mu * diag(r) a diag(s)`` in ``fmt``'s range."""

    def power_of_two_inverse(m):
        out = np.ones_like(m)
        pos = m > 0
        out[pos] = np.exp2(-np.ceil(np.log2(m[pos])))
        return out

    r = power_of_two_inverse(np.max(np.abs(a), axis=1))
    s = power_of_two_inverse(np.max(np.abs(a * r[:, None]), axis=0))
    mu = min(2.0 ** math.floor(math.log2(_THETA * fmt.max_finite)), _MAX_LIFT)
    return r, s, max(mu, 1.0)


# --- triangular solves and GMRES (jittable, in the working precision) ------------------------


def _forward_unit_lower(lu, b):
    idx = jnp.arange(b.shape[0])

    def body(i, x):
        return x.at[i].set(b[i] - jnp.dot(jnp.where(idx < i, lu[i], 0.0), x))

    return lax.fori_loop(0, b.shape[0], body, jnp.zeros_like(b))


def _backward_upper(lu, b):
    n = b.shape[0]
    idx = jnp.arange(n)

    def body(t, x):
        i = n - 1 - t
        s = jnp.dot(jnp.where(idx > i, lu[i], 0.0), x)
        return x.at[i].set((b[i] - s) / lu[i, i])

    return lax.fori_loop(0, n, body, jnp.zeros_like(b))


def _lu_solve(lu, perm, r_scale, s_scale, v, native: bool = False):
    """``A^-1 v`` through the factors of ``mu R A S`` (``lu`` holds ``U / mu``): ``S U^-1 L^-1
    P R v``. ``native``: by ``lax.linalg.triangular_solve`` (blocked, for a float64 working
    format, which nothing rounds); else by row loops of dot products that :func:`emulate` rounds
    one by one (the loops are ``n`` sequential steps)."""
    w = (r_scale * v)[perm]
    if native:
        y = lax.linalg.triangular_solve(lu, w[:, None], left_side=True, lower=True,
                                        unit_diagonal=True)
        return s_scale * lax.linalg.triangular_solve(lu, y, left_side=True, lower=False)[:, 0]
    return s_scale * _backward_upper(lu, _forward_unit_lower(lu, w))


def _gmres(op, rhs, m: int, tol):
    """Left-preconditioned GMRES from 0 on ``op(d) = rhs``, at most ``m`` steps, stopping when
    the (Givens-updated) residual norm is ``<= tol * ||rhs||_2``. Returns ``(d, steps)``."""
    n = rhs.shape[0]
    beta = jnp.sqrt(jnp.dot(rhs, rhs))
    safe_beta = jnp.where(beta > 0, beta, 1.0)
    basis = jnp.zeros((m + 1, n), rhs.dtype).at[0].set(rhs / safe_beta)
    hess = jnp.zeros((m + 1, m), rhs.dtype)
    cs = jnp.zeros(m, rhs.dtype)
    sn = jnp.zeros(m, rhs.dtype)
    g = jnp.zeros(m + 1, rhs.dtype).at[0].set(beta)
    rows = jnp.arange(m + 1)

    def cond(state):
        k, _, _, _, _, g = state
        return (k < m) & (jnp.abs(g[k]) > tol * beta)

    def body(state):
        k, basis, hess, cs, sn, g = state
        w = op(basis[k])

        def orthogonalise(j, carry):  # modified Gram-Schmidt against basis[0..k]
            w, h = carry
            hj = jnp.where(j <= k, jnp.dot(w, basis[j]), 0.0)
            return w - hj * basis[j], h.at[j].set(hj)

        w, h = lax.fori_loop(0, m, orthogonalise, (w, jnp.zeros(m + 1, rhs.dtype)))
        h_next = jnp.sqrt(jnp.dot(w, w))
        h = h.at[k + 1].set(h_next)
        basis = basis.at[k + 1].set(jnp.where(h_next > 0, w / jnp.where(h_next > 0, h_next, 1.0),
                                              0.0))

        def rotate(j, h):  # the previous Givens rotations
            a, b = h[j], h[j + 1]
            active = j < k
            return h.at[j].set(jnp.where(active, cs[j] * a + sn[j] * b, a)).at[j + 1].set(
                jnp.where(active, -sn[j] * a + cs[j] * b, b))

        h = lax.fori_loop(0, m, rotate, h)
        a, b = h[k], h[k + 1]
        radius = jnp.sqrt(a * a + b * b)
        safe = jnp.where(radius > 0, radius, 1.0)
        c = jnp.where(radius > 0, a / safe, 1.0)
        s = jnp.where(radius > 0, b / safe, 0.0)
        h = jnp.where(rows == k, radius, jnp.where(rows == k + 1, 0.0, h))
        gk = g[k]
        g = g.at[k].set(c * gk).at[k + 1].set(-s * gk)
        return k + 1, basis, hess.at[:, k].set(h), cs.at[k].set(c), sn.at[k].set(s), g

    steps, basis, hess, _, _, g = lax.while_loop(
        cond, body, (jnp.asarray(0), basis, hess, cs, sn, g))
    idx = jnp.arange(m)
    active = idx < steps
    diag = jnp.where(active, jnp.diagonal(hess[:m]), 1.0)
    upper = jnp.where(active[:, None] & active[None, :], hess[:m], 0.0)
    upper = jnp.where(jnp.eye(m, dtype=bool), jnp.where(diag != 0, diag, 1.0), upper)
    y = _backward_upper(upper, jnp.where(active, g[:m], 0.0))
    return y @ basis[:m], steps


@functools.partial(jax.jit, static_argnames=("working",))
def _initial_solve(lu, perm, r_scale, s_scale, b, working: str):
    def solve(lu, perm, r_scale, s_scale, b):
        return round_to(_lu_solve(lu, perm, r_scale, s_scale, b, working == "fp64"), working)

    return _in_format(solve, working)(lu, perm, r_scale, s_scale, b)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _residual(a, x, b, fmt: str):
    return _in_format(lambda a, x, b: b - a @ x, fmt)(a, x, b)


@functools.partial(jax.jit, static_argnames=("working",))
def _lu_ir_step(lu, perm, r_scale, s_scale, x, r, working: str):
    def step(lu, perm, r_scale, s_scale, x, r):
        r = round_to(r, working)
        return round_to(x + _lu_solve(lu, perm, r_scale, s_scale, r, working == "fp64"),
                        working)

    return _in_format(step, working)(lu, perm, r_scale, s_scale, x, r), jnp.asarray(0)


@functools.partial(jax.jit, static_argnames=("working", "krylov"))
def _gmres_ir_step(lu, perm, r_scale, s_scale, a, x, r, gmres_tol, working: str, krylov: int):
    def step(lu, perm, r_scale, s_scale, a, x, r, gmres_tol):
        r = round_to(r, working)
        norm = jnp.max(jnp.abs(r))
        r = r / jnp.where(norm > 0, norm, 1.0)  # GMRES on a unit residual: no underflow

        def precondition(v):
            return _lu_solve(lu, perm, r_scale, s_scale, v, working == "fp64")

        d, steps = _gmres(lambda v: precondition(a @ v), precondition(r), krylov, gmres_tol)
        return round_to(x + norm * d, working), steps

    return _in_format(step, working)(lu, perm, r_scale, s_scale, a, x, r, gmres_tol)


# --- the result -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IRResult:
    """What :func:`solve_ir` found.

    Attributes:
      x: ``[n]`` float64 solution (all NaN when the factorisation failed).
      status: ``"converged"`` (backward error ``<= tol``), ``"stagnated"``, ``"diverged"``,
        ``"max_iter"`` or ``"factorization_failed"``.
      iterations: refinement steps taken (0: the initial solve met ``tol``).
      backward_errors: normwise backward error ``||b - A x||_inf / (||A||_inf ||x||_inf +
        ||b||_inf)`` of ``x_0, x_1, ...`` (float64).
      forward_errors: ``||x_i - x_true||_inf / ||x_true||_inf`` when ``x_true`` was given.
      gmres_iterations: GMRES steps of each refinement step (GMRES-IR; zeros for LU-IR).
      message: why it stopped, in words.
      failed_column: the column of the failed pivot (``"factorization_failed"``), else None.
      factorization: ``"emulated"`` (:func:`lu_rounded`) or ``"blocked"`` (:func:`lu_blocked`).
      scaling: the power of two ``mu`` the equilibrated matrix was multiplied by before the
        factorisation (see the module docstring).
      overflow_retries: factorisations that overflowed before this one (each retried with
        ``mu / 16``).
    """

    x: np.ndarray
    status: str
    iterations: int
    backward_errors: tuple[float, ...]
    forward_errors: tuple[float, ...] | None
    gmres_iterations: tuple[int, ...]
    method: str
    factor_format: str
    working_format: str
    residual_format: str
    tol: float
    message: str
    failed_column: int | None = None
    factorization: str = "emulated"
    scaling: float = 1.0
    overflow_retries: int = 0

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def backward_error(self) -> float:
        """The last backward error (NaN when the factorisation failed)."""
        return self.backward_errors[-1] if self.backward_errors else math.nan

    def to_dict(self) -> dict:
        """A JSON-ready dict (without ``x``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "x"}
        for key in ("backward_errors", "forward_errors", "gmres_iterations"):
            out[key] = None if out[key] is None else list(out[key])
        return out

    def summary(self) -> str:
        """A few lines: the precisions, the status and the error history."""
        name = "LU-IR" if self.method == "lu" else "GMRES-IR"
        lines = [f"{name}: factors {self.factor_format}, working {self.working_format}, "
                 f"residual {self.residual_format}; tol {self.tol:.2e}; "
                 f"{self.factorization} LU",
                 f"status {self.status} after {self.iterations} step(s): {self.message}"]
        for i, eta in enumerate(self.backward_errors):
            line = f"  x_{i}: backward error {eta:.2e}"
            if self.forward_errors is not None:
                line += f", forward error {self.forward_errors[i]:.2e}"
            if i > 0 and self.method == "gmres":
                line += f", {self.gmres_iterations[i - 1]} GMRES steps"
            lines.append(line)
        return "\n".join(lines)


# --- the solver -------------------------------------------------------------------------------


def _check_array(value: Any, name: str, ndim: int) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a real array, got {type(value).__name__}") from None
    if out.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        bad = int(np.sum(~np.isfinite(out)))
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
    return out


def _require_x64() -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError("solve_ir computes on a float64 carrier, which JAX has disabled: call "
                         "jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) "
                         "before creating arrays")


def _backward_error(a, b, x, a_norm) -> float:
    if not np.all(np.isfinite(x)):
        return math.inf
    r = b - a @ x
    denom = a_norm * np.max(np.abs(x)) + np.max(np.abs(b))
    return float(np.max(np.abs(r)) / denom) if denom > 0 else 0.0


def solve_ir(
    A: Any,
    b: Any,
    *,
    factor_format: str | FloatFormat = "fp16",
    working_format: str | FloatFormat = "fp64",
    residual_format: str | FloatFormat | None = None,
    method: str = "lu",
    tol: float | None = None,
    max_iter: int = 30,
    gmres_tol: float = 1e-4,
    gmres_max_iter: int | None = None,
    x_true: Any = None,
    factorization: str = "emulated",
    block_size: int = 128,
) -> IRResult:
    """Solves ``A x = b`` by mixed-precision iterative refinement (LU-IR or GMRES-IR).

    Args:
      A: ``[n, n]`` real matrix (NumPy or JAX; used in float64).
      b: ``[n]`` right-hand side.
      factor_format: format of the LU factorisation ``u_f`` (``"fp16"``, ``"bf16"``,
        ``"fp8_e4m3"``, ``"fp32"``, ``"fp64"``, any IEEE-style format), emulated exactly.
      working_format: format ``u`` of the solution, the corrections and GMRES.
      residual_format: format ``u_r`` of the residuals (default: ``working_format``). A format
        below the working one limits the attainable backward error to about ``u_r``.
      method: ``"lu"`` (corrections by triangular solves with the factors) or ``"gmres"``
        (corrections by GMRES preconditioned with the factors).
      tol: the backward error to reach (default ``sqrt(n) * u``, ``u`` the working unit
        roundoff: ``7.9e-16`` for fp64 and ``n = 50``).
      max_iter: the most refinement steps (30: LU-IR with fp16 factors needs 15-18 near its
        limit, kappa ~ 3e3).
      gmres_tol: GMRES's relative residual tolerance (on the preconditioned system).
      gmres_max_iter: the most GMRES steps per refinement step (its Krylov dimension; default
        ``min(n, 100)``; no restarts: refinement restarts it).
      x_true: the exact solution, if known: the forward errors are then recorded.
      factorization: ``"emulated"`` (:func:`lu_rounded`: every operation rounded to
        ``factor_format``, any format) or ``"blocked"`` (:func:`lu_blocked`: float32 panels,
        matmul trailing updates on ``factor_format``'s native dtype; fp64, fp32, bf16, fp16).
      block_size: the blocked LU's columns per block (``factorization="blocked"``).

    Returns:
      An :class:`IRResult`. Never raises for numerical failure: a singular or overflowing
      factorisation and a refinement that does not converge are statuses.

    Raises:
      ValueError: ``A`` not square, ``b`` of the wrong shape, NaN or infinity in ``A`` or ``b``,
        an unknown format, method or factorization, a non-positive ``tol``/``max_iter``/
        ``block_size``, or ``factorization="blocked"`` with a format without a native dtype.

    Example:
      >>> import jax, numpy as np
      >>> jax.config.update("jax_enable_x64", True)   # the float64 carrier of every format
      >>> from dp2ejax.linalg.matrices import matrix_with_condition
      >>> A = matrix_with_condition(20, 100.0, seed=0)
      >>> r = solve_ir(A, A @ np.ones(20), factor_format="fp16")
      >>> r.status, r.backward_error < 1e-15, r.iterations
      ('converged', True, 6)
    """
    _require_x64()
    a = _check_array(A, "A", 2)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"A: expected a square matrix, got shape {a.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("A: expected a non-empty matrix, got shape (0, 0)")
    rhs = _check_array(b, "b", 1)
    if rhs.shape != (n,):
        raise ValueError(f"b: expected shape ({n},) to match A {a.shape}, got {rhs.shape}")
    exact = None if x_true is None else _check_array(x_true, "x_true", 1)
    if exact is not None and exact.shape != (n,):
        raise ValueError(f"x_true: expected shape ({n},), got {exact.shape}")
    if method not in IR_METHODS:
        raise ValueError(f"method: unknown method {method!r}; known: {', '.join(IR_METHODS)}")
    if factorization not in IR_FACTORIZATIONS:
        raise ValueError(f"factorization: unknown factorization {factorization!r}; known: "
                         f"{', '.join(IR_FACTORIZATIONS)}")
    block_size = _check_block_size(block_size)
    f_fmt = _float_format(factor_format, "factor_format")
    native = _native_factor_name(f_fmt, "factor_format") if factorization == "blocked" else None
    w_fmt = _float_format(working_format, "working_format")
    r_fmt = w_fmt if residual_format is None else _float_format(residual_format,
                                                                "residual_format")
    tol = math.sqrt(n) * w_fmt.unit_roundoff if tol is None else float(tol)
    if not tol > 0:
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    krylov = min(n, 100) if gmres_max_iter is None else gmres_max_iter
    if isinstance(krylov, bool) or not isinstance(krylov, int) or krylov < 1:
        raise ValueError(f"gmres_max_iter: expected an int >= 1, got {gmres_max_iter!r}")

    common = dict(method=method, factor_format=f_fmt.name, working_format=w_fmt.name,
                  residual_format=r_fmt.name, tol=tol, factorization=factorization)
    r_scale, s_scale, mu = _scaling(a, f_fmt)
    if native is None:
        factor = functools.partial(lu_rounded, fmt=f_fmt.name)
        what = f"the {f_fmt.name} LU factorisation"
    else:
        factor = functools.partial(_lu_blocked, fmt=native, block_size=min(block_size, n))
        what = f"the blocked LU factorisation ({f_fmt.name} updates)"
    retries = 0
    while True:
        lu, perm, failed = factor(jnp.asarray(mu * (r_scale[:, None] * a * s_scale[None, :])))
        failed = int(failed)
        # an overflow (element growth beyond the headroom) leaves non-finite entries: the
        # factorisation is tried again with _HEADROOM_STEP times more room, down to mu = 1
        if failed < 0 or mu <= 1 or bool(jnp.isfinite(lu).all()):
            break
        mu, retries = max(mu / _HEADROOM_STEP, 1.0), retries + 1
    common.update(scaling=float(mu), overflow_retries=retries)
    if failed >= 0:
        return IRResult(
            x=np.full(n, np.nan), status="factorization_failed", iterations=0,
            backward_errors=(), forward_errors=None if exact is None else (), gmres_iterations=(),
            message=f"{what} broke down at column {failed}: zero, "
                    "infinite or NaN pivot (A singular, or the format's range exceeded)",
            failed_column=failed, **common)
    lu = jnp.where(jnp.triu(jnp.ones((n, n), bool)), lu / mu, lu)  # U / mu: exact
    factors = (lu, perm, jnp.asarray(r_scale), jnp.asarray(s_scale))
    a_w = round_to(jnp.asarray(a), w_fmt)
    b_w = round_to(jnp.asarray(rhs), w_fmt)
    a_norm = float(np.max(np.sum(np.abs(a), axis=1)))

    x = _initial_solve(*factors, b_w, w_fmt.name)
    etas = [_backward_error(a, rhs, np.asarray(x), a_norm)]
    forward = None if exact is None else []
    x_norm = None if exact is None else float(np.max(np.abs(exact)))

    def record_forward(x_host):
        if forward is not None:
            err = np.max(np.abs(x_host - exact))
            forward.append(float(err / x_norm) if x_norm > 0 else float(err))

    record_forward(np.asarray(x))
    gmres_steps: list[int] = []
    status, message = "max_iter", f"backward error above tol after {max_iter} steps"
    if etas[0] <= tol:
        status, message = "converged", "the initial solve met tol"
    else:
        best_before = [etas[0]]  # best eta up to each step
        for i in range(1, max_iter + 1):
            r = _residual(a_w, x, b_w, r_fmt.name)
            if method == "lu":
                x, steps = _lu_ir_step(*factors, x, r, w_fmt.name)
            else:
                x, steps = _gmres_ir_step(*factors, a_w, x, r, jnp.asarray(gmres_tol),
                                          w_fmt.name, krylov)
            gmres_steps.append(int(steps))
            x_host = np.asarray(x)
            eta = _backward_error(a, rhs, x_host, a_norm)
            etas.append(eta)
            record_forward(x_host)
            if eta <= tol:
                status, message = "converged", f"backward error {eta:.2e} <= tol {tol:.2e}"
                break
            if not math.isfinite(eta) or (eta > etas[0] and eta > 2 * etas[-2]):
                status = "diverged"
                message = f"backward error grew to {eta:.2e} (from {etas[-2]:.2e})"
                break
            best_before.append(min(best_before[-1], eta))
            if i >= 2 and best_before[-1] > 0.5 * best_before[-3]:
                status = "stagnated"
                message = (f"backward error {best_before[-1]:.2e} not halved in 2 steps "
                           f"(tol {tol:.2e})")
                break
    return IRResult(
        x=np.asarray(x, np.float64), status=status, iterations=len(etas) - 1,
        backward_errors=tuple(etas), forward_errors=None if forward is None else tuple(forward),
        gmres_iterations=tuple(gmres_steps), message=message, **common)
