"""Smoke test: the attention benchmark runs (``--quick``) and writes well-formed JSON.

Timings are not asserted (they live in benchmarks/RESULTS.md); the structure and the agreement
of the block-sparse and dense outputs are.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_bench(tmp_path, *flags):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_attention.py"), "--quick", *flags,
         "--out", str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    return json.loads(out.read_text())


def check_case(case, dtype_tolerance):
    assert case["seq_len"] > 0 and 0 < case["block_density"] <= 1
    assert case["kept_block_elements"] > 0
    for phase in ("forward", "forward_backward"):
        result = case[phase]
        timings = result["timings"]
        assert set(timings) == {"block_sparse", "dense"}
        for entry in timings.values():
            assert entry["median_s"] > 0 and entry["reps"] >= 1
            assert entry["gflops_per_s_kept_blocks"] > 0
        assert result["dense_over_sparse"] > 0
        assert 0 <= result["max_abs_diff"] < dtype_tolerance, (case["seq_len"], phase)


def test_bench_attention_quick_writes_json(tmp_path):
    data = run_bench(tmp_path)
    assert data["quick"] is True and data["config"]["preset"] == "cpu_quick"
    assert {"date", "command", "backend", "versions"} <= set(data["metadata"])
    assert len(data["cases"]) == 4  # two lengths x (1/8, causal)
    patterns = {case["pattern"] for case in data["cases"]}
    assert "causal" in patterns and any(p.startswith("local(") for p in patterns)
    for case in data["cases"]:
        check_case(case, 1e-4)  # float32: both are exact softmax attention
    (target,) = data["targets"]
    assert target["measured"] is False and target["passed"] is None  # no L=8192 in --quick
    assert data["all_targets_passed"] is None


def test_bench_attention_gpu_preset_skips_or_runs_on_cpu(tmp_path):
    skipped = run_bench(tmp_path, "--gpu")
    if skipped["metadata"]["backend"] == "gpu":
        assert skipped["cases"]
        return
    assert "needs a GPU" in skipped["skipped"] and skipped["cases"] == []
    # the preset's code path with XLA's dense attention (sliding window by its own arguments)
    data = run_bench(tmp_path, "--gpu", "--implementation", "xla", "--dense-implementation",
                     "xla")
    assert data["config"]["dtype"] == "bfloat16" and data["config"]["window"] == 64
    assert len(data["cases"]) == 2
    for case in data["cases"]:
        check_case(case, 0.1)  # bfloat16 inputs, different summation orders
