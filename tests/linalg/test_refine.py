"""solve_ir: LU-IR and GMRES-IR with emulated low-precision factors (Carson and Higham 2017/18).

The convergence limits asserted here are the measured ones of ``dp2ejax/linalg/refine.py``'s
table (n = 50, seeds 0-2) with a margin of about a decade on each side.
"""

import json

import numpy as np
import pytest
import scipy.linalg

from dp2ejax import round_to
from dp2ejax.linalg.matrices import matrix_with_condition
from dp2ejax.linalg.refine import IR_STATUSES, lu_rounded, solve_ir

N = 50


def system(cond, seed=0, n=N):
    a = matrix_with_condition(n, cond, seed=seed)
    x = np.random.default_rng(seed).standard_normal(n)
    return a, a @ x, x


# --- the low-precision LU against references ------------------------------------------------


def test_lu_in_fp64_matches_scipy():
    a, _, _ = system(100.0)
    lu, perm, failed = lu_rounded(a, "fp64")
    ref_lu, ref_piv = scipy.linalg.lu_factor(a)  # LAPACK getrf: the same partial pivoting
    assert int(failed) == -1
    np.testing.assert_allclose(np.asarray(lu), ref_lu, rtol=0, atol=1e-12)
    ref_perm = np.arange(N)
    for k, p in enumerate(ref_piv):
        ref_perm[[k, p]] = ref_perm[[p, k]]
    np.testing.assert_array_equal(np.asarray(perm), ref_perm)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3"])
def test_lu_factors_are_in_the_format_and_factor_a(fmt):
    a, _, _ = system(10.0)
    lu, perm, failed = lu_rounded(a, fmt)
    lu = np.asarray(lu)
    assert int(failed) == -1
    np.testing.assert_array_equal(np.asarray(round_to(lu, fmt)), lu)  # every entry in fmt
    lower = np.tril(lu, -1) + np.eye(N)
    upper = np.triu(lu)
    a_rounded = np.asarray(round_to(a, fmt))
    # backward error of LU with partial pivoting: |PA - LU| <= gamma_n |L||U| (u = unit roundoff)
    u = {"fp16": 2.0**-11, "bf16": 2.0**-8, "fp8_e4m3": 2.0**-4}[fmt]
    bound = N * u * (np.abs(lower) @ np.abs(upper))
    assert np.all(np.abs(a_rounded[np.asarray(perm)] - lower @ upper) <= bound)


# --- fp64 working precision: backward error below 1e-14 ----------------------------------------


@pytest.mark.parametrize("method", ["lu", "gmres"])
@pytest.mark.parametrize("fmt", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cond", [10.0, 100.0])
def test_reaches_fp64_backward_error(fmt, method, cond):
    a, b, x = system(cond, seed=1)
    # bf16 LU-IR contracts by ~kappa u_f / 4 per step: 14 steps at kappa = 100 (see the table)
    result = solve_ir(a, b, factor_format=fmt, method=method, max_iter=30, x_true=x)
    assert result.status == "converged", result.summary()
    assert result.backward_error < 1e-14
    assert result.forward_errors[-1] < cond * 1e-14
    assert len(result.backward_errors) == result.iterations + 1
    if method == "gmres":
        assert all(1 <= s <= N for s in result.gmres_iterations)


# --- the limits: LU-IR fails where GMRES-IR still converges ---------------------------------------


@pytest.mark.parametrize("cond", [1e2, 1e3])
def test_lu_ir_fp16_converges_to_kappa_1e3(cond):
    for seed in range(2):
        a, b, _ = system(cond, seed)
        result = solve_ir(a, b, factor_format="fp16", method="lu", max_iter=30)
        assert result.status == "converged", result.summary()


@pytest.mark.parametrize("cond", [1e5, 1e6])
def test_lu_ir_fp16_fails_beyond_and_says_so(cond):
    a, b, _ = system(cond)
    result = solve_ir(a, b, factor_format="fp16", method="lu", max_iter=30)
    assert result.status in ("stagnated", "diverged"), result.summary()
    assert result.backward_error > 1e-10  # and it is visibly not a solution
    assert result.status in result.summary() and result.message


@pytest.mark.parametrize("cond", [1e5, 1e6, 1e7])
def test_gmres_ir_fp16_converges_where_lu_ir_fails(cond):
    a, b, x = system(cond)
    result = solve_ir(a, b, factor_format="fp16", method="gmres", x_true=x)
    assert result.status == "converged", result.summary()
    assert result.backward_error < 1e-14
    # the fp16 preconditioner still shortens GMRES (measured: <= 40 steps of 50 at 1e7)
    assert max(result.gmres_iterations) <= 45


def test_gmres_ir_with_a_short_krylov_budget_still_beats_lu_ir():
    a, b, _ = system(1e4)
    short = solve_ir(a, b, factor_format="fp16", method="gmres", gmres_max_iter=10)
    lu = solve_ir(a, b, factor_format="fp16", method="lu")
    assert short.status == "converged" and lu.status != "converged"


def test_bf16_limits():
    a, b, _ = system(1e2)
    assert solve_ir(a, b, factor_format="bf16", max_iter=30).status == "converged"
    for cond in (1e4, 1e5):
        a, b, _ = system(cond)
        assert solve_ir(a, b, factor_format="bf16", max_iter=30).status != "converged"
        result = solve_ir(a, b, factor_format="bf16", method="gmres")
        assert result.status == "converged", result.summary()


# --- formats and scaling -------------------------------------------------------------------------


def test_fp8_factors_with_gmres():
    a, b, _ = system(10.0)
    assert solve_ir(a, b, factor_format="fp8_e4m3", method="gmres").status == "converged"


@pytest.mark.parametrize("scale", [1e8, 1e-9])
def test_scaling_keeps_fp16_in_range(scale):
    # entries far beyond fp16's range (65504) or below its normal numbers: scaled before the LU
    a, b, _ = system(100.0)
    result = solve_ir(a * scale, b * scale, factor_format="fp16", max_iter=30)
    assert result.status == "converged", result.summary()


def test_low_residual_precision_limits_the_backward_error():
    a, b, _ = system(100.0)
    strict = solve_ir(a, b, residual_format="fp32")
    assert strict.status == "stagnated" and strict.backward_error > 1e-10  # ~u_fp32, reported
    assert solve_ir(a, b, residual_format="fp32", tol=1e-6).status == "converged"


@pytest.mark.parametrize("method", ["lu", "gmres"])
def test_emulated_fp32_working_precision(method):
    a, b, _ = system(100.0)
    result = solve_ir(a, b, working_format="fp32", method=method)
    assert result.status == "converged"
    assert result.tol == pytest.approx(np.sqrt(N) * 2.0**-24)
    assert result.x.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(round_to(result.x, "fp32")), result.x)


# --- failures and bad input -----------------------------------------------------------------------


def test_zero_column_is_a_reported_factorization_failure():
    a, b, _ = system(10.0)
    a[:, 7] = 0.0
    result = solve_ir(a, b)
    assert result.status == "factorization_failed"
    assert result.failed_column == 7 and "column 7" in result.message
    assert np.all(np.isnan(result.x)) and not result.converged


def test_nearly_singular_is_not_silently_converged():
    a, b, _ = system(1e15)
    for method in ("lu", "gmres"):
        result = solve_ir(a, b, factor_format="fp16", method=method, gmres_max_iter=10)
        assert result.status in IR_STATUSES and result.status != "converged"


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((np.ones((3, 4)), np.ones(3)), {}, "A: expected a square matrix"),
    ((np.ones(3), np.ones(3)), {}, "A: expected a 2-D array"),
    ((np.eye(3), np.ones(4)), {}, r"b: expected shape \(3,\)"),
    ((np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2)), {}, "A: contains 1 NaN"),
    ((np.eye(2), np.array([1.0, np.inf])), {}, "b: contains 1 NaN or infinite"),
    ((np.eye(2), np.ones(2)), dict(factor_format="fp7"), "factor_format: unknown format"),
    ((np.eye(2), np.ones(2)), dict(factor_format="int8"), "factor_format: expected an IEEE"),
    ((np.eye(2), np.ones(2)), dict(method="cg"), "method: unknown method 'cg'"),
    ((np.eye(2), np.ones(2)), dict(tol=0.0), "tol: expected a positive"),
    ((np.eye(2), np.ones(2)), dict(max_iter=0), "max_iter: expected an int >= 1"),
])
def test_bad_input_raises_naming_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_ir(*args, **kwargs)


def test_result_summary_and_dict():
    a, b, x = system(100.0)
    result = solve_ir(a, b, method="gmres", x_true=x)
    assert "GMRES-IR: factors fp16, working fp64" in result.summary()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "converged" and len(data["backward_errors"]) == result.iterations + 1
    assert data["forward_errors"][-1] < 1e-12


@pytest.mark.parametrize("factorization", ["emulated", "blocked"])
def test_overflowing_growth_is_retried_with_more_headroom(factorization):
    # Wilkinson's matrix: partial pivoting's growth is 2**(n-1) = 128 in the last column, beyond
    # the headroom 16 of fp16's scaling (mu = 2**12): the first factorisation overflows, the
    # second (mu = 2**8) does not, and refinement converges.
    n = 8
    a = np.eye(n) - np.tril(np.ones((n, n)), -1)
    a[:, -1] = 1.0
    result = solve_ir(a, a @ np.ones(n), factor_format="fp16", factorization=factorization,
                      block_size=2)
    assert result.status == "converged" and result.backward_error < 1e-15
    assert (result.scaling, result.overflow_retries) == (2.0**8, 1)
    assert result.to_dict()["overflow_retries"] == 1
    # a zero pivot is no overflow: no retry
    singular = solve_ir(np.diag([1.0, 1.0, 0.0, 1.0]), np.ones(4), factor_format="fp16")
    assert singular.status == "factorization_failed" and singular.overflow_retries == 0
