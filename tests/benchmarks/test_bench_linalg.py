"""Smoke test: the linear-algebra benchmark runs (``--quick``) and writes well-formed JSON.

Timings are not asserted beyond their sign (they live in benchmarks/RESULTS.md). What cannot be
timing noise is: IR with fp32 factors and fp64 working precision converges to a backward error
below 1e-14 (its tol is sqrt(n) u = 7e-16 at n = 40), as does the fp64 solve; PageRank in fp64
is the SciPy power iteration (the same sums in another order: ~1e-17 apart, 1e-10 asked) in the
same number of iterations; Lanczos svds in fp64 gives SciPy's singular values to 1e-8 (full
reorthogonalisation, 2k + 30 steps on a 200-column matrix); every eigs run that reports
convergence (relative residuals <= 1e-10) agrees with ARPACK's eigenvalues to 1e-8.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
IR_STATUSES = {"converged", "stagnated", "diverged", "max_iter", "factorization_failed"}


def test_bench_linalg_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_linalg.py"), "--quick", "--out",
         str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["config"]["preset"] == "quick"
    assert {"date", "command", "backend", "versions", "cpu_model"} <= set(data["metadata"])
    assert {"ir", "pagerank", "svds", "eigs", "targets"} <= set(data)

    # iterative refinement
    config = data["config"]
    factorizations = sorted({r["factorization"] for r in data["ir"]})
    assert "emulated" in factorizations
    assert set(factorizations) | set(data["ir_factorizations_skipped"]) == {"emulated",
                                                                           "blocked"}
    assert len(data["ir"]) == (len(factorizations) * len(config["factor_formats"])
                               * len(config["ir_methods"]) * len(config["conds"]))
    for row in data["ir"]:
        assert row["status"] in IR_STATUSES
        assert row["median_s"] > 0 and row["fp64_solve"]["median_s"] > 0
        assert row["fp64_solve"]["backward_error"] < 1e-14
        assert row["time_over_fp64_solve"] > 0
        if row["status"] == "converged":
            assert row["backward_error"] <= row["tol"]
        if row["factor_format"] == "fp32":
            assert row["status"] == "converged" and row["backward_error"] < 1e-14, row
            assert row["forward_error"] < 1e-10
        if row["method"] == "lu":
            assert row["gmres_steps_total"] == 0

    # PageRank
    pagerank = data["pagerank"]
    assert pagerank["graph"]["nodes"] == 3000 and pagerank["graph"]["dangling_share"] > 0
    assert pagerank["scipy"]["converged"] is True
    runs = {(r["storage_format"], r["accumulation_format"]): r for r in pagerank["runs"]}
    fp64 = runs.pop(("fp64", "fp64"))
    assert fp64["status"] == "converged" and fp64["max_abs_diff_vs_scipy"] < 1e-10
    assert abs(fp64["iterations"] - pagerank["scipy"]["iterations"]) <= 1
    assert fp64["kendall_tau_top_k_vs_fp64"] is None
    assert runs and all(-1 <= r["kendall_tau_top_k_vs_fp64"] <= 1 for r in runs.values())
    assert all(0 <= r["top_k_overlap_vs_fp64"] <= 1 for r in runs.values())

    # svds
    assert [case["matrix"] for case in data["svds"]] == ["sparse", "dense"]
    for case in data["svds"]:
        assert len(case["scipy"]["singular_values"]) == case["k"]
        for run in case["runs"]:
            assert run["median_s"] > 0 and run["max_rel_error_vs_scipy"] >= 0
            if run["format"] == "fp64" and run["method"] == "lanczos":
                assert run["max_rel_error_vs_scipy"] < 1e-8, (case["matrix"], run)

    # eigs
    assert [case["matrix"] for case in data["eigs"]] == ["random_plus_diagonal",
                                                         "convection_diffusion"]
    for case in data["eigs"]:
        assert case["arpack"]["matvecs"] > 0
        assert case["arpack"]["max_rel_distance_vs_reference"] < 1e-8
        labels = {r["run"] for r in case["runs"]}
        assert "unite_and_conquer" in labels and any(x.startswith("alone_m") for x in labels)
        converged = [r for r in case["runs"] if r["converged"]]
        assert converged, case["matrix"]
        for run in converged:
            assert run["max_rel_distance_vs_reference"] < 1e-8, (case["matrix"], run)
        for run in case["runs"]:
            assert run["restarts"] >= 1 and run["median_s"] > 0

    # the GPU target is not measured on a CPU run
    (target,) = data["targets"]
    assert "2x faster" in target["target"] and target["measured"] is False
    assert target["met"] is None and "--gpu" in target["note"]
