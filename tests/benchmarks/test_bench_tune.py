"""Smoke test: the autotuner benchmark runs (``--quick``) and writes well-formed JSON.

Wall times and savings are not asserted beyond their sign (they live in
benchmarks/RESULTS.md); the structure, feasibility and the PROMISE bounds are.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bench_tune_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_tune.py"), "--quick", "--out",
         str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert {"date", "command", "backend", "versions"} <= set(data["metadata"])
    models = {m["model"]: m for m in data["models"]}
    assert set(models) == {"gcn", "block_sparse_transformer"}
    assert set(models["gcn"]["searches"]) == {"delta", "knapsack", "greedy"}
    for model in models.values():
        assert model["units"] >= 1 and model["space_size"] >= 2
        assert {"fp32", "bf16"} <= set(model["baselines"])
        for entry in model["searches"].values():
            assert entry["feasible"] is True
            assert entry["evaluations"] >= 1 and entry["wall_s"] > 0
            assert entry["bits_saved_vs"]["fp32"] > 0
            assert entry["energy_movement_pj"] > 0 and entry["energy_compute_pj"] > 0
        promise = model["promise_comparison"]
        n = model["units"]
        assert promise["units"] == n and promise["delta_debugging_bound_n_squared"] == n * n
        assert "not a head-to-head" in promise["note"].lower()
    gcn = models["gcn"]["searches"]
    assert gcn["delta"]["held_out"]["target"] == 0.01
