"""A small block-sparse transformer on a synthetic long-range task generated on the fly, trained
with Optax Adam under an optional precision policy, with metrics, Orbax checkpoints and resuming.

    python experiments/train_sparse_transformer.py --config configs/sparse_transformer.toml
    python experiments/train_sparse_transformer.py --set train.policy=bf16 \\
        --set train.rounding=stochastic --set task.kind=copy

Tasks (``task.kind``), each sequence ``seq_len`` tokens, batches drawn from ``(train.seed,
step)`` inside the jitted step:

* ``associative_recall``: ``k1 v1 k2 v2 … kP vP`` (distinct keys), random filler tokens, then
  ``num_queries`` query keys at the very end; the target at each query is its key's value.
* ``copy``: ``copy_length`` random tokens, filler, a separator, then the same tokens shifted by
  one (teacher forcing); the target at the separator and after it is the next token to copy.

The attention mask is causal and block-sparse: a sliding window of ``transformer.window`` keys
plus the task's prefix (the pairs, or the tokens to copy) as global keys every later token sees;
so the answers are reachable only through the global prefix, across the whole sequence.
``query_accuracy`` counts the query positions' predictions that are right.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dp2ejax.arith.emulate import emulate
from dp2ejax.attention import (
    BlockMask,
    BlockSparseTransformerBlock,
    causal,
    global_tokens,
    local,
)
from dp2ejax.config import Config, ConfigError, TaskConfig, training_policy

EXPERIMENT = "sparse_transformer"
EVAL_BATCHES = 4  # the final evaluation: this many batches of train.batch sequences


# --- the task ------------------------------------------------------------------------------------


def vocab_size(task: TaskConfig) -> int:
    """Content tokens ``[0, V)``, filler ``[V, 2V)``, the separator ``2V``: ``2V + 1``."""
    return 2 * task.vocab_size + 1


def prefix_length(task: TaskConfig) -> int:
    """The global prefix: the key-value pairs, or the tokens to copy."""
    return 2 * task.num_pairs if task.kind == "associative_recall" else task.copy_length


@functools.partial(jax.jit, static_argnames=("task", "batch"))
def make_batch(key: jax.Array, task: TaskConfig, batch: int):
    """One batch of the task: ``(tokens, targets, weights)``, each ``[batch, seq_len]``;
    ``weights`` is 1 at the query positions (where ``targets`` holds the answer), else 0.

    Example:
      >>> t = TaskConfig(seq_len=16, vocab_size=4, num_pairs=2, num_queries=1)
      >>> tokens, targets, weights = make_batch(jax.random.key(0), t, 2)
      >>> tokens.shape, weights.sum(axis=1).tolist()
      ((2, 16), [1.0, 1.0])
    """
    L, V = task.seq_len, task.vocab_size
    k_prefix, k_values, k_filler, k_queries = jax.random.split(key, 4)
    tokens = jax.random.randint(k_filler, (batch, L), V, 2 * V, jnp.int32)
    targets = jnp.zeros((batch, L), jnp.int32)
    weights = jnp.zeros((batch, L), jnp.float32)
    if task.kind == "associative_recall":
        P, Q = task.num_pairs, task.num_queries
        keys = jax.vmap(lambda k: jax.random.permutation(k, V)[:P])(
            jax.random.split(k_prefix, batch)).astype(jnp.int32)
        values = jax.random.randint(k_values, (batch, P), 0, V, jnp.int32)
        which = jax.random.randint(k_queries, (batch, Q), 0, P)
        pairs = jnp.stack([keys, values], axis=-1).reshape(batch, 2 * P)
        tokens = tokens.at[:, :2 * P].set(pairs)
        tokens = tokens.at[:, L - Q:].set(jnp.take_along_axis(keys, which, axis=1))
        targets = targets.at[:, L - Q:].set(jnp.take_along_axis(values, which, axis=1))
        weights = weights.at[:, L - Q:].set(1.0)
    else:
        C = task.copy_length
        content = jax.random.randint(k_prefix, (batch, C), 0, V, jnp.int32)
        tokens = tokens.at[:, :C].set(content)
        tokens = tokens.at[:, L - C].set(2 * V)  # the separator
        tokens = tokens.at[:, L - C + 1:].set(content[:, :C - 1])
        targets = targets.at[:, L - C:].set(content)
        weights = weights.at[:, L - C:].set(1.0)
    return tokens, targets, weights


def attention_mask(cfg: Config) -> BlockMask:
    """Causal sliding window plus the task's prefix as global keys, block-sparse.

    Example:
      >>> from dp2ejax.config import Config
      >>> m = attention_mask(Config())
      >>> m.q_len, m.block_q, round(m.density, 3)
      (128, 16, 0.22)
    """
    m = cfg.transformer
    return _mask(cfg.task.seq_len, m.window, m.block_size, prefix_length(cfg.task))


@functools.lru_cache(maxsize=8)
def _mask(seq_len: int, window: int, block_size: int, num_global: int) -> BlockMask:
    # one BlockMask object per shape: masks compare by identity, so equal configs then give
    # equal models, and a second run in the process reuses the compiled step
    return (local(seq_len, window, block_size=block_size, causal=True)
            | (global_tokens(seq_len, num_global, block_size=block_size)
               & causal(seq_len, block_size=block_size)))


# --- the model -----------------------------------------------------------------------------------


class SparseTransformer(nn.Module):
    """Token and learned position embeddings, ``num_layers`` pre-norm
    :class:`~dp2ejax.attention.BlockSparseTransformerBlock`, a final LayerNorm and a readout to
    the vocabulary. Modules: ``embed``, ``block_i``, ``final_norm``, ``readout``."""

    vocab_size: int
    seq_len: int
    width: int
    num_heads: int
    num_layers: int
    mask: BlockMask
    mlp_ratio: float = 2.0

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        position = self.param("position", nn.initializers.normal(0.02),
                              (self.seq_len, self.width))
        h = h + position[None].astype(h.dtype)
        for i in range(self.num_layers):
            h = BlockSparseTransformerBlock(self.width, self.num_heads, self.mask,
                                            mlp_ratio=self.mlp_ratio, name=f"block_{i}")(h)
        h = nn.LayerNorm(name="final_norm")(h)
        return nn.Dense(self.vocab_size, name="readout")(h)


def make_model(cfg: Config) -> SparseTransformer:
    """The :class:`SparseTransformer` of ``cfg``."""
    m = cfg.transformer
    return SparseTransformer(vocab_size=vocab_size(cfg.task), seq_len=cfg.task.seq_len,
                             width=m.width, num_heads=m.num_heads, num_layers=m.num_layers,
                             mask=attention_mask(cfg), mlp_ratio=m.mlp_ratio)


# --- training ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of a step (hashable): equal specs share one compiled program."""

    model: Any
    policy: Any
    task: TaskConfig
    batch: int
    learning_rate: float
    seed: int
    batch_sharding: Any = None


def _forward(spec: _Spec, params, tokens, key):
    if spec.policy is None:
        return spec.model.apply(params, tokens)
    return emulate(spec.model.apply, spec.policy)(params, tokens, rounding_key=key)


def _loss_and_accuracy(logits, targets, weights):
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    total = jnp.sum(weights)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return jnp.sum(per_token * weights) / total, jnp.sum(correct * weights) / total


def _batch(spec: _Spec, key):
    tokens, targets, weights = make_batch(key, spec.task, spec.batch)
    if spec.batch_sharding is not None:
        tokens, targets, weights = jax.lax.with_sharding_constraint(
            (tokens, targets, weights), spec.batch_sharding)
    return tokens, targets, weights


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key, tokens):
    return model.init(key, tokens)


TRAIN_STREAM, EVAL_STREAM = 1, 2  # key streams: training batches, held-out batches


@functools.partial(jax.jit, static_argnames="spec")
def _train_step(state, spec: _Spec, stream):
    # the batch and the rounding of step s come from (seed, stream, s): a resumed run repeats
    # them. The evaluation runs this same program on the held-out stream and drops the update,
    # so there is one program to compile, not two.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed), stream),
                             state["step"])
    tokens, targets, weights = _batch(spec, jax.random.fold_in(key, 0))

    def loss_fn(params):
        logits = _forward(spec, params, tokens, jax.random.fold_in(key, 1))
        return _loss_and_accuracy(logits, targets, weights)

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    optimizer = optax.adam(spec.learning_rate)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "query_accuracy": accuracy}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def _evaluate(state, spec: _Spec) -> dict[str, float]:
    """Loss and query accuracy of ``state``'s parameters on :data:`EVAL_BATCHES` held-out
    batches (keys no training step uses)."""
    losses, accuracies = [], []
    for i in range(EVAL_BATCHES):
        # placed like the state's step (committed): the same compiled program is reused
        step = jax.device_put(jnp.asarray(i, state["step"].dtype), state["step"].sharding)
        held_out = {**state, "step": step}
        _, metrics = jax.device_get(_train_step(held_out, spec, EVAL_STREAM))
        losses.append(float(metrics["loss"]))
        accuracies.append(float(metrics["query_accuracy"]))
    return {"eval_loss": sum(losses) / len(losses),
            "eval_query_accuracy": sum(accuracies) / len(accuracies)}


def _shardings(cfg: Config):
    """(state sharding, batch sharding or None) on ``cfg.mesh``; checks the batch splits."""
    if not cfg.mesh.axes:
        return jax.devices()[0], None
    from jax.sharding import NamedSharding, PartitionSpec

    from dp2ejax.parallel.mesh import logical_sharding, make_mesh

    mesh = make_mesh(cfg.mesh.axes)
    batch_sharding = logical_sharding(("batch", None), mesh)
    axis = batch_sharding.spec[0]
    if axis is not None and cfg.train.batch % mesh.shape[axis]:
        raise ConfigError(f"train.batch: {cfg.train.batch} sequences do not split evenly over "
                          f"mesh axis {axis!r} of size {mesh.shape[axis]}")
    return NamedSharding(mesh, PartitionSpec()), batch_sharding


def build(cfg: Config):
    """The :class:`experiments.Trainer` of ``cfg``: model, initial state, jitted step."""
    from experiments import Trainer

    state_sharding, batch_sharding = _shardings(cfg)
    policy = training_policy(cfg)
    model = make_model(cfg)
    tokens = jnp.zeros((1, cfg.task.seq_len), jnp.int32)
    variables = _init(model, jax.random.fold_in(jax.random.key(cfg.train.seed), 0), tokens)
    state = jax.device_put({"params": variables,
                            "opt_state": optax.adam(cfg.train.learning_rate).init(variables),
                            "step": jnp.zeros((), jnp.int32)}, state_sharding)
    spec = _Spec(model, policy, cfg.task, cfg.train.batch, cfg.train.learning_rate,
                 cfg.train.seed, batch_sharding)

    def evaluate(state):
        return {**_evaluate(state, spec),
                "attention_density": float(model.mask.density),
                "policy": "none" if policy is None else str(cfg.train.policy)}

    return Trainer(init_state=state, step=lambda state: _train_step(state, spec, TRAIN_STREAM),
                   evaluate=evaluate)


def trained_model(cfg: Config, batch: int | None = None):
    """``(model, variables, inputs)`` of a trained run: the model, the newest checkpoint's
    variables, and ``(tokens,)`` of ``batch`` held-out sequences (default
    ``analyze.eval_batch``), for analysis and tuning."""
    from experiments import restore_final

    state = restore_final(cfg, build(cfg))
    batch = cfg.analyze.eval_batch if batch is None else batch
    tokens, _, _ = make_batch(jax.random.fold_in(jax.random.key(cfg.train.seed), 3), cfg.task,
                              batch)
    return make_model(cfg), jax.device_get(state["params"]), (tokens,)


def run(config: Config | str | Path, *, stop_after: int | None = None, overwrite: bool = False,
        quiet: bool = True, overrides=()) -> dict:
    """Trains (or resumes) the block-sparse transformer run ``config`` describes; see
    :func:`experiments.train` and :func:`experiments.train_gcn.run` (same arguments)."""
    from experiments import as_config, train

    cfg = as_config(config, overrides)
    if cfg.run.experiment != EXPERIMENT:
        cfg = cfg.replace(run={"experiment": EXPERIMENT})
    return train(cfg, build, stop_after=stop_after, overwrite=overwrite, quiet=quiet)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `experiments` importable
    from experiments import script_main

    sys.exit(script_main(run, "sparse_transformer.toml"))
