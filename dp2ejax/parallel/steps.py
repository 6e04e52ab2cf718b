"""The sharded steps that :mod:`dp2ejax.parallel.launch` runs on one or many processes.

Each step takes the mesh (over every process's devices) and keyword options, runs one sharded
computation, and returns its results as host NumPy arrays (gathered from every process), so
that the same step run on 1 process or on N processes can be compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Step:
    """A named sharded step: ``fn(mesh, **options) -> {name: np.ndarray}`` and the mesh axes
    it uses by default."""

    name: str
    fn: Callable[..., dict[str, np.ndarray]]
    mesh: dict[str, int]
    description: str

    def __call__(self, mesh: Mesh, **options) -> dict[str, np.ndarray]:
        return self.fn(mesh, **options)


def to_host(tree):
    """Every leaf as a NumPy array on every process (gathered across processes if needed)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)


def cestac_samples(mesh: Mesh, *, samples: int = 8, n: int = 32, seed: int = 0,
                   fmt: str = "fp32") -> dict[str, np.ndarray]:
    """CESTAC analysis of a small ill-conditioned program (a tanh layer and a cancelling
    sum) with the samples split over the mesh's ``samples`` (else first) axis."""
    from dp2ejax.cestac import analyze

    axis = "samples" if "samples" in mesh.shape else mesh.axis_names[0]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)

    def program(w, x):
        h = jnp.tanh(w @ x / np.sqrt(n))
        return jnp.stack([h.sum(), (h + 1e3).sum() - 1e3 * n, jnp.dot(h, h)])

    result = analyze(program, w, x, fmt=fmt, samples=samples, key=jax.random.key(seed),
                     sample_sharding=NamedSharding(mesh, P(axis)))
    totals = result.instability_totals()
    return to_host({"mean": result.mean, "digits": result.digits, "samples": result.samples,
                    "cancellations": np.int64(totals.get("cancellation", 0))})


def _sbm_problem(nodes: int, seed: int, features: int):
    from dp2ejax import graph

    blocks = 4
    g = graph.contextual_sbm(nodes, blocks, avg_degree=8.0, homophily=0.9,
                             feature_dim=features, signal=2.0, seed=seed)
    return g, graph.normalized_adjacency(g.adjacency, "gcn")


def gcn_propagation(mesh: Mesh, *, nodes: int = 512, features: int = 16, depth: int = 8,
                    exchange: str = "halo", seed: int = 0) -> dict[str, np.ndarray]:
    """``depth`` layers of ``x <- P x`` (GCN-normalised contextual SBM), ``P`` split by rows
    over the mesh's ``rows`` (else first) axis."""
    from dp2ejax.parallel.spmm import PartitionedCSR

    axis = "rows" if "rows" in mesh.shape else mesh.axis_names[0]
    g, P_ = _sbm_problem(nodes, seed, features)
    parts = PartitionedCSR.from_csr(P_, mesh, axis, exchange=exchange)

    @jax.jit
    def run(parts, x):
        def layer(x, _):
            y = parts @ x
            return y, jnp.linalg.norm(y)
        return jax.lax.scan(layer, x, None, length=depth)

    x, norms = run(parts, np.asarray(g.features))
    return to_host({"features": x, "norms": norms})


def gcn_training(mesh: Mesh, *, nodes: int = 512, features: int = 16, steps: int = 20,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Trains a 2-layer GCN (node classification, contextual SBM) with the graph split by rows
    over the mesh's ``rows`` (else first) axis (halo exchange)."""
    from dp2ejax import graph
    from dp2ejax.parallel.spmm import PartitionedCSR

    axis = "rows" if "rows" in mesh.shape else mesh.axis_names[0]
    g, P_ = _sbm_problem(nodes, seed, features)
    parts = PartitionedCSR.from_csr(P_, mesh, axis)
    split = g.split(seed, train=0.5, val=0.25, test=0.25)
    model = graph.GCN(hidden=16, num_classes=4, depth=2)
    variables, history = graph.train_node_classifier(
        model, parts, g.features, g.labels, split.train, steps=steps, learning_rate=1e-2,
        seed=seed, val_mask=split.val)
    return to_host({"loss": history["loss"], "train_accuracy": history["train_accuracy"],
                    **{".".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf
                       in jax.tree_util.tree_leaves_with_path(variables)}})


def transformer_training(mesh: Mesh, *, steps: int = 5, batch: int = 8, length: int = 64,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Trains a small block-sparse transformer LM (associative recall) with data parallelism
    over the mesh's ``data`` axis and head parallelism over ``model`` (when present)."""
    import optax

    from dp2ejax.attention import causal
    from dp2ejax.parallel.mesh import logical_sharding
    from dp2ejax.parallel.transformer import (
        BlockSparseLM,
        associative_recall,
        init_sharded,
        make_train_step,
    )

    model = BlockSparseLM(vocab_size=32, width=32, depth=2, num_heads=4,
                          mask=causal(length, block_size=16))
    optimizer = optax.adam(3e-3)
    key = jax.random.key(seed)
    tokens, _ = associative_recall(key, batch, length, 32)
    params, opt_state = init_sharded(model, optimizer, mesh, key, np.asarray(tokens))
    step = make_train_step(model, optimizer, mesh)
    batch_sharding = logical_sharding(("batch", None), mesh)

    def global_batch(array):  # the same data on every process, each keeping its rows
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, batch_sharding, lambda i: array[i])

    losses = []
    for i in range(steps):
        tokens, targets = associative_recall(jax.random.fold_in(key, i), batch, length, 32)
        params, opt_state, loss = step(params, opt_state, global_batch(tokens),
                                       global_batch(targets))
        losses.append(loss)
    return to_host({"loss": jnp.stack(losses), **{
        ".".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)}})


STEPS: dict[str, Step] = {
    step.name: step for step in (
        Step("cestac_samples", cestac_samples, {"samples": -1},
             "CESTAC samples split across devices"),
        Step("gcn_propagation", gcn_propagation, {"rows": -1},
             "GCN propagation with the graph split by rows (halo exchange)"),
        Step("gcn_training", gcn_training, {"rows": -1},
             "GCN node-classification training with the graph split by rows"),
        Step("transformer_training", transformer_training, {"data": 2, "model": -1},
             "block-sparse transformer training, data and head parallel"),
    )
}
