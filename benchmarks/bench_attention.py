"""Benchmark of block-sparse attention against dense ``jax.nn.dot_product_attention``.

What it measures, in one run (CPU preset, the default):

* ``block_sparse_attention`` (jitted, ``--implementation``, default ``xla``) side by side with
  ``jax.nn.dot_product_attention`` given the same mask as a dense boolean ``mask=`` argument
  (``BlockMask.to_dense()``, passed as a jit argument), on batch 1, 4 heads, head_dim 64,
  float32, blocks of 128, sequences 2048 to 16384;
* masks at target block densities 1/32, 1/16, 1/8, 1/4: causal sliding windows
  (``patterns.local(L, window, causal=True)``) with the window chosen so that each query
  block row keeps ``round(target * L / block)`` key blocks (the target away from the start of
  the sequence; the first rows keep fewer, and the mask's actual block density, a little lower,
  is recorded). One block per row, the diagonal, is causal attention within blocks
  (``patterns.document`` with one-block documents); a target below that is skipped with a
  note. ~1/2 is ``patterns.causal``;
* forward, and forward+backward (``jax.grad`` of the sum of the outputs w.r.t. q, k, v);
* times (median and minimum over interleaved repetitions), ratio dense / block-sparse,
  GFLOP/s on the kept blocks (``4 * kept_block_elements * head_dim`` per forward, times 3.5 for
  forward+backward: FlashAttention-2's count, backward = 2.5 forwards), and the max abs
  difference between the two outputs (forward) or gradients (forward+backward).

Dense attention materialises ``batch * heads * L * L`` float32 scores (4 GiB at L=16384 with 4
heads); a dense case whose estimated peak (``DENSE_BYTES_FACTOR`` times that) exceeds 75 % of
the memory available (``MemAvailable``, or the accelerator's ``bytes_limit``) is skipped, and
the JSON says so.

Timing: each contender is compiled ahead of time (``compile_s``) and called once untimed; then
the contenders of one case are called in turn, one call each per repetition (interleaved), each
call timed to ``block_until_ready``. Repetitions: as many as fit ``--seconds-per-case`` (judged
from the untimed call), at least 1 and at most ``--reps``. Figures are medians; ratios use them.
On Linux, glibc's malloc is tuned as in ``bench_arith.py`` (``--no-malloc-tuning`` to leave it).

Target: at L=8192 and block density ~1/8, the block-sparse forward at least 5x faster than
dense.

``--gpu`` preset (for a GPU machine): bfloat16, batch 1, 16 heads, head_dim 128, causal sliding
window 1024, L = 4096 to 32768, blocks of 128, block-sparse ``implementation="pallas"`` (change
with ``--implementation``) against ``jax.nn.dot_product_attention(implementation="cudnn",
is_causal=True, local_window_size=(1023, 0))`` (no mask array). Without a GPU it writes a JSON
that says it skipped; ``--dense-implementation xla`` runs the same code path with XLA's dense
attention (a smoke test on CPU).

Usage::

    python benchmarks/bench_attention.py                 # CPU grid, ~10 minutes on 2 cores
    python benchmarks/bench_attention.py --quick         # smoke run: L=256, 512, one rep
    python benchmarks/bench_attention.py --seq-lens 8192 --densities 0.125 --reps 20
    python benchmarks/bench_attention.py --gpu           # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_arith import base_metadata, mem_available_bytes, tune_malloc, write_json

from dp2ejax.attention.kernel import block_sparse_attention
from dp2ejax.attention.mask import BlockMask
from dp2ejax.attention.patterns import causal, document, local

DEFAULT_OUT = Path("benchmarks/out/bench_attention.json")
QUICK_OUT = Path("benchmarks/out/bench_attention_quick.json")
GPU_OUT = Path("benchmarks/out/bench_attention_gpu.json")

TARGET_SEQ_LEN = 8192
TARGET_DENSITY = 1 / 8
TARGET_SPEEDUP = 5.0  # block-sparse forward >= 5x faster than dense at L=8192, density 1/8

BACKWARD_FLOPS_FACTOR = 3.5  # forward+backward FLOPs / forward FLOPs (FlashAttention-2 count)
# Estimated peak bytes of XLA's dense attention over the bytes of its float32 scores (measured
# on CPU at L=8192, 4 heads: ~2.2 forward, ~6.4 forward+backward), with a margin.
DENSE_BYTES_FACTOR = {"forward": 2.5, "forward_backward": 7.0}
MEMORY_SHARE = 0.75


# --- presets -------------------------------------------------------------------------------------

PRESETS = {
    "cpu": dict(batch=1, heads=4, head_dim=64, dtype="float32", block_size=128,
                seq_lens=(2048, 4096, 8192, 16384), densities=("1/32", "1/16", "1/8", "1/4",
                                                               "causal"),
                implementation="xla", dense_implementation="xla", reps=10,
                seconds_per_case=15.0),
    "cpu_quick": dict(batch=1, heads=2, head_dim=32, dtype="float32", block_size=32,
                      seq_lens=(256, 512), densities=("1/8", "causal"), implementation="xla",
                      dense_implementation="xla", reps=1, seconds_per_case=1.0),
    "gpu": dict(batch=1, heads=16, head_dim=128, dtype="bfloat16", block_size=128,
                seq_lens=(4096, 8192, 16384, 32768), window=1024, implementation="pallas",
                dense_implementation="cudnn", reps=20, seconds_per_case=10.0),
    "gpu_quick": dict(batch=1, heads=2, head_dim=32, dtype="bfloat16", block_size=32,
                      seq_lens=(256, 512), window=64, implementation="pallas",
                      dense_implementation="cudnn", reps=1, seconds_per_case=1.0),
}


# --- timing --------------------------------------------------------------------------------------


def time_interleaved(contenders: dict[str, Callable[[], object]], max_reps: int,
                     seconds_budget: float) -> dict[str, dict]:
    """Times already compiled contenders, one call of each in turn per repetition.

    One untimed call each first; the repetitions are as many as fit ``seconds_budget`` judged
    from those calls (at least 1, at most ``max_reps``).

    Returns:
      name -> {"median_s", "min_s", "reps", "first_call_s"}.
    """
    first = {}
    for name, call in contenders.items():
        start = time.perf_counter()
        jax.block_until_ready(call())
        first[name] = time.perf_counter() - start
    reps = max(1, min(max_reps, int(seconds_budget / max(sum(first.values()), 1e-9))))
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, call in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            seconds[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "reps": len(ts),
                   "first_call_s": first[name]} for name, ts in seconds.items()}


def compiled(fn: Callable, *args) -> tuple[Callable[[], object], float]:
    """``jax.jit(fn)`` compiled ahead of time for ``args``; returns (call, compile seconds)."""
    start = time.perf_counter()
    executable = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    return (lambda: executable(*args)), seconds


# --- masks ---------------------------------------------------------------------------------------


def parse_density(text: str) -> float | str:
    """``"1/8"``, ``"0.125"`` -> 0.125; ``"causal"`` stays."""
    if text == "causal":
        return text
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"density must be a fraction like 1/8, a number or "
                                         f"'causal', got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], got {text!r}")
    return value


def causal_window_blocks(target: float, num_blocks: int) -> int:
    """Blocks per query row ``k`` of a causal sliding window at block density ``target``:
    ``round(target * num_blocks)`` (at least 1), so that every query block row away from the
    start keeps exactly ``target`` of the key blocks; the first ``k - 1`` rows keep fewer, so
    the whole mask's block density, ``(k * n - k * (k - 1) / 2) / n**2``, is a little lower
    (recorded with each case)."""
    return min(max(1, round(target * num_blocks)), num_blocks)


def make_mask(seq_len: int, density: float | str, block_size: int) -> tuple[BlockMask, dict]:
    """The mask for a target density (see the module docstring) and its description."""
    if density == "causal":
        return causal(seq_len, block_size=block_size), {"pattern": "causal"}
    blocks = causal_window_blocks(density, seq_len // block_size)
    if blocks == 1:  # only the diagonal: causal within blocks (documents one block long)
        ids = np.arange(seq_len) // block_size
        return document(ids, block_size=block_size, causal=True), {
            "pattern": "document(one block per document, causal=True)",
            "window_blocks_per_row": 1}
    # keys in (i - window, i]: exactly `blocks` key blocks per query row away from the start
    window = (blocks - 1) * block_size + 1
    mask = local(seq_len, window, block_size=block_size, causal=True)
    return mask, {"pattern": f"local(window={window}, causal=True)", "window": window,
                  "window_blocks_per_row": blocks}


def kept_block_elements(mask: BlockMask, batch: int, heads: int) -> int:
    """Score elements in kept blocks, over the batch and heads (what the kernel computes)."""
    per_mask = int(mask.layout.sum()) * mask.block_q * mask.block_kv
    return per_mask * (batch // mask.shape[0]) * (heads // mask.shape[1])


# --- memory --------------------------------------------------------------------------------------


def available_bytes() -> tuple[int | None, str]:
    """Memory the dense contender may use, and where the figure comes from."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), \
                f"{device.platform} bytes_limit - bytes_in_use"
        return None, f"{device.platform}: no memory_stats"
    available = mem_available_bytes()
    if available is None:
        return None, "unknown"
    return available, "/proc/meminfo MemAvailable"


def dense_fits(phase: str, batch: int, heads: int, seq_len: int) -> tuple[bool, dict]:
    scores = batch * heads * seq_len * seq_len * 4
    estimate = DENSE_BYTES_FACTOR[phase] * scores + seq_len * seq_len
    available, source = available_bytes()
    info = {"estimated_peak_bytes": int(estimate), "available_bytes": available,
            "available_source": source}
    return available is None or estimate <= MEMORY_SHARE * available, info


# --- one case ------------------------------------------------------------------------------------


def max_abs_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
               for x, y in leaves)


def grad_of_sum(attention: Callable) -> Callable:
    def loss(q, k, v, *rest):
        return jnp.sum(attention(q, k, v, *rest).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))


def bench_phase(phase: str, sparse_fn: Callable, dense_fn: Callable | None, qkv, dense_args,
                flops_kept: float, flops_dense: float, args) -> dict:
    """Times one phase (``forward`` or ``forward_backward``) of one case."""
    if phase == "forward_backward":
        sparse_fn = grad_of_sum(sparse_fn)
        dense_fn = None if dense_fn is None else grad_of_sum(dense_fn)
    sparse_call, sparse_compile = compiled(sparse_fn, *qkv)
    contenders = {"block_sparse": sparse_call}
    compile_s = {"block_sparse": sparse_compile}
    result: dict = {}
    if dense_fn is not None:
        try:
            dense_call, compile_s["dense"] = compiled(dense_fn, *qkv, *dense_args)
            contenders["dense"] = dense_call
        except Exception as err:  # noqa: BLE001 - e.g. cuDNN refusing a configuration
            result["dense_skipped"] = f"dense failed to compile: {type(err).__name__}: {err}"
    timings = time_interleaved(contenders, args.reps, args.seconds_per_case)
    for name, entry in timings.items():
        entry["compile_s"] = compile_s[name]
        entry["gflops_per_s_kept_blocks"] = flops_kept / entry["median_s"] / 1e9
    result["timings"] = timings
    if "dense" in timings:
        timings["dense"]["gflops_per_s_computed"] = flops_dense / timings["dense"]["median_s"] / 1e9
        result["dense_over_sparse"] = (timings["dense"]["median_s"]
                                       / timings["block_sparse"]["median_s"])
        result["max_abs_diff"] = max_abs_diff(contenders["block_sparse"](), contenders["dense"]())
    return result


def bench_case(seq_len: int, mask: BlockMask, mask_info: dict, args, seed: int) -> dict:
    dtype = jnp.dtype(args.dtype)
    shape = (args.batch, seq_len, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(seed), 3)
    qkv = tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
    kept = kept_block_elements(mask, args.batch, args.heads)
    flops_forward = 4 * kept * args.head_dim
    flops_dense = 4 * args.batch * args.heads * seq_len * seq_len * args.head_dim
    case = {"seq_len": seq_len, **mask_info, "block_density": mask.block_density,
            "element_density": mask.density, "kept_blocks": int(mask.layout.sum()),
            "kept_block_elements": kept, "forward_flops_kept_blocks": flops_forward}

    def sparse(q, k, v):
        return block_sparse_attention(q, k, v, mask, implementation=args.implementation)

    for phase, factor in (("forward", 1.0), ("forward_backward", BACKWARD_FLOPS_FACTOR)):
        dense, dense_args, note = dense_contender(phase, seq_len, mask, args)
        result = bench_phase(phase, sparse, dense, qkv, dense_args, factor * flops_forward,
                             factor * flops_dense, args)
        if note:
            result["dense_skipped"] = note
        case[phase] = result
        print(f"  L={seq_len} {mask_info['pattern']} block density {mask.block_density:.4f} "
              f"{phase}: " + ", ".join(f"{name} {t['median_s'] * 1e3:.1f} ms"
                                       for name, t in result["timings"].items())
              + (f", dense/sparse {result['dense_over_sparse']:.2f}"
                 if "dense_over_sparse" in result else f" ({note})"),
              file=sys.stderr, flush=True)
    return case


def dense_contender(phase: str, seq_len: int, mask: BlockMask, args):
    """(dense function, its extra arguments, None) or (None, (), why it is skipped)."""
    if args.dense_implementation in ("cudnn", "xla") and args.preset.startswith("gpu"):
        # the sliding window by the library's own arguments: no mask array
        window = args.window

        def dense(q, k, v):
            return jax.nn.dot_product_attention(
                q, k, v, is_causal=True, local_window_size=(window - 1, 0),
                implementation=args.dense_implementation)
        if args.dense_implementation == "cudnn":
            return dense, (), None
    else:
        def dense(q, k, v, dense_mask):
            return jax.nn.dot_product_attention(q, k, v, mask=dense_mask,
                                                implementation=args.dense_implementation)
    fits, info = dense_fits(phase, args.batch, args.heads, seq_len)
    if not fits:
        gib = 2**30
        return None, (), (f"dense not run: estimated peak {info['estimated_peak_bytes'] / gib:.1f} "
                          f"GiB > {MEMORY_SHARE:.0%} of {info['available_bytes'] / gib:.1f} GiB "
                          f"available ({info['available_source']})")
    if args.preset.startswith("gpu"):
        return dense, (), None
    return dense, (jnp.asarray(mask.to_dense()),), None


# --- targets, metadata, main ---------------------------------------------------------------------


def speedup_target(cases: list[dict]) -> dict:
    target = {"target": f"block-sparse forward >= {TARGET_SPEEDUP:g}x faster than dense at "
                        f"L={TARGET_SEQ_LEN}, block density ~1/8",
              "threshold": TARGET_SPEEDUP}
    for case in cases:
        if case["seq_len"] == TARGET_SEQ_LEN and case.get("target_density") == TARGET_DENSITY:
            ratio = case["forward"].get("dense_over_sparse")
            if ratio is None:
                return {**target, "measured": False, "passed": None,
                        "note": case["forward"].get("dense_skipped", "dense not measured")}
            return {**target, "measured": True, "block_density": case["block_density"],
                    "speedup": ratio, "passed": ratio >= TARGET_SPEEDUP}
    return {**target, "measured": False, "passed": None,
            "note": "this run has no L=8192, density 1/8 case"}


def metadata(argv: list[str]) -> dict:
    return {**base_metadata(argv), "load_average_1_5_15_min_at_start": list(os.getloadavg())}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes (L=256, 512), one repetition")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU preset: bf16, 16 heads, head_dim 128, causal window 1024, "
                             "L=4096..32768, against cuDNN; skips without a GPU")
    parser.add_argument("--seq-lens", type=int, nargs="+", help="override the sequence lengths")
    parser.add_argument("--densities", type=parse_density, nargs="+",
                        help="override the target block densities (CPU preset): fractions like "
                             "1/8, or 'causal'")
    parser.add_argument("--reps", type=int, help="most timed repetitions per case")
    parser.add_argument("--seconds-per-case", type=float,
                        help="time budget of the repetitions of one case and phase")
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--implementation", help="block_sparse_attention implementation")
    parser.add_argument("--dense-implementation",
                        help="jax.nn.dot_product_attention implementation (GPU preset: cudnn; "
                             "'xla' runs the GPU preset's code path anywhere)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc thresholds alone")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT}; {QUICK_OUT} with --quick, "
                             f"{GPU_OUT} with --gpu)")
    args = parser.parse_args(argv)
    args.preset = ("gpu" if args.gpu else "cpu") + ("_quick" if args.quick else "")
    for name, value in PRESETS[args.preset].items():
        if name != "densities" and getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.densities is None:
        args.densities = [parse_density(d) for d in PRESETS[args.preset].get("densities", ())]
    if args.out is None:
        args.out = GPU_OUT if args.gpu else QUICK_OUT if args.quick else DEFAULT_OUT
    if args.reps < 1 or args.seconds_per_case <= 0 or args.block_size < 1:
        parser.error("--reps, --seconds-per-case and --block-size must be positive")
    bad = [n for n in args.seq_lens if n < 1 or n % args.block_size]
    if bad:
        parser.error(f"sequence lengths {bad} are not multiples of the block size "
                     f"{args.block_size}")
    return args


def cases_to_run(args) -> list[tuple[int, BlockMask, dict]]:
    """(seq_len, mask, description) for every case; unreachable or duplicate targets noted."""
    cases, notes = [], []
    for seq_len in args.seq_lens:
        if args.preset.startswith("gpu"):
            mask = local(seq_len, args.window, block_size=args.block_size, causal=True)
            cases.append((seq_len, mask, {"pattern": f"local(window={args.window}, causal=True)",
                                          "window": args.window}))
            continue
        seen = set()
        for density in args.densities:
            mask, info = make_mask(seq_len, density, args.block_size)
            label = density if density == "causal" else str(Fraction(density).limit_denominator())
            info = {"target_density": density, "target_label": label, **info}
            key = info.get("window_blocks_per_row", "causal")
            if density != "causal" and (mask.block_density > 1.5 * density or key in seen):
                notes.append(f"L={seq_len}, target {label}: not reachable with blocks of "
                             f"{args.block_size} (nearest: block density "
                             f"{mask.block_density:.4f}{', already run' if key in seen else ''})")
                continue
            seen.add(key)
            cases.append((seq_len, mask, info))
    return cases, notes


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    malloc = "not tuned (--no-malloc-tuning)" if args.no_malloc_tuning else tune_malloc()
    config = {key: getattr(args, key) for key in (
        "preset", "batch", "heads", "head_dim", "dtype", "block_size", "seq_lens", "densities",
        "implementation", "dense_implementation", "reps", "seconds_per_case", "seed")}
    if args.gpu:
        config["window"] = args.window
        config.pop("densities")
    result = {"metadata": {**metadata([sys.argv[0], *argv]), "malloc": malloc},
              "config": config, "quick": args.quick,
              "conventions": {
                  "gflops_per_s_kept_blocks": "4 * kept_block_elements * head_dim per forward "
                                              f"(x{BACKWARD_FLOPS_FACTOR} forward+backward) "
                                              "over the median time, for either contender",
                  "gflops_per_s_computed": "dense only: the same over all batch * heads * L * L "
                                           "score elements",
                  "dense_over_sparse": "median dense time / median block-sparse time",
                  "max_abs_diff": "forward: outputs; forward_backward: gradients w.r.t. q, k, v",
              }}
    if args.gpu and jax.default_backend() != "gpu" and args.dense_implementation == "cudnn":
        result["skipped"] = (f"--gpu needs a GPU (backend here: {jax.default_backend()}); "
                             "nothing measured. '--dense-implementation xla' runs the preset's "
                             "code path anyway")
        result["cases"], result["targets"], result["all_targets_passed"] = [], [], None
    else:
        cases, notes = cases_to_run(args)
        result["notes"] = notes
        result["cases"] = [bench_case(seq_len, mask, info, args, args.seed)
                           for seq_len, mask, info in cases]
        if args.gpu:
            result["targets"] = []
            result["all_targets_passed"] = None
        else:
            target = speedup_target(result["cases"])
            result["targets"] = [target]
            measured = [t["passed"] for t in result["targets"] if t["measured"]]
            result["all_targets_passed"] = all(measured) if measured else None

    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
