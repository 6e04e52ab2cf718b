"""Smoke test: the parallel benchmark runs (``--quick``) and writes well-formed JSON.

Byte counts come from the compiled programs, so some are asserted: with communities in
consecutive rows the halo exchange receives less than the all-gather, and every sharded product
equals the single-device one (float32, the same per-row sums: within 1e-6 relative).
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bench_parallel_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_parallel.py"), "--quick",
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["metadata"]["device_count"] == 8
    assert {(c["order"], c["partitions"]) for c in data["cases"]} == {
        (order, p) for order in ("communities", "random") for p in (1, 2, 4, 8)}
    for case in data["cases"]:
        for exchange in ("allgather", "halo"):
            assert case[exchange]["max_rel_diff_vs_single_device"] < 1e-6
        if case["partitions"] == 1:
            assert case["allgather"]["received_bytes_per_device"] == 0
            assert case["halo"]["received_bytes_per_device"] == 0
            continue
        block = 512 // case["partitions"] * 16 * 4
        assert case["allgather"]["received_bytes_per_device"] == (case["partitions"] - 1) * block
        halo = case["halo"]
        assert halo["needed_bytes_per_device"] <= halo["received_bytes_per_device"]
        assert set(halo["collectives"]) == {"collective-permute"}
    assert data["summary"]["halo_moves_fewer_bytes_with_community_order"]
