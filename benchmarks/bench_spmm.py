"""Benchmark of sparse @ dense (SpMM) on CPU: dp2ejax ``CSR`` against SciPy and jax.experimental.

What it measures, in one run, on random non-symmetric square matrices with ~16 stored values per
row (``16 * n`` uniformly random positions, duplicates summed: Poisson degrees), float32, times a
dense float32 ``[n, k]`` operand, for n = 2**16, 2**18, 2**20 and k = 16, 32, 64, 128:

* ``csr``: ``jax.jit(lambda a, x: a @ x)`` with a dp2ejax :class:`~dp2ejax.sparse.CSR` (its
  default product: degree buckets, see ``dp2ejax/sparse/buckets.py``);
* ``csr_segments``: the same matrix without buckets (gather, multiply, ``segment_sum``), the
  product the ``CSR`` uses under ``jit`` when its structure is traced;
* ``scipy``: ``scipy.sparse.csr_array @ ndarray`` (SciPy's kernel is single-threaded);
* ``jax_bcsr`` and ``jax_bcoo``: ``jax.experimental.sparse.BCSR`` / ``BCOO`` ``@`` dense, jitted.

The JAX contenders that write an ``[nnz, k]`` intermediate (``csr_segments``, ``jax_bcoo``;
``jax_bcsr`` calls jaxlib's native CPU CSR kernel for float32 2-D operands) are skipped where
``SEGMENT_BYTES_FACTOR * nnz * k * 4`` bytes exceed ``MEMORY_SHARE`` of ``MemAvailable``; the
JSON says so.

Per case: median and minimum times, ratios (contender / ``csr`` medians), the max relative
difference from SciPy's result, and an effective bandwidth: the bytes a kernel must move, model
``nnz * (4 + 4)`` (indices and values) ``+ (n + 1) * 4`` (row offsets) ``+ nnz * k * 4`` (one row
of the dense operand read per stored value) ``+ n * k * 4`` (result written), over the median
time, and its share of the machine's copy bandwidth, measured in the same run (``np.copyto`` of
512 MiB on one core, and a jitted ``x + 1`` of 512 MiB, read + write bytes).

Targets: ``csr`` no slower than SciPy for every k >= 64 case; ``csr`` at least 2x faster than
both jax.experimental.sparse formats in every case measured; and memory: a 2**20-node, 2**24-edge
graph (the n = 2**20 matrix, whose 16 * 2**20 random positions give ~2**24 edges) propagating 64
float32 features through 16 layers (``lax.fori_loop`` of ``h = a @ h``) within 24 GiB, judged
from XLA's compiled memory analysis (arguments + outputs + temporaries - aliased), not measured.

Timing as in ``bench_arith.py``: glibc's malloc tuned first (``--no-malloc-tuning`` to leave
it), every contender compiled and called once untimed, then the contenders of a case called in
turn (interleaved) ``reps`` times, each call timed to ``block_until_ready``; ``reps`` is as many
as fit ``--seconds-per-case`` judged from the untimed calls (at least 3, at most ``--reps``).

Usage::

    python benchmarks/bench_spmm.py                   # full grid, ~8 minutes on 2 cores
    python benchmarks/bench_spmm.py --quick           # smoke run: n = 2**10, 2**11; k = 16, 64
    python benchmarks/bench_spmm.py --log2-sizes 18 --ks 64 --reps 20 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_arith import (
    base_metadata,
    mem_available_bytes,
    time_interleaved,
    tune_malloc,
    write_json,
)

DEFAULT_OUT = Path("benchmarks/out/bench_spmm.json")
QUICK_OUT = Path("benchmarks/out/bench_spmm_quick.json")

PRESETS = {
    "full": dict(log2_sizes=(16, 18, 20), ks=(16, 32, 64, 128), reps=10, seconds_per_case=8.0,
                 memory_log2_nodes=20),
    "quick": dict(log2_sizes=(10, 11), ks=(16, 64), reps=3, seconds_per_case=0.5,
                  memory_log2_nodes=12),
}
VALUES_PER_ROW = 16
TARGET_K_VS_SCIPY = 64  # csr no slower than SciPy for k >= 64
TARGET_VS_JAX_SPARSE = 2.0  # csr at least 2x faster than BCSR and BCOO
MEMORY_LAYERS, MEMORY_FEATURES, MEMORY_LIMIT_BYTES = 16, 64, 24 << 30
MEMORY_TARGET_LOG2_NODES, MEMORY_TARGET_LOG2_EDGES = 20, 24
SEGMENT_BYTES_FACTOR = 2.5  # peak of gather + segment_sum over its [nnz, k] products, with margin
MEMORY_SHARE = 0.6
COPY_BYTES = 512 << 20
SEGMENT_CONTENDERS = ("csr_segments", "jax_bcoo")  # BCSR has a native CPU kernel


def random_matrix(n: int, seed: int):
    """A random non-symmetric ``[n, n]`` float32 ``csr_array``, ~16 values per row."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    count = VALUES_PER_ROW * n
    rows = rng.integers(0, n, count, dtype=np.int32)
    cols = rng.integers(0, n, count, dtype=np.int32)
    values = rng.standard_normal(count, dtype=np.float32)
    m = sp.csr_array((values, (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    return m


def copy_bandwidth(jax, jnp) -> dict:
    """Read + write bytes per second of a 512 MiB copy: NumPy (one core) and jitted (XLA)."""
    src = np.random.default_rng(0).standard_normal(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    x = jnp.asarray(src)
    add_one = jax.jit(lambda x: x + 1)
    timings = time_interleaved({"numpy_copyto": lambda _: np.copyto(dst, src),
                                "jax_jit_x_plus_1": lambda _: add_one(x)}, 10)
    return {name: {"bytes_per_s": 2 * COPY_BYTES / t["median_s"], "median_s": t["median_s"],
                   "bytes_moved": 2 * COPY_BYTES} for name, t in timings.items()}


def model_bytes(n: int, nnz: int, k: int) -> int:
    return nnz * 8 + (n + 1) * 4 + nnz * k * 4 + n * k * 4


def bench_case(jax, jnp, m, matrices, n: int, k: int, args, copy_bps: float) -> dict:
    nnz = int(m.nnz)
    x_host = np.random.default_rng(args.seed + k).standard_normal((n, k), dtype=np.float32)
    x = jnp.asarray(x_host)
    product = jax.jit(lambda a, x: a @ x)
    case = {"n": n, "k": k, "nnz": nnz, "model_bytes": model_bytes(n, nnz, k), "skipped": {}}
    available = mem_available_bytes()
    calls, compile_s = {}, {}
    for name, matrix in matrices.items():
        if name in SEGMENT_CONTENDERS and available is not None and \
                SEGMENT_BYTES_FACTOR * nnz * k * 4 > MEMORY_SHARE * available:
            case["skipped"][name] = (f"its [nnz, k] intermediate ({nnz * k * 4 / 2**30:.1f} GiB) "
                                     f"x {SEGMENT_BYTES_FACTOR} exceeds {MEMORY_SHARE:.0%} of "
                                     f"MemAvailable ({available / 2**30:.1f} GiB)")
            continue
        start = time.perf_counter()
        executable = product.lower(matrix, x).compile()
        compile_s[name] = time.perf_counter() - start
        calls[name] = (lambda e, a: lambda _: e(a, x))(executable, matrix)
    calls["scipy"] = lambda _: m @ x_host
    reference = m @ x_host
    scale = float(np.max(np.abs(reference))) or 1.0
    case["max_rel_diff_vs_scipy"] = {
        name: float(np.max(np.abs(np.asarray(call(0)) - reference))) / scale
        for name, call in calls.items() if name != "scipy"}
    first = time.perf_counter()
    for call in calls.values():
        jax.block_until_ready(call(0))
    per_round = time.perf_counter() - first
    reps = max(3, min(args.reps, int(args.seconds_per_case / max(per_round, 1e-9))))
    timings = time_interleaved(calls, reps)
    for name, entry in timings.items():
        entry["compile_s"] = compile_s.get(name)
        entry["effective_bytes_per_s"] = case["model_bytes"] / entry["median_s"]
        entry["share_of_copy_bandwidth"] = entry["effective_bytes_per_s"] / copy_bps
    case["timings"] = timings
    base = timings["csr"]["median_s"]
    case["time_over_csr"] = {name: t["median_s"] / base for name, t in timings.items()
                             if name != "csr"}
    print(f"  n=2**{n.bit_length() - 1} k={k}: " + ", ".join(
        f"{name} {t['median_s'] * 1e3:.1f} ms" for name, t in timings.items())
        + f" ({reps} reps)", file=sys.stderr, flush=True)
    return case


def memory_check(jax, jnp, lax, a, log2_nodes: int) -> dict:
    """Compiled memory analysis of a 16-layer propagation of 64 float32 features through ``a``
    (buckets, and segment sums for comparison)."""
    x = jax.ShapeDtypeStruct((a.n_rows, MEMORY_FEATURES), jnp.float32)

    def propagate(a, h):
        return lax.fori_loop(0, MEMORY_LAYERS, lambda _, h: a @ h, h)

    result = {"nodes": a.n_rows, "edges": a.nnz, "features": MEMORY_FEATURES,
              "layers": MEMORY_LAYERS, "limit_bytes": MEMORY_LIMIT_BYTES,
              "is_target_size": log2_nodes == MEMORY_TARGET_LOG2_NODES}
    for name, matrix in (("csr", a), ("csr_segments", a.without_buckets())):
        start = time.perf_counter()
        compiled = jax.jit(propagate).lower(matrix, x).compile()
        stats = compiled.memory_analysis()
        entry = {"compile_s": time.perf_counter() - start}
        if stats is None:
            entry["note"] = "this backend gives no memory analysis"
        else:
            for field in ("argument_size_in_bytes", "output_size_in_bytes",
                          "temp_size_in_bytes", "alias_size_in_bytes",
                          "generated_code_size_in_bytes"):
                entry[field] = int(getattr(stats, field, 0) or 0)
            entry["peak_bytes_estimate"] = (entry["argument_size_in_bytes"]
                                            + entry["output_size_in_bytes"]
                                            + entry["temp_size_in_bytes"]
                                            - entry["alias_size_in_bytes"])
        result[name] = entry
    return result


def targets(cases: list[dict], memory: dict | None) -> list[dict]:
    out = []
    scipy_cases = [c for c in cases if c["k"] >= TARGET_K_VS_SCIPY]
    ratios = {f"n={c['n']},k={c['k']}": c["time_over_csr"]["scipy"] for c in scipy_cases}
    out.append({"target": f"csr no slower than SciPy for k >= {TARGET_K_VS_SCIPY}",
                "threshold": 1.0, "measured": bool(ratios), "scipy_over_csr": ratios,
                "passed": all(r >= 1.0 for r in ratios.values()) if ratios else None})
    ratios = {f"n={c['n']},k={c['k']},{name}": c["time_over_csr"][name] for c in cases
              for name in ("jax_bcsr", "jax_bcoo") if name in c["time_over_csr"]}
    out.append({"target": f"csr >= {TARGET_VS_JAX_SPARSE:g}x faster than jax.experimental."
                          "sparse BCSR and BCOO", "threshold": TARGET_VS_JAX_SPARSE,
                "measured": bool(ratios), "jax_sparse_over_csr": ratios,
                "passed": all(r >= TARGET_VS_JAX_SPARSE for r in ratios.values())
                if ratios else None})
    entry = {"target": f"2**{MEMORY_TARGET_LOG2_NODES} nodes, ~2**{MEMORY_TARGET_LOG2_EDGES} "
                       f"edges, {MEMORY_FEATURES} float32 features, {MEMORY_LAYERS} layers "
                       f"within {MEMORY_LIMIT_BYTES >> 30} GiB (compiled memory analysis)",
             "threshold_bytes": MEMORY_LIMIT_BYTES}
    peak = None if memory is None else memory["csr"].get("peak_bytes_estimate")
    if peak is None or not memory["is_target_size"]:
        entry.update(measured=False, passed=None,
                     note="not at the target size in this run" if memory else "not run")
    else:
        entry.update(measured=True, peak_bytes_estimate=peak, passed=peak <= MEMORY_LIMIT_BYTES)
    out.append(entry)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n = 2**10, 2**11, k = 16, 64, few repetitions")
    parser.add_argument("--log2-sizes", type=int, nargs="+", help="override log2 of n")
    parser.add_argument("--ks", type=int, nargs="+", help="override the dense widths k")
    parser.add_argument("--reps", type=int, help="most timed repetitions per case")
    parser.add_argument("--seconds-per-case", type=float, help="time budget of one case")
    parser.add_argument("--memory-log2-nodes", type=int,
                        help="log2 of the nodes of the memory check (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc thresholds alone")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT}; {QUICK_OUT} with --quick)")
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "full"
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.reps < 1 or args.seconds_per_case <= 0 or min(args.ks) < 1 \
            or not all(4 <= s <= 24 for s in args.log2_sizes):
        parser.error("--reps, --seconds-per-case, --ks must be positive; --log2-sizes in 4..24")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    malloc = "not tuned (--no-malloc-tuning)" if args.no_malloc_tuning else tune_malloc()
    import jax
    import jax.numpy as jnp
    import scipy
    from jax import lax
    from jax.experimental import sparse as jsparse

    from dp2ejax.sparse import CSR

    meta = {**base_metadata([sys.argv[0], *argv]), "malloc": malloc,
            "load_average_1_5_15_min_at_start": list(os.getloadavg())}
    meta["versions"]["scipy"] = scipy.__version__
    config = {key: getattr(args, key) for key in ("preset", "log2_sizes", "ks", "reps",
                                                  "seconds_per_case", "memory_log2_nodes",
                                                  "seed")}
    config.update(values_per_row=VALUES_PER_ROW, dtype="float32")
    bandwidth = copy_bandwidth(jax, jnp)
    copy_bps = max(entry["bytes_per_s"] for entry in bandwidth.values())
    print(f"copy bandwidth: {copy_bps / 1e9:.1f} GB/s", file=sys.stderr, flush=True)
    cases, matrices_info, memory = [], [], None
    for log2_n in sorted(set(args.log2_sizes) | ({args.memory_log2_nodes} - {0})):
        n = 1 << log2_n
        start = time.perf_counter()
        m = random_matrix(n, args.seed + log2_n)
        a = CSR.from_scipy(m)
        build_s = time.perf_counter() - start
        degrees = np.diff(m.indptr)
        matrices_info.append({"n": n, "nnz": int(m.nnz), "build_s_scipy_and_csr": build_s,
                              "degree_min": int(degrees.min()), "degree_max": int(degrees.max()),
                              "degree_mean": float(degrees.mean()),
                              "bucket_widths": list(a.buckets.widths),
                              "bucket_padding": a.buckets.padded_terms / max(m.nnz, 1) - 1})
        if log2_n == args.memory_log2_nodes:
            memory = memory_check(jax, jnp, lax, a, log2_n)
            print(f"  memory check n=2**{log2_n}: "
                  f"{memory['csr'].get('peak_bytes_estimate', 0) / 2**30:.2f} GiB",
                  file=sys.stderr, flush=True)
        if log2_n not in args.log2_sizes:
            continue
        matrices = {"csr": a, "csr_segments": a.without_buckets(),
                    "jax_bcsr": jsparse.BCSR.from_scipy_sparse(m),
                    "jax_bcoo": jsparse.BCOO.from_scipy_sparse(m)}
        for k in args.ks:
            cases.append(bench_case(jax, jnp, m, matrices, n, k, args, copy_bps))
        del matrices, a, m
    result = {
        "metadata": meta, "config": config, "quick": args.quick,
        "conventions": {
            "time_over_csr": "median contender time / median csr time (> 1: csr is faster)",
            "model_bytes": "nnz * 8 (int32 indices, float32 values) + (n + 1) * 4 (indptr) + "
                           "nnz * k * 4 (a dense row read per stored value) + n * k * 4 "
                           "(result written)",
            "effective_bytes_per_s": "model_bytes / median time",
            "share_of_copy_bandwidth": "effective_bytes_per_s / the faster copy's bytes_per_s",
            "max_rel_diff_vs_scipy": "max |contender - scipy| / max |scipy| (float32)",
            "peak_bytes_estimate": "compiled memory analysis: arguments + outputs + temporaries "
                                   "- aliased",
        },
        "copy_bandwidth": bandwidth, "matrices": matrices_info, "cases": cases,
        "memory": memory,
    }
    result["targets"] = targets(cases, memory)
    measured = [t["passed"] for t in result["targets"] if t["measured"]]
    result["all_targets_passed"] = all(measured) if measured else None
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
