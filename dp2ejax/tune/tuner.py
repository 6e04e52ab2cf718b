"""``autotune``: the cheapest per-layer precision policy that keeps a model within an accuracy
budget, and the table that explains it."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.arith.emulate import emulate
from dp2ejax.arith.formats import get_format
from dp2ejax.arith.policy import OP_KINDS, PrecisionPolicy
from dp2ejax.tune.cost import BitsCost, CostModel, EnergyCost, MeasuredCost, as_cost_model
from dp2ejax.tune.criteria import Criterion, RelativeError, as_criterion
from dp2ejax.tune.evaluate import BudgetExhausted, Evaluation, Evaluator
from dp2ejax.tune.search import (
    MAX_EXHAUSTIVE,
    SEARCHES,
    Sensitivity,
    delta_search,
    exhaustive_search,
    greedy_search,
    knapsack_search,
    sensitivity,
)
from dp2ejax.tune.space import (
    DEFAULT_PRIORS,
    Config,
    Prior,
    SearchSpace,
    build_space,
    discover_units,
)

DEFAULT_CANDIDATES = ("fp32", "bf16", "fp16", "fp8_e4m3")
DEFAULT_CRITERION = RelativeError(1e-2)
_NATIVE_DTYPES = {"fp64": jnp.float64, "fp32": jnp.float32, "bf16": jnp.bfloat16,
                  "fp16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What :func:`autotune` found.

    Attributes:
      policy: the chosen :class:`dp2ejax.PrecisionPolicy` (serialise with its ``to_json`` /
        ``to_toml``); when ``feasible`` is False, the best configuration found.
      config: unit name (``"layer:role"``) -> format.
      table: one dict per unit: ``layer``, ``role``, ``format``, ``candidates``,
        ``sensitivity`` (the criterion's value with only this unit at its chosen format, the
        others at their top candidates), ``sensitivity_by_format``, ``cost``, ``cost_share`` (of
        the policy's cost, objective model), ``prior`` (why candidates were restricted).
      evaluations: distinct configurations the search evaluated (cache hits not counted).
      cache_hits: evaluations answered from the cache.
      feasible: whether the policy meets the criterion on the calibration inputs.
      reason: when infeasible (or stopped by ``max_evaluations``), why.
      value: the criterion's value of the policy on the calibration inputs (search run).
      verified_value: the same, re-run with ``jax.jit(emulate(apply_fn, policy))``.
      held_out: on ``held_out_inputs``: ``value``, ``meets``, ``miss`` (how far beyond the
        target, 0 when it meets), or None.
      baselines: uniform-format configurations (every unit in one format, the rest native)
        with their value, whether they meet the criterion, and their costs.
      costs: the policy's cost under every reported model (bits, energy, measured).
      savings: ``1 - cost / cost(uniform fmt)`` (objective model) for each baseline format.
      search, cost_model, criterion, reference, seed, space_size, wall_s, notes: the set-up.
    """

    policy: PrecisionPolicy
    config: dict[str, str]
    table: list[dict]
    evaluations: int
    cache_hits: int
    feasible: bool
    reason: str
    value: float
    verified_value: float | None
    held_out: dict | None
    baselines: list[dict]
    costs: dict
    savings: dict[str, float]
    search: str
    cost_model: str
    criterion: dict
    reference: str
    seed: int
    space_size: int
    wall_s: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict (the policy as its own dict form)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["policy"] = self.policy.to_dict()
        out["notes"] = list(self.notes)
        return _jsonable(out)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A text report: the per-unit table and the uniform baselines beside the policy."""
        crit = self.criterion["description"]
        lines = [
            f"autotune ({self.search} search, {self.cost_model} cost): {crit}",
            f"  {'feasible' if self.feasible else 'NOT feasible'}: value {_fmt(self.value)}"
            f" (jit-verified {_fmt(self.verified_value)}), reference {self.reference}",
            f"  evaluations {self.evaluations} (cache hits {self.cache_hits}) of "
            f"{self.space_size} configurations, {self.wall_s:.1f} s",
        ]
        if self.reason:
            lines.append(f"  {self.reason}")
        if self.held_out is not None:
            h = self.held_out
            lines.append(f"  held-out: value {_fmt(h['value'])}, "
                         f"{'meets' if h['meets'] else 'misses by ' + _fmt(h['miss'])}")
        width = max([len(r["layer"]) for r in self.table] + [5])
        lines.append(f"  {'layer':<{width}}  {'role':<19} {'format':<10} {'sensitivity':>11} "
                     f"{'cost share':>10}")
        for r in self.table:
            lines.append(f"  {r['layer']:<{width}}  {r['role']:<19} {r['format']:<10} "
                         f"{_fmt(r['sensitivity']):>11} {r['cost_share']:>10.1%}"
                         + (f"  [{r['prior']}]" if r["prior"] else ""))
        lines.append(f"  {'configuration':<16} {'value':>10} {'meets':>6} {'bits cost':>12} "
                     f"{'energy pJ':>12} {'emulated s':>11} {'native s':>9}")
        rows = [dict(name="tuned policy", value=self.value, meets=self.feasible,
                     costs=self.costs)] + [dict(b, name=f"uniform {b['format']}")
                                           for b in self.baselines]
        for row in rows:
            c = row["costs"]
            lines.append(
                f"  {row['name']:<16} {_fmt(row['value']):>10} {str(row['meets']):>6} "
                f"{_fmt(c.get('bits', {}).get('total')):>12} "
                f"{_fmt(c.get('energy', {}).get('total')):>12} "
                f"{_fmt(c.get('measured', {}).get('emulated_s')):>11} "
                f"{_fmt(c.get('measured', {}).get('native_s')):>9}")
        for fmt, saving in self.savings.items():
            lines.append(f"  cost saved against uniform {fmt}: {saving:.1%}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


def _cast_floats(tree, dtype):
    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray | np.generic | float) and not isinstance(
                leaf, bool) and jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jax.tree_util.tree_map(cast, tree)


def _prepare_inputs(inputs) -> tuple:
    from dp2ejax.graph.gcn import emulation_operator

    if not isinstance(inputs, tuple | list):
        inputs = (inputs,)
    return tuple(emulation_operator(x) for x in inputs)


def _devices(devices) -> list:
    if devices is None:
        return [jax.devices()[0]]
    if devices == "all":
        return list(jax.local_devices())
    devices = list(devices)
    if not devices:
        raise ValueError("devices must be None, 'all' or a non-empty list of jax devices")
    return devices


def autotune(
    apply_fn: Callable,
    params: Any,
    calibration_inputs: Any,
    *,
    candidates: Sequence[str] | Mapping[Any, Sequence[str]] = DEFAULT_CANDIDATES,
    criterion: Criterion | float = DEFAULT_CRITERION,
    cost_model: str | CostModel = "bits",
    roles: Sequence[str] = OP_KINDS,
    search: str = "delta",
    priors: Sequence[Prior] = DEFAULT_PRIORS,
    seed: int = 0,
    max_evaluations: int | None = None,
    held_out_inputs: Any = None,
    devices: Any = None,
    execution: str = "eager",
    report_costs: Sequence[str] = ("bits", "energy", "measured"),
    baselines: Sequence[str] | None = None,
    margin: float = 0.0,
) -> TuneResult:
    """Chooses the cheapest format for each (layer, role) that keeps ``apply_fn`` within budget.

    The program ``apply_fn(params, *calibration_inputs)`` is traced once to find its tuning
    units (:func:`dp2ejax.tune.space.discover_units`: each module path with floating-point work,
    times each role), each unit gets its candidate formats (restricted by ``priors``), and a
    search over configurations evaluates each under :func:`dp2ejax.emulate` against the fp64
    reference (float leaves of ``params`` and the inputs are cast to float64 when x64 is
    enabled; otherwise the float32 native result is the reference, and the result says so).

    Args:
      apply_fn: ``apply_fn(params, *inputs)``, e.g. a Flax ``model.apply``.
      params: its parameters (a pytree).
      calibration_inputs: a tuple of positional inputs (or one array), run as one batch. A
        ``dp2ejax.sparse.CSR`` input is given its emulation operator
        (:func:`dp2ejax.graph.emulation_operator`).
      candidates: formats for every unit, or a dict ``{role | layer pattern | (pattern, role):
        formats}`` (first matching key wins; units no key matches stay native).
      criterion: :class:`RelativeError`, :class:`MetricDrop`, :class:`CestacDigits`, or a float
        (a relative error).
      cost_model: the objective: ``"bits"`` (:class:`BitsCost`), ``"energy"``
        (:class:`EnergyCost`) or an additive :class:`CostModel`. ``"measured"`` times programs
        and is reported; as an objective the bits model is used instead (noted in the result):
        emulation time is not hardware time, and noisy timings would make the search
        non-deterministic.
      roles: the roles to tune (others stay native).
      search: ``"delta"`` (sensitivity + delta debugging), ``"knapsack"`` (sensitivity +
        knapsack + verification/repair), ``"greedy"`` (baseline) or ``"exhaustive"`` (at most
        5000 configurations).
      priors: expertise restricting candidates per layer kind (:data:`DEFAULT_PRIORS`).
      seed: makes the search reproducible (tie-breaks; CESTAC's key is the criterion's seed).
      max_evaluations: stop the search after this many distinct evaluations and return the best
        found (the result notes it).
      held_out_inputs: inputs (like ``calibration_inputs``) on which the final policy is checked.
      devices: ``None`` (the first device), ``"all"`` (every local device) or a list: distinct
        configurations of a batch go to the devices round-robin.
      execution: ``"eager"`` (default: op-by-op, no compilation per configuration) or ``"jit"``.
      report_costs: the cost models reported side by side (any of bits, energy, measured).
      baselines: formats of the uniform baselines (default: fp64 if x64, fp32, bf16 and every
        candidate).
      margin: a safety margin in [0, 1): the search accepts a configuration only when its
        score is at most ``(1 - margin)`` times the criterion's threshold (for a relative error:
        ``error <= (1 - margin) * max_error``), so that the policy keeps to the target on
        inputs that differ from the calibration batch. ``feasible`` and the reported values
        still refer to the criterion itself.

    Returns:
      A :class:`TuneResult`. A criterion nothing meets is not an error: ``feasible`` is False,
      ``policy`` is the configuration with the best value, and ``reason`` says how close it got.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> jax.config.update("jax_enable_x64", True)
      >>> model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(2)])
      >>> x = jax.random.normal(jax.random.key(0), (16, 4))
      >>> params = model.init(jax.random.key(1), x)
      >>> result = autotune(model.apply, params, (x,), candidates=("fp32", "bf16", "fp8_e4m3"),
      ...                   criterion=RelativeError(1e-2), roles=("matmul_inputs",),
      ...                   report_costs=("bits",))
      >>> result.feasible, list(result.config.values())
      (True, ['bf16', 'bf16'])
      >>> result.savings["fp32"] > 0.4
      True
    """
    start = time.perf_counter()
    notes: list[str] = []
    criterion = as_criterion(criterion)
    objective = as_cost_model(cost_model)
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if max_evaluations is not None and (not isinstance(max_evaluations, int)
                                        or max_evaluations < 1):
        raise ValueError(f"max_evaluations must be a positive int or None, got "
                         f"{max_evaluations!r}")
    if not (isinstance(margin, int | float) and 0 <= margin < 1):
        raise ValueError(f"margin must be a number in [0, 1), got {margin!r}")
    unknown = [m for m in report_costs if m not in ("bits", "energy", "measured")]
    if unknown:
        raise ValueError(f"report_costs must name bits, energy or measured, got {unknown}")
    if not objective.additive:
        notes.append(f"cost_model {objective.name!r} is reported, not optimised (emulation time "
                     f"is not hardware time, and timings are noisy): the search minimised the "
                     f"bits model")
        objective = BitsCost()
    x64 = bool(jax.config.jax_enable_x64)
    carrier = jnp.float64 if x64 else jnp.float32
    reference_name = "fp64" if x64 else "fp32 native (x64 disabled)"
    if not x64:
        notes.append("x64 is disabled: the reference is the float32 native result, and formats "
                     "are emulated on a float32 carrier")
    inputs = _cast_floats(_prepare_inputs(calibration_inputs), carrier)
    params = _cast_floats(params, carrier)
    args = (params, *inputs)

    units = discover_units(apply_fn, *args, roles=roles)
    space = build_space(units, candidates, priors)
    if not space.units:
        raise ValueError(
            f"no tuning unit: apply_fn has no floating-point operation of roles {tuple(roles)} "
            f"inside a module (or named scope) that the candidates {candidates!r} cover")
    for fmts in space.candidates:
        for f in fmts:
            if not get_format(f).fits_in(carrier):
                raise ValueError(f"candidate format {f!r} does not fit the {np.dtype(carrier)} "
                                 f"carrier; enable x64 (jax.config.update('jax_enable_x64', "
                                 f"True))")
    if search == "exhaustive" and space.size > MAX_EXHAUSTIVE:
        exhaustive_search(space, None, [], MAX_EXHAUSTIVE)  # raises, naming the sizes
    costs = [{f: objective.unit_cost(u, f) for f in fmts}
             for u, fmts in zip(space.units, space.candidates, strict=True)]
    reference = apply_fn(*args) if criterion.uses_outputs else None
    evaluator = Evaluator(apply_fn, args, reference, criterion, space, _devices(devices),
                          execution, max_evaluations, margin)

    sens: Sensitivity | None = None
    reason = ""
    try:
        if search in ("delta", "knapsack"):
            sens = sensitivity(space, evaluator)
            if sens.top.meets:
                if search == "delta":
                    delta_search(space, evaluator, costs, sens, seed)
                else:
                    knapsack_search(space, evaluator, costs, sens)
        elif search == "greedy":
            greedy_search(space, evaluator, costs)
        else:
            exhaustive_search(space, evaluator, costs, MAX_EXHAUSTIVE)
    except BudgetExhausted:
        reason = (f"the search stopped at max_evaluations={max_evaluations}: the policy is the "
                  f"best evaluated so far")
    searched = evaluator.evaluated()
    evaluations, hits = evaluator.search_evaluations, evaluator.cache_hits
    evaluator.counting = False
    evaluator.max_evaluations = None
    if sens is None:  # for the table (greedy, exhaustive, or stopped early): not counted
        sens = sensitivity(space, evaluator)

    def cost_of(config: Config) -> float:
        return objective.config_cost(space.units, config)

    meeting = [e for e in searched if e.meets]
    if not meeting and margin > 0:
        meeting = [e for e in searched if criterion.meets(e.value)]
        if meeting:
            notes.append(f"no configuration met the criterion with margin {margin}: the "
                         f"policy meets the criterion itself only")
    if meeting:
        best = min(meeting, key=lambda e: (cost_of(e.config), e.score, e.order))
        feasible = True
    else:
        best = min(searched, key=lambda e: (e.score, cost_of(e.config), e.order)) if searched \
            else sens.top
        feasible = False
        reason = _infeasible_reason(criterion, best, sens, space, reason)
    policy = space.policy(best.config)

    verified = None
    if criterion.uses_outputs:
        out = jax.jit(emulate(apply_fn, policy))(*args)
        verified = criterion.value(out, reference)
        if feasible and not criterion.meets(verified):
            notes.append(f"the policy met the criterion op by op ({best.value:.3g}) but not "
                         f"jitted ({verified:.3g}): XLA fuses operations differently")
    held_out = None
    if held_out_inputs is not None:
        held_out = _check_held_out(apply_fn, params, held_out_inputs, carrier, criterion, policy)

    formats = baselines
    if formats is None:
        formats = (*(("fp64",) if x64 else ()), "fp32", "bf16",
                   *(f for fmts in space.candidates for f in fmts))
    formats = tuple(dict.fromkeys(get_format(f).name for f in formats))
    uniform = evaluator.evaluate_many([space.uniform(f) for f in formats])
    measured = MeasuredCost() if "measured" in report_costs else None

    def report(config: Config, native: str | None = None) -> dict:
        out = {}
        if "bits" in report_costs:
            out["bits"] = BitsCost().config_breakdown(space.units, config)
        if "energy" in report_costs:
            out["energy"] = EnergyCost().config_breakdown(space.units, config)
        if objective.name not in ("bits", "energy"):
            out[objective.name] = {"total": cost_of(config)}
        if measured is not None:
            emulated = emulate(apply_fn, space.policy(config))
            out["measured"] = {"emulated_s": measured.time(emulated, args), "native_s": None}
            if native in _NATIVE_DTYPES and (native != "fp64" or x64):
                dtype = _NATIVE_DTYPES[native]
                native_args = (_cast_floats(params, dtype), *_cast_floats(inputs, dtype))
                try:
                    out["measured"]["native_s"] = measured.time(apply_fn, native_args)
                except Exception as err:  # noqa: BLE001 - a backend without that dtype's kernels
                    notes.append(f"native {native} timing failed: {str(err).splitlines()[0]}")
        return out

    policy_costs = report(best.config)
    baseline_rows = [dict(format=f, value=e.value, meets=e.meets, costs=report(e.config, f),
                          objective_cost=cost_of(e.config))
                     for f, e in zip(formats, uniform, strict=True)]
    total = cost_of(best.config)
    savings = {row["format"]: 1.0 - total / row["objective_cost"]
               for row in baseline_rows if row["objective_cost"] > 0}
    table = _table(space, best.config, sens, objective, total)
    return TuneResult(
        policy=policy, config=space.describe(best.config), table=table,
        evaluations=evaluations, cache_hits=hits, feasible=feasible, reason=reason,
        value=best.value, verified_value=verified, held_out=held_out, baselines=baseline_rows,
        costs=policy_costs, savings=savings, search=search, cost_model=objective.name,
        criterion=criterion.to_dict(), reference=reference_name, seed=seed,
        space_size=space.size, wall_s=time.perf_counter() - start, notes=tuple(notes))


def _infeasible_reason(criterion: Criterion, best: Evaluation, sens: Sensitivity,
                       space: SearchSpace, stopped: str) -> str:
    top = sens.top
    why = (f"no evaluated configuration meets {criterion.describe()}: the best reached "
           f"{best.value:.3g} against the target {criterion.target:.3g}")
    if not top.meets:
        why += (f"; even every unit at its most precise candidate "
                f"({', '.join(sorted(set(space.top())))}) reaches only {top.value:.3g}, so no "
                f"cheaper configuration is expected to: add more precise candidates or relax "
                f"the target")
    return f"{stopped}; {why}" if stopped else why


def _check_held_out(apply_fn, params, held_out_inputs, carrier, criterion, policy) -> dict:
    inputs = _cast_floats(_prepare_inputs(held_out_inputs), carrier)
    args = (params, *inputs)
    if criterion.uses_outputs:
        reference = apply_fn(*args)
        out = jax.jit(emulate(apply_fn, policy))(*args)
        value = criterion.value(out, reference, held_out=True)
    else:
        value = criterion.value_of_policy(apply_fn, args, policy)
    meets = bool(criterion.meets(value))
    miss = 0.0 if meets else abs(value - criterion.target)
    return {"value": value, "meets": meets, "miss": miss, "target": criterion.target}


def _table(space: SearchSpace, config: Config, sens: Sensitivity, objective: CostModel,
           total: float) -> list[dict]:
    rows = []
    for u, (unit, fmt) in enumerate(zip(space.units, config, strict=True)):
        by_format = {space.candidates[u][0]: sens.top.value,
                     **{f: e.value for f, e in sens.by_format[u].items()}}
        cost = objective.unit_cost(unit, fmt)
        rows.append(dict(layer=unit.layer, role=unit.role, format=fmt,
                         candidates=list(space.candidates[u]),
                         sensitivity=by_format.get(fmt, sens.top.value),
                         sensitivity_by_format=by_format, cost=cost,
                         cost_share=cost / total if total > 0 else 0.0,
                         flops=unit.flops, values_moved=unit.values_moved,
                         prior=space.reasons[u] if space.reasons else ""))
    return rows
