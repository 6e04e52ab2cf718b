"""Block-sparse transformer training with data and head parallelism (8 host CPU devices, see
tests/conftest.py): sharded steps against an unsharded reference, where the shards lie, which
collectives the compiled step contains, errors, and training on the synthetic task."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dp2ejax.attention.patterns import causal
from dp2ejax.parallel.mesh import make_mesh
from dp2ejax.parallel.transformer import (
    BlockSparseLM,
    associative_recall,
    init_sharded,
    make_train_step,
    opt_state_shardings,
    param_logical_axes,
    param_shardings,
)

BATCH, LENGTH, BLOCK, WIDTH, HEADS, DEPTH, VOCAB = 8, 64, 16, 32, 4, 2, 32
STEPS = 3
MESHES = {"data2_model4": {"data": 2, "model": 4}, "data8": {"data": 8},
          "data4_model2": {"data": 4, "model": 2}}
# Sharded and unsharded steps differ only in the order of float32 sums (gradients summed over
# `data` shards, head/MLP partial sums over `model`). Measured after 3 Adam steps at lr 3e-3 on
# all three meshes: loss rel. diff <= 2.6e-7, params max abs diff <= 2.3e-7 (params are O(0.1-1):
# a few ulp), so LOSS_RTOL and PARAM_ATOL leave a ~40x margin. The exception is the key biases:
# they shift every score of a query by the same amount, which softmax ignores, so their gradient
# is zero in exact arithmetic and rounding noise (~1e-9) of either sign; Adam normalises it into
# an O(lr) step of random sign (measured up to 1.7e-3 apart after 3 steps). Bounded by
# 2 * lr * STEPS.
LR = 3e-3
LOSS_RTOL, PARAM_ATOL, KEY_BIAS_ATOL = 1e-5, 1e-5, 2 * LR * STEPS
COLLECTIVES = "all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")


@pytest.fixture(scope="module")
def model():
    # causal over 4 blocks of 16: 10 of 16 blocks kept, 4 of them partial (element mask)
    return BlockSparseLM(vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                         mask=causal(LENGTH, block_size=BLOCK))


@pytest.fixture(scope="module")
def optimizer():
    return optax.adam(LR)


@pytest.fixture(scope="module")
def batches():
    return [associative_recall(jax.random.key(10 + i), BATCH, LENGTH, VOCAB)
            for i in range(STEPS)]


@pytest.fixture(scope="module")
def reference(model, optimizer, batches):
    """Unsharded: one device, plain jax.jit, written independently of make_train_step."""
    def step(params, opt_state, tokens, targets):
        def loss_fn(params):
            logits = model.apply(params, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.jit(model.init)(jax.random.key(1), batches[0][0])
    initial = params
    opt_state = optimizer.init(params)
    step = jax.jit(step)
    losses = []
    for tokens, targets in batches:
        params, opt_state, loss = step(params, opt_state, tokens, targets)
        losses.append(float(loss))
    return {"initial": initial, "params": params, "opt_state": opt_state,
            "losses": np.array(losses)}


@pytest.fixture(scope="module")
def runs(model, optimizer, batches):
    """``runs(name)``: for the mesh ``MESHES[name]``, the sharded step, its compiled HLO and
    STEPS steps from the same init as the reference (built once per mesh, on first use)."""
    cache = {}

    def run(name):
        if name not in cache:
            mesh = make_mesh(MESHES[name])
            params, opt_state = init_sharded(model, optimizer, mesh, jax.random.key(1),
                                             batches[0][0])
            initial = params
            step = make_train_step(model, optimizer, mesh)
            hlo = step.lower(params, opt_state, *batches[0]).compile().as_text()
            losses = []
            for tokens, targets in batches:
                params, opt_state, loss = step(params, opt_state, tokens, targets)
                losses.append(loss)
            cache[name] = {"mesh": mesh, "step": step, "hlo": hlo, "initial": initial,
                           "params": params, "opt_state": opt_state, "losses": losses}
        return cache[name]
    return run


@pytest.fixture(params=list(MESHES))
def sharded(request, runs):
    return runs(request.param)


def _abs_diffs(a, b) -> dict[str, float]:
    """Max |a - b| per leaf, keyed by the leaf's path."""
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                         a, b)
    return {"/".join(str(k.key) for k in path): d
            for path, d in jax.tree_util.tree_leaves_with_path(diffs)}


def _collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(op, result shapes) of every collective in compiled HLO text (async ``-start`` forms
    counted once; tuple results, as XLA's combiners make, give several shapes)."""
    line = re.compile(rf"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ({COLLECTIVES})(?:-start)?\(")
    found = []
    for text in hlo.splitlines():
        match = line.match(text)
        if match:
            shapes = [tuple(int(d) for d in dims.split(",") if d)
                      for dims in re.findall(r"\b[a-z]+\d*\[([\d,]*)\]", match.group(1))]
            found.append((match.group(2), shapes))
    return found


def _shard_elements(tree) -> int:
    """Elements of the tree's shards on one device."""
    return sum(math.prod(x.addressable_shards[0].data.shape) for x in jax.tree.leaves(tree))


# --- sharded equals unsharded ---------------------------------------------------------------


def test_init_sharded_equals_unsharded_init(sharded, reference):
    # partitionable threefry: each device draws its own slice of the same random bits
    assert max(_abs_diffs(sharded["initial"], reference["initial"]).values()) == 0.0


def test_sharded_steps_match_unsharded(sharded, reference):
    losses = np.array([float(loss) for loss in sharded["losses"]])
    np.testing.assert_allclose(losses, reference["losses"], rtol=LOSS_RTOL)
    diffs = _abs_diffs(sharded["params"], reference["params"])
    key_bias = {path: d for path, d in diffs.items() if path.endswith("key/bias")}
    assert len(key_bias) == DEPTH
    assert max(d for path, d in diffs.items() if path not in key_bias) <= PARAM_ATOL
    assert max(key_bias.values()) <= KEY_BIAS_ATOL
    moments = sharded["opt_state"][0].mu, reference["opt_state"][0].mu
    assert max(_abs_diffs(*moments).values()) <= PARAM_ATOL
    assert losses[-1] < losses[0]  # the steps did move the model


# --- where the shards lie -------------------------------------------------------------------


def test_params_and_optimizer_state_are_sharded_as_claimed(sharded):
    mesh, params = sharded["mesh"], sharded["params"]["params"]
    model_size = mesh.shape.get("model", 1)
    block = params["block_0"]
    expected = {  # local shard shapes
        ("attention", "query", "kernel"): (WIDTH, HEADS // model_size, WIDTH // HEADS),
        ("attention", "key", "bias"): (HEADS // model_size, WIDTH // HEADS),
        ("attention", "out", "kernel"): (HEADS // model_size, WIDTH // HEADS, WIDTH),
        ("attention", "out", "bias"): (WIDTH,),
        ("mlp_in", "kernel"): (WIDTH, 4 * WIDTH // model_size),
        ("mlp_in", "bias"): (4 * WIDTH // model_size,),
        ("mlp_out", "kernel"): (4 * WIDTH // model_size, WIDTH),
        ("attention_norm", "scale"): (WIDTH,),
    }
    for path, shape in expected.items():
        leaf = block
        for name in path:
            leaf = leaf[name]
        assert leaf.addressable_shards[0].data.shape == shape, path
        assert len(leaf.sharding.device_set) == 8
    assert params["embed"]["embedding"].sharding.is_fully_replicated
    assert params["unembed"]["kernel"].sharding.is_fully_replicated
    q = block["attention"]["query"]["kernel"]
    if model_size > 1:
        assert q.sharding.spec == P(None, "model", None)
    # Adam's mu and nu mirror the parameters' shardings; its step count is replicated
    adam = sharded["opt_state"][0]
    for moment in (adam.mu, adam.nu):
        for p, m in zip(jax.tree.leaves(sharded["params"]), jax.tree.leaves(moment),
                        strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
    assert adam.count.sharding.is_fully_replicated
    for loss in sharded["losses"]:
        assert loss.shape == () and loss.sharding.is_fully_replicated


def test_opt_state_shardings_of_an_optimizer_chain():
    model = BlockSparseLM(vocab_size=8, width=8, depth=1, num_heads=2,
                          mask=causal(16, block_size=8))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    mesh = make_mesh({"data": 4, "model": 2})
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9),
                            optax.add_decayed_weights(1e-4))
    shardings = opt_state_shardings(optimizer, shapes, mesh)
    trace = shardings[1][0].trace["params"]["block_0"]
    assert trace["mlp_in"]["kernel"].spec == P(None, "model")
    assert trace["attention"]["value"]["kernel"].spec == P(None, "model", None)
    assert shardings[1][0].trace["params"]["embed"]["embedding"].spec == P(None, None)


# --- what the compiled step communicates ----------------------------------------------------


def test_compiled_step_collectives(sharded, model):
    mesh, found = sharded["mesh"], _collectives(sharded["hlo"])
    model_size, data_size = mesh.shape.get("model", 1), mesh.shape["data"]
    q_kernel = WIDTH * HEADS * (WIDTH // HEADS)
    # no parameter is ever gathered whole: the largest all-gathered array (GSPMD emits none
    # here) is smaller than one q/k/v kernel, hence than an MLP kernel (4x larger)
    gathered = [math.prod(s) for op, shapes in found if op == "all-gather" for s in shapes]
    assert max(gathered, default=0) < q_kernel
    assert "all-reduce" in {op for op, _ in found}  # measured: the only collective emitted
    # activation sums over `model` (row-parallel attention-out and MLP-out in the forward, the
    # column-parallel inputs' gradients in the backward): [batch / data, length, width]
    activation = (BATCH // data_size, LENGTH, WIDTH)
    reduced = [s for op, shapes in found if op == "all-reduce" for s in shapes]
    activations = [s for s in reduced if s == activation]
    if model_size > 1:
        assert len(activations) >= 2 * DEPTH  # measured: 6 per block (q, k, v grads apart)
    else:
        assert not activations
    # the data-parallel gradient sum: everything else all-reduced is the gradients of this
    # device's parameter shards (plus the loss), never the full unsharded parameters
    gradient_elements = sum(math.prod(s) for s in reduced if s != activation)
    local = _shard_elements(sharded["params"])
    full = sum(x.size for x in jax.tree.leaves(sharded["params"]))
    assert local <= gradient_elements <= local + 8
    if model_size > 1:
        assert gradient_elements < full


# --- errors ---------------------------------------------------------------------------------


def test_param_logical_axes_rejects_unknown_and_misshapen_parameters(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))
    shapes["params"]["adapter"] = {"kernel": jax.ShapeDtypeStruct((WIDTH, 4), jnp.float32)}
    with pytest.raises(ValueError, match=r"unknown parameter 'params/adapter/kernel'"):
        param_logical_axes(shapes)
    bad = {"params": {"query": {"kernel": jnp.zeros((WIDTH, HEADS))}}}
    with pytest.raises(ValueError, match=r"'params/query/kernel' has shape \(32, 4\)"):
        param_logical_axes(bad)


def test_param_shardings_rejects_heads_that_do_not_divide_the_model_axis():
    model = BlockSparseLM(vocab_size=8, width=8, depth=1, num_heads=4, num_kv_heads=2,
                          mask=causal(16, block_size=8))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    mesh = make_mesh({"data": 2, "model": 4})
    with pytest.raises(ValueError, match=r"'params/block_0/attention/key/(bias|kernel)' axis "
                                         r"\d \('kv_heads', size 2\).*'model' of size 4"):
        param_shardings(shapes, mesh)
    # replicating key/value heads through the rules is the way out
    rules = (("heads", ("model",)), ("kv_heads", ()), ("mlp", ("model",)))
    shardings = param_shardings(shapes, mesh, rules)["params"]["block_0"]["attention"]
    assert shardings["key"]["kernel"].spec == P(None, None, None)
    assert shardings["query"]["kernel"].spec == P(None, "model", None)


def test_train_step_rejects_a_batch_that_does_not_divide_the_data_axis(runs):
    sharded = runs("data4_model2")
    tokens, targets = associative_recall(jax.random.key(0), 6, LENGTH, VOCAB)
    with pytest.raises(ValueError, match=r"batch size 6 does not divide evenly over mesh axis "
                                         r"'data' of size 4"):
        sharded["step"](sharded["params"], sharded["opt_state"], tokens, targets)
    with pytest.raises(ValueError, match=r"tokens and targets must both be \[batch, length\]"):
        sharded["step"](sharded["params"], sharded["opt_state"], tokens[:4], targets[:4, :8])


# --- the synthetic task ---------------------------------------------------------------------


def test_associative_recall_is_deterministic_and_correct():
    tokens, targets = associative_recall(jax.random.key(3), 4, 40, 16, num_pairs=6)
    again = associative_recall(jax.random.key(3), 4, 40, 16, num_pairs=6)
    np.testing.assert_array_equal(tokens, again[0])
    np.testing.assert_array_equal(targets, again[1])
    assert tokens.shape == targets.shape == (4, 40) and tokens.dtype == jnp.int32
    for row, target in zip(np.asarray(tokens), np.asarray(targets), strict=True):
        keys, values = row[:12:2], row[1:12:2]
        assert len(set(keys)) == 6 and keys.max() < 8 and values.min() >= 8
        np.testing.assert_array_equal(target[:12], row[:12])
        lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
        assert target[12:].tolist() == [lookup[k] for k in row[12:].tolist()]
    other, _ = associative_recall(jax.random.key(4), 4, 40, 16, num_pairs=6)
    assert not np.array_equal(tokens, other)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=0), "batch must be a positive int"),
    (dict(vocab=3), "vocab must be >= 4"),
    (dict(num_pairs=9), r"num_pairs must be an int in \[1, 8\]"),
    (dict(length=8, num_pairs=4), "2 \\* num_pairs < length=8"),
])
def test_associative_recall_errors(kwargs, match):
    args = dict(batch=2, length=32, vocab=16) | kwargs
    with pytest.raises(ValueError, match=match):
        associative_recall(jax.random.key(0), **args)


def test_training_on_eight_devices_reduces_the_loss(runs):
    sharded = runs("data2_model4")
    params, opt_state = sharded["params"], sharded["opt_state"]
    losses = []
    for i in range(100):
        tokens, targets = associative_recall(jax.random.fold_in(jax.random.key(7), i), BATCH,
                                             LENGTH, VOCAB)
        params, opt_state, loss = sharded["step"](params, opt_state, tokens, targets)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.7 * losses[0], (losses[0], losses[-10:])
