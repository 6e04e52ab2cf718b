"""``experiments/train_gcn.py``: a run killed midway (``stop_after``, and a real SIGKILL) and
resumed reaches bit for bit the parameters of an uninterrupted run under a bf16
stochastic-rounding policy; changed configs refuse to resume; bad configs leave no run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `experiments` is a top-level package of the checkout
    sys.path.insert(0, str(ROOT))

from dp2ejax.config import ConfigError, load_config  # noqa: E402
from experiments import CHECKPOINT_DIR, read_metrics, restore_final, train_gcn  # noqa: E402

# tiny, and under bf16 with stochastic rounding: the per-step rounding keys must resume too.
# (No dropout: emulating the dropout's random floats triples the step's compile time.)
TINY = ["run.experiment=gcn", "graph.num_nodes=60", "graph.feature_dim=4", "gcn.hidden=8",
        "gcn.depth=1", "gcn.dropout=0.0", "train.steps=12", "train.checkpoint_every=5",
        "train.policy=bf16", "train.rounding=stochastic", "train.learning_rate=0.02"]


def config(tmp_path, name, *more):
    return load_config(None, [*TINY, f"run.out_dir={json.dumps(str(tmp_path))}",
                              f"run.name={name}", *more])


def final_params(cfg):
    return restore_final(cfg, train_gcn.build(cfg))["params"]


def assert_same_leaves(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcn")
    cfg = config(tmp, "whole")
    return cfg, train_gcn.run(cfg)


def test_uninterrupted_run_writes_its_files(uninterrupted):
    cfg, results = uninterrupted
    run_dir = cfg.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        CHECKPOINT_DIR, "config.toml", "metrics.jsonl", "results.json"]
    assert load_config(run_dir / "config.toml") == cfg
    assert json.loads((run_dir / "results.json").read_text()) == results
    history = results["training"]["whole"]
    assert history["step"] == list(range(1, 13))
    assert set(history) == {"step", "loss", "train_accuracy", "val_accuracy"}
    summary = results["summary"]
    assert summary["steps"] == 12 and summary["resumed_from"] == 0
    assert summary["policy"] == "bf16" and 0 <= summary["test_accuracy"] <= 1
    assert history["loss"][-1] < history["loss"][0]
    assert results["config"] == cfg.to_dict() and "jax" in results["versions"]


def test_kill_and_resume_reaches_the_same_parameters(tmp_path, uninterrupted):
    whole_cfg, whole = uninterrupted
    cfg = config(tmp_path, "killed")
    stopped = train_gcn.run(cfg, stop_after=7)  # a kill after step 7: checkpoint 5 is the last
    assert stopped == {"stopped_at": 7, "run_dir": str(cfg.run_dir)}
    assert not (cfg.run_dir / "results.json").exists()
    assert [row["step"] for row in read_metrics(cfg.run_dir)] == list(range(1, 8))
    resumed = train_gcn.run(cfg)
    assert resumed["summary"]["resumed_from"] == 5
    # steps 6 and 7 were logged before the kill and recomputed: each step is logged once
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 13))
    assert resumed["training"]["killed"] == whole["training"]["whole"]
    for key in ("final_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
        assert resumed["summary"][key] == whole["summary"][key]
    assert_same_leaves(final_params(cfg), final_params(whole_cfg))


def test_resume_ignores_an_incomplete_checkpoint(tmp_path, uninterrupted):
    """A kill during a save leaves Orbax's temporary directory, which is never trusted."""
    whole_cfg, whole = uninterrupted
    cfg = config(tmp_path, "torn")
    train_gcn.run(cfg, stop_after=6)
    torn = cfg.run_dir / CHECKPOINT_DIR / "10.orbax-checkpoint-tmp-1234"
    torn.mkdir()
    (torn / "garbage").write_bytes(b"\0" * 10)
    with (cfg.run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "loss": 0.')  # a line cut by the kill
    resumed = train_gcn.run(cfg)
    assert resumed["summary"]["resumed_from"] == 5
    assert resumed["training"]["torn"] == whole["training"]["whole"]
    assert_same_leaves(final_params(cfg), final_params(whole_cfg))


def test_finished_run_returns_its_results_without_training(uninterrupted):
    cfg, results = uninterrupted
    mtime = (cfg.run_dir / "results.json").stat().st_mtime_ns
    assert train_gcn.run(cfg) == results
    assert (cfg.run_dir / "results.json").stat().st_mtime_ns == mtime


def test_changed_config_refuses_to_resume(tmp_path):
    cfg = config(tmp_path, "changed")
    train_gcn.run(cfg, stop_after=3)
    # (a change that keeps the compiled step: the test stays fast)
    changed = config(tmp_path, "changed", "train.steps=20", "train.checkpoint_every=4")
    before = sorted(p.name for p in cfg.run_dir.rglob("*"))
    with pytest.raises(ConfigError) as info:
        train_gcn.run(changed)
    assert str(info.value) == (
        f"run {cfg.run_dir} was started with another config (train.checkpoint_every: 5 -> 4; "
        f"train.steps: 12 -> 20); pick another run name (--name / run.name) or pass "
        f"--overwrite to discard it")
    assert sorted(p.name for p in cfg.run_dir.rglob("*")) == before  # nothing touched
    # --overwrite starts afresh with the new config
    fresh = train_gcn.run(changed, overwrite=True, stop_after=2)
    assert fresh["stopped_at"] == 2
    assert load_config(cfg.run_dir / "config.toml") == changed
    assert [row["step"] for row in read_metrics(cfg.run_dir)] == [1, 2]


def test_linalg_study_keys_do_not_stop_a_resume(tmp_path):
    # [linalg] configures the linear-algebra study, which trains nothing
    cfg = config(tmp_path, "linalg")
    train_gcn.run(cfg, stop_after=5)  # a checkpoint every 5 steps
    resumed = train_gcn.run(config(tmp_path, "linalg", "linalg.ir_size=48"))
    assert resumed["summary"]["resumed_from"] == 5


def test_bad_configs_fail_before_creating_the_run(tmp_path):
    # passes the schema but not the generator: p_in would exceed 1
    cfg = config(tmp_path, "impossible", "graph.num_nodes=12", "graph.avg_degree=30.0")
    with pytest.raises(ConfigError, match=r"^graph: avg_degree, homophily: avg_degree=30.0"):
        train_gcn.run(cfg)
    assert not cfg.run_dir.exists()
    with pytest.raises(ConfigError, match="graph.path: file not found: /no/graph.npz"):
        train_gcn.run(None, overrides=[*TINY, "graph.source=file", "graph.path=/no/graph.npz"])
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists but is not a run directory"):
        train_gcn.run(config(tmp_path, "stranger"), overwrite=True)
    assert (tmp_path / "stranger" / "notes.txt").read_text() == "mine"


def test_loaded_graph_file(tmp_path):
    from dp2ejax.graph import Graph, contextual_sbm, save_graph

    graph = contextual_sbm(40, 2, feature_dim=3, signal=2.0, seed=1, avg_degree=4,
                           homophily=0.9)
    save_graph(graph, tmp_path / "g.npz")
    cfg = config(tmp_path, "loaded", "graph.source=file",
                 f"graph.path={json.dumps(str(tmp_path / 'g.npz'))}")
    loaded, masks = train_gcn.load_graph_data(cfg)
    assert (loaded.num_nodes, loaded.num_classes) == (40, 2)
    np.testing.assert_array_equal(loaded.features, graph.features)
    assert int(np.asarray(masks.train).sum()) == 24
    save_graph(Graph(adjacency=graph.adjacency), tmp_path / "u.npz")
    with pytest.raises(ConfigError, match="u.npz has no node labels"):
        train_gcn.run(config(tmp_path, "unlabeled", "graph.source=file",
                             f"graph.path={json.dumps(str(tmp_path / 'u.npz'))}"))
    assert not (tmp_path / "unlabeled").exists()
    bad = tmp_path / "bad.mtx"
    bad.write_text("not a matrix market file\n")
    with pytest.raises(ConfigError, match="graph.path: cannot load .*bad.mtx"):
        train_gcn.run(config(tmp_path, "bad", "graph.source=file",
                             f"graph.path={json.dumps(str(bad))}"))


@pytest.mark.slow  # ~15-30 s on 2 cores: a fresh process compiles the step again
def test_real_kill_by_signal_then_resume(tmp_path):
    """A training process killed by SIGKILL once it has a checkpoint resumes to the same
    parameters as an uninterrupted run (the same compiled step: the spec is unchanged)."""
    steps = ["train.steps=600", "train.checkpoint_every=50"]
    cfg = config(tmp_path, "sigkill", *steps)
    (tmp_path / "sigkill.toml").write_text(cfg.to_toml())
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "train_gcn.py"), "--config",
         str(tmp_path / "sigkill.toml"), "--quiet"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    checkpoints = cfg.run_dir / CHECKPOINT_DIR
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no checkpoint before the process ended or timed out: "
                        f"{process.stderr.read().decode()[-2000:] if process.poll() else ''}")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (cfg.run_dir / "results.json").exists()
    resumed = train_gcn.run(cfg)
    assert resumed["summary"]["resumed_from"] >= 50
    reference_cfg = config(tmp_path, "reference", *steps)
    reference = train_gcn.run(reference_cfg)
    assert resumed["training"]["sigkill"] == reference["training"]["reference"]
    assert_same_leaves(final_params(cfg), final_params(reference_cfg))


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, uninterrupted):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for quiet, terminal, shown in ((False, True, True), (True, True, False),
                                   (False, False, False)):
        stream = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        name = f"bar_{quiet}_{terminal}"
        train_gcn.run(config(tmp_path, name), quiet=quiet, stop_after=3)
        text = stream.getvalue()
        assert (f"gcn {name}:" in text and "3/12" in text) == shown, text
