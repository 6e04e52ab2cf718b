"""lu_blocked and solve_ir(factorization="blocked"): the blocked LU on native dtypes (issue 11).

Compiling the factorisation dominates the run time (about a second per fixed-shape stage on a
CPU), so the tests share a few shapes: n = 64 with block 16 (four blocks, one stage) for the
precision and solver tests, n = 37 for the comparison with SciPy (block 1: 37 blocks in four
stages; block 3: 13 blocks with padding, three stages; block 8: five blocks with padding; 37).
"""

import json

import jax
import numpy as np
import pytest
import scipy.linalg

from dp2ejax.linalg.matrices import matrix_with_condition
from dp2ejax.linalg.refine import IR_STATUSES, _lu_blocked, lu_blocked, solve_ir

N, BLOCK = 64, 16
UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "bf16": 2.0**-8, "fp16": 2.0**-11}


def system(cond, seed=0, n=N):
    a = matrix_with_condition(n, cond, seed=seed)
    x = np.random.default_rng(seed).standard_normal(n)
    return a, a @ x, x


def factors(lu):
    lu = np.asarray(lu)
    return np.tril(lu, -1) + np.eye(lu.shape[0]), np.triu(lu)


def scipy_perm(a):
    """The row permutation of LAPACK getrf's partial pivoting, ``a[perm] = L U``."""
    _, piv = scipy.linalg.lu_factor(a)
    perm = np.arange(a.shape[0])
    for k, p in enumerate(piv):
        perm[[k, p]] = perm[[p, k]]
    return perm


# --- the factorisation against SciPy -------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 8, 37])
def test_fp64_blocked_lu_matches_scipy(block_size):
    # n = 37: not a multiple of 3 or 8, so the last block holds identity padding; blocks 1 and
    # 3 run in four and three stages (static windows); block 37 is one unblocked panel
    n = 37
    a = np.random.default_rng(block_size).standard_normal((n, n))
    lu, perm, failed = lu_blocked(a, "fp64", block_size=block_size)
    lower, upper = factors(lu)
    perm = np.asarray(perm)
    assert int(failed) == -1 and lu.dtype == np.float64 and lu.shape == (n, n)
    # backward stable in float64: ~1e-16 measured; Gaussian entries, so no pivot ties
    assert np.linalg.norm(a[perm] - lower @ upper) / np.linalg.norm(a) < 1e-13
    np.testing.assert_array_equal(perm, scipy_perm(a))
    np.testing.assert_allclose(np.asarray(lu), scipy.linalg.lu_factor(a)[0], rtol=0, atol=1e-12)


def test_low_precision_factors_carry_the_formats_rounding():
    a = np.random.default_rng(0).standard_normal((N, N))
    errors = {}
    for fmt in ("fp32", "bf16", "fp16"):
        lu, perm, failed = lu_blocked(a, fmt, block_size=BLOCK)
        lower, upper = factors(lu)
        residual = np.abs(a[np.asarray(perm)] - lower @ upper)
        assert int(failed) == -1
        # Componentwise (Higham, ASNA, Thm 9.3, adapted): every product l_ik u_kj of a trailing
        # update uses operands rounded to fmt (relative error <= 2 u_f + u_f^2) and is summed
        # in float32 (gamma_n, n u_32 to first order); A itself is rounded to float32 once. So
        # |PA - LU| <= (2 u_f + (n + 1) u_32 + O(u^2)) |L||U|; 3 u_f + 2 n u_32 has margin.
        bound = 3 * UNIT_ROUNDOFF[fmt] + 2 * N * UNIT_ROUNDOFF["fp32"]
        assert np.all(residual <= bound * (np.abs(lower) @ np.abs(upper)))
        errors[fmt] = np.linalg.norm(residual) / np.linalg.norm(a)
        # normwise: of the order of u_f times a modest growth (|| |L||U| || / ||A|| ~ 30 here)
        assert errors[fmt] <= N * UNIT_ROUNDOFF[fmt]
    # measured: 2e-7, 7e-3, 8e-4. bf16's 8 bits against fp16's 11 (ratio ~8) and float32's 24:
    # the updates really ran on bf16 and fp16 operands
    assert errors["bf16"] > 2 * errors["fp16"] > 100 * errors["fp32"]


def test_overflow_in_the_updates_is_a_failure_not_a_wrong_factor():
    # unscaled entries of 1e5: U12 overflows fp16 (max 65504) in the first update, the trailing
    # matrix becomes infinite or NaN and a later panel reports it
    a = 1e5 * np.random.default_rng(0).standard_normal((N, N))
    assert int(lu_blocked(a, "fp16", block_size=BLOCK)[2]) >= BLOCK
    assert int(lu_blocked(a, "bf16", block_size=BLOCK)[2]) == -1  # bf16's range holds it


def test_compiled_once_per_shape_block_and_format():
    a = np.random.default_rng(1).standard_normal((N, N))
    lu_blocked(a, "bf16", block_size=BLOCK)
    compiled = _lu_blocked._cache_size()
    lu_blocked(2 * a + 1, "bf16", block_size=BLOCK)
    assert _lu_blocked._cache_size() == compiled
    # block_size above n is clamped to n: one block, the same compiled function as block n
    b = np.random.default_rng(1).standard_normal((37, 37))
    lu_blocked(b, "fp64", block_size=37)
    compiled = _lu_blocked._cache_size()
    lu, _, _ = lu_blocked(b, "fp64", block_size=1000)
    assert _lu_blocked._cache_size() == compiled
    np.testing.assert_allclose(np.asarray(lu), scipy.linalg.lu_factor(b)[0], rtol=0, atol=1e-12)


def test_traceable_with_static_format_and_block_size():
    # inside jit (traced, not compiled here: the inner jitted factorisation is what runs)
    shapes = jax.eval_shape(lambda a: lu_blocked(a, "fp32", block_size=4),
                            jax.ShapeDtypeStruct((10, 10), np.float64))
    assert [(s.shape, s.dtype) for s in shapes] == [
        ((10, 10), np.float64), ((10,), np.int32), ((), np.int32)]


# --- solve_ir with blocked factors ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["lu", "gmres"])
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_blocked_factors_reach_fp64_backward_error(fmt, method):
    a, b, x = system(1e2)
    result = solve_ir(a, b, factor_format=fmt, method=method, factorization="blocked",
                      block_size=BLOCK, x_true=x)
    assert result.status == "converged", result.summary()
    assert result.backward_error < 1e-14
    assert result.forward_errors[-1] < 1e2 * 1e-14
    assert result.factorization == "blocked"


def test_bf16_blocked_lu_ir_fails_where_gmres_ir_converges():
    # kappa = 1e6 is far beyond bf16's LU-IR limit (kappa u_f ~ 1: 256; measured 1e3-1e4 for
    # the blocked factors at n = 64), and within GMRES-IR's with a Krylov dimension up to n
    a, b, _ = system(1e6)
    lu_ir = solve_ir(a, b, factor_format="bf16", factorization="blocked", block_size=BLOCK)
    assert lu_ir.status in IR_STATUSES and lu_ir.status != "converged", lu_ir.summary()
    assert lu_ir.backward_error > 1e-10
    gmres_ir = solve_ir(a, b, factor_format="bf16", method="gmres", factorization="blocked",
                        block_size=BLOCK)
    assert gmres_ir.status == "converged", gmres_ir.summary()
    assert gmres_ir.backward_error < 1e-14


def test_scaling_keeps_fp16_blocked_updates_in_range():
    a, b, _ = system(1e2)
    result = solve_ir(1e8 * a, 1e8 * b, factor_format="fp16", factorization="blocked",
                      block_size=BLOCK)
    assert result.status == "converged", result.summary()


@pytest.mark.parametrize("column", [7, 40])
def test_zero_column_is_a_reported_factorization_failure(column):
    a, b, _ = system(10.0)
    a[:, column] = 0.0  # 40: in the third block
    result = solve_ir(a, b, factorization="blocked", block_size=BLOCK)
    assert result.status == "factorization_failed" and not result.converged
    assert result.failed_column == column and f"column {column}" in result.message
    assert "blocked" in result.message and np.all(np.isnan(result.x))


def test_result_records_the_factorisation():
    a, b, _ = system(1e2)
    result = solve_ir(a, b, factor_format="bf16", method="gmres", factorization="blocked",
                      block_size=BLOCK)
    assert "GMRES-IR: factors bf16, working fp64" in result.summary()
    assert "blocked LU" in result.summary()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["factorization"] == "blocked" and data["status"] == "converged"
    emulated = solve_ir(np.eye(2), np.ones(2))
    assert emulated.factorization == "emulated" and "emulated LU" in emulated.summary()


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(factor_format="fp8_e4m3", factorization="blocked"),
     r"factor_format: the blocked LU .* native JAX dtype \(fp64, fp32, bf16, fp16\), got "
     r"'fp8_e4m3'; factorization='emulated' handles any format"),
    (dict(factor_format="e6m5", factorization="blocked"), "factor_format: .*'e6m5'"),
    (dict(factorization="cholesky"), "factorization: unknown factorization 'cholesky'"),
    (dict(factorization="blocked", block_size=0), "block_size: expected an int >= 1, got 0"),
    (dict(factorization="blocked", block_size=True), "block_size: .* got True"),
    (dict(factorization="blocked", block_size=2.0), r"block_size: .* got 2\.0"),
])
def test_bad_input_raises_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_ir(np.eye(4), np.ones(4), **kwargs)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((np.eye(4), "fp8_e5m2"), {}, "fmt: the blocked LU"),
    ((np.eye(4), "fp7"), {}, "fmt: unknown format"),
    ((np.ones((3, 4)), "fp32"), {}, r"a: expected a non-empty square matrix, got shape \(3, 4\)"),
    ((np.eye(4), "fp32"), dict(block_size=-2), "block_size"),
])
def test_lu_blocked_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lu_blocked(*args, **kwargs)


def test_e8m7_is_bf16():
    a = np.random.default_rng(3).standard_normal((N, N))
    same = [lu_blocked(a, fmt, block_size=BLOCK)[0] for fmt in ("e8m7", "bf16")]
    np.testing.assert_array_equal(np.asarray(same[0]), np.asarray(same[1]))
