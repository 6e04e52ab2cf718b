"""``emulate``, gradients, an optax step and CESTAC on the zoo's models (written as users write
them: Flax attention with padding and causal masks, an LM with dropout, a CNN with BatchNorm, an
LSTM via ``nn.RNN`` and ``nn.scan``, a VAE, a jraph GNN, NNX and equinox models).

References: the plain program (fp32 emulation equals it within the plain program's own
jit/eager difference, 1e-5 relative: XLA fuses and reorders float32 arithmetic under jit) and
``jax.grad`` of the plain loss. Each model compiles once per test: the policies run in one jit.
"""

import jax
import jax.numpy as jnp
import models
import numpy as np
import optax
import pytest

from dp2ejax import PrecisionPolicy, Rule, emulate
from dp2ejax.cestac import analyze

POLICIES = {
    "fp32": PrecisionPolicy.uniform("fp32"),
    "bf16": PrecisionPolicy.uniform("bf16"),
    "fp8_e4m3": PrecisionPolicy("bf16", [Rule("fp8_e4m3", kinds=("matmul_inputs",
                                                                  "elementwise"))]),
    "mx": PrecisionPolicy("bf16", [Rule("mxfp8_e4m3", kinds=("matmul_inputs",))]),
}


SLOW_EMULATE = {"transformer_lm", "cnn_train", "nnx_mlp_module"}  # their kinds run below too


@pytest.fixture(scope="module", params=[
    n if n not in SLOW_EMULATE else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(models.BUILDERS)])
def zoo(request):
    return models.BUILDERS[request.param]()


def finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating))


def test_emulate_under_every_policy(zoo):
    plain = jax.jit(zoo.apply)(zoo.params, *zoo.inputs)
    target = ({} if zoo.target is None else
              {"rule": PrecisionPolicy("fp32", [Rule("fp16", path=zoo.target)])})

    @jax.jit
    def run(params, *inputs):
        return {name: emulate(zoo.apply, policy, strict=name == "rule")(params, *inputs)
                for name, policy in {**POLICIES, **target}.items()}

    outs = run(zoo.params, *zoo.inputs)
    for a, b in zip(jax.tree_util.tree_leaves(outs["fp32"]), jax.tree_util.tree_leaves(plain),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert finite(plain)
    paths = models.traced_paths(zoo)
    assert all(any(models.path_matches(layer, p) for p in paths) for layer in zoo.layers)
    for name in (*POLICIES, *target):
        assert finite(outs[name]), name  # the native bf16 program is finite on these inputs
    if target:  # a per-layer rule changes the model, and strict=True found its layer
        assert any(not np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(outs["rule"]), jax.tree_util.tree_leaves(plain),
            strict=True))


GRAD_MODELS = ["attention_encoder", "cnn_train", "nnx_mlp_module", "equinox_mlp"]


@pytest.mark.parametrize("name", [n if n in GRAD_MODELS else pytest.param(
    n, marks=pytest.mark.slow) for n in sorted(models.BUILDERS)])
def test_grad_and_an_optax_step(name):
    zoo = models.BUILDERS[name]()
    optimizer = optax.adam(1e-3)
    state = optimizer.init(zoo.params)

    @jax.jit
    def step(params, state, *inputs):
        loss, grads = jax.value_and_grad(emulate(zoo.loss, "bf16"))(params, *inputs)
        exact = jax.grad(zoo.loss)(params, *inputs)
        updates, state = optimizer.update(grads, state, params)
        return loss, grads, exact, optax.apply_updates(params, updates)

    loss, grads, exact, params = step(zoo.params, state, *zoo.inputs)
    assert bool(jnp.isfinite(loss)) and finite(grads) and finite(params)
    flat = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])
    ref = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(exact)])
    # bf16's forward (8 bits) moves the gradient by a few percent, not more
    assert float(jnp.linalg.norm(flat - ref) / jnp.linalg.norm(ref)) < 0.15


@pytest.mark.parametrize("name", ["nnx_mlp", pytest.param("gnn", marks=pytest.mark.slow),
                                  pytest.param("equinox_mlp", marks=pytest.mark.slow)])
def test_cestac_without_false_instabilities(name):
    zoo = models.BUILDERS[name]()
    result = analyze(zoo.apply, zoo.params, *zoo.inputs, fmt="bf16")
    assert result.instability_totals()["branching"] == 0, result.instabilities
    digits = np.concatenate([np.ravel(d) for d in jax.tree_util.tree_leaves(result.digits)])
    assert np.median(digits) > 1.0  # bf16 carries 2.4 digits
    assert not any(np.any(n) for n in jax.tree_util.tree_leaves(result.nonfinite))
