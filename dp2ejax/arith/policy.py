"""Precision policies: which format and rounding mode each operation of a model uses.

A :class:`PrecisionPolicy` is a default :class:`Rule` plus an ordered list of rules, each keyed
by a module-path pattern (Flax module names, or ``jax.named_scope`` names) and by operation
kinds. For an operation, the first rule whose pattern and kinds match wins; the default applies
when none does. Policies are frozen dataclasses (hashable, usable as static arguments) and
round-trip through JSON and TOML.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from dp2ejax.arith.formats import Format, get_format
from dp2ejax.arith.random_bits import RANDOM_BIT_GENERATORS
from dp2ejax.arith.rounding import check_mode

OP_KINDS: tuple[str, ...] = ("matmul_inputs", "matmul_accumulation", "elementwise", "reduction")
OPERAND_KINDS: tuple[str, ...] = ("matmul_lhs", "matmul_rhs")
"""Finer kinds a rule may name instead of ``matmul_inputs``: only the left (``x`` in ``x @ w``,
a Flax ``Dense``'s activations) or the right operand (``w``, the kernel) of a matmul. A rule for
``matmul_inputs`` applies to both."""
"""Operation kinds a rule can target:

- ``matmul_inputs``: the operands of ``dot_general`` and convolutions, rounded before the
  products are formed (as a bf16 tensor-core matmul sees bf16 inputs);
- ``matmul_accumulation``: the running sums of those products and the matmul's result, with the
  rule's :class:`Accumulation` model;
- ``elementwise``: every other arithmetic operation (add, mul, exp, tanh, …), operands and result;
- ``reduction``: ``reduce_sum``, ``reduce_max``, cumulative sums and the like (one rounding of
  each result).
"""

NATIVE = "native"
"""Format name meaning "leave this operation as JAX computes it" (no rounding)."""


@dataclasses.dataclass(frozen=True)
class Accumulation:
    """How a matmul's sum of products is rounded.

    ``block_size=None`` is ``exact``: the sum is computed in the carrier (float32/float64) and
    rounded once. ``block_size=k`` is ``blocked(k)``: each run of k products is summed in the
    carrier, then added to the running sum, which is rounded after every addition; ``blocked(1)``
    is ``sequential`` (round after every addition, as a scalar loop does). ``quire=True`` is
    ``quire``, the posit standard's exact dot product: every product and the running sum are
    kept in double-double (twice the carrier's precision, with error-free transformations), and
    the sum is rounded once, correctly (round-to-odd of the double-double first). It is exact
    unless the sum cancels by more than the carrier's precision (double-double keeps about 106
    bits in float64; a hardware quire is a wider fixed-point register).

    Example:
      >>> Accumulation.parse("blocked(32)").block_size
      32
      >>> str(Accumulation.parse("sequential"))
      'sequential'
    """

    block_size: int | None = None
    quire: bool = False

    def __post_init__(self):
        if self.quire and self.block_size is not None:
            raise ValueError("accumulation cannot be both a quire and blocked")
        if self.block_size is not None and (
            not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(
                f"accumulation block_size must be a positive int or None, got {self.block_size!r}"
            )

    @classmethod
    def parse(cls, spec: str | int | Accumulation | None) -> Accumulation:
        """From ``"exact"``, ``"sequential"``, ``"blocked(k)"``, ``"blocked:k"`` or an int k."""
        if isinstance(spec, Accumulation):
            return spec
        if spec is None or spec == "exact":
            return cls(None)
        if spec == "quire":
            return cls(None, quire=True)
        if spec == "sequential":
            return cls(1)
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls(spec)
        if isinstance(spec, str):
            match = re.fullmatch(r"blocked(?:\((\d+)\)|:(\d+))", spec.strip())
            if match:
                return cls(int(match.group(1) or match.group(2)))
        raise ValueError(
            f"unknown accumulation {spec!r}; expected 'exact', 'quire', 'sequential' or "
            f"'blocked(k)' with k a positive int"
        )

    def __str__(self) -> str:
        if self.quire:
            return "quire"
        if self.block_size is None:
            return "exact"
        if self.block_size == 1:
            return "sequential"
        return f"blocked({self.block_size})"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One line of a policy: operations matching ``path`` and ``kinds`` use ``format``/``mode``.

    Attributes:
      format: a format (float, posit, integer or block-scaled), a format name, or
        ``"native"`` (do not round).
      mode: rounding mode (see :func:`dp2ejax.round_to`).
      path: an ``fnmatch`` pattern over module paths. It matches a path if it matches the whole
        path or any run of consecutive components of it: ``"Dense_1"`` matches ``"MLP/Dense_1"``
        and ``"MLP/Dense_1/inner"`` but not ``"MLP/Dense_10"``; ``"*"`` matches everything.
      kinds: the operation kinds (:data:`OP_KINDS`) the rule applies to; default all.
      accumulation: the matmul accumulation model (used by ``matmul_accumulation``).
      saturate: round overflow to ±max instead of the format's overflow value.

    Example:
      >>> Rule("fp16", path="Dense_1", kinds=("matmul_inputs",)).format.name
      'fp16'
    """

    format: Format | None
    mode: str = "nearest"
    path: str = "*"
    kinds: tuple[str, ...] = OP_KINDS
    accumulation: Accumulation = Accumulation()
    saturate: bool = False

    def __post_init__(self):
        fmt = None if self.format in (None, NATIVE) else get_format(self.format)
        object.__setattr__(self, "format", fmt)
        check_mode(self.mode)
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"rule path must be a non-empty pattern string, got {self.path!r}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = [k for k in kinds if k not in OP_KINDS + OPERAND_KINDS]
        if unknown or not kinds:
            raise ValueError(
                f"rule kinds must be a non-empty subset of {OP_KINDS + OPERAND_KINDS}, got "
                f"{self.kinds!r}"
            )
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "accumulation", Accumulation.parse(self.accumulation))

    def matches(self, path: str, kind: str) -> bool:
        """Whether this rule applies to an operation of ``kind`` at module ``path``."""
        applies = kind in self.kinds or (kind in OPERAND_KINDS and "matmul_inputs" in self.kinds)
        return applies and _path_matches(self.path, path)

    def to_dict(self) -> dict[str, Any]:
        fmt = self.format
        if fmt is None:
            fmt_out: Any = NATIVE
        elif _named(fmt):
            fmt_out = fmt.name
        else:
            fmt_out = fmt.to_dict()
        out: dict[str, Any] = {"format": fmt_out, "mode": self.mode, "path": self.path,
                               "kinds": list(self.kinds), "accumulation": str(self.accumulation)}
        if self.saturate:
            out["saturate"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "rule") -> Rule:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a table/dict, got {data!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; known: {sorted(fields)}")
        if "format" not in data:
            raise ValueError(f"{where} needs a 'format' key")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _named(fmt: Format) -> bool:
    """Whether ``fmt``'s name alone gives it back (registry names, ``e5m7``, ``posit16_es1``…)."""
    try:
        return get_format(fmt.name) == fmt
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*" or fnmatch.fnmatchcase(path, pattern):
        return True
    parts = [p for p in path.split("/") if p]
    return any(
        fnmatch.fnmatchcase("/".join(parts[i:j]), pattern)
        for i in range(len(parts))
        for j in range(i + 1, len(parts) + 1)
    )


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """Which format, rounding mode and accumulation model every operation uses.

    Attributes:
      default: the rule for operations no other rule matches (its path and kinds are ignored).
        A format name is accepted and becomes ``Rule(name)``.
      rules: ordered rules; the first that matches an operation's module path and kind wins.
      rng: random bit generator of the stochastic/random modes (``"hash"`` or ``"jax"``).

    Example:
      >>> policy = PrecisionPolicy(
      ...     default="fp32",
      ...     rules=[Rule("fp16", path="Dense_1"),
      ...            Rule("bf16", kinds=("matmul_inputs",)),
      ...            Rule("fp32", kinds=("matmul_accumulation",), accumulation="blocked(32)")])
      >>> policy.resolve("MLP/Dense_1", "elementwise").format.name
      'fp16'
      >>> PrecisionPolicy.from_json(policy.to_json()) == policy
      True
    """

    default: Rule = Rule("fp32")
    rules: tuple[Rule, ...] = ()
    rng: str = "hash"

    def __post_init__(self):
        default = self.default
        if not isinstance(default, Rule):
            default = Rule(default)
        object.__setattr__(self, "default", default)
        if isinstance(self.rules, Rule | Mapping | str):
            raise ValueError("rules must be a sequence of Rule (or dicts), not a single rule")
        rules = tuple(
            r if isinstance(r, Rule) else Rule.from_dict(r, where=f"rules[{i}]")
            for i, r in enumerate(self.rules)
        )
        object.__setattr__(self, "rules", rules)
        if self.rng not in RANDOM_BIT_GENERATORS:
            raise ValueError(f"policy rng must be one of {RANDOM_BIT_GENERATORS}, got {self.rng!r}")

    @classmethod
    def uniform(
        cls,
        fmt: str | Format,
        mode: str = "nearest",
        accumulation: str | Accumulation = "exact",
        *,
        saturate: bool = False,
    ) -> PrecisionPolicy:
        """Every operation in ``fmt`` with ``mode``; matmuls accumulate as ``accumulation``.

        Example:
          >>> PrecisionPolicy.uniform("bf16").resolve("any/path", "reduction").format.name
          'bf16'
        """
        return cls(default=Rule(fmt, mode=mode, accumulation=accumulation, saturate=saturate))

    def resolve(self, path: str, kind: str) -> Rule:
        """The rule for an operation of ``kind`` (one of :data:`OP_KINDS`) at module ``path``."""
        if kind not in OP_KINDS + OPERAND_KINDS:
            raise ValueError(
                f"unknown operation kind {kind!r}; known: {OP_KINDS + OPERAND_KINDS}")
        for rule in self.rules:
            if rule.matches(path, kind):
                return rule
        return self.default

    def formats(self) -> tuple[Format, ...]:
        """Every format the policy names (default first), without repeats."""
        seen: dict[Format, None] = {}
        for rule in (self.default, *self.rules):
            if rule.format is not None:
                seen.setdefault(rule.format)
        return tuple(seen)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        default = self.default.to_dict()
        default.pop("path")
        default.pop("kinds")
        return {"default": default, "rules": [r.to_dict() for r in self.rules], "rng": self.rng}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionPolicy:
        """From the dict form of :meth:`to_dict` (as loaded from JSON or TOML)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a policy must be a table/dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"default", "rules", "rng"})
        if unknown:
            raise ValueError(f"policy has unknown key(s) {unknown}; known: default, rules, rng")
        default = data.get("default", {"format": "fp32"})
        if isinstance(default, str):
            default = {"format": default}
        rules = data.get("rules", [])
        if not isinstance(rules, Iterable) or isinstance(rules, str | Mapping):
            raise ValueError("policy 'rules' must be a list of tables/dicts")
        return cls(
            default=Rule.from_dict(default, where="default"),
            rules=tuple(Rule.from_dict(r, where=f"rules[{i}]") for i, r in enumerate(rules)),
            rng=data.get("rng", "hash"),
        )

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> PrecisionPolicy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"policy JSON is malformed: {err}") from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> PrecisionPolicy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"policy TOML is malformed: {err}") from None
        return cls.from_dict(data)
