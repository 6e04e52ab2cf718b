"""``write_report``: a run's results as ``report.html``, ``report.md`` and ``report.json``."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from dp2ejax.report.render import FIGURES_DIR, figure_path, render_html, render_markdown
from dp2ejax.report.sections import SECTIONS, build_sections, check_sections
from dp2ejax.report.serialize import to_jsonable

VERSION_PACKAGES: tuple[str, ...] = (
    "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "ml_dtypes", "matplotlib", "dp2ejax",
)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never a part.

    Example:
      >>> import tempfile, pathlib
      >>> path = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hello")
      >>> path.read_text(), [p.name for p in path.parent.iterdir()]
      ('hello', ['a.txt'])
    """
    path = pathlib.Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def collect_versions() -> dict[str, str]:
    """Python, the packages a run depends on, the platform, JAX's backend and the date (UTC).

    Example:
      >>> versions = collect_versions()
      >>> {"python", "jax", "numpy", "dp2ejax", "platform", "date"} <= set(versions)
      True
    """
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["platform"] = platform.platform()
    if "jax" in sys.modules:  # the backend of the process that made the results
        jax = sys.modules["jax"]
        try:
            devices = jax.devices()
            versions["jax_backend"] = jax.default_backend()
            versions["devices"] = f"{len(devices)} x {devices[0].device_kind}"
        except RuntimeError:  # pragma: no cover - no backend could start
            pass
    versions["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return versions


def write_report(run_dir: str | os.PathLike, results: Mapping[str, Any], *,
                 title: str | None = None) -> dict[str, pathlib.Path]:
    """Writes a run's results as a self-contained HTML page, Markdown and JSON in ``run_dir``.

    Every key of ``results`` is one optional section; the report shows those present, in this
    order (JSON-safe values; arrays, NumPy scalars and objects with ``to_dict()`` are converted):

    - ``"summary"``: ``{name: number or text}`` headline numbers (a table at the top).
    - ``"training"``: ``{run: {"step": [...], "loss": [...], "train_accuracy": [...],
      "val_accuracy": [...], ...}}``: loss and accuracy curves per run (any series whose name
      contains ``loss`` or ``acc``; ``<name>_step`` or ``eval_step`` give a series its own
      steps) and a table of final values (scalars of a run become columns).
    - ``"cestac"``: ``{model: [{"layer", "format", "digits_min", "digits_median"}, ...]}``:
      digits per layer and format, and a table.
    - ``"oversmoothing"``: :meth:`dp2ejax.graph.OversmoothingProfile.to_dict` or a list of them
      (an optional ``"label"`` names each): relative distance to the dominant eigenspace
      against depth (log scale, ``|λ₂|^ℓ`` and each format's epsilon drawn), Dirichlet energy,
      CESTAC digits when present, and a table of collapse depths and floors.
    - ``"tuning"``: the autotuner's result (``"baselines"``: ``[{"name", "accuracy" or
      "error", "cost"}]``, ``"tuned"``, ``"table"`` of per-layer rows, ``"policy"``,
      ``"criterion"``, ``"evaluations"``, ``"feasible"``, ``"reason"``; each optional):
      accuracy (or error) against cost, the per-layer table, the policy.
    - ``"attention"``: ``bench_attention.py`` cases (or its whole JSON), or short rows
      ``{"seq_len", "density", "sparse_ms", "dense_ms"}``: time and speed-up against block
      density, and a table.
    - ``"linalg"``: ``experiments/linalg_study.py``'s ``{"ir", "pagerank", "eigs"}`` (each
      optional): final backward error of LU-IR / GMRES-IR against the condition number per
      factor format and the convergence limits, Kendall tau against fp64 per PageRank format
      pair, unite-and-conquer residual per cycle against each co-method alone and the restarts.
    - ``"config"``: the run's configuration (a TOML block).
    - ``"versions"``: ``{component: version}``; filled by :func:`collect_versions` when absent.

    Files: ``report.html`` (figures embedded as base64 PNG, inline CSS, no external resource:
    it opens from disk), ``report.md`` with the figures in ``figures/<name>.png``, and
    ``report.json`` (the JSON-safe ``results``, versions included: passing it back to
    ``write_report`` gives the same report). Every file is written to a temporary file and
    renamed, so an interrupted run never leaves a half-written report; all figures are drawn
    before the first file is written.

    Args:
      run_dir: the folder (created if needed), e.g. ``runs/<name>``.
      results: the sections, as above.
      title: the page title (default: ``"dp2ejax report: <folder name>"``).

    Returns:
      ``{"html", "markdown", "json", "figures"}``: the three files and the figures folder.

    Raises:
      ValueError: for a key of ``results`` that is not a section (naming the known ones), a
        section of the wrong shape, or a value with no JSON form.

    Example:
      >>> import tempfile
      >>> results = {"summary": {"accuracy": 0.93},
      ...            "training": {"fp32": {"step": [0, 1, 2], "loss": [1.0, 0.5, 0.25]}}}
      >>> paths = write_report(tempfile.mkdtemp(), results, title="Demo")
      >>> sorted(paths)
      ['figures', 'html', 'json', 'markdown']
      >>> page = paths["html"].read_text()
      >>> 'id="training"' in page, page.count("<img "), "http" in page
      (True, 1, False)
      >>> sorted(p.name for p in paths["figures"].iterdir())
      ['training-loss.png']
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results: expected a dict section name -> data (sections: "
                         f"{', '.join(SECTIONS)}), got a {type(results).__name__}")
    check_sections(results)
    run_dir = pathlib.Path(run_dir)
    results = dict(results)
    if "versions" not in results:
        results["versions"] = collect_versions()
    data = to_jsonable(results)
    sections = build_sections(data)
    title = title if title is not None else f"dp2ejax report: {run_dir.resolve().name}"
    page = render_html(title, sections)
    markdown = render_markdown(title, sections)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"

    figures = run_dir / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for image in section.images:
            atomic_write(run_dir / figure_path(image), image.png)
    paths = {
        "json": atomic_write(run_dir / "report.json", text),
        "markdown": atomic_write(run_dir / "report.md", markdown),
        "html": atomic_write(run_dir / "report.html", page),
        "figures": figures,
    }
    return paths
