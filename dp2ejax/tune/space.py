"""The tuning space: layers and roles (tuning units), their operation counts, the candidate
formats of each unit, and the "expertise" priors that restrict them.

A *tuning unit* is a pair (layer, role): a module path (Flax module names, ``jax.named_scope``
names) read from the name stack of each equation exactly as :func:`dp2ejax.emulate` reads it,
and one of the operation kinds of :data:`dp2ejax.arith.policy.OP_KINDS` (``matmul_inputs``,
``matmul_accumulation``, ``elementwise``, ``reduction``). A *configuration* gives every unit a
format; :meth:`SearchSpace.policy` turns it into a :class:`dp2ejax.PrecisionPolicy` with one
rule per unit, on the unit's exact path, deeper paths first (a rule's path also matches the
paths below it, and the first matching rule wins: listing children first keeps a parent's rule
from capturing them). Operations outside every unit (those at the top level, outside any
module, and the roles not tuned) keep the policy's default, ``native`` (not rounded).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from dp2ejax.arith.emulate import module_path
from dp2ejax.arith.formats import Format, get_format
from dp2ejax.arith.policy import OP_KINDS, PrecisionPolicy, Rule
from dp2ejax.arith.primitives import rule_kind

# the module, not the function dp2ejax.arith re-exports under its name: emulate's own
# classification of primitives (data movement, matmuls, reductions), so counts match its rounding
_emulate = importlib.import_module("dp2ejax.arith.emulate")
_COUNTED = frozenset({"arithmetic", "closed", "comparison", "conversion", "library", "reduction",
                      "closed_reduction", "matmul"})

Config = tuple[str, ...]
"""A configuration: one format name per unit, in the space's unit order."""


@dataclasses.dataclass(frozen=True)
class Unit:
    """One tuning unit (layer, role) and what its operations count, per call of the program.

    Attributes:
      layer: the module path (``"MLP/Dense_0"``; ``""`` for the top level).
      role: one of :data:`dp2ejax.arith.policy.OP_KINDS`.
      multiplies: products of matmuls (``matmul_inputs``: the multiplier's operands are in the
        unit's format).
      additions: additions of matmul sums (``matmul_accumulation``) and of reductions.
      operations: elementwise operations (one per output element).
      values_in, values_out: values read and written in the unit's format (matmul operands for
        ``matmul_inputs``, matmul results for ``matmul_accumulation``, operands and results of
        the others).
    """

    layer: str
    role: str
    multiplies: float = 0.0
    additions: float = 0.0
    operations: float = 0.0
    values_in: float = 0.0
    values_out: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.layer or '<top>'}:{self.role}"

    @property
    def flops(self) -> float:
        return self.multiplies + self.additions + self.operations

    @property
    def values_moved(self) -> float:
        return self.values_in + self.values_out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- discovery -----------------------------------------------------------------------------------


def _size(aval) -> float:
    return float(math.prod(getattr(aval, "shape", ())))


def _is_float(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


def _matmul_products(eqn) -> float:
    """Multiply-adds of a matmul-like equation (exact for dot_general and convolutions; the
    output size for sparse products, whose count depends on the data)."""
    out = eqn.outvars[0].aval
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        return _size(out) * float(math.prod(lhs.shape[d] for d in lc))
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        return _size(out) * _size(rhs) / max(rhs.shape[out_feature_dim], 1)
    return _size(out)


def _merge_max(parts: list[dict]) -> dict:
    merged: dict = {}
    for part in parts:
        for key, counts in part.items():
            old = merged.get(key)
            merged[key] = counts if old is None else [max(a, b) for a, b in zip(old, counts,
                                                                                   strict=True)]
    return merged


def _count(jaxpr, prefix: str, weight: float, acc: dict) -> None:
    """Adds the counts of ``jaxpr``'s equations to ``acc`` ({(layer, role): [mul, add, ops,
    in, out]}), recursing into sub-jaxprs as :func:`dp2ejax.emulate` does."""

    def add(key, index, value):
        acc.setdefault(key, [0.0] * 5)[index] += value * weight

    for eqn in jaxpr.eqns:
        path = _emulate._join(prefix, module_path(eqn))
        name = eqn.primitive.name
        params = eqn.params
        if name == "scan":
            _count(params["jaxpr"].jaxpr, path, weight * params["length"], acc)
            continue
        if name == "while":  # trip count unknown before running: one iteration counted
            _count(params["body_jaxpr"].jaxpr, path, weight, acc)
            continue
        if name == "cond":
            parts = []
            for branch in params["branches"]:
                part: dict = {}
                _count(branch.jaxpr, path, weight, part)
                parts.append(part)
            for key, counts in _merge_max(parts).items():
                old = acc.setdefault(key, [0.0] * 5)
                acc[key] = [a + b for a, b in zip(old, counts, strict=True)]
            continue
        rule = rule_kind(eqn.primitive)
        if rule == "call" and _emulate._is_prng_internal(eqn):
            continue  # jax.random's own functions run natively
        sub = params.get("call_jaxpr", params.get("jaxpr"))
        if sub is not None and rule in ("call", "remat", "custom_jvp", "custom_vjp", "shard_map"):
            if isinstance(sub, jex_core.ClosedJaxpr):
                _count(sub.jaxpr, path, weight, acc)
                continue
            if isinstance(sub, jex_core.Jaxpr):
                _count(sub, path, weight, acc)
                continue
        float_in = [v.aval for v in eqn.invars if _is_float(v.aval)]
        float_out = [v.aval for v in eqn.outvars if _is_float(v.aval)]
        if rule not in _COUNTED or not (float_in or float_out):
            continue
        size_in = sum(_size(a) for a in float_in)
        size_out = sum(_size(a) for a in float_out)
        if rule == "matmul":
            products = _matmul_products(eqn)
            operands = [eqn.invars[0].aval, eqn.invars[-1].aval]
            add((path, "matmul_inputs"), 0, products)
            add((path, "matmul_inputs"), 3, sum(_size(a) for a in operands if _is_float(a)))
            add((path, "matmul_accumulation"), 1, products)
            add((path, "matmul_accumulation"), 4, size_out)
        elif rule in ("reduction", "closed_reduction"):
            add((path, "reduction"), 1, size_in)
            add((path, "reduction"), 3, size_in)
            add((path, "reduction"), 4, size_out)
        else:
            add((path, "elementwise"), 2, size_out)
            add((path, "elementwise"), 3, size_in)
            add((path, "elementwise"), 4, size_out)


def _is_array_like(leaf: Any) -> bool:
    if isinstance(leaf, bool):
        return False
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int | complex)


def trace_program(fn: Callable, *args) -> jex_core.ClosedJaxpr:
    """The jaxpr of ``fn(*args)`` with the array leaves of ``args`` as inputs (other leaves,
    such as Python bools, are static), as :func:`dp2ejax.emulate` traces it."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    dynamic = [_is_array_like(leaf) for leaf in leaves]

    def flat_fn(*dyn):
        it = iter(dyn)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic, strict=True)]
        return fn(*jax.tree_util.tree_unflatten(treedef, full))

    return jax.make_jaxpr(flat_fn)(*[leaf for leaf, d in zip(leaves, dynamic, strict=True) if d])


def discover_units(fn: Callable, *args, roles: Sequence[str] = OP_KINDS) -> list[Unit]:
    """The tuning units of ``fn(*args)``: every (module path, role) with floating-point work.

    Traces ``fn`` to a jaxpr and reads each equation's module path from its name stack (as
    :func:`dp2ejax.emulate` does), recursing into ``jit``, ``custom_jvp``/``custom_vjp``
    (their primal computation), ``scan`` (counts times the length), ``while`` (one iteration)
    and ``cond`` (the largest branch). Data movement is not counted (``emulate`` does not round
    it).

    Args:
      fn: the program, e.g. a Flax ``model.apply``.
      *args: its arguments (arrays or ``ShapeDtypeStruct``-like arrays).
      roles: the roles to keep.

    Returns:
      Units sorted by layer, then role in :data:`OP_KINDS` order; the top level (``""``) is
      left out (a rule cannot address it: its operations keep the policy's default).

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> model = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(2)])
      >>> x = jnp.ones((8, 3)); params = model.init(jax.random.key(0), x)
      >>> units = discover_units(model.apply, params, x, roles=("matmul_inputs",))
      >>> [(u.layer, u.multiplies, u.values_in) for u in units]
      [('Sequential/layers_0', 96.0, 36.0), ('Sequential/layers_2', 64.0, 40.0)]
    """
    roles = _check_roles(roles)
    closed = trace_program(fn, *args)
    acc: dict = {}
    _count(closed.jaxpr, "", 1.0, acc)
    units = [Unit(layer, role, *counts) for (layer, role), counts in acc.items()
             if layer and role in roles and counts[0] + counts[1] + counts[2] > 0]
    return sorted(units, key=lambda u: (u.layer, OP_KINDS.index(u.role)))


def _check_roles(roles) -> tuple[str, ...]:
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    unknown = [r for r in roles if r not in OP_KINDS]
    if unknown or not roles:
        raise ValueError(f"roles must be a non-empty subset of {OP_KINDS}, got {roles!r}")
    return roles


# --- priors --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prior:
    """Expert knowledge restricting the candidates of matching units.

    Attributes:
      pattern: a module-path pattern, matched as :class:`dp2ejax.Rule` paths are (the whole
        path or any run of its components, ``fnmatch`` style, case-sensitive).
      role: the role it concerns (one of :data:`OP_KINDS`), or ``"*"`` for all.
      min_format: the unit never goes below this format: only candidates that hold every value
        of it (``min_format.is_subset_of(candidate)``) stay; if none does, the unit is fixed at
        ``min_format`` itself.
      allowed: instead, the formats the unit may use (intersected with the candidates; if the
        intersection is empty, ``allowed`` itself). ``allowed=None, min_format=None`` lifts
        every restriction (a way to override a later prior: the first matching prior wins).
      reason: why, for the result table.

    Example:
      >>> Prior("*norm*", "reduction", min_format="fp32").restrict(("fp32", "bf16"))
      ('fp32',)
      >>> Prior("*norm*", "reduction", min_format="fp32").restrict(("bf16", "fp8_e4m3"))
      ('fp32',)
    """

    pattern: str
    role: str = "*"
    min_format: str | None = None
    allowed: tuple[str, ...] | None = None
    reason: str = ""

    def __post_init__(self):
        if self.role != "*" and self.role not in OP_KINDS:
            raise ValueError(f"Prior role must be '*' or one of {OP_KINDS}, got {self.role!r}")
        if self.min_format is not None and self.allowed is not None:
            raise ValueError("a Prior takes min_format or allowed, not both")
        if self.min_format is not None:
            object.__setattr__(self, "min_format", get_format(self.min_format).name)
        if self.allowed is not None:
            allowed = (self.allowed,) if isinstance(self.allowed, str) else self.allowed
            object.__setattr__(self, "allowed", tuple(get_format(f).name for f in allowed))

    def matches(self, layer: str, role: str) -> bool:
        kinds = OP_KINDS if self.role == "*" else (self.role,)
        return Rule(None, path=self.pattern, kinds=kinds).matches(layer, role)

    def restrict(self, candidates: Sequence[str]) -> tuple[str, ...]:
        candidates = tuple(get_format(c).name for c in candidates)
        if self.allowed is not None:
            kept = tuple(c for c in candidates if c in self.allowed)
            return kept or self.allowed
        if self.min_format is not None:
            floor = get_format(self.min_format)
            kept = tuple(c for c in candidates if floor.is_subset_of(get_format(c)))
            return kept or (self.min_format,)
        return candidates


_STATS = "statistics of normalisation and softmax lose everything below fp32 (mean/variance " \
         "cancellation, exp-sum overflow)"
DEFAULT_PRIORS: tuple[Prior, ...] = (
    Prior("*norm*", "reduction", min_format="fp32", reason=_STATS),
    Prior("*Norm*", "reduction", min_format="fp32", reason=_STATS),
    Prior("*softmax*", "reduction", min_format="fp32", reason=_STATS),
    Prior("*Softmax*", "reduction", min_format="fp32", reason=_STATS),
    Prior("*attention*", "reduction", min_format="fp32", reason=_STATS),
    Prior("*Attention*", "reduction", min_format="fp32", reason=_STATS),
)
"""The default priors: reductions inside normalisation layers (``*norm*``, ``*Norm*``: Flax's
``LayerNorm``, the GCN's ``norm_i``, a transformer's ``attention_norm``), softmax and attention
layers (the online-softmax statistics) stay at fp32 or wider. Override by passing ``priors=``
(``()`` for none; a ``Prior(pattern, role)`` without restriction placed first lifts one)."""


# --- the space -----------------------------------------------------------------------------------


def _escape(path: str) -> str:
    """``path`` as an fnmatch pattern that matches it literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def _format_order(name: str):
    fmt = get_format(name)
    return (-fmt.precision, -fmt.bits_per_value, name)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The units and each unit's candidate formats (most precise first).

    Attributes:
      units: the tuning units.
      candidates: per unit, its candidate format names, ordered by precision then bits,
        most precise first (the first is the unit's *top*).
      reasons: per unit, the prior that restricted it ("" if none).
    """

    units: tuple[Unit, ...]
    candidates: tuple[tuple[str, ...], ...]
    reasons: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """The number of configurations."""
        return math.prod(len(c) for c in self.candidates)

    def top(self) -> Config:
        """Every unit at its most precise candidate."""
        return tuple(c[0] for c in self.candidates)

    def uniform(self, fmt: str | Format) -> Config:
        """Every unit at ``fmt`` (whatever its candidates: a baseline)."""
        return (get_format(fmt).name,) * len(self.units)

    def policy(self, config: Config) -> PrecisionPolicy:
        """The policy of a configuration: one exact-path rule per unit, deeper paths first, and
        a ``native`` default."""
        if len(config) != len(self.units):
            raise ValueError(f"a configuration needs {len(self.units)} formats, got {len(config)}")
        order = sorted(range(len(self.units)),
                       key=lambda i: (-self.units[i].layer.count("/"), self.units[i].layer,
                                      OP_KINDS.index(self.units[i].role)))
        rules = [Rule(config[i], path=_escape(self.units[i].layer), kinds=(self.units[i].role,))
                 for i in order]
        return PrecisionPolicy(default=Rule(None), rules=tuple(rules))

    def describe(self, config: Config) -> dict[str, str]:
        return {u.name: f for u, f in zip(self.units, config, strict=True)}


def build_space(
    units: Sequence[Unit],
    candidates: Sequence[str] | Mapping[Any, Sequence[str]],
    priors: Sequence[Prior] = DEFAULT_PRIORS,
) -> SearchSpace:
    """Resolves each unit's candidates and applies the priors.

    ``candidates`` is a sequence of formats for every unit, or a dict whose keys are a role
    (``"matmul_accumulation"``), a layer pattern (``"*Dense_2"``) or a ``(pattern, role)``
    pair, and whose values are formats; the first matching key (in the dict's order) wins, and
    units no key matches are not tuned (they keep the default, ``native``). The first matching
    prior then restricts the unit's formats.

    Example:
      >>> units = [Unit("MLP/Dense_0", "matmul_inputs", multiplies=1.0),
      ...          Unit("MLP/LayerNorm_0", "reduction", additions=1.0)]
      >>> space = build_space(units, ("fp32", "bf16"))
      >>> space.candidates
      (('fp32', 'bf16'), ('fp32',))
      >>> space.policy(("bf16", "fp32")).resolve("MLP/Dense_0", "matmul_inputs").format.name
      'bf16'
    """
    kept_units, resolved, reasons = [], [], []
    for unit in units:
        formats = _unit_candidates(unit, candidates)
        if not formats:
            continue
        reason = ""
        for prior in priors:
            if prior.matches(unit.layer, unit.role):
                formats = prior.restrict(formats)
                reason = prior.reason or f"prior {prior.pattern!r} ({prior.role})"
                break
        kept_units.append(unit)
        resolved.append(tuple(sorted(dict.fromkeys(formats), key=_format_order)))
        reasons.append(reason)
    return SearchSpace(tuple(kept_units), tuple(resolved), tuple(reasons))


def _unit_candidates(unit: Unit, candidates) -> tuple[str, ...]:
    if isinstance(candidates, str):
        candidates = (candidates,)
    if not isinstance(candidates, Mapping):
        return tuple(get_format(c).name for c in candidates)
    for key, formats in candidates.items():
        if isinstance(key, tuple):
            pattern, role = key
        elif key in OP_KINDS:
            pattern, role = "*", key
        else:
            pattern, role = key, "*"
        if role != "*" and role != unit.role:
            continue
        if pattern == "*" or Rule(None, path=pattern).matches(unit.layer, unit.role):
            formats = (formats,) if isinstance(formats, str) else formats
            return tuple(get_format(f).name for f in formats)
    return ()
