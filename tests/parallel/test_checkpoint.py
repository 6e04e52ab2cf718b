"""Orbax checkpoints of sharded state restore onto another mesh shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dp2ejax.parallel import make_mesh
from dp2ejax.parallel.checkpoint import Checkpoints, abstract_state


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")


def sharded_state(mesh, spec_w, spec_b):
    w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 7
    b = np.arange(8, dtype=np.float64) - 3.5
    return {"params": {"w": jax.device_put(w, NamedSharding(mesh, spec_w)),
                       "b": jax.device_put(b, NamedSharding(mesh, spec_b))},
            "step": jnp.int32(11)}


@pytest.mark.parametrize("target_axes, spec_w", [
    ({"data": 8, "model": 1}, P("data", None)),  # another mesh shape
    ({"model": 4, "data": 2}, P(None, "model")),  # transposed axes, another split
    ({"data": 4}, P("data", None)),  # fewer devices
])
def test_restore_on_another_mesh(tmp_path, target_axes, spec_w):
    source = make_mesh({"data": 2, "model": 4})
    state = sharded_state(source, P("data", "model"), P("model"))
    with Checkpoints(tmp_path / "run") as ckpts:
        ckpts.save(5, state)
        ckpts.save(7, jax.tree_util.tree_map(lambda x: x * 2, state))
        assert ckpts.all_steps() == [5, 7] and ckpts.latest_step() == 7
    devices = jax.devices()[:int(np.prod(list(target_axes.values())))]
    target_mesh = make_mesh(target_axes, devices=devices)
    shardings = {"params": {"w": NamedSharding(target_mesh, spec_w),
                            "b": NamedSharding(target_mesh, P())},
                 "step": NamedSharding(target_mesh, P())}
    with Checkpoints(tmp_path / "run") as ckpts:  # a new run resumes
        restored = ckpts.restore(5, abstract_state(state, shardings))
        latest = ckpts.restore(None, abstract_state(state, shardings))
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state),
                         strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert restored["params"]["w"].sharding.is_equivalent_to(shardings["params"]["w"], 2)
    assert set(restored["params"]["w"].sharding.device_set) == set(devices)
    np.testing.assert_array_equal(latest["params"]["w"], 2 * np.asarray(state["params"]["w"]))


def test_errors_and_retention(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be a positive int"):
        Checkpoints(tmp_path, max_to_keep=0)
    with Checkpoints(tmp_path / "keep", max_to_keep=2) as ckpts:
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            ckpts.restore(None, {"x": jnp.zeros(2)})
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            ckpts.save(-1, {"x": jnp.zeros(2)})
        for step in range(4):
            ckpts.save(step, {"x": jnp.full(2, float(step))})
        assert ckpts.all_steps() == [2, 3]
        with pytest.raises(FileNotFoundError, match=r"step 0 .* steps there: \[2, 3\]"):
            ckpts.restore(0, {"x": jnp.zeros(2)})
