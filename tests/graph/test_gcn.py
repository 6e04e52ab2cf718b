"""Tests for dp2ejax.graph.gcn: the layer against a dense float64 reference (dense and CSR
propagation), stable module names for per-layer policies, PairNorm, the exponential decay of
the Dirichlet energy with depth (and what residuals and PairNorm do to it), and training.

Graph: a seeded two-block planted-partition SBM (networkx), 120 nodes, p_in = 0.3,
p_out = 0.02, GCN-normalised with SciPy; node features for training are a contextual SBM:
N(0, I_8) plus ±1 on the first coordinate by block.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax import PrecisionPolicy, Rule, emulate
from dp2ejax.graph import (
    GCN,
    GCNLayer,
    PairNorm,
    dirichlet_energy,
    train_node_classifier,
)
from dp2ejax.sparse import CSR

DEPTH = 16


def gcn_normalised(graph):
    a = nx.to_scipy_sparse_array(graph, format="csr", dtype=np.float64)
    a_tilde = a + sp.eye(a.shape[0])
    inv_sqrt = sp.diags(1 / np.sqrt(np.asarray(a_tilde.sum(axis=1)).ravel()))
    return sp.csr_matrix(inv_sqrt @ a_tilde @ inv_sqrt)


@pytest.fixture(scope="module")
def sbm():
    graph = nx.stochastic_block_model([60, 60], [[0.3, 0.02], [0.02, 0.3]], seed=1)
    P = gcn_normalised(graph)
    labels = np.repeat([0, 1], 60)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 8))
    x[:, 0] += np.where(labels == 0, 1.0, -1.0)
    train_mask = np.zeros(120, bool)
    train_mask[rng.choice(120, 30, replace=False)] = True
    return P, x, labels, train_mask


def test_layer_matches_a_dense_reference(sbm):
    P, x, _, _ = sbm
    layer = GCNLayer(5, activation=jnp.tanh)
    params = layer.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(P.toarray()))
    kernel = np.asarray(params["params"]["kernel"], np.float64)
    bias = np.asarray(params["params"]["bias"], np.float64)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    expected = np.tanh(P.toarray() @ (x @ kernel) + bias)
    for operator in (CSR.from_scipy(P), jnp.asarray(P.toarray()), P.toarray()):
        out = jax.jit(layer.apply)(params, jnp.asarray(x), operator)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"P: expected a propagation matrix of shape \(120, "
                                         r"120\) to match features of shape \(120, 5\)"):
        layer.apply(params, jnp.asarray(x), np.eye(7))


def test_module_names_are_stable_and_hidden_features_returned(sbm):
    P, x, _, _ = sbm
    P = CSR.from_scipy(P)
    model = GCN(hidden=8, num_classes=2, depth=3, norm="layernorm", dropout=0.1)
    variables = model.init(jax.random.key(0), jnp.asarray(x), P)
    assert sorted(variables["params"]) == [
        "input", "layer_0", "layer_1", "layer_2", "norm_0", "norm_1", "norm_2", "output"]
    logits, hidden = model.apply(variables, jnp.asarray(x), P, return_hidden=True)
    assert logits.shape == (120, 2) and hidden.shape == (4, 120, 8)
    _, state = model.apply(variables, jnp.asarray(x), P, capture_intermediates=True,
                           mutable=["intermediates"])
    assert {"layer_0", "layer_1", "layer_2", "output"} <= set(state["intermediates"])
    dropped = model.apply(variables, jnp.asarray(x), P, train=True,
                          rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(dropped, logits)


def test_per_layer_policy_reaches_one_layer(sbm):
    P, x, _, _ = sbm
    P = jnp.asarray(P.toarray())
    model = GCN(hidden=8, num_classes=2, depth=4)
    variables = model.init(jax.random.key(0), jnp.asarray(x), P)
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)

    def hidden(v, features, p):
        return model.apply(v, features, p, return_hidden=True)[1]

    policy = PrecisionPolicy(default="fp64", rules=[Rule("fp8_e4m3", path="layer_2")])
    ref = hidden(variables, jnp.asarray(x), P)
    out = jax.jit(emulate(hidden, policy))(variables, jnp.asarray(x), P)
    np.testing.assert_array_equal(out[:3], ref[:3])  # h_0, h_1, h_2 come before layer_2
    assert float(jnp.max(jnp.abs(out[3] - ref[3]))) > 1e-3


def test_pairnorm_centers_and_rescales():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 3)) + 5.0)
    y = PairNorm(scale=2.0).apply({}, x)
    np.testing.assert_allclose(np.asarray(jnp.mean(y, axis=0)), 0, atol=1e-12)
    assert float(jnp.sqrt(jnp.mean(jnp.sum(y * y, axis=1)))) == pytest.approx(2.0, rel=1e-9)


def energies(model, seed, x, P32, P64):
    variables = model.init(jax.random.key(seed), x, P32)
    _, hidden = model.apply(variables, x, P32, return_hidden=True)
    hidden = hidden.astype(jnp.float64)
    return np.asarray(jax.vmap(dirichlet_energy, in_axes=(0, None))(hidden, P64))


@pytest.fixture(scope="module")
def depth_energies(sbm):
    """Dirichlet energy of h_0 .. h_16 at initialisation, float32 models, seeds 0-2.
    Measured (seed 0): plain E16/E1 = 4e-9 (log-slope -1.26 per layer); residual E16/E1 = 2.2;
    PairNorm E16/E1 = 0.31, E16 = 15."""
    P, x, _, _ = sbm
    x = jnp.asarray(x, jnp.float32)
    P32, P64 = CSR.from_scipy(P, dtype=np.float32), CSR.from_scipy(P)
    variants = {"plain": {}, "residual": {"residual": True}, "pairnorm": {"norm": "pairnorm"}}
    return {name: [energies(GCN(16, 2, DEPTH, **kw), seed, x, P32, P64) for seed in range(3)]
            for name, kw in variants.items()}


def test_dirichlet_energy_decays_exponentially_without_residuals(depth_energies):
    for energy in depth_energies["plain"]:
        layers = np.arange(1, DEPTH + 1)
        slope = np.polyfit(layers, np.log(energy[1:]), 1)[0]
        assert slope < -0.5, slope  # measured -0.89 .. -1.37 per layer
        assert energy[DEPTH] < 1e-3 * energy[1]  # measured 2e-9 .. 3e-7


def test_residual_and_pairnorm_slow_the_decay(depth_energies):
    for i, plain in enumerate(depth_energies["plain"]):
        for name in ("residual", "pairnorm"):
            energy = depth_energies[name][i]
            # measured: last-layer energies 1e3-4e4 (residual) and 15 (PairNorm) against 1e-7
            # to 4e-6 without: at least a factor 1e4, kept within 10% of layer 1 or more
            assert energy[DEPTH] > 1e4 * plain[DEPTH], name
            assert energy[DEPTH] > 0.1 * energy[1], name


def test_train_node_classifier_fp32_and_bf16(sbm):
    P, x, labels, train_mask = sbm
    P = jnp.asarray(P.toarray(), jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    model = GCN(hidden=16, num_classes=2, depth=2, dropout=0.1)
    variables, history = train_node_classifier(model, P, x, labels, train_mask, steps=100,
                                               learning_rate=1e-2, seed=0)
    assert set(history) == {"loss", "train_accuracy", "val_accuracy"}
    assert all(v.shape == (100,) for v in history.values())
    assert history["train_accuracy"][-1] > 0.9 and history["val_accuracy"][-1] > 0.9
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    logits = model.apply(variables, x, P)
    assert float(jnp.mean(jnp.argmax(logits, -1)[train_mask] == labels[train_mask])) > 0.9
    _, bf16 = train_node_classifier(model, P, x, labels, train_mask, steps=100,
                                    learning_rate=1e-2, seed=0, policy="bf16")
    assert np.all(np.isfinite(bf16["loss"])) and bf16["train_accuracy"][-1] > 0.9


def test_training_errors_name_the_argument(sbm):
    P, x, labels, train_mask = sbm
    model = GCN(hidden=4, num_classes=2, depth=1)
    call = dict(steps=1, learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"train_mask: expected a boolean array of shape "
                                         r"\(120,\), got dtype int"):
        train_node_classifier(model, P, x, labels, train_mask.astype(int), **call)
    with pytest.raises(ValueError, match=r"train_mask: expected shape \(120,\)"):
        train_node_classifier(model, P, x, labels, train_mask[:10], **call)
    with pytest.raises(ValueError, match="train_mask: selects no node"):
        train_node_classifier(model, P, x, labels, np.zeros(120, bool), **call)
    with pytest.raises(ValueError, match=r"labels: expected integer class labels of shape"):
        train_node_classifier(model, P, x, labels[:5], train_mask, **call)
    with pytest.raises(ValueError, match=r"labels: expected classes in \[0, 2\)"):
        train_node_classifier(model, P, x, labels + 1, train_mask, **call)
    with pytest.raises(ValueError, match=r"P: expected shape \(120, 120\)"):
        train_node_classifier(model, np.eye(3), x, labels, train_mask, **call)
    with pytest.raises(ValueError, match=r"x: expected float node features"):
        train_node_classifier(model, P, x[:, 0], labels, train_mask, **call)
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        train_node_classifier(model, P, x, labels, train_mask, steps=0, learning_rate=1e-2)
    with pytest.raises(ValueError, match="norm: expected one of"):
        GCN(4, 2, 1, norm="batchnorm").init(jax.random.key(0), jnp.asarray(x), P.toarray())


def test_gcn_works_with_flax_transformations(sbm):
    P, x, _, _ = sbm
    P = jnp.asarray(P.toarray())
    model = GCN(hidden=4, num_classes=2, depth=2, activation=nn.tanh)
    variables = model.init(jax.random.key(0), jnp.asarray(x), P)
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, jnp.asarray(x), P) ** 2))(variables)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
