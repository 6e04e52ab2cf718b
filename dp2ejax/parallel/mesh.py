"""Device meshes from configs, and logical axis names mapped to mesh axes.

A workload names the axes of its arrays logically (``batch``, ``heads``, ``rows``, ``samples``,
``candidates``…); :data:`DEFAULT_RULES` (or the caller's rules) say which mesh axis each one is
split over. A logical axis whose mesh axis is not in the mesh, or is already used by an earlier
axis of the same array, stays unsplit, so one set of rules serves every mesh shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# logical axis -> mesh axes to try, in order (the first one in the mesh and still free wins)
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data",)),
    ("samples", ("samples", "data")),
    ("candidates", ("candidates", "data")),
    ("rows", ("rows", "data")),
    ("heads", ("model", "heads")),
    ("kv_heads", ("model", "heads")),
    ("mlp", ("model",)),
)

AXIS_TYPES = ("auto", "explicit")


def make_mesh(axes: Mapping[str, int] | Sequence[tuple[str, int]], *,
              devices: Sequence[jax.Device] | None = None,
              axis_types: str = "auto") -> Mesh:
    """Builds a device mesh from axis names and sizes, checking them against the devices.

    Args:
      axes: ``{name: size}`` (or ``[(name, size), ...]``), in mesh order. One size may be
        ``-1``: it takes what the others leave (``{"data": -1, "model": 2}`` on 8 devices is
        4 x 2). Names must be distinct identifiers.
      devices: the devices to lay out (default ``jax.devices()``: every process's devices in
        a multi-process run).
      axis_types: ``"auto"`` (GSPMD propagates shardings; the default) or ``"explicit"``
        (shardings in the types).

    Returns:
      A ``jax.sharding.Mesh``.

    Raises:
      ValueError: naming the bad axis, or the product of the sizes against the device count.

    Example:
      >>> mesh = make_mesh({"data": -1, "model": 2}, devices=jax.devices()[:8])
      >>> dict(mesh.shape)
      {'data': 4, 'model': 2}
    """
    items = list(axes.items()) if isinstance(axes, Mapping) else list(axes)
    if not items:
        raise ValueError("mesh axes: expected at least one (name, size), got none")
    names = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"mesh axes: expected (name, size) pairs, got {item!r}")
        name, size = item
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"mesh axis name {name!r}: expected an identifier such as 'data'")
        if name in names:
            raise ValueError(f"mesh axis {name!r} is given twice")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or (
                size < 1 and size != -1):
            raise ValueError(f"mesh axis {name!r}: size must be a positive int (or -1 for the "
                             f"rest of the devices), got {size!r}")
        names.append(name)
    if axis_types not in AXIS_TYPES:
        raise ValueError(f"axis_types must be one of {AXIS_TYPES}, got {axis_types!r}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(size) for _, size in items]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh axes {dict(items)}: at most one size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh axes {dict(items)}: the fixed sizes multiply to {known}, "
                             f"which does not divide the {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh axes {dict(items)} multiply to {math.prod(sizes)} but there "
                         f"are {len(devices)} devices; the sizes must multiply to the device "
                         f"count (or use -1 for one axis)")
    kind = AxisType.Auto if axis_types == "auto" else AxisType.Explicit
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(kind,) * len(sizes),
                         devices=devices)


def logical_spec(logical_axes: Sequence[str | None], mesh: Mesh,
                 rules: Sequence[tuple[str, Sequence[str]]] = DEFAULT_RULES) -> P:
    """The ``PartitionSpec`` of an array whose axes have the given logical names.

    Args:
      logical_axes: one name (or None: unsplit) per array axis.
      mesh: the mesh.
      rules: ``(logical name, mesh axes to try in order)`` pairs (default
        :data:`DEFAULT_RULES`). An axis whose candidates are all absent from the mesh, or
        already used by an earlier axis, is unsplit; an axis of size 1 in the mesh is skipped.

    Example:
      >>> mesh = make_mesh({"data": 4, "model": 2}, devices=jax.devices()[:8])
      >>> tuple(logical_spec(("batch", None, "heads", None), mesh))
      ('data', None, 'model', None)
    """
    table = {}
    for item in rules:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"rules: expected (logical name, mesh axes) pairs, got {item!r}")
        name, targets = item
        table.setdefault(name, (targets,) if isinstance(targets, str) else tuple(targets))
    used, spec = set(), []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)} "
                             f"(pass rules=... to add one, or None for an unsplit axis)")
        chosen = next((axis for axis in table[name]
                       if axis in mesh.shape and axis not in used and mesh.shape[axis] > 1),
                      None)
        if chosen is not None:
            used.add(chosen)
        spec.append(chosen)
    return P(*spec)


def logical_sharding(logical_axes: Sequence[str | None], mesh: Mesh,
                     rules: Sequence[tuple[str, Sequence[str]]] = DEFAULT_RULES
                     ) -> NamedSharding:
    """``NamedSharding(mesh, logical_spec(logical_axes, mesh, rules))``.

    Example:
      >>> mesh = make_mesh({"data": 8}, devices=jax.devices()[:8])
      >>> tuple(logical_sharding(("rows", None), mesh).spec)
      ('data', None)
    """
    return NamedSharding(mesh, logical_spec(logical_axes, mesh, rules))


def shard(x, logical_axes: Sequence[str | None], mesh: Mesh,
          rules: Sequence[tuple[str, Sequence[str]]] = DEFAULT_RULES) -> jax.Array:
    """Places ``x`` on ``mesh`` split along its logical axes (checks divisibility first).

    Example:
      >>> import jax.numpy as jnp
      >>> mesh = make_mesh({"data": 8}, devices=jax.devices()[:8])
      >>> tuple(shard(jnp.zeros((16, 3)), ("batch", None), mesh).sharding.spec)
      ('data', None)
    """
    x = jax.numpy.asarray(x)
    if len(logical_axes) != x.ndim:
        raise ValueError(f"logical_axes {tuple(logical_axes)} name {len(logical_axes)} axes but "
                         f"x has shape {x.shape}")
    sharding = logical_sharding(logical_axes, mesh, rules)
    for dim, (axis, name) in enumerate(zip(sharding.spec, logical_axes, strict=False)):
        if axis is not None and x.shape[dim] % mesh.shape[axis]:
            raise ValueError(f"x axis {dim} ({name!r}, size {x.shape[dim]}) does not divide "
                             f"evenly over mesh axis {axis!r} of size {mesh.shape[axis]}")
    return jax.device_put(x, sharding)
