"""Mixed-precision linear algebra: iterative refinement against the condition number, PageRank
per format pair, and unite-and-conquer restarts against the best single co-method.

Three parts, each through the public API of :mod:`dp2ejax.linalg`, configured by the
``[linalg]`` section (:class:`dp2ejax.config.LinalgConfig`):

* ``"ir"``: for every factor format x method x condition number, ``solve_ir(A, A @ ones,
  factor_format=..., method=..., x_true=ones)`` with ``A = matrix_with_condition(ir_size,
  kappa, seed)`` (fp64 working and residual formats): status, refinement steps, backward error
  per step, GMRES steps; and per (format, method) the largest kappa at which it converged.
* ``"pagerank"``: ``pagerank`` of a directed Erdos-Renyi graph (with dangling nodes) per
  ``storage/accumulation`` format pair: status, iterations, Kendall tau of the top-k and overlap
  against fp64, largest score difference, and CESTAC digits for the pairs of
  ``pagerank_cestac``.
* ``"eigs"``: ``eigs_uc`` on a non-symmetric sparse matrix with the co-methods'
  ``eigs_subspace_sizes`` together and each alone: restarts, convergence, the best relative
  residual per Arnoldi cycle; and which single co-method needed the fewest restarts.

The quickstart (``make run``) runs it with the defaults of ``configs/quickstart.toml`` (about
20 s on 2 CPU cores, compilation included) and puts it in its report. Alone::

    python -m experiments.linalg_study [--config configs/quickstart.toml]
        [--set linalg.ir_size=48 ...] [--out runs/linalg] [--quiet]
    dp2ejax linalg --set linalg.pagerank_nodes=5000

writes ``results.json`` (``summary``, ``linalg``, ``config``) and the report (``report.html``,
``report.md``, ``report.json``, ``figures/``) in ``--out`` (default ``<run.out_dir>/linalg``).

Importable: ``run(config)`` returns the JSON-safe data of the report's ``"linalg"`` section.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)  # solve_ir and pagerank compute on a float64 carrier

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from dp2ejax.config import Config, ConfigError, LinalgConfig, format_pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "quickstart.toml"
PARTS = ("ir", "pagerank", "eigs")
METHOD_NAMES = {"lu": "LU-IR", "gmres": "GMRES-IR"}
EIGS_TOL = 1e-10  # eigs_uc's default: the largest relative residual of the wanted Ritz pairs


def _linalg_config(config: Config | LinalgConfig | None) -> LinalgConfig:
    if config is None:
        return LinalgConfig()
    if isinstance(config, Config):
        return config.linalg
    if isinstance(config, LinalgConfig):
        return config
    raise TypeError(f"config: expected a Config, a LinalgConfig or None, got "
                    f"{type(config).__name__}")


# --- iterative refinement ------------------------------------------------------------------------

def ir_study(la: LinalgConfig) -> dict[str, Any]:
    """LU-IR / GMRES-IR per factor format and condition number; limits per format and method."""
    from dp2ejax.linalg import matrix_with_condition, solve_ir
    from dp2ejax.report.sections import ir_convergence_limits

    n = la.ir_size
    ones = np.ones(n)
    runs, tol = [], None
    for cond in la.ir_conditions:
        a = matrix_with_condition(n, cond, seed=la.seed)
        b = a @ ones
        for fmt in la.ir_formats:
            for method in la.ir_methods:
                r = solve_ir(a, b, factor_format=fmt, method=method, x_true=ones,
                             gmres_max_iter=la.ir_gmres_steps)
                tol = r.tol
                runs.append({
                    "factor_format": r.factor_format, "method": method, "condition": cond,
                    "status": r.status, "iterations": r.iterations,
                    "backward_error": r.backward_errors[-1] if r.backward_errors else None,
                    "forward_error": r.forward_errors[-1] if r.forward_errors else None,
                    "backward_errors": list(r.backward_errors),
                    "gmres_iterations": list(r.gmres_iterations),
                    "gmres_steps": int(sum(r.gmres_iterations)),
                })
    order = {(f, m): i for i, (f, m) in enumerate(
        (f, m) for f in la.ir_formats for m in la.ir_methods)}
    runs.sort(key=lambda row: (order.get((row["factor_format"], row["method"]), 0),
                               row["condition"]))
    return {"n": n, "seed": la.seed, "working_format": "fp64", "residual_format": "fp64",
            "tol": tol, "gmres_max_iter": la.ir_gmres_steps,
            "conditions": list(la.ir_conditions), "runs": runs,
            "limits": ir_convergence_limits(runs)}


# --- PageRank ------------------------------------------------------------------------------------

def pagerank_graph(nodes: int, degree: float, seed: int):
    """The directed Erdos-Renyi graph of the PageRank part (a share ``exp(-degree)`` of its
    nodes has no out-edge)."""
    from dp2ejax.graph import erdos_renyi

    p = min(1.0, degree / max(nodes - 1, 1))
    return erdos_renyi(nodes, p, seed=seed, directed=True, name=f"directed_er_n{nodes}")


def pagerank_study(la: LinalgConfig) -> dict[str, Any]:
    """PageRank per ``storage/accumulation`` pair against fp64 (tau, overlap, max difference,
    CESTAC digits)."""
    from dp2ejax.linalg import pagerank

    graph = pagerank_graph(la.pagerank_nodes, la.pagerank_degree, la.seed)
    adjacency = graph.adjacency
    dangling = int(np.sum(np.asarray(adjacency.row_sums()) == 0))
    cestac = {format_pair(p) for p in la.pagerank_cestac}
    runs = []
    result = None
    for text in la.pagerank_pairs:
        storage, acc = format_pair(text)
        result = pagerank(adjacency, storage_format=storage, accumulation_format=acc,
                          cestac=(storage, acc) in cestac, top_k=la.pagerank_top_k)
        reference = (storage, acc) == ("fp64", "fp64")  # the run the others are compared with
        runs.append({
            "storage_format": storage, "accumulation_format": acc, "status": result.status,
            "iterations": result.iterations,
            "residual": result.residuals[-1] if result.residuals else None,
            "kendall_tau_top_k": 1.0 if reference else result.kendall_tau_top_k,
            "top_k_overlap": 1.0 if reference else result.top_k_overlap,
            "max_abs_diff_fp64": 0.0 if reference else result.max_abs_diff_fp64,
            "digits_median": result.digits_median(),
            "digits_min": None if result.digits is None else float(np.min(result.digits)),
        })
    return {"graph": {"name": graph.name, "nodes": graph.num_nodes,
                      "edges": int(graph.num_edges), "dangling": dangling},
            "alpha": None if result is None else result.alpha,
            "tol": None if result is None else result.tol,
            "top_k": min(la.pagerank_top_k, graph.num_nodes), "runs": runs}


# --- unite and conquer ---------------------------------------------------------------------------

def _best_per_cycle(history: np.ndarray) -> list[float | None]:
    """The smallest largest-residual over the co-methods at each cycle (NaN: dropped)."""
    h = np.asarray(history, np.float64).reshape(len(history), -1)
    best = np.where(np.isnan(h), np.inf, h).min(axis=1) if h.size else np.zeros(0)
    return [None if not math.isfinite(v) else float(v) for v in best]


def eigs_study(la: LinalgConfig) -> dict[str, Any]:
    """``eigs_uc`` with all co-methods (unite and conquer) and with each alone."""
    from dp2ejax.linalg import eigs_uc, nonsymmetric_matrix
    from dp2ejax.sparse.csr import CSR

    a = CSR.from_scipy(nonsymmetric_matrix(la.eigs_matrix, la.eigs_size, seed=la.seed),
                       buckets=False)
    sizes = tuple(la.eigs_subspace_sizes)
    common = dict(max_restarts=la.eigs_max_restarts, seed=la.seed, tol=EIGS_TOL)
    uc = eigs_uc(a, la.eigs_k, subspace_sizes=sizes, **common)
    alone = []
    for m in sizes:
        r = eigs_uc(a, la.eigs_k, subspace_sizes=(m,), **common)
        alone.append({"subspace_size": m, "restarts": r.restarts, "converged": r.converged,
                      "final_residual": float(np.max(np.asarray(r.residuals))),
                      "history": _best_per_cycle(r.history)})
    # the best single co-method: the fewest restarts among the converged, else the lowest residual
    best = min(range(len(alone)), key=lambda i: (
        not alone[i]["converged"], alone[i]["restarts"] if alone[i]["converged"] else 0,
        alone[i]["final_residual"]))
    eigenvalues = np.asarray(uc.eigenvalues)
    return {
        "matrix": la.eigs_matrix, "n": la.eigs_size, "k": la.eigs_k, "tol": EIGS_TOL,
        "max_restarts": la.eigs_max_restarts, "subspace_sizes": list(sizes),
        "uc": {"restarts": uc.restarts, "converged": uc.converged,
               "final_residual": float(np.max(np.asarray(uc.residuals))),
               "best_method": uc.best_method,
               "dropped": [{"method": i, "subspace_size": sizes[i], "reason": reason}
                           for i, reason in uc.dropped],
               "history": _best_per_cycle(uc.history),
               "history_per_method": [list(col) for col in np.asarray(uc.history).T],
               "eigenvalues": [[float(v.real), float(v.imag)] for v in eigenvalues]},
        "alone": alone,
        "best_alone": {"index": best, **{key: alone[best][key] for key in
                                         ("subspace_size", "restarts", "converged")}},
    }


# --- the study -----------------------------------------------------------------------------------

STUDIES: dict[str, Callable[[LinalgConfig], dict[str, Any]]] = {
    "ir": ir_study, "pagerank": pagerank_study, "eigs": eigs_study}


def run(config: Config | LinalgConfig | None = None, *, parts: Sequence[str] = PARTS,
        quiet: bool = True) -> dict[str, Any]:
    """Runs the study's ``parts``; returns the report's ``"linalg"`` section (JSON-safe).

    Args:
      config: a :class:`~dp2ejax.config.Config` (its ``linalg``), a
        :class:`~dp2ejax.config.LinalgConfig`, or None for the defaults.
      parts: any of ``"ir"``, ``"pagerank"``, ``"eigs"``.
      quiet: no progress messages (on stderr).

    Returns:
      ``{"ir": ..., "pagerank": ..., "eigs": ..., "seconds": {part: wall time}}``.
    """
    from dp2ejax.report import to_jsonable

    la = _linalg_config(config)
    unknown = [p for p in parts if p not in STUDIES]
    if unknown or not parts:
        raise ValueError(f"parts: expected some of {', '.join(PARTS)}, got {list(parts)}")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    out: dict[str, Any] = {}
    seconds = {}
    for part in PARTS:
        if part in parts:
            say(f"  linalg: {part}")
            start = time.perf_counter()
            out[part] = STUDIES[part](la)
            seconds[part] = round(time.perf_counter() - start, 2)
    out["seconds"] = seconds
    return to_jsonable(out)


def headline(data: dict[str, Any]) -> dict[str, Any]:
    """A few summary numbers of :func:`run`'s data: how far fp16 (or the lowest format) IR
    converges, PageRank's lowest Kendall tau, U&C restarts against the best co-method."""
    out: dict[str, Any] = {}
    ir = data.get("ir")
    if ir and ir.get("limits"):
        formats = [row["factor_format"] for row in ir["limits"]]
        fmt = "fp16" if "fp16" in formats else formats[-1]
        for row in ir["limits"]:
            if row["factor_format"] == fmt:
                largest = row["largest_converged"]
                out[f"{METHOD_NAMES.get(row['method'], row['method'])} {fmt}: largest kappa "
                    f"converged"] = "none" if largest is None else f"{largest:.0e}"
    pr = data.get("pagerank")
    if pr and pr.get("runs"):
        scored = [r for r in pr["runs"] if r.get("kendall_tau_top_k") is not None]
        if scored:
            low = min(scored, key=lambda r: r["kendall_tau_top_k"])
            out[f"PageRank lowest Kendall tau (top {pr.get('top_k')})"] = (
                f"{low['kendall_tau_top_k']:.3f} "
                f"({low['storage_format']}/{low['accumulation_format']})")
    eigs = data.get("eigs")
    if eigs and eigs.get("uc") and eigs.get("best_alone"):
        best = eigs["best_alone"]
        out["U&C restarts / best single co-method"] = (
            f"{eigs['uc']['restarts']} / {best['restarts']} (m = {best['subspace_size']}"
            f"{'' if best['converged'] else ', not converged'})")
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line: ``--config``, ``--set``, ``--out``, ``--quiet``; config errors print
    ``error: ...`` and return 2."""
    from dp2ejax.config import load_config
    from dp2ejax.report import write_report
    from experiments import write_json

    parser = argparse.ArgumentParser(prog="python -m experiments.linalg_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="TOML config whose [linalg] section is used (default: "
                             "%(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. "
                        "linalg.ir_size=48 (repeatable; values are TOML literals)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <run.out_dir>/linalg)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path(cfg.run.out_dir) / "linalg"
    data = run(cfg, quiet=args.quiet)
    results = {"summary": {**headline(data), "seconds": round(sum(data["seconds"].values()), 1)},
               "linalg": data, "config": {"linalg": dataclasses.asdict(cfg.linalg)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    paths = write_report(out_dir, results, title="dp2ejax: mixed-precision linear algebra")
    for key, value in results["summary"].items():
        print(f"  {key:<48} {value}")
    print(f"report: {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
