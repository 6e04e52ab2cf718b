"""The classic test programs of stochastic arithmetic, against the outcomes CADNA publishes.

Each program is the CADNA example written in JAX, operation for operation (loops as
``lax.scan``, branches as ``jnp.where``), analysed with ``analyze`` in the example's precision with
CADNA's 3 samples. Sources of the expected figures:

- [CADNA-src]: the CADNA distribution's examples, mirrored at github.com/thelfer/cadna,
  ``examples/ex1_cad.cc`` … ``ex6_cad.cc`` (the programs).
- [CADNA-3.1.11]: CADNA_C 3.1.11 runs of the same programs with their printed output, recorded in
  the header comments of github.com/edo01/hs-progpar-2024, ``practical2/ex_AFAE/*_cad.cc``
  (commit 58f41f1): ``rumpd_cad.cc``, ``hilbert_cad.cc``, ``muller_cad.cc``, ``newton_cad.cc``.
- [CADNA-web]: the CADNA "Numerical examples" pages, http://cadna.lip6.fr/Examples_Dir/ex1.php and
  http://www-pequan.lip6.fr/cadna/Examples_Dir/ex6.php.
- [CADNA-ops]: CADNA's relational operators, ``cadna_eq_d.cc`` and ``cadna_lt_d.cc`` (CADNA 2019,
  Chesneaux, Jézéquel, Lamotte; mirrored at github.com/hungpham3112/CFamilyProjects,
  ``cadnaGPU_V1.3bis_all/C/``) and CADNA_C 2.0's ``cadna_eq.h`` / ``cadna_gt.h`` (vendored in
  github.com/bgin/LibAtmosCXX ``ThirdParty/cadna/``, commit 308b678): ``a == b`` is true iff
  ``a - b`` is a computational zero and counts no instability; ``a < b`` counts an unstable
  branching when ``a - b`` is numerical noise (not exact, less than half a digit).

How figures compare. CADNA prints round(C) significant digits (``nb_significant_digit``:
``(int)(C + 0.5)``, at most 15) and ``@.0`` when C < 0.5; dp2ejax reports C itself (at most
15.95) and calls C <= 0 a computational zero. A published count p is matched within one digit:
|C - p| <= 1.5 (p - 0.5 <= C_CADNA < p + 0.5, plus one digit), and ``@.0`` means C < 1.5. Both are
estimates from 3 random samples: their exact values depend on the key, which is fixed here.
Instability counts are per executed operation in both tools, but which operands are
computational zeros follows the sampled digits, so counts are compared loosely where they depend
on a digit estimate crossing zero, and exactly where they do not.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dp2ejax.cestac import analyze, computational_zero, significant_digits

SAMPLES = 3  # as CADNA


def within_one_digit(digits, published):
    """dp2ejax's C against CADNA's printed count (0 for @.0), see the module docstring."""
    digits, published = np.asarray(digits, np.float64), np.asarray(published, np.float64)
    return np.where(published == 0, digits < 1.5, np.abs(digits - published) <= 1.5)


def count(result, kind, function=None):
    return sum(i.count for i in result.instabilities
               if i.kind == kind and (function is None or f"({function}" in i.source))


# --- the programs ---------------------------------------------------------------------------------


def rump(x, y):
    """[CADNA-src] ex1_cad.cc: Rump's polynomial, products written out as in the C source."""
    return (333.75 * y * y * y * y * y * y
            + x * x * (11 * x * x * y * y - y * y * y * y * y * y - 121 * y * y * y * y - 2.0)
            + 5.5 * y * y * y * y * y * y * y * y + x / (2 * y))


def rump_web(x, y):
    """[CADNA-web] ex1.php: P(x, y) = 9x^4 - y^4 + 2y^2 (also due to Rump)."""
    return 9.0 * x * x * x * x - y * y * y * y + 2.0 * y * y


def hilbert_determinant(order):
    """[CADNA-src] ex3_cad.cc: the pivots and determinant of Hilbert's matrix of order 11 by
    Gaussian elimination without pivoting; amat[i][j] = 1 / (i + j - 1) is computed too.

    One elimination step per scan iteration on the whole matrix; entries the C loops do not touch
    are kept by ``where`` and meet only exact operations (x * 1, x - 0), so each updated entry
    goes through exactly the C program's operations."""
    a = 1.0 / order
    n = a.shape[0]
    index = jnp.arange(n)

    def step(carry, i):
        a, det = carry
        pivot = a[i, i]
        det = det * pivot
        aux = 1.0 / pivot
        later = index > i
        row = jnp.where(later, a[i], 1.0) * aux  # amat[i][j] = amat[i][j] * aux
        a = a.at[i].set(jnp.where(later, row, a[i]))
        # amat[j][k] = amat[j][k] - amat[j][i] * amat[i][k]
        product = jnp.where(later, a[:, i], 1.0)[:, None] * jnp.where(later, a[i], 1.0)[None, :]
        a = a - jnp.where(later[:, None] & later[None, :], product, 0.0)
        return (a, det), pivot

    (a, det), pivots = lax.scan(step, (a, jnp.ones((), a.dtype)), index[:-1])
    return {"pivots": jnp.append(pivots, a[n - 1, n - 1]), "det": det * a[n - 1, n - 1]}


def muller(u0, u1):
    """[CADNA-src] ex4_cad.cc: U(n+1) = 111 - 1130 / U(n) + 3000 / (U(n) U(n-1)), U(0) = 5.5,
    U(1) = 61/11; returns U(2) … U(30) as [CADNA-3.1.11] prints them."""

    def step(carry, _):
        a, b = carry
        c = b
        b = 111.0 - 1130.0 / b + 3000.0 / (a * b)
        return (c, b), b

    _, u = lax.scan(step, (u0, u1), None, length=29)
    return u


def newton(y0):
    """[CADNA-3.1.11] newton_cad.cc: Newton's iteration for the double root 3/7 of
    1.47 x^3 + 1.19 x^2 - 1.83 x + 0.45, from 0.5. CADNA stops at x == y (stochastic equality)
    after 24 iterations; here the 24 iterations run unconditionally."""

    def step(y, _):
        x = y
        y = x - (1.47 * x**3 + 1.19 * x**2 - 1.83 * x + 0.45) / (4.41 * x**2 + 2.38 * x - 1.83)
        return y, (y, jnp.abs(x - y))

    _, (x, diff) = lax.scan(step, y0, None, length=24)
    return {"x": x, "diff": diff}


def fp64_programs(x, y, x_web, y_web, order, u0, u1, y0):
    return {"rump": rump(x, y), "rump_web": rump_web(x_web, y_web),
            "hilbert": hilbert_determinant(order), "muller": muller(u0, u1),
            "newton": newton(y0)}


def quadratic(a, b, c):
    """[CADNA-src] ex2_cad.cc, in single precision: 0.3 x^2 - 2.1 x + 3.675 = 0, whose
    discriminant is 0 in exact arithmetic (double root 3.5). The C branches
    ``if (d == 0) … else if (d > 0) … else …`` are ``where``s; ``branch`` is 0, 1 or 2."""
    b = b / a
    c = c / a
    d = b * b - 4.0 * c
    zero = d == 0.0  # site: d == 0
    positive = d > 0.0  # site: d > 0
    root = jnp.sqrt(jnp.abs(d))
    x1 = jnp.where(zero, -b * 0.5, jnp.where(positive, (-b - root) * 0.5, -b * 0.5))
    x2 = jnp.where(zero, -b * 0.5, jnp.where(positive, (-b + root) * 0.5, root * 0.5))
    branch = jnp.where(zero, 0.0, jnp.where(positive, 1.0, 2.0))
    return {"d": d, "double_root": -b * 0.5, "x1": x1, "x2": x2, "branch": branch}


GAUSS_SYSTEM = np.array([[21.0, 130.0, 0.0, 2.1, 153.1],
                         [13.0, 80.0, 4.74e8, 752.0, 849.74],
                         [0.0, -0.4, 3.9816e8, 4.2, 7.7816],
                         [0.0, 0.0, 1.7, 9.0e-9, 2.6e-8]], np.float32)
GAUSS_SOLUTION = [1.0, 1.0, 1e-8, 1.0]


def gauss(a):
    """[CADNA-src] ex6_cad.cc, in single precision: Gaussian elimination with partial pivoting
    (``if (fabsf(a[j][i]) > pmax)``), ``aux = 1/a[i][i]``, then back substitution. Untouched
    entries are kept by ``where`` and meet only exact operations, as in ``hilbert_determinant``."""
    n = a.shape[0]
    rows, cols = jnp.arange(n), jnp.arange(n + 1)

    def eliminate(a, i):
        def search(carry, j):  # if (fabsf(a[j][i]) > pmax) { pmax = fabsf(a[j][i]); ll = j; }
            pmax, ll = carry
            candidate = jnp.where(j >= i, jnp.abs(a[j, i]), -1.0)
            bigger = candidate > pmax  # site: pivot search
            return (jnp.where(bigger, candidate, pmax), jnp.where(bigger, j, ll)), None

        (_, ll), _ = lax.scan(search, (jnp.zeros((), a.dtype), i), rows)
        row_i, row_ll = a[i], a[ll]
        a = a.at[i].set(row_ll).at[ll].set(row_i)
        aux = 1.0 / a[i, i]
        later_c, later_r = cols > i, rows > i
        a = a.at[i].set(jnp.where(later_c, jnp.where(later_c, a[i], 1.0) * aux, a[i]))
        product = jnp.where(later_r, a[:, i], 1.0)[:, None] * jnp.where(later_c, a[i], 1.0)[None]
        a = a - jnp.where(later_r[:, None] & later_c[None, :], product, 0.0)
        return a, None

    a, _ = lax.scan(eliminate, a, rows[:-1])
    x = a[:, n].at[n - 1].set(a[n - 1, n] / a[n - 1, n - 1])

    def substitute(x, i):  # a[i][n] = a[i][n] - a[i][j] * a[j][n], j = i+1 … n-1 in order
        def term(x_i, j):
            later = j > i
            return x_i - jnp.where(later, jnp.where(later, a[i, j], 1.0) * x[j], 0.0), None

        x_i, _ = lax.scan(term, x[i], rows)
        return x.at[i].set(x_i), None

    x, _ = lax.scan(substitute, x, rows[::-1][1:])
    return x


def fp32_programs(a, b, c, system):
    return {"quadratic": quadratic(a, b, c), "gauss": gauss(system)}


# The quadratic runs on REPLICAS copies of its data at once: each copy is rounded independently,
# so each is one CADNA run of ex2 with its own random roundings, and the tests can say how often
# an outcome occurs instead of relying on one draw of 3 samples.
REPLICAS = 256


# --- the analyses ---------------------------------------------------------------------------------


def fp64_inputs():
    i = np.arange(1, 12, dtype=np.float64)
    return (77617.0, 33096.0, np.array([10864.0, 1 / 3]), np.array([18817.0, 2 / 3]),
            i[:, None] + i[None, :] - 1, 5.5, 61.0 / 11.0, 0.5)


@pytest.fixture(scope="module")
def fp64_run():
    return analyze(fp64_programs, *fp64_inputs(), fmt="fp64", samples=SAMPLES,
                   key=jax.random.key(2))


@pytest.fixture(scope="module")
def fp32_run():
    # float_st a = 0.3 etc.: the coefficients are the float32 values of the C literals
    coefficients = [np.full(REPLICAS, np.float32(v)) for v in (0.3, -2.1, 3.675)]
    return analyze(fp32_programs, *coefficients, GAUSS_SYSTEM, fmt="fp32", samples=SAMPLES,
                   key=jax.random.key(2))


# --- ex1: Rump's polynomials ----------------------------------------------------------------------


def test_rump_polynomial_has_no_exact_digit(fp64_run):
    """[CADNA-3.1.11] rumpd_cad.cc (double_st): ``res= @.0`` and ``There is 1 numerical
    instability: 1 LOSS(ES) OF ACCURACY DUE TO CANCELLATION(S)``. The exact value is
    -0.827396059946821368… (Rump; checked here with rationals); IEEE double gives 1.17260394…"""
    x, y = Fraction(77617), Fraction(33096)
    exact = (Fraction(33375, 100) * y**6 + x**2 * (11 * x**2 * y**2 - y**6 - 121 * y**4 - 2)
             + Fraction(11, 2) * y**8 + x / (2 * y))
    assert float(exact) == pytest.approx(-0.827396059946821368, abs=1e-15)
    # The port evaluates as the C source does (NumPy: IEEE double, one rounding per operation).
    # jax.jit(rump) on XLA:CPU gives 5.07e20 instead: its compiler contracts products into FMAs.
    assert float(rump(np.float64(77617.0), np.float64(33096.0))) == 1.1726039400531787
    assert bool(fp64_run.computational_zero["rump"])
    assert float(fp64_run.digits["rump"]) == 0.0
    assert count(fp64_run, "cancellation", "rump)") == 1
    assert all(count(fp64_run, kind, "rump)") == 0
               for kind in ("multiplication", "division", "branching", "math_function"))


def test_rump_web_polynomial(fp64_run):
    """[CADNA-web] ex1.php: without CADNA P(10864, 18817) = 2.0000000000000000 (exact value 1)
    and P(1/3, 2/3) = 0.8024691358024691; with CADNA ``P(10864,18817) = @.0``,
    ``P(1/3,2/3) = 0.802469135802469E+000`` (15 digits), ``2 UNSTABLE CANCELLATION(S)``."""
    plain = rump_web(np.array([10864.0, 1 / 3]), np.array([18817.0, 2 / 3]))  # IEEE, no FMA
    np.testing.assert_array_equal(plain, [2.0, 0.8024691358024691])
    exact = 9 * Fraction(10864) ** 4 - Fraction(18817) ** 4 + 2 * Fraction(18817) ** 2
    assert exact == 1
    digits = np.asarray(fp64_run.digits["rump_web"])
    np.testing.assert_array_equal(fp64_run.computational_zero["rump_web"], [True, False])
    assert within_one_digit(digits, [0, 15]).all(), digits
    assert count(fp64_run, "cancellation", "rump_web") == 2


# --- ex2: the second-order equation ---------------------------------------------------------------


def test_quadratic_discriminant_is_a_computational_zero(fp32_run):
    """[CADNA-src] ex2_cad.cc prints d and branches on ``d == 0.``, CADNA's stochastic equality
    [CADNA-ops]: the program reports a double root exactly when d is @.0. (The printed output
    was not retrievable; this checks that outcome.) The float32 data's own discriminant is
    -5.76e-6 and computing it rounds b*b ~ 49 (ulp 3.8e-6): d has no exact digit, while the
    double root -b/2 = 3.5 keeps single precision's. In IEEE single d = -3.8146973e-06, not 0,
    and the program wrongly finds two complex roots.

    Over the replicas: d is a computational zero in most runs (68% with this key) and keeps
    less than 1.5 digits in at least 90% of them. The rest are CESTAC's known failure with few
    roundings: the 3 samples of d happen to coincide and claim every digit (6% here)."""
    a, b, c = (np.float32(v) for v in (0.3, -2.1, 3.675))
    assert (b / a) * (b / a) - np.float32(4.0) * (c / a) == np.float32(-3.8146973e-06)
    exact_d = (Fraction(float(b)) / Fraction(float(a))) ** 2 - 4 * Fraction(float(c)) / Fraction(
        float(a))
    assert float(exact_d) == pytest.approx(-5.7618e-6, rel=1e-4)
    result = fp32_run
    digits = np.asarray(result.digits["quadratic"]["d"])
    zero = np.asarray(result.computational_zero["quadratic"]["d"])
    assert np.mean(within_one_digit(digits, 0)) >= 0.9
    assert np.mean(zero) >= 0.5
    assert np.all(np.asarray(result.digits["quadratic"]["double_root"]) >= 6.0)
    np.testing.assert_allclose(result.mean["quadratic"]["double_root"], 3.5, rtol=1e-6)
    # b*b - 4c (~49 - 49) is a cancellation in every run where some sample of d is not exactly
    # 0; sqrt(|d|) is of a computational zero wherever d is one
    nonzero = np.any(np.asarray(result.samples["quadratic"]["d"]) != 0, axis=0)
    assert np.mean(nonzero) >= 0.95
    # CADNA's cancellation (cadna_sub.h): min(C_b*b, C_4ac) - C_d >= 4; the operands keep at
    # most single precision's 7.22 digits, so only runs where d keeps <= 3.22 can count, and
    # nearly all of those do (b*b carries ~7 digits)
    possible = nonzero & (digits <= 24 * np.log10(2) - 4)
    assert 0.85 * possible.sum() <= count(result, "cancellation", "quadratic") <= possible.sum()
    # sqrt(|d|): CADNA's cadna_math.cc flags sqrt of a non-significant argument (approx_digit)
    absd = np.abs(np.asarray(result.samples["quadratic"]["d"]))
    noise = ((np.asarray(significant_digits(jnp.asarray(absd))) < 0.5)
             & ~np.all(absd == absd[:1], axis=0))
    assert abs(count(result, "math_function", "quadratic") - int(noise.sum())) <= 2
    assert int(noise.sum()) >= int(zero.sum()) // 2


def test_quadratic_branch_on_d_is_unstable(fp32_run):
    """``d > 0`` with d non-significant is an unstable branching; ``d == 0`` is not
    [CADNA-ops]: ``cadna_gt.h`` counts ``numericalnoise()`` of the difference, ``cadna_eq.h``
    counts nothing. (A non-significant d has C < 0.5, CADNA's approx_digit test, so every
    computational zero (C <= 0) is one, and a few with 0 < C < 0.5 too.)"""
    zero = int(np.sum(fp32_run.computational_zero["quadratic"]["d"]))
    found = [i for i in fp32_run.instabilities if i.kind == "branching"
             and "(quadratic)" in i.source]
    assert [i.primitive for i in found] == ["gt"]
    digits = np.asarray(fp32_run.digits["quadratic"]["d"])
    samples = np.asarray(fp32_run.samples["quadratic"]["d"])
    noise = (digits < 0.5) & ~np.all(samples == samples[:1], axis=0)
    assert found[0].count == int(noise.sum()) >= zero


def test_quadratic_takes_the_double_root_branch(fp32_run):
    """Stochastic comparisons, as CADNA's: when d is a computational zero, ``d == 0`` holds in
    every sample and the program finds the double root 3.5 with single precision's digits;
    whatever d is, all samples of a run take the same branch."""
    zero = np.asarray(fp32_run.computational_zero["quadratic"]["d"])
    branch = np.asarray(fp32_run.samples["quadratic"]["branch"])
    assert np.all(branch == branch[0])
    assert np.all(branch[:, zero] == 0.0)
    for root in ("x1", "x2"):
        assert np.all(np.asarray(fp32_run.digits["quadratic"][root])[zero] >= 6.0)
        np.testing.assert_allclose(np.asarray(fp32_run.mean["quadratic"][root])[zero], 3.5,
                                   rtol=1e-6)


def test_per_sample_comparisons_let_the_samples_diverge():
    """With ``comparisons="per_sample"`` each sample compares its own d with 0: in some runs the
    samples take different branches, and x2 (a complex root's imaginary part in one sample,
    3.5 in another) has no exact digit there: the divergence stochastic comparisons prevent."""
    coefficients = [np.full(REPLICAS, np.float32(v)) for v in (0.3, -2.1, 3.675)]
    result = analyze(quadratic, *coefficients, fmt="fp32", samples=SAMPLES,
                     key=jax.random.key(0), comparisons="per_sample")
    branch = np.asarray(result.samples["branch"])
    diverged = ~np.all(branch == branch[0], axis=0)
    assert diverged.any()
    assert np.all(np.asarray(result.digits["x2"])[diverged] < 1.0)


# --- ex3: the determinant of Hilbert's matrix -----------------------------------------------------

HILBERT_PIVOT_DIGITS = [15, 15, 14, 13, 11, 9, 8, 7, 5, 4, 2]  # [CADNA-3.1.11] hilbert_cad.cc
HILBERT_DET_DIGITS = 2  # "Determinant =  0.30E-064"


def test_hilbert_gradual_loss_of_digits(fp64_run):
    """[CADNA-3.1.11] hilbert_cad.cc: pivots 0.100000000000000E+001 … 0.13E-011 (digits
    15, 15, 14, 13, 11, 9, 8, 7, 5, 4, 2), ``Determinant = 0.30E-064``, ``No instability
    detected``. The estimate does not overstate: the mean's error against the exact determinant
    of the matrix 1/(i+j-1) is below 10**(1 - digits)."""
    digits = np.asarray(fp64_run.digits["hilbert"]["pivots"])
    assert within_one_digit(digits, HILBERT_PIVOT_DIGITS).all(), digits
    det_digits = float(fp64_run.digits["hilbert"]["det"])
    assert within_one_digit(det_digits, HILBERT_DET_DIGITS), det_digits
    h = [[Fraction(1, i + j - 1) for j in range(1, 12)] for i in range(1, 12)]
    exact = Fraction(1)
    for i in range(11):  # exact elimination
        exact *= h[i][i]
        for j in range(i + 1, 11):
            factor = h[j][i] / h[i][i]
            h[j] = [hj - factor * hi for hj, hi in zip(h[j], h[i], strict=True)]
    assert float(exact) == pytest.approx(3.0190953344493e-65, rel=1e-12)
    error = abs(Fraction(float(fp64_run.mean["hilbert"]["det"])) - exact) / exact
    assert error <= 10.0 ** (1 - det_digits)
    assert count(fp64_run, "multiplication", "hilbert") == 0
    assert count(fp64_run, "division", "hilbert") == 0
    assert count(fp64_run, "cancellation", "hilbert") == 0


# --- ex4: Muller's recurrence ---------------------------------------------------------------------

# [CADNA-3.1.11] muller_cad.cc, U(2) … U(30): 0.55901639344262E+001 (14 digits) … 0.59E+001 (2),
# U(13) = U(14) = U(15) = @.0, then 0.9E+002 (1) … 0.100000000000000E+003 (15).
MULLER_DIGITS = [14, 13, 11, 10, 9, 8, 6, 5, 4, 3, 2, 0, 0, 0,
                 1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 15, 15]


def test_muller_digits_per_iteration(fp64_run):
    """The digits decrease about 1.2 per iteration (log10 of 100/6), none are left around
    U(13)-U(15), and the sequence then converges to 100, not to the exact limit 6."""
    digits = np.asarray(fp64_run.digits["muller"])
    ok = within_one_digit(digits, MULLER_DIGITS)
    assert ok.all(), [(n + 2, round(float(d), 1), p) for n, (d, p, good)
                      in enumerate(zip(digits, MULLER_DIGITS, ok, strict=True)) if not good]
    assert 12 <= int(np.argmin(digits)) + 2 <= 16  # no digit left at U(13)…U(15) (± 1)
    assert np.any(np.asarray(fp64_run.computational_zero["muller"])[10:14])
    assert float(fp64_run.mean["muller"][-1]) == pytest.approx(100.0)


def test_muller_unstable_divisions_and_multiplications(fp64_run):
    """[CADNA-3.1.11] muller_cad.cc: ``CRITICAL WARNING: the self-validation detects major
    problem(s)``, ``6 UNSTABLE DIVISION(S)``, ``2 UNSTABLE MULTIPLICATION(S)``: 1130/U(n) and
    3000/(U(n)U(n-1)) divide by computational zeros, and U(n)U(n-1) multiplies two. dp2ejax
    finds the same kinds at the same operations; how many depends on how many of U(12)…U(16) the
    samples make computational zeros (CADNA: 3), hence the ranges."""
    divisions = [i for i in fp64_run.instabilities
                 if i.kind == "division" and "(muller" in i.source]
    products = [i for i in fp64_run.instabilities
                if i.kind == "multiplication" and "(muller" in i.source]
    assert {i.primitive for i in divisions} == {"div"}
    assert {i.primitive for i in products} == {"mul"}
    assert len(divisions) == 2  # both divisions of the recurrence
    assert 3 <= sum(i.count for i in divisions) <= 9
    assert 1 <= sum(i.count for i in products) <= 3
    assert count(fp64_run, "cancellation", "muller") == 0
    assert count(fp64_run, "branching", "muller") == 0


# --- ex5: Newton's method on a double root --------------------------------------------------------

# [CADNA-3.1.11] newton_cad.cc, x(1) … x(24): 0.464864864864864E+000 (15) … 0.42857143E+000 (8)
NEWTON_DIGITS = [15, 15, 14, 14, 14, 13, 13, 13, 12, 12, 12, 11, 11, 11, 11, 11, 10, 9, 9, 9, 9,
                 9, 8, 8]


def test_newton_loses_half_the_digits_at_a_double_root(fp64_run):
    """[CADNA-3.1.11] newton_cad.cc: the iterates keep fewer and fewer digits, down to 8 at
    x(24) = 0.42857143E+000 (3/7 = 0.428571428571…), and diff = |x - y| is @.0 at x(24).
    [CADNA-web] ex5.php: "7 significant digits have been lost (despite the apparent stability)".
    CADNA counts 45 cancellations (``45 LOSS(ES) OF ACCURACY DUE TO CANCELLATION(S)``)."""
    digits = np.asarray(fp64_run.digits["newton"]["x"])
    assert within_one_digit(digits, NEWTON_DIGITS).all(), digits
    assert float(fp64_run.mean["newton"]["x"][-1]) == pytest.approx(3 / 7, abs=1e-7)
    assert within_one_digit(np.asarray(fp64_run.digits["newton"]["diff"])[-1], 0)
    cancellations = count(fp64_run, "cancellation", "newton")
    assert 30 <= cancellations <= 60, cancellations
    assert count(fp64_run, "division", "newton") == 0


# --- ex6: a linear system by Gaussian elimination with partial pivoting ---------------------------

# [CADNA-web] ex6.php: 0.999E+00, 0.1000E+01, 0.999999E-08, 0.1000000E+01
GAUSS_DIGITS = [3, 4, 6, 7]


def test_gauss_without_stochastic_arithmetic():
    """[CADNA-web] ex6.php, without CADNA: x_sol = 0.6261987E+02, -0.8953979E+01, 0.0000000E+00,
    0.9999999E+00 (exact 1, 1, 1e-8, 1). Checks this JAX port of the program in IEEE single."""
    x = np.asarray(jax.jit(gauss)(jnp.asarray(GAUSS_SYSTEM)))
    np.testing.assert_allclose(x, [62.61987, -8.953979, 0.0, 0.9999999], rtol=2e-7)


def test_gauss_pivot_is_a_computational_zero(fp32_run):
    """[CADNA-web] ex6.php: "During the reduction of the third column, A(3,3) is equal to 4864.
    But the exact value of A(3,3) is zero"; CADNA reports ``1 UNSTABLE BRANCHING(S)`` (the
    pivot search), ``1 UNSTABLE INTRINSIC FUNCTION(S)`` (fabsf of @.0: no such kind in
    dp2ejax) and ``1 LOSS(ES) OF ACCURACY DUE TO CANCELLATION(S)``. x_sol(4) keeps 7 digits."""
    branching = [i for i in fp32_run.instabilities if i.kind == "branching"
                 and "(gauss" in i.source]
    assert len(branching) == 1 and branching[0].primitive == "gt"
    assert branching[0].count >= 1
    assert count(fp32_run, "cancellation", "gauss") == 1
    digits = np.asarray(fp32_run.digits["gauss"])
    assert within_one_digit(digits[3], GAUSS_DIGITS[3])


def test_gauss_solution_digits(fp32_run):
    """[CADNA-web] ex6.php with CADNA: x_sol = 0.999E+00, 0.1000E+01, 0.999999E-08,
    0.1000000E+01 (3, 4, 6, 7 digits). The stochastic comparison ``fabsf(A(3,3)) > pmax`` finds
    the noise in A(3,3) (~4864, exact value 0) not significantly larger than 1.7: the
    computational zero is not chosen as pivot and the system is solved."""
    digits = np.asarray(fp32_run.digits["gauss"])
    assert within_one_digit(digits, GAUSS_DIGITS).all(), digits
    np.testing.assert_allclose(fp32_run.mean["gauss"], GAUSS_SOLUTION, rtol=1e-2)


def test_computational_zeros_agree_with_digits(fp64_run, fp32_run):
    for result in (fp64_run, fp32_run):
        for samples, digits, zero in zip(jax.tree_util.tree_leaves(result.samples),
                                         jax.tree_util.tree_leaves(result.digits),
                                         jax.tree_util.tree_leaves(result.computational_zero),
                                         strict=True):
            np.testing.assert_array_equal(zero, computational_zero(samples, 0, digits))
