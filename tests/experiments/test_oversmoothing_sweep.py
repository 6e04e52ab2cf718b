"""``experiments/oversmoothing_sweep.py``: a tiny depth x precision sweep runs end to end and
writes ``results.json`` and the report with the oversmoothing section."""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = {
    "graph": {"nodes": 60, "avg_degree": 8.0},
    "sweep": {"depth": 20, "policies": ["fp64", "bf16"], "model": ["linear", "gcn"]},
    "gcn": {"depth": 3, "hidden": 8, "train_steps": 5},
}


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location(
        "oversmoothing_sweep", ROOT / "experiments" / "oversmoothing_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sweep.run(TINY, out)


def test_tiny_sweep_profiles_every_model_and_policy(tiny_run):
    _, results = tiny_run
    profiles = results["oversmoothing"]
    assert [p["model"]["kind"] for p in profiles] == ["linear", "gcn"]
    linear, gcn = profiles
    assert linear["depth"] == 20 and gcn["depth"] == 3 and linear["n_nodes"] == 60
    for profile, layers in ((linear, 21), (gcn, 4)):
        assert list(profile["policies"]) == ["fp64", "bf16"]
        for entry in profile["policies"].values():
            assert len(entry["layers"]["relative_distance"]) == layers
    # fp64 propagation decays at the graph's spectral rate |lambda_2| (Oono & Suzuki).
    rate = linear["spectral_rate"]
    assert 0 < rate < 1
    assert linear["policies"]["fp64"]["layers"]["decay_ratio"][-1] == pytest.approx(rate, abs=0.03)
    rel = np.array(linear["policies"]["fp64"]["layers"]["relative_distance"])
    assert rel[-1] < 0.1 * rel[0]
    assert set(results["training"]) == {"csbm_n60 gcn"}
    assert len(results["training"]["csbm_n60 gcn"]["loss"]) == 5
    assert results["config"]["graph"]["nodes"] == [60]
    assert results["config"]["sweep"]["cestac"] is False  # the defaults filled in


def test_tiny_sweep_writes_results_and_report(tiny_run):
    out, results = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["oversmoothing"][0]["label"] == results["oversmoothing"][0]["label"]
    page = (out / "report.html").read_text()
    for section in ("summary", "training", "oversmoothing", "config", "versions"):
        assert f'<section id="{section}">' in page
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"oversmoothing-0-distance.png", "oversmoothing-1-distance.png",
            "oversmoothing-0-energy.png", "training-loss.png"} <= set(figures)
    assert page.count("<img") == len(figures)
    markdown = (out / "report.md").read_text()
    assert all((out / ref).is_file() for ref in re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown))
    assert json.loads((out / "report.json").read_text())["config"] == saved["config"]


def test_main_reads_a_toml_config(sweep, tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('[graph]\nnodes = [30]\n\n[sweep]\ndepth = 4\npolicies = ["fp32"]\n'
                      'model = "linear"\n')
    results = sweep.main(["--config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert "report.html" in capsys.readouterr().out
    (profile,) = results["oversmoothing"]
    assert list(profile["policies"]) == ["fp32"] and profile["n_nodes"] == 30
    assert len(profile["policies"]["fp32"]["layers"]["relative_distance"]) == 5
    assert (tmp_path / "run" / "figures" / "oversmoothing-distance.png").is_file()


def test_profile_options_come_from_the_config(sweep):
    config = sweep.load_config({"sweep": {"cestac": True, "cestac_samples": 4,
                                          "policies": "bf16", "floor_window": 6}})
    kwargs = sweep._profile_kwargs(config["sweep"], seed=3, components=2)
    assert kwargs == {"policies": ("bf16",), "cestac": True, "cestac_samples": 4, "seed": 3,
                      "eigenspace_dim": 2, "floor_window": 6}


@pytest.mark.parametrize("overrides, message", [
    ({"sweep": {"dpeth": 3}}, r"unknown key sweep\.dpeth; known in \[sweep\]: depth"),
    ({"grpah": {}}, r"unknown section \[grpah\]; known: graph, sweep, gcn"),
    ({"sweep": {"policies": ["fp32", "fp7"]}}, r"sweep\.policies: .*fp7"),
    ({"sweep": {"model": "mlp"}}, r"sweep\.model = 'mlp' is not one of linear, gcn"),
    ({"sweep": {"depth": 0}}, r"sweep\.depth must be an int >= 1"),
    ({"graph": {"homophily": 1.5}}, r"graph\.homophily must be a number in \[0, 1\]"),
    ({"gcn": {"activation": "gelu"}}, r"gcn\.activation"),
])
def test_config_errors_name_the_key(sweep, overrides, message):
    with pytest.raises(ValueError, match=message):
        sweep.load_config(overrides)


def test_main_exits_with_the_config_error(sweep, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[sweep]\ndpeth = 3\n")
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--config", str(config), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "sweep.dpeth" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
