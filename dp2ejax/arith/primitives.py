"""The rule table of :func:`dp2ejax.emulate`: what each JAX primitive is, keyed by the primitive
object (as JAX's own interpreters, ``checkify`` and ``jet``, key theirs).

Every primitive the interpreter meets has one of these rules:

- ``arithmetic``: a floating-point operation (``add``, ``exp``, ``erf``…): its float operands are
  rounded to the operation's format and its result is rounded;
- ``closed``: an operation whose result lies in any format that holds its operands (``neg``,
  ``max``, ``floor``…): operands rounded, result known to be in the format;
- ``comparison``: ``lt``, ``eq``…, ``is_finite``: operands rounded, boolean result;
- ``conversion``: ``convert_element_type``: the result rounded (a widening conversion is exact);
- ``reduction`` / ``closed_reduction``: sums, products, cumulative sums, ``psum``, windowed and
  scattered sums (rounded); maxima, minima and arg-extrema (closed);
- ``matmul``: ``dot_general``, convolutions, ragged and sparse products (input and accumulation
  rules);
- ``library``: linear-algebra routines (Cholesky, QR, SVD, triangular solves, FFT…): operands and
  results rounded to the elementwise format, the routine's own arithmetic at carrier precision;
- ``data_movement``: reshapes, slices, gathers, selects, collectives that move values: nothing is
  rounded, the format a value is known to lie in is kept;
- ``bits``: bit manipulation and integer-only work (``bitcast_convert_type``, shifts,
  ``nextafter``, PRNG primitives): never rounded, the result is a bit pattern, not a value
  computed in the format;
- ``native``: host callbacks, tokens, ``custom_linear_solve``: bound as they are, results not
  rounded;
- ``call``: ``jit``, ``closed_call``: the body is evaluated in place (a ``jit`` of ``jax.random``'s
  own functions (bits to floats: uniform, normal, bernoulli…) runs natively instead);
- ``remat``, ``custom_jvp``, ``custom_vjp``, ``scan``, ``while``, ``cond``, ``shard_map``:
  higher-order primitives with rules of their own in the interpreter.

A primitive in none of these is refused with an error that names it.
"""

from __future__ import annotations

import functools
import importlib
import sys

_MODULES = (
    "jax.extend.core.primitives", "jax.lax", "jax._src.lax.lax", "jax._src.lax.slicing",
    "jax._src.lax.special", "jax._src.lax.linalg", "jax._src.lax.windowed_reductions",
    "jax._src.lax.fft", "jax._src.lax.ann", "jax._src.lax.convolution",
    "jax._src.lax.control_flow", "jax._src.lax.control_flow.loops",
    "jax._src.lax.control_flow.conditionals", "jax._src.lax.control_flow.solves",
    "jax._src.lax.parallel", "jax._src.core", "jax._src.pjit", "jax._src.custom_derivatives",
    "jax._src.ad_checkpoint", "jax._src.ad_util", "jax._src.dispatch", "jax._src.callback",
    "jax._src.debugging", "jax._src.random.prng", "jax._src.prng", "jax._src.shard_map",
    "jax.experimental.shard_map",
)
# imported only if the user's program already imported them
_OPTIONAL_MODULES = (
    "jax.experimental.sparse.bcoo", "jax.experimental.sparse.bcsr",
)

RULE_KINDS: dict[str, tuple[str, ...]] = {
    "arithmetic": (
        "add", "add_any", "add_jaxvals", "sub", "mul", "div", "pow", "integer_pow", "square",
        "sqrt", "rsqrt", "cbrt", "exp", "exp2", "expm1", "log", "log1p", "logistic", "tanh",
        "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh",
        "atanh", "erf", "erfc", "erf_inv", "lgamma", "digamma", "igamma", "igammac",
        "igamma_grad_a", "random_gamma_grad", "bessel_i0e", "bessel_i1e", "polygamma", "zeta",
        "regularized_incomplete_beta", "mulhi",
    ),
    "closed": ("neg", "abs", "sign", "floor", "ceil", "round", "max", "min", "clamp", "rem"),
    "comparison": ("eq", "ne", "lt", "le", "gt", "ge", "eq_to", "le_to", "lt_to", "is_finite"),
    "conversion": ("convert_element_type",),
    "reduction": (
        "reduce_sum", "reduce_prod", "cumsum", "cumprod", "cumlogsumexp", "reduce_window_sum",
        "scatter-add", "scatter_add", "scatter-mul", "scatter_mul", "scatter-sub",
        "scatter_sub", "psum", "psum_invariant", "reduce_scatter", "select_and_scatter_add",
        "select_and_gather_add",
    ),
    "closed_reduction": (
        "reduce_max", "reduce_min", "argmax", "argmin", "cummax", "cummin", "reduce_window_max",
        "reduce_window_min", "scatter-min", "scatter_min", "scatter-max", "scatter_max", "pmax",
        "pmin", "top_k", "approx_top_k", "reduce_and", "reduce_or", "reduce_xor",
    ),
    "matmul": (
        "dot_general", "conv_general_dilated", "ragged_dot", "ragged_dot_general",
        "bcoo_dot_general", "bcoo_spdm", "bcsr_dot_general",
    ),
    "library": (
        "cholesky", "cholesky_update", "eig", "eigh", "lu", "qr", "geqrf", "geqp3",
        "householder_product", "ormqr", "svd", "schur", "hessenberg", "tridiagonal",
        "tridiagonal_solve", "triangular_solve", "symmetric_product", "fft",
    ),
    "data_movement": (
        "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
        "dynamic_slice", "dynamic_update_slice", "gather", "scatter", "concatenate", "pad",
        "rev", "select_n", "copy", "copy_p", "device_put", "sharding_constraint",
        "layout_constraint", "reshard", "mesh_cast", "sort", "split", "stack", "unstack", "tile",
        "stop_gradient", "optimization_barrier", "pvary", "pbroadcast", "all_gather",
        "all_gather_invariant", "all_to_all", "ragged_all_to_all", "ppermute", "axis_index",
        "reduce_precision", "iota", "real", "imag", "conj", "complex", "name",
        "lu_pivots_to_permutation", "zeros_like", "empty", "platform_index", "tie",
        "bcoo_todense", "bcoo_fromdense", "bcoo_transpose", "bcoo_reshape", "bcoo_slice",
        "bcoo_dynamic_slice", "bcoo_squeeze", "bcoo_broadcast_in_dim", "bcoo_concatenate",
        "bcoo_extract", "bcoo_sort_indices", "bcsr_todense", "bcsr_fromdense", "bcsr_extract",
    ),
    "bits": (
        "bitcast_convert_type", "nextafter", "not", "and", "or", "xor", "shift_left",
        "shift_right_arithmetic", "shift_right_logical", "population_count", "clz",
        "random_seed", "random_bits", "random_split", "random_fold_in", "random_wrap",
        "random_unwrap", "random_clone", "threefry2x32", "iota_2x32_shape", "rng_bit_generator",
        "rng_uniform",
    ),
    "native": (
        "pure_callback", "io_callback", "debug_callback", "debug_print", "inspect_sharding",
        "create_token", "after_all", "custom_linear_solve", "linear_solve",
    ),
    "call": ("jit", "pjit", "closed_call", "core_call", "call"),
    "remat": ("remat", "checkpoint", "remat2"),
    "custom_jvp": ("custom_jvp_call",),
    "custom_vjp": ("custom_vjp_call", "custom_vjp_call_jaxpr"),
    "scan": ("scan",),
    "while": ("while",),
    "cond": ("cond",),
    "shard_map": ("shard_map",),
}

_KIND_OF_NAME = {name: kind for kind, names in RULE_KINDS.items() for name in names}


@functools.lru_cache(maxsize=8)
def _table(optional: frozenset[str]) -> dict:
    """Primitive object -> rule kind, over every module that defines primitives."""
    table = {}
    for modname in (*_MODULES, *sorted(optional)):
        try:
            module = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - modules move between JAX versions
            continue
        for attr in dir(module):
            if not attr.endswith("_p"):
                continue
            prim = getattr(module, attr)
            kind = _KIND_OF_NAME.get(getattr(prim, "name", None))
            if kind is not None and _is_primitive(prim):
                table.setdefault(prim, kind)
    return table


def _is_primitive(obj) -> bool:
    from jax.extend.core import Primitive

    return isinstance(obj, Primitive)


def rule_kind(primitive) -> str | None:
    """The rule kind of a primitive object (see the module docstring), or None if it has none.

    Example:
      >>> from jax import lax
      >>> rule_kind(lax.add_p), rule_kind(lax.bitcast_convert_type_p)
      ('arithmetic', 'bits')
    """
    optional = frozenset(m for m in _OPTIONAL_MODULES if m in sys.modules)
    return _table(optional).get(primitive)
