"""``write_report``: three files, every section and figure present, self-contained, atomic.

The results are synthetic (in the formats each section documents), so these tests run no JAX
computation; ``tests/experiments/test_oversmoothing_sweep.py`` reports real profiles.
"""

import base64
import dataclasses
import json
import os
import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dp2ejax.report import SECTIONS, attention_cases, to_jsonable, write_report
from dp2ejax.report.figures import PNG_SIGNATURE

# Figures each section draws from RESULTS below.
FIGURES = {
    "training": {"training-loss", "training-accuracy"},
    "cestac": {"cestac-0-gcn"},
    "oversmoothing": {"oversmoothing-distance", "oversmoothing-energy", "oversmoothing-digits"},
    "tuning": {"tuning-accuracy-cost"},
    "attention": {"attention-density"},
    "linalg": {"linalg-ir"},
}
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">')


def oversmoothing_dict(depth=30, policies=("fp64", "bf16"), digits=True):
    """A dict shaped like ``OversmoothingProfile.to_dict()``."""
    layers = np.arange(depth + 1)
    out = {}
    for p, name in enumerate(policies):
        eps = 2.0**-52 if name == "fp64" else 2.0**-7
        rel = np.maximum(0.8**layers, eps / 2)
        entry = {
            "format_epsilon": eps, "collapse_depth": 5 + p, "floor": None if p == 0 else eps / 2,
            "floor_depth": None if p == 0 else 22, "floor_over_epsilon": None if p == 0 else 0.5,
            "no_digits_depth": None,
            "layers": {
                "dirichlet_energy": list(10 * rel**2), "mad": list(rel),
                "eigenspace_distance": list(3 * rel), "relative_distance": list(rel),
                "decay_ratio": list(rel[1:] / rel[:-1]), "feature_norm": [3.0] * (depth + 1),
                "effective_rank": [2.0] * (depth + 1), "numerical_rank": [2] * (depth + 1),
            },
        }
        if digits:
            entry["layers"]["digits_median"] = [15.0 - p * 12] * (depth + 1)
            entry["layers"]["residual_digits_median"] = list(np.maximum(15 - layers / 2, 0))
        out[name] = entry
    return {"source": "linear", "depth": depth, "n_nodes": 40, "n_features": 4,
            "eigenspace_dim": 1, "spectral_rate": 0.8, "collapse_threshold": 1e-3,
            "floor_window": 10, "policies": out}


def bench_case(seq_len, density, sparse_s, dense_s=None):
    phase = {"timings": {"block_sparse": {"median_s": sparse_s, "reps": 3}}}
    if dense_s is None:
        phase["dense_skipped"] = "dense not run: estimated peak too large"
    else:
        phase["timings"]["dense"] = {"median_s": dense_s, "reps": 3}
        phase["dense_over_sparse"] = dense_s / sparse_s
    return {"seq_len": seq_len, "block_density": density, "pattern": "causal",
            "forward": phase, "forward_backward": phase}


STEPS = np.arange(40)
RESULTS = {
    "summary": {"accuracy": np.float32(0.91), "cost": 0.42, "policy": "tuned",
                "graph": {"nodes": 40}},
    "training": {
        "fp32": {"step": STEPS, "loss": np.exp(-STEPS / 8) + 0.1,
                 "train_accuracy": 1 - 0.5 * np.exp(-STEPS / 8),
                 "val_accuracy": 1 - 0.6 * np.exp(-STEPS / 9)},
        "bf16": {"step": list(STEPS), "loss": jnp.exp(-jnp.arange(40.0) / 9) + 0.12,
                 "policy": "bf16"},
    },
    "cestac": {"gcn": [{"layer": f"layer_{i}", "format": f, "digits_min": 5.0 - i + o,
                        "digits_median": 7.0 - i / 2 + o}
                       for f, o in (("fp32", 4.0), ("bf16", 0.0)) for i in range(3)]},
    "oversmoothing": oversmoothing_dict(),
    "tuning": {
        "policy": {"default": {"format": "fp32", "mode": "nearest", "accumulation": "exact"},
                   "rules": []},
        "table": [{"layer": "layer_0", "role": "matmul_inputs", "format": "bf16",
                   "sensitivity": 1e-3, "cost_share": 0.3, "extra": [1, 2]}],
        "baselines": [{"name": "uniform fp32", "error": 1e-7, "cost": 1.0},
                      {"name": "uniform bf16", "error": 1e-2, "cost": 0.5}],
        "tuned": {"error": 1e-3, "cost": 0.45}, "criterion": "relative error <= 1e-3",
        "evaluations": 12, "feasible": True,
    },
    "attention": [bench_case(2048, 0.0625, 0.01, 0.08), bench_case(2048, 0.5, 0.08, 0.08),
                  bench_case(4096, 0.125, 0.05, None)],
    "linalg": {"ir": {"tol": 1e-15, "runs": [  # tests/report/test_linalg_section.py: the rest
        {"factor_format": "fp16", "method": method, "condition": cond, "status": status,
         "iterations": 3, "backward_error": eta}
        for method, cond, status, eta in (("lu", 10.0, "converged", 1e-16),
                                          ("lu", 1e5, "stagnated", 1e-6),
                                          ("gmres", 10.0, "converged", 1e-16),
                                          ("gmres", 1e5, "converged", 2e-16))]}},
    "config": {"graph": {"nodes": 40, "seed": 0}, "sweep": {"policies": ["fp64", "bf16"]}},
    "versions": {"python": "3.11", "jax": "0.10", "date": "2025-01-01"},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    paths = write_report(run_dir, RESULTS, title="Test <report>")
    return run_dir, paths


def test_writes_the_three_files_and_the_figures(report):
    run_dir, paths = report
    assert paths["html"] == run_dir / "report.html"
    assert paths["markdown"] == run_dir / "report.md"
    assert paths["json"] == run_dir / "report.json"
    assert paths["figures"] == run_dir / "figures"
    expected = set().union(*FIGURES.values())
    assert {p.stem for p in paths["figures"].iterdir()} == expected
    for png in paths["figures"].iterdir():
        assert png.suffix == ".png" and png.read_bytes().startswith(PNG_SIGNATURE)


def test_html_has_every_section_in_order_and_escapes_text(report):
    page = report[1]["html"].read_text()
    positions = [page.index(f'<section id="{name}">') for name in SECTIONS]
    assert positions == sorted(positions)
    assert "<title>Test &lt;report&gt;</title>" in page
    for name in SECTIONS:
        assert f'href="#{name}"' in page


def test_html_embeds_one_decodable_png_per_figure(report):
    page = report[1]["html"].read_text()
    images = IMG.findall(page)
    assert page.count("<img") == len(images) == len(set().union(*FIGURES.values()))
    for data, alt in images:
        assert base64.b64decode(data, validate=True).startswith(PNG_SIGNATURE)
        assert len(alt) > 10
    for section, names in FIGURES.items():
        body = page[page.index(f'<section id="{section}">'):]
        body = body[:body.index("</section>")]
        assert {f'id="figure-{name}"' for name in names} <= set(re.findall(r'id="[^"]+"', body))


def test_html_is_self_contained(report):
    page = report[1]["html"].read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert all(src.startswith("data:image/png;base64,")
               for src in re.findall(r'src="([^"]*)"', page))
    assert "<style>" in page


def test_markdown_references_existing_pngs(report):
    run_dir, paths = report
    text = paths["markdown"].read_text()
    refs = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert len(refs) == len(set().union(*FIGURES.values()))
    for ref in refs:
        assert not os.path.isabs(ref) and (run_dir / ref).is_file()
    assert {run_dir / ref for ref in refs} == set(paths["figures"].iterdir())
    for name, (title, _) in SECTIONS.items():
        assert f'<a id="{name}"></a>' in text and f"## {title}" in text
    assert "| uniform fp32 | 1 | 1e-07 |" in text  # the tuning comparison table


def test_json_round_trips_and_gives_the_same_report(report, tmp_path):
    run_dir, paths = report
    data = json.loads(paths["json"].read_text())
    assert data == to_jsonable(RESULTS)
    again = write_report(tmp_path, data, title="Test <report>")
    assert again["html"].read_text() == paths["html"].read_text()  # deterministic figures
    assert again["markdown"].read_text() == paths["markdown"].read_text()


def test_figures_ignore_the_users_matplotlib_style(report, tmp_path):
    import matplotlib

    with matplotlib.rc_context({"lines.linewidth": 7.0, "axes.facecolor": "black"}):
        paths = write_report(tmp_path, {"training": RESULTS["training"],
                                        "versions": RESULTS["versions"]})
        assert matplotlib.rcParams["lines.linewidth"] == 7.0
    assert (paths["figures"] / "training-loss.png").read_bytes() == \
        (report[1]["figures"] / "training-loss.png").read_bytes()


def test_versions_are_filled_when_absent(tmp_path):
    paths = write_report(tmp_path, {"summary": {"x": 1}})
    versions = json.loads(paths["json"].read_text())["versions"]
    for key in ("python", "jax", "jaxlib", "flax", "optax", "numpy", "dp2ejax", "platform",
                "date"):
        assert versions[key], key
    page = paths["html"].read_text()
    assert '<section id="versions">' in page and '<section id="training">' not in page
    assert page.count("<img") == 0


def test_unknown_section_raises_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown section.*'trainig'.*known: summary, training"):
        write_report(tmp_path, {"trainig": {}})
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("section, data, message", [
    ("training", [1, 2], r"results\['training'\]: expected a dict"),
    ("training", {"run": [1.0]}, r"results\['training'\]\['run'\]"),
    ("cestac", {"m": {"layer": "a"}}, r"results\['cestac'\]\['m'\]"),
    ("oversmoothing", {"depth": 3}, r"'policies' dict"),
    ("attention", 3, r"results\['attention'\]: expected a list"),
    ("summary", None, r"results\['summary'\]"),
])
def test_a_section_of_the_wrong_shape_raises(tmp_path, section, data, message):
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path, {section: data, "versions": {}})


def test_missing_optional_fields_are_skipped(tmp_path):
    minimal = oversmoothing_dict(depth=12, digits=False)
    for entry in minimal["policies"].values():
        for key in ("floor", "floor_depth", "collapse_depth", "no_digits_depth"):
            del entry[key]
        entry["layers"] = {"eigenspace_distance": entry["layers"]["eigenspace_distance"]}
    del minimal["spectral_rate"]
    results = {
        "summary": {},
        "training": {"a": {"loss": [1.0, None, 0.5]}, "b": {"note": "no series"}},
        "cestac": {"m": [{"layer": "l0", "format": "bf16"}, {"layer": "l1"}]},
        "oversmoothing": [minimal, {"policies": {"fp32": {}}}],
        "tuning": {"baselines": [{"name": "uniform fp32"}], "table": [{"format": "bf16"}],
                   "feasible": False, "reason": "no policy meets the criterion"},
        "attention": [{"seq_len": 512, "density": 0.25, "sparse_ms": 1.0},
                      bench_case(1024, 0.5, 0.002, None)],
        "linalg": {"pagerank": {"runs": []}},
        "config": {"a": None},
        "versions": {},
    }
    paths = write_report(tmp_path, results)
    page = paths["html"].read_text()
    for name in results:
        assert f'<section id="{name}">' in page
    names = {p.stem for p in paths["figures"].iterdir()}
    assert names == {"training-loss", "oversmoothing-0-distance", "attention-density"}
    assert "no policy meets the criterion" in page
    assert json.loads(paths["json"].read_text())["config"] == {"a": None}


def test_writes_are_atomic(tmp_path, monkeypatch):
    paths = write_report(tmp_path, RESULTS)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    before = paths["html"].read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, {"summary": {"x": 1}})
    assert paths["html"].read_text() == before  # the old report, whole
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_to_jsonable_converts_arrays_and_names_what_it_cannot():
    @dataclasses.dataclass
    class Point:
        x: float
        tags: tuple

    value = {"a": np.arange(3, dtype=np.int16), "b": jnp.array([1.5, jnp.inf]),
             "c": np.array([0.5], ml_dtypes.bfloat16), "d": Point(np.float64(np.nan), (1, "u")),
             1: {np.bool_(True)}}
    assert to_jsonable(value) == {"a": [0, 1, 2], "b": [1.5, None], "c": [0.5],
                                  "d": {"x": None, "tags": [1, "u"]}, "1": [True]}
    with pytest.raises(ValueError, match=r"results\['run'\]\['f'\]: a builtin_function"):
        to_jsonable({"run": {"f": print}})


def test_attention_cases_read_the_benchmark_and_the_short_form():
    rows = attention_cases({"cases": [bench_case(2048, 0.125, 0.01, 0.05)]})
    assert [(r["phase"], r["sparse_ms"], r["dense_ms"]) for r in rows] == [
        ("forward", 10.0, 50.0), ("forward_backward", 10.0, 50.0)]
    assert rows[0]["speedup"] == pytest.approx(5.0)
    short = attention_cases([{"seq_len": 8, "density": 0.5, "sparse_ms": 2.0, "dense_ms": 3.0}])
    assert short[0]["speedup"] == pytest.approx(1.5) and short[0]["phase"] == "forward"


def test_tuning_section_reads_the_autotuners_own_result_dict(tmp_path):
    tuning = {"value": 0.004, "cost_model": "bits", "costs": {"bits": {"total": 2.0e5}},
              "feasible": True, "evaluations": 12,
              "baselines": [{"format": "fp32", "value": 1e-7, "meets": True,
                             "costs": {"bits": {"total": 6.0e5}}},
                            {"format": "bf16", "value": 0.02, "meets": False,
                             "costs": {"bits": {"total": 3.0e5}}}]}
    html = write_report(tmp_path, {"tuning": tuning})["html"].read_text()
    assert 'id="figure-tuning-accuracy-cost"' in html
    assert "uniform fp32" in html and "uniform bf16" in html and "tuned" in html
