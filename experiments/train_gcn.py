"""Node classification with a GCN on a contextual SBM (or a loaded graph), trained with Optax
Adam under an optional precision policy, with metrics, Orbax checkpoints and resuming.

    python experiments/train_gcn.py --config configs/gcn.toml --set train.steps=100
    python experiments/train_gcn.py --set train.policy=bf16 --set train.rounding=stochastic

Full-batch training: every step uses all training nodes, so the only randomness of a step is
its dropout mask and its stochastic rounding, both drawn from ``(train.seed, step)``.

Example (importable):

    from experiments.train_gcn import run
    results = run("configs/quickstart.toml")
    print(results["summary"]["test_accuracy"])
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dp2ejax.arith.emulate import emulate
from dp2ejax.config import Config, ConfigError, training_policy

EXPERIMENT = "gcn"


def load_graph_data(cfg: Config):
    """The ``Graph`` of ``cfg.graph`` (generated, or loaded from ``graph.path``) with float32
    features and labels, and its train/val/test masks."""
    from dp2ejax.graph import contextual_sbm, load_graph, random_features

    g = cfg.graph
    if g.source == "file":
        try:
            graph = load_graph(g.path)
        except FileNotFoundError as err:
            raise ConfigError(f"graph.path: file not found: {g.path} ({err})") from None
        except ValueError as err:
            raise ConfigError(f"graph.path: cannot load {g.path}: {err}") from None
        if graph.labels is None:
            raise ConfigError(f"graph.path: {g.path} has no node labels; node classification "
                              f"needs them (save a .npz with labels)")
        if graph.features is None:
            graph = random_features(graph, g.feature_dim, seed=g.seed)
    else:
        try:
            graph = contextual_sbm(g.num_nodes, g.num_classes, feature_dim=g.feature_dim,
                                   signal=g.signal, seed=g.seed, avg_degree=g.avg_degree,
                                   homophily=g.homophily)
        except ValueError as err:
            raise ConfigError(f"graph: {err}") from None
    masks = graph.split(g.seed, train=g.train_fraction, val=g.val_fraction,
                        test=g.test_fraction)
    if not np.asarray(masks.train).any():
        raise ConfigError("graph.train_fraction: selects no training node")
    return graph, masks


def _place(tree: Any, cfg: Config) -> Any:
    """Replicated over ``cfg.mesh`` (full-batch GCN), or committed to the first device (so
    that restored checkpoints, which are committed, hit the same compiled step)."""
    if not cfg.mesh.axes:
        return jax.device_put(tree, jax.devices()[0])
    from jax.sharding import NamedSharding, PartitionSpec

    from dp2ejax.parallel.mesh import make_mesh

    return jax.device_put(tree, NamedSharding(make_mesh(cfg.mesh.axes), PartitionSpec()))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of a step (hashable): equal specs share one compiled program, so a
    resumed run (or a second run in one process) does not compile again."""

    model: Any
    policy: Any
    learning_rate: float
    seed: int


def _forward(spec: _Spec, params, data, key, train: bool):
    apply = spec.model.apply
    kwargs = {"train": train, "rngs": {"dropout": jax.random.fold_in(key, 0)}}
    if spec.policy is not None:
        apply = emulate(apply, spec.policy)
        kwargs["rounding_key"] = jax.random.fold_in(key, 1)
    return apply(params, data["x"], data["P"], **kwargs)


def _accuracy(logits, labels, weights):
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(correct * weights) / jnp.maximum(total, 1), jnp.nan)


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key, x, P):
    return model.init(key, x, P)


@functools.partial(jax.jit, static_argnames="spec")
def _train_step(state, data, spec: _Spec):
    # every random draw of step s comes from (seed, s): a resumed run repeats it exactly
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed), 1), state["step"])

    def loss_fn(params):
        logits = _forward(spec, params, data, key, True)
        per_node = optax.softmax_cross_entropy_with_integer_labels(logits, data["labels"])
        return jnp.sum(per_node * data["train"]) / jnp.sum(data["train"]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    optimizer = optax.adam(spec.learning_rate)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    eval_logits = _forward(spec, params, data, jax.random.fold_in(key, 2), False)
    metrics = {"loss": loss, "train_accuracy": _accuracy(logits, data["labels"], data["train"]),
               "val_accuracy": _accuracy(eval_logits, data["labels"], data["val"])}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames="spec")
def _evaluate(params, data, spec: _Spec):
    key = jax.random.fold_in(jax.random.key(spec.seed), 2)
    logits = _forward(spec, params, data, key, False)
    return {f"{split}_accuracy": _accuracy(logits, data["labels"], data[split])
            for split in ("train", "val", "test")}


def make_model(cfg: Config, num_classes: int):
    """The :class:`~dp2ejax.graph.GCN` of ``cfg.gcn``."""
    from dp2ejax.graph import GCN

    m = cfg.gcn
    return GCN(hidden=m.hidden, num_classes=num_classes, depth=m.depth, residual=m.residual,
               norm=m.norm, dropout=m.dropout)


def build(cfg: Config):
    """The :class:`experiments.Trainer` of ``cfg``: model, data, initial state, jitted step
    (validates the data first)."""
    from dp2ejax.graph import emulation_operator, normalized_adjacency
    from experiments import Trainer

    graph, masks = load_graph_data(cfg)
    policy = training_policy(cfg)
    # the segment-sum product (no degree buckets): it compiles several times faster, which at
    # these sizes outweighs the buckets' faster steps, and it is what emulate rounds per row
    P = emulation_operator(normalized_adjacency(graph.adjacency, cfg.graph.normalization)
                           .astype(jnp.float32))
    model = make_model(cfg, int(graph.num_classes))
    data = _place({"x": jnp.asarray(graph.features, jnp.float32), "P": P,
                   "labels": jnp.asarray(graph.labels, jnp.int32),
                   "train": jnp.asarray(masks.train, jnp.float32),
                   "val": jnp.asarray(masks.val, jnp.float32),
                   "test": jnp.asarray(masks.test, jnp.float32)}, cfg)
    variables = _init(model, jax.random.fold_in(jax.random.key(cfg.train.seed), 0), data["x"],
                      data["P"])
    state = _place({"params": variables,
                    "opt_state": optax.adam(cfg.train.learning_rate).init(variables),
                    "step": jnp.zeros((), jnp.int32)}, cfg)
    spec = _Spec(model, policy, cfg.train.learning_rate, cfg.train.seed)

    def evaluate(state):
        out = jax.device_get(_evaluate(state["params"], data, spec))
        return {**{k: float(v) for k, v in out.items()}, "num_nodes": graph.num_nodes,
                "num_edges": graph.num_edges,
                "policy": "none" if policy is None else str(cfg.train.policy)}

    return Trainer(init_state=state, step=lambda state: _train_step(state, data, spec),
                   evaluate=evaluate)


def trained_model(cfg: Config):
    """``(model, variables, inputs)`` of a trained run: the GCN, the newest checkpoint's
    variables and its inputs ``(x, P)`` (``P`` as :func:`~dp2ejax.graph.emulation_operator`
    gives it), for analysis and tuning."""
    from dp2ejax.graph import emulation_operator, normalized_adjacency
    from experiments import restore_final

    graph, _ = load_graph_data(cfg)
    state = restore_final(cfg, build(cfg))
    model = make_model(cfg, int(graph.num_classes))
    P = emulation_operator(normalized_adjacency(graph.adjacency, cfg.graph.normalization)
                           .astype(jnp.float32))
    return model, jax.device_get(state["params"]), (jnp.asarray(graph.features, jnp.float32), P)


def run(config: Config | str | Path, *, stop_after: int | None = None, overwrite: bool = False,
        quiet: bool = True, overrides=()) -> dict:
    """Trains (or resumes) the GCN run that ``config`` describes; see :func:`experiments.train`.

    Args:
      config: a :class:`~dp2ejax.config.Config` or a TOML path (``run.experiment`` is set to
        ``"gcn"``).
      stop_after: stop after this many steps, as a kill would (no results).
      overwrite: discard an existing run of the same name.
      quiet: no progress bar.
      overrides: ``"key=value"`` overrides applied to ``config``.

    Returns:
      The results dict (``summary``, ``training``, ``config``, ``versions``), also written to
      ``<run_dir>/results.json``.
    """
    from experiments import as_config, train

    cfg = as_config(config, overrides)
    if cfg.run.experiment != EXPERIMENT:
        cfg = cfg.replace(run={"experiment": EXPERIMENT})
    return train(cfg, build, stop_after=stop_after, overwrite=overwrite, quiet=quiet)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `experiments` importable
    from experiments import script_main

    sys.exit(script_main(run, "gcn.toml"))
