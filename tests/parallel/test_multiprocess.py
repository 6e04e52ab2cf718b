"""Two local CPU processes (4 devices each) run the sharded steps through jax.distributed and
agree with this single process (8 devices) running the same steps."""

import jax
import numpy as np
import pytest

from dp2ejax.parallel import make_mesh
from dp2ejax.parallel.distributed import spawn_local
from dp2ejax.parallel.steps import STEPS


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")


NAMES = ("cestac_samples", "gcn_propagation", "gcn_training", "transformer_training")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every step, run once by 2 processes of 4 CPU devices each."""
    out = tmp_path_factory.mktemp("two_processes")
    results = spawn_local(["-m", "dp2ejax.parallel.launch", *NAMES, "--out", str(out)],
                          num_processes=2, devices_per_process=4, timeout=600)
    for result in results:
        for name in NAMES:
            assert f'"step": "{name}"' in result.stdout
        assert result.stdout.count('"processes": 2, "devices": 8') == len(NAMES)
    return {name: dict(np.load(out / f"{name}.npz")) for name in NAMES}


def run_here(name, mesh_axes=None):
    step = STEPS[name]
    return step(make_mesh(step.mesh if mesh_axes is None else mesh_axes))


def test_cestac_samples_across_processes(two_processes):
    two, one = two_processes["cestac_samples"], run_here("cestac_samples")
    # Each sample is computed alone, on one device: bit for bit the same.
    np.testing.assert_array_equal(two["samples"], one["samples"])
    assert int(two["cancellations"]) == int(one["cancellations"]) > 0
    # The mean over the 8 samples is reduced in another order across processes: float32
    # rounding of 8 terms, relative 1e-6; the digits follow within 0.05.
    np.testing.assert_allclose(two["mean"], one["mean"], rtol=1e-6)
    np.testing.assert_allclose(two["digits"], one["digits"], atol=0.05)


def test_gcn_propagation_across_processes(two_processes):
    two = two_processes["gcn_propagation"]
    # the same row blocks, the same per-row order of the sums: bit for bit, and equal to one
    # device (no partition)
    np.testing.assert_array_equal(two["features"], run_here("gcn_propagation")["features"])
    one_device = STEPS["gcn_propagation"](make_mesh({"rows": 1}, devices=jax.devices()[:1]))
    np.testing.assert_array_equal(two["features"], one_device["features"])


def test_gcn_training_across_processes(two_processes):
    two, one = two_processes["gcn_training"], run_here("gcn_training")
    assert set(two) == set(one) and two["loss"][-1] < 0.5 * two["loss"][0]
    # The dense layers' reductions (over nodes, split over devices) may be ordered differently
    # by the two runtimes: float32 roundings over 20 Adam steps, below 1e-5.
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_transformer_training_across_processes(two_processes):
    two, one = two_processes["transformer_training"], run_here("transformer_training")
    assert set(two) == set(one) and two["loss"][-1] < two["loss"][0]
    # Data x heads parallel on the same 2 x 4 mesh, but the two runtimes may order float32
    # all-reduces of the gradients differently. Adam divides by the gradient's RMS, so an
    # element whose gradient is mostly rounding noise (the key biases' true gradient is 0:
    # softmax ignores a per-query constant) moves by up to lr per step either way. So: the
    # losses within 1e-5, every parameter within 2 * lr * steps, and all but a few elements
    # per tensor within 1e-4 relative.
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for key in one:
        if key == "loss":
            continue
        np.testing.assert_allclose(two[key], one[key], atol=2 * 3e-3 * 5, err_msg=key)
        close = np.isclose(two[key], one[key], rtol=1e-4, atol=1e-6)
        assert close.mean() > 0.99 or "key.bias" in key, (key, close.mean())
