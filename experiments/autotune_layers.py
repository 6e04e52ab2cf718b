"""Per-layer precision autotuning of a trained model, ending in a report.

Trains the run the config describes (or resumes / reuses it: ``experiments/train_gcn.py``,
``experiments/train_sparse_transformer.py``), then runs ``dp2ejax tune`` on it: the cheapest
format per layer and role within the config's ``[tune]`` budget, written to the run directory
as ``policy.toml`` / ``policy.json``, with the tuning section added to its report.

Usage::

    python experiments/autotune_layers.py [--config configs/quickstart.toml]
        [--experiment gcn|sparse_transformer] [--set key=value ...] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str | Path, *, experiment: str = "gcn", overrides=(), quiet: bool = True) -> dict:
    """Trains (or reuses) the run, tunes it; returns the run's results (with ``"tuning"``)."""
    from dp2ejax import cli
    from experiments import as_config, train_gcn, train_sparse_transformer

    trainers = {"gcn": train_gcn, "sparse_transformer": train_sparse_transformer}
    if experiment not in trainers:
        raise ValueError(f"experiment must be one of {sorted(trainers)}, got {experiment!r}")
    tune_overrides = [o for o in overrides if o.startswith("tune.")]
    overrides = [o for o in overrides if not o.startswith("tune.")]
    cfg = as_config(config, overrides).replace(run={"experiment": experiment})
    trainers[experiment].run(cfg, quiet=quiet)
    args = ["tune", "--run", str(cfg.run_dir), *sum((["--set", o] for o in tune_overrides), [])]
    if cli.main(args) != 0:
        raise RuntimeError(f"dp2ejax tune failed on {cfg.run_dir}")
    return cli._results(cfg.run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/autotune_layers.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.toml"),
                        help="the TOML config (default configs/quickstart.toml)")
    parser.add_argument("--experiment", default="gcn", choices=("gcn", "sparse_transformer"),
                        help="which model to train and tune")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from dp2ejax.config import ConfigError

    try:
        results = run(args.config, experiment=args.experiment, overrides=args.overrides,
                      quiet=args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tuning = results["tuning"]
    print(f"feasible: {tuning['feasible']}, evaluations: {tuning['evaluations']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
