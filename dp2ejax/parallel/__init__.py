"""Meshes, shardings and sharded steps: every workload on many devices and many hosts, through
``jax.jit`` shardings, ``jax.shard_map`` and ``jax.distributed``."""

from dp2ejax.parallel.mesh import DEFAULT_RULES, logical_sharding, logical_spec, make_mesh, shard

__all__ = ["DEFAULT_RULES", "logical_sharding", "logical_spec", "make_mesh", "shard"]
