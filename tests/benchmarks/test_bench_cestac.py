"""Smoke test: the CESTAC benchmark runs (``--quick``) and writes well-formed JSON.

Timings are not asserted (they live in benchmarks/RESULTS.md); the structure and the check that
the benchmark's rebuilt analysis program matches ``analyze`` bit for bit are.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKLOADS = ("mlp", "gcn_bcoo", "gcn_dense")
CONTENDERS = ("plain", "emulate_nearest", "emulate_random", "cestac_samples",
              "analysis_program", "analysis_program_args")


def test_bench_cestac_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cestac.py"), "--quick", "--only",
         "workloads", "--out", str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["samples"] == 3
    assert data["metadata"]["jax_enable_x64"] is True
    assert data["literature"]
    assert set(data["workloads"]) == set(WORKLOADS)
    for name in WORKLOADS:
        workload = data["workloads"][name]
        assert set(workload["timings"]) == set(CONTENDERS)
        for entry in workload["timings"].values():
            assert entry["median_s"] > 0 and entry["min_s"] > 0 and entry["reps"] == 3
        ratios = workload["ratios"]
        assert ratios["analysis_program_over_emulate_random"] > 0
        assert ratios["detection_cost_analysis_program_over_cestac_samples"] > 0
        breakdown = workload["compile_breakdown"]
        assert set(breakdown) == {"trace_and_lower_s", "compile_s", "first_run_s"}
        end_to_end = workload["analyze_end_to_end"]
        assert end_to_end["first_call_s"] > 0 and end_to_end["median_s"] > 0
        # the benchmark times the same program analyze builds
        assert workload["check"]["samples_bitwise_equal_analyze"] is True
        assert workload["check"]["instability_counts_equal_analyze"] is True
    assert "sparse_product" in data["workloads"]["gcn_bcoo"]["bcoo"]
    assert data["workloads"]["gcn_bcoo"]["graph"]["nodes"] == 256
    assert [t["workload"] for t in data["targets"]] == ["mlp", "gcn_bcoo"]
    for target in data["targets"]:
        assert target["threshold"] == 3.5
        assert target["passed"] == (target["ratio"] <= 3.5)
    assert data["all_checks_passed"] is True
