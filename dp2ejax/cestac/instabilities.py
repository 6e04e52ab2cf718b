"""Detection of numerical instabilities during a CESTAC run, as CADNA reports them.

The samples of a CESTAC run are the lanes of a ``vmap`` with a named axis, so at every operation
the observer sees each sample's operands and result and can take statistics across samples with
collectives (``lax.pmean``). It counts, per operation site, the elements where:

- ``multiplication``: both factors are computational zeros;
- ``division``: the divisor is a computational zero;
- ``branching``: a comparison's operands differ by a computational zero (the branch taken may
  differ between samples: the program's control flow is not reliable);
- ``math_function``: log, sqrt, pow… of a computational zero;
- ``cancellation``: an addition or subtraction whose nonzero result is at least ``10**k`` times
  smaller than its larger operand in some sample, so that its ``k`` leading digits cancel (the
  result loses k digits of the operands' accuracy). Results that are exactly zero in every
  sample are not cancellations but exact results.

A site is a primitive at a module path and a source line.

Comparisons are, by default, those of discrete stochastic arithmetic (Vignes; CADNA's relational
operators): ``a == b`` holds when ``a - b`` is a computational zero, ``a > b`` when the mean of
``a - b`` is positive and ``a - b`` is not a computational zero, and so on. Every sample then
takes the same branch, as the one stochastic number of CADNA does. ``comparisons="per_sample"``
lets each sample compare its own values instead (the program as plain floats would run it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from dp2ejax.arith.emulate import module_path
from dp2ejax.cestac.digits import student_t_975

INSTABILITY_KINDS: tuple[str, ...] = (
    "multiplication", "division", "branching", "math_function", "cancellation",
)
_COMPARISONS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
_MATH_FUNCTIONS = frozenset({
    "log", "log1p", "sqrt", "rsqrt", "cbrt", "pow", "asin", "acos", "atanh", "acosh", "lgamma",
    "digamma",
})
_ADDITIVE = frozenset({"add", "sub", "add_any"})
COMPARISON_MODES: tuple[str, ...] = ("stochastic", "per_sample")


@dataclasses.dataclass(frozen=True)
class Instability:
    """A detected instability: ``count`` elements at one operation site."""

    kind: str
    primitive: str
    path: str
    source: str
    count: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def source_location(eqn) -> str:
    """``file:line (function)`` of the user code that created a jaxpr equation."""
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - private API; a missing location must not stop analysis
        return "<unknown>"


def site_key(kind: str, primitive: str, path: str, source: str) -> str:
    return "\x1f".join((kind, primitive, path, source))


def parse_site(key: str, count: int) -> Instability:
    kind, primitive, path, source = key.split("\x1f")
    return Instability(kind, primitive, path, source, count)


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
        self.counts: dict[str, jax.Array] = {}

    def child(self) -> InstabilityObserver:
        return InstabilityObserver(self.axis_name, self.samples, self.cancellation_digits,
                                   self.max_digits, self.comparisons)

    def add(self, counts: dict[str, jax.Array]) -> None:
        for site, count in counts.items():
            self.counts[site] = self.counts.get(site, jnp.zeros((), jnp.int32)) + count

    # --- statistics across samples -------------------------------------------------------------

    def digits(self, x: jax.Array) -> jax.Array:
        """CESTAC digits of x's mean over the sample axis (per element, same in every lane)."""
        x = jnp.asarray(x)
        n = self.samples
        mean = lax.pmean(x, self.axis_name)
        var = lax.pmean(jnp.square(x - mean), self.axis_name) * (n / (n - 1))
        # Equal samples are exact (the rounded pmean alone could differ from them by an ulp).
        equal = (lax.pmax(x, self.axis_name) == lax.pmin(x, self.axis_name)) & jnp.isfinite(x)
        mean = jnp.where(equal, x, mean)
        std = jnp.where(equal, 0.0, jnp.sqrt(var))
        tau = student_t_975(n - 1)
        safe = jnp.where(std > 0, std, 1)
        digits = jnp.log10(math.sqrt(n) * jnp.abs(mean) / (tau * safe))
        digits = jnp.where(std == 0, jnp.where(mean == 0, 0.0, self.max_digits), digits)
        return jnp.clip(jnp.nan_to_num(digits, nan=0.0, neginf=0.0), 0.0, self.max_digits)

    def is_zero(self, x: jax.Array) -> jax.Array:
        """Computational zero: every sample zero or no exact digit."""
        x = jnp.asarray(x)
        all_zero = lax.pmin(jnp.where(x == 0, 1, 0), self.axis_name) == 1
        return all_zero | (self.digits(x) <= 0)

    # --- recording -----------------------------------------------------------------------------

    def stochastic_comparison(self, name: str, difference: jax.Array, zero: jax.Array):
        """The relation ``name`` ("lt", "eq", …) of two stochastic numbers whose difference
        (per sample) is ``difference`` and is a computational zero where ``zero``."""
        sign = lax.pmean(difference, self.axis_name)
        positive, negative = (sign > 0) & ~zero, (sign < 0) & ~zero
        return {"eq": zero, "ne": ~zero, "gt": positive, "lt": negative,
                "ge": positive | zero, "le": negative | zero}[name]

    def record(self, eqn, path: str, operands, outputs) -> list[jax.Array] | None:
        """Counts the instabilities of one operation; returns the stochastic result of a
        comparison (see the module docstring), None otherwise."""
        name = eqn.primitive.name
        floats = [o for o in operands if jnp.issubdtype(jnp.result_type(o), jnp.floating)]
        if name == "mul" and len(floats) == 2:
            flags = self.is_zero(floats[0]) & self.is_zero(floats[1])
            self._count("multiplication", eqn, path, flags)
        elif name == "div" and len(floats) == 2:
            self._count("division", eqn, path, self.is_zero(floats[1]))
        elif name in _COMPARISONS and len(floats) == 2:
            difference = floats[0] - floats[1]
            zero = self.is_zero(difference)
            self._count("branching", eqn, path, zero)
            if self.comparisons == "stochastic":
                return [self.stochastic_comparison(name, difference, zero)]
        elif name in _MATH_FUNCTIONS and floats:
            self._count("math_function", eqn, path, self.is_zero(floats[0]))
        elif name in _ADDITIVE and len(floats) == 2 and outputs:
            # Digits lost to cancellation: log10 of the larger operand's magnitude over the
            # result's, in this sample (no cross-sample statistics: cheap on every addition).
            larger = jnp.maximum(jnp.abs(floats[0]), jnp.abs(floats[1]))
            result = jnp.abs(outputs[0])
            threshold = 10.0 ** self.cancellation_digits
            flags = (larger > 0) & (larger >= threshold * result) & (result > 0)
            self._count("cancellation", eqn, path, lax.pmax(flags.astype(jnp.int32),
                                                            self.axis_name) == 1)
        return None

    def _count(self, kind: str, eqn, path: str, flags: jax.Array) -> None:
        key = site_key(kind, eqn.primitive.name, path or module_path(eqn), source_location(eqn))
        count = jnp.sum(flags, dtype=jnp.int32)
        self.counts[key] = self.counts.get(key, jnp.zeros((), jnp.int32)) + count
