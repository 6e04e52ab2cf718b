"""``analyze``: CESTAC significant digits and instabilities of any JAX function.

The function runs ``samples`` times under :func:`dp2ejax.emulate` with every floating-point
operation randomly rounded (the CESTAC ``random`` mode) in the chosen format. The samples are the
lanes of one ``vmap`` inside one ``jit``: a single compiled program. Their spread gives the exact
significant digits of every output element; an observer counts instabilities as it goes.

The compiled program is kept: a second ``analyze`` of the same ``fn`` (the same object) with
arguments of the same shapes, dtypes and static values, and the same options, runs it again
without tracing or compiling (the last 32 programs are kept).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.arith.emulate import _is_array_like, check_rules, run_emulated
from dp2ejax.arith.formats import Format, carrier_format, get_format
from dp2ejax.arith.policy import PrecisionPolicy, Rule
from dp2ejax.cestac.digits import (
    computational_zero,
    nonfinite,
    precision_digits,
    sample_statistics,
    significant_digits,
)
from dp2ejax.cestac.instabilities import (
    COMPARISON_MODES,
    INSTABILITY_KINDS,
    Instability,
    InstabilityObserver,
    parse_site,
)

SAMPLE_AXIS = "cestac_samples"


@dataclasses.dataclass(frozen=True)
class CestacResult:
    """What a CESTAC analysis found. Array fields are pytrees shaped like ``fn``'s output.

    Attributes:
      mean: mean over the samples (the CESTAC result).
      std: sample standard deviation.
      digits: exact significant decimal digits of ``mean`` (float, in [0, max_digits]).
      computational_zero: True where no digit is exact (CADNA's ``@.0``); exact results,
        exact zeros included, are not.
      samples: the raw samples, with the sample axis first.
      instabilities: the sites where instabilities occurred, with counts, most frequent first.
      format: the emulated format's name; ``max_digits`` its precision in decimal digits.
    """

    mean: Any
    std: Any
    digits: Any
    computational_zero: Any
    samples: Any
    instabilities: tuple[Instability, ...] = ()
    format: str = "fp64"
    max_digits: float = 15.95
    n_samples: int = 3
    nonfinite: Any = None
    """True where some sample is NaN or infinite (such results get 0 digits and are not
    computational zeros)."""

    def instability_totals(self) -> dict[str, int]:
        """Total count per instability kind (every kind present, zeros included)."""
        totals = dict.fromkeys(INSTABILITY_KINDS, 0)
        for inst in self.instabilities:
            totals[inst.kind] += inst.count
        return totals

    def min_digits(self) -> float:
        """The fewest exact digits over every output element."""
        leaves = jax.tree_util.tree_leaves(self.digits)
        return float(min(jnp.min(d) for d in leaves)) if leaves else self.max_digits

    def to_dict(self) -> dict:
        """A JSON-ready summary: per-output digit statistics and the instability sites."""
        outputs = []
        paths = jax.tree_util.tree_flatten_with_path(self.digits)[0]
        zeros = jax.tree_util.tree_leaves(self.computational_zero)
        means = jax.tree_util.tree_leaves(self.mean)
        bad = (jax.tree_util.tree_leaves(self.nonfinite) if self.nonfinite is not None
               else [np.zeros(np.shape(z), bool) for z in zeros])
        for (path, digits), zero, mean, nf in zip(paths, zeros, means, bad, strict=True):
            d = np.asarray(digits, np.float64)
            outputs.append({
                "output": jax.tree_util.keystr(path) or "<output>",
                "shape": list(d.shape),
                "digits_min": float(d.min()) if d.size else None,
                "digits_median": float(np.median(d)) if d.size else None,
                "digits_max": float(d.max()) if d.size else None,
                "computational_zeros": int(np.sum(np.asarray(zero))),
                "nonfinite": int(np.sum(np.asarray(nf))),
                "mean_first": float(np.ravel(np.asarray(mean))[0]) if d.size else None,
            })
        return {
            "format": self.format,
            "samples": self.n_samples,
            "max_digits": self.max_digits,
            "outputs": outputs,
            "instability_totals": self.instability_totals(),
            "instabilities": [i.to_dict() for i in self.instabilities],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A CADNA-style end-of-run report."""
        data = self.to_dict()
        lines = [
            "-" * 72,
            f"dp2ejax CESTAC analysis: {self.n_samples} samples, random rounding in "
            f"{self.format} (at most {self.max_digits:.2f} digits)",
            "-" * 72,
        ]
        for out in data["outputs"]:
            if out["digits_min"] is None:
                continue
            lines.append(
                f"{out['output']:<24} shape {tuple(out['shape'])}: exact digits min "
                f"{out['digits_min']:.1f}, median {out['digits_median']:.1f}, max "
                f"{out['digits_max']:.1f}; computational zeros {out['computational_zeros']}"
                + (f"; NON-FINITE {out['nonfinite']}" if out["nonfinite"] else "")
            )
        totals = data["instability_totals"]
        found = sum(totals.values())
        lines.append(f"There are {found} numerical instabilities")
        for kind in INSTABILITY_KINDS:
            lines.append(f"  {totals[kind]:>8} unstable {kind.replace('_', ' ')}")
        for inst in self.instabilities:
            lost = ""
            if inst.digits_lost_min is not None:
                lost = (f" (lost {inst.digits_lost_min:.0f}-{inst.digits_lost_median:.0f}+ "
                        f"digits{', benign' if inst.benign else ''})")
            lines.append(f"  {inst.count:>8} x {inst.kind:<14} {inst.primitive:<10} "
                         f"at {inst.path or '<top level>'}  {inst.source}{lost}")
        lines.append("-" * 72)
        return "\n".join(lines)


def _carrier_dtype(fmt: Format):
    """float64 whenever JAX has it (exact random rounding for every format below fp64);
    float32 otherwise, for formats that fit it."""
    if jax.config.jax_enable_x64:
        return jnp.float64
    if fmt.fits_in(np.float32):
        return jnp.float32
    raise ValueError(
        f"CESTAC in {fmt.name!r} must run in float64, which JAX has disabled: call "
        f"jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) before "
        f"creating arrays"
    )


def analyze(
    fn: Callable,
    *args,
    fmt: str | Format = "fp64",
    samples: int = 3,
    key: jax.Array | None = None,
    policy: PrecisionPolicy | None = None,
    cancellation_digits: float = 4.0,
    comparisons: str = "stochastic",
    sample_sharding: jax.sharding.Sharding | None = None,
    **kwargs,
) -> CestacResult:
    """CESTAC analysis of ``fn(*args, **kwargs)``: exact significant digits and instabilities.

    Args:
      fn: a JAX function (e.g. a Flax ``apply``) returning a pytree of float arrays.
      *args, **kwargs: its arguments. Float leaves are cast to the carrier, float64 (needs
        ``jax_enable_x64``; float32 when x64 is off and the format fits it), except float32
        arrays when every format of the analysis is narrower than float32 (bf16, fp16, fp8):
        those keep their dtype, so state the function builds in float32 still matches.
      fmt: the emulated format (``"fp64"``, ``"fp32"``, ``"bf16"``, …).
      samples: number of random-rounding runs N (>= 2; CADNA uses 3).
      key: PRNG key of the random roundings (default ``jax.random.key(0)``).
      policy: instead of ``fmt``, a full policy; its modes are switched to ``random``.
      cancellation_digits: a sum losing at least this many digits counts as a cancellation.
      comparisons: ``"stochastic"`` (default, as CADNA): a comparison of two results is decided
        on their stochastic numbers (``a == b`` iff ``a - b`` is a computational zero), the same
        in every sample, so all samples follow one control flow; ``"per_sample"``: each sample
        compares its own values and may branch differently.
      sample_sharding: a sharding of the sample axis (e.g. ``NamedSharding(mesh, P("s"))``
        over a 1-D mesh): the samples then run on several devices.

    Returns:
      A :class:`CestacResult`.

    Example:
      >>> import jax.numpy as jnp
      >>> jax.config.update("jax_enable_x64", True)
      >>> r = analyze(lambda x: (x + 1e-8) - x, jnp.float64(1.0))   # cancellation
      >>> 6 < float(r.digits) < 10 and r.instability_totals()["cancellation"] == 1
      True
    """
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an int >= 2, got {samples!r}")
    if comparisons not in COMPARISON_MODES:
        raise ValueError(f"comparisons must be one of {COMPARISON_MODES}, got {comparisons!r}")
    key = jax.random.key(0) if key is None else key
    if sample_sharding is None:
        keys = jax.random.split(key, samples)
    else:  # split on the devices of the sharding (they may belong to several processes)
        impl = jax.random.key_impl(key)
        keys = jax.jit(lambda raw: jax.random.split(jax.random.wrap_key_data(raw, impl=impl),
                                                    samples),
                       out_shardings=sample_sharding)(np.asarray(jax.random.key_data(key)))
    options, dynamic_leaves, narrowest, max_digits = analysis_options(
        fn, args, kwargs, fmt=fmt, samples=samples, policy=policy,
        cancellation_digits=cancellation_digits, comparisons=comparisons)
    try:
        program = _analysis_program(*options)
    except TypeError:  # an unhashable fn or static argument: build the program for this call
        program = _analysis_program.__wrapped__(*options)
    outs, counts = program(keys, dynamic_leaves)
    _check_float_outputs(outs)
    digits = jax.tree_util.tree_map(
        lambda s: significant_digits(s, 0, max_digits=max_digits), outs)
    zero = jax.tree_util.tree_map(lambda s, d: computational_zero(s, 0, d), outs, digits)
    instabilities = sorted(
        (parse_site(site, np.asarray(count)) for site, count in counts.items()),
        key=lambda i: (-i.count, i.kind, i.path, i.source))
    return CestacResult(
        mean=jax.tree_util.tree_map(lambda s: sample_statistics(s, 0)[0], outs),
        std=jax.tree_util.tree_map(lambda s: sample_statistics(s, 0)[1], outs),
        digits=digits,
        computational_zero=zero,
        samples=outs,
        instabilities=tuple(i for i in instabilities if i.count > 0),
        format=narrowest.name,
        max_digits=max_digits,
        n_samples=samples,
        nonfinite=jax.tree_util.tree_map(lambda s: nonfinite(s, 0), outs),
    )


def analysis_options(fn, args, kwargs, *, fmt, samples, policy, cancellation_digits,
                     comparisons):
    """What :func:`analyze` compiles its program from: ``(options, dynamic argument leaves,
    narrowest format, max digits)``; ``_analysis_program(*options)`` is the program (a
    benchmark can build a fresh one with ``_analysis_program.__wrapped__(*options)``)."""
    fmt = get_format(fmt)
    policy = random_policy(policy, fmt)
    formats = policy.formats()
    narrowest = min(formats, key=lambda f: f.precision) if formats else fmt
    widest = max(formats, key=lambda f: f.precision) if formats else fmt
    carrier = _carrier_dtype(widest)
    max_digits = precision_digits(narrowest.precision)
    args, kwargs = _to_carrier((args, kwargs), carrier, widest)
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = tuple(_is_array_like(leaf) for leaf in leaves)
    static = tuple(leaf for leaf, d in zip(leaves, dynamic, strict=True) if not d)
    options = (fn, policy, samples, float(cancellation_digits), float(max_digits), comparisons,
               treedef, dynamic, static)
    return options, [leaf for leaf, d in zip(leaves, dynamic, strict=True) if d], narrowest, \
        max_digits


@functools.lru_cache(maxsize=32)
def _analysis_program(fn, policy, samples, cancellation_digits, max_digits, comparisons,
                      treedef, dynamic, static):
    """The jitted program of :func:`analyze`: (keys, dynamic argument leaves) -> (samples of
    fn's outputs, instability counts), with the static leaves baked in."""
    warned = [False]

    def one_sample(sample_key, dyn):
        it_dyn, it_static = iter(dyn), iter(static)
        leaves = [next(it_dyn) if d else next(it_static) for d in dynamic]
        args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
        observer = InstabilityObserver(SAMPLE_AXIS, samples, cancellation_digits, max_digits,
                                       comparisons)
        out, record = run_emulated(fn, policy, args, kwargs, sample_key, observer,
                                   return_record=True)
        if not warned[0]:
            warned[0] = check_rules(policy, record)
        return out, observer.counts

    def all_samples(keys, dyn):
        outs, counts = jax.vmap(one_sample, in_axes=(0, None), axis_name=SAMPLE_AXIS)(keys, dyn)
        # every sample counts the same (the checks reduce over the samples): keep one, so the
        # counts are small replicated arrays even when the samples span several processes
        return outs, {site: count[0] for site, count in counts.items()}

    return jax.jit(all_samples)


def random_policy(policy: PrecisionPolicy | None, fmt: Format | str = "fp64") -> PrecisionPolicy:
    """The policy of CESTAC's samples: ``policy`` with every rounding rule switched to the
    ``random`` mode (up or down with probability 1/2), or uniform random rounding to ``fmt``.

    Example:
      >>> random_policy(None, "bf16").default.mode
      'random'
    """
    if policy is None:
        return PrecisionPolicy.uniform(fmt, "random")
    if not isinstance(policy, PrecisionPolicy):
        raise ValueError(f"policy must be a PrecisionPolicy, got {type(policy).__name__}")

    def randomised(rule: Rule) -> Rule:
        return rule if rule.format is None else dataclasses.replace(rule, mode="random")

    return dataclasses.replace(policy, default=randomised(policy.default),
                               rules=tuple(randomised(r) for r in policy.rules))


def _to_carrier(tree, carrier, widest: Format | None = None):
    """Float leaves to the carrier, except float32 (float64) arrays whose extra bits already
    hold every format of the analysis (bf16 in float32): casting those would change the dtypes
    of state the function builds itself (an RNN's float32 carry against float64 inputs)."""
    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray | float | np.floating) and not isinstance(
                leaf, bool) and jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            dtype = np.dtype(jnp.result_type(leaf))
            if (widest is not None and not isinstance(leaf, float)
                    and dtype in (np.dtype(np.float32), np.dtype(np.float64))
                    and widest.precision < carrier_format(dtype).precision):
                return leaf
            return jnp.asarray(leaf, carrier)
        return leaf

    return jax.tree_util.tree_map(cast, tree)


def _check_float_outputs(outs) -> None:
    for leaf in jax.tree_util.tree_leaves(outs):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"fn must return floating-point arrays to analyze, got an output of dtype "
                f"{leaf.dtype}"
            )
