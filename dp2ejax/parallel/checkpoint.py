"""Checkpoints of sharded state with Orbax, restorable on a different mesh.

A checkpoint stores every array once, whatever its sharding; restoring takes the shardings of
the *target* (the mesh of the run that resumes), so a state saved on a 2 x 4 mesh restores onto
8 x 1, 4 devices, or one device.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Numbered checkpoints of one run in ``directory`` (an Orbax ``CheckpointManager``).

    Args:
      directory: where the step directories live (created if missing).
      max_to_keep: how many of the latest checkpoints to keep (None: all).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpts = Checkpoints(tempfile.mkdtemp())
      >>> ckpts.save(3, {"w": jnp.arange(4.0)})
      >>> ckpts.latest_step()
      3
      >>> ckpts.restore(3, {"w": jnp.zeros(4)})["w"].tolist()
      [0.0, 1.0, 2.0, 3.0]
      >>> ckpts.close()
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3):
        if max_to_keep is not None and (isinstance(max_to_keep, bool)
                                        or not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, *, wait: bool = True) -> None:
        """Saves the pytree ``state`` (arrays sharded or not) as checkpoint ``step``; with
        ``wait`` (default) returns once it is on disk (complete checkpoints only: a run killed
        mid-save leaves no step that :meth:`latest_step` reports)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self._manager.save(step, args=ocp.args.StandardSave(state))
        if wait:
            self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None, target: Any) -> Any:
        """Restores checkpoint ``step`` (None: the latest) with ``target``'s structure, shapes,
        dtypes and shardings.

        Args:
          step: the checkpoint, or None for :meth:`latest_step`.
          target: a pytree like the saved state: arrays (their sharding is used) or
            ``jax.ShapeDtypeStruct`` with ``sharding=`` (see :func:`abstract_state`).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"steps there: {self.all_steps()}")
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state(target)))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def abstract_state(target: Any, shardings: Any = None) -> Any:
    """``target``'s arrays as ``jax.ShapeDtypeStruct`` with a sharding: ``shardings`` (a pytree
    of shardings like ``target``, or one sharding for every array) if given, else each array's
    own (an unplaced NumPy array: the default device).

    Example:
      >>> import jax.numpy as jnp
      >>> abstract_state({"w": jnp.zeros((2, 3))})["w"].shape
      (2, 3)
    """
    if shardings is None:
        def one(x):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return jax.tree_util.tree_map(one, target)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), target)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
