"""Runs one sharded step on every process of a (possibly multi-host) run.

``python -m dp2ejax.parallel.launch STEP --out result.npz [--mesh data=-1] [--set key=value]``

Every process runs this same command (on a cluster: one per host, with the ``DP2EJAX_*``
variables of :mod:`dp2ejax.parallel.distributed` set by the job script; on one machine:
:func:`dp2ejax.parallel.distributed.spawn_local`). Each joins the run
(:func:`~dp2ejax.parallel.distributed.initialize`), builds the mesh over all processes'
devices, runs the step from :data:`dp2ejax.parallel.steps.STEPS` and process 0 writes the
step's arrays to ``--out`` (``.npz``). Alone (no ``DP2EJAX_*`` variables), it is a
single-process run of the same step.
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
    parser.add_argument("step", choices=sorted(STEPS), help="the sharded step to run")
    parser.add_argument("--out", required=True, help="where process 0 writes the result (.npz)")
    parser.add_argument("--mesh", nargs="*", default=None, metavar="AXIS=SIZE",
                        help="mesh axes (default: the step's own, e.g. samples=-1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="step options (JSON values, e.g. depth=4)")
    args = parser.parse_args(argv)

    from dp2ejax.parallel.distributed import initialize

    config = initialize()
    import jax
    import numpy as np

    from dp2ejax.parallel.mesh import make_mesh

    step = STEPS[args.step]
    mesh_axes = step.mesh if args.mesh is None else {
        k: int(v) for k, v in parse_assignments(args.mesh, "--mesh").items()}
    options = {}
    for key, text in parse_assignments(args.set, "--set").items():
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    mesh = make_mesh(mesh_axes)
    result = step(mesh, **options)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        np.savez(args.out, **result)
    print(json.dumps({"process": jax.process_index(), "processes": config.num_processes,
                      "devices": jax.device_count(), "mesh": dict(mesh.shape)}), flush=True)
    if config.num_processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
