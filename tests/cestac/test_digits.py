"""Tests for dp2ejax.cestac.digits: the CESTAC estimate of exact significant digits.

The reference is a direct NumPy computation of the CESTAC formula (Chesneaux; Vignes):

    C = log10( sqrt(N) |mean| / (tau s) ),   s the sample std (ddof=1),

with tau the 0.975 quantile of Student's t with N - 1 degrees of freedom taken from
``scipy.stats.t.ppf``, clipped to [0, max_digits]. ``student_t_975`` is exact (a table) up to 30
degrees of freedom and a Cornish-Fisher expansion beyond, which the docstring promises to 1e-4;
the reference digits therefore agree to 1e-4 / tau / ln(10) < 3e-5 digits (tolerance 1e-4).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from dp2ejax.cestac import (
    computational_zero,
    nonfinite,
    precision_digits,
    significant_digits,
    student_t_975,
)
from dp2ejax.cestac.digits import sample_statistics

FP64_DIGITS = 53 * math.log10(2.0)  # 15.95
FP32_DIGITS = 24 * math.log10(2.0)  # 7.22


def reference_digits(samples, axis=0, max_digits=FP64_DIGITS):
    """The CESTAC formula in NumPy/SciPy, float64, independent of the library."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[axis]
    mean = samples.mean(axis=axis)
    std = samples.std(axis=axis, ddof=1)
    # Equal samples are an exact result: std 0 (their rounded float mean may differ by an ulp).
    # CADNA's nb_significant_digit gives equal samples, an exact zero included, every digit.
    equal = np.all(samples == np.take(samples, [0], axis=axis), axis=axis)
    std = np.where(equal, 0.0, std)
    tau = scipy.stats.t.ppf(0.975, n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        digits = np.log10(math.sqrt(n) * np.abs(mean) / (tau * std))
    digits = np.where(std == 0, max_digits, digits)
    return np.clip(np.nan_to_num(digits, nan=0.0, neginf=0.0, posinf=max_digits), 0.0, max_digits)


# --- Student's t ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dof", [*range(1, 41), 50, 64, 100, 255, 1000, 10**6])
def test_student_t_975_matches_scipy(dof):
    expected = scipy.stats.t.ppf(0.975, dof)
    tol = 1e-9 if dof <= 30 else 1e-4  # the table (good to 1e-11), then Cornish-Fisher
    assert student_t_975(dof) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("dof", [0, -1])
def test_student_t_975_needs_one_degree_of_freedom(dof):
    with pytest.raises(ValueError, match="degree of freedom"):
        student_t_975(dof)


def test_precision_digits():
    assert precision_digits(53) == pytest.approx(15.954589770191003)
    assert precision_digits(24) == pytest.approx(7.224719895935548)
    assert precision_digits(8) == pytest.approx(2.408239965311849)  # bf16


# --- significant_digits against the NumPy reference -----------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16, 31, 32, 50])
def test_significant_digits_matches_reference(n):
    rng = np.random.default_rng(n)
    # Means of every sign and magnitude, relative spreads from 1e-12 to 10 (0 to ~13 digits).
    mean = rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200)
    rel = 10.0 ** rng.uniform(-12, 1, 200)
    samples = mean * (1 + rel * rng.standard_normal((n, 200)))
    got = np.asarray(significant_digits(jnp.asarray(samples)))
    expected = reference_digits(samples)
    # The deviations from the mean are known to about one ulp of the mean, so s (hence C) carries
    # a relative error ~ 2^-52 |mean| / s ~ 1e-15 * 10**C from the summation order alone.
    np.testing.assert_array_less(np.abs(got - expected), 1e-4 + 1e-14 * 10.0**expected)
    assert got.min() >= 0 and got.max() <= FP64_DIGITS
    assert 0 < np.mean(got == 0) < 1  # the spreads cover computational zeros and exact digits


@settings(max_examples=60, deadline=None)
@given(
    mean=st.floats(-1e6, 1e6, allow_nan=False).filter(lambda m: abs(m) > 1e-6),
    spread=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=12),
    scale=st.floats(1e-11, 1e2),
)
def test_significant_digits_property(mean, spread, scale):
    samples = mean + mean * scale * np.asarray(spread)
    got = float(significant_digits(jnp.asarray(samples)))
    assert got == pytest.approx(float(reference_digits(samples)), abs=1e-4)


def test_known_spread_gives_known_digits():
    """Three samples m(1 - e), m, m(1 + e): s = m e, so C = log10(sqrt(3) / (tau_2 e))."""
    for e in (1e-3, 1e-7, 1e-11):
        samples = 7.25 * np.array([1 - e, 1.0, 1 + e])
        expected = math.log10(math.sqrt(3) / (scipy.stats.t.ppf(0.975, 2) * e))
        assert float(significant_digits(jnp.asarray(samples))) == pytest.approx(expected, abs=1e-4)


def test_equal_samples_have_every_digit_exact_zeros_included():
    """CADNA's nb_significant_digit (cadna_digitnumber.h, CADNA_C 2.0 in github.com/bgin/
    LibAtmosCXX ThirdParty/cadna/, commit 308b678): ``if (xx==0.0) { if ((x==y) && (x==z))
    accuracy=15; }``: an exact zero has every digit, as ReLU's exact zeros do."""
    samples = jnp.array([[1.5, 0.0, -2.0], [1.5, 0.0, -2.0], [1.5, 0.0, -2.0]])
    np.testing.assert_array_equal(significant_digits(samples), [FP64_DIGITS] * 3)
    f32 = significant_digits(samples.astype(jnp.float32))
    np.testing.assert_allclose(f32, [FP32_DIGITS] * 3, rtol=1e-6)  # the dtype's cap
    capped = significant_digits(samples, max_digits=2.5)
    np.testing.assert_array_equal(capped, [2.5, 2.5, 2.5])
    assert not np.any(computational_zero(samples))
    # unequal samples summing to zero: no digit (CADNA: accuracy 0)
    assert float(significant_digits(jnp.array([1e-17, -2e-17, 1e-17]))) == 0.0


def test_equal_samples_are_exact():
    """N equal samples: the mean is the sample itself and every digit is exact, although the
    rounded sum N x / N differs from x for about 30% of values when N = 3."""
    x = np.random.default_rng(3).uniform(0.5, 4.0, 1000)
    samples = jnp.asarray(np.broadcast_to(x, (3, x.size)))
    assert np.any(np.asarray(jnp.mean(samples, axis=0)) != x)  # the trap is there
    mean, std = sample_statistics(samples)
    np.testing.assert_array_equal(mean, x)
    np.testing.assert_array_equal(std, 0.0)
    np.testing.assert_array_equal(significant_digits(samples), FP64_DIGITS)
    np.testing.assert_array_equal(significant_digits(samples.T, axis=-1), FP64_DIGITS)


def test_non_finite_samples_have_no_digit_and_are_reported_as_such():
    # an overflow in one sample, in every sample, a NaN (CADNA gives these no digit either,
    # and prints them as @.0; here they are non-finite, not computational zeros)
    samples = jnp.array([[1.0, np.inf, np.inf, np.nan], [1.0, 1.0, np.inf, 1.0],
                         [1.0, 2.0, np.inf, 1.0]])
    np.testing.assert_array_equal(significant_digits(samples)[1:], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(computational_zero(samples), [False] * 4)
    np.testing.assert_array_equal(nonfinite(samples), [False, True, True, True])


def test_sample_axis():
    rng = np.random.default_rng(1)
    samples = 1 + 1e-6 * rng.standard_normal((5, 4, 3))
    for axis in range(3):
        got = significant_digits(jnp.asarray(samples), axis=axis)
        assert got.shape == tuple(s for i, s in enumerate(samples.shape) if i != axis)
        np.testing.assert_allclose(got, reference_digits(samples, axis=axis), atol=1e-4)


def test_significant_digits_under_jit_and_vmap():
    rng = np.random.default_rng(2)
    samples = jnp.asarray(1 + 1e-5 * rng.standard_normal((3, 6, 7)))
    eager = significant_digits(samples)
    np.testing.assert_array_equal(jax.jit(significant_digits)(samples), eager)
    mapped = jax.vmap(significant_digits, in_axes=1)(samples)  # one row of 3x7 samples per lane
    np.testing.assert_array_equal(mapped, eager)


def test_one_sample_is_an_error():
    with pytest.raises(ValueError, match="at least 2 samples"):
        significant_digits(jnp.ones((1, 4)))


# --- computational zeros --------------------------------------------------------------------------


def test_computational_zero():
    samples = jnp.array([
        [0.0, 1e-17, 1.0, 1.0, -3.0],
        [0.0, -2e-17, 1.0 + 1e-9, 1.0, 5.0],
        [0.0, 3e-17, 1.0 - 1e-9, 1.0, -1.0],
    ])
    # exact zero | noise around zero | 8 exact digits | equal samples | more spread than mean
    np.testing.assert_array_equal(computational_zero(samples), [False, True, False, False, True])
    digits = significant_digits(samples)
    assert float(digits[2]) == pytest.approx(8.6, abs=0.2)
    np.testing.assert_array_equal(computational_zero(samples, digits=digits),
                                  computational_zero(samples))
    # ``digits`` is used as given: C <= 0 is the definition (Vignes; Chesneaux).
    np.testing.assert_array_equal(
        computational_zero(samples, digits=jnp.array([5.0, 5.0, 0.0, 3.0, 1.0])),
        [False, False, True, False, False],
    )


def test_computational_zero_threshold_is_zero_digits():
    """C <= 0 exactly: the mean equals tau s / sqrt(N) (C = 0) is a zero, a bit more is not."""
    tau = scipy.stats.t.ppf(0.975, 2)
    s = 1.0
    for c, zero in ((-0.5, True), (-1e-6, True), (0.01, False), (1.0, False)):
        mean = tau * s / math.sqrt(3) * 10**c
        samples = jnp.array([mean - s, mean, mean + s])
        assert bool(computational_zero(samples)) is zero, c
