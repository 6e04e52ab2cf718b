"""The zoo's models build, run finite, have a finite loss, and have the module paths they list."""

import jax
import jax.numpy as jnp
import models
import pytest


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_model_runs(name):
    model = models.BUILDERS[name]()
    out = jax.jit(model.apply)(model.params, *model.inputs)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(out))
    assert jnp.isfinite(jax.jit(model.loss)(model.params, *model.inputs))
    paths = models.traced_paths(model)
    for layer in model.layers:
        assert any(models.path_matches(layer, p) for p in paths), (layer, sorted(paths))
    assert model.target is None or model.target in model.layers
