"""Many hosts through JAX's own multi-process runtime (``jax.distributed``).

Every process runs the same program; :func:`initialize` connects it to the others (from a
config or the ``DP2EJAX_*`` environment variables), after which ``jax.devices()`` lists every
process's devices and a mesh over them (:func:`dp2ejax.parallel.make_mesh`) spans the hosts.
:func:`spawn_local` starts such processes on this machine (tests, trying multi-host code on a
laptop): each gets its own CPU devices, and CPU collectives go through Gloo.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

import jax

ENV_COORDINATOR = "DP2EJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DP2EJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DP2EJAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """Where this process sits in a multi-process run.

    Attributes:
      coordinator_address: ``"host:port"`` of process 0's coordinator (required when
        ``num_processes > 1``).
      num_processes: processes in the run (1: a single-process run, nothing to initialise).
      process_id: this process, ``0 <= process_id < num_processes``.
      initialization_timeout: seconds to wait for the other processes.
    """

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    initialization_timeout: int = 300

    def __post_init__(self):
        for name in ("num_processes", "process_id", "initialization_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id must be in [0, num_processes={self.num_processes}), "
                             f"got {self.process_id}")
        if self.num_processes > 1:
            address = self.coordinator_address
            host, _, port = (address or "").rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"coordinator_address must be 'host:port' for a run of "
                                 f"{self.num_processes} processes, got {address!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProcessConfig:
        """Reads ``DP2EJAX_COORDINATOR_ADDRESS``, ``DP2EJAX_NUM_PROCESSES`` and
        ``DP2EJAX_PROCESS_ID`` (absent: a single-process run).

        Example:
          >>> ProcessConfig.from_env({"DP2EJAX_NUM_PROCESSES": "2", "DP2EJAX_PROCESS_ID": "1",
          ...                         "DP2EJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
          ProcessConfig(coordinator_address='10.0.0.1:1234', num_processes=2, process_id=1, initialization_timeout=300)
        """  # noqa: E501
        environ = os.environ if environ is None else environ

        def integer(name: str, default: int) -> int:
            text = environ.get(name)
            if text is None or text == "":
                return default
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an int, got "
                                 f"{text!r}") from None
        return cls(environ.get(ENV_COORDINATOR) or None, integer(ENV_NUM_PROCESSES, 1),
                   integer(ENV_PROCESS_ID, 0))

    @classmethod
    def from_dict(cls, config: Mapping) -> ProcessConfig:
        """From a config section (e.g. ``[distributed]`` of a TOML file); unknown keys are
        errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown distributed config keys {sorted(unknown)}; known: "
                             f"{sorted(known)}")
        return cls(**config)


def initialize(config: ProcessConfig | Mapping | None = None) -> ProcessConfig:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Call it once, before any computation. A single-process config does nothing, so one
    program runs alone or on many hosts unchanged. On CPU the collectives between processes go
    through Gloo (``jax_cpu_collectives_implementation``).

    Args:
      config: a :class:`ProcessConfig`, a dict of its fields, or None to read the environment
        (:meth:`ProcessConfig.from_env`).

    Returns:
      The config used.

    Example:
      >>> initialize(ProcessConfig()).num_processes  # alone: nothing to do
      1
    """
    if config is None:
        config = ProcessConfig.from_env()
    elif isinstance(config, Mapping):
        config = ProcessConfig.from_dict(config)
    elif not isinstance(config, ProcessConfig):
        raise ValueError(f"config must be a ProcessConfig, a dict or None, got "
                         f"{type(config).__name__}")
    if config.num_processes == 1:
        return config
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id,
                               initialization_timeout=config.initialization_timeout)
    return config


def free_port() -> int:
    """A TCP port free on this machine now (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_local(argv: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
                timeout: float = 600, env: Mapping[str, str] | None = None,
                cwd: str | None = None) -> list[subprocess.CompletedProcess]:
    """Runs ``python argv...`` as ``num_processes`` cooperating local processes.

    Each process sees ``devices_per_process`` CPU devices and the ``DP2EJAX_*`` variables that
    :func:`initialize` reads (coordinator on a free local port). Waits for all of them.

    Args:
      argv: arguments after the Python executable, e.g. ``["-m", "dp2ejax.parallel.launch",
        "gcn_propagation", "--out", "run/"]``.
      num_processes: how many processes (>= 1).
      devices_per_process: CPU devices per process (``--xla_force_host_platform_device_count``).
      timeout: seconds before every process is killed.
      env: extra environment variables.
      cwd: working directory.

    Returns:
      One ``subprocess.CompletedProcess`` per process (``stdout``/``stderr`` captured as text),
      in process order. Raises ``RuntimeError`` with the failing process's output if any exits
      with a non-zero status.
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if (isinstance(devices_per_process, bool) or not isinstance(devices_per_process, int)
            or devices_per_process < 1):
        raise ValueError(f"devices_per_process must be a positive int, got "
                         f"{devices_per_process!r}")
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for process_id in range(num_processes):
        child = dict(os.environ)
        child.update(env or {})
        flags = [f for f in child.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        child.update({"XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu",
                      ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(num_processes),
                      ENV_PROCESS_ID: str(process_id)})
        procs.append(subprocess.Popen([sys.executable, *argv], env=child, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for process_id, result in enumerate(results):
        if result.returncode:
            raise RuntimeError(f"process {process_id} of {num_processes} exited with status "
                               f"{result.returncode}:\n{result.stderr[-4000:]}")
    return results
