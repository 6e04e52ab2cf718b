"""Meshes, shardings and sharded steps: every workload on many devices and many hosts, through
``jax.jit`` shardings, ``jax.shard_map`` and ``jax.distributed``."""

from dp2ejax.parallel.checkpoint import Checkpoints, abstract_state
from dp2ejax.parallel.distributed import ProcessConfig, initialize, spawn_local
from dp2ejax.parallel.mesh import DEFAULT_RULES, logical_sharding, logical_spec, make_mesh, shard
from dp2ejax.parallel.spmm import PartitionedCSR, collective_bytes
from dp2ejax.parallel.transformer import (
    BlockSparseLM,
    associative_recall,
    init_sharded,
    make_train_step,
    param_logical_axes,
    param_shardings,
)

__all__ = [
    "DEFAULT_RULES",
    "BlockSparseLM",
    "Checkpoints",
    "PartitionedCSR",
    "ProcessConfig",
    "abstract_state",
    "associative_recall",
    "collective_bytes",
    "init_sharded",
    "initialize",
    "logical_sharding",
    "logical_spec",
    "make_mesh",
    "make_train_step",
    "param_logical_axes",
    "param_shardings",
    "shard",
    "spawn_local",
]
