"""The quickstart (`make run`) runs end to end on a tiny setting and writes the report with every
section and figure."""

import base64
import re

from experiments import quickstart

SECTIONS = ("summary", "training", "cestac", "oversmoothing", "tuning", "attention", "linalg",
            "config", "versions")
FIGURES = ("training-loss", "training-accuracy", "cestac-0", "oversmoothing-distance",
           "oversmoothing-energy", "tuning", "attention-density", "linalg-ir",
           "linalg-pagerank-tau", "linalg-eigs-history")
# the linear-algebra study at its smallest (tests/experiments/test_linalg_study.py checks it)
TINY_LINALG = ["linalg.ir_size=8", "linalg.ir_conditions=[10, 1e6]", 'linalg.ir_formats=["fp16"]',
               "linalg.pagerank_nodes=200", 'linalg.pagerank_pairs=["fp64/fp64"]',
               "linalg.pagerank_cestac=[]", "linalg.eigs_size=40", "linalg.eigs_k=2",
               "linalg.eigs_subspace_sizes=[6]", "linalg.eigs_max_restarts=30"]


def test_quickstart_tiny(tmp_path, capsys):
    tiny = ["train.steps=8", "train.checkpoint_every=4", "graph.num_nodes=90",
            "task.seq_len=64", "transformer.num_layers=1", *TINY_LINALG]
    out = quickstart.run(overrides=tiny, out_dir=tmp_path, attention_seq_len=512)
    report = out["report"]
    assert report == tmp_path / "quickstart" / "report.html" and report.exists()
    for name in ("report.md", "report.json"):
        assert (report.parent / name).stat().st_size > 0
    html = report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}"' in html, section
    figures = re.findall(r'<figure id="figure-([^"]+)"', html)
    for prefix in FIGURES:
        assert any(f.startswith(prefix) for f in figures), (prefix, figures)
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html  # self-contained
    summary = out["results"]["summary"]
    assert summary["tuned policy feasible"] in (True, False)
    assert summary["attention speed-up at the lowest density"] > 0
    assert "GMRES-IR fp16: largest kappa converged" in summary
    assert "U&C restarts / best single co-method" in summary
    assert out["results"]["config"]["linalg"]["ir_size"] == 8
    # each training run kept its checkpoints and results
    for run in out["runs"]:
        assert (tmp_path / run.split("/")[-1] / "results.json").exists()
