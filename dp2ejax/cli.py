"""The ``dp2ejax`` command: train, analyze, tune, report, bench and linalg, driven by TOML configs.

    dp2ejax train --config configs/quickstart.toml --set train.steps=100
    dp2ejax analyze --name quickstart_gcn
    dp2ejax tune --name quickstart_gcn
    dp2ejax report --name quickstart_gcn
    dp2ejax bench arith --quick
    dp2ejax linalg --set linalg.ir_size=48

A run lives in ``<run.out_dir>/<run.name>/`` (default ``runs/<name>``): its resolved
``config.toml``, ``metrics.jsonl``, Orbax ``checkpoints/``, ``results.json`` and the report.
Training the same run again resumes it from its last checkpoint (or returns its results when it
finished). Config errors print ``error: <message>`` and exit with status 2.

The experiments are the scripts of ``experiments/`` and the benchmarks those of
``benchmarks/`` in the source checkout beside the package (an editable install).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dp2ejax.config import EXPERIMENTS, Config, ConfigError, describe_schema, load_config

__all__ = ["build_parser", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
BENCHMARK_DIR = REPO_ROOT / "benchmarks"


class CommandError(Exception):
    """A failure to report as ``error: <message>`` with an exit status (no traceback)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _wrap(text: str, width: int = 88) -> str:
    """Paragraphs (and ``  key = ...`` lines) wrapped for the raw help formatter."""
    lines = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        hanging = " " * (indent + 4 if indent else 0)
        lines.append(textwrap.fill(line, width, subsequent_indent=hanging) if line.strip() else "")
    return "\n".join(lines)


# --- parser --------------------------------------------------------------------------------------


def _benchmarks() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCHMARK_DIR.glob("bench_*.py"))


def _add_run_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which run")
    group.add_argument("--name", help="the run's name: its directory is OUT_DIR/NAME")
    group.add_argument("--out-dir", default="runs",
                       help="directory of the run directories (default: %(default)s)")
    group.add_argument("--run", metavar="RUN_DIR",
                       help="the run directory itself (instead of --name and --out-dir)")


def _add_set(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help=f"override a config key ({what}); repeatable; the value is a TOML "
                             f"literal (10, 1e-3, true, \"text\", [1, 2], {{data = 4}}) or a "
                             f"bare word taken as a string")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dp2ejax`` (one subparser per subcommand)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dp2ejax", formatter_class=raw,
        description=_wrap("Emulated-precision experiments: train a model under a precision policy, "
                    "analyze its numerical accuracy (CESTAC digits, oversmoothing), tune a "
                    "per-layer policy, render a report, run the benchmarks."),
        epilog="Run `dp2ejax <command> --help` for a command's options. Exit status: 0 on "
               "success, 2 for a bad config or command line, 1 for other errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keys = _wrap("config keys (section.key = default  (type) meaning):\n" + describe_schema())
    train = sub.add_parser(
        "train", formatter_class=raw, help="train (or resume) an experiment",
        description=_wrap("Train an experiment from a TOML config. The run directory "
                    "(run.out_dir/run.name) gets config.toml first, then metrics.jsonl, "
                    "checkpoints every train.checkpoint_every steps, and results.json at the "
                    "end. Running it again resumes from the last complete checkpoint (same "
                    "config only) or returns the finished results."),
        epilog=keys)
    train.add_argument("--experiment", choices=EXPERIMENTS,
                       help="what to train (sets run.experiment; default: the config's)")
    train.add_argument("--config", metavar="TOML",
                       help=f"the config file (default: {CONFIG_DIR}/<experiment>.toml)")
    _add_set(train, "e.g. train.steps=100")
    train.add_argument("--name", help="the run's name (sets run.name)")
    train.add_argument("--out-dir", help="directory of the run directories (sets run.out_dir)")
    train.add_argument("--overwrite", action="store_true",
                       help="discard an existing run of that name (with another config, or "
                            "finished) and train from scratch")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--stop-after", type=int, metavar="STEPS",
                       help="stop after this many steps as if killed, to try resuming")

    analyze = sub.add_parser(
        "analyze", formatter_class=raw, help="CESTAC digits and oversmoothing of a trained run",
        description=_wrap("Load a trained run's model from its latest checkpoint and compute the "
                    "CESTAC exact significant digits of every layer's output "
                    "(analyze.cestac_format, analyze.cestac_samples) and, for a GCN, an "
                    "oversmoothing profile per format (analyze.oversmoothing_policies). The "
                    "results go into the run's results.json and the report is rendered "
                    "again."))
    _add_run_selection(analyze)
    _add_set(analyze, "analyze.* only, e.g. analyze.cestac_format=fp16")
    analyze.add_argument("--no-report", action="store_true",
                         help="do not render the report afterwards")

    tune = sub.add_parser(
        "tune", formatter_class=raw, help="autotune a per-layer precision policy for a run",
        description=_wrap("Load a trained run's model from its latest checkpoint and search the "
                    "cheapest per-layer policy (dp2ejax.tune.autotune) meeting tune.criterion "
                    "(a relative error) over tune.candidates. Writes policy.toml and "
                    "policy.json into the run directory and the search into results.json "
                    "(section 'tuning'), then renders the report again."))
    _add_run_selection(tune)
    _add_set(tune, "tune.* only, e.g. tune.criterion=1e-3")
    tune.add_argument("--no-report", action="store_true",
                      help="do not render the report afterwards")

    report = sub.add_parser(
        "report", formatter_class=raw, help="render a run's results as HTML and Markdown",
        description=_wrap("Render RUN_DIR/results.json with dp2ejax.report.write_report into "
                    "report.html, report.md (figures/*.png) and report.json in the run "
                    "directory, and print the HTML report's path."))
    _add_run_selection(report)
    report.add_argument("--title", help="the page title (default: the run's name)")

    bench = sub.add_parser(
        "bench", formatter_class=raw, help="run one of the benchmarks",
        description=_wrap("Run benchmarks/bench_<NAME>.py in a subprocess (its JSON output goes "
                    "where that script writes it, under benchmarks/out/). Arguments after "
                    "`--` are passed to the script."))
    bench.add_argument("benchmark", nargs="?", metavar="NAME",
                       help=f"which benchmark: {', '.join(_benchmarks()) or '(none found)'}")
    bench.add_argument("--quick", action="store_true",
                       help="the script's smoke run (small sizes, few repetitions)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("script_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                       help="further arguments for the script")

    linalg = sub.add_parser(
        "linalg", formatter_class=raw, help="the mixed-precision linear-algebra study",
        description=_wrap("Run experiments/linalg_study.py: LU-IR and GMRES-IR per factor "
                    "format against the condition number, PageRank per storage/accumulation "
                    "format pair, unite-and-conquer restarts against each co-method alone "
                    "(the linalg.* keys). Writes results.json and the report into --out."))
    linalg.add_argument("--config", metavar="TOML",
                        help=f"the config whose [linalg] section is used (default: "
                             f"{CONFIG_DIR}/quickstart.toml)")
    _add_set(linalg, "e.g. linalg.ir_size=48")
    linalg.add_argument("--out", metavar="DIR",
                        help="output folder (default: <run.out_dir>/linalg)")
    linalg.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


# --- commands ------------------------------------------------------------------------------------


def _experiment(name: str):
    """The experiment script ``experiments/train_<name>.py`` as a module."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"run.experiment: expected one of {', '.join(EXPERIMENTS)}, got "
                          f"{name!r}")
    if not (REPO_ROOT / "experiments" / f"train_{name}.py").is_file():
        raise CommandError(f"experiments/train_{name}.py is not beside the dp2ejax package "
                           f"({REPO_ROOT}); run from a source checkout (pip install -e .)")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"experiments.train_{name}")


def _train(args) -> int:
    config_path = args.config
    if config_path is None:
        default = CONFIG_DIR / f"{args.experiment or 'gcn'}.toml"
        config_path = default if default.is_file() else None
    overrides = list(args.overrides)
    for key, value in (("run.experiment", args.experiment), ("run.name", args.name),
                       ("run.out_dir", args.out_dir)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_config(config_path, overrides)
    module = _experiment(cfg.run.experiment)
    results = module.run(cfg, stop_after=args.stop_after, overwrite=args.overwrite,
                         quiet=args.quiet)
    if "stopped_at" in results:
        print(f"stopped after step {results['stopped_at']}: {cfg.run_dir} (train again to "
              f"resume)")
        return 0
    print(f"run: {cfg.run_dir}")
    for key, value in results.get("summary", {}).items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


def _run_dir(args) -> Path:
    if args.run is not None:
        if args.name is not None:
            raise ConfigError("give either --run or --name, not both")
        return Path(args.run)
    if args.name is None:
        raise ConfigError("which run? give --name NAME (and --out-dir) or --run RUN_DIR")
    return Path(args.out_dir) / args.name


def _run_config(run_dir: Path, overrides: Sequence[str], section: str) -> Config:
    """The run's saved config with ``section.*`` overrides; ``run.out_dir``/``run.name`` are
    pointed at ``run_dir`` (the run may have been moved)."""
    from dp2ejax.config import apply_overrides, from_dict, parse_override
    from experiments import saved_config

    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] != section:
            raise ConfigError(f"--set {text}: only {section}.* keys can be changed here (the "
                              f"others describe the trained run)")
    cfg = saved_config(run_dir)
    data = apply_overrides(cfg.to_dict(), overrides)
    data["run"] = {**data["run"], "out_dir": str(run_dir.parent), "name": run_dir.name}
    return from_dict(data, source="--set")


def _import_experiments() -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _results(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"no run at {run_dir} (no config.toml there)")
    path = run_dir / "results.json"
    if not path.is_file():
        raise CommandError(f"{path} is missing: the run has not finished training "
                           f"(`dp2ejax train` it to the end first)")
    return json.loads(path.read_text())


def _write_results(run_dir: Path, results: dict[str, Any]) -> None:
    from experiments import write_json

    write_json(run_dir / "results.json", results)


def _render(run_dir: Path, results: dict[str, Any], title: str | None = None) -> Path:
    try:
        from dp2ejax.report import write_report
    except ImportError as err:
        raise CommandError(f"the report module is not available ({err}); dp2ejax.report "
                           f"provides write_report") from None
    try:
        paths = write_report(run_dir, results, title=title)
    except ValueError as err:
        raise CommandError(f"cannot render {run_dir / 'results.json'}: {err}") from None
    return Path(paths["html"]) if isinstance(paths, dict) and "html" in paths else run_dir


def _analyze(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # fp64 carriers for CESTAC and the profiles
    _import_experiments()
    run_dir = _run_dir(args)
    cfg = _run_config(run_dir, args.overrides, "analyze")
    results = _results(run_dir)
    module = _experiment(cfg.run.experiment)
    model, variables, inputs = module.trained_model(cfg)
    a = cfg.analyze
    if a.cestac:
        from dp2ejax.cestac import analyze_layers

        layers, _ = analyze_layers(model, variables, *inputs, fmt=a.cestac_format,
                                   samples=a.cestac_samples,
                                   key=jax.random.key(cfg.train.seed))
        rows = [row for row in results.get("cestac", {}).get(cfg.run.name, [])
                if row.get("format") != a.cestac_format]
        rows += [{"layer": layer.path or "(output)", "format": a.cestac_format,
                  "digits_min": layer.digits_min, "digits_median": layer.digits_median,
                  "computational_zeros": layer.computational_zeros} for layer in layers]
        results.setdefault("cestac", {})[cfg.run.name] = rows
        print(f"CESTAC digits per layer ({a.cestac_format}, {a.cestac_samples} samples):")
        for layer in layers:
            print(f"  {layer.path or '(output)':<32} min {layer.digits_min:5.2f}  median "
                  f"{layer.digits_median:5.2f}")
    if a.oversmoothing and cfg.run.experiment == "gcn":
        from dp2ejax.graph import oversmoothing_profile

        x, P = inputs
        profile = oversmoothing_profile(P, x, model=model, params=variables,
                                        policies=list(a.oversmoothing_policies),
                                        seed=cfg.train.seed)
        results["oversmoothing"] = profile.to_dict()
        print(profile.summary())
    _write_results(run_dir, results)
    print(f"results: {run_dir / 'results.json'}")
    if not args.no_report:
        print(f"report: {_render(run_dir, results)}")
    return 0


def _tune(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the autotuner's fp64 reference
    _import_experiments()
    run_dir = _run_dir(args)
    cfg = _run_config(run_dir, args.overrides, "tune")
    results = _results(run_dir)
    try:
        from dp2ejax.tune import autotune
    except ImportError as err:
        raise CommandError(f"the autotuner is not available ({err}); dp2ejax.tune provides "
                           f"autotune") from None
    module = _experiment(cfg.run.experiment)
    if cfg.run.experiment == "sparse_transformer":
        model, variables, inputs = module.trained_model(cfg, batch=cfg.tune.calibration_batch)
    else:
        model, variables, inputs = module.trained_model(cfg)
    t = cfg.tune
    try:
        result = autotune(model.apply, variables, inputs, candidates=tuple(t.candidates),
                          criterion=t.criterion, cost_model=t.cost_model, search=t.search,
                          seed=t.seed, report_costs=tuple(t.report_costs))
    except ValueError as err:
        raise ConfigError(f"tune: {err}") from None
    (run_dir / "policy.toml").write_text(result.policy.to_toml())
    (run_dir / "policy.json").write_text(result.policy.to_json(indent=1) + "\n")
    results["tuning"] = result.to_dict()
    _write_results(run_dir, results)
    print(result.summary())
    print(f"policy: {run_dir / 'policy.toml'}")
    if not args.no_report:
        print(f"report: {_render(run_dir, results)}")
    return 0


def _report(args) -> int:
    run_dir = _run_dir(args)
    print(_render(run_dir, _results(run_dir), args.title))
    return 0


def _bench(args) -> int:
    names = _benchmarks()
    if args.list:
        print("\n".join(names))
        return 0
    if args.benchmark is None:
        raise ConfigError(f"which benchmark? one of: {', '.join(names)} (or --list)")
    if args.benchmark not in names:
        raise ConfigError(f"unknown benchmark {args.benchmark!r}; known: {', '.join(names)}")
    extra = [a for a in args.script_args if a != "--"] if args.script_args else []
    command = [sys.executable, str(BENCHMARK_DIR / f"bench_{args.benchmark}.py"),
               *(["--quick"] if args.quick else []), *extra]
    print(" ".join(command), file=sys.stderr)
    return subprocess.run(command, cwd=REPO_ROOT).returncode


def _linalg(args) -> int:
    _import_experiments()
    try:
        from experiments import linalg_study
    except ImportError as err:
        raise CommandError(f"experiments/linalg_study.py cannot be imported ({err}); run from a "
                           f"source checkout (pip install -e .)") from None
    argv = [*(["--config", args.config] if args.config else []),
            *sum((["--set", o] for o in args.overrides), []),
            *(["--out", args.out] if args.out else []), *(["--quiet"] if args.quiet else [])]
    return linalg_study.main(argv)


_COMMANDS = {"train": _train, "analyze": _analyze, "tune": _tune, "report": _report,
             "bench": _bench, "linalg": _linalg}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``dp2ejax`` command; returns the exit status.

    Example:
      >>> main(["train", "--set", "train.stepz=1"])  # doctest: +SKIP
      error: unknown key 'train.stepz' (from --set); did you mean 'train.steps'? ...
      2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status


if __name__ == "__main__":
    sys.exit(main())
