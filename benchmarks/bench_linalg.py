"""Benchmark of ``dp2ejax.linalg`` against float64 and SciPy baselines, side by side in one run.

Four parts (``--parts`` picks some), each figure beside a baseline timed in the same run:

* ``ir``: mixed-precision iterative refinement (:func:`dp2ejax.linalg.solve_ir`, fp64 working
  and residual precision) on ``A = matrix_with_condition(n, cond, seed)``, ``b = A @ ones``
  (``x_true = ones``, n = 512), for each factorisation variant (``FACTORIZATIONS``), factor format
  (fp32, fp16, bf16) and method (LU-IR, GMRES-IR), at condition numbers 1e1, 1e3, 1e5:
  status, refinement steps, total GMRES steps, final normwise backward and forward errors and
  wall time, against ``jax.scipy.linalg.solve`` in float64 (time, backward and forward error);
  ratios IR / fp64 solve.
* ``pagerank``: :func:`dp2ejax.linalg.pagerank` on a directed Chung-Lu power-law graph of
  10**6 nodes (:func:`dp2ejax.graph.chung_lu`, exponent 2.5, mean out-degree 10) in fp64 and
  with (storage, accumulation) formats (fp32, fp32), (bf16, fp32), (fp16, fp16), against a
  plain SciPy power iteration written here (same dangling-node rule, alpha 0.85, uniform
  teleport, stop when the float64 L1 change ``||x_{k+1} - x_k||_1 < 1e-12``): time,
  iterations, max |score difference| from SciPy's scores, and the Kendall tau of the top-100
  and top-100 overlap against dp2ejax's own fp64 run (from the result object). Both sides are
  timed end to end from the adjacency (building ``P^T`` included); SciPy's setup and
  iterations are also timed apart, and ours is split with a ``max_iter=1`` call (setup plus one
  iteration: ``per_iteration_s_estimate`` for fp64). A ``pagerank`` call in a format other than
  fp64 also runs the fp64 iteration (for the agreement figures): its time includes it;
  ``format_run_s_estimate`` subtracts the fp64 call's time.
* ``svds``: :func:`dp2ejax.linalg.svds` (randomized with its defaults: 10 extra columns, 2
  power iterations; Lanczos with ``2k + 30`` steps) in fp64, fp32 and bf16 against
  ``scipy.sparse.linalg.svds`` (ARPACK) on a sparse ``20000 x 5000`` matrix (the first 5000
  columns of a 20000-node Chung-Lu adjacency) and a dense ``3000 x 1000`` one with singular
  values ``1 / (1 + i)``: time, and the largest relative error of the ``k = 10`` singular
  values against SciPy's.
* ``eigs``: :func:`dp2ejax.linalg.eigs_uc` (unite and conquer) against
  ``scipy.sparse.linalg.eigs`` (ARPACK, ``tol`` 1e-10, its matrix-vector products counted
  through a ``LinearOperator``) on two non-symmetric sparse matrices of order 5000 (those of
  ``tests/linalg/test_eigs.py`` scaled up: random sparse, ~6 values per row, plus a diagonal
  with separated large eigenvalues, k = 5; a convection-diffusion-like pentadiagonal, k = 4):
  for two sets of three subspace sizes (``eigs_uc``'s default ``(2, 3, 4) x (k + 1)``, and
  ``(4, 6, 8) x (k + 1)``) the unite-and-conquer run and each co-method alone
  (``subspace_sizes=(m,)``): restarts, converged or not, time, an estimate of the products
  with ``A``, and the eigenvalues' agreement with an ARPACK reference at ``tol`` 1e-14.

Timing: every contender of a case (one matrix, one condition number) is called once untimed
(its compile time and first-call time are recorded), then all are called in turn ``reps``
times (interleaved, as in ``bench_arith.py``) and the median and minimum reported; ratios use
medians. glibc's malloc is tuned first (``--no-malloc-tuning`` to leave it), and OpenBLAS (the
LAPACK of ``jax.scipy.linalg.solve`` and of the blocked LU's panels, SciPy's ARPACK, NumPy) is
held to one thread unless ``OPENBLAS_NUM_THREADS`` is set (see the comment at the top). Sparse
operands of the JAX contenders are ``CSR`` without degree buckets (on the power-law matrices a
bucketed product takes ~40 s to compile per program; ``svds`` still builds buckets for the
transpose it makes outside ``jit``, hence its 13-14 s first call in fp64 on the sparse matrix,
against 1-2 s for the other formats, whose emulation drops the buckets).

``--gpu``: the preset of the GPU target: ``n = 16384``, blocked factorisation (``solve_ir(...,
factorization="blocked")``) with fp32 and bf16 factors against the fp64
``jax.scipy.linalg.solve``; IR is asked to reach the fp64 solve's backward error (``tol =
max(2 * its backward error, u_fp64)``); target: at least 2x faster at that backward error
(``targets`` in the JSON, ``benchmarks/out/bench_linalg_gpu.json``). It refuses to run without a
GPU backend unless ``--force`` is given (then the target is still reported unmeasured).

Usage::

    python benchmarks/bench_linalg.py                 # all four parts, ~9 minutes on 2 cores
    python benchmarks/bench_linalg.py --quick         # smoke run, tiny sizes, < 60 s
    python benchmarks/bench_linalg.py --parts ir eigs --ir-n 256
    python benchmarks/bench_linalg.py --gpu           # GPU target (IR only), needs a GPU
"""

from __future__ import annotations

import os

# One BLAS thread unless the caller chose: OpenBLAS's threads spin-wait, and on this shared
# 2-core machine a multi-threaded LAPACK call (the fp64 jax.scipy.linalg.solve, n = 512) took
# 4 ms or 170 ms at random while another process ran; with one thread, 4 ms every time
# (measured 2026-11-23). It must be set before NumPy loads OpenBLAS.
BLAS_THREADS_SET_HERE = "OPENBLAS_NUM_THREADS" not in os.environ
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import inspect  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg  # noqa: E402
import numpy as np  # noqa: E402
from bench_arith import base_metadata, time_interleaved, tune_malloc, write_json  # noqa: E402

DEFAULT_OUT = Path("benchmarks/out/bench_linalg.json")
QUICK_OUT = Path("benchmarks/out/bench_linalg_quick.json")
GPU_OUT = Path("benchmarks/out/bench_linalg_gpu.json")
PARTS = ("ir", "pagerank", "svds", "eigs")

PRESETS = {
    "full": dict(parts=PARTS, ir_n=512, conds=(1e1, 1e3, 1e5), ir_reps=5, ir_tol="default",
                 factorizations=None, factor_formats=("fp32", "fp16", "bf16"),
                 pagerank_nodes=10**6, pagerank_reps=2, svds_sparse=(20000, 5000),
                 svds_dense=(3000, 1000), svds_k=10, svds_reps=3,
                 svds_methods=("randomized", "lanczos"), svds_formats=("fp64", "fp32", "bf16"),
                 eigs_n=5000, eigs_reps=3, eigs_size_sets=("default", "large")),
    # compile-bound: fewer programs (each IR variant, svds and eigs_uc program compiles in 1-3 s;
    # an fp64 svds of a CSR in ~10 s: svds transposes it outside jit, with degree buckets)
    "quick": dict(parts=PARTS, ir_n=40, conds=(1e1, 1e3), ir_reps=1, ir_tol="default",
                  factorizations=None, factor_formats=("fp32", "bf16"), pagerank_nodes=3000,
                  pagerank_reps=1, svds_sparse=(600, 200), svds_dense=(300, 100), svds_k=5,
                  svds_reps=1, svds_methods=("lanczos",), svds_formats=("fp64", "bf16"),
                  eigs_n=200, eigs_reps=1, eigs_size_sets=("default",)),
    "gpu": dict(parts=("ir",), ir_n=16384, conds=(1e1, 1e3, 1e5), ir_reps=3, ir_tol="match",
                factorizations=("blocked",), factor_formats=("fp32", "bf16"),
                pagerank_nodes=10**6, pagerank_reps=1, svds_sparse=(20000, 5000),
                svds_dense=(3000, 1000), svds_k=10, svds_reps=3,
                svds_methods=("randomized", "lanczos"), svds_formats=("fp64", "fp32", "bf16"),
                eigs_n=5000, eigs_reps=3, eigs_size_sets=("default", "large")),
}

# --- iterative refinement: one loop value per factorisation variant -------------------------------
# "emulated": the right-looking LU with every operation rounded to the factor format (the
# original solve_ir); "blocked": a blocked LU whose trailing updates are real fp32/bf16 matmuls,
# selected with solve_ir(..., factorization="blocked") where solve_ir has that parameter.
FACTORIZATIONS = ("emulated", "blocked")
GPU_FACTOR_FORMATS = ("fp32", "bf16")
IR_METHODS = ("lu", "gmres")
FP64_UNIT_ROUNDOFF = 2.0**-53

# --- the GPU target -------------------------------------------------------------------------------
GPU_TARGET_N = 16384
GPU_TARGET_SPEEDUP = 2.0

# --- PageRank -------------------------------------------------------------------------------------
PAGERANK_FORMATS = (("fp64", "fp64"), ("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp16"))
PAGERANK_ALPHA, PAGERANK_TOL, PAGERANK_MAX_ITER, PAGERANK_TOP_K = 0.85, 1e-12, 1000, 100
GRAPH_EXPONENT, GRAPH_DEGREE = 2.5, 10.0

# --- svds and eigs --------------------------------------------------------------------------------
EIGS_TOL, EIGS_REFERENCE_TOL, EIGS_MAX_RESTARTS = 1e-10, 1e-14, 300
EIGS_SIZE_SETS = {"default": (2, 3, 4), "large": (4, 6, 8)}  # multiples of k + 1


def recorded(fn: Callable[[], object]) -> tuple[Callable[[int], None], dict]:
    """``fn`` as a ``time_interleaved`` contender that keeps its last result and the seconds of
    its first (untimed, compiling) call. ``fn`` must return host values (synchronised)."""
    state: dict = {}

    def call(_rep: int) -> None:
        start = time.perf_counter()
        state["result"] = fn()
        state.setdefault("first_call_s", time.perf_counter() - start)

    return call, state


def synced(result, *fields: str):
    """``result`` once its array ``fields`` are computed (the solvers return before that)."""
    jax.block_until_ready([getattr(result, name) for name in fields])
    return result


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- iterative refinement -------------------------------------------------------------------------


def ir_factorizations(solve_ir, wanted: tuple[str, ...] | None) -> tuple[list[str], dict]:
    """The factorisation variants this ``solve_ir`` offers among ``wanted`` (default all of
    ``FACTORIZATIONS``), and why the others are skipped."""
    has_parameter = "factorization" in inspect.signature(solve_ir).parameters
    out, skipped = [], {}
    for name in wanted or FACTORIZATIONS:
        if name == "emulated" or has_parameter:
            out.append(name)
        else:
            skipped[name] = "solve_ir has no factorization parameter in this checkout"
    return out, skipped


def normwise_backward_error(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """``||b - A x||_inf / (||A||_inf ||x||_inf + ||b||_inf)``, as ``solve_ir`` measures it."""
    if not np.all(np.isfinite(x)):
        return math.inf
    a_norm = float(np.max(np.sum(np.abs(a), axis=1)))
    return float(np.max(np.abs(b - a @ x)) / (a_norm * np.max(np.abs(x)) + np.max(np.abs(b))))


def bench_ir(args) -> tuple[list[dict], dict]:
    from dp2ejax.linalg import matrix_with_condition, solve_ir

    factorizations, skipped = ir_factorizations(solve_ir, args.factorizations)
    has_parameter = "factorization" in inspect.signature(solve_ir).parameters
    solve64 = jax.jit(jax.scipy.linalg.solve)
    n, rows = args.ir_n, []
    for cond in args.conds:
        start = time.perf_counter()
        a = matrix_with_condition(n, cond, seed=args.seed)
        x_true = np.ones(n)
        b = a @ x_true
        build_s = time.perf_counter() - start
        a_dev, b_dev = jnp.asarray(a), jnp.asarray(b)
        calls, states = {}, {}
        calls["fp64_solve"], states["fp64_solve"] = recorded(
            lambda a_dev=a_dev, b_dev=b_dev: np.asarray(solve64(a_dev, b_dev)))
        calls["fp64_solve"](0)  # untimed: compiles, and gives the backward error to match
        base_backward = normwise_backward_error(a, b, states["fp64_solve"]["result"])
        tol = (max(2 * base_backward, FP64_UNIT_ROUNDOFF) if args.ir_tol == "match" else None)
        cases = {}
        for factorization in factorizations:
            for fmt in args.factor_formats:
                for method in IR_METHODS:
                    kwargs = dict(factor_format=fmt, method=method, x_true=x_true, tol=tol)
                    if has_parameter:  # else the only variant is the emulated one
                        kwargs["factorization"] = factorization
                    name = f"{factorization}/{fmt}/{method}"
                    cases[name] = (factorization, fmt, method)
                    calls[name], states[name] = recorded(
                        lambda a=a, b=b, kwargs=kwargs: solve_ir(a, b, **kwargs))
        timings = time_interleaved(calls, args.ir_reps)
        base = timings["fp64_solve"]
        x64 = states["fp64_solve"]["result"]
        baseline = {"median_s": base["median_s"], "min_s": base["min_s"],
                    "first_call_s": states["fp64_solve"]["first_call_s"],
                    "backward_error": base_backward,
                    "forward_error": float(np.max(np.abs(x64 - x_true)))}
        for name, (factorization, fmt, method) in cases.items():
            result, t = states[name]["result"], timings[name]
            backward = result.backward_error
            rows.append({
                "n": n, "cond": cond, "factorization": factorization, "factor_format": fmt,
                "method": method, "status": result.status, "iterations": result.iterations,
                "gmres_steps_total": int(sum(result.gmres_iterations)),
                "backward_error": backward,
                "forward_error": result.forward_errors[-1] if result.forward_errors else None,
                "backward_errors": list(result.backward_errors), "tol": result.tol,
                "message": result.message, "median_s": t["median_s"], "min_s": t["min_s"],
                "reps": t["reps"], "first_call_s": states[name]["first_call_s"],
                "fp64_solve": baseline, "matrix_build_s": build_s,
                "time_over_fp64_solve": t["median_s"] / base["median_s"],
                "backward_error_over_fp64_solve": backward / base_backward
                if base_backward > 0 else None,
            })
            progress(f"  ir cond={cond:.0e} {name}: {result.status} after {result.iterations} "
                     f"steps, backward error {backward:.1e}, {t['median_s'] * 1e3:.0f} ms "
                     f"(fp64 solve {base['median_s'] * 1e3:.1f} ms)")
    return rows, skipped


# --- PageRank -------------------------------------------------------------------------------------


def scipy_pagerank(m, alpha: float, tol: float, max_iter: int) -> dict:
    """Power iteration of ``x <- alpha (P^T x + sum(x[dangling]) v) + (1 - alpha) v`` from the
    uniform ``v``, ``P`` the row-normalised adjacency, stopping when ``||x_{k+1} - x_k||_1 <
    tol``: what ``dp2ejax.linalg.pagerank`` (and networkx) iterate, in SciPy/NumPy float64."""
    import scipy.sparse as sp

    start = time.perf_counter()
    n = m.shape[0]
    out_weight = np.asarray(m.sum(axis=1)).ravel()
    dangling = out_weight == 0
    inverse = np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, out_weight))
    pt = (sp.diags_array(inverse) @ m).T.tocsr()
    v = np.full(n, 1.0 / n)
    setup_s = time.perf_counter() - start
    x, residual, iterations = v.copy(), math.inf, 0
    while iterations < max_iter and not residual < tol:
        x_new = alpha * (pt @ x + x[dangling].sum() * v) + (1.0 - alpha) * v
        residual = float(np.abs(x_new - x).sum())
        x, iterations = x_new, iterations + 1
    return {"scores": x, "iterations": iterations, "residual": residual,
            "converged": residual < tol, "setup_s": setup_s,
            "iterate_s": time.perf_counter() - start - setup_s}


def bench_pagerank(args) -> dict:
    from dp2ejax.graph import chung_lu
    from dp2ejax.linalg import pagerank

    start = time.perf_counter()
    graph = chung_lu(args.pagerank_nodes, exponent=GRAPH_EXPONENT, average_degree=GRAPH_DEGREE,
                     seed=args.seed, directed=True)
    generate_s = time.perf_counter() - start
    adjacency = graph.adjacency
    m = graph.adjacency.to_scipy().astype(np.float64)
    out_degree, in_degree = np.diff(m.indptr), np.bincount(m.indices, minlength=m.shape[0])
    info = {"generator": f"chung_lu(n, exponent={GRAPH_EXPONENT}, average_degree="
                         f"{GRAPH_DEGREE}, seed={args.seed}, directed=True)",
            "nodes": graph.num_nodes, "edges": graph.num_edges, "generate_s": generate_s,
            "dangling_share": float(np.mean(out_degree == 0)),
            "max_out_degree": int(out_degree.max()), "max_in_degree": int(in_degree.max())}
    progress(f"  pagerank graph: {info['nodes']} nodes, {info['edges']} edges, "
             f"{info['dangling_share']:.2%} dangling, built in {generate_s:.1f} s")
    calls, states = {}, {}
    calls["scipy"], states["scipy"] = recorded(
        lambda: scipy_pagerank(m, PAGERANK_ALPHA, PAGERANK_TOL, PAGERANK_MAX_ITER))
    # one iteration: what a call costs besides its iterations (P^T built, degree buckets...)
    calls["fp64/fp64 max_iter=1"], states["fp64/fp64 max_iter=1"] = recorded(
        lambda: pagerank(adjacency, alpha=PAGERANK_ALPHA, tol=PAGERANK_TOL, max_iter=1))
    for storage, accumulation in PAGERANK_FORMATS:
        name = f"{storage}/{accumulation}"
        calls[name], states[name] = recorded(
            lambda s=storage, a=accumulation: pagerank(
                adjacency, alpha=PAGERANK_ALPHA, storage_format=s, accumulation_format=a,
                tol=PAGERANK_TOL, max_iter=PAGERANK_MAX_ITER, top_k=PAGERANK_TOP_K))
    timings = time_interleaved(calls, args.pagerank_reps)
    reference = states["scipy"]["result"]
    base = timings["scipy"]
    fp64_s = timings["fp64/fp64"]["median_s"]
    one_iteration_s = timings["fp64/fp64 max_iter=1"]["median_s"]
    runs = []
    for storage, accumulation in PAGERANK_FORMATS:
        name = f"{storage}/{accumulation}"
        result, t = states[name]["result"], timings[name]
        entry = {
            "storage_format": storage, "accumulation_format": accumulation,
            "status": result.status, "iterations": result.iterations,
            "final_residual": result.residuals[-1] if result.residuals else None,
            "median_s": t["median_s"], "min_s": t["min_s"], "reps": t["reps"],
            "first_call_s": states[name]["first_call_s"],
            "time_over_scipy": t["median_s"] / base["median_s"],
            "max_abs_diff_vs_scipy": float(np.max(np.abs(result.scores - reference["scores"]))),
            "kendall_tau_top_k_vs_fp64": result.kendall_tau_top_k,
            "top_k_overlap_vs_fp64": result.top_k_overlap,
            "max_abs_diff_vs_fp64": result.max_abs_diff_fp64,
        }
        if (storage, accumulation) == ("fp64", "fp64"):
            iterations_s = t["median_s"] - one_iteration_s
            entry["per_iteration_s_estimate"] = iterations_s / max(result.iterations - 1, 1)
        else:
            entry["format_run_s_estimate"] = t["median_s"] - fp64_s
            entry["per_iteration_s_estimate"] = entry["format_run_s_estimate"] / max(
                result.iterations, 1)
        runs.append(entry)
        progress(f"  pagerank {name}: {result.status} after {result.iterations} iterations, "
                 f"{t['median_s']:.2f} s (scipy {base['median_s']:.2f} s), max |diff| vs "
                 f"scipy {entry['max_abs_diff_vs_scipy']:.1e}")
    return {"graph": info, "alpha": PAGERANK_ALPHA, "tol": PAGERANK_TOL,
            "top_k": PAGERANK_TOP_K,
            "scipy": {"iterations": reference["iterations"], "residual": reference["residual"],
                      "converged": reference["converged"], "median_s": base["median_s"],
                      "min_s": base["min_s"], "reps": base["reps"],
                      "setup_s_last_call": reference["setup_s"],
                      "per_iteration_s_last_call": reference["iterate_s"]
                      / max(reference["iterations"], 1)},
            "one_iteration_call_s": {"median_s": one_iteration_s,
                                     "min_s": timings["fp64/fp64 max_iter=1"]["min_s"]},
            "runs": runs}


# --- svds -----------------------------------------------------------------------------------------


def svds_matrices(args) -> dict:
    from dp2ejax.graph import chung_lu

    rows, cols = args.svds_sparse
    graph = chung_lu(rows, exponent=GRAPH_EXPONENT, average_degree=GRAPH_DEGREE,
                     seed=args.seed + 1, directed=True)
    sparse = graph.adjacency.to_scipy()[:, :cols].astype(np.float64).tocsr()
    m, n = args.svds_dense
    rng = np.random.default_rng(args.seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    dense = (u * (1.0 / (1.0 + np.arange(n)))) @ v.T
    return {
        "sparse": (sparse, f"first {cols} columns of a {rows}-node Chung-Lu adjacency "
                           f"(exponent {GRAPH_EXPONENT}, mean degree {GRAPH_DEGREE}), "
                           f"{sparse.nnz} stored values"),
        "dense": (dense, f"{m} x {n} dense U diag(1 / (1 + i)) V^T, U, V from QR of Gaussians"),
    }


def bench_svds(args) -> list[dict]:
    import scipy.sparse.linalg as sla

    from dp2ejax.linalg import svds
    from dp2ejax.sparse import CSR

    k, out = args.svds_k, []
    for kind, (matrix, description) in svds_matrices(args).items():
        operand = (CSR.from_scipy(matrix, buckets=False) if kind == "sparse"
                   else jnp.asarray(matrix))
        calls, states = {}, {}
        calls["scipy"], states["scipy"] = recorded(lambda matrix=matrix: np.sort(sla.svds(
            matrix, k, return_singular_vectors=False, random_state=args.seed))[::-1])
        for method in args.svds_methods:
            for fmt in args.svds_formats:
                calls[f"{method}/{fmt}"], states[f"{method}/{fmt}"] = recorded(
                    lambda method=method, fmt=fmt, operand=operand: synced(svds(
                        operand, k, method=method, format=fmt, seed=args.seed,
                        return_vectors=False), "s"))
        timings = time_interleaved(calls, args.svds_reps)
        reference = states["scipy"]["result"]
        base = timings["scipy"]
        runs = []
        for method in args.svds_methods:
            for fmt in args.svds_formats:
                name = f"{method}/{fmt}"
                result, t = states[name]["result"], timings[name]
                values = np.asarray(result.s, np.float64)
                runs.append({
                    "method": method, "format": fmt, "matvecs": result.matvecs,
                    "max_rel_error_vs_scipy": float(np.max(np.abs(values - reference)
                                                           / reference)),
                    "median_s": t["median_s"], "min_s": t["min_s"], "reps": t["reps"],
                    "first_call_s": states[name]["first_call_s"],
                    "time_over_scipy": t["median_s"] / base["median_s"]})
                progress(f"  svds {kind} {name}: rel. error "
                         f"{runs[-1]['max_rel_error_vs_scipy']:.1e}, {t['median_s']:.3f} s "
                         f"(scipy {base['median_s']:.3f} s)")
        out.append({"matrix": kind, "description": description, "shape": list(matrix.shape),
                    "k": k, "scipy": {"median_s": base["median_s"], "min_s": base["min_s"],
                                      "reps": base["reps"],
                                      "singular_values": reference.tolist()},
                    "runs": runs})
    return out


# --- eigs -----------------------------------------------------------------------------------------


def eigenvalue_distance(ours, reference) -> float:
    """Largest relative distance from a reference eigenvalue to the nearest of ours."""
    ours = np.asarray(ours)
    return float(max(np.min(np.abs(ours - r)) / abs(r) for r in reference))


def matvecs_estimate(result) -> int | None:
    """Products with ``A``: ``m`` per cycle of each live co-method (its history is NaN once it
    is dropped)."""
    try:
        live = ~np.isnan(np.asarray(result.history, np.float64))
        return int(np.sum(live * np.asarray(result.subspace_sizes)[None, :]))
    except (AttributeError, ValueError, TypeError):
        return None


def bench_eigs(args) -> list[dict]:
    import scipy.sparse.linalg as sla

    from dp2ejax.linalg import eigs_uc, nonsymmetric_matrix
    from dp2ejax.sparse import CSR

    n, out = args.eigs_n, []
    problems = {
        "random_plus_diagonal": (nonsymmetric_matrix("random_diagonal", n, seed=args.seed), 5),
        "convection_diffusion": (nonsymmetric_matrix("banded", n), 4)}
    for name, (matrix, k) in problems.items():
        v0 = np.ones(n)
        reference = sla.eigs(matrix, k, which="LM", tol=EIGS_REFERENCE_TOL, v0=v0)[0]
        reference = reference[np.argsort(-np.abs(reference))]
        counter = [0]

        def counted(x, matrix=matrix, counter=counter):
            counter[0] += 1
            return matrix @ x

        operator = sla.LinearOperator(matrix.shape, matvec=counted, dtype=np.float64)
        sla.eigs(operator, k, which="LM", tol=EIGS_TOL, v0=v0)
        arpack_matvecs = counter[0]
        a = CSR.from_scipy(matrix, buckets=False)
        calls, states, runs = {}, {}, {}
        calls["arpack"], states["arpack"] = recorded(
            lambda matrix=matrix, k=k, v0=v0: sla.eigs(matrix, k, which="LM", tol=EIGS_TOL,
                                                       v0=v0)[0])
        for set_name in args.eigs_size_sets:
            multiples = EIGS_SIZE_SETS[set_name]
            sizes = tuple(min(n, c * (k + 1)) for c in multiples)
            for label, subspace in (("unite_and_conquer", sizes),
                                    *((f"alone_m{m}", (m,)) for m in sizes)):
                key = f"{set_name}/{label}"
                runs[key] = (set_name, label, subspace)
                calls[key], states[key] = recorded(
                    lambda a=a, k=k, subspace=subspace: synced(eigs_uc(
                        a, k, subspace_sizes=subspace, tol=EIGS_TOL,
                        max_restarts=EIGS_MAX_RESTARTS, seed=args.seed), "eigenvalues",
                        "residuals"))
        timings = time_interleaved(calls, args.eigs_reps)
        base = timings["arpack"]
        entries = []
        for key, (set_name, label, subspace) in runs.items():
            result, t = states[key]["result"], timings[key]
            entries.append({
                "size_set": set_name, "run": label, "subspace_sizes": list(subspace),
                "converged": bool(result.converged), "restarts": int(result.restarts),
                "dropped": [list(d) for d in result.dropped],
                "max_residual": float(np.max(np.asarray(result.residuals))),
                "eigenvalues": [[float(z.real), float(z.imag)]
                                for z in np.asarray(result.eigenvalues)],
                "max_rel_distance_vs_reference": eigenvalue_distance(result.eigenvalues,
                                                                     reference),
                "matvecs_estimate": matvecs_estimate(result),
                "median_s": t["median_s"], "min_s": t["min_s"], "reps": t["reps"],
                "first_call_s": states[key]["first_call_s"],
                "time_over_arpack": t["median_s"] / base["median_s"]})
            progress(f"  eigs {name} {key} {list(subspace)}: "
                     f"{'converged' if result.converged else 'NOT converged'}, "
                     f"{result.restarts} restarts, {t['median_s']:.2f} s "
                     f"(arpack {base['median_s']:.2f} s), distance "
                     f"{entries[-1]['max_rel_distance_vs_reference']:.1e}")
        out.append({
            "matrix": name, "n": n, "nnz": int(matrix.nnz), "k": k, "tol": EIGS_TOL,
            "max_restarts": EIGS_MAX_RESTARTS,
            "reference": {"tol": EIGS_REFERENCE_TOL,
                          "eigenvalues": [[float(z.real), float(z.imag)] for z in reference]},
            "arpack": {"median_s": base["median_s"], "min_s": base["min_s"],
                       "reps": base["reps"], "matvecs": arpack_matvecs,
                       "max_rel_distance_vs_reference": eigenvalue_distance(
                           states["arpack"]["result"], reference)},
            "runs": entries})
    return out


# --- targets, summary, main -----------------------------------------------------------------------


def gpu_target(ir_rows: list[dict], backend: str) -> dict:
    """Blocked IR (fp32, bf16 factors) at least 2x faster than the fp64 solve at n = 16384, at
    the fp64 solve's backward error (IR run with ``tol = max(2 * that, u_fp64)``)."""
    entry = {"target": f"blocked IR with fp32 / bf16 factors >= {GPU_TARGET_SPEEDUP:g}x faster "
                       f"than the fp64 jax.scipy.linalg.solve at equal backward error, n = "
                       f"{GPU_TARGET_N}, GPU",
             "threshold_speedup": GPU_TARGET_SPEEDUP,
             "equal_backward_error": "IR converged to tol = max(2 x the fp64 solve's backward "
                                     "error, 2**-53) (--gpu sets that tol)"}
    rows = [r for r in ir_rows if r["factorization"] == "blocked" and r["n"] == GPU_TARGET_N
            and r["factor_format"] in GPU_FACTOR_FORMATS
            and r["tol"] <= max(2 * r["fp64_solve"]["backward_error"], FP64_UNIT_ROUNDOFF)]
    if backend != "gpu" or not rows:
        entry.update(measured=False, met=None, note=(
            f"not measured: needs `--gpu` on a GPU backend (this run: backend {backend}, "
            f"{len(rows)} matching rows)"))
        return entry
    cases, met = {}, {}
    for r in rows:
        speedup = r["fp64_solve"]["median_s"] / r["median_s"]
        ok = r["status"] == "converged" and speedup >= GPU_TARGET_SPEEDUP
        cases[f"cond={r['cond']:.0e},{r['factor_format']},{r['method']}"] = {
            "speedup": speedup, "status": r["status"], "backward_error": r["backward_error"],
            "fp64_backward_error": r["fp64_solve"]["backward_error"], "met": ok}
        key = f"{r['factor_format']},cond={r['cond']:.0e}"
        met[key] = met.get(key, False) or ok
    entry.update(measured=True, cases=cases, met_per_format_and_cond=met,
                 met=all(met.values()),
                 note="met when, for fp32 and for bf16 factors at every condition number run, "
                      "LU-IR or GMRES-IR reaches the fp64 solve's backward error at least 2x "
                      "faster than it")
    return entry


def summary(result: dict) -> str:
    lines = [f"bench_linalg ({'quick' if result['quick'] else result['config']['preset']}), "
             f"{result['metadata']['date']}"]
    for r in result.get("ir", []):
        lines.append(f"IR n={r['n']} cond={r['cond']:.0e} {r['factorization']}/"
                     f"{r['factor_format']}/{r['method']}: {r['status']} ({r['iterations']} "
                     f"steps, {r['gmres_steps_total']} GMRES), bwd {r['backward_error']:.1e} vs "
                     f"{r['fp64_solve']['backward_error']:.1e}, time x"
                     f"{r['time_over_fp64_solve']:.1f} the fp64 solve")
    pr = result.get("pagerank")
    if pr:
        lines.append(f"PageRank {pr['graph']['nodes']} nodes: scipy {pr['scipy']['iterations']} "
                     f"iterations, {pr['scipy']['median_s']:.2f} s ("
                     f"{pr['scipy']['per_iteration_s_last_call'] * 1e3:.0f} ms/iteration); ours "
                     f"with max_iter=1 {pr['one_iteration_call_s']['median_s']:.2f} s")
        for r in pr["runs"]:
            tau = r["kendall_tau_top_k_vs_fp64"]
            lines.append(f"  {r['storage_format']}/{r['accumulation_format']}: {r['status']}, "
                         f"{r['iterations']} it (~{r['per_iteration_s_estimate'] * 1e3:.0f} "
                         f"ms/it), {r['median_s']:.2f} s (x"
                         f"{r['time_over_scipy']:.2f} scipy), max |diff| "
                         f"{r['max_abs_diff_vs_scipy']:.1e}"
                         + ("" if tau is None else f", tau top-{pr['top_k']} {tau:.3f}"))
    for case in result.get("svds", []):
        lines.append(f"svds {case['matrix']} {case['shape']} k={case['k']}: scipy "
                     f"{case['scipy']['median_s']:.3f} s; " + "; ".join(
                         f"{r['method']}/{r['format']} {r['max_rel_error_vs_scipy']:.0e} "
                         f"x{r['time_over_scipy']:.2f}" for r in case["runs"]))
    for case in result.get("eigs", []):
        lines.append(f"eigs {case['matrix']} n={case['n']} k={case['k']}: arpack "
                     f"{case['arpack']['median_s']:.2f} s, {case['arpack']['matvecs']} matvecs")
        for r in case["runs"]:
            lines.append(f"  {r['size_set']}/{r['run']} {r['subspace_sizes']}: "
                         f"{'converged' if r['converged'] else 'NOT converged'}, "
                         f"{r['restarts']} restarts, x{r['time_over_arpack']:.1f} arpack, "
                         f"distance {r['max_rel_distance_vs_reference']:.0e}")
    for t in result["targets"]:
        lines.append(f"target: {t['target']}: "
                     + (f"met={t['met']}" if t["measured"] else t["note"]))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, < 60 s")
    preset.add_argument("--gpu", action="store_true",
                        help=f"the GPU target: IR, n = {GPU_TARGET_N}, blocked factorisation, "
                             "fp32/bf16 factors vs the fp64 solve (needs a GPU backend)")
    parser.add_argument("--force", action="store_true",
                        help="with --gpu: run even without a GPU backend")
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="which parts (default all)")
    parser.add_argument("--ir-n", type=int, help="order of the IR matrices")
    parser.add_argument("--conds", type=float, nargs="+", help="IR condition numbers")
    parser.add_argument("--ir-reps", type=int, help="timed repetitions of each IR solve")
    parser.add_argument("--ir-tol", choices=("default", "match"),
                        help="IR tol: solve_ir's default (sqrt(n) u), or the fp64 solve's "
                             "backward error (match; --gpu's default)")
    parser.add_argument("--factor-formats", nargs="+", choices=("fp32", "fp16", "bf16"),
                        help="IR factor formats")
    parser.add_argument("--factorizations", nargs="+", choices=FACTORIZATIONS,
                        help="IR factorisation variants (default: those solve_ir offers)")
    parser.add_argument("--pagerank-nodes", type=int, help="nodes of the PageRank graph")
    parser.add_argument("--pagerank-reps", type=int, help="timed repetitions of each PageRank")
    parser.add_argument("--svds-reps", type=int, help="timed repetitions of each svds")
    parser.add_argument("--eigs-n", type=int, help="order of the eigs matrices")
    parser.add_argument("--eigs-reps", type=int, help="timed repetitions of each eigs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc thresholds alone")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT}; {QUICK_OUT} with --quick, "
                             f"{GPU_OUT} with --gpu)")
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "gpu" if args.gpu else "full"
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.force and not args.gpu:
        parser.error("--force only applies to --gpu")
    if args.out is None:
        args.out = {"quick": QUICK_OUT, "gpu": GPU_OUT, "full": DEFAULT_OUT}[args.preset]
    counts = (args.ir_n, args.ir_reps, args.pagerank_nodes, args.pagerank_reps, args.svds_reps,
              args.eigs_reps)
    if min(counts) < 1 or args.ir_n < 2 or args.pagerank_nodes < 2 or args.eigs_n < 20:
        parser.error("--ir-n, --pagerank-nodes (>= 2), --eigs-n (>= 20) and the --*-reps must "
                     "be positive")
    if any(not c >= 1 for c in args.conds):
        parser.error(f"--conds: condition numbers must be >= 1, got {args.conds}")
    args.parts = tuple(p for p in PARTS if p in args.parts)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    malloc = "not tuned (--no-malloc-tuning)" if args.no_malloc_tuning else tune_malloc()
    jax.config.update("jax_enable_x64", True)
    import scipy

    backend = jax.default_backend()
    if args.gpu and backend != "gpu" and not args.force:
        sys.exit(f"bench_linalg.py --gpu: the GPU target needs a GPU backend; JAX's backend here "
                 f"is {backend!r} (devices: {jax.devices()}). Run it on a machine with a GPU "
                 "(jax[cuda]), or add --force to run the n = 16384 preset on this backend anyway.")
    meta = {**base_metadata([sys.argv[0], *argv]), "malloc": malloc,
            "load_average_1_5_15_min_at_start": list(os.getloadavg())}
    meta["versions"]["scipy"] = scipy.__version__
    meta["openblas_num_threads"] = os.environ["OPENBLAS_NUM_THREADS"] + (
        " (set by this script)" if BLAS_THREADS_SET_HERE else " (from the environment)")
    config = {key: getattr(args, key) for key in (
        "preset", "parts", "ir_n", "conds", "ir_reps", "ir_tol", "factor_formats",
        "pagerank_nodes", "pagerank_reps", "svds_sparse", "svds_dense", "svds_k", "svds_reps",
        "svds_methods", "svds_formats", "eigs_n", "eigs_reps", "eigs_size_sets", "seed")}
    config.update(ir_methods=list(IR_METHODS), pagerank_formats=[list(p) for p in
                                                                  PAGERANK_FORMATS],
                  eigs_size_sets_times_k_plus_1={s: EIGS_SIZE_SETS[s]
                                                 for s in args.eigs_size_sets},
                  eigs_tol=EIGS_TOL,
                  sparse_operands="CSR without degree buckets")
    result = {"metadata": meta, "config": config, "quick": args.quick,
              "conventions": {
                  "median_s": "median over the timed repetitions, after one untimed call "
                              "(first_call_s, compile included)",
                  "time_over_*": "median time / the baseline's median time (< 1: faster than "
                                 "the baseline)",
                  "backward_error": "||b - A x||_inf / (||A||_inf ||x||_inf + ||b||_inf)",
                  "forward_error": "||x - x_true||_inf / ||x_true||_inf",
                  "max_rel_error_vs_scipy": "max_i |s_i - s_i(scipy)| / s_i(scipy)",
                  "max_rel_distance_vs_reference": "max over reference eigenvalues r of "
                                                   "min_j |theta_j - r| / |r|"}}
    seconds = {}
    if "ir" in args.parts:
        start = time.perf_counter()
        result["ir"], result["ir_factorizations_skipped"] = bench_ir(args)
        seconds["ir"] = time.perf_counter() - start
    if "pagerank" in args.parts:
        start = time.perf_counter()
        result["pagerank"] = bench_pagerank(args)
        seconds["pagerank"] = time.perf_counter() - start
    if "svds" in args.parts:
        start = time.perf_counter()
        result["svds"] = bench_svds(args)
        seconds["svds"] = time.perf_counter() - start
    if "eigs" in args.parts:
        start = time.perf_counter()
        result["eigs"] = bench_eigs(args)
        seconds["eigs"] = time.perf_counter() - start
    meta["part_seconds"] = seconds
    meta["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
    result["targets"] = [gpu_target(result.get("ir", []), backend)]
    write_json(result, args.out)
    progress(summary(result))
    return result


if __name__ == "__main__":
    main()
