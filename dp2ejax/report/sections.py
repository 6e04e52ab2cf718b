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


# --- mixed-precision linear algebra --------------------------------------------------------------

_IR_METHODS = {"lu": ("LU-IR", "-", "o"), "gmres": ("GMRES-IR", "--", "s")}


def _method_style(method: Any) -> tuple[str, str, str]:
    return _IR_METHODS.get(str(method), (str(method), ":", "^"))


def _kappa(value: Any) -> str | None:
    return f"{value:.2g}" if _is_real(value) else None


def ir_convergence_limits(runs: Sequence[Mapping]) -> list[dict[str, Any]]:
    """Per (factor format, method) of iterative-refinement runs, in order of appearance: the
    largest condition number at which it converged, the smallest at which it did not, and the
    refinement (and GMRES) steps at the largest.

    Example:
      >>> runs = [{"factor_format": "fp16", "method": "lu", "condition": c, "status": s,
      ...          "iterations": i} for c, s, i in ((1e2, "converged", 6),
      ...                                           (1e3, "converged", 9), (1e4, "stagnated", 2))]
      >>> limit = ir_convergence_limits(runs)[0]
      >>> limit["largest_converged"], limit["first_failure"], limit["iterations_at_largest"]
      (1000.0, 10000.0, 9)
    """
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for run in runs:
        if _is_real(run.get("condition")):
            key = (str(run.get("factor_format", MISSING)), str(run.get("method", MISSING)))
            groups.setdefault(key, []).append(run)
    out = []
    for (fmt, method), group in groups.items():
        converged = [r for r in group if r.get("status") == "converged"]
        failed = [r for r in group if r.get("status") != "converged"]
        top = max(converged, key=lambda r: r["condition"], default=None)
        first = min(failed, key=lambda r: r["condition"], default=None)
        out.append({
            "factor_format": fmt, "method": method,
            "largest_converged": None if top is None else float(top["condition"]),
            "first_failure": None if first is None else float(first["condition"]),
            "iterations_at_largest": None if top is None else top.get("iterations"),
            "gmres_steps_at_largest": None if top is None or method != "gmres"
            else top.get("gmres_steps")})
    return out


def _expect_rows(where: str, data: Any, required: Sequence[str]) -> list[Mapping]:
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of dicts with {', '.join(map(repr, required))}"
                         f", got a {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}[{i}]: expected a dict, got a {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{where}[{i}]: missing {', '.join(map(repr, missing))}")
    return data


def _ir_blocks(ir: Mapping) -> list[Block]:
    where = "results['linalg']['ir']"
    runs = _expect_rows(f"{where}['runs']", ir.get("runs", []),
                        ("factor_format", "method", "condition"))
    for i, run in enumerate(runs):
        if not (_is_real(run["condition"]) and run["condition"] > 0):
            raise ValueError(f"{where}['runs'][{i}]: 'condition' must be a positive number, got "
                             f"{run['condition']!r}")
    blocks: list[Block] = [Heading("Iterative refinement against the condition number")]
    facts = [f"A = matrix_with_condition(n = {ir.get('n', '?')}, kappa, seed "
             f"{ir.get('seed', '?')}), b = A·1"]
    if ir.get("working_format"):
        facts.append(f"working and residual format {ir['working_format']}")
    if _is_real(ir.get("tol")):
        facts.append(f"tolerance {ir['tol']:.2g} on the backward error")
    if ir.get("gmres_max_iter") is not None:
        facts.append(f"at most {ir['gmres_max_iter']} GMRES steps per refinement step")
    blocks.append(Paragraph("; ".join(facts) + "."))
    if not runs:
        blocks.append(Paragraph("No iterative-refinement runs."))
        return blocks
    formats = list(dict.fromkeys(str(r["factor_format"]) for r in runs))
    methods = list(dict.fromkeys(str(r["method"]) for r in runs))
    lines = {}
    for fmt in formats:
        for method in methods:
            group = sorted((r for r in runs if str(r["factor_format"]) == fmt
                            and str(r["method"]) == method), key=lambda r: r["condition"])
            if group:
                lines[fmt, method] = (
                    np.array([r["condition"] for r in group], np.float64),
                    positive(as_floats([r.get("backward_error") if _is_number(
                        r.get("backward_error")) else None for r in group])),
                    np.array([r.get("status") == "converged" for r in group]))
    tol = ir.get("tol") if _is_real(ir.get("tol")) and ir["tol"] > 0 else None
    if any(np.isfinite(y).any() for _, y, _ in lines.values()):
        def draw(fig, axes):
            ax = axes[0]
            for (fmt, method), (x, y, ok) in lines.items():
                name, style, marker = _method_style(method)
                c = color(formats.index(fmt))
                ax.plot(x, y, linestyle=style, color=c, linewidth=1.2, label=f"{fmt} {name}")
                ax.plot(x[ok], y[ok], marker, color=c, markersize=5, linestyle="none")
                ax.plot(x[~ok], y[~ok], marker, color=c, markersize=6, linestyle="none",
                        markerfacecolor="none")
            if tol is not None:
                ax.axhline(tol, color="k", linewidth=0.8, linestyle=":",
                           label=f"tolerance {tol:.2g}")
            ax.plot([], [], "o", color="0.4", markerfacecolor="none", linestyle="none",
                    label="not converged")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(r"condition number $\kappa_2(A)$")
            ax.set_ylabel("final backward error")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))

        blocks.append(draw_image(
            "linalg-ir", f"Final backward error of LU-IR and GMRES-IR against the condition "
            f"number, log-log, per factor format ({', '.join(formats)}), with the tolerance",
            "Final backward error against kappa: solid LU-IR, dashed GMRES-IR, one color per "
            "factor format; hollow markers did not converge; dotted: the tolerance.", draw,
            figsize=(8.0, 3.8)))
    blocks.append(_table(
        ("factors", "method", "largest κ converged", "first κ not converged",
         "steps at that κ", "GMRES steps at that κ"),
        [[row["factor_format"], _method_style(row["method"])[0],
          _kappa(row["largest_converged"]) or "none", _kappa(row["first_failure"]),
          row["iterations_at_largest"], row["gmres_steps_at_largest"]]
         for row in ir_convergence_limits(runs)]))
    conditions = sorted({float(r["condition"]) for r in runs})
    cells = {(str(r["factor_format"]), str(r["method"]), float(r["condition"])): r for r in runs}

    def cell(run):
        if run is None:
            return None
        if run.get("status") == "converged":
            return f"{run.get('iterations', '?')} steps"
        return str(run.get("status", MISSING))

    blocks.append(_table(
        ["factors", "method"] + [f"κ = {_kappa(c)}" for c in conditions],
        [[fmt, _method_style(method)[0]] + [cell(cells.get((fmt, method, c)))
                                            for c in conditions]
         for fmt in formats for method in methods if (fmt, method) in lines]))
    return blocks


def _pagerank_blocks(pr: Mapping) -> list[Block]:
    where = "results['linalg']['pagerank']"
    runs = _expect_rows(f"{where}['runs']", pr.get("runs", []),
                        ("storage_format", "accumulation_format"))
    blocks: list[Block] = [Heading("PageRank per format pair")]
    graph = pr.get("graph") if isinstance(pr.get("graph"), Mapping) else {}
    facts = [f"{graph.get('name', 'graph')}: {graph.get('nodes', '?')} nodes, "
             f"{graph.get('edges', '?')} edges, {graph.get('dangling', '?')} dangling"]
    if pr.get("alpha") is not None:
        facts.append(f"alpha {pr['alpha']}")
    facts.append(f"ranking against fp64/fp64 on the top {pr.get('top_k', 'k')} nodes")
    blocks.append(Paragraph("; ".join(facts) + "."))
    if not runs:
        blocks.append(Paragraph("No PageRank runs."))
        return blocks
    labels = [f"{r['storage_format']}/{r['accumulation_format']}" for r in runs]
    taus = [r.get("kendall_tau_top_k") for r in runs]
    taus = [t if _is_real(t) else None for t in taus]
    if any(t is not None for t in taus):
        accumulations = list(dict.fromkeys(str(r["accumulation_format"]) for r in runs))

        def draw(fig, axes):
            ax = axes[0]
            low = min(t for t in taus if t is not None)
            left = max(-1.0, low - 0.15 * (1.0 - low) - 0.02)
            y = np.arange(len(runs))[::-1]
            for yi, run, tau in zip(y, runs, taus, strict=True):
                if tau is None:
                    continue
                c = color(accumulations.index(str(run["accumulation_format"])))
                ax.plot([left, tau], [yi, yi], color=c, linewidth=1.0)
                ax.plot(tau, yi, "o", color=c, markersize=7)
                ax.annotate(f"{tau:.3f}", (tau, yi), textcoords="offset points",
                            xytext=(0, 7), ha="center", fontsize="small")
            ax.set_yticks(y, labels, fontsize="small")
            ax.set_xlim(left, 1.0 + 0.08 * (1.0 - left))
            ax.set_ylim(-0.6, len(runs) - 0.2)
            ax.axvline(1.0, color="k", linewidth=0.8)
            ax.set_xlabel("Kendall tau of the top-k against fp64")
            ax.set_ylabel("storage / accumulation")
            ax.grid(alpha=0.3, axis="x")

        blocks.append(draw_image(
            "linalg-pagerank-tau", f"Kendall tau of the PageRank top-k against fp64 for each "
            f"storage/accumulation format pair ({', '.join(labels)})",
            "Kendall tau of the top-k ranking against fp64, per storage/accumulation pair (one "
            "color per accumulation format).", draw,
            figsize=(6.4, max(2.4, 0.45 * len(runs) + 1.0))))
    blocks.append(_table(
        ("storage", "accumulation", "status", "iterations", "Kendall tau (top k)",
         "top-k overlap", "max |diff| vs fp64", "CESTAC digits (median)"),
        [[r["storage_format"], r["accumulation_format"], r.get("status"), r.get("iterations"),
          r.get("kendall_tau_top_k"), r.get("top_k_overlap"), r.get("max_abs_diff_fp64"),
          r.get("digits_median")] for r in runs]))
    return blocks


def _eigs_blocks(eigs: Mapping) -> list[Block]:
    where = "results['linalg']['eigs']"
    alone = _expect_rows(f"{where}['alone']", eigs.get("alone", []),
                         ("subspace_size", "restarts"))
    uc = eigs.get("uc")
    if uc is not None:
        uc = _expect_mapping(f"{where}['uc']", uc, "a dict with 'restarts', 'history'")
    blocks: list[Block] = [Heading("Unite and conquer against single co-methods")]
    sizes = eigs.get("subspace_sizes") or [r["subspace_size"] for r in alone]
    size_text = ", ".join(str(m) for m in sizes)
    blocks.append(Paragraph(
        f"eigs_uc: the {eigs.get('k', '?')} eigenvalues of largest modulus of the "
        f"{eigs.get('matrix', '?')} matrix (n = {eigs.get('n', '?')}); co-methods of subspace "
        f"sizes {size_text} together (unite and conquer) and each alone; tolerance "
        f"{format_value(eigs.get('tol'))} on the largest relative residual."))
    best = eigs.get("best_alone") if isinstance(eigs.get("best_alone"), Mapping) else None
    if uc is not None and best is not None:
        text = (f"Unite and conquer: {format_value(uc.get('restarts'))} restarts"
                f"{'' if uc.get('converged', True) else ' (not converged)'}; best single "
                f"co-method (m = {format_value(best.get('subspace_size'))}): "
                f"{format_value(best.get('restarts'))} restarts"
                f"{'' if best.get('converged', True) else ' (not converged)'}.")
        dropped = [d for d in uc.get("dropped") or [] if isinstance(d, Mapping)]
        if dropped:
            text += " Dropped co-methods: " + ", ".join(
                f"m = {d.get('subspace_size', d.get('method'))} ({d.get('reason')})"
                for d in dropped) + "."
        blocks.append(Paragraph(text))
    curves = []
    if uc is not None and _numeric_series(uc.get("history")) is not None:
        curves.append((f"unite and conquer ({size_text})", positive(
            _numeric_series(uc["history"])), "k", 2.0))
    for i, run in enumerate(alone):
        y = _numeric_series(run.get("history"))
        if y is not None:
            curves.append((f"m = {run['subspace_size']} alone", positive(y), color(i), 1.1))
    tol = eigs.get("tol") if _is_real(eigs.get("tol")) and eigs["tol"] > 0 else None
    if any(np.isfinite(y).any() for _, y, _, _ in curves):
        def draw(fig, axes):
            ax = axes[0]
            for label, y, c, width in curves:
                ax.plot(np.arange(1, y.size + 1), y, color=c, linewidth=width, label=label)
            if tol is not None:
                ax.axhline(tol, color="k", linewidth=0.8, linestyle=":",
                           label=f"tolerance {tol:.2g}")
            ax.set_yscale("log")
            _integer_ticks(ax)
            ax.set_xlabel("Arnoldi cycle (restart)")
            ax.set_ylabel("largest relative residual (best co-method)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")

        blocks.append(draw_image(
            "linalg-eigs-history", f"Best largest relative residual per Arnoldi cycle, log "
            f"scale, of the unite-and-conquer run and of each co-method alone "
            f"(subspace sizes {size_text})",
            "Residual per cycle: unite and conquer (black) against each co-method alone; "
            "dotted: the tolerance.", draw))
    best_index = best.get("index") if best is not None else None
    rows = []
    if uc is not None:
        rows.append(["unite and conquer", size_text, uc.get("restarts"), uc.get("converged"),
                     uc.get("final_residual"), None])
    for i, run in enumerate(alone):
        rows.append([f"m = {run['subspace_size']} alone", str(run["subspace_size"]),
                     run.get("restarts"), run.get("converged"), run.get("final_residual"),
                     "best single co-method" if i == best_index else None])
    if rows:
        blocks.append(_table(("run", "subspace sizes", "restarts", "converged",
                              "final residual", "note"), rows))
    return blocks


def linalg_section(data: Any) -> list[Block]:
    """``{"ir": {...}, "pagerank": {...}, "eigs": {...}}`` (``experiments/linalg_study.py``;
    each part optional) -> the final backward error of LU-IR and GMRES-IR against the condition
    number with the convergence limit per format and method, PageRank's ranking agreement with
    fp64 per format pair, and the residual history of unite and conquer against each co-method
    alone with their restarts."""
    data = _expect_mapping("results['linalg']", data,
                           "a dict with 'ir', 'pagerank' and/or 'eigs'")
    blocks: list[Block] = []
    for part, build in (("ir", _ir_blocks), ("pagerank", _pagerank_blocks),
                        ("eigs", _eigs_blocks)):
        if data.get(part) is not None:
            blocks.extend(build(_expect_mapping(f"results['linalg'][{part!r}]", data[part],
                                                "a dict")))
    if not blocks:
        return [Paragraph("No linear-algebra results.")]
    seconds = data.get("seconds")
    if isinstance(seconds, Mapping) and all(_is_real(v) for v in seconds.values()) and seconds:
        blocks.append(Paragraph(
            f"Computed in {sum(seconds.values()):.1f} s ("
            + ", ".join(f"{part} {value:.1f} s" for part, value in seconds.items())
            + "), compilation included."))
    return blocks


# --- the registry --------------------------------------------------------------------------------

SECTIONS: dict[str, tuple[str, Callable[[Any], list[Block]]]] = {
    "summary": ("Summary", summary_section),
    "training": ("Training curves", training_section),
    "cestac": ("Exact digits per layer (CESTAC)", cestac_section),
    "oversmoothing": ("Oversmoothing per precision", oversmoothing_section),
    "tuning": ("Tuned policy against uniform policies", tuning_section),
    "attention": ("Block-sparse attention: speed against density", attention_section),
    "linalg": ("Mixed-precision linear algebra", linalg_section),
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
