"""Training experiments driven by ``configs/`` (:mod:`dp2ejax.config`), and the run directory
and resumable training loop they share.

A run lives in ``<run.out_dir>/<run.name>/``::

    config.toml     the resolved config, written first (atomically)
    metrics.jsonl   one JSON object per step: {"step": 1, "loss": ..., ...}
    checkpoints/    Orbax checkpoints (params, optimizer state, step) every checkpoint_every steps
    results.json    written last (atomically): summary, training history, config, versions

:func:`train` resumes from the newest complete checkpoint when the run directory holds one and
its ``config.toml`` equals the current config; everything a step draws at random (dropout,
stochastic rounding, the synthetic batches) is a pure function of ``(train.seed, step)``, so a
resumed run reaches bit for bit the parameters of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dp2ejax.config import Config, ConfigError, config_diff, load_config
from dp2ejax.report.write import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"

# keys whose change does not make a run another run (moving the runs directory; the [linalg]
# study, which trains nothing)
_IGNORED_IN_RESUME = ("run.out_dir", "linalg")


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What an experiment gives :func:`train`.

    Attributes:
      init_state: the pytree ``{"params", "opt_state", "step"}`` at step 0 (placed on the
        devices the run uses; checkpoints restore onto its shardings).
      step: ``state -> (state, metrics)``, one jitted optimisation step; ``metrics`` is a dict
        of scalars (``loss`` first).
      evaluate: ``state -> dict`` of final scalar metrics (host floats).
    """

    init_state: Any
    step: Callable[[Any], tuple[Any, Mapping[str, Any]]]
    evaluate: Callable[[Any], dict[str, float]]


def as_config(config: Config | str | os.PathLike, overrides=()) -> Config:
    """A :class:`Config` from a config or a TOML path (plus overrides)."""
    if isinstance(config, Config):
        if overrides:
            from dp2ejax.config import apply_overrides, from_dict

            return from_dict(apply_overrides(config.to_dict(), overrides), source="--set")
        return config
    return load_config(config, overrides)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON (non-finite floats as null)."""
    atomic_write(path, json.dumps(_json_safe(data), indent=1) + "\n")


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in ("dp2ejax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def saved_config(run_dir: Path) -> Config:
    """The config a run directory was started with (``run_dir/config.toml``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no run at {run_dir}: {CONFIG_FILE} is missing (train it first with "
                          f"`dp2ejax train`)")
    try:
        return load_config(path)
    except ConfigError as err:
        raise ConfigError(f"{path} is not a valid config ({err}); start the run again with "
                          f"--overwrite") from None


def run_status(config: Config, *, overwrite: bool = False) -> str:
    """What the run directory holds for ``config``, checked without writing anything:
    ``"new"`` (absent or empty), ``"resume"`` (same config, unfinished), ``"complete"`` (same
    config, ``results.json`` present) or ``"overwrite"`` (``overwrite`` and a run is there).

    Raises:
      ConfigError: the directory holds a run with another config (and not ``overwrite``), or
        something that is not a run.
    """
    run_dir = config.run_dir
    if not run_dir.exists() or (run_dir.is_dir() and all(
            p.name.startswith(f".{CONFIG_FILE}.") for p in run_dir.iterdir())):
        return "new"  # empty, or only the temporary file of a config.toml cut by a kill
    if not run_dir.is_dir():
        raise ConfigError(f"run.name: {run_dir} exists and is not a directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"run.name: {run_dir} exists but is not a run directory (no "
                          f"{CONFIG_FILE}); pick another run name (--name) or run.out_dir")
    if overwrite:
        return "overwrite"
    try:
        previous = load_config(run_dir / CONFIG_FILE)
    except ConfigError as err:
        raise ConfigError(f"{run_dir / CONFIG_FILE} is not a valid config ({err}); pass "
                          f"--overwrite to start the run again") from None
    diff = config_diff(previous, config, ignore=_IGNORED_IN_RESUME)
    if diff:
        shown = "; ".join(diff[:5]) + ("; ..." if len(diff) > 5 else "")
        raise ConfigError(f"run {run_dir} was started with another config ({shown}); pick "
                          f"another run name (--name / run.name) or pass --overwrite to "
                          f"discard it")
    return "complete" if (run_dir / RESULTS_FILE).is_file() else "resume"


def read_metrics(run_dir: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    """The logged per-step metrics (complete lines only, ``step <= up_to``), in step order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int) and (
                up_to is None or row["step"] <= up_to):
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def history(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Per-step rows -> ``{"step": [...], "loss": [...], ...}``."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def _progress(total: int, initial: int, quiet: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        return None
    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=disable, file=sys.stderr, desc=desc,
                dynamic_ncols=True)


def train(config: Config, build: Callable[[Config], Trainer], *, stop_after: int | None = None,
          overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Runs (or resumes, or returns the finished results of) the run ``config`` describes.

    Order: check the run directory against the config, build the trainer (which validates the
    data and model), and only then create the directory and write ``config.toml``; so a bad
    config leaves nothing that a later resume would trust.

    Args:
      config: the validated config.
      build: the experiment's ``config -> Trainer``.
      stop_after: stop once this many steps are done, as a kill would (no final checkpoint,
        no results); for tests of resuming.
      overwrite: discard an existing run of that name first.
      quiet: no progress bar.

    Returns:
      The results (as written to ``results.json``), or ``{"stopped_at": step, "run_dir":
      ...}`` after ``stop_after``.
    """
    import jax

    from dp2ejax.parallel.checkpoint import Checkpoints

    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(
            stop_after, int) or stop_after < 0):
        raise ValueError(f"stop_after: expected an int >= 0 or None, got {stop_after!r}")
    status = run_status(config, overwrite=overwrite)
    run_dir = config.run_dir
    if status == "complete":
        return json.loads((run_dir / RESULTS_FILE).read_text())
    trainer = build(config)  # may raise ConfigError: nothing written yet
    if status == "overwrite":
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if status != "resume":
        atomic_write(run_dir / CONFIG_FILE, config.to_toml())
    steps, every = config.train.steps, config.train.checkpoint_every
    started = time.perf_counter()
    with Checkpoints(run_dir / CHECKPOINT_DIR, max_to_keep=config.train.max_to_keep) as ckpts:
        start = ckpts.latest_step() or 0
        state = trainer.init_state
        if start:
            state = ckpts.restore(start, trainer.init_state)
        # metrics of steps after the checkpoint (logged before a kill) are recomputed
        atomic_write(run_dir / METRICS_FILE,
                     "".join(json.dumps(row) + "\n" for row in read_metrics(run_dir, start)))
        bar = _progress(steps, start, quiet, f"{config.run.experiment} {config.run.name}")
        try:
            with open(run_dir / METRICS_FILE, "a") as log:
                for step in range(start, steps):
                    if stop_after is not None and step >= stop_after:
                        return {"stopped_at": step, "run_dir": str(run_dir)}
                    state, metrics = trainer.step(state)
                    row = {"step": step + 1,
                           **{k: float(v) for k, v in jax.device_get(metrics).items()}}
                    log.write(json.dumps(_json_safe(row)) + "\n")
                    log.flush()
                    if (step + 1) % every == 0 or step + 1 == steps:
                        ckpts.save(step + 1, state)
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0 or step + 1 == steps:
                            bar.set_postfix(loss=f"{row['loss']:.4g}")
        finally:
            if bar is not None:
                bar.close()
    final = trainer.evaluate(state)
    rows = read_metrics(run_dir)
    summary = {"experiment": config.run.experiment, "steps": steps,
               "final_loss": rows[-1]["loss"] if rows else None, **final,
               "resumed_from": start, "seconds_this_session": time.perf_counter() - started}
    results = {"summary": summary, "training": {config.run.name: history(rows)},
               "config": config.to_dict(), "versions": versions()}
    write_json(run_dir / RESULTS_FILE, results)
    return json.loads(json.dumps(_json_safe(results)))


def restore_final(config: Config, trainer: Trainer) -> Any:
    """The state of the newest checkpoint of ``config``'s run (the final one once trained)."""
    from dp2ejax.parallel.checkpoint import Checkpoints

    directory = config.run_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        raise ConfigError(f"run {config.run_dir} has no checkpoints; train it first")
    with Checkpoints(directory, max_to_keep=None) as ckpts:
        step = ckpts.latest_step()
        if step is None:
            raise ConfigError(f"run {config.run_dir} has no complete checkpoint; train it "
                              f"first")
        return ckpts.restore(step, trainer.init_state)


def script_main(run: Callable[..., dict], default_config: str, argv=None) -> int:
    """The command line of an experiment script: ``--config``, ``--set``, ``--name``,
    ``--overwrite``, ``--quiet``, ``--stop-after``. Config errors print ``error: ...`` and
    return 2."""
    import argparse

    parser = argparse.ArgumentParser(description=(sys.modules[run.__module__].__doc__ or "")
                                     .split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / default_config),
                        help="TOML config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100 "
                        "(repeatable; values are TOML literals)")
    parser.add_argument("--name", help="run name (sets run.name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing run of that name instead of resuming it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop after this many steps as if killed (to test resuming)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"run.name={json.dumps(args.name)}"] if args.name
                                        else [])
    try:
        config = load_config(args.config, overrides)
        results = run(config, stop_after=args.stop_after, overwrite=args.overwrite,
                      quiet=args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results.get("summary", results), indent=1))
    return 0
