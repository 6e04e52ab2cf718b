"""Detection of numerical instabilities during a CESTAC run, as CADNA reports them.

The samples of a CESTAC run are the lanes of a ``vmap`` with a named axis, so at every operation
the observer sees each sample's operands and result and can take statistics across samples with
collectives (``lax.pmean``). The rules are CADNA's own (CADNA_C 2.0 sources, vendored in
github.com/bgin/LibAtmosCXX ``ThirdParty/cadna/``, commit 308b678; files named below). A value is
*non-significant* when CADNA's ``approx_digit()`` gives it accuracy 0: its samples are not all
equal and it has less than half an exact digit (C < 0.5; their test ``yy > 0.1``), or they sum to
zero without being equal. Exact values (all samples equal, exact zeros included) and non-finite
ones are never non-significant. Per operation site, the observer counts the elements where:

- ``multiplication``: both factors are non-significant (``cadna_mul.h``);
- ``division``: the divisor is non-significant (``cadna_div.h``);
- ``branching``: an order comparison (``<``, ``<=``, ``>``, ``>=``) of two values whose difference
  is non-significant: the branch taken may differ between samples (``cadna_lt.h`` …, with
  ``numericalnoise()``). ``==`` and ``!=`` are never unstable in CADNA (``cadna_eq.h``), so
  comparing an exact mask to 0 is not;
- ``math_function``: an elementary function (log, sqrt, exp, sin, tanh, pow…, CADNA's list in
  ``cadna_math.cc``) of a non-significant argument (for ``pow``, of either argument);
- ``cancellation``: an addition or subtraction whose result has at least ``k`` fewer exact digits
  than the less accurate of its operands: ``min(C_a, C_b) - C_result >= k`` (``cadna_add.h``,
  ``cadna_sub.h``; CADNA's default k = 4).
  Exact results keep every digit and are never cancellations. Each site keeps a histogram of
  the digits lost (one-digit bins), so it can say the fewest and the median lost; it is
  *benign* when its result feeds only exponentials (``exp``, ``exp2``, ``logistic``, through
  data movement), as the ``x - max(x)`` of a softmax does: there the small result's absolute
  error, which the cancellation does not increase, is what reaches the exponential's result.

A site is a primitive at a module path and a source line.

Comparisons are, by default, those of discrete stochastic arithmetic (Vignes; CADNA's relational
operators): ``a == b`` holds when ``a - b`` is a computational zero (CADNA's ``computedzero()``:
no exact digit, or an exact zero), ``a > b`` when the mean of ``a - b`` is positive and ``a - b``
is not one, and so on. Every sample then takes the same branch, as the one stochastic number of
CADNA does. ``comparisons="per_sample"`` lets each sample compare its own values instead (the
program as plain floats would run it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.emulate import source_location
from dp2ejax.cestac.digits import student_t_975

INSTABILITY_KINDS: tuple[str, ...] = (
    "multiplication", "division", "branching", "math_function", "cancellation",
)
_ORDER_COMPARISONS = frozenset({"lt", "le", "gt", "ge"})
_COMPARISONS = frozenset({*_ORDER_COMPARISONS, "eq", "ne"})
_MATH_FUNCTIONS = frozenset({
    "log", "log1p", "exp", "exp2", "expm1", "sqrt", "rsqrt", "cbrt", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "integer_pow", "rem",
})
_ADDITIVE = frozenset({"add", "sub", "add_any"})
BENIGN_CONSUMERS = frozenset({"exp", "exp2", "logistic"})
COMPARISON_MODES: tuple[str, ...] = ("stochastic", "per_sample")
_SEP = "\x1f"


@dataclasses.dataclass(frozen=True)
class Instability:
    """A detected instability: ``count`` elements at one operation site.

    For cancellations, ``digits_lost_min`` and ``digits_lost_median`` (whole digits, from a
    one-digit histogram) say how many exact digits the site's results lost, and ``benign``
    whether the site feeds only exponentials (see the module docstring).
    """

    kind: str
    primitive: str
    path: str
    source: str
    count: int
    digits_lost_min: float | None = None
    digits_lost_median: float | None = None
    benign: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def site_key(kind: str, primitive: str, path: str, source: str, benign: bool = False) -> str:
    return _SEP.join((kind, primitive, path, source, "benign" if benign else ""))


def parse_site(key: str, count) -> Instability:
    """The :class:`Instability` of a site key and its count (an int, or for cancellations the
    histogram of digits lost: bin i counts results that lost i to i + 1 digits)."""
    kind, primitive, path, source, benign = key.split(_SEP)
    counts = np.atleast_1d(np.asarray(count, np.int64))
    total = int(counts.sum())
    lost_min = lost_median = None
    if counts.size > 1 and total:
        nonzero = np.flatnonzero(counts)
        lost_min = float(nonzero[0])
        lost_median = float(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return Instability(kind, primitive, path, source, total, lost_min, lost_median,
                       benign == "benign")


class InstabilityObserver:
    """Counts instabilities inside ``vmap(..., axis_name=axis_name)`` over ``samples`` lanes."""

    def __init__(self, axis_name: str, samples: int, cancellation_digits: float,
                 max_digits: float, comparisons: str = "stochastic"):
        if comparisons not in COMPARISON_MODES:
            raise ValueError(f"comparisons must be one of {COMPARISON_MODES}, got {comparisons!r}")
        self.axis_name = axis_name
        self.samples = samples
        self.cancellation_digits = cancellation_digits
        self.max_digits = max_digits
        self.comparisons = comparisons
        self.bins = int(math.ceil(max_digits)) + 1
        self.counts: dict[str, jax.Array] = {}
        self._digits: dict[int, tuple[jax.Array, jax.Array]] = {}

    def child(self) -> InstabilityObserver:
        return InstabilityObserver(self.axis_name, self.samples, self.cancellation_digits,
                                   self.max_digits, self.comparisons)

    def add(self, counts: dict[str, jax.Array]) -> None:
        for site, count in counts.items():
            self.counts[site] = self.counts.get(site, 0) + count

    # --- statistics across samples -------------------------------------------------------------

    def _exact(self, x: jax.Array) -> jax.Array:
        """All samples equal and finite (an exact result)."""
        return (lax.pmax(x, self.axis_name) == lax.pmin(x, self.axis_name)) & jnp.isfinite(x)

    def digits(self, x: jax.Array) -> jax.Array:
        """CESTAC digits of x's mean over the sample axis (per element, same in every lane):
        ``max_digits`` for exact results, 0 for non-finite ones."""
        x = jnp.asarray(x)
        memo = self._digits.get(id(x))
        if memo is not None and memo[0] is x:
            return memo[1]
        n = self.samples
        mean = lax.pmean(x, self.axis_name)
        var = lax.pmean(jnp.square(x - mean), self.axis_name) * (n / (n - 1))
        exact = self._exact(x)
        tau = student_t_975(n - 1)
        safe = jnp.where(exact | (var <= 0), 1, jnp.sqrt(var))
        digits = jnp.log10(math.sqrt(n) * jnp.abs(mean) / (tau * safe))
        digits = jnp.where(exact, self.max_digits, digits)
        finite = lax.pmin(jnp.isfinite(x).astype(jnp.int32), self.axis_name) == 1
        digits = jnp.where(finite, digits, 0.0)
        digits = jnp.clip(jnp.nan_to_num(digits, nan=0.0, neginf=0.0), 0.0, self.max_digits)
        self._digits[id(x)] = (x, digits)
        return digits

    def non_significant(self, x: jax.Array) -> jax.Array:
        """CADNA's ``approx_digit() == 0``: not exact, finite, and under half a digit."""
        x = jnp.asarray(x)
        finite = lax.pmin(jnp.isfinite(x).astype(jnp.int32), self.axis_name) == 1
        return finite & ~self._exact(x) & (self.digits(x) < 0.5)

    def is_zero(self, x: jax.Array) -> jax.Array:
        """CADNA's ``computedzero()`` (which decides ``==``): an exact zero, or no exact digit."""
        x = jnp.asarray(x)
        all_zero = lax.pmin(jnp.where(x == 0, 1, 0), self.axis_name) == 1
        finite = lax.pmin(jnp.isfinite(x).astype(jnp.int32), self.axis_name) == 1
        return all_zero | (finite & (self.digits(x) <= 0))

    # --- recording -----------------------------------------------------------------------------

    def stochastic_comparison(self, name: str, difference: jax.Array, zero: jax.Array):
        """The relation ``name`` ("lt", "eq", …) of two stochastic numbers whose difference
        (per sample) is ``difference`` and is a computational zero where ``zero``."""
        sign = lax.pmean(difference, self.axis_name)
        positive, negative = (sign > 0) & ~zero, (sign < 0) & ~zero
        return {"eq": zero, "ne": ~zero, "gt": positive, "lt": negative,
                "ge": positive | zero, "le": negative | zero}[name]

    def record(self, eqn, path: str, operands, outputs, info=None) -> list[jax.Array] | None:
        """Counts the instabilities of one operation; returns the stochastic result of a
        comparison (see the module docstring), None otherwise."""
        name = eqn.primitive.name
        floats = [o for o in operands if jnp.issubdtype(jnp.result_type(o), jnp.floating)]
        if name in ("mul", "square") and floats:
            second = floats[1] if len(floats) == 2 else floats[0]
            flags = self.non_significant(floats[0]) & self.non_significant(second)
            self._count("multiplication", eqn, path, flags)
        elif name == "div" and len(floats) == 2:
            self._count("division", eqn, path, self.non_significant(floats[1]))
        elif name in _COMPARISONS and len(floats) == 2:
            difference = floats[0] - floats[1]
            if name in _ORDER_COMPARISONS:
                self._count("branching", eqn, path, self.non_significant(difference))
            if self.comparisons == "stochastic":
                return [self.stochastic_comparison(name, difference, self.is_zero(difference))]
        elif name == "pow" and len(floats) == 2:
            flags = self.non_significant(floats[0]) | self.non_significant(floats[1])
            self._count("math_function", eqn, path, flags)
        elif name in _MATH_FUNCTIONS and floats:
            self._count("math_function", eqn, path, self.non_significant(floats[0]))
        elif name in _ADDITIVE and len(floats) == 2 and outputs:
            self._cancellation(eqn, path, floats, outputs[0], info)
        return None

    def _cancellation(self, eqn, path, operands, result, info) -> None:
        a, b = (jnp.broadcast_to(o, jnp.shape(result)) for o in operands)
        lost = jnp.minimum(self.digits(a), self.digits(b)) - self.digits(result)
        flags = lost >= self.cancellation_digits
        bins = jnp.clip(jnp.floor(lost), 0, self.bins - 1).astype(jnp.int32)
        onehot = (bins[..., None] == jnp.arange(self.bins, dtype=jnp.int32)) & flags[..., None]
        histogram = jnp.sum(onehot.reshape(-1, self.bins), axis=0, dtype=jnp.int32)
        consumers = getattr(info, "consumers", None)
        benign = bool(consumers) and consumers <= BENIGN_CONSUMERS
        self._add(site_key("cancellation", eqn.primitive.name, path, source_location(eqn),
                           benign), histogram)

    def _count(self, kind: str, eqn, path: str, flags: jax.Array) -> None:
        key = site_key(kind, eqn.primitive.name, path, source_location(eqn))
        self._add(key, jnp.sum(flags, dtype=jnp.int32))

    def _add(self, key: str, count: jax.Array) -> None:
        self.counts[key] = self.counts.get(key, 0) + count
