"""experiments/autotune_layers.py trains a tiny GCN run and tunes it: policy files and the
tuning section land in the run."""

import json

from dp2ejax import PrecisionPolicy
from experiments import autotune_layers


def test_autotune_layers_tiny_gcn(tmp_path):
    results = autotune_layers.run(
        autotune_layers.ROOT / "configs" / "quickstart.toml", experiment="gcn",
        overrides=[f"run.out_dir={str(tmp_path)!r}", "train.steps=5", "graph.num_nodes=60",
                   "tune.candidates=['fp32', 'bf16']"])
    run_dir = tmp_path / "quickstart_gcn"
    tuning = results["tuning"]
    assert tuning["evaluations"] >= 1 and tuning["feasible"] in (True, False)
    policy = PrecisionPolicy.from_json((run_dir / "policy.json").read_text())
    assert {f.name for f in policy.formats()} <= {"fp32", "bf16"}
    assert json.loads((run_dir / "results.json").read_text())["tuning"]["evaluations"] == \
        tuning["evaluations"]
