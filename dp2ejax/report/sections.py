"""The sections of a report: what each kind of result becomes (tables, figures, text).

Each builder takes one JSON-safe entry of the results (see :func:`dp2ejax.report.write_report`
for the formats) and returns a list of blocks — :class:`Heading`, :class:`Paragraph`,
:class:`Table`, :class:`Code` and :class:`~dp2ejax.report.figures.Image` — that the HTML and
Markdown renderers lay out the same way. Builders are tolerant: fields they do not know are
ignored, missing optional fields are skipped; a section of the wrong shape raises a ValueError
that names it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dp2ejax.report.figures import Image, as_floats, color, draw_image, positive, use_log_scale


@dataclasses.dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section."""

    text: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Code:
    """A preformatted block (configuration, a policy)."""

    text: str
    language: str = ""


Block = Heading | Paragraph | Table | Code | Image


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of a report: its id (the ``results`` key and the HTML anchor), a title and
    its blocks."""

    id: str
    title: str
    blocks: tuple[Block, ...]

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(block for block in self.blocks if isinstance(block, Image))


# --- formatting ----------------------------------------------------------------------------------

MISSING = "–"


def format_value(value: Any) -> str:
    """A table cell: numbers with 4 significant digits, ``None`` as a dash, the rest as JSON.

    Example:
      >>> [format_value(v) for v in (0.000123456, 42, None, True, "bf16", [1, 2])]
      ['0.0001235', '42', '–', 'yes', 'bf16', '[1, 2]']
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    return Table(tuple(headers), tuple(tuple(format_value(v) for v in row) for row in rows))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "item"


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_series(value: Any) -> np.ndarray | None:
    """A list of numbers (``None`` allowed) as floats, or None if ``value`` is not one."""
    if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
        return None
    if all(v is None for v in value):
        return None
    return as_floats(value)


def _expect_mapping(where: str, data: Any, what: str) -> Mapping:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected {what}, got a {type(data).__name__}")
    return data


def _flatten(data: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


# --- summary, config, versions -------------------------------------------------------------------

def summary_section(data: Any) -> list[Block]:
    """``{name: value}`` headline numbers (nested dicts as dotted names) -> a table."""
    data = _expect_mapping("results['summary']", data, "a dict of headline numbers")
    if not data:
        return [Paragraph("No headline numbers.")]
    return [_table(("quantity", "value"), _flatten(data))]


def config_section(data: Any) -> list[Block]:
    """The run's configuration -> a TOML block (JSON when TOML cannot express it)."""
    data = _expect_mapping("results['config']", data, "a dict (the run's configuration)")
    try:
        import tomli_w

        return [Code(tomli_w.dumps(data).strip(), "toml")]
    except (ImportError, TypeError, ValueError):  # None values, mixed arrays, no tomli_w
        return [Code(json.dumps(data, indent=2), "json")]


def versions_section(data: Any) -> list[Block]:
    """``{package: version}`` -> a table."""
    data = _expect_mapping("results['versions']", data, "a dict name -> version")
    return [_table(("component", "version"), _flatten(data))]


# --- training ------------------------------------------------------------------------------------

_STEP_KEYS = ("step", "steps", "epoch")


def _run_series(run: Mapping) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """``{metric: (x, y)}`` of a run's numeric series, and its scalar entries."""
    steps = next((_numeric_series(run[k]) for k in _STEP_KEYS if k in run), None)
    series, scalars = {}, {}
    for key, value in run.items():
        if key in _STEP_KEYS or key.endswith("_step"):
            continue
        y = _numeric_series(value)
        if y is None:
            if not isinstance(value, list | Mapping):
                scalars[key] = value
            continue
        x = None
        for candidate in (run.get(f"{key}_step"), run.get("eval_step")):
            candidate = _numeric_series(candidate)
            if candidate is not None and candidate.size == y.size:
                x = candidate
                break
        if x is None:
            x = steps if steps is not None and steps.size == y.size \
                else np.arange(y.size, dtype=np.float64)
        series[key] = (x, y)
    return series, scalars


def _linestyle(metric: str) -> str:
    return "--" if metric.startswith(("val", "eval", "test")) else "-"


def training_section(data: Any) -> list[Block]:
    """``{run: {"step": [...], "loss": [...], "val_accuracy": [...], ...}}`` -> loss and
    accuracy curves (one color per run, validation dashed) and a table of final values."""
    data = _expect_mapping("results['training']", data,
                           "a dict run name -> {'step': [...], 'loss': [...]}")
    runs = {}
    for name, run in data.items():
        run = _expect_mapping(f"results['training'][{name!r}]", run, "a dict of series")
        runs[name] = _run_series(run)
    if not runs:
        return [Paragraph("No training runs.")]
    blocks: list[Block] = []
    for kind, label in (("loss", "loss"), ("acc", "accuracy")):
        lines = [(i, run, metric, xy) for i, (run, (series, _)) in enumerate(runs.items())
                 for metric, xy in series.items() if kind in metric]
        if not lines:
            continue

        def draw(fig, axes, lines=lines, label=label):
            ax = axes[0]
            for i, run, metric, (x, y) in lines:
                ax.plot(x, y, color=color(i), linestyle=_linestyle(metric), linewidth=1.2,
                        label=f"{run}: {metric}")
            if label == "loss":
                use_log_scale(ax, [positive(y) for *_, (x, y) in lines])
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")

        metrics = sorted({metric for _, _, metric, _ in lines})
        blocks.append(draw_image(
            f"training-{label}", f"Training {label} against step for each run "
            f"({', '.join(metrics)})", f"Training {label} per step; dashed: validation/eval.",
            draw))
    metrics = list(dict.fromkeys(m for series, _ in runs.values() for m in series))
    scalars = list(dict.fromkeys(k for _, values in runs.values() for k in values))
    rows = []
    for name, (series, values) in runs.items():
        steps = max((x.size for x, _ in series.values()), default=0)
        rows.append([name, steps]
                    + [_last_finite(series[m][1]) if m in series else None for m in metrics]
                    + [values.get(k) for k in scalars])
    blocks.append(_table(["run", "points"] + [f"final {m}" for m in metrics] + scalars, rows))
    return blocks


def _last_finite(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


# --- CESTAC digits per layer ---------------------------------------------------------------------

def cestac_section(data: Any) -> list[Block]:
    """``{model: [{"layer", "format", "digits_min", "digits_median"}, ...]}`` -> digits per
    layer (one line per format: median solid, minimum dashed) and a table."""
    data = _expect_mapping("results['cestac']", data, "a dict model name -> list of per-layer rows")
    blocks: list[Block] = []
    rows = []
    for m, (model, entries) in enumerate(data.items()):
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise ValueError(f"results['cestac'][{model!r}]: expected a list of dicts with "
                             f"'layer', 'format', 'digits_min', 'digits_median'")
        layers = list(dict.fromkeys(str(e.get("layer", MISSING)) for e in entries))
        formats = list(dict.fromkeys(str(e.get("format", MISSING)) for e in entries))
        for e in entries:
            rows.append([model, e.get("layer"), e.get("format"), e.get("digits_min"),
                         e.get("digits_median")])
        points = {}
        for e in entries:
            key = (str(e.get("format", MISSING)), str(e.get("layer", MISSING)))
            points[key] = (e.get("digits_min"), e.get("digits_median"))
        if not any(v is not None for pair in points.values() for v in pair):
            continue

        def draw(fig, axes, layers=layers, formats=formats, points=points):
            ax = axes[0]
            x = np.arange(len(layers))
            for j, fmt in enumerate(formats):
                lo = as_floats([points.get((fmt, layer), (None, None))[0] for layer in layers])
                mid = as_floats([points.get((fmt, layer), (None, None))[1] for layer in layers])
                ax.plot(x, mid, "o-", color=color(j), label=f"{fmt} median", linewidth=1.2)
                if np.isfinite(lo).any():
                    ax.plot(x, lo, "v--", color=color(j), label=f"{fmt} min", linewidth=0.8,
                            markersize=4)
            ax.set_xticks(x, layers, rotation=30 if len(layers) > 6 else 0, ha="right"
                          if len(layers) > 6 else "center", fontsize="small")
            ax.set_ylabel("exact significant digits")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", ncols=2)

        blocks.append(draw_image(
            f"cestac-{m}-{_slug(model)}", f"CESTAC exact significant digits per layer of "
            f"{model}, per format ({', '.join(formats)})",
            f"{model}: exact significant digits per layer (CESTAC); solid median, dashed minimum "
            f"over the layer's outputs.", draw))
    if not rows:
        return [Paragraph("No CESTAC results.")]
    blocks.append(_table(("model", "layer", "format", "digits min", "digits median"), rows))
    return blocks


# --- oversmoothing -------------------------------------------------------------------------------

_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _profile_label(profile: Mapping, index: int, count: int) -> str:
    if profile.get("label"):
        return str(profile["label"])
    parts = [str(profile.get("source", "profile"))]
    if profile.get("n_nodes") is not None:
        parts.append(f"{profile['n_nodes']} nodes")
    if profile.get("depth") is not None:
        parts.append(f"depth {profile['depth']}")
    return (f"#{index + 1}: " if count > 1 else "") + ", ".join(parts)


def _layer_field(entry: Mapping, field: str) -> np.ndarray | None:
    layers = entry.get("layers")
    if not isinstance(layers, Mapping):
        return None
    return _numeric_series(layers.get(field))


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _distance_figure(stem: str, label: str, policies: Mapping, colors: Mapping[str, str],
                     rate: float | None, k: int, source: Any) -> Image | None:
    field = "relative_distance"
    if not any(_layer_field(e, field) is not None for e in policies.values()):
        field = "eigenspace_distance"
    curves = {name: _layer_field(e, field) for name, e in policies.items()}
    curves = {name: c for name, c in curves.items() if c is not None}
    if not curves:
        return None

    def draw(fig, axes):
        ax = axes[0]
        for name, y in curves.items():
            ax.plot(np.arange(y.size), positive(y), color=colors[name], linewidth=1.3, label=name)
        first = next(iter(curves.values()))
        if rate is not None and rate > 0 and np.isfinite(first[0]) and first[0] > 0:
            layers = np.arange(max(c.size for c in curves.values()))
            ax.plot(layers, first[0] * rate**layers, "k--", linewidth=0.9,
                    label=rf"$|\lambda_{{{k + 1}}}|^\ell$ ({rate:.3g})")
        use_log_scale(ax, [positive(c) for c in curves.values()], min_span=1.0)
        if field == "relative_distance":  # each format's epsilon, where it is in the data's range
            limits = ax.get_ylim()
            for name in curves:
                eps = policies[name].get("format_epsilon")
                if eps is not None:
                    ax.axhline(eps, color=colors[name], linewidth=0.7, linestyle=":")
            ax.set_ylim(limits)
        _integer_ticks(ax)
        ax.set_xlabel(r"depth $\ell$ (propagations / layers)")
        ax.set_ylabel("relative distance to eigenspace" if field == "relative_distance"
                      else "distance to eigenspace")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncols=2)

    rate_note = ("the exact-arithmetic rate |λ|^ℓ" if source == "linear" else
                 "|λ|^ℓ, the rate of plain propagation (a model's weights and activations change "
                 "it)")
    return draw_image(
        f"{stem}-distance", f"Distance of the features to the dominant eigenspace against depth "
        f"for {', '.join(curves)} ({label}), log scale, with the theoretical rate",
        f"Relative distance ‖x − UUᵀx‖/‖x‖ to the dominant eigenspace, per precision; dashed "
        f"black: {rate_note}; dotted: each format's epsilon.", draw)


def _energy_figure(stem: str, label: str, policies: Mapping,
                   colors: Mapping[str, str]) -> Image | None:
    energy = {name: _layer_field(e, "dirichlet_energy") for name, e in policies.items()}
    energy = {name: y for name, y in energy.items() if y is not None}
    if not energy:
        return None

    def draw(fig, axes):
        ax = axes[0]
        for name, y in energy.items():
            ax.plot(np.arange(y.size), positive(y), color=colors[name], linewidth=1.3, label=name)
        use_log_scale(ax, [positive(y) for y in energy.values()], min_span=1.0)
        _integer_ticks(ax)
        ax.set_xlabel(r"depth $\ell$")
        ax.set_ylabel("Dirichlet energy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncols=2)

    return draw_image(
        f"{stem}-energy", f"Dirichlet energy of the features against depth for "
        f"{', '.join(energy)} ({label}), log scale",
        "Dirichlet energy trace(xᵀ(I − P)x) per precision.", draw)


def _digits_figure(stem: str, label: str, policies: Mapping,
                   colors: Mapping[str, str]) -> Image | None:
    digits = {}
    for name, e in policies.items():
        for field, part in (("residual_digits_median", "residual"),
                            ("digits_median", "features")):
            y = _layer_field(e, field)
            if y is not None:
                digits[(name, part)] = y
    if not digits:
        return None

    def draw(fig, axes):
        ax = axes[0]
        for (name, part), y in digits.items():
            ax.plot(np.arange(y.size), y, color=colors[name], linewidth=1.3,
                    linestyle="-" if part == "residual" else ":", label=f"{name} ({part})")
        _integer_ticks(ax)
        ax.set_xlabel(r"depth $\ell$")
        ax.set_ylabel("exact digits (CESTAC, median)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncols=2)

    return draw_image(
        f"{stem}-digits", f"CESTAC exact significant digits against depth ({label})",
        "Median exact digits of the features (dotted) and of their component outside the "
        "dominant eigenspace (solid).", draw)


def oversmoothing_section(data: Any) -> list[Block]:
    """``OversmoothingProfile.to_dict()`` (or a list of them) -> per profile: the relative
    distance to the dominant eigenspace against depth (log scale, with the ``|λ₂|^ℓ`` rate and
    each format's epsilon), the Dirichlet energy, the CESTAC digits when present; and a table of
    floors and depths."""
    profiles = [data] if isinstance(data, Mapping) else data
    if not isinstance(profiles, list) or not all(isinstance(p, Mapping) for p in profiles):
        raise ValueError("results['oversmoothing']: expected OversmoothingProfile.to_dict() or a "
                         f"list of them, got a {type(data).__name__}")
    for i, profile in enumerate(profiles):
        if not isinstance(profile.get("policies"), Mapping):
            raise ValueError(f"results['oversmoothing'][{i}]: expected a 'policies' dict (policy "
                             f"name -> its metrics), as OversmoothingProfile.to_dict() gives")
    if not profiles:
        return [Paragraph("No oversmoothing profiles.")]
    colors: dict[str, str] = {}
    for profile in profiles:
        for name in profile["policies"]:
            colors.setdefault(name, color(len(colors)))
    several = len(profiles) > 1
    blocks: list[Block] = []
    rows = []
    for i, profile in enumerate(profiles):
        label = _profile_label(profile, i, len(profiles))
        policies = profile["policies"]
        rate = profile.get("spectral_rate")
        k = profile.get("eigenspace_dim") or 1
        if several:
            blocks.append(Heading(label))
        facts = [f"{profile.get('source', '?')} features",
                 f"{profile.get('n_nodes', '?')} nodes x {profile.get('n_features', '?')} "
                 f"features", f"depth {profile.get('depth', '?')}"]
        if rate is not None:
            facts.append(f"spectral rate |λ{str(k + 1).translate(_SUBSCRIPTS)}| = {rate:.6g}")
        blocks.append(Paragraph("; ".join(facts) + "."))
        stem = f"oversmoothing-{i}" if several else "oversmoothing"
        source = profile.get("source")
        for image in (_distance_figure(stem, label, policies, colors, rate, k, source),
                      _energy_figure(stem, label, policies, colors),
                      _digits_figure(stem, label, policies, colors)):
            if image is not None:
                blocks.append(image)
        for name, e in policies.items():
            final = _layer_field(e, "relative_distance")
            rows.append(([label] if several else [])
                        + [name, e.get("format_epsilon"), e.get("collapse_depth"), e.get("floor"),
                           e.get("floor_depth"), e.get("floor_over_epsilon"),
                           None if final is None else _last_finite(final),
                           e.get("no_digits_depth")])
    headers = (["profile"] if several else []) + [
        "policy", "epsilon", "collapse depth", "floor", "floor depth", "floor / epsilon",
        "final relative distance", "no-digits depth"]
    blocks.append(_table(headers, rows))
    return blocks


# --- tuning --------------------------------------------------------------------------------------

_TABLE_COLUMNS = ("layer", "role", "format", "sensitivity", "cost_share")


def _tuning_point(entry: Any, data: Mapping) -> tuple[str, Mapping | None]:
    """A baseline or the tuned policy as ``(name, {"error"/"accuracy", "cost"})``: accepts the
    short form (``name``, ``error``/``accuracy``, ``cost``) and :mod:`dp2ejax.tune`'s
    (``format``, ``value`` of the criterion, ``costs[cost_model]["total"]``)."""
    if not isinstance(entry, Mapping):
        return "", None
    point = dict(entry)
    name = str(entry.get("name") or (f"uniform {entry['format']}" if "format" in entry
                                     else "baseline"))
    if "error" not in point and "accuracy" not in point and _is_real(entry.get("value")):
        point["error"] = entry["value"]
    if "cost" not in point and isinstance(entry.get("costs"), Mapping):
        model = entry["costs"].get(str(data.get("cost_model", "bits")))
        if isinstance(model, Mapping) and _is_real(model.get("total")):
            point["cost"] = model["total"]
    return name, point


def tuning_section(data: Any) -> list[Block]:
    """The autotuner's result dict -> accuracy (or error) against cost for the tuned policy and
    the uniform baselines, the per-layer table, the criterion and the policy."""
    data = _expect_mapping("results['tuning']", data, "the autotuner's result dict")
    blocks: list[Block] = []
    facts = []
    for key, label in (("criterion", "criterion"), ("evaluations", "evaluations"),
                       ("feasible", "feasible"), ("reason", "reason")):
        if data.get(key) is not None:
            facts.append(f"{label}: {format_value(data[key])}")
    if facts:
        blocks.append(Paragraph("; ".join(facts) + "."))
    points = [(name, entry, False) for name, entry in
              (_tuning_point(entry, data) for entry in data.get("baselines") or [])
              if entry is not None]
    if isinstance(data.get("tuned"), Mapping):
        points.append((str(data["tuned"].get("name", "tuned")), data["tuned"], True))
    elif _is_real(data.get("value")):  # dp2ejax.tune's own result dict
        _, tuned = _tuning_point({"value": data["value"], "costs": data.get("costs")}, data)
        points.append(("tuned", tuned, True))
    metric = next((m for m in ("accuracy", "error") if any(_is_number(p.get(m)) and
                                                           p.get(m) is not None
                                                           for _, p, _ in points)), None)
    plotted = [(name, float(p["cost"]), float(p[metric]), tuned) for name, p, tuned in points
               if metric and isinstance(p.get("cost"), int | float) and not isinstance(
                   p.get("cost"), bool) and isinstance(p.get(metric), int | float)]
    if plotted:
        def draw(fig, axes):
            ax = axes[0]
            for name, cost, value, tuned in plotted:
                if tuned:
                    ax.plot(cost, value, "*", color="C3", markersize=14, label=name)
                else:
                    ax.plot(cost, value, "o", color="0.4", markersize=6)
                ax.annotate(name, (cost, value), textcoords="offset points", xytext=(5, 4),
                            fontsize="small")
            if metric == "error":
                use_log_scale(ax, [positive(np.array([v for _, _, v, _ in plotted]))],
                              min_span=10.0)
            ax.margins(x=0.2, y=0.15)
            ax.set_xlabel("cost")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)

        blocks.append(draw_image(
            "tuning-accuracy-cost", f"{metric.capitalize()} against cost of the tuned policy "
            f"and the uniform baselines", f"Tuned policy (star) against uniform policies: "
            f"{metric} against cost.", draw))
    if points:
        columns = [c for c in ("cost", "accuracy", "error") if any(c in p for _, p, _ in points)]
        blocks.append(_table(["policy"] + columns,
                             [[name + (" (tuned)" if tuned else "")] + [p.get(c) for c in columns]
                              for name, p, tuned in points]))
    table = [row for row in data.get("table") or [] if isinstance(row, Mapping)]
    if table:
        keys = list(dict.fromkeys(k for row in table for k in row))
        keys = [k for k in _TABLE_COLUMNS if k in keys] + [k for k in keys
                                                            if k not in _TABLE_COLUMNS]
        blocks.append(Heading("Per-layer choices"))
        blocks.append(_table(keys, [[row.get(k) for k in keys] for row in table]))
    if data.get("policy") is not None:
        blocks.append(Heading("Tuned policy"))
        blocks.append(Code(json.dumps(data["policy"], indent=2), "json"))
    if not blocks:
        blocks.append(Paragraph("No tuning results."))
    return blocks


# --- block-sparse attention ----------------------------------------------------------------------

def _get(mapping: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def attention_cases(data: Any) -> list[dict[str, Any]]:
    """Benchmark cases as rows ``{seq_len, density, phase, pattern, sparse_ms, dense_ms,
    speedup}``, from ``bench_attention.py`` cases (``forward`` / ``forward_backward``) or from
    the short form ``{"seq_len", "density", "sparse_ms", "dense_ms"}``."""
    if isinstance(data, Mapping) and "cases" in data:
        data = data["cases"]
    if not isinstance(data, list) or not all(isinstance(c, Mapping) for c in data):
        raise ValueError("results['attention']: expected a list of cases (dicts), as "
                         f"bench_attention.py writes them, got a {type(data).__name__}")
    rows = []
    for case in data:
        seq_len = case.get("seq_len")
        density = _number(case.get("block_density", case.get("density")))
        pattern = case.get("pattern")
        phases = [p for p in ("forward", "forward_backward") if isinstance(case.get(p), Mapping)]
        if phases:
            for phase in phases:
                result = case[phase]
                sparse = _number(_get(result, "timings", "block_sparse", "median_s"))
                dense = _number(_get(result, "timings", "dense", "median_s"))
                speedup = _number(result.get("dense_over_sparse"))
                rows.append(_attention_row(seq_len, density, phase, pattern,
                                           None if sparse is None else 1e3 * sparse,
                                           None if dense is None else 1e3 * dense, speedup))
        else:
            rows.append(_attention_row(seq_len, density, case.get("phase", "forward"), pattern,
                                       _number(case.get("sparse_ms")),
                                       _number(case.get("dense_ms")),
                                       _number(case.get("speedup"))))
    return rows


def _attention_row(seq_len, density, phase, pattern, sparse_ms, dense_ms, speedup):
    if speedup is None and sparse_ms and dense_ms is not None:
        speedup = dense_ms / sparse_ms
    return {"seq_len": seq_len, "density": density, "phase": phase, "pattern": pattern,
            "sparse_ms": sparse_ms, "dense_ms": dense_ms, "speedup": speedup}


def attention_section(data: Any) -> list[Block]:
    """Attention benchmark cases -> time against block density (block-sparse solid, dense
    dashed, one color per sequence length), the dense / block-sparse speed-up, and a table."""
    rows = attention_cases(data)
    if not rows:
        return [Paragraph("No attention benchmark cases.")]
    lengths = sorted({r["seq_len"] for r in rows}, key=lambda v: (v is None, v))
    phase = "forward" if any(r["phase"] == "forward" for r in rows) else rows[0]["phase"]

    def lines(seq_len, phase_, field):
        chosen = sorted((r for r in rows if r["seq_len"] == seq_len and r["phase"] == phase_
                         and r["density"] is not None and r[field] is not None),
                        key=lambda r: r["density"])
        return (np.array([r["density"] for r in chosen]),
                np.array([r[field] for r in chosen], dtype=np.float64))

    blocks: list[Block] = []

    def draw(fig, axes):
        time_ax, speed_ax = axes
        values = []
        for i, seq_len in enumerate(lengths):
            for field, style, name in (("sparse_ms", "o-", "block-sparse"),
                                       ("dense_ms", "s--", "dense")):
                x, y = lines(seq_len, phase, field)
                if x.size:
                    time_ax.plot(x, y, style, color=color(i), markersize=4, linewidth=1.2,
                                 label=f"L={seq_len} {name}")
                    values.append(y)
            for p, style in (("forward", "o-"), ("forward_backward", "^--")):
                x, y = lines(seq_len, p, "speedup")
                if x.size:
                    speed_ax.plot(x, y, style, color=color(i), markersize=4, linewidth=1.2,
                                  label=f"L={seq_len} {p.replace('_', '+')}")
        time_ax.set_xscale("log", base=2)
        use_log_scale(time_ax, values, min_span=5.0)
        time_ax.set_xlabel("block density")
        time_ax.set_ylabel(f"{phase.replace('_', '+')} time (ms)")
        time_ax.grid(alpha=0.3)
        time_ax.legend(fontsize="x-small")
        speed_ax.axhline(1.0, color="k", linewidth=0.8)
        speed_ax.set_xscale("log", base=2)
        speed_ax.set_xlabel("block density")
        speed_ax.set_ylabel("dense / block-sparse")
        speed_ax.grid(alpha=0.3)
        if speed_ax.get_legend_handles_labels()[0]:
            speed_ax.legend(fontsize="x-small")

    if any(r["density"] is not None and r["sparse_ms"] is not None for r in rows):
        blocks.append(draw_image(
            "attention-density", "Block-sparse and dense attention time and speed-up against "
            "block density for each sequence length", "Left: median time against block density "
            "(block-sparse solid, dense dashed). Right: dense time / block-sparse time.", draw,
            ncols=2, figsize=(9.6, 3.6)))
    blocks.append(_table(("seq len", "pattern", "block density", "phase", "block-sparse ms",
                          "dense ms", "dense / sparse"),
                         [[r["seq_len"], r["pattern"], r["density"], r["phase"], r["sparse_ms"],
                           r["dense_ms"], r["speedup"]] for r in rows]))
    return blocks


# --- the registry --------------------------------------------------------------------------------

SECTIONS: dict[str, tuple[str, Callable[[Any], list[Block]]]] = {
    "summary": ("Summary", summary_section),
    "training": ("Training curves", training_section),
    "cestac": ("Exact digits per layer (CESTAC)", cestac_section),
    "oversmoothing": ("Oversmoothing per precision", oversmoothing_section),
    "tuning": ("Tuned policy against uniform policies", tuning_section),
    "attention": ("Block-sparse attention: speed against density", attention_section),
    "config": ("Configuration", config_section),
    "versions": ("Versions", versions_section),
}
"""Section id -> (title, builder), in the order sections appear in a report."""


def check_sections(results: Mapping[str, Any]) -> None:
    """Raises a ValueError naming any key of ``results`` that is not a known section."""
    unknown = [key for key in results if key not in SECTIONS]
    if unknown:
        raise ValueError(f"results: unknown section(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(SECTIONS)}")


def build_sections(results: Mapping[str, Any]) -> list[Section]:
    """The :class:`Section` of every key of JSON-safe ``results``, in the report's order."""
    check_sections(results)
    sections = []
    for section_id, (title, builder) in SECTIONS.items():
        if section_id in results:
            sections.append(Section(section_id, title, tuple(builder(results[section_id]))))
    names = [image.name for section in sections for image in section.images]
    if len(set(names)) != len(names):  # pragma: no cover - the builders keep names unique
        raise AssertionError(f"duplicate figure names {names}")
    return sections
