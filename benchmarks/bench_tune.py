"""Benchmark of the per-layer precision autotuner (``dp2ejax.tune.autotune``) on a GCN and a
block-sparse transformer.

What it measures, per model, for the tuner's searches (``delta``: sensitivity + delta debugging,
``knapsack``: sensitivity + knapsack + verification/repair) beside a plain ``greedy`` search:

* the cost of the chosen policy (bits model: bits-weighted FLOPs + bytes; energy model: pJ
  from Horowitz, ISSCC 2014) and the cost saved against uniform fp32 and uniform bf16 (every
  tuned unit in that format, the rest native);
* the accuracy kept: for the GCN (trained briefly on a contextual SBM) the drop in validation
  accuracy (the criterion) and in test accuracy (held out); for the transformer (random
  init) the relative error against fp64 on the calibration batch and on a held-out batch;
* distinct configurations evaluated and wall time.

PROMISE (Graillat, Jézéquel, Picot, Févotte, Lathuilière, "Auto-tuning for floating-point
precision with Discrete Stochastic Arithmetic", J. Comput. Sci. 36, 2019) lowers variables by
delta debugging with CADNA validation; its number of program runs is bounded by O(n log n)
when few variables must stay high and O(n^2) at worst for n variables. We report those bounds
for the same number of units next to our evaluation counts: this is **not** a head-to-head
measurement (PROMISE tunes C/C++ variable declarations, not JAX layers).

Usage::

    python benchmarks/bench_tune.py           # ~10-15 minutes on 2 cores
    python benchmarks/bench_tune.py --quick   # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from bench_arith import base_metadata, write_json

jax.config.update("jax_enable_x64", True)

from dp2ejax import attention, graph  # noqa: E402
from dp2ejax.tune import MetricDrop, RelativeError, autotune  # noqa: E402

DEFAULT_OUT = Path("benchmarks/out/bench_tune.json")
QUICK_OUT = Path("benchmarks/out/bench_tune_quick.json")
SEARCHES = ("delta", "knapsack", "greedy")


def gcn_problem(quick: bool, seed: int) -> dict:
    n, hidden, steps = (60, 8, 10) if quick else (400, 16, 100)
    g = graph.contextual_sbm(n, 3, feature_dim=16, signal=2.0, seed=seed, avg_degree=8,
                             homophily=0.8)
    P = graph.normalized_adjacency(g.adjacency, "gcn")
    masks = g.split(seed, train=0.3, val=0.3, test=0.4)
    model = graph.GCN(hidden=hidden, num_classes=3, depth=2)
    variables, _ = graph.train_node_classifier(model, P, g.features, g.labels, masks.train,
                                               steps=steps, learning_rate=0.02, seed=seed,
                                               val_mask=masks.val)
    labels = np.asarray(g.labels)
    val, test = np.asarray(masks.val), np.asarray(masks.test)

    def accuracy(mask):
        return lambda logits: float(np.mean(np.argmax(np.asarray(logits), -1)[mask]
                                            == labels[mask]))

    criterion = MetricDrop(accuracy(val), max_drop=0.01, held_out_metric_fn=accuracy(test))
    return dict(name="gcn", apply=model.apply, params=variables, inputs=(g.features, P),
                held_out=(g.features, P), criterion=criterion,
                roles=("matmul_inputs",) if quick else
                ("matmul_inputs", "matmul_accumulation", "elementwise"),
                candidates=("fp32", "bf16", "fp8_e4m3") if quick else
                ("fp32", "bf16", "fp16", "fp8_e4m3"),
                description=f"GCN(hidden={hidden}, classes=3, depth=2) trained {steps} steps on "
                            f"a contextual SBM (n={n}, 3 classes, degree 8, homophily 0.8); "
                            f"criterion: validation accuracy drop <= 0.01; held out: test "
                            f"accuracy")


class TransformerStack(nn.Module):
    depth: int
    width: int
    heads: int
    mask: attention.BlockMask

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = attention.BlockSparseTransformerBlock(self.width, self.heads, self.mask,
                                                      name=f"block_{i}")(x)
        return x


def transformer_problem(quick: bool, seed: int) -> dict:
    depth, length, width = (1, 32, 16) if quick else (1, 64, 32)
    mask = attention.local(length, length // 2, block_size=16, causal=True)
    model = TransformerStack(depth, width, 4, mask)
    x = jax.random.normal(jax.random.key(seed), (2, length, width))
    held_out = jax.random.normal(jax.random.key(seed + 1), (2, length, width))
    params = model.init(jax.random.key(seed + 2), x)
    return dict(name="block_sparse_transformer", apply=model.apply, params=params, inputs=(x,),
                held_out=None if quick else (held_out,), criterion=RelativeError(1e-2),
                roles=("matmul_inputs",) if quick else ("matmul_inputs", "matmul_accumulation"),
                # --quick: one unit (each configuration of this model runs the attention
                # kernel's loops, which compile per configuration: ~1 s each)
                candidates={"*mlp_in": ("fp32", "bf16")} if quick else ("fp32", "bf16", "fp8_e4m3"),
                searches=("delta",) if quick else SEARCHES,
                description=f"{depth} BlockSparseTransformerBlock(width={width}, heads=4), "
                            f"local causal mask L={length}, random init, batch 2; criterion: "
                            f"relative error <= 1e-2 against fp64")


def run_problem(problem: dict, max_greedy: int | None, measured: bool) -> dict:
    searches = problem.get("searches", SEARCHES)
    out = {"model": problem["name"], "description": problem["description"],
           "roles": list(problem["roles"]), "candidates": list(problem["candidates"]),
           "searches": {}}
    for search in searches:
        start = time.perf_counter()
        result = autotune(problem["apply"], problem["params"], problem["inputs"],
                          candidates=problem["candidates"], criterion=problem["criterion"],
                          roles=problem["roles"], search=search,
                          held_out_inputs=problem["held_out"],
                          max_evaluations=max_greedy if search == "greedy" else None,
                          baselines=None if measured else ("fp32", "bf16"),
                          report_costs=("bits", "energy", "measured")
                          if measured and search == "delta" else ("bits", "energy"))
        wall = time.perf_counter() - start
        base = {b["format"]: b for b in result.baselines}
        energy = result.costs["energy"]
        out["units"] = len(result.table)
        out["sensitivity_evaluations"] = 1 + sum(len(r["candidates"]) - 1 for r in result.table)
        out["space_size"] = result.space_size
        out["baselines"] = {f: {"value": b["value"], "meets": b["meets"],
                                "bits_cost": b["costs"]["bits"]["total"],
                                "energy_pj": b["costs"]["energy"]["total"]}
                            for f, b in base.items()}
        entry = {
            "feasible": result.feasible, "reason": result.reason,
            "value": result.value, "verified_value": result.verified_value,
            "held_out": result.held_out,
            "evaluations": result.evaluations, "cache_hits": result.cache_hits,
            "wall_s": wall,
            "bits_cost": result.costs["bits"]["total"],
            "energy_pj": energy["total"], "energy_compute_pj": energy["compute_pj"],
            "energy_movement_pj": energy["movement_pj"],
            "bits_saved_vs": {f: result.savings.get(f) for f in ("fp32", "bf16")},
            "energy_saved_vs": {f: 1 - energy["total"] / base[f]["costs"]["energy"]["total"]
                                for f in ("fp32", "bf16")},
            "formats": {f: sum(1 for v in result.config.values() if v == f)
                        for f in problem["candidates"]},
            "config": result.config,
        }
        if "measured" in result.costs:
            entry["measured"] = {"policy": result.costs["measured"],
                                 **{f"uniform_{f}": base[f]["costs"]["measured"]
                                    for f in ("fp32", "bf16")}}
        out["searches"][search] = entry
        print(f"# {problem['name']} {search}: {result.evaluations} evaluations, {wall:.1f} s, "
              f"value {result.value:.3g}, saved {result.savings.get('fp32', 0):.1%} vs fp32",
              file=sys.stderr)
    n = out["units"]
    out["promise_comparison"] = {
        "units": n,
        "delta_debugging_bound_n_log2_n": n * max(math.log2(n), 1),
        "delta_debugging_bound_n_squared": n * n,
        "ours": {s: out["searches"][s]["evaluations"] for s in searches},
        "ours_without_sensitivity_pass": {
            s: out["searches"][s]["evaluations"] - (out["sensitivity_evaluations"]
                                                    if s in ("delta", "knapsack") else 0)
            for s in searches},
        "note": "PROMISE (Graillat et al., J. Comput. Sci. 2019) uses delta debugging with "
                "CADNA validation over program variables; its run counts grow as O(n log n) "
                "to O(n^2). Our counts include the per-unit sensitivity pass. Not a "
                "head-to-head measurement.",
    }
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-greedy-evaluations", type=int, default=None,
                        help="cap on the greedy baseline's evaluations (default: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    problems = [gcn_problem(args.quick, args.seed), transformer_problem(args.quick, args.seed)]
    result = {
        "benchmark": "bench_tune",
        "quick": args.quick,
        "metadata": base_metadata([sys.argv[0], *argv]),
        "config": {"seed": args.seed, "searches": list(SEARCHES),
                   "cost_models": ["bits (objective)", "energy (Horowitz 2014, DRAM)",
                                   "measured (delta only, not with --quick)"],
                   "execution": "eager (op by op)"},
        "models": [run_problem(p, args.max_greedy_evaluations, not args.quick)
                   for p in problems],
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
