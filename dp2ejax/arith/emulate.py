"""``emulate``: run a JAX function with every floating-point operation rounded as a policy says.

The function is traced to a jaxpr, and an interpreter evaluates it equation by equation with a
rule per primitive (the table of :mod:`dp2ejax.arith.primitives`): the float operands of each
arithmetic operation are rounded to the operation's format (as hardware converts its inputs),
the operation runs in the carrier dtype, and its result is rounded. Data movement (reshape,
slicing, gathers, selects…) is not rounded; bit manipulation, integer work and the internals of
``jax.random`` run at carrier precision. The interpreter remembers which values are already
representable in which format, so a chain of operations in one format rounds each value once.

What the interpreter keeps of the program:

- **custom derivative rules**: a ``custom_jvp`` / ``custom_vjp`` function stays one, with its
  primal computation emulated and its own rule giving the derivative, so ``jax.grad(emulate(f))``
  differentiates as ``jax.grad(f)`` does (``emulate(jax.grad(f))`` emulates the rule's operations
  too, since they are then part of the program);
- **remat, shard_map, scan, while, cond**: re-bound around their emulated bodies;
- **name stacks and source lines**: every operation it emits carries the equation's name stack
  and traceback, so module paths survive a second pass (``emulate`` of an emulated function,
  ``jax.grad`` of one);
- **static arguments**: Python scalars, strings and other non-array leaves are passed to ``fn``
  as they are (as the plain function sees them); only arrays are traced.

**Constants.** A literal or closed-over constant of the program (a mask fill such as
``jnp.finfo(jnp.float32).min``, the ``-inf`` identity that ``jnp.max(..., initial=-inf)`` and
``jax.nn.softmax`` use, a padding value) that a format cannot hold *saturates* to the format's
largest finite value when it is rounded as an operand, infinities included when the format has
none. An fp32 program emulated in bf16 then computes what the same program written in bf16
computes with ``jnp.finfo(jnp.bfloat16).min``: finite masked scores, not ``-inf - -inf = NaN``.
Values the program computes overflow as the format says (to inf, or NaN for e4m3).

**Scans.** An operation in the body of a ``scan`` at iteration ``i`` has the module path of the
body with ``/i`` after its first component: Flax's ``nn.scan(Block, length=4, name="layers")``
gives ``layers/0/Dense_0`` … ``layers/3/Dense_0``. A rule that tells iterations apart (e.g.
``Rule("bf16", path="layers/3")``) splits the scan into runs of iterations with equal rules;
other rules (``"Dense_0"``, ``"layers"``) match every iteration, and the scan stays one loop.

**Module paths** come from the name stack (Flax linen modules, ``jax.named_scope``); Flax NNX
and equinox modules found in ``fn`` (the module itself, a bound method, a closure) or among its
arguments are named by their attribute paths (``layers/0/linear``), see
:mod:`dp2ejax.arith.modules`.

Matmuls (``dot_general``) model how hardware accumulates: ``exact`` (carrier-precision sum,
rounded once), ``blocked(k)`` (sums of k products added to a running sum that is rounded after
each addition) and ``sequential`` (``blocked(1)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from dp2ejax.arith.carrier_random import random_round_at_carrier
from dp2ejax.arith.formats import (
    BlockScaledFormat,
    FloatFormat,
    Format,
    IntFormat,
    PositFormat,
    carrier_format,
)
from dp2ejax.arith.modules import module_scopes
from dp2ejax.arith.policy import PrecisionPolicy, Rule
from dp2ejax.arith.primitives import rule_kind
from dp2ejax.arith.random_bits import random_bits, site_bits
from dp2ejax.arith.rounding import RANDOM_MODES, _round_straight_through

try:  # private, but what jax.core.eval_jaxpr itself uses to keep name stacks and tracebacks
    from jax._src import source_info_util as _source_info
except ImportError:  # pragma: no cover - JAX moved it
    _source_info = None

_CARRIERS = frozenset(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
_TRANSFORM_WRAPPER = re.compile(r"[A-Za-z_]\w*\(")
_OP_KIND = {"arithmetic": "elementwise", "closed": "elementwise", "comparison": "elementwise",
            "conversion": "elementwise", "library": "elementwise", "reduction": "reduction",
            "closed_reduction": "reduction"}
_CLOSED = frozenset({"closed", "closed_reduction"})


class Val(NamedTuple):
    """A value in the interpreter: the array, the format it is known to lie in (None: unknown),
    and whether it holds program constants (literals, closed-over arrays) not yet rounded."""

    value: Any
    fmt: Format | None = None
    const: bool = False


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """What an observer learns of one operation besides its operands and outputs: the policy's
    operation kind, the rule applied (None: none applies), the results before rounding, the
    operands as they came (before rounding) with their constant flags, and (for additions, when
    observed) the primitives that consume the result, through data movement (``"<output>"``
    for a result that leaves the jaxpr)."""

    kind: str
    rule: Rule | None
    pre: Sequence[Any] | None = None
    raw: Sequence[Val] = ()
    consumers: frozenset[str] | None = None


class UnmatchedRuleWarning(UserWarning):
    """A policy rule applied to no operation of the emulated function."""


def emulate(fn: Callable, policy: PrecisionPolicy | str, *, strict: bool = False,
            trace: bool = False) -> Callable:
    """Transforms ``fn`` so that every floating-point operation's result is rounded by ``policy``.

    Args:
      fn: any JAX-traceable function of arrays/pytrees (a Flax ``model.apply``, an NNX or
        equinox module, a loss function).
      policy: a :class:`PrecisionPolicy`, or a format name for a uniform nearest policy.
      strict: raise a ValueError when a rule of ``policy`` applies to no operation (a path
        typo such as ``"dense_0"`` for ``"Dense_0"``); by default such a rule is reported once
        with an :class:`UnmatchedRuleWarning` naming the module paths that exist.
      trace: also return an :class:`dp2ejax.arith.trace.EmulationTrace`: which rule each
        operation used, and per site how many values overflowed, saturated, underflowed to zero
        or became NaN; called outside ``jit``, the first non-finite value created is reported
        with a warning naming its operation, module path and source line. (With ``trace=True``
        custom derivative rules are inlined: differentiate the function without the trace.)

    Returns:
      A function with ``fn``'s signature plus a keyword ``rounding_key`` (a PRNG key, required
      when the policy uses the ``stochastic`` or ``random`` modes), returning ``fn``'s outputs
      (and the trace, with ``trace=True``). It can be jitted, vmapped and differentiated:
      gradients are straight-through the roundings (and follow ``fn``'s own custom rules), so
      ``jax.grad(emulate(f, p))`` rounds the forward pass only, while
      ``emulate(jax.grad(f), p)`` rounds the backward pass too.

    Operations that ``fn`` itself computes in float16/bfloat16 are rounded only to formats that
    fit those dtypes; a format wider than a float32 computation (fp64) raises a ValueError.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x: jnp.sum(x * 1.001)
      >>> emulate(f, "bf16")(jnp.ones(256, jnp.float32))
      Array(256., dtype=float32)
      >>> out, t = emulate(jnp.exp, "fp16", trace=True)(jnp.array([1.0, 20.0]))
      >>> t.totals()["overflow"]
      1
    """
    if isinstance(policy, str | FloatFormat | PositFormat | IntFormat | BlockScaledFormat):
        policy = PrecisionPolicy.uniform(policy)
    if not isinstance(policy, PrecisionPolicy):
        raise ValueError(f"policy must be a PrecisionPolicy or a format name, got {policy!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    needs_key = any(r.mode in RANDOM_MODES for r in (policy.default, *policy.rules))
    warned = [False]

    @functools.wraps(fn)
    def emulated(*args, rounding_key: jax.Array | None = None, **kwargs):
        if needs_key and rounding_key is None:
            raise ValueError(
                "the policy uses stochastic/random rounding: pass rounding_key=<PRNG key>"
            )
        observer = None
        if trace:
            from dp2ejax.arith.trace import TraceObserver

            observer = TraceObserver()
        out, record = run_emulated(fn, policy, args, kwargs, rounding_key if needs_key else None,
                                   observer, return_record=True)
        if not warned[0]:
            warned[0] = check_rules(policy, record, strict=strict)
        if not trace:
            return out
        result = observer.result(record)
        result.warn_nonfinite()
        return out, result

    return emulated


class Record:
    """What one emulated run met, known at trace time: the rules that applied (by index into
    ``policy.rules``, -1 for the default), the module paths, and the operations per
    (path, kind, format, mode)."""

    def __init__(self):
        self.used: set[int] = set()
        self.paths: set[str] = set()
        self.rule_counts: Counter = Counter()
        self.site_order: dict[str, int] = {}

    def note(self, index: int, rule: Rule, path: str, kind: str) -> None:
        self.used.add(index)
        fmt = "native" if rule.format is None else rule.format.name
        self.rule_counts[(path, kind, fmt, rule.mode)] += 1


def run_emulated(fn: Callable, policy: PrecisionPolicy, args, kwargs, key, observer=None, *,
                 return_record: bool = False):
    """Traces ``fn(*args, **kwargs)`` and evaluates it under ``policy``; the engine of
    :func:`emulate`. ``observer`` (used by :mod:`dp2ejax.cestac` and the trace) sees every
    arithmetic operation: ``observer.record(eqn, path, operands, outputs, info)`` (which may
    return replacement outputs, or None), ``observer.child()`` for a loop body,
    ``observer.counts`` (a dict of site -> count array) and ``observer.add(counts)``.
    With ``return_record``, returns ``(outputs, Record)``.
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [_is_array_like(leaf) for leaf in leaves]
    dynamic_leaves = [leaf for leaf, d in zip(leaves, dynamic, strict=True) if d]

    def flat_fn(*dyn):
        it = iter(dyn)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic, strict=True)]
        a, k = jax.tree_util.tree_unflatten(treedef, full)
        with module_scopes(fn, (a, k)):
            return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dynamic_leaves)
    record = Record()
    interpreter = _Interpreter(policy, key, observer, record)
    outs = interpreter.eval_closed(closed, [Val(x) for x in dynamic_leaves], "")
    out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape),
                                       [v.value for v in outs])
    return (out, record) if return_record else out


def check_rules(policy: PrecisionPolicy, record: Record, *, strict: bool = False) -> bool:
    """Reports the rules of ``policy`` that applied to no operation of a run: a ValueError if
    ``strict``, else one :class:`UnmatchedRuleWarning`. Returns whether it reported any."""
    unused = [(i, r) for i, r in enumerate(policy.rules) if i not in record.used]
    if not unused:
        return False
    paths = sorted(p for p in record.paths if p)
    shown = ", ".join(repr(p) for p in paths[:30]) + (" …" if len(paths) > 30 else "")
    rules = "; ".join(f"rules[{i}] (path={r.path!r}, kinds={list(r.kinds)})" for i, r in unused)
    message = (f"{rules} applied to no operation (a typo in the path, a kind the function "
               f"does not have, or an earlier rule that wins); the module paths of this "
               f"function are: {shown or '<none: every operation is at the top level>'}")
    if strict:
        raise ValueError(message)
    warnings.warn(message, UnmatchedRuleWarning, stacklevel=4)
    return True


def _is_array_like(leaf: Any) -> bool:
    # Only arrays are traced: Python scalars stay static, as the plain function sees them
    # (a reshape by an int argument works), and so do flags such as Flax's ``train=True``.
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def module_path(eqn) -> str:
    """The module path of a jaxpr equation: its name stack without transform wrappers, so
    ``"transpose(jvp(MLP))/Dense_0"`` reads ``"MLP/Dense_0"``."""
    text = str(eqn.source_info.name_stack)
    return _TRANSFORM_WRAPPER.sub("", text).replace(")", "")


def _join(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix and path else prefix or path


def _eqn_context(eqn):
    """The name stack and traceback of ``eqn`` for what is bound while evaluating it (as
    ``jax.core.eval_jaxpr`` does), so that module paths survive a second pass."""
    if _source_info is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    name_stack = _source_info.current_name_stack() + eqn.source_info.name_stack
    stack.enter_context(_source_info.user_context(eqn.source_info.traceback,
                                                  name_stack=name_stack))
    ctx = getattr(eqn, "ctx", None)
    if ctx is not None and hasattr(ctx, "manager"):
        stack.enter_context(ctx.manager)
    return stack


def _rebind(eqn, values):
    """Binds ``eqn``'s primitive as it is (natively) on ``values``; a list of outputs."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        out = eqn.primitive.bind(*subfuns, *values, **params)
    else:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _exact_conversion(operand, out) -> bool:
    """Whether converting ``operand`` to ``out``'s dtype is exact for every value (bool, or a
    float dtype whose values ``out``'s float dtype all holds)."""
    dtype = np.dtype(jnp.result_type(operand))
    if dtype == np.bool_:
        return True
    if np.dtype(out.dtype) not in _CARRIERS:
        return False
    if jnp.issubdtype(dtype, jnp.integer):  # every int8/int16 is a float32, every int32 a float64
        return np.iinfo(dtype).bits <= carrier_format(out.dtype).precision
    return dtype in _CARRIERS and carrier_format(dtype).is_subset_of(carrier_format(out.dtype))


def _is_float(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _is_prng_internal(eqn) -> bool:
    """Whether a ``jit`` equation is one of ``jax.random``'s own functions (bits to floats)."""
    sub = eqn.params.get("jaxpr")
    info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
    src = str(getattr(info, "func_src_info", "") or "").replace("\\", "/")
    return "jax/_src/random" in src


def _index_after_first(path: str, index: str) -> str:
    head, _, tail = path.partition("/")
    return _join(_join(head, index), tail) if head else index


def _iteration_path(prefix: str, index: str) -> Callable[[str], str]:
    """Inserts a scan iteration's index into the paths of its body (see the module docstring)."""
    def insert(path: str) -> str:
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return path
        rest = path[len(prefix):].lstrip("/")
        return _join(prefix, _index_after_first(rest, index))

    return insert


def _body_paths(jaxpr, prefix: str, out: set[str]) -> set[str]:
    for eqn in jaxpr.eqns:
        path = _join(prefix, module_path(eqn))
        out.add(path)
        for sub in jex_core.jaxprs_in_params(eqn.params):
            _body_paths(sub, path, out)
    return out


def _distinguishing(pattern: str) -> bool:
    return any(c.isdigit() or c in "?[" for c in pattern)


def _nonfinite_new(operands, out):
    """Non-finite elements of ``out`` whose operands are finite (elementwise where shapes
    agree; otherwise only when every operand is finite)."""
    bad = ~jnp.isfinite(out)
    for op in operands:
        op = jnp.asarray(op)
        if not _is_float(op):
            continue
        if op.shape == out.shape:
            bad = bad & jnp.isfinite(op)
        elif op.size == 1:
            bad = bad & jnp.isfinite(op.reshape(()))
        else:
            bad = bad & jnp.all(jnp.isfinite(op))
    return bad


class _Uses:
    """The primitives that consume each variable of a jaxpr, through data movement."""

    def __init__(self, jaxpr):
        self.direct: dict[Any, list] = {}
        for eqn in jaxpr.eqns:
            for var in eqn.invars:
                if not isinstance(var, jex_core.Literal):
                    self.direct.setdefault(var, []).append(eqn)
        self.outputs = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
        self._memo: dict[Any, frozenset[str]] = {}

    def of(self, var) -> frozenset[str]:
        if var in self._memo:
            return self._memo[var]
        names = {"<output>"} if var in self.outputs else set()
        for eqn in self.direct.get(var, ()):
            if rule_kind(eqn.primitive) == "data_movement":
                for out in eqn.outvars:
                    names |= self.of(out)
            else:
                names.add(eqn.primitive.name)
        self._memo[var] = frozenset(names)
        return self._memo[var]


def _contraction_blocks(lhs, rhs, dims, block: int):
    """Splits a dot_general's contraction into blocks of ``block`` terms: returns the operands
    with the block index first (for a scan), the dimension numbers of one block's product and
    the output shape."""
    (lc, rc), (lb, rb) = dims
    lfree = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    rfree = [d for d in range(rhs.ndim) if d not in rc and d not in rb]
    k = int(np.prod([lhs.shape[d] for d in lc], dtype=np.int64))
    nblocks = -(-k // block)
    pad = nblocks * block - k
    lhs = jnp.transpose(lhs, (*lb, *lfree, *lc))
    lhs = lhs.reshape(*lhs.shape[: len(lb) + len(lfree)], k)
    rhs = jnp.transpose(rhs, (*rb, *rc, *rfree))
    rhs = rhs.reshape(*rhs.shape[: len(rb)], k, *rhs.shape[len(rb) + len(rc):])
    nb, nlf = len(lb), len(lfree)
    lhs = jnp.pad(lhs, [(0, 0)] * (lhs.ndim - 1) + [(0, pad)])
    rhs = jnp.pad(rhs, [(0, 0)] * nb + [(0, pad)] + [(0, 0)] * (rhs.ndim - nb - 1))
    lhs = jnp.moveaxis(lhs.reshape(*lhs.shape[:-1], nblocks, block), -2, 0)
    rhs = rhs.reshape(*rhs.shape[:nb], nblocks, block, *rhs.shape[nb + 1:])
    rhs = jnp.moveaxis(rhs, nb, 0)
    block_dims = (((nb + nlf,), (nb,)), (tuple(range(nb)), tuple(range(nb))))
    out_shape = (*lhs.shape[1: 1 + nb + nlf], *rhs.shape[2 + nb:])
    return lhs, rhs, block_dims, out_shape


def _dot_quire(lhs, rhs, dims, out_dtype):
    """dot_general accumulated as a quire: each product a * b = p + e exactly (TwoProduct), the
    running sum kept as hi + lo (TwoSum). Returns hi + lo rounded to nearest in the carrier, and
    rounded to odd, so that one later rounding to any format of at most carrier precision - 2
    bits is the correct rounding of hi + lo (Boldo and Melquiond, 2008)."""
    from dp2ejax.arith.carrier_random import _product_error, _sum_error

    lhs, rhs = jnp.asarray(lhs, out_dtype), jnp.asarray(rhs, out_dtype)
    lhs, rhs, block_dims, out_shape = _contraction_blocks(lhs, rhs, dims, 1)
    highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)

    def product(a, b):
        return lax.dot_general(a, b, block_dims, precision=highest,
                               preferred_element_type=out_dtype)

    def step(carry, terms):
        hi, lo = carry
        a, b = terms
        p = product(a, b)  # one term: p = fl(a * b), and its error e
        e = _product_error(a, b, p, multiply=product)
        s = hi + p
        return (s, lo + (_sum_error(hi, p, s) + e)), None

    zeros = jnp.zeros(out_shape, out_dtype)
    (hi, lo), _ = lax.scan(step, (zeros, zeros), (lhs, rhs))
    total = hi + lo
    rest = _sum_error(hi, lo, total)  # hi + lo = total + rest exactly
    return total, _round_to_odd(total, rest)


def _round_to_odd(total, rest):
    """The value total + rest (|rest| <= ulp(total) / 2) rounded to odd: truncated toward zero,
    with the last bit set when inexact."""
    uint = {4: jnp.uint32, 8: jnp.uint64}[np.dtype(total.dtype).itemsize]
    inward = (rest != 0) & (jnp.sign(rest) != jnp.sign(total))
    truncated = jnp.where(inward, jnp.nextafter(total, jnp.zeros_like(total)), total)
    bits = lax.bitcast_convert_type(truncated, uint)
    odd = lax.bitcast_convert_type(bits | jnp.array(1, uint), total.dtype)
    return jnp.where((rest != 0) & jnp.isfinite(total), odd, total)




def source_location(eqn) -> str:
    """``file:line (function)`` of the user code that created a jaxpr equation."""
    if _source_info is None:
        return "<unknown>"
    try:
        return _source_info.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - private API; a missing location must not stop a run
        return "<unknown>"


def _is_float_value(x) -> bool:
    try:
        return jnp.issubdtype(jnp.result_type(x), jnp.floating)
    except TypeError:
        return False


class _Interpreter:
    """Evaluates a jaxpr with rounding. ``key`` is None unless the policy draws random bits;
    ``iteration`` holds, outermost first, the path rewrites of the scan iterations being
    evaluated (``(for rules, for display)`` pairs)."""

    def __init__(self, policy: PrecisionPolicy, key: jax.Array | None, observer, record: Record,
                 iteration: tuple = ()):
        self.policy = policy
        self.key = key
        self.observer = observer
        self.record = record
        self.iteration = iteration
        self.sites = 0
        self._seed = None
        self._uses = None
        # A value rounded to a rule's format once, reused at every later use: in the random
        # modes, fresh bits per use would give one datum different values (x - x != 0).
        self._rounded: dict[tuple, tuple[Any, jax.Array]] = {}

    def _next_key(self) -> jax.Array:
        key = jax.random.fold_in(self.key, self.sites)
        self.sites += 1
        return key

    def _random_words(self, shape, dtype) -> jax.Array:
        """Random words for the next rounding site: with the default ``hash`` generator, one
        Threefry draw per interpreter seeds a counter hash with the site mixed in."""
        if self.policy.rng != "hash":
            return random_bits(self._next_key(), shape, dtype, self.policy.rng)
        if self._seed is None:
            self._seed = jax.random.bits(self.key, (2,), jnp.uint32)
        self.sites += 1
        return site_bits(self._seed, self.sites, shape, dtype)

    def _child(self, key: jax.Array | None, observer=None, iteration=None) -> _Interpreter:
        return _Interpreter(self.policy, key, observer, self.record,
                            self.iteration if iteration is None else iteration)

    # --- rules ---------------------------------------------------------------------------------

    def _rule_path(self, path: str, iteration=None) -> str:
        for for_rules, _ in reversed(self.iteration if iteration is None else iteration):
            path = for_rules(path)
        return path

    def _display(self, path: str) -> str:
        for _, for_display in reversed(self.iteration):
            path = for_display(path)
        return path

    def _match(self, path: str, kind: str) -> tuple[int, Rule]:
        for index, rule in enumerate(self.policy.rules):
            if rule.matches(path, kind):
                return index, rule
        return -1, self.policy.default

    def _rule(self, path: str, kind: str) -> Rule:
        index, rule = self._match(self._rule_path(path), kind)
        self.record.note(index, rule, self._display(path), kind)
        return rule

    def _applies(self, rule: Rule, dtype, path: str, prim: str) -> bool:
        fmt = rule.format
        if fmt is None or np.dtype(dtype) not in _CARRIERS:
            return False
        if fmt.fits_in(dtype):
            return True
        carrier = carrier_format(dtype)
        if carrier.is_subset_of(fmt) and np.dtype(dtype).itemsize <= 2:
            return False  # fn computes in fp16/bf16 itself: nothing wider to emulate
        raise ValueError(
            f"policy asks for format {fmt.name!r} at {path or '<top level>'!r} ({prim}), but "
            f"that operation computes in {np.dtype(dtype)}, which cannot hold it; compute in "
            f"a wider dtype (float64 needs jax.config.update('jax_enable_x64', True))"
        )

    # --- rounding ------------------------------------------------------------------------------

    def _round_result(self, name: str, operands, out, rule: Rule):
        """Rounds the result ``out`` of ``name(*operands)``; at the carrier's own precision the
        random mode needs the operation itself (see :mod:`dp2ejax.arith.carrier_random`)."""
        if not carrier_format(out.dtype).is_subset_of(rule.format):
            return self._round(out, rule)
        if name == "convert_element_type" and _exact_conversion(operands[0], out):
            return out  # a widening (or same-dtype) conversion is exact: nothing to round
        if rule.mode == "random":
            bits = self._random_words(out.shape, out.dtype)
            return random_round_at_carrier(name, operands, out, bits)
        if rule.mode == "nearest":
            # The identity on values, but it keeps XLA from fusing this result into a later
            # multiply-add (one rounding instead of two), as it would fuse a bare product.
            return self._round(out, rule)
        raise ValueError(
            f"rounding mode {rule.mode!r} in format {rule.format.name!r} needs a carrier wider "
            f"than {out.dtype} (the operation's result is already rounded to nearest): compute "
            f"in float64 (jax.config.update('jax_enable_x64', True))"
        )

    def _round(self, value, rule: Rule, axis: int | None = None, saturate: bool | None = None):
        bits = None
        if rule.mode in RANDOM_MODES:
            bits = self._random_words(value.shape, value.dtype)
        saturate = rule.saturate if saturate is None else saturate
        return _round_straight_through(value, bits, rule.format, rule.mode, saturate, axis)

    def _round_operand(self, val: Val, rule: Rule, path: str, prim: str,
                       axis: int | None = None):
        value = jnp.asarray(val.value)
        if not _is_float(value) or rule.format is None:
            return value
        if (np.dtype(value.dtype) in _CARRIERS and not rule.saturate
                and (not val.const or getattr(rule.format, "has_inf", False))
                and carrier_format(value.dtype).is_subset_of(rule.format)):
            return value  # a float32 operand lies in fp64 already (a mask, say)
        if not self._applies(rule, value.dtype, path, prim):
            return value
        # Program constants saturate (see the module docstring); computed values do not.
        saturate = rule.saturate or (val.const and isinstance(rule.format, FloatFormat))
        if val.fmt is not None and val.fmt.is_subset_of(rule.format) and not saturate:
            return value
        if carrier_format(value.dtype).is_subset_of(rule.format):
            return value  # every carrier value is representable: converting it is exact
        if not isinstance(rule.format, BlockScaledFormat | IntFormat):
            axis = None  # only blocks and channels have an axis: one rounding serves every use
        memo = (id(val.value), rule, axis, saturate)
        if memo not in self._rounded:  # the entry keeps val.value alive, so its id stays unique
            if val.const and not isinstance(rule.format, FloatFormat):
                # a constant infinity (a reduction identity) would make a whole block, or a
                # posit, NaN: it saturates to the carrier's largest value first
                big = jnp.asarray(jnp.finfo(value.dtype).max, value.dtype)
                value = jnp.where(jnp.isinf(value), jnp.copysign(big, value), value)
            self._rounded[memo] = (val.value, self._round(value, rule, axis, saturate))
        return self._rounded[memo][1]

    # --- evaluation ----------------------------------------------------------------------------

    def eval_closed(self, closed, args: Sequence[Val], prefix: str) -> list[Val]:
        return self.eval_jaxpr(closed.jaxpr, closed.consts, args, prefix)

    def eval_jaxpr(self, jaxpr, consts, args: Sequence[Val], prefix: str) -> list[Val]:
        env: dict[Any, Val] = {}

        def read(var) -> Val:
            if isinstance(var, jex_core.Literal):
                return Val(var.val, None, True)
            return env[var]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = Val(const, None, True)
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        saved, self._uses = self._uses, (_Uses(jaxpr) if self.observer is not None else None)
        try:
            for eqn in jaxpr.eqns:
                path = _join(prefix, module_path(eqn))
                with _eqn_context(eqn):
                    outs = self._eval_eqn(eqn, [read(v) for v in eqn.invars], path)
                for var, out in zip(eqn.outvars, outs, strict=True):
                    if not isinstance(var, jex_core.DropVar):
                        env[var] = out
        finally:
            self._uses = saved
        return [read(v) for v in jaxpr.outvars]

    def _eval_eqn(self, eqn, invals: list[Val], path: str) -> list[Val]:
        kind = rule_kind(eqn.primitive)
        self.record.paths.add(self._display(path))
        if kind is None:
            raise NotImplementedError(
                f"emulate has no rule for the primitive {eqn.primitive.name!r} (at "
                f"{path or '<top level>'!r}, {source_location(eqn)}); the primitives it knows "
                f"are listed in dp2ejax.arith.primitives.RULE_KINDS")
        if kind in _OP_KIND:
            return self._operation(eqn, invals, path, kind)
        return getattr(self, "_" + kind)(eqn, invals, path)

    @staticmethod
    def _bind(eqn, values, **overrides):
        out = eqn.primitive.bind(*values, **{**eqn.params, **overrides})
        return list(out) if eqn.primitive.multiple_results else [out]

    def _data_movement(self, eqn, invals: list[Val], path: str) -> list[Val]:
        floats = [v for v in invals if _is_float_value(v.value)]
        tags = {v.fmt for v in floats}
        tag = tags.pop() if len(tags) == 1 else None
        const = any(v.const for v in floats)
        outs = self._bind(eqn, [v.value for v in invals])
        return [Val(o, tag, const) if _is_float(var.aval) else Val(o)
                for o, var in zip(outs, eqn.outvars, strict=True)]

    def _bits(self, eqn, invals: list[Val], path: str) -> list[Val]:
        return [Val(o) for o in self._bind(eqn, [v.value for v in invals])]

    def _native(self, eqn, invals: list[Val], path: str) -> list[Val]:
        return [Val(o) for o in _rebind(eqn, [v.value for v in invals])]

    def _call(self, eqn, invals: list[Val], path: str) -> list[Val]:
        if _is_prng_internal(eqn):
            return self._native(eqn, invals, path)  # bits to floats: not arithmetic
        sub = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
        if isinstance(sub, jex_core.ClosedJaxpr):
            return self.eval_closed(sub, invals, path)
        return self.eval_jaxpr(sub, [], invals, path)

    def _operation(self, eqn, invals: list[Val], path: str, category: str) -> list[Val]:
        name = eqn.primitive.name
        values = [v.value for v in invals]
        float_out = [_is_float(v.aval) for v in eqn.outvars]
        if not (any(float_out) or any(_is_float_value(x) for x in values)):
            return [Val(o) for o in self._bind(eqn, values)]
        kind = _OP_KIND[category]
        rule = self._rule(path, kind)
        if category == "conversion":
            if invals[0].const:  # a constant cast: it saturates where it is used
                return [Val(o, None, True) for o in self._bind(eqn, values)]
            if not _is_float_value(values[0]) and _exact_conversion(values[0], eqn.outvars[0].aval):
                return [Val(o) for o in self._bind(eqn, values)]  # a mask or small ints: exact
            operands = values  # a conversion rounds its result only
        else:
            operands = [self._round_operand(v, rule, path, name) for v in invals]
        outs = self._bind(eqn, operands)
        result = []
        for out, is_float in zip(outs, float_out, strict=True):
            if not is_float or not self._applies(rule, out.dtype, path, name):
                result.append(Val(out))
            elif category in _CLOSED:  # one of the operands: a constant if one of them is
                result.append(Val(out, rule.format, any(v.const for v in invals)))
            else:
                result.append(Val(self._round_result(name, operands, out, rule), rule.format))
        if self.observer is not None:
            consumers = (self._uses.of(eqn.outvars[0])
                         if self._uses is not None and name in ("add", "sub", "add_any") else None)
            info = OpInfo(kind, rule, outs, invals, consumers)
            replaced = self.observer.record(eqn, self._display(path), operands,
                                            [v.value for v in result], info)
            if replaced is not None:  # e.g. CESTAC's stochastic comparisons
                result = [Val(r, v.fmt, v.const) for r, v in zip(replaced, result, strict=True)]
        return result

    def _observe(self, eqn, path, operands, out, pre, rule, invals) -> None:
        if self.observer is not None:
            info = OpInfo("matmul_accumulation", rule, [pre], invals)
            self.observer.record(eqn, self._display(path), operands, [out], info)

    def _matmul(self, eqn, invals: list[Val], path: str) -> list[Val]:
        name = eqn.primitive.name
        if not any(_is_float_value(v.value) for v in invals):
            return [Val(o) for o in self._bind(eqn, [v.value for v in invals])]
        # the first operand is the left one, the last the right one (sparse products carry
        # index arrays between them, which are not rounded)
        input_rules = [self._rule(path, "matmul_inputs")] * len(invals)
        input_rules[0] = self._rule(path, "matmul_lhs")
        input_rules[-1] = self._rule(path, "matmul_rhs")
        acc_rule = self._rule(path, "matmul_accumulation")
        axes = [None] * len(invals)
        if name == "dot_general":  # block-scaled operands have their blocks along the contraction
            (lc, rc), _ = eqn.params["dimension_numbers"]
            axes = [lc[-1] if lc else None, rc[-1] if rc else None]
        out_dtype = eqn.outvars[0].aval.dtype
        rounds = self._applies(acc_rule, out_dtype, path, name)
        block = acc_rule.accumulation.block_size if rounds else None
        quire = rounds and acc_rule.accumulation.quire
        if quire and name != "dot_general":
            raise NotImplementedError(
                f"the quire accumulation is modelled for dot_general only; give the {name} at "
                f"{path or '<top level>'!r} an 'exact' matmul_accumulation rule")
        if (name == "dot_general"
                and all(isinstance(r.format, IntFormat) and r.mode == "nearest"
                        and self._applies(r, out_dtype, path, name) for r in input_rules)
                and all(_is_float_value(v.value) for v in invals)):
            return self._int_matmul(eqn, invals, path, input_rules, acc_rule, rounds, block)
        operands = [self._round_operand(t, rule, path, name, axis)
                    for t, rule, axis in zip(invals, input_rules, axes, strict=True)]
        highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
        if name == "dot_general":
            lhs, rhs = operands
            dims = eqn.params["dimension_numbers"]
            if quire:
                total, odd = _dot_quire(lhs, rhs, dims, out_dtype)
                # rounding to the carrier's own precision: the nearest is total itself
                out = total if carrier_format(out_dtype).is_subset_of(acc_rule.format) else odd
            elif block is None:
                out = lax.dot_general(lhs, rhs, dims, precision=highest,
                                      preferred_element_type=out_dtype)
            else:
                out = self._dot_blocked(lhs, rhs, dims, out_dtype, block, acc_rule)
                self._observe(eqn, path, [lhs, rhs], out, out, acc_rule, invals)
                return [Val(out, acc_rule.format)]
        else:
            if block is not None:
                raise NotImplementedError(
                    f"accumulation {acc_rule.accumulation} is modelled for dot_general only; give "
                    f"the {name} at {path or '<top level>'!r} an 'exact' matmul_accumulation rule"
                )
            overrides = {"precision": highest} if "precision" in eqn.params else {}
            out = self._bind(eqn, operands, **overrides)[0]
        result = self._round_result(name, operands, out, acc_rule) if rounds else out
        self._observe(eqn, path, operands, result, out, acc_rule if rounds else None, invals)
        return [Val(result, acc_rule.format if rounds else None)]

    def _int_matmul(self, eqn, invals: list[Val], path: str, input_rules: list[Rule],
                    acc_rule: Rule, rounds: bool, block: int | None) -> list[Val]:
        """A dot_general of integer-quantized operands as integer hardware computes it: integer
        codes dotted exactly in int32 (see :func:`dp2ejax.arith.integer.int_dot_general`), one
        rescale, then the accumulation rule's single rounding of the result."""
        from dp2ejax.arith.integer import int_dot_general

        if block is not None:
            raise ValueError(
                f"integer matmul inputs at {path or '<top level>'!r} accumulate exactly in int32; "
                f"give them an 'exact' matmul_accumulation rule, not {acc_rule.accumulation}")
        out_dtype = eqn.outvars[0].aval.dtype
        lhs, rhs = (jnp.asarray(v.value, out_dtype) for v in invals)
        out = int_dot_general(lhs, rhs, eqn.params["dimension_numbers"], input_rules[0].format,
                              input_rules[1].format, preferred_element_type=out_dtype)
        result = self._round_result("dot_general", [lhs, rhs], out, acc_rule) if rounds else out
        self._observe(eqn, path, [lhs, rhs], result, out, acc_rule if rounds else None, invals)
        return [Val(result, acc_rule.format if rounds else None)]

    def _dot_blocked(self, lhs, rhs, dims, out_dtype, block: int, rule: Rule):
        """dot_general whose running sum is rounded after adding each block of products."""
        lhs, rhs, block_dims, out_shape = _contraction_blocks(lhs, rhs, dims, block)
        key = self._next_key() if rule.mode in RANDOM_MODES else None

        def step(carry, blocks):
            acc, step_key = carry
            child = self
            if step_key is not None:
                step_key, sub = jax.random.split(step_key)
                child = self._child(sub)
            partial = lax.dot_general(*blocks, block_dims, precision=lax.Precision.HIGHEST,
                                      preferred_element_type=out_dtype)
            total = acc + partial
            return (child._round_result("add", [acc, partial], total, rule), step_key), None

        init = (jnp.zeros(out_shape, out_dtype), key)
        (acc, _), _ = lax.scan(step, init, (lhs, rhs))
        return acc

    # --- custom derivative rules, remat, shard_map ----------------------------------------------

    def _body_fn(self, jaxpr, consts, tags: Sequence[Val], path: str, key):
        """A function of the values of ``tags`` evaluating ``jaxpr`` with a fresh interpreter
        (its own memo, so no value of one trace leaks into another)."""
        def body(*values):
            child = self._child(key)
            args = [Val(x, t.fmt, t.const) for x, t in zip(values, tags, strict=True)]
            return [v.value for v in child.eval_jaxpr(jaxpr, consts, args, path)]

        return body

    def _custom_jvp(self, eqn, invals: list[Val], path: str) -> list[Val]:
        call = eqn.params["call_jaxpr"]
        if self.observer is not None:  # an analysis runs forward only: inline the primal
            return self.eval_closed(call, invals, path)
        primal = self._body_fn(call.jaxpr, call.consts, invals, path, self._loop_key())

        def original(*values):
            return _rebind(eqn, values)

        emulated = jax.custom_jvp(primal)

        def rule(primals, tangents):
            _, tangents_out = jax.jvp(original, list(primals), list(tangents))
            return primal(*primals), tangents_out

        emulated.defjvp(rule)
        return [Val(o) for o in emulated(*[v.value for v in invals])]

    def _custom_vjp(self, eqn, invals: list[Val], path: str) -> list[Val]:
        call = eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr"))
        if self.observer is not None:
            return self.eval_closed(call, invals, path)
        primal = self._body_fn(call.jaxpr, call.consts, invals, path, self._loop_key())

        def original(*values):
            return _rebind(eqn, values)

        emulated = jax.custom_vjp(primal)

        def forward(*values):
            return primal(*values), values

        def backward(values, cotangents):
            _, pullback = jax.vjp(original, *values)
            return tuple(pullback(list(cotangents)))

        emulated.defvjp(forward, backward)
        return [Val(o) for o in emulated(*[v.value for v in invals])]

    def _remat(self, eqn, invals: list[Val], path: str) -> list[Val]:
        sub = eqn.params["jaxpr"]
        closed = isinstance(sub, jex_core.ClosedJaxpr)
        jaxpr, consts = (sub.jaxpr, sub.consts) if closed else (sub, [])
        if self.observer is not None:
            return self.eval_jaxpr(jaxpr, consts, invals, path)
        body = self._body_fn(jaxpr, consts, invals, path, self._loop_key())
        wrapped = jax.checkpoint(body, prevent_cse=eqn.params.get("prevent_cse", True),
                                 policy=eqn.params.get("policy"))
        return [Val(o) for o in wrapped(*[v.value for v in invals])]

    def _shard_map(self, eqn, invals: list[Val], path: str) -> list[Val]:
        from jax.sharding import PartitionSpec

        p = eqn.params
        if self.observer is not None:
            raise NotImplementedError(
                f"shard_map at {path or '<top level>'!r}: CESTAC and the emulation trace do not "
                f"look inside shard_map; analyze the per-device function instead")
        if not hasattr(jax, "shard_map"):
            raise NotImplementedError("emulating shard_map needs jax.shard_map (JAX >= 0.6)")
        axes = p.get("newly_manual_axes", p.get("manual_axes", p.get("axis_names")))
        axes = frozenset(axes if axes is not None else p["mesh"].axis_names)
        key = self._loop_key()
        jaxpr = p["jaxpr"]
        tags = list(invals)

        def body(*values):
            sub = None
            if key is not None:
                *values, sub = values
                for axis in sorted(axes, key=str):
                    sub = jax.random.fold_in(sub, lax.axis_index(axis))
            child = self._child(sub)
            args = [Val(x, t.fmt, t.const) for x, t in zip(values, tags, strict=True)]
            return tuple(v.value for v in child.eval_jaxpr(jaxpr, [], args, path))

        in_specs = tuple(p["in_specs"]) + ((PartitionSpec(),) if key is not None else ())
        mapped = jax.shard_map(body, mesh=p["mesh"], in_specs=in_specs,
                               out_specs=tuple(p["out_specs"]), axis_names=set(axes),
                               check_vma=p.get("check_vma", p.get("check_rep", True)))
        args = [v.value for v in invals] + ([key] if key is not None else [])
        return [Val(o) for o in mapped(*args)]

    # --- control flow --------------------------------------------------------------------------

    def _loop_key(self) -> jax.Array | None:
        return self._next_key() if self.key is not None else None

    def _probe(self, fn, *args) -> dict[str, jax.ShapeDtypeStruct]:
        """The observer sites (and count shapes) that tracing ``fn(observer, *args)`` records."""
        probe = self.observer.child()
        abstract = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)), args)
        jax.eval_shape(functools.partial(fn, probe), *abstract)
        return {site: jax.ShapeDtypeStruct(np.shape(c), jnp.result_type(c))
                for site, c in sorted(probe.counts.items())}

    def _scan_segments(self, jaxpr, path: str, length: int) -> list[tuple[int, int]]:
        """Runs of iterations whose operations all resolve to the same rules."""
        if length <= 1 or not any(_distinguishing(r.path) for r in self.policy.rules):
            return [(0, length)]
        from dp2ejax.arith.policy import OP_KINDS, OPERAND_KINDS

        paths = sorted(_body_paths(jaxpr, path, set()))

        def signature(i: int):
            iteration = (*self.iteration, (_iteration_path(path, str(i)), None))
            return tuple(self._match(self._rule_path(p, iteration), k)[0]
                         for p in paths for k in OP_KINDS + OPERAND_KINDS)

        segments, start, previous = [], 0, signature(0)
        for i in range(1, length):
            current = signature(i)
            if current != previous:
                segments.append((start, i))
                start, previous = i, current
        segments.append((start, length))
        return segments

    def _scan(self, eqn, invals: list[Val], path: str) -> list[Val]:
        p = eqn.params
        nconsts, ncarry, length = p["num_consts"], p["num_carry"], p["length"]
        consts = invals[:nconsts]
        carry = [v.value for v in invals[nconsts: nconsts + ncarry]]
        xs = [v.value for v in invals[nconsts + ncarry:]]
        segments = self._scan_segments(p["jaxpr"].jaxpr, path, length)
        if len(segments) == 1:
            carry, ys = self._scan_run(p, consts, carry, xs, path, self.iteration, length)
            return [Val(v) for v in (*carry, *ys)]
        pieces = {}
        for start, stop in (segments[::-1] if p["reverse"] else segments):
            label = str(start) if stop - start == 1 else f"{start}-{stop - 1}"
            rewrite = (_iteration_path(path, str(start)), _iteration_path(path, label))
            carry, ys = self._scan_run(p, consts, carry, [x[start:stop] for x in xs], path,
                                       (*self.iteration, rewrite), stop - start)
            pieces[start] = ys
        nys = len(eqn.outvars) - ncarry
        ys = [jnp.concatenate([pieces[start][i] for start, _ in segments]) for i in range(nys)]
        return [Val(v) for v in (*carry, *ys)]

    def _scan_run(self, p, consts, init, xs, path, iteration, length):
        ncarry = p["num_carry"]
        body_jaxpr = p["jaxpr"]
        key0 = self._loop_key()

        def body(observer, key, c, x):
            child, key = self._iteration(key, observer, iteration)
            outs = child.eval_closed(body_jaxpr, [*consts, *(Val(v) for v in c),
                                                 *(Val(v) for v in x)], path)
            values = [v.value for v in outs]
            return key, values[:ncarry], values[ncarry:]

        scan = functools.partial(lax.scan, length=length, reverse=p["reverse"],
                                 unroll=p["unroll"])
        if self.observer is None:
            def step(carry, x):
                key, c, y = body(None, *carry, x)
                return (key, c), y

            (_, carry), ys = scan(step, (key0, init), xs)
            return carry, ys

        x_slices = [jax.ShapeDtypeStruct(np.shape(v)[1:], jnp.result_type(v)) for v in xs]
        sites = self._probe(lambda obs, c, x: body(obs, key0, c, x), init, x_slices)

        def counted_step(carry, x):
            key, c, counts = carry
            observer = self.observer.child()
            key, c, y = body(observer, key, c, x)
            return (key, c, _add_counts(counts, observer.counts)), y

        (_, carry, counts), ys = scan(counted_step, (key0, init, _zero_counts(sites)), xs)
        self.observer.add(counts)
        return carry, ys

    def _iteration(self, key, observer=None, iteration=None):
        if key is None:
            return self._child(None, observer, iteration), None
        key, sub = jax.random.split(key)
        return self._child(sub, observer, iteration), key

    def _while(self, eqn, invals: list[Val], path: str) -> list[Val]:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond_consts, body_consts = invals[:cn], invals[cn: cn + bn]
        init = [v.value for v in invals[cn + bn:]]
        key0 = self._loop_key()

        def predicate(observer, key, c):
            child = self._child(None if key is None else jax.random.fold_in(key, 1), observer)
            outs = child.eval_closed(p["cond_jaxpr"], [*cond_consts, *(Val(v) for v in c)],
                                     path)
            return outs[0].value

        def body(observer, key, c):
            if observer is not None:  # count the comparisons of the test that let us in
                predicate(observer, key, c)
            child, key = self._iteration(key, observer)
            outs = child.eval_closed(p["body_jaxpr"], [*body_consts, *(Val(v) for v in c)],
                                     path)
            return key, [v.value for v in outs]

        if self.observer is None:
            _, out = lax.while_loop(lambda carry: predicate(None, *carry),
                                    lambda carry: body(None, *carry), (key0, init))
            return [Val(v) for v in out]

        sites = self._probe(lambda obs, c: body(obs, key0, c), init)

        def counted_body(carry):
            key, c, counts = carry
            observer = self.observer.child()
            key, c = body(observer, key, c)
            return key, c, _add_counts(counts, observer.counts)

        key, out, counts = lax.while_loop(lambda carry: predicate(None, *carry[:2]),
                                          counted_body, (key0, init, _zero_counts(sites)))
        self.observer.add(counts)
        predicate(self.observer, key, out)  # the final test, which ended the loop
        return [Val(v) for v in out]

    def _cond(self, eqn, invals: list[Val], path: str) -> list[Val]:
        index, *operands = (v.value for v in invals)
        tags = invals[1:]
        key0 = self._loop_key()

        def run(branch, observer, key, *ops):
            child = self._child(key, observer)
            outs = child.eval_closed(
                branch, [Val(x, t.fmt, t.const) for x, t in zip(ops, tags, strict=True)], path)
            return [v.value for v in outs]

        branches = eqn.params["branches"]
        if self.observer is None:
            fns = [functools.partial(run, b, None) for b in branches]
            return [Val(v) for v in lax.switch(index, fns, key0, *operands)]

        sites = {}
        for b in branches:
            sites.update(self._probe(lambda obs, *ops, b=b: run(b, obs, key0, *ops), *operands))
        sites = dict(sorted(sites.items()))

        def counted(branch, key, *ops):
            observer = self.observer.child()
            out = run(branch, observer, key, *ops)
            return out, _add_counts(_zero_counts(sites), observer.counts)

        out, counts = lax.switch(index, [functools.partial(counted, b) for b in branches],
                                 key0, *operands)
        self.observer.add(counts)
        return [Val(v) for v in out]


def _zero_counts(sites: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
    return {site: jnp.zeros(s.shape, s.dtype) for site, s in sites.items()}


def _add_counts(counts: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    unknown = set(new) - set(counts)
    if unknown:
        raise AssertionError(f"observer sites appeared after probing: {sorted(unknown)}")
    return {site: total + new[site] if site in new else total for site, total in counts.items()}
