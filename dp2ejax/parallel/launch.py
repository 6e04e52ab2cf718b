"""Runs one sharded step on every process of a (possibly multi-host) run.

``python -m dp2ejax.parallel.launch STEP [STEP ...] --out DIR [--mesh rows=-1] [--set key=value]``

Every process runs this same command (on a cluster: one per host, with the ``DP2EJAX_*``
variables of :mod:`dp2ejax.parallel.distributed` set by the job script; on one machine:
:func:`dp2ejax.parallel.distributed.spawn_local`). Each joins the run
(:func:`~dp2ejax.parallel.distributed.initialize`), builds the mesh over all processes'
devices, runs the steps from :data:`dp2ejax.parallel.steps.STEPS` and process 0 writes each
step's arrays to ``DIR/STEP.npz``. Alone (no ``DP2EJAX_*`` variables), it is a single-process
run of the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_assignments(items: list[str], what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``, naming a malformed item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what}: expected key=value, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    from dp2ejax.parallel.steps import STEPS

    parser = argparse.ArgumentParser(
        prog="python -m dp2ejax.parallel.launch", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", choices=sorted(STEPS), metavar="STEP",
                        help=f"the sharded steps to run: {', '.join(sorted(STEPS))}")
    parser.add_argument("--out", required=True,
                        help="directory where process 0 writes STEP.npz for each step")
    parser.add_argument("--mesh", nargs="*", default=None, metavar="AXIS=SIZE",
                        help="mesh axes (default: each step's own, e.g. rows=-1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="step options (JSON values, e.g. depth=4)")
    args = parser.parse_args(argv)

    from dp2ejax.parallel.distributed import initialize

    config = initialize()
    import jax
    import numpy as np

    from dp2ejax.parallel.mesh import make_mesh

    mesh_axes = None
    if args.mesh is not None:
        try:
            mesh_axes = {k: int(v) for k, v in parse_assignments(args.mesh, "--mesh").items()}
        except ValueError as error:
            raise SystemExit(f"--mesh: sizes must be ints: {error}") from None
    options = {}
    for key, text in parse_assignments(args.set, "--set").items():
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    for name in args.steps:
        step = STEPS[name]
        mesh = make_mesh(step.mesh if mesh_axes is None else mesh_axes)
        result = step(mesh, **options)
        if jax.process_index() == 0:
            os.makedirs(args.out, exist_ok=True)
            np.savez(os.path.join(args.out, f"{name}.npz"), **result)
        print(json.dumps({"step": name, "process": jax.process_index(),
                          "processes": config.num_processes, "devices": jax.device_count(),
                          "mesh": dict(mesh.shape)}), flush=True)
    if config.num_processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
