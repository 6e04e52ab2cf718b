"""Meshes from axis specs and logical axis rules (8 host CPU devices, see tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from dp2ejax.parallel import DEFAULT_RULES, logical_sharding, logical_spec, make_mesh, shard


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")


@pytest.mark.parametrize("axes, shape", [
    ({"data": 8}, {"data": 8}),
    ({"data": 2, "model": 4}, {"data": 2, "model": 4}),
    ({"data": -1, "model": 2}, {"data": 4, "model": 2}),
    ([("rows", 2), ("samples", -1)], {"rows": 2, "samples": 4}),
    ({"a": 2, "b": 2, "c": 2}, {"a": 2, "b": 2, "c": 2}),
])
def test_make_mesh_shapes(axes, shape):
    mesh = make_mesh(axes)
    assert dict(mesh.shape) == shape
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_on_a_subset_and_explicit_axes():
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2], axis_types="explicit")
    assert dict(mesh.shape) == {"data": 2} and mesh.axis_types == (AxisType.Explicit,)


@pytest.mark.parametrize("axes, match", [
    ({"data": 3, "model": 2}, "multiply to 6 but there are 8 devices"),
    ({"data": 16}, "multiply to 16 but there are 8 devices"),
    ({"data": -1, "model": 3}, "does not divide the 8 devices"),
    ({"data": -1, "model": -1}, "at most one size may be -1"),
    ({"data": 0}, "mesh axis 'data': size must be a positive int"),
    ({"data": 2.0, "model": 4}, "mesh axis 'data': size must be a positive int"),
    ({"data": True}, "size must be a positive int"),
    ({"my axis": 8}, "mesh axis name 'my axis'"),
    ([("data", 4), ("data", 2)], "mesh axis 'data' is given twice"),
    ([("data",)], r"expected \(name, size\) pairs"),
    ({}, "at least one"),
])
def test_bad_mesh_specifications(axes, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(axes)


def test_bad_axis_types():
    with pytest.raises(ValueError, match="axis_types must be one of"):
        make_mesh({"data": 8}, axis_types="manual")


def test_logical_spec_follows_rules_and_mesh():
    mesh = make_mesh({"data": 4, "model": 2})
    assert tuple(logical_spec(("batch", None, "heads", None), mesh)) == (
        "data", None, "model", None)
    # rows fall back to "data" when the mesh has no "rows" axis; a mesh axis is used only once
    assert tuple(logical_spec(("rows", "batch"), mesh)) == ("data", None)
    rows_mesh = make_mesh({"rows": 8})
    assert tuple(logical_spec(("rows", None), rows_mesh)) == ("rows", None)
    assert tuple(logical_spec(("batch", "heads"), rows_mesh)) == (None, None)  # absent axes
    # a mesh axis of size 1 splits nothing
    assert tuple(logical_spec(("heads",), make_mesh({"data": 8, "model": 1}))) == (None,)
    custom = (("nodes", ("model", "data")),)
    assert tuple(logical_spec(("nodes",), mesh, custom)) == ("model",)
    assert logical_sharding(("batch", None), mesh).mesh is mesh


def test_logical_spec_errors():
    mesh = make_mesh({"data": 8})
    with pytest.raises(ValueError, match="logical axis 'tokens' has no rule"):
        logical_spec(("tokens",), mesh)
    with pytest.raises(ValueError, match="rules: expected"):
        logical_spec(("batch",), mesh, rules=("batch",))
    assert {name for name, _ in DEFAULT_RULES} >= {"batch", "heads", "rows", "samples"}


def test_shard_places_blocks_and_checks_divisibility():
    mesh = make_mesh({"data": 4, "model": 2})
    x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    y = shard(x, ("batch", "heads"), mesh)
    assert tuple(y.sharding.spec) == ("data", "model")
    assert {s.data.shape for s in y.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(y, x)
    with pytest.raises(ValueError, match=r"x axis 0 \('batch', size 6\) does not divide"):
        shard(jnp.zeros((6, 2)), ("batch", None), mesh)
    with pytest.raises(ValueError, match="name 1 axes but x has shape"):
        shard(jnp.zeros((8, 2)), ("batch",), mesh)
