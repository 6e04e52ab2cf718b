"""What a policy did to a run: the emulation trace of ``emulate(fn, policy, trace=True)``.

For every operation the policy rounds (a *site*: primitive, module path, operation kind, format,
rounding mode and source line) the trace counts, over all its executions (loop iterations
included), the values that

- ``overflow``: were finite before rounding and are not after (inf, or NaN in a format without
  infinities such as fp8_e4m3);
- ``saturated``: lay beyond the format's largest finite value and were clamped to it (rules with
  ``saturate=True``, and program constants rounded as operands);
- ``underflow``: were nonzero and rounded to zero;
- ``nan``: are NaN although no operand was (``inf - inf``, ``0 * inf``, an overflow to NaN);
- ``nonfinite``: are inf or NaN although the operands were finite: where non-finite values are
  *created* (the first such site in program order is the origin of a NaN that spreads).

It also lists how many operations each (path, kind, format, mode) has. The trace is a pytree
(its counts are arrays), so it can be returned from ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.arith.emulate import _is_float, _nonfinite_new, source_location
from dp2ejax.arith.formats import FloatFormat

COUNT_NAMES: tuple[str, ...] = ("overflow", "saturated", "underflow", "nan", "nonfinite")


class NonFiniteWarning(UserWarning):
    """An emulated run created inf or NaN from finite operands."""


@dataclasses.dataclass(frozen=True)
class TraceSite:
    """One rounded operation of the program (all its executions)."""

    path: str
    primitive: str
    kind: str
    format: str
    mode: str
    source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (f"{self.primitive} at {self.path or '<top level>'} ({self.kind}, {self.format} "
                f"{self.mode}), {self.source}")


_SEP = "\x1f"


def _site_key(site: TraceSite) -> str:
    return _SEP.join(dataclasses.astuple(site))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class EmulationTrace:
    """The trace of one emulated run (see the module docstring).

    Attributes:
      sites: the rounded operations, in program order.
      counts: int32 array ``[len(sites), 5]``, columns :data:`COUNT_NAMES`.
      rule_counts: ``(path, kind, format, mode, operations)`` rows: which rule each operation
        used (a matmul counts once per role: lhs, rhs, inputs, accumulation).

    Example:
      >>> import jax.numpy as jnp
      >>> from dp2ejax import emulate
      >>> _, t = emulate(lambda x: x * 1e-30, "bf16", trace=True)(jnp.array([1e-10, 1.0]))
      >>> t.totals()["underflow"], t.sites[0].primitive
      (1, 'mul')
    """

    sites: tuple[TraceSite, ...]
    counts: Any
    rule_counts: tuple[tuple[str, str, str, str, int], ...] = ()

    def tree_flatten(self):
        return (self.counts,), (self.sites, self.rule_counts)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0], aux[1])

    def _host_counts(self) -> np.ndarray:
        return np.asarray(self.counts, np.int64).reshape(len(self.sites), len(COUNT_NAMES))

    def totals(self) -> dict[str, int]:
        """Each count summed over all sites."""
        counts = self._host_counts()
        return {name: int(counts[:, i].sum()) for i, name in enumerate(COUNT_NAMES)}

    def site_counts(self) -> list[tuple[TraceSite, dict[str, int]]]:
        """(site, counts) for every site, in program order."""
        counts = self._host_counts()
        return [(site, {n: int(c) for n, c in zip(COUNT_NAMES, row, strict=True)})
                for site, row in zip(self.sites, counts, strict=True)]

    def first_nonfinite(self) -> TraceSite | None:
        """The first site (in program order) that created inf or NaN from finite operands."""
        column = COUNT_NAMES.index("nonfinite")
        for site, row in zip(self.sites, self._host_counts(), strict=True):
            if row[column] > 0:
                return site
        return None

    def warn_nonfinite(self) -> bool:
        """Warns (:class:`NonFiniteWarning`) about the first site that created a non-finite
        value; does nothing under a trace (inside ``jit``). Returns whether it warned."""
        try:
            site = self.first_nonfinite()
        except jax.errors.TracerArrayConversionError:
            return False
        if site is None:
            return False
        counts = dict(self.site_counts())[site]
        warnings.warn(f"emulation created {counts['nonfinite']} non-finite value(s) first at "
                      f"{site.describe()}", NonFiniteWarning, stacklevel=3)
        return True

    def to_dict(self) -> dict:
        return {
            "totals": self.totals(),
            "first_nonfinite": (None if self.first_nonfinite() is None
                                else self.first_nonfinite().to_dict()),
            "sites": [{**site.to_dict(), **counts} for site, counts in self.site_counts()],
            "rules": [dict(zip(("path", "kind", "format", "mode", "operations"), row,
                               strict=True)) for row in self.rule_counts],
        }

    def summary(self, top: int = 10) -> str:
        """A short text report: totals, the first non-finite site, the sites with the most
        overflows/NaNs/underflows."""
        totals = self.totals()
        lines = [f"emulation trace: {len(self.sites)} rounded operation sites; "
                 + ", ".join(f"{k} {v}" for k, v in totals.items())]
        first = self.first_nonfinite()
        if first is not None:
            lines.append(f"first non-finite value created at {first.describe()}")
        ranked = sorted(self.site_counts(),
                        key=lambda sc: -(sc[1]["nonfinite"] + sc[1]["overflow"]
                                         + sc[1]["underflow"] + sc[1]["saturated"]))
        for site, counts in ranked[:top]:
            if any(counts.values()):
                lines.append("  " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                             + f": {site.describe()}")
        return "\n".join(lines)


class TraceObserver:
    """The observer of :func:`dp2ejax.emulate` that builds an :class:`EmulationTrace`."""

    def __init__(self, sites: dict[str, TraceSite] | None = None):
        self.counts: dict[str, jax.Array] = {}
        self.sites = {} if sites is None else sites  # shared by children: program order

    def child(self) -> TraceObserver:
        return TraceObserver(self.sites)

    def add(self, counts: dict[str, jax.Array]) -> None:
        for site, count in counts.items():
            self.counts[site] = self.counts.get(site, 0) + count

    def record(self, eqn, path, operands, outputs, info):
        rule = info.rule
        floats = [(o, p) for o, p in zip(outputs, info.pre or outputs, strict=True)
                  if _is_float(jnp.asarray(o))]
        if not floats:
            return None
        fmt = rule.format if rule is not None else None
        site = TraceSite(path, eqn.primitive.name, info.kind,
                         "native" if fmt is None else fmt.name,
                         "-" if rule is None else rule.mode, source_location(eqn))
        key = _site_key(site)
        self.sites.setdefault(key, site)
        counts = [jnp.zeros((), jnp.int32)] * len(COUNT_NAMES)
        maximum = fmt.max_finite if isinstance(fmt, FloatFormat) else None
        nan_in = [jnp.isnan(jnp.asarray(v)) for v in operands if _is_float(jnp.asarray(v))]
        for post, pre in floats:
            post, pre = jnp.asarray(post), jnp.asarray(pre, post.dtype)
            finite = jnp.isfinite(pre)
            nan_before = jnp.zeros(post.shape, bool)
            for n in nan_in:
                nan_before = nan_before | (n if n.shape == post.shape else jnp.any(n))
            flags = [finite & ~jnp.isfinite(post),
                     (finite & (jnp.abs(pre) > maximum) & jnp.isfinite(post)
                      if maximum is not None else jnp.zeros(post.shape, bool)),
                     finite & (pre != 0) & (post == 0),
                     jnp.isnan(post) & ~nan_before,
                     _nonfinite_new(operands, post)]
            counts = [c + jnp.sum(f, dtype=jnp.int32) for c, f in zip(counts, flags,
                                                                      strict=True)]
        if maximum is not None:  # constants saturated as operands
            for val in info.raw:
                x = jnp.asarray(val.value)
                if val.const and _is_float(x):
                    beyond = (jnp.abs(x) > maximum) & ~jnp.isnan(x)
                    if fmt.has_inf:
                        beyond = beyond & jnp.isfinite(x)
                    counts[1] = counts[1] + jnp.sum(beyond, dtype=jnp.int32)
        vector = jnp.stack(counts)
        self.counts[key] = self.counts.get(key, 0) + vector
        return None

    def result(self, record) -> EmulationTrace:
        order = [k for k in self.sites if k in self.counts]
        counts = (jnp.stack([jnp.asarray(self.counts[k], jnp.int32) for k in order]) if order
                  else jnp.zeros((0, len(COUNT_NAMES)), jnp.int32))
        rules = tuple((*key, n) for key, n in sorted(record.rule_counts.items()))
        return EmulationTrace(tuple(self.sites[k] for k in order), counts, rules)
