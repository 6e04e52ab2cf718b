"""``emulate``: run a JAX function with every floating-point operation rounded as a policy says.

The function is traced to a jaxpr, and a small interpreter evaluates it equation by equation:
the float operands of each arithmetic operation are rounded to the operation's format (as
hardware converts its inputs), the operation runs in the carrier dtype, and its result is
rounded. Data movement (reshape, slicing, gathers, selects…) is not rounded. The interpreter
remembers which values are already representable in which format, so a chain of operations in
one format rounds each value once. It recurses into ``jit``, ``checkpoint``, ``custom_jvp`` /
``custom_vjp`` calls (their primal computation), ``scan``, ``while`` and ``cond``, and reads
each equation's module path from its name stack (Flax modules and ``jax.named_scope``).

Matmuls (``dot_general``) model how hardware accumulates: ``exact`` (carrier-precision sum,
rounded once), ``blocked(k)`` (sums of k products added to a running sum that is rounded after
each addition) and ``sequential`` (``blocked(1)``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

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
from dp2ejax.arith.policy import PrecisionPolicy, Rule
from dp2ejax.arith.random_bits import random_bits
from dp2ejax.arith.rounding import RANDOM_MODES, _round_straight_through

_DATA_MOVEMENT = frozenset({
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "gather", "concatenate", "pad", "rev", "select_n",
    "copy", "copy_p", "device_put", "sharding_constraint", "sort", "split", "stop_gradient",
    "optimization_barrier", "mesh_cast", "pvary", "reduce_precision", "iota",
    "real", "imag", "conj", "complex", "scatter", "stack",
})
# Scatters carry an update_jaxpr describing how they combine values; they are ordinary
# operations here, the combining ones (scatter-add, -mul, -min, -max) accumulate like reductions.
_SCATTERS = frozenset({"scatter", "scatter-add", "scatter_add", "scatter-mul", "scatter_mul",
                       "scatter-min", "scatter_min", "scatter-max", "scatter_max"})
# Operations whose result is representable in any format that holds their operands.
_CLOSED_ON_FORMAT = frozenset({
    "neg", "abs", "max", "min", "reduce_max", "reduce_min", "cummax", "cummin", "clamp",
    "sign", "floor", "ceil", "round", "rem", "top_k", "reduce_window_max", "reduce_window_min",
})
_REDUCTIONS = frozenset({
    "reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "cumsum", "cumprod", "cummax",
    "cummin", "cumlogsumexp", "argmax", "argmin", "reduce_and", "reduce_or",
    *(_SCATTERS - {"scatter"}),
})
_MATMULS = frozenset({"dot_general", "conv_general_dilated", "bcoo_dot_general",
                      "bcoo_spdm", "bcsr_dot_general", "ragged_dot", "ragged_dot_general"})
_LOOPS = frozenset({"scan", "while", "cond"})
_CARRIERS = frozenset(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))

_TRANSFORM_WRAPPER = re.compile(r"[A-Za-z_]\w*\(")


def emulate(fn: Callable, policy: PrecisionPolicy | str) -> Callable:
    """Transforms ``fn`` so that every floating-point operation's result is rounded by ``policy``.

    Args:
      fn: any JAX-traceable function of arrays/pytrees (e.g. a Flax ``model.apply``).
      policy: a :class:`PrecisionPolicy`, or a format name for a uniform nearest policy.

    Returns:
      A function with ``fn``'s signature plus a keyword ``rounding_key`` (a PRNG key, required
      when the policy uses the ``stochastic`` or ``random`` modes). It can be jitted, vmapped
      and differentiated: gradients are straight-through the roundings, so
      ``jax.grad(emulate(f, p))`` rounds the forward pass only, while ``emulate(jax.grad(f), p)``
      rounds the backward pass too.

    Operations that ``fn`` itself computes in float16/bfloat16 are rounded only to formats that
    fit those dtypes; a format wider than a float32 computation (fp64) raises a ValueError.

    Example:
      >>> import jax.numpy as jnp
      >>> f = lambda x: jnp.sum(x * 1.001)
      >>> emulate(f, "bf16")(jnp.ones(256, jnp.float32))
      Array(256., dtype=float32)
    """
    if isinstance(policy, str | FloatFormat | PositFormat | IntFormat | BlockScaledFormat):
        policy = PrecisionPolicy.uniform(policy)
    if not isinstance(policy, PrecisionPolicy):
        raise ValueError(f"policy must be a PrecisionPolicy or a format name, got {policy!r}")
    needs_key = any(r.mode in RANDOM_MODES for r in (policy.default, *policy.rules))

    @functools.wraps(fn)
    def emulated(*args, rounding_key: jax.Array | None = None, **kwargs):
        if needs_key and rounding_key is None:
            raise ValueError(
                "the policy uses stochastic/random rounding: pass rounding_key=<PRNG key>"
            )
        return run_emulated(fn, policy, args, kwargs, rounding_key if needs_key else None)

    return emulated


def run_emulated(fn: Callable, policy: PrecisionPolicy, args, kwargs, key, observer=None):
    """Traces ``fn(*args, **kwargs)`` and evaluates it under ``policy``; the engine of
    :func:`emulate`. ``observer`` (used by :mod:`dp2ejax.cestac`) sees every arithmetic
    operation: ``observer.record(eqn, path, operands, outputs)`` (which may return replacement
    outputs for an elementwise operation, or None), ``observer.child()`` for a loop body,
    ``observer.counts`` (a dict of site -> scalar count) and ``observer.add(counts)``.
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [_is_array_like(leaf) for leaf in leaves]
    dynamic_leaves = [leaf for leaf, d in zip(leaves, dynamic, strict=True) if d]

    def flat_fn(*dyn):
        it = iter(dyn)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic, strict=True)]
        a, k = jax.tree_util.tree_unflatten(treedef, full)
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dynamic_leaves)
    interpreter = _Interpreter(policy, key, observer)
    outs = interpreter.eval_closed(closed, [(x, None) for x in dynamic_leaves], "")
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(out_shape), [v for v, _ in outs]
    )


def _is_array_like(leaf: Any) -> bool:
    # Python bools are flags (Flax's ``train=True``, ``capture_intermediates=True``): static.
    if isinstance(leaf, bool):
        return False
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int | complex)


def module_path(eqn) -> str:
    """The module path of a jaxpr equation: its name stack without transform wrappers, so
    ``"transpose(jvp(MLP))/Dense_0"`` reads ``"MLP/Dense_0"``."""
    text = str(eqn.source_info.name_stack)
    return _TRANSFORM_WRAPPER.sub("", text).replace(")", "")


def _join(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix and path else prefix or path


def _exact_conversion(operand, out) -> bool:
    """Whether converting ``operand`` to ``out``'s dtype is exact for every value (bool, or a
    float dtype whose values ``out``'s float dtype all holds)."""
    dtype = np.dtype(jnp.result_type(operand))
    if dtype == np.bool_:
        return True
    return dtype in _CARRIERS and carrier_format(dtype).is_subset_of(carrier_format(out.dtype))


def _is_float(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


Tagged = tuple[Any, Format | None]  # a value and the format it is known to lie in


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


class _Interpreter:
    """Evaluates a jaxpr with rounding. ``key`` is None unless the policy draws random bits."""

    def __init__(self, policy: PrecisionPolicy, key: jax.Array | None, observer=None):
        self.policy = policy
        self.key = key
        self.observer = observer
        self.sites = 0
        # A value rounded to a rule's format once, reused at every later use: in the random
        # modes, fresh bits per use would give one datum different values (x - x != 0).
        self._rounded: dict[tuple[int, Rule, int | None], tuple[Any, jax.Array]] = {}

    def _next_key(self) -> jax.Array:
        key = jax.random.fold_in(self.key, self.sites)
        self.sites += 1
        return key

    def _child(self, key: jax.Array | None, observer=None) -> _Interpreter:
        return _Interpreter(self.policy, key, observer)

    # --- rounding ------------------------------------------------------------------------------

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

    def _round_result(self, name: str, operands, out, rule: Rule):
        """Rounds the result ``out`` of ``name(*operands)``; at the carrier's own precision the
        random mode needs the operation itself (see :mod:`dp2ejax.arith.carrier_random`)."""
        if not carrier_format(out.dtype).is_subset_of(rule.format):
            return self._round(out, rule)
        if name == "convert_element_type" and _exact_conversion(operands[0], out):
            return out  # a widening (or same-dtype) conversion is exact: nothing to round
        if rule.mode == "random":
            bits = random_bits(self._next_key(), out.shape, out.dtype, self.policy.rng)
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

    def _round(self, value, rule: Rule, axis: int | None = None):
        bits = None
        if rule.mode in RANDOM_MODES:
            bits = random_bits(self._next_key(), value.shape, value.dtype, self.policy.rng)
        return _round_straight_through(value, bits, rule.format, rule.mode, rule.saturate, axis)

    def _round_operand(self, tagged: Tagged, rule: Rule, path: str, prim: str,
                       axis: int | None = None):
        value, tag = tagged
        value = jnp.asarray(value)
        if not _is_float(value) or not self._applies(rule, value.dtype, path, prim):
            return value
        if tag is not None and tag.is_subset_of(rule.format) and not rule.saturate:
            return value
        if carrier_format(value.dtype).is_subset_of(rule.format):
            return value  # every carrier value is representable: converting it is exact
        if not isinstance(rule.format, BlockScaledFormat | IntFormat):
            axis = None  # only blocks and channels have an axis: one rounding serves every use
        memo = (id(tagged[0]), rule, axis)
        if memo not in self._rounded:
            self._rounded[memo] = (tagged[0], self._round(value, rule, axis))  # keeps the id
        return self._rounded[memo][1]

    # --- evaluation ----------------------------------------------------------------------------

    def eval_closed(self, closed, args: Sequence[Tagged], prefix: str) -> list[Tagged]:
        return self.eval_jaxpr(closed.jaxpr, closed.consts, args, prefix)

    def eval_jaxpr(self, jaxpr, consts, args: Sequence[Tagged], prefix: str) -> list[Tagged]:
        env: dict[Any, Tagged] = {}

        def read(var) -> Tagged:
            if isinstance(var, jex_core.Literal):
                return var.val, None
            return env[var]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = (const, None)
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        for eqn in jaxpr.eqns:
            path = _join(prefix, module_path(eqn))
            outs = self._eval_eqn(eqn, [read(v) for v in eqn.invars], path)
            for var, out in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jex_core.DropVar):
                    env[var] = out
        return [read(v) for v in jaxpr.outvars]

    def _eval_eqn(self, eqn, invals: list[Tagged], path: str) -> list[Tagged]:
        name = eqn.primitive.name
        params = eqn.params
        if name == "scan":
            return self._scan(eqn, invals, path)
        if name == "while":
            return self._while(eqn, invals, path)
        if name == "cond":
            return self._cond(eqn, invals, path)
        sub = params.get("call_jaxpr", params.get("jaxpr"))
        if sub is not None:  # jit, remat, custom_jvp/vjp calls: inline their primal jaxpr
            if isinstance(sub, jex_core.ClosedJaxpr):
                return self.eval_closed(sub, invals, path)
            if isinstance(sub, jex_core.Jaxpr):
                return self.eval_jaxpr(sub, [], invals, path)
        if name not in _SCATTERS and any(True for _ in jex_core.jaxprs_in_params(params)):
            raise NotImplementedError(
                f"emulate does not support the higher-order primitive {name!r} (at "
                f"{path or '<top level>'!r}); call emulate inside it instead"
            )
        values = [v for v, _ in invals]
        float_in = [_is_float(jnp.asarray(v)) for v in values] if values else []
        float_out = [_is_float(v.aval) for v in eqn.outvars]
        multiple = eqn.primitive.multiple_results

        def bind(vals, **overrides):
            out = eqn.primitive.bind(*vals, **{**params, **overrides})
            return list(out) if multiple else [out]

        if name in _DATA_MOVEMENT or not (any(float_in) or any(float_out)):
            tags = {t for (_, t), f in zip(invals, float_in, strict=True) if f}
            tag = tags.pop() if len(tags) == 1 else None
            return [(o, tag if f else None) for o, f in zip(bind(values), float_out, strict=True)]
        if name in _MATMULS:
            return self._matmul(eqn, invals, path, bind)

        kind = "reduction" if name in _REDUCTIONS else "elementwise"
        rule = self.policy.resolve(path, kind)
        if name == "convert_element_type":
            operands = values  # a conversion rounds its result only
        else:
            operands = [self._round_operand(t, rule, path, name) for t in invals]
        outs = bind(operands)
        result = []
        for out, is_float in zip(outs, float_out, strict=True):
            if not is_float or not self._applies(rule, out.dtype, path, name):
                result.append((out, None))
            elif name in _CLOSED_ON_FORMAT:
                result.append((out, rule.format))
            else:
                result.append((self._round_result(name, operands, out, rule), rule.format))
        if self.observer is not None:
            replaced = self.observer.record(eqn, path, operands, [v for v, _ in result])
            if replaced is not None:  # e.g. CESTAC's stochastic comparisons
                result = [(v, t) for v, (_, t) in zip(replaced, result, strict=True)]
        return result

    def _matmul(self, eqn, invals: list[Tagged], path: str, bind) -> list[Tagged]:
        name = eqn.primitive.name
        # the first operand is the left one, the last the right one (sparse products carry
        # index arrays between them, which are not rounded)
        input_rules = [self.policy.resolve(path, "matmul_inputs")] * len(invals)
        input_rules[0] = self.policy.resolve(path, "matmul_lhs")
        input_rules[-1] = self.policy.resolve(path, "matmul_rhs")
        acc_rule = self.policy.resolve(path, "matmul_accumulation")
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
                and all(_is_float(jnp.asarray(v)) for v, _ in invals)):
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
                if self.observer is not None:
                    self.observer.record(eqn, path, [lhs, rhs], [out])
                return [(out, acc_rule.format)]
        else:
            if block is not None:
                raise NotImplementedError(
                    f"accumulation {acc_rule.accumulation} is modelled for dot_general only; give "
                    f"the {name} at {path or '<top level>'!r} an 'exact' matmul_accumulation rule"
                )
            overrides = {"precision": highest} if "precision" in eqn.params else {}
            out = bind(operands, **overrides)[0]
        result = self._round_result(name, operands, out, acc_rule) if rounds else out
        if self.observer is not None:
            self.observer.record(eqn, path, operands, [result])
        return [(result, acc_rule.format if rounds else None)]

    def _int_matmul(self, eqn, invals: list[Tagged], path: str, input_rules: list[Rule],
                    acc_rule: Rule, rounds: bool, block: int | None) -> list[Tagged]:
        """A dot_general of integer-quantized operands as integer hardware computes it: integer
        codes dotted exactly in int32 (see :func:`dp2ejax.arith.integer.int_dot_general`), one
        rescale, then the accumulation rule's single rounding of the result."""
        from dp2ejax.arith.integer import int_dot_general

        if block is not None:
            raise ValueError(
                f"integer matmul inputs at {path or '<top level>'!r} accumulate exactly in int32; "
                f"give them an 'exact' matmul_accumulation rule, not {acc_rule.accumulation}")
        out_dtype = eqn.outvars[0].aval.dtype
        lhs, rhs = (jnp.asarray(v, out_dtype) for v, _ in invals)
        out = int_dot_general(lhs, rhs, eqn.params["dimension_numbers"], input_rules[0].format,
                              input_rules[1].format, preferred_element_type=out_dtype)
        result = self._round_result("dot_general", [lhs, rhs], out, acc_rule) if rounds else out
        if self.observer is not None:
            self.observer.record(eqn, path, [lhs, rhs], [result])
        return [(result, acc_rule.format if rounds else None)]

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

    # --- control flow --------------------------------------------------------------------------

    def _loop_key(self) -> jax.Array | None:
        return self._next_key() if self.key is not None else None

    def _probe(self, fn, *args) -> list[str]:
        """The observer sites that tracing ``fn(observer, *args)`` records (abstractly)."""
        probe = self.observer.child()
        abstract = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)), args)
        jax.eval_shape(functools.partial(fn, probe), *abstract)
        return sorted(probe.counts)

    def _scan(self, eqn, invals: list[Tagged], path: str) -> list[Tagged]:
        p = eqn.params
        nconsts, ncarry = p["num_consts"], p["num_carry"]
        consts = invals[:nconsts]
        init = [v for v, _ in invals[nconsts: nconsts + ncarry]]
        xs = [v for v, _ in invals[nconsts + ncarry:]]
        body_jaxpr = p["jaxpr"]
        key0 = self._loop_key()

        def body(observer, key, c, x):
            child, key = self._iteration(key, observer)
            outs = child.eval_closed(body_jaxpr, [*consts, *((v, None) for v in c),
                                                 *((v, None) for v in x)], path)
            values = [v for v, _ in outs]
            return key, values[:ncarry], values[ncarry:]

        scan = functools.partial(lax.scan, length=p["length"], reverse=p["reverse"],
                                 unroll=p["unroll"])
        if self.observer is None:
            def step(carry, x):
                key, c, y = body(None, *carry, x)
                return (key, c), y

            (_, carry), ys = scan(step, (key0, init), xs)
            return [(v, None) for v in (*carry, *ys)]

        x_slices = [jax.ShapeDtypeStruct(np.shape(v)[1:], jnp.result_type(v)) for v in xs]
        sites = self._probe(lambda obs, c, x: body(obs, key0, c, x), init, x_slices)

        def counted_step(carry, x):
            key, c, counts = carry
            observer = self.observer.child()
            key, c, y = body(observer, key, c, x)
            return (key, c, _add_counts(counts, observer.counts)), y

        (_, carry, counts), ys = scan(counted_step, (key0, init, _zero_counts(sites)), xs)
        self.observer.add(counts)
        return [(v, None) for v in (*carry, *ys)]

    def _iteration(self, key, observer=None):
        if key is None:
            return self._child(None, observer), None
        key, sub = jax.random.split(key)
        return self._child(sub, observer), key

    def _while(self, eqn, invals: list[Tagged], path: str) -> list[Tagged]:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond_consts, body_consts = invals[:cn], invals[cn: cn + bn]
        init = [v for v, _ in invals[cn + bn:]]
        key0 = self._loop_key()

        def predicate(observer, key, c):
            child = self._child(None if key is None else jax.random.fold_in(key, 1), observer)
            outs = child.eval_closed(p["cond_jaxpr"], [*cond_consts, *((v, None) for v in c)],
                                     path)
            return outs[0][0]

        def body(observer, key, c):
            if observer is not None:  # count the comparisons of the test that let us in
                predicate(observer, key, c)
            child, key = self._iteration(key, observer)
            outs = child.eval_closed(p["body_jaxpr"], [*body_consts, *((v, None) for v in c)],
                                     path)
            return key, [v for v, _ in outs]

        if self.observer is None:
            _, out = lax.while_loop(lambda carry: predicate(None, *carry),
                                    lambda carry: body(None, *carry), (key0, init))
            return [(v, None) for v in out]

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
        return [(v, None) for v in out]

    def _cond(self, eqn, invals: list[Tagged], path: str) -> list[Tagged]:
        index, *operands = (v for v, _ in invals)
        tags = [t for _, t in invals[1:]]
        key0 = self._loop_key()

        def run(branch, observer, key, *ops):
            child = self._child(key, observer)
            outs = child.eval_closed(branch, list(zip(ops, tags, strict=True)), path)
            return [v for v, _ in outs]

        branches = eqn.params["branches"]
        if self.observer is None:
            fns = [functools.partial(run, b, None) for b in branches]
            return [(v, None) for v in lax.switch(index, fns, key0, *operands)]

        sites = sorted({s for b in branches
                        for s in self._probe(lambda obs, *ops, b=b: run(b, obs, key0, *ops),
                                             *operands)})

        def counted(branch, key, *ops):
            observer = self.observer.child()
            out = run(branch, observer, key, *ops)
            return out, _add_counts(_zero_counts(sites), observer.counts)

        out, counts = lax.switch(index, [functools.partial(counted, b) for b in branches],
                                 key0, *operands)
        self.observer.add(counts)
        return [(v, None) for v in out]


def _zero_counts(sites: Sequence[str]) -> dict[str, jax.Array]:
    return {site: jnp.zeros((), jnp.int32) for site in sites}


def _add_counts(counts: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    unknown = set(new) - set(counts)
    if unknown:
        raise AssertionError(f"observer sites appeared after probing: {sorted(unknown)}")
    return {site: total + new[site] if site in new else total for site, total in counts.items()}
