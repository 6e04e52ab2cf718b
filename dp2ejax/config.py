"""Typed run configurations: frozen dataclasses per TOML section, dotted command-line overrides,
and validation once, at the edge, with errors that name the key.

A config file has the sections of :class:`Config` (``[run]``, ``[graph]``, ``[gcn]``,
``[task]``, ``[transformer]``, ``[train]``, ``[mesh]``, ``[analyze]``, ``[tune]``, ``[linalg]``); every key is
optional and defaults to the field's default. :func:`load_config` reads the file, applies
overrides such as ``"train.steps=10"`` (values parsed as TOML literals, bare words as strings),
and builds the dataclasses, raising :class:`ConfigError` (a ``ValueError``) that names the full
dotted key on an unknown section or key, a wrong type, or an impossible value.

Example:
  >>> cfg = load_config(None, overrides=["train.steps=10", "run.name=demo"])
  >>> cfg.train.steps, cfg.run.name
  (10, 'demo')
  >>> load_config(None, overrides=["train.stepz=10"])
  Traceback (most recent call last):
  ...
  dp2ejax.config.ConfigError: unknown key 'train.stepz' (from --set); did you mean 'train.steps'? known keys in [train]: batch, checkpoint_every, learning_rate, max_to_keep, policy, rounding, seed, steps
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EXPERIMENTS",
    "AnalyzeConfig",
    "Config",
    "ConfigError",
    "GCNConfig",
    "GraphConfig",
    "LinalgConfig",
    "MeshConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "TransformerConfig",
    "TuneConfig",
    "apply_overrides",
    "config_diff",
    "describe_schema",
    "format_pair",
    "load_config",
    "parse_override",
    "training_policy",
]

EXPERIMENTS: tuple[str, ...] = ("gcn", "sparse_transformer")
COST_MODELS: tuple[str, ...] = ("bits", "energy", "measured")
IR_METHODS: tuple[str, ...] = ("lu", "gmres")
EIGS_MATRICES: tuple[str, ...] = ("random_diagonal", "banded", "directed_sbm")


class ConfigError(ValueError):
    """A config that cannot run: unknown key, wrong type, impossible value, missing file. The
    message names the dotted key (``train.steps``) or the file."""


def _field(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with its help text and checks (``min``, ``max``, ``choices``,
    ``min_exclusive``) in the metadata; :func:`describe_schema` and the CLI read the help."""
    if isinstance(default, dict | list):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value),
                                 metadata={"help": help, **checks})
    return dataclasses.field(default=default, metadata={"help": help, **checks})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """``[run]``: which experiment, and where its run directory is (``out_dir/name``)."""

    name: str = _field("{experiment}", "run name; the run directory is out_dir/name, with "
                                        "{experiment} replaced by run.experiment")
    out_dir: str = _field("runs", "directory holding the run directories")
    experiment: str = _field("gcn", "what `dp2ejax train` runs", choices=EXPERIMENTS)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """``[graph]``: the node-classification data of the ``gcn`` experiment."""

    source: str = _field("csbm", "'csbm' (a contextual SBM; signal = 0 gives a plain SBM) or "
                                 "'file' (load graph.path)", choices=("csbm", "file"))
    path: str = _field("", "graph file for source = 'file' (.npz with labels, .mtx, edge list)")
    num_nodes: int = _field(400, "nodes of the generated graph", min=2)
    num_classes: int = _field(3, "classes (blocks) of the generated graph", min=2)
    feature_dim: int = _field(16, "feature dimension (random features for a file without them)",
                              min=1)
    signal: float = _field(1.0, "distance between class means, in noise standard deviations",
                           min=0.0)
    avg_degree: float = _field(8.0, "expected degree of the generated graph", min=0.0)
    homophily: float = _field(0.8, "expected fraction of a node's edges inside its class",
                              min=0.0, max=1.0)
    normalization: str = _field("gcn", "propagation matrix: normalised adjacency kind",
                                choices=("gcn", "sym", "random_walk"))
    train_fraction: float = _field(0.6, "fraction of each class's nodes used for training",
                                   min_exclusive=0.0, max=1.0)
    val_fraction: float = _field(0.2, "fraction of nodes for validation", min=0.0, max=1.0)
    test_fraction: float = _field(0.2, "fraction of nodes for testing", min=0.0, max=1.0)
    seed: int = _field(0, "seed of the generated graph, its features and the split", min=0)


@dataclasses.dataclass(frozen=True)
class GCNConfig:
    """``[gcn]``: the GCN model (:class:`dp2ejax.graph.GCN`)."""

    hidden: int = _field(32, "width of every hidden layer", min=1)
    depth: int = _field(2, "number of graph convolutions", min=0)
    residual: bool = _field(False, "skip connections around each convolution")
    norm: str = _field("none", "normalisation after each convolution",
                       choices=("none", "pairnorm", "layernorm"))
    dropout: float = _field(0.0, "dropout rate before each convolution", min=0.0,
                            max_exclusive=1.0)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """``[task]``: the synthetic long-range task of the ``sparse_transformer`` experiment,
    generated on the fly from (seed, step)."""

    kind: str = _field("associative_recall",
                       "'associative_recall' (key-value pairs first, queries last: predict "
                       "each query key's value) or 'copy' (reproduce the first tokens after a "
                       "separator at the end)", choices=("associative_recall", "copy"))
    seq_len: int = _field(128, "tokens per sequence (a multiple of transformer.block_size)",
                          min=8)
    vocab_size: int = _field(16, "content tokens (keys, values, copied symbols); filler tokens "
                                 "use another vocab_size ids", min=2)
    num_pairs: int = _field(8, "associative_recall: key-value pairs at the start "
                               "(at most vocab_size)", min=1)
    num_queries: int = _field(4, "associative_recall: query keys at the end", min=1)
    copy_length: int = _field(8, "copy: tokens to copy", min=1)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """``[transformer]``: the block-sparse transformer (causal local window + global prefix)."""

    width: int = _field(32, "features of the residual stream", min=1)
    num_heads: int = _field(4, "attention heads (must divide width)", min=1)
    num_layers: int = _field(2, "transformer blocks", min=1)
    block_size: int = _field(16, "attention block size (divides task.seq_len)", min=1)
    window: int = _field(16, "causal sliding window: each token sees this many keys up to "
                             "itself", min=1)
    mlp_ratio: float = _field(2.0, "MLP hidden width over width", min_exclusive=0.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the optimisation (Optax Adam) and its precision policy."""

    steps: int = _field(200, "optimisation steps", min=1)
    learning_rate: float = _field(0.01, "Adam's learning rate", min_exclusive=0.0)
    seed: int = _field(0, "seed of initialisation, dropout, data order and rounding", min=0)
    batch: int = _field(16, "sequences per step (sparse_transformer; the GCN is full-batch)",
                        min=1)
    checkpoint_every: int = _field(50, "save a checkpoint every this many steps (and at the "
                                       "end)", min=1)
    max_to_keep: int = _field(3, "checkpoints kept", min=1)
    policy: str | dict = _field("none", "precision policy of the forward pass: 'none', a "
                                        "format name ('bf16', 'fp8_e4m3', …) or an inline "
                                        "policy table (PrecisionPolicy.from_dict)")
    rounding: str = _field("nearest", "rounding mode for a format-name policy; 'stochastic' "
                                      "draws a per-step key from (seed, step)",
                           choices=("nearest", "stochastic"))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """``[mesh]``: the device mesh; empty axes run on one device."""

    axes: dict[str, int] = _field({}, "mesh axis sizes, e.g. {data = -1}; they must multiply "
                                      "to the device count (one may be -1)")


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """``[analyze]``: what `dp2ejax analyze` computes for a trained run."""

    cestac: bool = _field(True, "CESTAC exact digits of every layer's output")
    cestac_format: str = _field("bf16", "format of the CESTAC random rounding")
    cestac_samples: int = _field(3, "CESTAC samples", min=2)
    oversmoothing: bool = _field(True, "oversmoothing profile of the trained GCN (gcn only)")
    oversmoothing_policies: list[str] = _field(["fp64", "fp32", "bf16"],
                                               "formats of the oversmoothing profile")
    eval_batch: int = _field(2, "sequences analysed (sparse_transformer)", min=1)


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``[tune]``: what `dp2ejax tune` searches (dp2ejax.tune.autotune)."""

    candidates: list[str] = _field(["fp32", "bf16", "fp16", "fp8_e4m3"],
                                   "formats each layer may take")
    criterion: float = _field(0.01, "largest relative error of the output allowed",
                              min_exclusive=0.0)
    cost_model: str = _field("bits", "cost model of the autotuner")
    search: str = _field("delta", "search strategy of the autotuner")
    seed: int = _field(0, "seed of the search", min=0)
    report_costs: list[str] = _field(["bits", "energy", "measured"],
                                     "cost models reported side by side ('measured' times the "
                                     "emulated programs: slower)")
    calibration_batch: int = _field(4, "calibration sequences (sparse_transformer)", min=1)


@dataclasses.dataclass(frozen=True)
class LinalgConfig:
    """``[linalg]``: the mixed-precision linear-algebra study of the quickstart
    (``experiments/linalg_study.py``): iterative refinement against the condition number,
    PageRank per format pair, unite-and-conquer restarts against single co-methods."""

    seed: int = _field(0, "seed of the IR test matrices, the PageRank graph and the eigenproblem",
                       min=0)
    ir_size: int = _field(32, "order n of the IR test matrices (matrix_with_condition)", min=2)
    ir_conditions: list[float] = _field([1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8],
                                        "2-norm condition numbers of the IR test matrices")
    ir_formats: list[str] = _field(["fp32", "fp16", "bf16"],
                                   "formats of the LU factors (working and residual: fp64)")
    ir_methods: list[str] = _field(["lu", "gmres"],
                                   "refinement methods: 'lu' (LU-IR) and/or 'gmres' (GMRES-IR)")
    ir_gmres_steps: int = _field(10, "most GMRES steps per refinement step (at ir_size, GMRES "
                                     "is a direct solver and converges at every kappa)", min=1)
    pagerank_nodes: int = _field(2000, "nodes of PageRank's directed Erdos-Renyi graph", min=3)
    pagerank_degree: float = _field(3.0, "its expected out-degree (a share exp(-degree) of the "
                                         "nodes is dangling)", min_exclusive=0.0)
    pagerank_pairs: list[str] = _field(
        ["fp64/fp64", "fp32/fp32", "bf16/fp32", "fp16/fp16", "bf16/bf16", "fp8_e4m3/fp32"],
        "'storage/accumulation' format pairs of PageRank, compared with fp64/fp64")
    pagerank_cestac: list[str] = _field(["bf16/bf16"], "pairs (among pagerank_pairs) whose "
                                                       "CESTAC digits are computed (each "
                                                       "compiles for about 5 s)")
    pagerank_top_k: int = _field(20, "Kendall tau and overlap with fp64 on the top k nodes",
                                 min=1)
    eigs_matrix: str = _field("random_diagonal", "non-symmetric sparse test matrix of the "
                                                  "unite-and-conquer eigensolver",
                              choices=EIGS_MATRICES)
    eigs_size: int = _field(200, "its order", min=20)
    eigs_k: int = _field(5, "wanted eigenvalues (largest modulus)", min=1)
    eigs_subspace_sizes: list[int] = _field([12, 18, 24], "subspace size of each co-method "
                                                          "(each above eigs_k)")
    eigs_max_restarts: int = _field(150, "most Arnoldi cycles of each run", min=1)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run's configuration: one frozen dataclass per TOML section.

    Example:
      >>> cfg = Config()
      >>> cfg.train.policy, cfg.mesh.axes
      ('none', {})
      >>> load_config(None, overrides=[]) == cfg
      True
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)
    gcn: GCNConfig = dataclasses.field(default_factory=GCNConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    analyze: AnalyzeConfig = dataclasses.field(default_factory=AnalyzeConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)
    linalg: LinalgConfig = dataclasses.field(default_factory=LinalgConfig)

    @property
    def run_dir(self) -> Path:
        """``out_dir/name`` (``{experiment}`` in the name replaced): where the run writes its
        config, metrics, checkpoints and results.

        Example:
          >>> str(Config().run_dir), str(Config().replace(run={"name": "a_{experiment}"}).run_dir)
          ('runs/gcn', 'runs/a_gcn')
        """
        return Path(self.run.out_dir) / self.run.name.replace("{experiment}", self.run.experiment)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (lists for list fields), as TOML/JSON hold them."""
        return _plain(dataclasses.asdict(self))

    def to_toml(self) -> str:
        """The resolved config as TOML; :func:`load_config` reads it back equal.

        Example:
          >>> import tempfile, pathlib
          >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
          >>> cfg = load_config(None, ["train.policy={default = 'bf16'}", "mesh.axes={data=-1}"])
          >>> _ = path.write_text(cfg.to_toml())
          >>> load_config(path) == cfg
          True
        """
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys changed, validated: ``cfg.replace(train={"steps": 5})``."""
        data = self.to_dict()
        for section, values in sections.items():
            if section not in data:
                _unknown(section, data, "", "replace()")
            data[section] = {**data[section], **values}
        return from_dict(data, source="replace()")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = (), *,
                schema: type = Config) -> Any:
    """Reads a TOML config, applies dotted overrides, validates, and returns ``schema``.

    Args:
      path: the TOML file, or None for the schema's defaults.
      overrides: ``"section.key=value"`` strings; the value is a TOML literal (``10``,
        ``1e-3``, ``true``, ``"text"``, ``[1, 2]``, ``{data = 4}``), or else taken as a string
        (``run.name=demo``). A deeper key sets inside a table field (``mesh.axes.data=2``).
      schema: the config dataclass (default :class:`Config`); any frozen dataclass whose
        fields are dataclass sections works.

    Returns:
      The validated ``schema`` instance.

    Raises:
      ConfigError: naming the file (missing, not TOML), the override (no ``=``), or the dotted
        key (unknown, wrong type, impossible value, impossible mesh).

    Example:
      >>> load_config(None, ["train.learning_rate=3e-3", "train.policy=bf16"]).train.policy
      'bf16'
      >>> load_config(None, ["train.steps=-1"])
      Traceback (most recent call last):
      ...
      dp2ejax.config.ConfigError: train.steps: expected an integer >= 1, got -1
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "not found"
            raise ConfigError(f"config file {what}: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from None
    # the file's keys are checked before the overrides, so each error names its origin
    _check_keys(data, schema, "", source)
    data = apply_overrides(data, overrides)
    _check_keys(data, schema, "", "--set")
    return from_dict(data, schema=schema, source=source)


def from_dict(data: Mapping[str, Any], *, schema: type = Config, source: str = "dict") -> Any:
    """Builds and validates ``schema`` from nested dicts (as TOML loads them)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config from {source}: expected a table, got {type(data).__name__}")
    _check_keys(data, schema, "", source)
    config = _build(schema, data, "")
    if schema is Config:
        _check_config(config)
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], parsed value)``.

    Example:
      >>> parse_override("train.steps=10"), parse_override("run.name=my run")
      ((['train', 'steps'], 10), (['run', 'name'], 'my run'))
      >>> parse_override("train.steps")
      Traceback (most recent call last):
      ...
      dp2ejax.config.ConfigError: override 'train.steps': expected key=value, e.g. train.steps=100
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() or not _is_bare_key(p) for p in parts):
        raise ConfigError(f"override {text!r}: the key {key!r} must be dotted names, e.g. "
                          f"train.steps=100")
    raw = raw.strip()
    if not raw:
        raise ConfigError(f"override {text!r}: no value after '='; quote an empty string: "
                          f"{key}=\"\"")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        if raw[0] in "[{\"'":
            raise ConfigError(f"override {text!r}: {raw!r} is not a valid TOML value") from None
        value = raw  # a bare word: a string
    return parts, value


def _is_bare_key(part: str) -> bool:
    return all(c.isalnum() or c in "_-" for c in part)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``"section.key=value"`` override set (not validated).

    Example:
      >>> apply_overrides({"train": {"steps": 5}}, ["train.steps=7", "mesh.axes.data=2"])
      {'train': {'steps': 7}, 'mesh': {'axes': {'data': 2}}}
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = _copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i + 1])} is "
                                  f"{_show(child)}, not a table")
            node = child
        node[parts[-1]] = value
    return out


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


# --- validation ----------------------------------------------------------------------------------


def _sections(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _unknown(key: str, known: Iterable[str], prefix: str, source: str) -> None:
    known = sorted(known)
    full = prefix + key
    guess = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{prefix}{guess[0]}'? " if guess else ""
    if prefix:
        raise ConfigError(f"unknown key '{full}' (from {source}); {hint}known keys in "
                          f"[{prefix[:-1]}]: {', '.join(known)}")
    raise ConfigError(f"unknown section '{full}' (from {source}); {hint}known sections: "
                      f"{', '.join(known)}")


def _check_keys(data: Mapping[str, Any], schema: type, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(schema)
    fields = _sections(schema)
    for key, value in data.items():
        if key not in fields:
            _unknown(key, fields, prefix, source)
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key}: expected a table [{prefix}{key}], got "
                                  f"{_show(value)} (from {source})")
            _check_keys(value, kind, f"{prefix}{key}.", source)


def _build(schema: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(schema)
    values = {}
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, data.get(f.name, {}), key + ".")
            continue
        if f.name not in data:
            continue  # the default
        value = _coerce(data[f.name], kind, key)
        _check_value(value, f.metadata, key)
        values[f.name] = value
    return schema(**values)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table",
            list: "array"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    return f"{value!r} ({_type_name(value)})"


_NOUNS = {int: "integer", float: "number", bool: "boolean", str: "string",
          dict: "table", list: "array"}


def _noun(kind: Any) -> str:
    """``int`` -> ``"integer"``, ``list[str]`` -> ``"array of strings"``."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_noun(k) for k in typing.get_args(kind))
    if origin is list:
        return f"array of {_noun(typing.get_args(kind)[0])}s"
    if origin is dict:
        return f"table of {_noun(typing.get_args(kind)[1])}s"
    return _NOUNS[kind]


def _expected(kind: Any) -> str:
    """``int`` -> ``"an integer"``, ``str | dict`` -> ``"a string or a table"``."""
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        return " or ".join(_expected(k) for k in typing.get_args(kind))
    noun = _noun(kind)
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """``value`` as ``kind`` (ints accepted for floats), or a ConfigError naming ``key``."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(kind):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_expected(kind)}, got {_show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_expected(kind)}, got {_show(value)}")
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {_expected(kind)}, got {_show(value)}")
        _, item = typing.get_args(kind)
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is dict:
        if isinstance(value, Mapping):
            return _copy(dict(value))
    elif isinstance(value, kind):
        return value
    raise ConfigError(f"{key}: expected {_expected(kind)}, got {_show(value)}")


def _check_value(value: Any, meta: Mapping[str, Any], key: str) -> None:
    what = "an integer" if isinstance(value, int) else "a number"
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{key}: expected one of {choices}, got {value!r}")
    for name, ok, words in (("min", lambda v, b: v >= b, ">="),
                            ("min_exclusive", lambda v, b: v > b, ">"),
                            ("max", lambda v, b: v <= b, "<="),
                            ("max_exclusive", lambda v, b: v < b, "<")):
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: expected {what} {words} {meta[name]}, got {value!r}")


def _check_config(cfg: Config) -> None:
    """Checks that span keys: the policy, the mesh, the task against the model, files."""
    from dp2ejax.arith.policy import PrecisionPolicy

    try:
        _policy(cfg.train)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"train.policy: {err}") from None
    if isinstance(cfg.train.policy, dict) and cfg.train.rounding != "nearest":
        raise ConfigError("train.rounding: applies only to a format-name policy; with a policy "
                          "table give the mode in its rules (mode = 'stochastic')")
    for key, names in (("analyze.oversmoothing_policies", cfg.analyze.oversmoothing_policies),
                       ("tune.candidates", cfg.tune.candidates),
                       ("analyze.cestac_format", [cfg.analyze.cestac_format])):
        for name in names:
            try:
                PrecisionPolicy.uniform(name)
            except (ValueError, KeyError) as err:
                raise ConfigError(f"{key}: {err}") from None
    unknown = [m for m in cfg.tune.report_costs if m not in COST_MODELS]
    if unknown:
        raise ConfigError(f"tune.report_costs: expected names among {', '.join(COST_MODELS)}, "
                          f"got {unknown}")
    if cfg.mesh.axes:
        from dp2ejax.parallel.mesh import make_mesh

        try:
            make_mesh(cfg.mesh.axes)
        except ValueError as err:
            raise ConfigError(f"mesh.axes: {err}") from None
    name = cfg.run.name.replace("{experiment}", cfg.run.experiment)
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigError(f"run.name: expected a plain directory name, got {cfg.run.name!r}")
    g = cfg.graph
    total = g.train_fraction + g.val_fraction + g.test_fraction
    if total > 1 + 1e-9:
        raise ConfigError(f"graph.train_fraction, graph.val_fraction, graph.test_fraction: "
                          f"must sum to at most 1, got {total:g}")
    if g.source == "file":
        if not g.path:
            raise ConfigError("graph.path: required with graph.source = 'file'")
        if not Path(g.path).is_file():
            raise ConfigError(f"graph.path: file not found: {g.path}")
    elif g.num_nodes < g.num_classes:
        raise ConfigError(f"graph.num_nodes: expected at least graph.num_classes = "
                          f"{g.num_classes}, got {g.num_nodes}")
    t, m = cfg.task, cfg.transformer
    if t.seq_len % m.block_size:
        raise ConfigError(f"task.seq_len: expected a multiple of transformer.block_size = "
                          f"{m.block_size}, got {t.seq_len}")
    if m.width % m.num_heads:
        raise ConfigError(f"transformer.num_heads: must divide transformer.width = {m.width}, "
                          f"got {m.num_heads}")
    if t.kind == "associative_recall":
        if t.num_pairs > t.vocab_size:
            raise ConfigError(f"task.num_pairs: the keys are distinct, so at most "
                              f"task.vocab_size = {t.vocab_size}, got {t.num_pairs}")
        used = 2 * t.num_pairs + t.num_queries
        if used >= t.seq_len:
            raise ConfigError(f"task.seq_len: 2 * num_pairs + num_queries = {used} tokens must "
                              f"fit with room for filler, got seq_len = {t.seq_len}")
    elif 2 * t.copy_length >= t.seq_len:
        raise ConfigError(f"task.seq_len: 2 * copy_length = {2 * t.copy_length} tokens must fit "
                          f"with room for filler, got seq_len = {t.seq_len}")
    _check_linalg(cfg.linalg)


def _distinct(key: str, values: list) -> None:
    if not values:
        raise ConfigError(f"{key}: expected a non-empty array")
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(f"{key}: lists {', '.join(twice)} twice")


def format_pair(text: str, key: str = "pair") -> tuple[str, str]:
    """``"storage/accumulation"`` -> the two canonical format names, or a ConfigError naming
    ``key``.

    Example:
      >>> format_pair("bf16/fp32")
      ('bf16', 'fp32')
      >>> format_pair("bf16", "linalg.pagerank_pairs[0]")
      Traceback (most recent call last):
      ...
      dp2ejax.config.ConfigError: linalg.pagerank_pairs[0]: expected 'storage/accumulation' (e.g. 'bf16/fp32'), got 'bf16'
    """  # noqa: E501
    from dp2ejax.arith.formats import get_format

    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{key}: expected 'storage/accumulation' (e.g. 'bf16/fp32'), got "
                          f"{text!r}")
    try:
        return get_format(parts[0].strip()).name, get_format(parts[1].strip()).name
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{key}: {err}") from None


def _check_linalg(la: LinalgConfig) -> None:
    """The [linalg] study's lists: known formats and methods, sizes that fit together."""
    from dp2ejax.arith.formats import FloatFormat, get_format

    for key in ("ir_conditions", "ir_formats", "ir_methods", "pagerank_pairs",
                "eigs_subspace_sizes"):
        _distinct(f"linalg.{key}", getattr(la, key))
    for i, cond in enumerate(la.ir_conditions):
        if not cond >= 1:
            raise ConfigError(f"linalg.ir_conditions[{i}]: expected a condition number >= 1, "
                              f"got {cond!r}")
    for i, name in enumerate(la.ir_formats):
        try:
            fmt = get_format(name)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"linalg.ir_formats[{i}]: {err}") from None
        if not isinstance(fmt, FloatFormat):
            raise ConfigError(f"linalg.ir_formats[{i}]: expected an IEEE-style float format "
                              f"(fp32, fp16, bf16, fp8_e4m3, ...), got {name!r}")
    for i, method in enumerate(la.ir_methods):
        if method not in IR_METHODS:
            raise ConfigError(f"linalg.ir_methods[{i}]: expected one of "
                              f"{', '.join(map(repr, IR_METHODS))}, got {method!r}")
    pairs = [format_pair(p, f"linalg.pagerank_pairs[{i}]")
             for i, p in enumerate(la.pagerank_pairs)]
    for i, text in enumerate(la.pagerank_cestac):
        if format_pair(text, f"linalg.pagerank_cestac[{i}]") not in pairs:
            raise ConfigError(f"linalg.pagerank_cestac[{i}]: {text!r} is not one of "
                              f"linalg.pagerank_pairs")
    if la.pagerank_top_k > la.pagerank_nodes:
        raise ConfigError(f"linalg.pagerank_top_k: expected at most linalg.pagerank_nodes = "
                          f"{la.pagerank_nodes}, got {la.pagerank_top_k}")
    if la.eigs_k > la.eigs_size - 2:
        raise ConfigError(f"linalg.eigs_k: expected at most linalg.eigs_size - 2 = "
                          f"{la.eigs_size - 2}, got {la.eigs_k}")
    for i, m in enumerate(la.eigs_subspace_sizes):
        if not la.eigs_k < m <= la.eigs_size:
            raise ConfigError(f"linalg.eigs_subspace_sizes[{i}]: expected a size above "
                              f"linalg.eigs_k = {la.eigs_k} and at most linalg.eigs_size = "
                              f"{la.eigs_size}, got {m}")


def _policy(train: TrainConfig):
    """The :class:`~dp2ejax.PrecisionPolicy` of ``train.policy``, or None for 'none'."""
    from dp2ejax.arith.policy import PrecisionPolicy

    if isinstance(train.policy, dict):
        return PrecisionPolicy.from_dict(train.policy)
    if train.policy == "none":
        return None
    return PrecisionPolicy.uniform(train.policy, mode=train.rounding)


def training_policy(cfg: Config):
    """The precision policy of the training forward pass, or None (``train.policy = 'none'``).

    Example:
      >>> training_policy(load_config(None, ["train.policy=bf16", "train.rounding=stochastic"]))
      ... # doctest: +ELLIPSIS
      PrecisionPolicy(default=Rule(format=...bf16..., mode='stochastic', ...)
    """
    return _policy(cfg.train)


def config_diff(a: Config, b: Config, *, ignore: Sequence[str] = ()) -> list[str]:
    """The dotted keys whose values differ, as ``"key: a -> b"`` lines.

    Example:
      >>> config_diff(Config(), load_config(None, ["train.steps=5"]))
      ['train.steps: 200 -> 5']
    """
    out: list[str] = []

    def walk(x, y, prefix):
        for key in sorted(set(x) | set(y)):
            full = prefix + key
            if full in ignore:
                continue
            vx, vy = x.get(key), y.get(key)
            if isinstance(vx, dict) and isinstance(vy, dict) and prefix == "":
                walk(vx, vy, full + ".")
            elif vx != vy:
                out.append(f"{full}: {vx!r} -> {vy!r}")

    walk(a.to_dict(), b.to_dict(), "")
    return out


def _literal(value: Any) -> str:
    """``value`` as a TOML literal (``true``, ``'x'``, ``{data = 2}``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def describe_schema(schema: type = Config) -> str:
    """Every key with its type, default and help, one per line (for ``--help`` texts).

    Example:
      >>> print(describe_schema().splitlines()[2])
        run.out_dir = 'runs'  (string) directory holding the run directories
    """
    hints = typing.get_type_hints(schema)
    lines = []
    for f in dataclasses.fields(schema):
        section = hints[f.name]
        lines.append(f"[{f.name}]")
        section_hints = typing.get_type_hints(section)
        for g in dataclasses.fields(section):
            default = g.default if g.default is not dataclasses.MISSING else g.default_factory()
            kind = _noun(section_hints[g.name])
            lines.append(f"  {f.name}.{g.name} = {_literal(default)}  ({kind}) "
                         f"{g.metadata.get('help', '')}")
    return "\n".join(lines)
