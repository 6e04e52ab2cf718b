"""``dp2ejax.config``: TOML configs with dotted overrides, validated once with errors that name
the key (unknown, wrong type, impossible value, impossible mesh) or the file."""

import doctest
import pathlib
import re
import tomllib

import jax
import pytest

import dp2ejax.config
from dp2ejax.config import (
    Config,
    ConfigError,
    config_diff,
    describe_schema,
    load_config,
    parse_override,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_docstring_examples():
    result = doctest.testmod(dp2ejax.config,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 7\nlearning_rate = 1\n[mesh]\naxes = {data = -1}\n")
    cfg = load_config(path, ["train.steps=9", "run.name=my_run", "train.policy={default='bf16'}",
                             "graph.signal=2", "mesh.axes.data=8"])
    assert cfg.train.steps == 9 and cfg.run.name == "my_run"
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.graph.signal == 2.0 and cfg.mesh.axes == {"data": 8}
    assert cfg.train.policy == {"default": "bf16"}
    assert cfg.gcn == Config().gcn  # untouched sections keep their defaults
    assert str(cfg.run_dir) == "runs/my_run"


def test_unknown_keys_name_the_dotted_key_and_the_known_ones(tmp_path):
    known = "batch, checkpoint_every, learning_rate, max_to_keep, policy, rounding, seed, steps"
    path = write(tmp_path, "[train]\nstepz = 3\n")
    assert error(path) == (f"unknown key 'train.stepz' (from {path}); did you mean "
                           f"'train.steps'? known keys in [train]: {known}")
    assert error(None, ["train.learning_rat=1"]) == (
        f"unknown key 'train.learning_rat' (from --set); did you mean 'train.learning_rate'? "
        f"known keys in [train]: {known}")
    assert error(write(tmp_path, "[trian]\nsteps = 3\n")) == (
        f"unknown section 'trian' (from {tmp_path / 'c.toml'}); did you mean 'train'? known "
        f"sections: analyze, gcn, graph, linalg, mesh, run, task, train, transformer, tune")
    assert error(write(tmp_path, "steps = 3\n")).startswith("unknown section 'steps'")
    assert error(write(tmp_path, "train = 3\n")).startswith(
        "train: expected a table [train], got 3 (integer)")


@pytest.mark.parametrize("text, message", [
    ('[train]\nsteps = "ten"', "train.steps: expected an integer, got 'ten' (string)"),
    ("[train]\nsteps = true", "train.steps: expected an integer, got True (boolean)"),
    ("[train]\nsteps = 2.5", "train.steps: expected an integer, got 2.5 (float)"),
    ('[train]\nlearning_rate = "fast"',
     "train.learning_rate: expected a number, got 'fast' (string)"),
    ("[gcn]\nresidual = 1", "gcn.residual: expected a boolean, got 1 (integer)"),
    ("[train]\npolicy = 3", "train.policy: expected a string or a table, got 3 (integer)"),
    ("[analyze]\noversmoothing_policies = [\"fp32\", 16]",
     "analyze.oversmoothing_policies[1]: expected a string, got 16 (integer)"),
    ("[analyze]\noversmoothing_policies = \"fp32\"",
     "analyze.oversmoothing_policies: expected an array of strings, got 'fp32' (string)"),
    ('[mesh]\naxes = {data = "all"}', "mesh.axes.data: expected an integer, got 'all' (string)"),
    ("[train]\nlearning_rate = nan", "train.learning_rate: expected a finite number, got nan"),
])
def test_wrong_types_name_key_expected_type_and_value(tmp_path, text, message):
    assert error(write(tmp_path, text)) == message


@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "train.steps: expected an integer >= 1, got -5"),
    ("train.learning_rate=0", "train.learning_rate: expected a number > 0.0, got 0.0"),
    ("graph.homophily=1.5", "graph.homophily: expected a number <= 1.0, got 1.5"),
    ("gcn.dropout=1", "gcn.dropout: expected a number < 1.0, got 1.0"),
    ("train.rounding=up", "train.rounding: expected one of 'nearest', 'stochastic', got 'up'"),
    ("run.experiment=mlp", "run.experiment: expected one of 'gcn', 'sparse_transformer', got "
                           "'mlp'"),
    ("task.seq_len=100", "task.seq_len: expected a multiple of transformer.block_size = 16, "
                         "got 100"),
    ("transformer.num_heads=5", "transformer.num_heads: must divide transformer.width = 32, "
                                "got 5"),
    ("task.num_pairs=20", "task.num_pairs: the keys are distinct, so at most task.vocab_size = "
                          "16, got 20"),
    ("run.name=a/b", "run.name: expected a plain directory name, got 'a/b'"),
    ("graph.train_fraction=0.9", "graph.train_fraction, graph.val_fraction, graph.test_fraction: "
                                 "must sum to at most 1, got 1.3"),
])
def test_impossible_values_are_named(override, message):
    assert error(None, [override]) == message


def test_policy_is_checked_and_rounding_applies_to_format_names():
    assert re.match(r"train\.policy: .*fp7", error(None, ["train.policy=fp7"]))
    assert error(None, ["train.policy={default='bf16'}", "train.rounding=stochastic"]) == (
        "train.rounding: applies only to a format-name policy; with a policy table give the "
        "mode in its rules (mode = 'stochastic')")
    assert error(None, ["train.policy={default='bf16', bogus=1}"]).startswith(
        "train.policy: policy has unknown key(s) ['bogus']")
    assert error(None, ["tune.candidates=['bf16', 'fp99']"]).startswith("tune.candidates: ")
    policy = dp2ejax.config.training_policy(
        load_config(None, ["train.policy=bf16", "train.rounding=stochastic"]))
    assert policy.default.mode == "stochastic" and policy.default.format.name == "bf16"
    assert dp2ejax.config.training_policy(Config()) is None


def test_impossible_mesh_uses_make_mesh_message():
    n = jax.device_count()
    assert error(None, [f"mesh.axes={{data = {n + 1}}}"]) == (
        f"mesh.axes: mesh axes {{'data': {n + 1}}} multiply to {n + 1} but there are {n} "
        f"devices; the sizes must multiply to the device count (or use -1 for one axis)")
    assert error(None, ["mesh.axes={data = 0}"]).startswith("mesh.axes: mesh axis 'data': size")
    assert load_config(None, ["mesh.axes={data = -1}"]).mesh.axes == {"data": -1}


def test_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "nope.toml"
    assert error(missing) == f"config file not found: {missing}"
    assert error(tmp_path) == f"config file is a directory, not a file: {tmp_path}"
    bad = write(tmp_path, "[train\nsteps = 1\n")
    assert error(bad).startswith(f"config file {bad} is not valid TOML: ")
    assert error(None, ["graph.source=file", "graph.path=/no/such/graph.npz"]) == (
        "graph.path: file not found: /no/such/graph.npz")
    assert error(None, ["graph.source=file"]) == (
        "graph.path: required with graph.source = 'file'")


@pytest.mark.parametrize("text, message", [
    ("train.steps", "override 'train.steps': expected key=value, e.g. train.steps=100"),
    ("=3", "override '=3': the key '' must be dotted names, e.g. train.steps=100"),
    ("train..steps=3", "override 'train..steps=3': the key 'train..steps' must be dotted names, "
                       "e.g. train.steps=100"),
    ("train.steps=", "override 'train.steps=': no value after '='; quote an empty string: "
                     "train.steps=\"\""),
    ("train.policy=[1,", "override 'train.policy=[1,': '[1,' is not a valid TOML value"),
])
def test_bad_override_syntax(text, message):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value) == message
    assert error(None, [text]) == message


def test_override_into_a_scalar_is_refused(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 5\n")
    assert error(path, ["train.steps.x=1"]) == (
        "override 'train.steps.x=1': train.steps is 5 (integer), not a table")


def test_override_values_parse_as_toml_literals():
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override('a.b="10"') == (["a", "b"], "10")
    assert parse_override("a.b=bf16") == (["a", "b"], "bf16")
    assert parse_override(" a.b = x = y ") == (["a", "b"], "x = y")


def test_toml_round_trip_replace_and_diff(tmp_path):
    cfg = load_config(None, ["train.policy={default = {format = 'bf16', mode = 'stochastic'}}",
                             "mesh.axes={data = -1}", "gcn.residual=true"])
    path = write(tmp_path, cfg.to_toml())
    assert load_config(path) == cfg
    assert tomllib.loads(cfg.to_toml()) == cfg.to_dict()
    other = cfg.replace(train={"steps": 3}, gcn={"depth": 5})
    assert (other.train.steps, other.gcn.depth, other.gcn.residual) == (3, 5, True)
    assert config_diff(cfg, other) == ["gcn.depth: 2 -> 5", "train.steps: 200 -> 3"]
    assert config_diff(cfg, other, ignore=["gcn.depth"]) == ["train.steps: 200 -> 3"]
    with pytest.raises(ConfigError, match="train.steps: expected an integer >= 1, got 0"):
        cfg.replace(train={"steps": 0})
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        cfg.replace(train={"stepz": 0})


def test_describe_schema_lists_every_key():
    text = describe_schema()
    for section, values in Config().to_dict().items():
        assert f"[{section}]" in text
        for key in values:
            assert f"  {section}.{key} = " in text


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate_and_comment_every_key(path):
    cfg = load_config(path)
    assert cfg.run.experiment in dp2ejax.config.EXPERIMENTS
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}:{number}: key without a comment: {line!r}"


def test_shipped_config_names():
    names = {p.name for p in CONFIGS}
    assert {"gcn.toml", "sparse_transformer.toml", "quickstart.toml"} <= names
    quick = load_config(ROOT / "configs" / "quickstart.toml")
    assert str(quick.run_dir) == "runs/quickstart_gcn"
    assert quick.graph.num_nodes <= 500 and quick.train.steps <= 300
    assert (quick.task.seq_len, quick.transformer.block_size, quick.transformer.width,
            quick.transformer.num_layers) == (128, 16, 32, 2)
