"""The quickstart (``make run``): the whole toolkit on tiny settings, ending in one report.

1. trains a small GCN (node classification on a contextual SBM) and a small block-sparse
   transformer (associative recall), each resumable from its Orbax checkpoints;
2. CESTAC-checks the trained GCN (exact digits per layer) and profiles its oversmoothing per
   precision;
3. autotunes the GCN's per-layer precision under an accuracy budget;
4. times block-sparse against dense attention at a few densities;
5. runs the mixed-precision linear-algebra study (``experiments/linalg_study.py``, ``[linalg]``):
   LU-IR / GMRES-IR per factor format against the condition number, PageRank per format pair,
   unite-and-conquer restarts against single co-methods;
6. writes ``runs/quickstart/report.html`` (+ ``.md``, ``.json``) and prints its path and a
   summary table.

Usage::

    python -m experiments.quickstart [--config configs/quickstart.toml] [--set key=value ...]
        [--out-dir runs] [--quiet]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # fp64 references of CESTAC and the autotuner

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "quickstart.toml"


def attention_timings(seq_len: int = 1024, densities=(1 / 8, 1 / 4, 1 / 2), *, heads: int = 2,
                      head_dim: int = 32, block: int = 64, reps: int = 3) -> list[dict]:
    """Block-sparse vs dense attention forward (ms, median of ``reps``) on causal windows."""
    import jax.numpy as jnp
    import numpy as np

    from dp2ejax.attention import block_sparse_attention, causal, local

    q, k, v = jax.random.normal(jax.random.key(0), (3, 1, seq_len, heads, head_dim))
    rows = []
    for density in densities:
        blocks = max(1, round(density * seq_len / block))
        mask = (causal(seq_len, block_size=block) if blocks >= seq_len // block else
                local(seq_len, (blocks - 1) * block + 1, block_size=block, causal=True))
        dense_mask = jnp.asarray(mask.to_dense())
        sparse = jax.jit(lambda q, k, v, mask=mask: block_sparse_attention(q, k, v, mask))
        dense = jax.jit(lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m))
        timings = {}
        calls = {"sparse": functools.partial(sparse, q, k, v),
                 "dense": functools.partial(dense, q, k, v, dense_mask)}
        for name, call in calls.items():
            jax.block_until_ready(call())
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times.append(time.perf_counter() - start)
            timings[name] = float(np.median(times)) * 1e3
        rows.append({"seq_len": seq_len, "density": float(mask.block_density),
                     "sparse_ms": timings["sparse"], "dense_ms": timings["dense"],
                     "pattern": "causal" if blocks >= seq_len // block else "causal window"})
    return rows


def run(config: str | Path = DEFAULT_CONFIG, *, overrides=(), out_dir: str | Path | None = None,
        quiet: bool = True, attention_seq_len: int = 1024) -> dict:
    """Runs the quickstart; returns ``{"report": path, "results": dict}``."""
    from dp2ejax import cli
    from dp2ejax.report import write_report
    from experiments import as_config, linalg_study, train_gcn, train_sparse_transformer

    overrides = list(overrides) + ([f"run.out_dir={str(out_dir)!r}"] if out_dir else [])
    cfg = as_config(config, overrides)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    start = time.perf_counter()

    say("[1/6] training the GCN")
    gcn = train_gcn.run(cfg, quiet=quiet)
    gcn_cfg = cfg.replace(run={"experiment": "gcn"})
    say("[1/6] training the block-sparse transformer")
    transformer = train_sparse_transformer.run(cfg, quiet=quiet)
    tf_cfg = cfg.replace(run={"experiment": "sparse_transformer"})

    gcn_dir = str(gcn_cfg.run_dir)
    def sets(section):  # the overrides of one section, for the analyze / tune commands
        return sum((["--set", o] for o in overrides if o.startswith(section + ".")), [])

    say("[2/6] CESTAC digits and oversmoothing of the GCN")
    if cli.main(["analyze", "--run", gcn_dir, "--no-report", *sets("analyze")]) != 0:
        raise RuntimeError("dp2ejax analyze failed")
    say("[3/6] autotuning the GCN's per-layer precision")
    if cli.main(["tune", "--run", gcn_dir, "--no-report", *sets("tune")]) != 0:
        raise RuntimeError("dp2ejax tune failed")
    gcn = cli._results(Path(gcn_dir))
    say("[4/6] block-sparse vs dense attention")
    attention = attention_timings(attention_seq_len)
    say("[5/6] mixed-precision linear algebra: IR, PageRank, unite and conquer")
    linalg = linalg_study.run(cfg, quiet=quiet)

    summary = {
        "gcn test accuracy": gcn["summary"].get("test_accuracy"),
        "transformer query accuracy": transformer["summary"].get(
            "eval_query_accuracy", transformer["summary"].get("query_accuracy")),
        "tuned policy feasible": gcn.get("tuning", {}).get("feasible"),
        "tuning evaluations": gcn.get("tuning", {}).get("evaluations"),
        "attention speed-up at the lowest density": attention[0]["dense_ms"]
        / attention[0]["sparse_ms"],
        **linalg_study.headline(linalg),
        "seconds": round(time.perf_counter() - start, 1),
    }
    results = {
        "summary": summary,
        "training": {**gcn["training"], **transformer["training"]},
        "cestac": gcn.get("cestac", {}),
        "oversmoothing": gcn.get("oversmoothing"),
        "tuning": gcn.get("tuning"),
        "attention": attention,
        "linalg": linalg,
        "config": {"gcn": gcn.get("config"), "sparse_transformer": transformer.get("config"),
                   "linalg": dataclasses.asdict(cfg.linalg)},
    }
    results = {k: v for k, v in results.items() if v is not None}
    say("[6/6] writing the report")
    quickstart_dir = Path(cfg.run.out_dir) / "quickstart"
    paths = write_report(quickstart_dir, results, title="dp2ejax quickstart")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return {"report": Path(paths["html"]), "results": results,
            "runs": [gcn_dir, str(tf_cfg.run_dir)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="the TOML config (default configs/quickstart.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--out-dir", default=None, help="where runs go (default: the config's)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    from dp2ejax.config import ConfigError

    try:
        out = run(args.config, overrides=args.overrides, out_dir=args.out_dir, quiet=args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\nQuickstart summary")
    for key, value in out["results"]["summary"].items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<42} {text}")
    print(f"\nreport: {out['report']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
