"""A block-sparse transformer language model trained with data and head (tensor) parallelism.

:class:`BlockSparseLM` stacks :class:`~dp2ejax.attention.BlockSparseTransformerBlock` s between a
token (and learned position) embedding and a vocabulary projection. Its parameters are named
logically by :func:`param_logical_axes` (attention projections split on ``heads`` /
``kv_heads``, the MLP on ``mlp``, embeddings and norms replicated) and placed on a mesh by the
logical rules of :mod:`dp2ejax.parallel.mesh` (:func:`param_shardings`): on a
``{"data": 2, "model": 4}`` mesh each device holds a quarter of the heads and of the MLP hidden
units, and a half of the batch. :func:`make_train_step` compiles one optimizer step with those
shardings as ``in_shardings``/``out_shardings`` (the optimizer state's copies of the parameters
sharded like the parameters); GSPMD inserts the collectives (the data-parallel gradient
all-reduce, the reductions over the head-split projections). :func:`init_sharded` creates
parameters and optimizer state already sharded, and :func:`associative_recall` makes a small
synthetic task whose targets need attention far back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dp2ejax.attention.layers import BlockSparseTransformerBlock
from dp2ejax.attention.mask import BlockMask
from dp2ejax.parallel.mesh import DEFAULT_RULES, logical_sharding, logical_spec

__all__ = ["BlockSparseLM", "TrainStep", "associative_recall", "init_sharded", "make_train_step",
           "opt_state_shardings", "param_logical_axes", "param_shardings"]

Rules = Sequence[tuple[str, Sequence[str]]]

# (module name, parameter name) -> logical axes; matched on the last two names of a path
_ATTENTION_IN = ("query", "key", "value")
_LOGICAL_AXES: dict[tuple[str, str], tuple[str | None, ...]] = {
    ("query", "kernel"): (None, "heads", None),
    ("query", "bias"): ("heads", None),
    ("key", "kernel"): (None, "kv_heads", None),
    ("key", "bias"): ("kv_heads", None),
    ("value", "kernel"): (None, "kv_heads", None),
    ("value", "bias"): ("kv_heads", None),
    ("out", "kernel"): ("heads", None, None),
    ("out", "bias"): (None,),
    ("mlp_in", "kernel"): (None, "mlp"),
    ("mlp_in", "bias"): ("mlp",),
    ("mlp_out", "kernel"): ("mlp", None),
    ("mlp_out", "bias"): (None,),
    ("embed", "embedding"): (None, None),
    ("position", "embedding"): (None, None),
    ("unembed", "kernel"): (None, None),
    ("unembed", "bias"): (None,),
}
_NORM_PARAMS = ("scale", "bias")  # of any module whose name ends in "norm": replicated


class BlockSparseLM(nn.Module):
    """A decoder language model of :class:`BlockSparseTransformerBlock` s.

    Tokens ``[batch, length]`` -> token embedding (``embed``) + learned position embedding
    (``position``) -> ``depth`` blocks ``block_0``, ``block_1``, ... -> LayerNorm
    (``final_norm``) -> vocabulary projection (``unembed``) -> logits ``[batch, length,
    vocab_size]``. ``length`` must equal the mask's ``q_len`` (the mask is static structure).

    Attributes:
      vocab_size: number of token ids.
      width: features of the residual stream.
      depth: number of transformer blocks.
      num_heads: query heads per block.
      mask: the :class:`~dp2ejax.attention.BlockMask` of every block's self-attention (square;
        a causal one for a language model).
      head_dim: features per head (default ``width // num_heads``).
      num_kv_heads: key/value heads (default ``num_heads``).
      mlp_ratio: MLP hidden width over ``width``.
      layer_norm_epsilon: epsilon of every LayerNorm.
      dtype, param_dtype: computation and parameter dtypes (as in Flax).
      implementation: attention implementation, ``"xla"`` or ``"pallas"``.

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=2, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> tokens = jnp.zeros((2, 64), jnp.int32)
      >>> params = jax.jit(model.init)(jax.random.key(0), tokens)
      >>> jax.jit(model.apply)(params, tokens).shape
      (2, 64, 32)
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mask: BlockMask
    head_dim: int | None = None
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    layer_norm_epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str = "xla"

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits ``[batch, length, vocab_size]`` of int tokens ``[batch, length]``."""
        for name in ("vocab_size", "width", "depth", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockSparseLM {name} must be a positive int, got {value!r}")
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"BlockSparseLM expects int tokens [batch, length], got "
                             f"{tokens.dtype} {tokens.shape}")
        if tokens.shape[1] != self.mask.q_len:
            raise ValueError(f"BlockSparseLM tokens have length {tokens.shape[1]} but the mask "
                             f"is for q_len={self.mask.q_len}")
        param = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Embed(self.vocab_size, self.width, name="embed", **param)(tokens)
        positions = nn.Embed(self.mask.q_len, self.width, name="position", **param)(
            jnp.arange(tokens.shape[1]))
        x = x + positions[None]
        for i in range(self.depth):
            x = BlockSparseTransformerBlock(
                width=self.width, num_heads=self.num_heads, mask=self.mask,
                head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
                mlp_ratio=self.mlp_ratio, layer_norm_epsilon=self.layer_norm_epsilon,
                implementation=self.implementation, name=f"block_{i}", **param)(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="final_norm", **param)(x)
        return nn.Dense(self.vocab_size, name="unembed", **param)(x)


def param_logical_axes(params) -> Any:
    """The logical axis names of every parameter of a :class:`BlockSparseLM`, from its path.

    Parameters are classified by their module and parameter names (the last two keys of the
    path): ``query`` kernels ``[width, heads, head_dim]`` -> ``(None, "heads", None)``,
    ``key``/``value`` kernels -> ``(None, "kv_heads", None)``, their biases ``("heads" |
    "kv_heads", None)``; ``out`` kernels ``[heads, head_dim, width]`` -> ``("heads", None,
    None)``; ``mlp_in`` ``(None, "mlp")`` (bias ``("mlp",)``), ``mlp_out`` ``("mlp", None)``;
    embeddings, the vocabulary projection and LayerNorms (modules named ``*norm``) replicated
    (all ``None``). So head-parallel attention and a column-then-row split MLP (Megatron).

    Args:
      params: the model's variables (``{"params": ...}`` from ``init``, or the inner dict; any
        pytree of arrays or ``jax.ShapeDtypeStruct`` s whose paths end in module / parameter
        names).

    Returns:
      A pytree of the structure of ``params`` with a tuple of names (or None) per parameter,
      one per axis.

    Raises:
      ValueError: for a parameter whose path it does not know (naming the path), or whose
        number of dimensions does not match its class.

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=1, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), int))
      >>> axes = param_logical_axes(shapes)["params"]["block_0"]
      >>> axes["attention"]["query"]["kernel"], axes["mlp_out"]["kernel"]
      ((None, 'heads', None), ('mlp', None))
    """
    def classify(path, leaf):
        names = [_key_name(key) for key in path]
        where = "/".join(names)
        if len(names) < 2:
            raise ValueError(f"param_logical_axes: cannot classify parameter {where!r}: "
                             f"expected a path ending in module/parameter names")
        module, name = names[-2], names[-1]
        if module.endswith("norm") and name in _NORM_PARAMS:
            axes = (None,) * len(leaf.shape)
        elif (module, name) in _LOGICAL_AXES:
            axes = _LOGICAL_AXES[(module, name)]
        else:
            known = sorted({f"{m}/{n}" for m, n in _LOGICAL_AXES} | {"*norm/scale",
                                                                     "*norm/bias"})
            raise ValueError(f"param_logical_axes: unknown parameter {where!r} (shape "
                             f"{tuple(leaf.shape)}); known module/parameter names: "
                             f"{', '.join(known)}")
        if len(axes) != len(leaf.shape):
            raise ValueError(f"param_logical_axes: parameter {where!r} has shape "
                             f"{tuple(leaf.shape)} but its class {module}/{name} expects "
                             f"{len(axes)} axes {axes}")
        return axes
    return jax.tree_util.tree_map_with_path(classify, params)


def param_shardings(params, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """``NamedSharding`` s of a :class:`BlockSparseLM` 's parameters on ``mesh``.

    Each parameter's :func:`param_logical_axes` are mapped to mesh axes by ``rules``
    (:func:`~dp2ejax.parallel.mesh.logical_spec`: with :data:`DEFAULT_RULES` heads, kv_heads and
    mlp split over ``model``; a logical axis whose mesh axis is absent stays unsplit).

    Args:
      params: the model's variables (arrays or ``jax.ShapeDtypeStruct`` s).
      mesh: the device mesh.
      rules: ``(logical name, mesh axes)`` pairs (default :data:`DEFAULT_RULES`).

    Returns:
      A pytree of the structure of ``params`` of ``NamedSharding`` s.

    Raises:
      ValueError: naming the parameter, its axis and the mesh axis, when a split axis does not
        divide evenly (e.g. 2 key/value heads over ``model=4``: pass rules mapping
        ``kv_heads`` to ``()`` to replicate them).

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> from dp2ejax.parallel.mesh import make_mesh
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=1, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), int))
      >>> mesh = make_mesh({"data": 2, "model": 4}, devices=jax.devices()[:8])
      >>> shardings = param_shardings(shapes, mesh)["params"]["block_0"]
      >>> tuple(shardings["attention"]["out"]["kernel"].spec)
      ('model', None, None)
    """
    axes = param_logical_axes(params)

    def one(path, leaf, names):
        sharding = logical_sharding(names, mesh, rules)
        for dim, (axis, name) in enumerate(zip(sharding.spec, names, strict=False)):
            if axis is not None and leaf.shape[dim] % mesh.shape[axis]:
                where = "/".join(_key_name(key) for key in path)
                raise ValueError(f"param_shardings: parameter {where!r} axis {dim} ({name!r}, "
                                 f"size {leaf.shape[dim]}) does not divide evenly over mesh "
                                 f"axis {axis!r} of size {mesh.shape[axis]}; change the model "
                                 f"or map {name!r} to another mesh axis in rules")
        return sharding
    return jax.tree_util.tree_map_with_path(one, params, axes)


def opt_state_shardings(optimizer: optax.GradientTransformation, params, mesh: Mesh,
                        rules: Rules = DEFAULT_RULES) -> Any:
    """``NamedSharding`` s of ``optimizer.init(params)``: copies of the parameters sharded like
    them, everything else (step counts, scalars) replicated.

    The state's shapes come from ``jax.eval_shape(optimizer.init, params)`` (nothing is
    allocated). A state leaf whose path ends with a parameter's path and has its shape (Adam's
    ``mu``/``nu``, momentum traces...) gets that parameter's sharding; any other leaf is
    replicated (correct for any optimizer; for factored statistics, such as Adafactor's, it
    costs memory rather than correctness).

    Args:
      optimizer: an optax ``GradientTransformation``.
      params: the model's variables (arrays or ``jax.ShapeDtypeStruct`` s).
      mesh: the device mesh.
      rules: logical axis rules (default :data:`DEFAULT_RULES`).

    Returns:
      A pytree of the structure of the optimizer state, of ``NamedSharding`` s.

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> from dp2ejax.parallel.mesh import make_mesh
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=1, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), int))
      >>> mesh = make_mesh({"data": 2, "model": 4}, devices=jax.devices()[:8])
      >>> adam = opt_state_shardings(optax.adam(1e-3), shapes, mesh)[0]
      >>> tuple(adam.mu["params"]["block_0"]["mlp_in"]["kernel"].spec), tuple(adam.count.spec)
      ((None, 'model'), ())
    """
    shardings = param_shardings(params, mesh, rules)
    by_path = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        by_path[_path_names(path)] = (tuple(leaf.shape), None)
    for path, sharding in jax.tree_util.tree_leaves_with_path(shardings):
        names = _path_names(path)
        by_path[names] = (by_path[names][0], sharding)
    depths = sorted({len(names) for names in by_path}, reverse=True)
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        names = _path_names(path)
        for depth in depths:
            shape, sharding = by_path.get(names[-depth:], (None, None))
            if sharding is not None and shape == tuple(leaf.shape):
                return sharding
        return replicated
    state = jax.eval_shape(optimizer.init, params)
    return jax.tree_util.tree_map_with_path(one, state)


def init_sharded(model: BlockSparseLM, optimizer: optax.GradientTransformation, mesh: Mesh,
                 key: jax.Array, sample_tokens: jax.Array,
                 rules: Rules = DEFAULT_RULES) -> tuple[Any, Any]:
    """Parameters and optimizer state created directly in their shardings.

    ``model.init`` and ``optimizer.init`` run in one ``jax.jit`` whose ``out_shardings`` are
    :func:`param_shardings` and :func:`opt_state_shardings`, so each device computes only its
    shards and no device ever holds the whole model. With JAX's default partitionable
    threefry, the values equal those of an unsharded ``model.init(key, sample_tokens)``.

    Args:
      model: the :class:`BlockSparseLM`.
      optimizer: an optax ``GradientTransformation``.
      mesh: the device mesh.
      key: PRNG key of the initialisation.
      sample_tokens: int tokens ``[batch, length]`` (or a ``jax.ShapeDtypeStruct``) fixing the
        shapes (only the shape and dtype are used).
      rules: logical axis rules (default :data:`DEFAULT_RULES`).

    Returns:
      ``(params, opt_state)``, sharded on ``mesh``.

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> from dp2ejax.parallel.mesh import make_mesh
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=1, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> mesh = make_mesh({"data": 2, "model": 4}, devices=jax.devices()[:8])
      >>> params, opt_state = init_sharded(model, optax.adam(1e-3), mesh, jax.random.key(0),
      ...                                  jnp.zeros((8, 64), jnp.int32))
      >>> q = params["params"]["block_0"]["attention"]["query"]["kernel"]
      >>> q.shape, q.addressable_shards[0].data.shape
      ((32, 4, 8), (32, 1, 8))
    """
    if not hasattr(sample_tokens, "dtype"):
        sample_tokens = jnp.asarray(sample_tokens)
    sample = jax.ShapeDtypeStruct(tuple(sample_tokens.shape), sample_tokens.dtype)
    shapes = jax.eval_shape(model.init, key, sample)
    out_shardings = (param_shardings(shapes, mesh, rules),
                     opt_state_shardings(optimizer, shapes, mesh, rules))

    def init(key):
        params = model.init(key, jnp.zeros(sample.shape, sample.dtype))
        return params, optimizer.init(params)
    return jax.jit(init, out_shardings=out_shardings)(key)


def make_train_step(model: BlockSparseLM, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: Rules = DEFAULT_RULES, *, donate: bool = False) -> TrainStep:
    """A jitted, sharded training step ``(params, opt_state, tokens, targets) -> (params,
    opt_state, loss)``.

    The loss is the mean softmax cross-entropy (``optax``) of the model's logits (in float32)
    against int ``targets``; one ``optimizer`` update is applied. ``in_shardings`` and
    ``out_shardings`` fix the layout: parameters per :func:`param_shardings`, optimizer state
    per :func:`opt_state_shardings`, tokens and targets ``("batch", None)`` (batch split over
    ``data``), the loss replicated. GSPMD partitions the rest: each device computes its batch
    shard for its heads and MLP units, gradients are summed over ``data`` (all-reduce) and the
    head/MLP partial sums over ``model``.

    Args:
      model: the :class:`BlockSparseLM` (its mask fixes the length).
      optimizer: an optax ``GradientTransformation``.
      mesh: the device mesh.
      rules: logical axis rules (default :data:`DEFAULT_RULES`).
      donate: donate ``params`` and ``opt_state`` buffers to the outputs (saves memory; the
        inputs are then deleted).

    Returns:
      A :class:`TrainStep`: called, it checks the batch (a ValueError naming the batch size and
      the mesh axis when the batch does not divide over it) and runs the ``jax.jit`` ted step;
      ``.lower(...)`` lowers it for inspection, ``.jitted`` is the jitted function.

    Example:
      >>> from dp2ejax.attention.patterns import local
      >>> from dp2ejax.parallel.mesh import make_mesh
      >>> model = BlockSparseLM(vocab_size=32, width=32, depth=1, num_heads=4,
      ...                       mask=local(64, 16, block_size=16, causal=True))
      >>> mesh = make_mesh({"data": 2, "model": 4}, devices=jax.devices()[:8])
      >>> tokens, targets = associative_recall(jax.random.key(0), 8, 64, 32)
      >>> optimizer = optax.adam(1e-2)
      >>> params, opt_state = init_sharded(model, optimizer, mesh, jax.random.key(1), tokens)
      >>> step = make_train_step(model, optimizer, mesh)
      >>> params, opt_state, first = step(params, opt_state, tokens, targets)
      >>> params, opt_state, second = step(params, opt_state, tokens, targets)
      >>> first.shape, first.sharding.is_fully_replicated, bool(second < first)
      ((), True, True)
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, model.mask.q_len), jnp.int32))
    p_shardings = param_shardings(shapes, mesh, rules)
    o_shardings = opt_state_shardings(optimizer, shapes, mesh, rules)
    data = logical_sharding(("batch", None), mesh, rules)
    batch_axis = logical_spec(("batch",), mesh, rules)[0]
    replicated = NamedSharding(mesh, P())

    def loss_fn(params, tokens, targets):
        logits = model.apply(params, tokens).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, in_shardings=(p_shardings, o_shardings, data, data),
                     out_shardings=(p_shardings, o_shardings, replicated),
                     donate_argnums=(0, 1) if donate else ())
    return TrainStep(jitted, mesh, batch_axis)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The step of :func:`make_train_step`: checks the batch, then runs the jitted step.

    Calling it runs ``jitted(params, opt_state, tokens, targets)``; :meth:`lower` lowers it
    (for ``.compile().as_text()``). Both first check that ``tokens`` and ``targets`` are
    ``[batch, length]`` of the same shape and that ``batch`` divides over the data mesh axis,
    raising a ValueError that names them (``jax.jit`` would otherwise fail on the sharding).

    Attributes:
      jitted: the ``jax.jit`` ted step with its ``in_shardings`` / ``out_shardings``.
      mesh: the device mesh.
      batch_axis: the mesh axis the batch is split over (None: unsplit).
    """

    jitted: Callable
    mesh: Mesh
    batch_axis: str | None

    def __call__(self, params, opt_state, tokens, targets):
        """One step: ``(params, opt_state, loss)``."""
        self._check(tokens, targets)
        return self.jitted(params, opt_state, tokens, targets)

    def lower(self, params, opt_state, tokens, targets):
        """``jitted.lower(...)`` after the same checks."""
        self._check(tokens, targets)
        return self.jitted.lower(params, opt_state, tokens, targets)

    def _check(self, tokens, targets) -> None:
        shape, target_shape = tuple(jnp.shape(tokens)), tuple(jnp.shape(targets))
        if len(shape) != 2 or shape != target_shape:
            raise ValueError(f"train step: tokens and targets must both be [batch, length], "
                             f"got {shape} and {target_shape}")
        if self.batch_axis is not None and shape[0] % self.mesh.shape[self.batch_axis]:
            raise ValueError(f"train step: batch size {shape[0]} does not divide evenly over "
                             f"mesh axis {self.batch_axis!r} of size "
                             f"{self.mesh.shape[self.batch_axis]}")


def associative_recall(key: jax.Array, batch: int, length: int, vocab: int, *,
                       num_pairs: int | None = None) -> tuple[jax.Array, jax.Array]:
    """A synthetic associative-recall task: look a key up in a list of pairs far back.

    Each sequence starts with ``num_pairs`` key/value pairs ``k_1 v_1 k_2 v_2 ...`` (distinct
    keys from ``[0, vocab // 2)``, values uniform in ``[vocab // 2, vocab)``), followed by
    ``length - 2 * num_pairs`` query keys drawn from the ``k_i``. The target at a query
    position ``t >= 2 * num_pairs`` is the value paired with the query key: the model must find
    that key up to ``t`` positions back (content-based lookup, then the next position). In the
    pair prefix the target is the token itself (a local, easily learnt warm-up). A model that
    cannot look back guesses a value: loss ``log(vocab // 2)`` on the query positions; one that
    recalls reaches 0. Needs a mask that reaches back to the pairs (e.g. ``causal``).

    Args:
      key: PRNG key; the same key gives the same task.
      batch: number of sequences.
      length: sequence length, ``> 2 * num_pairs``.
      vocab: vocabulary size (even split: keys below ``vocab // 2``, values above), >= 4.
      num_pairs: pairs per sequence (default ``length // 4``: half of each sequence is
        queries), at most ``vocab // 2``.

    Returns:
      ``(tokens, targets)``, both int32 ``[batch, length]``.

    Example:
      >>> tokens, targets = associative_recall(jax.random.key(0), 1, 12, 8, num_pairs=3)
      >>> int(tokens[0, 6]) in tokens[0, :6:2].tolist()
      True
      >>> pairs = dict(zip(tokens[0, :6:2].tolist(), tokens[0, 1:6:2].tolist()))
      >>> targets[0, 6:].tolist() == [pairs[k] for k in tokens[0, 6:].tolist()]
      True
    """
    for name, value in (("batch", batch), ("length", length), ("vocab", vocab)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"associative_recall {name} must be a positive int, got {value!r}")
    if vocab < 4:
        raise ValueError(f"associative_recall vocab must be >= 4 (keys and values), got {vocab}")
    num_pairs = length // 4 if num_pairs is None else num_pairs
    num_keys = vocab // 2
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or not (
            1 <= num_pairs <= num_keys and 2 * num_pairs < length):
        raise ValueError(f"associative_recall num_pairs must be an int in [1, {num_keys}] "
                         f"(vocab // 2) with 2 * num_pairs < length={length}, got {num_pairs!r}")
    return _associative_recall(key, batch, length, vocab, num_pairs)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _associative_recall(key, batch: int, length: int, vocab: int, num_pairs: int):
    """:func:`associative_recall` after its checks, compiled once per shape."""
    num_keys, num_queries = vocab // 2, length - 2 * num_pairs

    def one(key):
        key_keys, key_values, key_queries = jax.random.split(key, 3)
        keys = jax.random.permutation(key_keys, num_keys)[:num_pairs]
        values = jax.random.randint(key_values, (num_pairs,), num_keys, vocab)
        which = jax.random.randint(key_queries, (num_queries,), 0, num_pairs)
        pairs = jnp.stack([keys, values], axis=1).reshape(-1)
        tokens = jnp.concatenate([pairs, keys[which]])
        targets = jnp.concatenate([pairs, values[which]])
        return tokens.astype(jnp.int32), targets.astype(jnp.int32)
    return jax.vmap(one)(jax.random.split(key, batch))


def _key_name(key) -> str:
    """The name of one path entry (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(path) -> tuple[str, ...]:
    return tuple(_key_name(key) for key in path)
