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


def run_two_processes(step, out):
    results = spawn_local(["-m", "dp2ejax.parallel.launch", step, "--out", str(out)],
                          num_processes=2, devices_per_process=4, timeout=300)
    assert all('"processes": 2, "devices": 8' in r.stdout for r in results)
    return dict(np.load(out))


def test_cestac_samples_across_processes(tmp_path):
    step = STEPS["cestac_samples"]
    two = run_two_processes("cestac_samples", tmp_path / "two.npz")
    one = step(make_mesh(step.mesh))
    # Each sample is computed alone, on one device: bit for bit the same.
    np.testing.assert_array_equal(two["samples"], one["samples"])
    assert int(two["cancellations"]) == int(one["cancellations"]) > 0
    # The mean over the 8 samples is reduced in another order across processes: float32
    # rounding of 8 terms, relative 1e-6; the digits follow within 0.05.
    np.testing.assert_allclose(two["mean"], one["mean"], rtol=1e-6)
    np.testing.assert_allclose(two["digits"], one["digits"], atol=0.05)
