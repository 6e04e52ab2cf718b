"""experiments/linalg_study.py on tiny settings: IR statuses and limits, PageRank against fp64,
unite and conquer against each co-method alone, JSON-safe data, the command line."""

import json
import math

import pytest

from dp2ejax import cli
from dp2ejax.config import ConfigError, LinalgConfig, load_config
from experiments import linalg_study

TINY = ["linalg.ir_size=12", "linalg.ir_conditions=[10, 1e4, 1e8]",
        'linalg.ir_formats=["fp64", "fp32", "bf16"]', "linalg.pagerank_nodes=300",
        'linalg.pagerank_pairs=["fp64/fp64", "bf16/fp32"]',
        'linalg.pagerank_cestac=["bf16/fp32"]', "linalg.pagerank_top_k=10",
        "linalg.eigs_size=60", "linalg.eigs_k=3", "linalg.eigs_subspace_sizes=[8, 12]",
        "linalg.eigs_max_restarts=60"]


@pytest.fixture(scope="module")
def config():
    return load_config(None, TINY)


@pytest.fixture(scope="module")
def study(config):
    return linalg_study.run(config)


def test_data_is_json_safe(study):
    assert set(study) == {"ir", "pagerank", "eigs", "seconds"}
    assert json.loads(json.dumps(study, allow_nan=False)) == study
    assert all(value >= 0 for value in study["seconds"].values())


def test_ir_runs_every_format_method_and_condition(study):
    ir = study["ir"]
    assert len(ir["runs"]) == 3 * 2 * 3 and ir["n"] == 12 and ir["tol"] > 0
    runs = {(r["factor_format"], r["method"], r["condition"]): r for r in ir["runs"]}
    for fmt in ("fp64", "fp32"):
        assert runs[fmt, "lu", 10.0]["status"] == "converged"
        assert runs[fmt, "lu", 10.0]["backward_error"] <= ir["tol"]
    assert runs["bf16", "lu", 1e8]["status"] != "converged"  # kappa u_f >> 1
    for r in ir["runs"]:
        assert len(r["backward_errors"]) == r["iterations"] + 1
        assert len(r["gmres_iterations"]) == r["iterations"]
        assert r["gmres_steps"] == sum(r["gmres_iterations"])
        assert r["method"] == "gmres" or r["gmres_steps"] == 0


def test_ir_limits_agree_with_the_statuses(study):
    runs = study["ir"]["runs"]
    limits = study["ir"]["limits"]
    assert [(row["factor_format"], row["method"]) for row in limits] == [
        (f, m) for f in ("fp64", "fp32", "bf16") for m in ("lu", "gmres")]
    for row in limits:
        mine = [r for r in runs if (r["factor_format"], r["method"]) ==
                (row["factor_format"], row["method"])]
        converged = [r["condition"] for r in mine if r["status"] == "converged"]
        assert row["largest_converged"] == max(converged, default=None)
        assert row["first_failure"] == min((r["condition"] for r in mine
                                            if r["status"] != "converged"), default=None)
    lu = {row["factor_format"]: row["largest_converged"] for row in limits
          if row["method"] == "lu"}
    assert lu["fp64"] >= lu["fp32"] >= lu["bf16"] >= 10.0


def test_pagerank_against_fp64(study):
    pr = study["pagerank"]
    assert pr["graph"]["nodes"] == 300 and pr["graph"]["dangling"] > 0
    fp64, bf16 = pr["runs"]
    assert (fp64["storage_format"], fp64["accumulation_format"]) == ("fp64", "fp64")
    assert fp64["kendall_tau_top_k"] == 1 and fp64["top_k_overlap"] == 1
    assert fp64["max_abs_diff_fp64"] == 0 and fp64["status"] == "converged"
    assert -1 <= bf16["kendall_tau_top_k"] <= 1 and 0 <= bf16["top_k_overlap"] <= 1
    assert 0 < bf16["max_abs_diff_fp64"] < 1e-3
    assert fp64["digits_median"] is None  # CESTAC only for linalg.pagerank_cestac
    assert 4 < bf16["digits_median"] < 8  # fp32 arithmetic: about 7 digits at most


def test_eigs_uc_against_each_co_method_alone(study):
    eigs = study["eigs"]
    uc, alone = eigs["uc"], eigs["alone"]
    assert [run["subspace_size"] for run in alone] == [8, 12]
    assert len(uc["history"]) == uc["restarts"] <= 60
    assert len(uc["history_per_method"]) == 2 and len(uc["eigenvalues"]) == 3
    for run in alone:
        assert len(run["history"]) == run["restarts"]
    if uc["converged"]:
        assert uc["history"][-1] <= eigs["tol"] and uc["final_residual"] <= eigs["tol"]
    converged = [run["restarts"] for run in alone if run["converged"]]
    best = eigs["best_alone"]
    assert best == {"index": best["index"], **{k: alone[best["index"]][k] for k in
                                               ("subspace_size", "restarts", "converged")}}
    if converged:
        assert best["converged"] and best["restarts"] == min(converged)


def test_headline(study):
    lines = linalg_study.headline(study)
    assert "LU-IR bf16: largest kappa converged" in lines  # no fp16: the last format
    assert lines["U&C restarts / best single co-method"].startswith(
        f"{study['eigs']['uc']['restarts']} / {study['eigs']['best_alone']['restarts']}")
    assert lines["PageRank lowest Kendall tau (top 10)"].endswith("(bf16/fp32)")


def test_parts_and_config_are_checked():
    with pytest.raises(ValueError, match="parts: expected some of ir, pagerank, eigs"):
        linalg_study.run(None, parts=("svd",))
    with pytest.raises(TypeError, match="config: expected a Config"):
        linalg_study.run({"ir_size": 3})
    with pytest.raises(ConfigError, match=r"linalg.pagerank_cestac\[0\]: 'fp16/fp16' is not "):
        load_config(None, ['linalg.pagerank_pairs=["fp64/fp64"]',
                           'linalg.pagerank_cestac=["fp16/fp16"]'])
    with pytest.raises(ConfigError, match=r"linalg.eigs_subspace_sizes\[1\]: expected a size "
                                          r"above linalg.eigs_k = 5"):
        load_config(None, ["linalg.eigs_subspace_sizes=[12, 4]"])
    assert load_config(None).linalg == LinalgConfig()


def test_ir_part_alone_with_a_linalg_config():
    data = linalg_study.run(LinalgConfig(ir_size=8, ir_conditions=[10.0], ir_formats=["fp16"],
                                         ir_methods=["gmres"]), parts=("ir",))
    assert set(data) == {"ir", "seconds"}
    (run,) = data["ir"]["runs"]
    assert run["status"] == "converged" and not math.isnan(run["backward_error"])


def test_command_line_writes_results_and_report(tmp_path, capsys, study):
    # the same shapes as the fixture: compiled functions are reused
    small = [s for s in TINY if not s.startswith("linalg.pagerank_cestac")]
    argv = ["linalg", "--quiet", "--out", str(tmp_path), "--set", "linalg.pagerank_cestac=[]",
            *sum((["--set", s] for s in small), [])]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "U&C restarts / best single co-method" in out and "report.html" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"summary", "linalg", "config"}
    assert results["config"]["linalg"]["ir_size"] == 12
    page = (tmp_path / "report.html").read_text()
    assert '<section id="linalg">' in page
    for name in ("linalg-ir", "linalg-pagerank-tau", "linalg-eigs-history"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    assert cli.main(["linalg", "--set", 'linalg.ir_methods=["qr"]']) == 2
    assert "error: linalg.ir_methods[0]: expected one of 'lu', 'gmres', got 'qr'" in \
        capsys.readouterr().err
