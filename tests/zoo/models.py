"""A zoo of small models written the way users write them, for exercising ``emulate`` and CESTAC.

Each builder returns a :class:`ZooModel`: ``apply(params, *inputs)`` is the forward pass,
``loss(params, *inputs)`` a scalar for ``jax.grad`` / optax, ``layers`` the per-layer module
paths a ``Rule(path=...)`` can target (as the jaxpr name stack shows them) and ``target`` one of
them. Shapes are tiny (batch 2, sequence <= 8, width <= 16). Parameters and float inputs are
float32 (as user code has them, even with x64 enabled). Linen models also carry ``module`` and
``layer_inputs`` for ``dp2ejax.cestac.analyze_layers(module, params, *layer_inputs)``.

Import it as ``from zoo import models`` (tests/ is on ``sys.path`` under pytest) or, from a test
in this folder, ``import models`` (pytest puts a test's folder first on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str  # "linen", "nnx", "equinox", "jraph" (jraph with linen update functions)
    apply: Callable  # apply(params, *inputs) -> output pytree
    params: Any
    inputs: tuple
    loss: Callable  # loss(params, *inputs) -> scalar
    layers: tuple[str, ...] = ()  # per-layer module paths (empty: no name stack, e.g. NNX)
    target: str | None = None  # one layer of ``layers`` to give its own Rule
    module: Any = None  # the flax.linen Module, for analyze_layers
    layer_inputs: tuple | None = None  # positional inputs of module.apply for analyze_layers
    attr_paths: tuple[str, ...] = ()  # NNX/equinox attribute paths (no name stack needed)
    notes: str = ""


# --- linen: self-attention encoder with padding + causal masks ---------------------------------

class EncoderBlock(nn.Module):
    num_heads: int = 2

    @nn.compact
    def __call__(self, x, mask):
        h = nn.LayerNorm(name="ln_attn")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=16,
                                            deterministic=True, name="attn")(h, mask=mask)
        x = x + h
        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.Dense(16, name="mlp_in")(h)
        h = nn.Dense(x.shape[-1], name="mlp_out")(jax.nn.gelu(h))
        return x + h


class Encoder(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, valid):
        # valid: [batch, seq] bool, False at padding. Rows of padded queries are fully masked.
        mask = nn.combine_masks(nn.make_attention_mask(valid, valid), nn.make_causal_mask(valid))
        x = nn.Dense(16, name="embed")(x)
        x = EncoderBlock(name="block_0")(x, mask)
        w = valid[..., None].astype(x.dtype)
        pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        return nn.Dense(self.num_classes, name="head")(pooled)


def attention_encoder() -> ZooModel:
    model = Encoder()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8), F32)
    valid = jnp.arange(8)[None, :] < jnp.array([8, 5])[:, None]  # row 1: positions 5-7 padded
    labels = jnp.array([0, 2])
    params = model.init(jax.random.key(0), x, valid)

    def loss(params, x, valid, labels):
        logits = model.apply(params, x, valid)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return ZooModel("attention_encoder", "linen", lambda p, x, v, y: model.apply(p, x, v),
                    params, (x, valid, labels), loss,
                    layers=("embed", "block_0/ln_attn", "block_0/attn", "block_0/attn/query",
                            "block_0/mlp_in", "block_0/mlp_out", "head"),
                    target="block_0/mlp_in", module=model, layer_inputs=(x, valid),
                    notes="padding+causal mask, padded query rows fully masked")


# --- linen: transformer LM (lm1b-style), dropout active --------------------------------------

class LMBlock(nn.Module):
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool):
        causal = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        h = nn.LayerNorm(name="ln_1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=2, dropout_rate=self.dropout_rate,
                                            deterministic=not train, name="attn")(h, mask=causal)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = nn.LayerNorm(name="ln_2")(x)
        h = nn.Dense(16, name="mlp_in")(h)
        h = nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(h))
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=not train)


class TransformerLM(nn.Module):
    vocab_size: int = 32
    width: int = 16
    max_len: int = 8

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        embed = nn.Embed(self.vocab_size, self.width, name="embed")
        x = embed(tokens)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                         (1, self.max_len, self.width), F32)
        x = nn.Dropout(0.1)(x + pos[:, : tokens.shape[1]], deterministic=not train)
        for i in range(2):
            x = LMBlock(name=f"block_{i}")(x, train)
        x = nn.LayerNorm(name="ln_f")(x)
        return embed.attend(x)  # tied output embedding


def transformer_lm() -> ZooModel:
    model = TransformerLM()
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 32).at[1, 6:].set(0)  # 0: padding
    params = model.init(jax.random.key(0), tokens)
    rng = jax.random.key(2)

    def apply(params, tokens, rng):
        return model.apply(params, tokens, train=True, rngs={"dropout": rng})

    def loss(params, tokens, rng):
        logits = apply(params, tokens, rng)[:, :-1]
        targets = tokens[:, 1:]
        weights = (targets > 0).astype(F32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return (ce * weights).sum() / weights.sum()

    return ZooModel("transformer_lm", "linen", apply, params, (tokens, rng), loss,
                    layers=("embed", "block_0/attn", "block_0/mlp_in", "block_1/attn",
                            "block_1/mlp_in", "block_1/mlp_out", "ln_f"),
                    target="block_1/mlp_in", module=model, layer_inputs=(tokens,),
                    notes="train=True, dropout rng; analyze_layers runs it in eval mode")


# --- linen: CNN with BatchNorm and pooling ----------------------------------------------------

class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), name="conv_0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_0")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Conv(16, (3, 3), name="conv_1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_1")(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        return nn.Dense(10, name="head")(x.reshape((x.shape[0], -1)))


def _cnn_setup():
    model = CNN()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3), F32)
    labels = jnp.array([3, 7])
    variables = model.init(jax.random.key(0), x)
    # one train-mode pass so the running statistics are not the initial 0 / 1
    _, state = model.apply(variables, 2.0 * x + 1.0, train=True, mutable=["batch_stats"])
    return model, x, labels, {**variables, **state}


_CNN_LAYERS = ("conv_0", "bn_0", "conv_1", "bn_1", "head")


def cnn_train() -> ZooModel:
    model, x, labels, variables = _cnn_setup()

    def apply(variables, x):  # -> (logits, {"batch_stats": updated})
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    def loss(variables, x, labels):
        logits, _ = apply(variables, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return ZooModel("cnn_train", "linen", lambda v, x, y: apply(v, x), variables,
                    (x, labels), loss, layers=_CNN_LAYERS, target="conv_1", module=model,
                    layer_inputs=None, notes="mutable batch_stats: analyze_layers can't")


def cnn_eval() -> ZooModel:
    model, x, labels, variables = _cnn_setup()

    def loss(variables, x, labels):
        logits = model.apply(variables, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return ZooModel("cnn_eval", "linen", lambda v, x, y: model.apply(v, x), variables,
                    (x, labels), loss, layers=_CNN_LAYERS, target="conv_1", module=model,
                    layer_inputs=(x,))


# --- linen: LSTM (nn.RNN) + an nn.scan'ned stack ----------------------------------------------

class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(x.shape[-1], name="dense")(x)), None


class LSTMClassifier(nn.Module):
    @nn.compact
    def __call__(self, x, seq_lengths):
        h = nn.RNN(nn.OptimizedLSTMCell(16), name="lstm")(x, seq_lengths=seq_lengths)
        h = h[jnp.arange(x.shape[0]), seq_lengths - 1]  # output at the last valid step
        Stack = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=3)
        h, _ = Stack(name="stack")(h, None)
        return nn.Dense(3, name="head")(h)


def lstm_scan() -> ZooModel:
    model = LSTMClassifier()
    x = jax.random.normal(jax.random.key(1), (2, 8, 4), F32)
    lengths = jnp.array([8, 5])
    labels = jnp.array([1, 2])
    params = model.init(jax.random.key(0), x, lengths)

    def loss(params, x, lengths, labels):
        logits = model.apply(params, x, lengths)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return ZooModel("lstm_scan", "linen", lambda p, x, n, y: model.apply(p, x, n), params,
                    (x, lengths, labels), loss, layers=("lstm", "lstm/*OptimizedLSTMCell_0",
                                                        "stack", "stack/dense", "head"),
                    target="stack", module=model, layer_inputs=(x, lengths),
                    notes="the cell's path is lstm/OptimizedLSTMCell_0.scan_fn/...")


# --- linen: VAE (flax examples/vae style) ------------------------------------------------------

class VAE(nn.Module):
    latents: int = 4
    features: int = 8

    @nn.compact
    def __call__(self, x, z_rng):
        h = nn.relu(nn.Dense(16, name="enc_fc")(x))
        mean = nn.Dense(self.latents, name="enc_mean")(h)
        logvar = nn.Dense(self.latents, name="enc_logvar")(h)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, logvar.shape, logvar.dtype)
        h = nn.relu(nn.Dense(16, name="dec_fc")(z))
        return nn.Dense(self.features, name="dec_out")(h), mean, logvar


def vae() -> ZooModel:
    model = VAE()
    x = (jax.random.uniform(jax.random.key(1), (2, 8)) > 0.5).astype(F32)  # binary "pixels"
    z_rng = jax.random.PRNGKey(2)  # a legacy uint32 key, as the flax example has
    params = model.init(jax.random.key(0), x, z_rng)

    def loss(params, x, z_rng):
        logits, mean, logvar = model.apply(params, x, z_rng)
        bce = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)
        kld = -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1)
        return (bce + kld).mean()

    return ZooModel("vae", "linen", model.apply, params, (x, z_rng), loss,
                    layers=("enc_fc", "enc_mean", "enc_logvar", "dec_fc", "dec_out"),
                    target="dec_fc", module=model, layer_inputs=(x, z_rng))


# --- jraph: GCN + GraphNetwork on a padded GraphsTuple ----------------------------------------

class GraphNet(nn.Module):
    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        gcn = jraph.GraphConvolution(update_node_fn=nn.Dense(16, name="gcn"),
                                     add_self_edges=True)
        graph = gcn(graph)
        graph = graph._replace(nodes=jax.nn.relu(graph.nodes))

        def edge_fn(edges, sent, received, globals_):
            return jax.nn.relu(nn.Dense(8, name="edge_mlp")(
                jnp.concatenate([edges, sent, received, globals_], -1)))

        def node_fn(nodes, sent, received, globals_):
            return jax.nn.relu(nn.Dense(16, name="node_mlp")(
                jnp.concatenate([nodes, sent, received, globals_], -1)))

        def global_fn(nodes, edges, globals_):
            return nn.Dense(8, name="global_mlp")(jnp.concatenate([nodes, edges, globals_], -1))

        graph = jraph.GraphNetwork(edge_fn, node_fn, global_fn)(graph)
        return nn.Dense(1, name="readout")(graph.globals)[:, 0]


def _graph():
    # two graphs (3 nodes / 3 edges, 2 nodes / 1 edge), padded to 8 nodes, 6 edges, 3 graphs
    graph = jraph.GraphsTuple(
        nodes=jax.random.normal(jax.random.key(1), (5, 4), F32),
        edges=jax.random.normal(jax.random.key(2), (4, 2), F32),
        senders=jnp.array([0, 1, 2, 3]), receivers=jnp.array([1, 2, 0, 4]),
        n_node=jnp.array([3, 2]), n_edge=jnp.array([3, 1]),
        globals=jnp.zeros((2, 2), F32))
    return jraph.pad_with_graphs(graph, n_node=8, n_edge=6, n_graph=3)


def gnn() -> ZooModel:
    model = GraphNet()
    graph = _graph()
    targets = jnp.array([1.0, -1.0, 0.0], F32)
    params = model.init(jax.random.key(0), graph)

    def loss(params, graph, targets):
        pred = model.apply(params, graph)
        mask = jraph.get_graph_padding_mask(graph).astype(F32)
        return jnp.sum(mask * (pred - targets) ** 2) / jnp.sum(mask)

    return ZooModel("gnn", "jraph", lambda p, g, t: model.apply(p, g), params, (graph, targets),
                    loss, layers=("gcn", "edge_mlp", "node_mlp", "global_mlp", "readout"),
                    target="node_mlp", module=model, layer_inputs=(graph,),
                    notes="segment_sum aggregation; padding graph masked in the loss")


# --- Flax NNX: MLP with a list of Linear layers, Dropout, LayerNorm ---------------------------

class NNXMLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(din, dhidden, rngs=rngs),
                                nnx.Linear(dhidden, dhidden, rngs=rngs),
                                nnx.Linear(dhidden, dout, rngs=rngs)])
        self.norm = nnx.LayerNorm(dhidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.2)

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        x = nnx.gelu(self.layers[0](x))
        x = self.norm(nnx.relu(self.layers[1](x)))
        x = self.dropout(x, rngs=rngs, deterministic=rngs is None)  # no rngs: eval mode
        return self.layers[2](x)


def nnx_mlp() -> ZooModel:
    model = NNXMLP(6, 16, 3, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (2, 6), F32)
    labels = jnp.array([0, 1])
    key = jax.random.key(3)

    def apply(params, x, key):  # nnx's functional API: merge, call
        return nnx.merge(graphdef, params)(x, rngs=nnx.Rngs(dropout=key))

    def loss(params, x, key, labels):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, x, key),
                                                               labels).mean()

    return ZooModel("nnx_mlp", "nnx", lambda p, x, k, y: apply(p, x, k), params,
                    (x, key, labels), loss, layers=(), target=None,
                    attr_paths=("layers/0", "layers/1", "layers/2", "norm"),
                    notes="functional split/merge; NNX pushes no name scopes")


def nnx_mlp_module() -> ZooModel:
    """The same model passed as a module (NNX modules are pytrees): ``apply(model, x, key)``."""
    model = NNXMLP(6, 16, 3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6), F32)
    labels = jnp.array([0, 1])

    def apply(model, x, key):
        return model(x, rngs=nnx.Rngs(dropout=key))

    def loss(model, x, key, labels):
        return optax.softmax_cross_entropy_with_integer_labels(apply(model, x, key),
                                                               labels).mean()

    return ZooModel("nnx_mlp_module", "nnx", lambda p, x, k, y: apply(p, x, k), model,
                    (x, jax.random.key(3), labels), loss, layers=(), target=None,
                    module=model, layer_inputs=(x,),
                    attr_paths=("layers/0", "layers/1", "layers/2", "norm"),
                    notes="the module itself as params (grad/optax over an nnx.Module)")


# --- equinox: custom Module with a list of Linear layers, an eqx.nn.MLP, custom_jvp/vjp ------

@jax.custom_jvp
def safe_log(x):
    return jnp.log(jnp.maximum(x, 1e-30))


@safe_log.defjvp
def _safe_log_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return safe_log(x), t / jnp.maximum(x, 1e-30)


@jax.custom_vjp
def clip_gradient(lo, hi, x):
    return x  # identity forward; gradient clipped to [lo, hi] (the JAX docs' example)


def _clip_fwd(lo, hi, x):
    return x, (lo, hi)


def _clip_bwd(res, g):
    lo, hi = res
    return None, None, jnp.clip(g, lo, hi)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


class EqxClassifier(eqx.Module):
    layers: list
    mlp: eqx.nn.MLP

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        # dtype given: equinox's default float dtype is float64 once x64 is on
        self.layers = [eqx.nn.Linear(6, 16, key=k1, dtype=F32),
                       eqx.nn.Linear(16, 16, key=k2, dtype=F32)]
        self.mlp = eqx.nn.MLP(16, 3, width_size=16, depth=2, activation=jax.nn.gelu, key=k3,
                              dtype=F32)

    def __call__(self, x):  # one example; vmapped over the batch
        for i, layer in enumerate(self.layers):
            with jax.named_scope(f"layers_{i}"):  # how a user gives equinox layers a path
                x = jax.nn.relu(layer(x))
        x = clip_gradient(-1.0, 1.0, x)
        with jax.named_scope("mlp"):
            logits = self.mlp(x)
        return safe_log(jax.nn.softmax(logits))  # log-probabilities


def equinox_mlp() -> ZooModel:
    model = EqxClassifier(jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x = jax.random.normal(jax.random.key(1), (2, 6), F32)
    labels = jnp.array([2, 0])

    def apply(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    def loss(params, x, labels):
        logp = apply(params, x)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()

    return ZooModel("equinox_mlp", "equinox", lambda p, x, y: apply(p, x), params, (x, labels),
                    loss, layers=("layers_0", "layers_1", "mlp", "eqx.nn.Linear"),
                    target="layers_1", module=model, layer_inputs=(x[0],),
                    attr_paths=("layers/0", "layers/1", "mlp/layers/0"),
                    notes="custom_jvp safe_log, custom_vjp clip_gradient, jax.named_scope")


BUILDERS: dict[str, Callable[[], ZooModel]] = {
    f.__name__: f for f in (attention_encoder, transformer_lm, cnn_train, cnn_eval, lstm_scan,
                            vae, gnn, nnx_mlp, nnx_mlp_module, equinox_mlp)
}


def build_all() -> list[ZooModel]:
    return [build() for build in BUILDERS.values()]


# --- helpers -----------------------------------------------------------------------------------

_WRAPPER = re.compile(r"[A-Za-z_]\w*\(")


def traced_paths(model: ZooModel) -> set[str]:
    """Every module path (name stack, transform wrappers such as ``jvp(...)`` removed) of the
    equations of ``apply``'s jaxpr, sub-jaxprs (scan, custom_jvp, pjit…) included."""
    from jax.extend import core as jex_core

    closed = jax.make_jaxpr(model.apply)(model.params, *model.inputs)
    paths: set[str] = set()

    def walk(jaxpr, prefix):
        for eqn in jaxpr.eqns:
            own = _WRAPPER.sub("", str(eqn.source_info.name_stack)).replace(")", "")
            path = "/".join(p for p in (prefix, own) if p)
            paths.add(path)
            for sub in jex_core.jaxprs_in_params(eqn.params):
                walk(sub, path)

    walk(closed.jaxpr, "")
    return paths


def path_matches(pattern: str, path: str) -> bool:
    """A ``Rule(path=pattern)`` match: the whole path or a run of consecutive components."""
    parts = [p for p in path.split("/") if p]
    return fnmatch.fnmatchcase(path, pattern) or any(
        fnmatch.fnmatchcase("/".join(parts[i:j]), pattern)
        for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))


def cast_floats(tree, dtype):
    """Every float leaf of ``tree`` cast to ``dtype`` (to run a model natively in bf16)."""
    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree_util.tree_map(cast, tree)
