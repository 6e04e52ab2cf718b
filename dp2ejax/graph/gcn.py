"""Graph convolutional networks (Flax linen) and a node-classification training helper.

A GCN layer (Kipf & Welling, ICLR 2017) computes ``act(P @ (x W) + b)`` with a propagation
matrix ``P`` (usually ``D̃^-1/2 (A + I) D̃^-1/2``) given at call time: a dense ``[n, n]`` array
or a :class:`dp2ejax.sparse.CSR`. Module names are stable (``input``, ``layer_0`` …
``layer_{depth-1}``, ``norm_i``, ``output``) so that :class:`dp2ejax.PrecisionPolicy` rules by
module path (``Rule("bf16", path="layer_3")``) and :func:`dp2ejax.cestac.analyze_layers` can
address each layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dp2ejax.arith.emulate import emulate
from dp2ejax.arith.policy import PrecisionPolicy

NORMS: tuple[str, ...] = ("none", "pairnorm", "layernorm")


def propagate(P: Any, h: jax.Array) -> jax.Array:
    """``P @ h`` for a dense ``P`` (NumPy or JAX) or any matrix type with ``@`` (``CSR``)."""
    if isinstance(P, np.ndarray | list | tuple):
        P = jnp.asarray(P)
    shape = tuple(getattr(P, "shape", ()))
    n = h.shape[0]
    if shape != (n, n):
        raise ValueError(
            f"P: expected a propagation matrix of shape ({n}, {n}) to match features of shape "
            f"{h.shape}, got shape {shape}")
    return P @ h


def emulation_operator(P: Any) -> Any:
    """``P`` as :func:`dp2ejax.emulate` should see it: a ``CSR`` with degree buckets is given its
    segment-sum product (one rounding per row sum, as a dense matmul with ``exact``
    accumulation, and a program that compiles fast), other operators are returned as they are.
    """
    without_buckets = getattr(P, "without_buckets", None)
    if getattr(P, "buckets", None) is not None and callable(without_buckets):
        return without_buckets()
    return P


class GCNLayer(nn.Module):
    """One graph convolution ``act(P @ (x W) + b)`` (Kipf & Welling 2017).

    Called as ``layer(x, P)`` with ``x`` of shape ``[n, f_in]`` and ``P`` of shape ``[n, n]``.
    Computes in the promoted dtype of ``x`` and the parameters (float64 inputs and parameters
    give a float64 layer).

    Attributes:
      features: output features ``f_out``.
      use_bias: add a bias ``b`` after propagation.
      activation: applied last (``None``: linear).
      kernel_init, bias_init: initialisers (Glorot uniform and zeros, as in Kipf & Welling).
      param_dtype: dtype of the parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> P = jnp.full((3, 3), 1 / 3)
      >>> layer = GCNLayer(2)
      >>> params = layer.init(jax.random.key(0), jnp.ones((3, 4)), P)
      >>> jax.tree_util.tree_map(jnp.shape, params)["params"]
      {'bias': (2,), 'kernel': (4, 2)}
      >>> y = layer.apply(params, jnp.eye(3, 4), P)
      >>> bool(jnp.allclose(y[0], y[1]))               # P averages every node alike
      True
    """

    features: int
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] | None = None
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, P: Any) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x: expected node features of shape [n, f], got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        h = propagate(P, x.astype(dtype) @ kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            h = h + bias.astype(h.dtype)
        if self.activation is not None:
            h = self.activation(h)
        return h


class PairNorm(nn.Module):
    """PairNorm (Zhao & Akoglu, ICLR 2020): center the node features, then rescale them so that
    their root mean square row norm is ``scale``.

    ``x_c = x - mean_i x_i``, ``out = scale · x_c / sqrt(mean_i ‖x_c,i‖² + epsilon)``. It keeps
    the total pairwise squared distance constant, which counters oversmoothing.

    Example:
      >>> import jax.numpy as jnp
      >>> y = PairNorm(scale=2.0).apply({}, jnp.array([[1.0, 0.0], [3.0, 0.0]]))
      >>> jnp.round(y, 6).tolist()
      [[-2.0, 0.0], [2.0, 0.0]]
    """

    scale: float = 1.0
    epsilon: float = 1e-12

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x - jnp.mean(x, axis=0, keepdims=True)
        mean_square_norm = jnp.mean(jnp.sum(x * x, axis=-1))
        return self.scale * x / jnp.sqrt(mean_square_norm + self.epsilon)


class GCN(nn.Module):
    """A deep GCN: input projection, ``depth`` graph convolutions, a linear output layer.

    ``h_0 = act(input(x))``; for ``i < depth``:
    ``h_{i+1} = norm_i(layer_i(dropout(h_i), P) [+ h_i if residual])``; logits
    ``output(h_depth)``. Modules: ``input`` and ``output`` (``nn.Dense``), ``layer_i``
    (:class:`GCNLayer`), ``norm_i`` (:class:`PairNorm` or ``nn.LayerNorm``), ``dropout_i``.

    Attributes:
      hidden: width of every hidden layer.
      num_classes: output logits per node.
      depth: number of graph convolutions (>= 0).
      residual: add each layer's input to its output (a skip connection).
      norm: ``"none"``, ``"pairnorm"`` or ``"layernorm"``, after each convolution.
      activation: non-linearity of the input projection and of every convolution (``None``:
        linear, i.e. an SGC-like model).
      dropout: dropout rate before each convolution (active with ``train=True``, which needs a
        ``"dropout"`` rng).

    Call: ``model.apply(variables, x, P, train=False, return_hidden=False)`` returns the
    ``[n, num_classes]`` logits, or ``(logits, hidden)`` with ``hidden`` the stacked
    ``[depth + 1, n, hidden]`` features ``h_0 … h_depth`` when ``return_hidden``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = GCN(hidden=8, num_classes=2, depth=3)
      >>> x, P = jnp.ones((5, 4)), jnp.eye(5)
      >>> variables = model.init(jax.random.key(0), x, P)
      >>> sorted(variables["params"])
      ['input', 'layer_0', 'layer_1', 'layer_2', 'output']
      >>> logits, hidden = model.apply(variables, x, P, return_hidden=True)
      >>> logits.shape, hidden.shape
      ((5, 2), (4, 5, 8))
    """

    hidden: int
    num_classes: int
    depth: int
    residual: bool = False
    norm: str = "none"
    activation: Callable[[jax.Array], jax.Array] | None = nn.relu
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, P: Any, *, train: bool = False,
                 return_hidden: bool = False):
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0:
            raise ValueError(f"depth: expected an int >= 0, got {self.depth!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout!r}")
        x = jnp.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x: expected node features of shape [n, f], got shape {x.shape}")
        h = nn.Dense(self.hidden, name="input")(x)
        if self.activation is not None:
            h = self.activation(h)
        hidden = [h]
        for i in range(self.depth):
            skip = h
            if self.dropout > 0:
                h = nn.Dropout(self.dropout, name=f"dropout_{i}")(h, deterministic=not train)
            h = GCNLayer(self.hidden, activation=self.activation, name=f"layer_{i}")(h, P)
            if self.residual:
                h = h + skip
            if self.norm == "pairnorm":
                h = PairNorm(name=f"norm_{i}")(h)
            elif self.norm == "layernorm":
                h = nn.LayerNorm(name=f"norm_{i}")(h)
            hidden.append(h)
        logits = nn.Dense(self.num_classes, name="output")(h)
        if return_hidden:
            return logits, jnp.stack(hidden)
        return logits


def _check_mask(mask, n: int, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(
            f"{name}: expected a boolean array of shape ({n},), got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one entry per node), got {mask.shape}")
    return mask


@dataclasses.dataclass(frozen=True)
class _Inputs:
    x: jax.Array
    labels: jax.Array
    train_mask: np.ndarray
    val_mask: np.ndarray


def _check_training_inputs(P, x, labels, train_mask, val_mask, steps, learning_rate) -> _Inputs:
    x = jnp.asarray(x)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x: expected float node features of shape [n, f], got shape {x.shape} and dtype "
            f"{x.dtype}")
    n = x.shape[0]
    shape = tuple(getattr(P, "shape", np.shape(P)))
    if shape != (n, n):
        raise ValueError(f"P: expected shape ({n}, {n}) to match x of shape {x.shape}, got {shape}")
    labels_host = np.asarray(labels)
    if labels_host.shape != (n,) or not np.issubdtype(labels_host.dtype, np.integer):
        raise ValueError(
            f"labels: expected integer class labels of shape ({n},), got shape "
            f"{labels_host.shape} and dtype {labels_host.dtype}")
    if labels_host.size and labels_host.min() < 0:
        raise ValueError(f"labels: expected non-negative classes, got min {labels_host.min()}")
    train_mask = _check_mask(train_mask, n, "train_mask")
    if not train_mask.any():
        raise ValueError("train_mask: selects no node; at least one training node is needed")
    val_mask = ~train_mask if val_mask is None else _check_mask(val_mask, n, "val_mask")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate!r}")
    return _Inputs(x, jnp.asarray(labels_host.astype(np.int32)), train_mask, val_mask)


def train_node_classifier(
    model: nn.Module,
    P: Any,
    x: jax.Array,
    labels: jax.Array,
    train_mask: jax.Array,
    *,
    steps: int = 200,
    learning_rate: float = 1e-2,
    seed: int = 0,
    policy: PrecisionPolicy | str | None = None,
    val_mask: jax.Array | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Trains ``model`` for full-batch node classification with Adam.

    The loss is the softmax cross-entropy averaged over the nodes of ``train_mask``. All steps
    run in one jitted ``lax.scan``. With ``policy`` the forward passes run under
    :func:`dp2ejax.emulate` ``(model.apply, policy)`` (straight-through gradients, as
    quantisation-aware training); a stochastic or random policy draws its rounding bits from
    ``seed``.

    Args:
      model: a Flax module called as ``model.apply(variables, x, P, train=...)`` returning
        ``[n, classes]`` logits (e.g. :class:`GCN`); ``train=True`` uses a ``"dropout"`` rng.
      P: ``[n, n]`` propagation matrix (dense or ``CSR``).
      x: ``[n, f]`` float node features.
      labels: ``[n]`` integer classes in ``[0, classes)``.
      train_mask: ``[n]`` boolean, the labelled training nodes.
      steps: optimisation steps.
      learning_rate: Adam's learning rate.
      seed: seed of the initialisation, dropout and random rounding.
      policy: optional precision policy (or format name) of the forward passes. A ``CSR`` ``P``
        then multiplies by segment sums (:func:`emulation_operator`).
      val_mask: ``[n]`` boolean validation nodes (default: those not in ``train_mask``).

    Returns:
      ``(variables, history)``: the trained variables and a dict of NumPy arrays of length
      ``steps``: ``"loss"`` (training loss before each update), ``"train_accuracy"`` and
      ``"val_accuracy"`` (of the updated model, evaluation mode; NaN when ``val_mask`` is
      empty). ``history["train_accuracy"][-1]`` is the returned model's.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> mask = jnp.array([True, False, True, False])
      >>> _, history = train_node_classifier(GCN(8, 2, depth=1), jnp.eye(4), x, labels, mask,
      ...                                    steps=50, learning_rate=0.05)
      >>> float(history["train_accuracy"][-1]), float(history["val_accuracy"][-1])
      (1.0, 1.0)
    """
    inputs = _check_training_inputs(P, x, labels, train_mask, val_mask, steps, learning_rate)
    x = inputs.x
    if isinstance(P, np.ndarray | list | tuple):
        P = jnp.asarray(P, x.dtype)
    if policy is not None:
        P = emulation_operator(P)
    key = jax.random.key(seed)
    init_key, loop_key = jax.random.split(key)
    variables = model.init(init_key, x, P)
    logits = model.apply(variables, x, P)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"model: expected [n, classes] logits, got shape {logits.shape}")
    classes = logits.shape[-1]
    if int(np.max(np.asarray(inputs.labels))) >= classes:
        raise ValueError(
            f"labels: expected classes in [0, {classes}) (the model's outputs), got max "
            f"{int(np.max(np.asarray(inputs.labels)))}")
    emulated = policy is not None
    apply = emulate(model.apply, policy) if emulated else model.apply
    labels_ = inputs.labels
    train_w = jnp.asarray(inputs.train_mask, x.dtype)
    val_w = jnp.asarray(inputs.val_mask, x.dtype)
    optimizer = optax.adam(learning_rate)

    # P is an argument of the jitted loop, not a constant closed over: its arrays may be
    # sharded over devices of several processes (dp2ejax.parallel.PartitionedCSR).
    def forward(params, P, step_key, train):
        kwargs = {"train": train, "rngs": {"dropout": step_key}}
        if emulated:
            kwargs["rounding_key"] = jax.random.fold_in(step_key, 1)
        return apply(params, x, P, **kwargs)

    def loss_fn(params, P, step_key):
        out = forward(params, P, step_key, True)
        per_node = optax.softmax_cross_entropy_with_integer_labels(out, labels_)
        return jnp.sum(per_node * train_w) / jnp.sum(train_w)

    def accuracy(out, weights):
        correct = (jnp.argmax(out, axis=-1) == labels_).astype(weights.dtype)
        total = jnp.sum(weights)
        return jnp.where(total > 0, jnp.sum(correct * weights) / jnp.maximum(total, 1), jnp.nan)

    @jax.jit
    def run(variables, keys, P):
        def step(carry, step_key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, P, step_key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            out = forward(params, P, jax.random.fold_in(step_key, 2), False)
            return (params, opt_state), (loss, accuracy(out, train_w), accuracy(out, val_w))

        carry, history = jax.lax.scan(step, (variables, optimizer.init(variables)), keys)
        return carry[0], history

    variables, (loss, train_acc, val_acc) = run(variables, jax.random.split(loop_key, steps), P)
    history = {"loss": np.asarray(loss), "train_accuracy": np.asarray(train_acc),
               "val_accuracy": np.asarray(val_acc)}
    return variables, history
