"""Multi-process configuration (the 2-process runs are in test_multiprocess.py)."""

import pytest

from dp2ejax.parallel.distributed import ProcessConfig, initialize, spawn_local


def test_from_env_and_defaults():
    assert ProcessConfig.from_env({}) == ProcessConfig()
    config = ProcessConfig.from_env({"DP2EJAX_COORDINATOR_ADDRESS": "node0:4000",
                                     "DP2EJAX_NUM_PROCESSES": "4", "DP2EJAX_PROCESS_ID": "3"})
    assert (config.coordinator_address, config.num_processes, config.process_id) == (
        "node0:4000", 4, 3)
    assert initialize({"num_processes": 1}) == ProcessConfig()  # alone: a no-op


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_processes=0), "num_processes must be >= 1"),
    (dict(num_processes=2, process_id=2, coordinator_address="h:1"),
     r"process_id must be in \[0, num_processes=2\)"),
    (dict(num_processes=2, process_id=0), "coordinator_address must be 'host:port'"),
    (dict(num_processes=2, coordinator_address="localhost"), "coordinator_address must be"),
    (dict(num_processes="2"), "num_processes must be an int"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProcessConfig(**kwargs)


def test_bad_env_and_dict():
    with pytest.raises(ValueError, match="DP2EJAX_NUM_PROCESSES must be an int, got 'two'"):
        ProcessConfig.from_env({"DP2EJAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match=r"unknown distributed config keys \['procs'\]"):
        initialize({"procs": 2})
    with pytest.raises(ValueError, match="config must be a ProcessConfig"):
        initialize("localhost:1234")
    with pytest.raises(ValueError, match="num_processes must be a positive int"):
        spawn_local(["-c", "pass"], num_processes=0)


def test_spawn_local_reports_a_failing_process():
    with pytest.raises(RuntimeError, match=r"process 1 of 2 exited with status 3"):
        spawn_local(["-c", "import os, sys; sys.exit(3 * (os.environ['DP2EJAX_PROCESS_ID'] "
                     "== '1'))"], num_processes=2, timeout=60)
