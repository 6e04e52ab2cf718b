"""Benchmark of the row-partitioned GCN layer: bytes communicated by all-gather vs halo exchange.

What it measures, in one run, for stochastic block model graphs (GCN-normalised adjacency,
float32, ``k`` features) split by rows over 1, 2, 4 and 8 devices
(:class:`dp2ejax.parallel.PartitionedCSR`):

* bytes one device receives per layer ``y = P @ x``, **counted from the compiled program**
  (the results of its collectives, :func:`dp2ejax.parallel.collective_bytes`; an all-gather's
  result includes the device's own block, which is subtracted: ``received``), not timed;
* the same for the halo exchange (collective permutes, each round padded to its longest
  message), and the rows the halo really needs (``halo_rows``, unpadded): the padding overhead;
* two node orders: the generator's (nodes of a community consecutive: row blocks follow the
  communities) and a random permutation (what an unpartitioned graph looks like);
* the compiled layer's time per device count (``--time``; on CPU the devices are host threads
  sharing the cores: a check that the program runs, not a scaling measurement; on a GPU
  machine with several GPUs the same table is the scaling table).

Every sharded product is checked against the single-device product (maximum relative
difference, recorded). Usage::

    python benchmarks/bench_parallel.py               # n = 4096 and 65536 nodes, k = 64
    python benchmarks/bench_parallel.py --quick       # smoke run, n = 512, k = 16
    python benchmarks/bench_parallel.py --nodes 65536 --features 128 --time --out /tmp/p.json

The device count is set with ``--xla_force_host_platform_device_count`` before JAX starts
(``--devices``, default 8).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path("benchmarks/out/bench_parallel.json")
QUICK_OUT = Path("benchmarks/out/bench_parallel_quick.json")
PARTITIONS = (1, 2, 4, 8)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 512, k = 16")
    parser.add_argument("--nodes", type=int, nargs="+", help="graph sizes (default 4096 65536)")
    parser.add_argument("--features", type=int, help="k, the dense operand's width (default 64)")
    parser.add_argument("--communities", type=int, default=8, help="SBM blocks (default 8)")
    parser.add_argument("--avg-degree", type=float, default=16.0)
    parser.add_argument("--homophily", type=float, default=0.9,
                        help="share of a node's edges inside its community")
    parser.add_argument("--devices", type=int, default=8, help="host devices (default 8)")
    parser.add_argument("--time", action="store_true", help="also time the compiled layers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.nodes = args.nodes or ([512] if args.quick else [4096, 65536])
    args.features = args.features or (16 if args.quick else 64)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if min(args.nodes) < 8 or args.features < 1 or args.devices < 1:
        parser.error("--nodes must be >= 8, --features and --devices positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={args.devices}"])
    import jax
    import jax.numpy as jnp
    from bench_arith import base_metadata, write_json

    from dp2ejax import graph
    from dp2ejax.parallel import PartitionedCSR, collective_bytes, make_mesh
    from dp2ejax.sparse import CSR

    meta = base_metadata([sys.argv[0], *argv])
    meta["device_count"] = jax.device_count()
    product = jax.jit(lambda a, x: a @ x)
    cases = []
    for n in args.nodes:
        g = graph.contextual_sbm(n, args.communities, avg_degree=args.avg_degree,
                                 homophily=args.homophily, feature_dim=args.communities, signal=0.0,
                                 seed=args.seed)
        ordered = graph.normalized_adjacency(g.adjacency, "gcn").astype(jnp.float32)
        perm = np.random.default_rng(args.seed).permutation(n)
        shuffled = CSR.from_scipy(ordered.to_scipy()[perm][:, perm])
        x = np.random.default_rng(args.seed + 1).standard_normal((n, args.features)).astype(
            np.float32)
        for order, matrix in (("communities", ordered), ("random", shuffled)):
            reference = np.asarray(matrix.without_buckets() @ x)
            for p in PARTITIONS:
                if p > jax.device_count():
                    continue
                mesh = make_mesh({"rows": p}, devices=jax.devices()[:p])
                case = {"nodes": n, "nnz": matrix.nnz, "features": args.features,
                        "order": order, "partitions": p}
                block_bytes = -(-n // p) * args.features * 4
                for exchange in ("allgather", "halo"):
                    parts = PartitionedCSR.from_csr(matrix, mesh, "rows", exchange=exchange)
                    compiled = product.lower(parts, x).compile()
                    counted = collective_bytes(compiled.as_text())
                    result = sum(counted.values())
                    received = result - block_bytes if exchange == "allgather" and result else \
                        result
                    y = np.asarray(compiled(parts, x))
                    entry = {"collectives": counted, "received_bytes_per_device": received,
                             "max_rel_diff_vs_single_device": float(
                                 np.abs(y - reference).max() / np.abs(reference).max())}
                    if exchange == "halo":
                        needed = parts.halo_rows * args.features * 4 / p
                        entry.update(halo_rows=parts.halo_rows, rounds=len(parts.shifts),
                                     needed_bytes_per_device=needed,
                                     padding_overhead=received / needed - 1 if needed else 0.0)
                    if args.time:
                        compiled(parts, x).block_until_ready()
                        times = []
                        for _ in range(5):
                            start = time.perf_counter()
                            compiled(parts, x).block_until_ready()
                            times.append(time.perf_counter() - start)
                        entry["median_s"] = float(np.median(times))
                    case[exchange] = entry
                a, h = case["allgather"], case["halo"]
                case["halo_over_allgather_bytes"] = (
                    h["received_bytes_per_device"] / a["received_bytes_per_device"]
                    if a["received_bytes_per_device"] else None)
                cases.append(case)
                ratio = case["halo_over_allgather_bytes"]
                print(f"n={n} {order:11s} p={p}: all-gather "
                      f"{a['received_bytes_per_device'] / 2**20:.2f} MiB, halo "
                      f"{h['received_bytes_per_device'] / 2**20:.2f} MiB"
                      + (f" ({ratio:.2f}x)" if ratio is not None else ""),
                      file=sys.stderr, flush=True)
    fewer = [c for c in cases if c["partitions"] > 1 and c["order"] == "communities"]
    result = {
        "metadata": meta,
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "quick": args.quick,
        "conventions": {
            "received_bytes_per_device": "bytes of one device's collective results per layer, "
                                         "from the compiled HLO; all-gather minus the own block",
            "needed_bytes_per_device": "halo rows the blocks really read (distinct off-block "
                                       "columns), averaged per device, unpadded",
        },
        "cases": cases,
        "summary": {
            "halo_moves_fewer_bytes_with_community_order": all(
                c["halo_over_allgather_bytes"] < 1 for c in fewer),
            "halo_over_allgather_bytes_random_order": [
                c["halo_over_allgather_bytes"] for c in cases
                if c["partitions"] > 1 and c["order"] == "random"],
        },
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
