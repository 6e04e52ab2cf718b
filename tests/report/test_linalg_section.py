"""The report's mixed-precision linear-algebra section, from a synthetic study dict (in the format
``experiments/linalg_study.py`` writes): figures, table rows, missing parts, named errors.

``tests/experiments/test_linalg_study.py`` reports a real (tiny) study."""

import copy
import re

import pytest

from dp2ejax.report import SECTIONS, build_sections, write_report
from dp2ejax.report.figures import PNG_SIGNATURE, Image
from dp2ejax.report.sections import Paragraph, Table, ir_convergence_limits

CONDITIONS = (1e1, 1e3, 1e5)
# (format, method) -> status per condition: fp16 LU-IR stops at 1e3, bf16 fails to factor at 1e5
STATUSES = {
    ("fp32", "lu"): ("converged", "converged", "converged"),
    ("fp32", "gmres"): ("converged", "converged", "converged"),
    ("fp16", "lu"): ("converged", "converged", "stagnated"),
    ("fp16", "gmres"): ("converged", "converged", "converged"),
    ("bf16", "lu"): ("converged", "max_iter", "factorization_failed"),
}


def ir_dict():
    runs = []
    for (fmt, method), statuses in STATUSES.items():
        for cond, status in zip(CONDITIONS, statuses, strict=True):
            failed = status == "factorization_failed"
            eta = None if failed else (1e-16 if status == "converged" else 1e-5)
            steps = 0 if failed else 4
            runs.append({"factor_format": fmt, "method": method, "condition": cond,
                         "status": status, "iterations": steps, "backward_error": eta,
                         "backward_errors": [] if failed else [1e-3] * steps + [eta],
                         "gmres_iterations": [3] * steps if method == "gmres" else [0] * steps,
                         "gmres_steps": 3 * steps if method == "gmres" else 0})
    return {"n": 16, "seed": 0, "working_format": "fp64", "tol": 4.4e-16,
            "gmres_max_iter": 10, "conditions": list(CONDITIONS), "runs": runs,
            "limits": ir_convergence_limits(runs)}


PAIRS = (("fp64", "fp64", 1.0), ("bf16", "fp32", 0.98), ("fp8_e4m3", "fp32", 0.9))


def pagerank_dict():
    runs = [{"storage_format": s, "accumulation_format": a, "status": "converged",
             "iterations": 40 + i, "kendall_tau_top_k": tau, "top_k_overlap": 1.0,
             "max_abs_diff_fp64": 0.0 if i == 0 else 10.0**-(6 - i),
             "digits_median": 2.5 if s == "bf16" else None}
            for i, (s, a, tau) in enumerate(PAIRS)]
    return {"graph": {"name": "directed_er_n300", "nodes": 300, "edges": 900, "dangling": 15},
            "alpha": 0.85, "tol": 1e-12, "top_k": 10, "runs": runs}


def eigs_dict():
    def history(restarts, rate):
        return [0.5 * rate**i for i in range(restarts)]

    return {"matrix": "random_diagonal", "n": 60, "k": 3, "tol": 1e-10,
            "subspace_sizes": [8, 12],
            "uc": {"restarts": 9, "converged": True, "final_residual": 5e-11, "best_method": 1,
                   "dropped": [{"method": 0, "subspace_size": 8, "reason": "stalled"}],
                   "history": history(9, 0.05), "history_per_method": [[None] * 9] * 2},
            "alone": [{"subspace_size": 8, "restarts": 60, "converged": False,
                       "final_residual": 0.1, "history": history(60, 0.99)},
                      {"subspace_size": 12, "restarts": 14, "converged": True,
                       "final_residual": 8e-11, "history": history(14, 0.15)}],
            "best_alone": {"index": 1, "subspace_size": 12, "restarts": 14, "converged": True}}


STUDY = {"ir": ir_dict(), "pagerank": pagerank_dict(), "eigs": eigs_dict(),
         "seconds": {"ir": 1.5, "pagerank": 4.0, "eigs": 3.0}}
FIGURES = ["linalg-ir", "linalg-pagerank-tau", "linalg-eigs-history"]


def linalg_blocks(data):
    (section,) = build_sections({"linalg": data})
    assert section.id == "linalg" and section.title == SECTIONS["linalg"][0]
    return section


def tables(section):
    return [block for block in section.blocks if isinstance(block, Table)]


def test_registered_after_attention_and_before_config():
    names = list(SECTIONS)
    assert names.index("attention") + 1 == names.index("linalg") == names.index("config") - 1
    assert SECTIONS["linalg"][0] == "Mixed-precision linear algebra"


def test_draws_the_three_figures_deterministically():
    section = linalg_blocks(STUDY)
    assert [image.name for image in section.images] == FIGURES
    for image in section.images:
        assert isinstance(image, Image) and image.png.startswith(PNG_SIGNATURE)
        assert len(image.alt) > 20
    again = linalg_blocks(copy.deepcopy(STUDY))
    assert [i.png for i in again.images] == [i.png for i in section.images]


def test_tables_have_a_row_per_format_method_pair_and_run():
    limits, statuses, pagerank, eigs = tables(linalg_blocks(STUDY))
    assert limits.headers[:4] == ("factors", "method", "largest κ converged",
                                  "first κ not converged")
    assert [row[:4] for row in limits.rows] == [
        ("fp32", "LU-IR", "1e+05", "–"), ("fp32", "GMRES-IR", "1e+05", "–"),
        ("fp16", "LU-IR", "1e+03", "1e+05"), ("fp16", "GMRES-IR", "1e+05", "–"),
        ("bf16", "LU-IR", "10", "1e+03")]
    assert limits.rows[3][5] == "12"  # GMRES steps at the limit
    assert statuses.headers == ("factors", "method", "κ = 10", "κ = 1e+03", "κ = 1e+05")
    assert statuses.rows[4] == ("bf16", "LU-IR", "4 steps", "max_iter", "factorization_failed")
    assert [row[:2] for row in pagerank.rows] == [(s, a) for s, a, _ in PAIRS]
    assert [row[4] for row in pagerank.rows] == ["1", "0.98", "0.9"]
    assert pagerank.rows[1][7] == "2.5" and pagerank.rows[0][7] == "–"  # CESTAC digits
    assert [row[0] for row in eigs.rows] == ["unite and conquer", "m = 8 alone", "m = 12 alone"]
    assert [row[2] for row in eigs.rows] == ["9", "60", "14"]
    assert eigs.rows[2][5] == "best single co-method"


def test_paragraphs_compare_uc_with_the_best_co_method_and_give_the_time():
    text = " ".join(b.text for b in linalg_blocks(STUDY).blocks if isinstance(b, Paragraph))
    assert "Unite and conquer: 9 restarts; best single co-method (m = 12): 14 restarts" in text
    assert "m = 8 (stalled)" in text
    assert "300 nodes, 900 edges, 15 dangling" in text
    assert "Computed in 8.5 s (ir 1.5 s, pagerank 4.0 s, eigs 3.0 s)" in text


def test_convergence_limits_agree_with_the_statuses():
    runs = STUDY["ir"]["runs"]
    for limit in ir_convergence_limits(runs):
        mine = [r for r in runs if (r["factor_format"], r["method"]) ==
                (limit["factor_format"], limit["method"])]
        converged = [r["condition"] for r in mine if r["status"] == "converged"]
        others = [r["condition"] for r in mine if r["status"] != "converged"]
        assert limit["largest_converged"] == max(converged, default=None)
        assert limit["first_failure"] == min(others, default=None)


@pytest.mark.parametrize("parts, figures", [
    (("ir",), ["linalg-ir"]),
    (("pagerank",), ["linalg-pagerank-tau"]),
    (("eigs",), ["linalg-eigs-history"]),
    (("ir", "eigs"), ["linalg-ir", "linalg-eigs-history"]),
])
def test_each_part_alone(parts, figures):
    section = linalg_blocks({part: STUDY[part] for part in parts})
    assert [image.name for image in section.images] == figures


def test_missing_optional_fields_are_skipped():
    assert linalg_blocks({}).blocks == (Paragraph("No linear-algebra results."),)
    ir = {"runs": [{"factor_format": "bf16", "method": "lu", "condition": 10.0,
                    "status": "factorization_failed"}]}  # no error to plot, no limits given
    section = linalg_blocks({"ir": ir, "pagerank": {"runs": []},
                             "eigs": {"alone": [{"subspace_size": 8, "restarts": 3}]}})
    assert section.images == ()
    limits, _, eigs = tables(section)
    assert limits.rows == (("bf16", "LU-IR", "none", "10", "–", "–"),)
    assert eigs.rows == (("m = 8 alone", "8", "3", "–", "–", "–"),)


@pytest.mark.parametrize("data, message", [
    ([1], r"results\['linalg'\]: expected a dict"),
    ({"ir": [1]}, r"results\['linalg'\]\['ir'\]: expected a dict"),
    ({"ir": {"runs": {}}}, r"results\['linalg'\]\['ir'\]\['runs'\]: expected a list"),
    ({"ir": {"runs": [3]}}, r"results\['linalg'\]\['ir'\]\['runs'\]\[0\]: expected a dict"),
    ({"ir": {"runs": [{"method": "lu", "condition": 10}]}},
     r"\['ir'\]\['runs'\]\[0\]: missing 'factor_format'"),
    ({"ir": {"runs": [{"factor_format": "fp16", "method": "lu", "condition": "big"}]}},
     r"\['ir'\]\['runs'\]\[0\]: 'condition' must be a positive number"),
    ({"pagerank": {"runs": [{"storage_format": "bf16"}]}},
     r"results\['linalg'\]\['pagerank'\]\['runs'\]\[0\]: missing 'accumulation_format'"),
    ({"eigs": {"alone": [1]}}, r"results\['linalg'\]\['eigs'\]\['alone'\]\[0\]"),
    ({"eigs": {"uc": [1, 2]}}, r"results\['linalg'\]\['eigs'\]\['uc'\]: expected a dict"),
])
def test_input_of_the_wrong_shape_raises_naming_the_part(data, message):
    with pytest.raises(ValueError, match=message):
        build_sections({"linalg": data})


def test_html_and_markdown_hold_the_section_in_place(tmp_path):
    results = {"attention": [{"seq_len": 512, "density": 0.25, "sparse_ms": 1.0}],
               "linalg": STUDY, "config": {"linalg": {"ir_size": 16}}}
    paths = write_report(tmp_path, results)
    page = paths["html"].read_text()
    positions = [page.index(f'<section id="{name}">') for name in ("attention", "linalg",
                                                                     "config")]
    assert positions == sorted(positions)
    body = page[positions[1]:positions[2]]
    assert set(re.findall(r'<figure id="figure-([^"]+)"', body)) == set(FIGURES)
    assert "Mixed-precision linear algebra" in body and "best single co-method" in body
    markdown = paths["markdown"].read_text()
    assert "| fp16 | LU-IR | 1e+03 | 1e+05 |" in markdown
    assert {p.stem for p in paths["figures"].iterdir()} == {"attention-density", *FIGURES}
