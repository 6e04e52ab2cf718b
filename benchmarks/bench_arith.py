"""Benchmark of dp2ejax rounding against JAX casts, ml_dtypes and pychop, and of ``emulate``.

What it measures, in one run on ``--size`` float32 values (default 2**22):

* ``round_to`` (jitted) in ``nearest`` and ``stochastic`` modes for bf16, fp16, fp8_e4m3 and
  fp4_e2m1, side by side with
  - a jitted ``x.astype(low).astype(float32)`` round trip (JAX has all four dtypes),
  - an ml_dtypes cast round trip on the host (NumPy),
  - pychop's JAX backend (``pychop.Chop``), both as shipped (called on a jax array) and wrapped
    in ``jax.jit``. pychop's stochastic mode (``rmode=5``) cannot be wrapped in ``jax.jit``: it
    keeps its PRNG key on the object and splits it on every call, so under ``jit`` the key is
    a tracer that leaks out of the trace (the next call raises ``UnexpectedTracerError``) and
    the compiled function reuses one noise array forever. Its stochastic mode is therefore
    measured as shipped; a jitted variant that threads the key in by hand is reported for
    information only.
* the overhead of ``dp2ejax.emulate`` on a Flax MLP forward (bf16, nearest, ``exact``
  accumulation) against the plain jitted forward.

Timing: on this machine (2-core VM) a jitted kernel that writes a fresh 16 MiB output takes
either ~1 ms or ~6-10 ms: the slow calls take 4097 minor page faults each, because glibc handed
the output buffer out from pages it had just given back to the kernel (per-thread arena heaps
shrinking, or a fresh mmap). So, on Linux/glibc, the script first sets ``mallopt``
M_ARENA_MAX=1, M_MMAP_THRESHOLD=32 MiB and M_TRIM_THRESHOLD=1 GiB, before JAX starts its
threads, so that freed buffers are reused; ``--no-malloc-tuning`` leaves malloc alone. The
setting applies to every contender alike and is recorded in the JSON.

Every contender is compiled and called once before timing; then the contenders of one
case are called in turn, one call each per repetition (interleaved, so that all see the same
machine state), each call timed to ``block_until_ready``. Figures are the median and minimum
over the repetitions; ratios and targets use medians.

Correctness is checked on the way: ``round_to`` nearest must equal the ml_dtypes cast bit for
bit on the bench input; edge values (top binade, overflow, subnormals, signed zeros) are
compared against ml_dtypes for ``round_to`` and pychop (pychop is not a reference: it rounds
values in the top binade of a format to 0 and drops the sign of zero).

Usage::

    python benchmarks/bench_arith.py                # full run, 2**22 values
    python benchmarks/bench_arith.py --quick        # smoke run, 2**16 values, a few reps
    python benchmarks/bench_arith.py --size 1048576 --reps 50 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dp2ejax import get_format, round_to

# Format name -> (JAX/ml_dtypes dtype, scale applied to the standard normal input). The scales
# put the bulk of the values in the format's normal range with a tail in its subnormals and,
# for the 8- and 4-bit formats, a small share beyond the largest finite value.
FORMATS: dict[str, tuple[object, float]] = {
    "bf16": (ml_dtypes.bfloat16, 1.0),
    "fp16": (np.float16, 1.0),
    "fp8_e4m3": (ml_dtypes.float8_e4m3fn, 64.0),
    "fp4_e2m1": (ml_dtypes.float4_e2m1fn, 2.0),
}
MODES = ("nearest", "stochastic")
PYCHOP_RMODE = {"nearest": 1, "stochastic": 5}

# Targets from the issue.
TARGET_NEAREST_VS_ASTYPE = 1.25  # round_to time <= 1.25 x astype round trip time
TARGET_NEAREST_VS_PYCHOP_JIT = 10.0  # round_to at least 10x faster than jitted pychop
TARGET_STOCHASTIC_VS_PYCHOP = 5.0  # round_to stochastic at least 5x faster than pychop's
TARGET_EMULATE_OVERHEAD = 3.0  # emulate(exact) forward <= 3x plain forward

DEFAULT_OUT = Path("benchmarks/out/bench_arith.json")
QUICK_OUT = Path("benchmarks/out/bench_arith_quick.json")


# --- timing -------------------------------------------------------------------------------------


def tune_malloc() -> str:
    """Makes glibc keep and reuse freed large buffers (see the module docstring); says what it
    did. Must run before JAX creates its CPU client (and its threads) to take full effect."""
    if not sys.platform.startswith("linux"):
        return "not tuned (not Linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as err:
        return f"not tuned ({err})"
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # from glibc's malloc.h
    settings = ((m_arena_max, 1), (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30))
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        return "not tuned (mallopt refused)"
    return "mallopt: M_ARENA_MAX=1, M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB"


def time_interleaved(
    contenders: dict[str, Callable[[int], object]], reps: int
) -> dict[str, dict[str, float]]:
    """Times each contender ``reps`` times, one call of each in turn per repetition.

    Each contender is a function of the repetition index (so random modes can take a fresh key)
    returning something ``jax.block_until_ready`` accepts. One untimed warm-up call each first.

    Returns:
      name -> {"median_s", "min_s", "reps", "page_faults_per_call"}; the last (minor faults of
      the process during the timed calls, averaged) tells allocator noise from kernel time.
    """
    for call in contenders.values():
        jax.block_until_ready(call(0))
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    faults: dict[str, int] = dict.fromkeys(contenders, 0)
    for rep in range(reps):
        for name, call in contenders.items():
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            jax.block_until_ready(call(rep))
            seconds[name].append(time.perf_counter() - start)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "reps": len(ts),
            "page_faults_per_call": faults[name] / len(ts),
        }
        for name, ts in seconds.items()
    }


def add_throughput(timings: dict[str, dict[str, float]], size: int) -> None:
    for entry in timings.values():
        entry["values_per_s_median"] = size / entry["median_s"]
        entry["values_per_s_best"] = size / entry["min_s"]


# --- pychop ------------------------------------------------------------------------------------


def load_pychop():
    """Imports pychop with its JAX backend, or returns (None, reason)."""
    try:
        import pychop
    except ImportError as err:
        reason = f"pychop not installed ({err}); install the bench extra: pip install -e '.[bench]'"
        return None, reason
    pychop.backend("jax")
    return pychop, None


def pychop_chop(pychop, fmt_name: str, rmode: int):
    fmt = get_format(fmt_name)
    return pychop.Chop(fmt.exponent_bits, fmt.mantissa_bits, rmode=rmode, subnormal=True)


def pychop_semantics(fmt_name: str) -> str | None:
    """Where pychop's format differs from the dp2ejax/ml_dtypes one, in words (None if not)."""
    fmt = get_format(fmt_name)
    if fmt.has_inf:
        return None
    # pychop always reserves the top exponent field (IEEE style) and overflows to inf.
    ieee_max = (2 - 2.0**-fmt.mantissa_bits) * 2.0 ** (2 ** (fmt.exponent_bits - 1) - 1)
    return (
        f"pychop models IEEE-style e{fmt.exponent_bits}m{fmt.mantissa_bits} (top exponent field "
        f"reserved, overflow to inf, max finite {ieee_max:g}) instead of {fmt_name} "
        f"(max finite {fmt.max_finite:g}, overflow -> {fmt.overflow}); timing is comparable, "
        f"values are not"
    )


def pychop_jit_stochastic_key_threaded(chop):
    """pychop rmode 5 under jit with the key passed in as an argument (a hand-made workaround:
    pychop itself keeps the key on the object). Informative only."""
    impl = chop._impl

    def call(x, key):
        saved = impl.rng_key
        impl.rng_key = key
        try:
            return chop(x)
        finally:
            impl.rng_key = saved

    return jax.jit(call)


def check_pychop_stochastic_jit(pychop, fmt_name: str, x: jax.Array) -> str:
    """Runs pychop's stochastic mode under plain jax.jit and says what happens."""
    chop = pychop_chop(pychop, fmt_name, 5)
    jitted = jax.jit(lambda v: chop(v))
    first = jitted(x)
    second = jitted(x)
    same = bool(jnp.all(first == second))
    try:
        chop(x)
        after = "the Chop object still works eagerly afterwards"
    except Exception as err:  # noqa: BLE001 - recording what pychop raises
        after = f"calling the Chop object afterwards raises {type(err).__name__}"
    return (
        f"not jittable: jax.jit(chop) {'repeats the same noise on every call' if same else 'runs'}"
        f" and leaks its PRNG key tracer into the object; {after}"
    )


# --- correctness -------------------------------------------------------------------------------


def ml_dtypes_round_trip(x: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dtype).astype(np.float32)


def bitwise_equal(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def edge_values(fmt_name: str) -> np.ndarray:
    """Edge values of a format: around its max finite value and top binade, beyond it, around
    its smallest normal and subnormal, signed zeros and infinities (no NaN: formats without NaN
    keep it as NaN in round_to by design, unlike the ml_dtypes cast)."""
    fmt = get_format(fmt_name)
    top = 2.0**fmt.max_exponent
    mx, mn, sub = fmt.max_finite, fmt.min_normal, fmt.min_subnormal
    values = [
        mx,
        mx * (1 + 2.0 ** -(fmt.mantissa_bits + 2)),
        mx * (1 + 2.0 ** -(fmt.mantissa_bits + 1)),
        mx * 1.5,
        2 * top,
        3 * top,
        top,
        top * 1.25,
        (top + mx) / 2,
        mn,
        mn * 0.75,
        mn * 0.5,
        sub,
        sub * 0.5,
        sub * 0.75,
        sub * 0.25,
        0.0,
        -0.0,
        1.0,
        1.0 + 2.0 ** -(fmt.mantissa_bits + 1),
        np.inf,
        -np.inf,
    ]
    values = np.array(values, np.float64)
    values = np.concatenate([values, -values[:-2]])
    with np.errstate(over="ignore"):
        return values.astype(np.float32)


def edge_case_report(fmt_name: str, dtype, pychop) -> dict:
    x = edge_values(fmt_name)
    reference = ml_dtypes_round_trip(x, dtype)
    ours = np.asarray(jax.jit(lambda v: round_to(v, fmt_name))(jnp.asarray(x)))
    report = {"values": len(x), "round_to_bitwise_equal_ml_dtypes": bitwise_equal(ours, reference)}
    if pychop is not None:
        theirs = np.asarray(pychop_chop(pychop, fmt_name, 1)(jnp.asarray(x)))
        wrong = ~(theirs.view(np.uint32) == reference.view(np.uint32))
        wrong &= ~(np.isnan(theirs) & np.isnan(reference))
        report["pychop_mismatches"] = [
            {"x": float(v), "ml_dtypes": float(r), "pychop": float(p)}
            for v, r, p in zip(x[wrong], reference[wrong], theirs[wrong], strict=True)
        ]
    return report


# --- rounding benchmark ------------------------------------------------------------------------


def bench_rounding(size: int, reps: int, seed: int, pychop, pychop_missing: str | None) -> dict:
    """Times every contender for every format and mode; returns format -> results."""
    normal = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    keys = [jax.random.key(seed + rep) for rep in range(reps)]
    results = {}
    for fmt_name, (dtype, scale) in FORMATS.items():
        x_host = normal * np.float32(scale)
        results[fmt_name] = bench_format(fmt_name, dtype, x_host, keys, pychop, pychop_missing)
        results[fmt_name]["input"] = f"standard normal x {scale:g}, float32, seed {seed}"
    return results


def bench_format(fmt_name, dtype, x_host, keys, pychop, pychop_missing) -> dict:
    fmt = get_format(fmt_name)
    reps, size = len(keys), x_host.size
    x = jax.device_put(x_host)
    reference = ml_dtypes_round_trip(x_host, dtype)
    jax_dtype = jnp.dtype(dtype)
    results = {
        "share_overflowing": float(np.mean(np.abs(x_host) > fmt.max_finite)),
        "share_below_min_normal": float(np.mean(np.abs(x_host) < fmt.min_normal)),
    }
    round_nearest = jax.jit(lambda v: round_to(v, fmt_name))
    astype = jax.jit(lambda v: v.astype(jax_dtype).astype(jnp.float32))
    results["round_to_nearest_bitwise_equal_ml_dtypes"] = bitwise_equal(round_nearest(x), reference)
    results["astype_bitwise_equal_ml_dtypes"] = bitwise_equal(astype(x), reference)

    # nearest
    contenders: dict[str, Callable[[int], object]] = {
        "round_to": lambda rep: round_nearest(x),
        "astype_round_trip": lambda rep: astype(x),
        "ml_dtypes_round_trip": lambda rep: ml_dtypes_round_trip(x_host, dtype),
    }
    notes: dict[str, str] = {}
    if pychop is not None:
        shipped = pychop_chop(pychop, fmt_name, PYCHOP_RMODE["nearest"])
        inner = pychop_chop(pychop, fmt_name, PYCHOP_RMODE["nearest"])
        jitted = jax.jit(lambda v: inner(v))
        contenders["pychop"] = lambda rep: shipped(x)
        contenders["pychop_jit"] = lambda rep: jitted(x)
        pychop_bits = np.asarray(shipped(x)).view(np.uint32)
        results["pychop_nearest_share_equal_ml_dtypes"] = float(
            np.mean(pychop_bits == reference.view(np.uint32))
        )
        if semantics := pychop_semantics(fmt_name):
            notes["pychop_format"] = semantics
    else:
        notes["pychop"] = pychop_missing
    timings = time_interleaved(contenders, reps)
    add_throughput(timings, size)
    results["nearest"] = {"timings": timings, "notes": notes}

    # stochastic
    stochastic = jax.jit(lambda v, k: round_to(v, fmt_name, "stochastic", k))
    stochastic_rng_jax = jax.jit(lambda v, k: round_to(v, fmt_name, "stochastic", k, rng="jax"))
    contenders = {
        "round_to": lambda rep: stochastic(x, keys[rep]),
        "round_to_rng_jax": lambda rep: stochastic_rng_jax(x, keys[rep]),
    }
    notes = {}
    if pychop is not None:
        shipped_stochastic = pychop_chop(pychop, fmt_name, PYCHOP_RMODE["stochastic"])
        threaded = pychop_jit_stochastic_key_threaded(
            pychop_chop(pychop, fmt_name, PYCHOP_RMODE["stochastic"])
        )
        raw_keys = [jax.random.key_data(key) for key in keys]
        contenders["pychop"] = lambda rep: shipped_stochastic(x)
        contenders["pychop_jit_key_threaded"] = lambda rep: threaded(x, raw_keys[rep])
        notes["pychop_jit"] = check_pychop_stochastic_jit(pychop, fmt_name, x)
        notes["pychop_jit_key_threaded"] = (
            "informative only: pychop rmode 5 in jax.jit with its PRNG key swapped for a jit "
            "argument during tracing (a hand-made workaround, not pychop's API)"
        )
        if semantics := pychop_semantics(fmt_name):
            notes["pychop_format"] = semantics
    else:
        notes["pychop"] = pychop_missing
    timings = time_interleaved(contenders, reps)
    add_throughput(timings, size)
    results["stochastic"] = {"timings": timings, "notes": notes}
    return results


def rounding_targets(rounding: dict) -> list[dict]:
    targets = []

    def median(fmt_name, mode, name):
        entry = rounding[fmt_name][mode]["timings"].get(name)
        return None if entry is None else entry["median_s"]

    for fmt_name in rounding:
        ours = median(fmt_name, "nearest", "round_to")
        astype = median(fmt_name, "nearest", "astype_round_trip")
        ratio = ours / astype
        targets.append(
            {
                "target": "round_to nearest time <= 1.25 x jitted astype round trip",
                "format": fmt_name,
                "mode": "nearest",
                "ratio": ratio,
                "threshold": TARGET_NEAREST_VS_ASTYPE,
                "passed": ratio <= TARGET_NEAREST_VS_ASTYPE,
            }
        )
        pychop_jit = median(fmt_name, "nearest", "pychop_jit")
        if pychop_jit is not None:
            speedup = pychop_jit / ours
            targets.append(
                {
                    "target": "round_to nearest >= 10x faster than pychop in jax.jit",
                    "format": fmt_name,
                    "mode": "nearest",
                    "speedup": speedup,
                    "threshold": TARGET_NEAREST_VS_PYCHOP_JIT,
                    "passed": speedup >= TARGET_NEAREST_VS_PYCHOP_JIT,
                }
            )
        pychop_stochastic = median(fmt_name, "stochastic", "pychop")
        if pychop_stochastic is not None:
            speedup = pychop_stochastic / median(fmt_name, "stochastic", "round_to")
            targets.append(
                {
                    "target": "round_to stochastic >= 5x faster than pychop stochastic "
                    "(as shipped; it cannot be jitted)",
                    "format": fmt_name,
                    "mode": "stochastic",
                    "speedup": speedup,
                    "threshold": TARGET_STOCHASTIC_VS_PYCHOP,
                    "passed": speedup >= TARGET_STOCHASTIC_VS_PYCHOP,
                }
            )
    return targets


def ratios(rounding: dict) -> dict:
    """Median-time ratios: contender time / round_to time (> 1: round_to is faster)."""
    out = {}
    for fmt_name, fmt_results in rounding.items():
        for mode in MODES:
            timings = fmt_results[mode]["timings"]
            ours = timings["round_to"]["median_s"]
            out[f"{fmt_name}/{mode}"] = {
                f"{name}_over_round_to": entry["median_s"] / ours
                for name, entry in timings.items()
                if name != "round_to"
            }
    return out


# --- emulate benchmark -------------------------------------------------------------------------


def bench_emulate(reps: int, seed: int, quick: bool) -> dict | str:
    """emulate(apply, bf16 nearest, exact accumulation) vs the plain jitted Flax MLP forward."""
    try:
        from dp2ejax import PrecisionPolicy, emulate
    except ImportError:
        return "not available"
    import flax.linen as nn

    width, depth, batch = (64, 3, 16) if quick else (512, 3, 256)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth - 1):
                x = nn.gelu(nn.Dense(width)(x))
            return nn.Dense(width)(x)

    model = MLP()
    x = jax.random.normal(jax.random.key(seed), (batch, width), jnp.float32)
    params = model.init(jax.random.key(seed + 1), x)

    def apply(params, x):
        return model.apply(params, x)

    plain = jax.jit(apply)
    try:
        policy = PrecisionPolicy.uniform("bf16", accumulation="exact")
        emulated = jax.jit(emulate(apply, policy))
        timings = time_interleaved(
            {"plain": lambda rep: plain(params, x), "emulate": lambda rep: emulated(params, x)},
            reps,
        )
    except Exception as err:  # noqa: BLE001 - an API in flux must not cost the rounding results
        return {
            "error": f"{type(err).__name__}: {err}",
            "target": {
                "target": "emulate(exact) forward time <= 3 x plain jitted forward",
                "passed": False,
            },
        }
    overhead = timings["emulate"]["median_s"] / timings["plain"]["median_s"]
    deviation = float(jnp.max(jnp.abs(emulated(params, x) - plain(params, x))))
    return {
        "model": f"Flax linen MLP, {depth} Dense layers of width {width}, gelu, batch {batch}, "
        "float32",
        "policy": "PrecisionPolicy.uniform('bf16', accumulation='exact'), nearest",
        "timings": timings,
        "overhead": overhead,
        "max_abs_difference_to_plain": deviation,
        "target": {
            "target": "emulate(exact) forward time <= 3 x plain jitted forward",
            "ratio": overhead,
            "threshold": TARGET_EMULATE_OVERHEAD,
            "passed": overhead <= TARGET_EMULATE_OVERHEAD,
        },
    }


# --- posit benchmark ---------------------------------------------------------------------------

TARGET_POSIT_VS_UNIVERSAL = 20.0  # round_posit posit16 at least 20x faster than universal-dtypes


def bench_posit(size: int, reps: int, seed: int) -> dict:
    """posit16 ``round_posit`` (jitted, nearest) against a universal-dtypes cast round trip
    (float32 -> posit16 -> float32 through NumPy) on standard normal float32 values. Universal
    takes ~1 s per 2**22 values, so at most 5 repetitions."""
    import warnings

    from dp2ejax.arith.posit import round_posit

    try:
        import universal_dtypes
    except ImportError as err:
        return {"error": f"universal-dtypes not installed ({err}): pip install -e '.[test]'",
                "target": {"target": "round_posit posit16 >= 20x faster than universal-dtypes",
                           "passed": False}}
    fmt = get_format("posit16")
    x_host = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    x = jax.device_put(x_host)
    ours = jax.jit(lambda v: round_posit(v, fmt))

    def universal(rep):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return x_host.astype(universal_dtypes.posit16).astype(np.float32)

    timings = time_interleaved({"round_posit": lambda rep: ours(x), "universal_dtypes": universal},
                               min(reps, 5))
    add_throughput(timings, size)
    speedup = timings["universal_dtypes"]["median_s"] / timings["round_posit"]["median_s"]
    return {
        "input": f"standard normal, float32, seed {seed}",
        "round_posit_bitwise_equal_universal": bitwise_equal(ours(x), universal(0)),
        "timings": timings,
        "speedup_best": timings["universal_dtypes"]["min_s"] / timings["round_posit"]["min_s"],
        "target": {
            "target": "round_posit posit16 nearest >= 20x faster than universal-dtypes cast",
            "speedup": speedup,
            "threshold": TARGET_POSIT_VS_UNIVERSAL,
            "passed": speedup >= TARGET_POSIT_VS_UNIVERSAL,
        },
    }


# --- block-scaled (MX) benchmark ---------------------------------------------------------------

TARGET_MX_VS_FP8 = 2.0  # round_block_scaled (MX) time <= 2 x round_to(x, "fp8_e4m3") time
PYCHOP_MX_SIZE = 2**14  # pychop's MX quantizer loops in Python: timed on this many values


def bench_block_scaled(size: int, reps: int, seed: int, pychop) -> dict:
    """mxfp8_e4m3 and mxfp4 ``round_block_scaled`` (jitted, nearest, blocks of 32 along the
    last axis) against plain ``round_to(x, "fp8_e4m3")`` on the same standard normal x 64
    float32 values, and pychop's MX quantizer ``pychop.mx_quantize`` (NumPy backend: a Python
    loop over blocks and elements; its JAX backend wraps the same NumPy code), timed on
    ``PYCHOP_MX_SIZE`` values and scaled linearly to ``size``."""
    from dp2ejax.arith.blockscaled import round_block_scaled

    names = {"mxfp8_e4m3": "mxfp8_e4m3", "mxfp4": "mxfp4_e2m1"}  # ours -> pychop's
    x_host = (np.random.default_rng(seed).standard_normal(size) * 64).astype(np.float32)
    x = jnp.asarray(x_host)
    fp8 = jax.jit(lambda v: round_to(v, "fp8_e4m3"))
    ours = {name: jax.jit(lambda v, name=name: round_block_scaled(v, name)) for name in names}
    contenders = {"round_to_fp8_e4m3": lambda rep: fp8(x)}
    for name, call in ours.items():
        contenders[f"round_block_scaled_{name}"] = lambda rep, call=call: call(x)
    timings = time_interleaved(contenders, reps)
    add_throughput(timings, size)
    results: dict = {"input": f"{size} standard normal float32 values x 64", "timings": timings}
    targets = []
    for name in names:
        ratio = (timings[f"round_block_scaled_{name}"]["median_s"]
                 / timings["round_to_fp8_e4m3"]["median_s"])
        results[f"{name}_over_round_to_fp8_e4m3"] = ratio
        targets.append({"target": "round_block_scaled (MX) time <= 2 x round_to fp8_e4m3",
                        "format": name, "ratio": ratio, "threshold": TARGET_MX_VS_FP8,
                        "passed": ratio <= TARGET_MX_VS_FP8})
    if pychop is None:
        results["pychop"] = "pychop not installed"
        return {"results": results, "targets": targets}
    n = min(size, PYCHOP_MX_SIZE)
    sub = x_host[:n]
    results["pychop"] = {"values_timed": n, "note": "pychop.mx_quantize(backend='numpy'); time "
                         "per call scaled by size / values_timed"}
    for name, pychop_name in names.items():
        reference = np.asarray(ours[name](jnp.asarray(sub)))
        seconds = []
        for _ in range(min(reps, 3)):
            start = time.perf_counter()
            theirs = pychop.mx_quantize(sub, format=pychop_name, backend="numpy")
            seconds.append(time.perf_counter() - start)
        scaled = statistics.median(seconds) * size / n
        results["pychop"][name] = {
            "median_s_at_values_timed": statistics.median(seconds),
            "median_s_scaled_to_size": scaled,
            "slowdown_vs_round_block_scaled":
                scaled / timings[f"round_block_scaled_{name}"]["median_s"],
            "share_bitwise_equal_round_block_scaled": float(np.mean(
                np.asarray(theirs, np.float32).view(np.uint32) == reference.view(np.uint32))),
            # pychop returns +0 where a negative value rounds to zero
            "share_equal_in_value_round_block_scaled": float(np.mean(
                np.asarray(theirs, np.float32) == reference)),
        }
    return {"results": results, "targets": targets}


# --- metadata and main -------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def base_metadata(argv: list[str]) -> dict:
    """What every benchmark's JSON records about the run: date, command, machine, versions."""
    import flax
    import jaxlib

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "numpy": np.__version__,
            "flax": flax.__version__,
        },
    }


def mem_available_bytes() -> int | None:
    """The host's ``MemAvailable`` (``/proc/meminfo``) in bytes, or None where it is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_json(result: dict, out: Path) -> None:
    """Prints ``result`` as JSON and writes it to ``out``."""
    text = json.dumps(result, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


def metadata(pychop, argv: list[str]) -> dict:
    meta = base_metadata(argv)
    meta["versions"].update(ml_dtypes=ml_dtypes.__version__,
                            pychop=getattr(pychop, "__version__", None))
    return meta


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="values per array (default 2**22)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2**16 values, 3 repetitions, a small MLP"
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's malloc thresholds alone (timings become bimodal)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output (default {DEFAULT_OUT}; {QUICK_OUT} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 2**16 if args.quick else 2**22
    if args.reps is None:
        args.reps = 3 if args.quick else 30
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.size < 1 or args.reps < 1:
        parser.error("--size and --reps must be positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    malloc = "not tuned (--no-malloc-tuning)" if args.no_malloc_tuning else tune_malloc()
    pychop, pychop_missing = load_pychop()
    result = {
        "metadata": {**metadata(pychop, [sys.argv[0], *argv]), "malloc": malloc},
        "size": args.size,
        "reps": args.reps,
        "quick": args.quick,
    }
    rounding = bench_rounding(args.size, args.reps, args.seed, pychop, pychop_missing)
    result["rounding"] = rounding
    result["ratios"] = ratios(rounding)
    result["edge_cases"] = {
        fmt_name: edge_case_report(fmt_name, dtype, pychop)
        for fmt_name, (dtype, _) in FORMATS.items()
    }
    result["round_to_nearest_bitwise_equal_ml_dtypes"] = all(
        r["round_to_nearest_bitwise_equal_ml_dtypes"] for r in rounding.values()
    ) and all(e["round_to_bitwise_equal_ml_dtypes"] for e in result["edge_cases"].values())
    result["emulate"] = bench_emulate(args.reps, args.seed, args.quick)
    targets = rounding_targets(rounding)
    if isinstance(result["emulate"], dict):
        targets.append(result["emulate"]["target"])
    result["posit"] = bench_posit(args.size, args.reps, args.seed)
    targets.append(result["posit"]["target"])
    result["block_scaled"] = bench_block_scaled(args.size, args.reps, args.seed, pychop)
    targets.extend(result["block_scaled"]["targets"])
    result["targets"] = targets
    result["all_targets_passed"] = all(t["passed"] for t in targets)

    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
