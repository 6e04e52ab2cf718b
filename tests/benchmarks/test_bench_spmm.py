"""Smoke test: the SpMM benchmark runs (``--quick``) and writes well-formed JSON.

Timings are not asserted (they live in benchmarks/RESULTS.md); the structure, the agreement of
every contender with SciPy (float32 sums of the same products: relative differences ~1e-6) and
the memory analysis are.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTENDERS = {"csr", "csr_segments", "jax_bcsr", "jax_bcoo", "scipy"}


def test_bench_spmm_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_spmm.py"), "--quick", "--out",
         str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["config"]["preset"] == "quick"
    assert {"date", "command", "backend", "versions", "cpu_model"} <= set(data["metadata"])
    assert all(entry["bytes_per_s"] > 0 for entry in data["copy_bandwidth"].values())
    assert [(c["n"], c["k"]) for c in data["cases"]] == [(1024, 16), (1024, 64), (2048, 16),
                                                         (2048, 64)]
    for case in data["cases"]:
        assert set(case["timings"]) == CONTENDERS and not case["skipped"]
        assert set(case["time_over_csr"]) == CONTENDERS - {"csr"}
        assert case["model_bytes"] > case["nnz"] * case["k"] * 4
        for entry in case["timings"].values():
            assert entry["median_s"] > 0 and entry["reps"] >= 3
            assert entry["effective_bytes_per_s"] > 0 and entry["share_of_copy_bandwidth"] > 0
        for name, diff in case["max_rel_diff_vs_scipy"].items():
            assert 0 <= diff < 1e-5, (name, case["n"], case["k"])
    for matrix in data["matrices"]:
        assert 10 < matrix["degree_mean"] < 17 and matrix["bucket_padding"] < 0.25
    memory = data["memory"]
    assert memory["nodes"] == 4096 and memory["layers"] == 16 and not memory["is_target_size"]
    assert 0 < memory["csr"]["peak_bytes_estimate"] < memory["csr_segments"]["peak_bytes_estimate"]
    names = [t["target"] for t in data["targets"]]
    assert len(names) == 3 and "SciPy" in names[0] and "BCSR" in names[1]
    assert data["targets"][2]["measured"] is False  # the memory target needs 2**20 nodes
    assert all(isinstance(t["passed"], bool) for t in data["targets"][:2])
