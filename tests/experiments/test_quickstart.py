"""The quickstart (`make run`) runs end to end on a tiny setting and writes the report with every
section and figure."""

import base64
import re

from experiments import quickstart

SECTIONS = ("summary", "training", "cestac", "oversmoothing", "tuning", "attention", "config",
            "versions")
FIGURES = ("training-loss", "training-accuracy", "cestac-0", "oversmoothing-distance",
           "oversmoothing-energy", "tuning", "attention-density")


def test_quickstart_tiny(tmp_path, capsys):
    tiny = ["train.steps=8", "train.checkpoint_every=4", "graph.num_nodes=90",
            "task.seq_len=64", "transformer.num_layers=1"]
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
    # each training run kept its checkpoints and results
    for run in out["runs"]:
        assert (tmp_path / run.split("/")[-1] / "results.json").exists()
