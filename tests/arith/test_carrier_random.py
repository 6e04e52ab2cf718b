"""Random rounding at the carrier's own precision (fp64 in float64, fp32 in float32).

The side of the exact result is checked against exact rational arithmetic (fractions.Fraction)
for add, sub, mul, div and sqrt; the random result is then one of the two neighbours that
bracket the exact value, each about half the time, and exact results are never moved.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dp2ejax import PrecisionPolicy, emulate
from dp2ejax.arith.carrier_random import exact_side, random_round_at_carrier
from dp2ejax.arith.random_bits import random_bits


def _q(x) -> Fraction:
    return Fraction(float(x))  # exact: every float32/float64 is a float


N_EXACT = 2000  # elements checked with Fractions per op (slow in Python)

OPS = {
    "add": (np.add, lambda a, b: _q(a) + _q(b)),
    "sub": (np.subtract, lambda a, b: _q(a) - _q(b)),
    "mul": (np.multiply, lambda a, b: _q(a) * _q(b)),
    "div": (np.divide, lambda a, b: _q(a) / _q(b)),
}


def _operands(dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(N_EXACT) * np.exp2(rng.integers(-20, 20, N_EXACT))
    b = rng.standard_normal(N_EXACT)
    b[:50] = np.exp2(rng.integers(-5, 5, 50))  # exact products/quotients among them
    a[50:100] = np.round(a[50:100])  # small integers: exact sums
    b[50:100] = np.round(b[50:100] * 8) / 8
    b[b == 0] = 0.5
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_exact_side_matches_rational_arithmetic(name, dtype):
    numpy_op, exact = OPS[name]
    a, b = _operands(dtype)
    out = numpy_op(a, b)
    side = np.asarray(jax.jit(lambda x, y, o: exact_side(name, [x, y], o))(a, b, out))
    expected = np.array([np.sign(exact(x, y) - _q(o)) for x, y, o in zip(a, b, out, strict=False)])
    np.testing.assert_array_equal(side, expected)
    assert (expected == 0).any() and (expected != 0).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_side_of_sqrt(dtype):
    a = np.abs(_operands(dtype)[0])
    a[:20] = np.arange(20, dtype=dtype) ** 2  # perfect squares
    out = np.sqrt(a)
    side = np.asarray(jax.jit(lambda x, o: exact_side("sqrt", [x], o))(a, out))
    expected = np.array([np.sign(_q(x) - _q(o) ** 2) for x, o in zip(a, out, strict=False)])
    np.testing.assert_array_equal(side, expected)


def test_random_rounding_picks_the_bracketing_neighbours_half_the_time():
    n = 1 << 16
    a = jnp.full((n,), 1.0, jnp.float64)
    b = jnp.full((n,), 1e-17, jnp.float64)  # 1 + 1e-17 rounds to 1; the exact sum is above
    out = a + b
    bits = random_bits(jax.random.key(3), (n,), jnp.float64)
    r = np.asarray(random_round_at_carrier("add", [a, b], out, bits))
    up = np.nextafter(1.0, 2.0)
    assert set(np.unique(r)) == {1.0, up}
    frac = np.mean(r == up)
    assert abs(frac - 0.5) < 5 * 0.5 / np.sqrt(n)  # 5 sigma of a fair coin


def test_unknown_side_moves_at_most_one_ulp():
    n = 1 << 14
    x = jnp.linspace(0.1, 3.0, n, dtype=jnp.float64)
    out = jnp.exp(x)
    bits = random_bits(jax.random.key(4), (n,), jnp.float64)
    r = np.asarray(random_round_at_carrier("exp", [x], out, bits))
    o = np.asarray(out)
    moved = r != o
    assert np.all((r == np.nextafter(o, np.inf)) | (r == np.nextafter(o, -np.inf)) | ~moved)
    assert abs(moved.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)


def test_emulate_fp64_random_keeps_exact_results_and_perturbs_inexact_ones():
    policy = PrecisionPolicy.uniform("fp64", "random")
    f = jax.jit(emulate(lambda x, y: (x + y, x / 3.0), policy))
    x, y = jnp.float64(0.5), jnp.float64(0.25)
    sums, thirds = zip(*(f(x, y, rounding_key=jax.random.key(i)) for i in range(16)), strict=False)
    assert all(float(s) == 0.75 for s in sums)  # exact: never moved
    third = 0.5 / 3.0
    values = {float(t) for t in thirds}
    below = third if Fraction(third) < Fraction(1, 6) else np.nextafter(third, 0.0)
    assert values == {below, np.nextafter(below, 1.0)}  # the two neighbours of 1/6


def test_directed_mode_at_the_carrier_precision_is_refused():
    policy = PrecisionPolicy.uniform("fp64", "up")
    with pytest.raises(ValueError, match="wider"):
        emulate(lambda x: x / 3.0, policy)(jnp.float64(1.0))
