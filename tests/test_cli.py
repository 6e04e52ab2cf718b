"""The ``dp2ejax`` command: every subcommand's ``--help`` explains every option; ``train`` runs
a config with overrides (and resumes); bad configs exit with status 2 and a message naming the
key; ``analyze``, ``tune``, ``report`` and ``bench`` work on a run or fail clearly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dp2ejax import cli
from dp2ejax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# configs/gcn.toml made tiny (it trains under bf16 with stochastic rounding); the same graph
# and model as tests/experiments/test_train_gcn.py, so one session compiles the step once
TINY = ["graph.num_nodes=60", "graph.feature_dim=4", "graph.num_classes=3", "graph.avg_degree=8.0",
        "gcn.hidden=8", "gcn.depth=1", "gcn.dropout=0.0", "gcn.residual=false",
        "train.learning_rate=0.02"]


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def run_main(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def subparsers():
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return parser, action.choices


@pytest.mark.parametrize("command", ["train", "analyze", "tune", "report", "bench"])
def test_help_mentions_every_option(command, capsys):
    _, commands = subparsers()
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: dp2ejax {command}")
    for action in commands[command]._actions:
        for option in action.option_strings:
            assert option in text
        if not action.option_strings:
            assert (action.metavar or action.dest) in text
        assert action.help, f"{command} {action.dest} has no help text"
    if command == "train":  # every config key is explained
        for section, values in load_config(None).to_dict().items():
            for key in values:
                assert f"{section}.{key} = " in text


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "analyze", "tune", "report", "bench"):
        assert command in text
    with pytest.raises(SystemExit) as info:
        cli.main([])  # a command is required
    assert info.value.code == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``dp2ejax train`` of configs/gcn.toml, tiny, stopped after 3 steps and resumed."""
    out_dir = tmp_path_factory.mktemp("runs")
    argv = ["train", "--experiment", "gcn", "--config", str(ROOT / "configs" / "gcn.toml"),
            *sets(*TINY, "train.steps=5"), "--out-dir", str(out_dir), "--name", "cli", "--quiet"]
    first = cli.main([*argv, "--stop-after", "3"])
    second = cli.main(argv)
    return out_dir / "cli", first, second


def test_train_runs_a_config_with_overrides_and_resumes(trained):
    run_dir, first, second = trained
    assert first == second == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["summary"]["steps"] == 5 and results["summary"]["policy"] == "bf16"
    cfg = load_config(run_dir / "config.toml")
    assert (cfg.train.steps, cfg.train.rounding, cfg.gcn.hidden, cfg.run.name) == (
        5, "stochastic", 8, "cli")
    assert results["training"]["cli"]["step"] == [1, 2, 3, 4, 5]


def test_train_prints_the_run_and_its_summary(trained, capsys):
    run_dir, _, _ = trained
    argv = ["train", "--config", str(run_dir / "config.toml"), "--out-dir", str(run_dir.parent),
            "--quiet"]
    status, out, _ = run_main(argv, capsys)  # finished: the results, without training
    assert status == 0
    assert out.startswith(f"run: {run_dir}\n") and "  test_accuracy: " in out


@pytest.mark.parametrize("argv, message", [
    (sets("train.stepz=3"), "error: unknown key 'train.stepz' (from --set); did you mean "
                            "'train.steps'? known keys in [train]: batch, checkpoint_every, "
                            "learning_rate, max_to_keep, policy, rounding, seed, steps\n"),
    (sets("train.steps=ten"), "error: train.steps: expected an integer, got 'ten' (string)\n"),
    (sets("train.steps"), "error: override 'train.steps': expected key=value, e.g. "
                          "train.steps=100\n"),
    (["--config", "/no/such.toml"], "error: config file not found: /no/such.toml\n"),
    (sets("mesh.axes={data = 3, model = 5}"),
     "error: mesh.axes: mesh axes {'data': 3, 'model': 5} multiply to 15 but there are "),
])
def test_bad_configs_exit_2_naming_the_key(tmp_path, argv, message, capsys):
    status, out, err = run_main(["train", "--out-dir", str(tmp_path), *argv], capsys)
    assert status == 2 and out == ""
    assert err.startswith(message)
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_changed_config_exits_2(trained, capsys):
    run_dir, _, _ = trained
    argv = ["train", "--config", str(run_dir / "config.toml"), "--out-dir", str(run_dir.parent),
            *sets("train.steps=6"), "--quiet"]
    status, _, err = run_main(argv, capsys)
    assert status == 2
    assert err == (f"error: run {run_dir} was started with another config (train.steps: 5 -> 6); "
                   f"pick another run name (--name / run.name) or pass --overwrite to discard "
                   f"it\n")


@pytest.mark.parametrize("command", ["analyze", "tune", "report"])
def test_run_commands_need_an_existing_run(command, tmp_path, capsys):
    status, _, err = run_main([command], capsys)
    assert (status, err) == (2, "error: which run? give --name NAME (and --out-dir) or --run "
                                "RUN_DIR\n")
    status, _, err = run_main([command, "--name", "ghost", "--out-dir", str(tmp_path)], capsys)
    assert status == 2 and err.startswith(f"error: no run at {tmp_path / 'ghost'}")
    status, _, err = run_main([command, "--name", "a", "--run", str(tmp_path)], capsys)
    assert (status, err) == (2, "error: give either --run or --name, not both\n")


@pytest.mark.parametrize("command, key", [("analyze", "train.steps=1"),
                                          ("tune", "analyze.cestac=false")])
def test_run_commands_change_only_their_section(command, key, trained, capsys):
    run_dir, _, _ = trained
    status, _, err = run_main([command, "--run", str(run_dir), *sets(key)], capsys)
    section = command
    assert (status, err) == (2, f"error: --set {key}: only {section}.* keys can be changed here "
                                f"(the others describe the trained run)\n")


def test_unfinished_run_cannot_be_reported(tmp_path, capsys):
    argv = ["train", "--config", str(ROOT / "configs" / "gcn.toml"), *sets(*TINY),
            "--out-dir", str(tmp_path), "--name", "half", "--stop-after", "0", "--quiet"]
    assert run_main(argv, capsys)[0] == 0
    status, _, err = run_main(["report", "--run", str(tmp_path / "half")], capsys)
    assert status == 1 and err.startswith(f"error: {tmp_path / 'half' / 'results.json'} is "
                                          f"missing: the run has not finished training")


def test_report_renders_the_run(trained, capsys):
    pytest.importorskip("dp2ejax.report")  # written beside this command; may be absent
    run_dir, _, _ = trained
    status, out, _ = run_main(["report", "--run", str(run_dir)], capsys)
    assert status == 0 and out == f"{run_dir / 'report.html'}\n"
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()


def test_report_without_the_report_module(trained, capsys, monkeypatch):
    run_dir, _, _ = trained
    monkeypatch.setitem(sys.modules, "dp2ejax.report", None)  # import fails
    status, _, err = run_main(["report", "--run", str(run_dir)], capsys)
    assert status == 1 and err.startswith("error: the report module is not available")


def test_analyze_writes_cestac_digits(trained, capsys):
    run_dir, _, _ = trained
    status, out, _ = run_main(["analyze", "--run", str(run_dir), "--no-report",
                               *sets("analyze.oversmoothing=false",
                                     "analyze.cestac_format=fp16")], capsys)
    assert status == 0 and "CESTAC digits per layer (fp16, 3 samples):" in out
    rows = json.loads((run_dir / "results.json").read_text())["cestac"]["cli"]
    assert {row["layer"] for row in rows} == {"input", "layer_0", "output", "(output)"}
    for row in rows:
        assert row["format"] == "fp16" and 0 <= row["digits_min"] <= row["digits_median"] <= 6


def test_tune_writes_a_policy(trained, capsys):
    pytest.importorskip("dp2ejax.tune")  # the autotuner is written beside this command
    run_dir, _, _ = trained
    status, out, _ = run_main(["tune", "--run", str(run_dir), "--no-report",
                               *sets("tune.candidates=['fp32', 'bf16']", "tune.criterion=0.05",
                                     "tune.report_costs=['bits']")],
                              capsys)
    assert status == 0 and out.rstrip().endswith(f"policy: {run_dir / 'policy.toml'}")
    from dp2ejax import PrecisionPolicy

    policy = PrecisionPolicy.from_toml((run_dir / "policy.toml").read_text())
    assert policy == PrecisionPolicy.from_json((run_dir / "policy.json").read_text())
    assert "tuning" in json.loads((run_dir / "results.json").read_text())


def test_bench_runs_a_script_with_quick(monkeypatch, capsys):
    calls = []

    def fake_run(command, cwd):
        calls.append((command, cwd))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    status, out, _ = run_main(["bench", "--list"], capsys)
    assert status == 0 and "arith" in out.split()
    assert run_main(["bench", "arith", "--quick", "--", "--reps", "2"], capsys)[0] == 0
    assert calls == [([sys.executable, str(ROOT / "benchmarks" / "bench_arith.py"), "--quick",
                       "--reps", "2"], ROOT)]
    status, _, err = run_main(["bench", "nope"], capsys)
    assert status == 2 and err.startswith("error: unknown benchmark 'nope'; known: ")
    assert run_main(["bench"], capsys)[0] == 2
