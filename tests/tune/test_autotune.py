"""The autotuner against exhaustive search, on held-out inputs, with infeasible criteria,
priors, cost models, CESTAC, serialisation, devices and a GCN.

The models are small (an MLP of width 16, a 60-node GCN) and the configurations are
evaluated op by op (no compilation per configuration), so the whole file runs in well under a
minute; results shared by several tests are module fixtures.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dp2ejax import PrecisionPolicy, emulate
from dp2ejax.cestac import analyze
from dp2ejax.tune import (
    BitsCost,
    CestacDigits,
    EnergyCost,
    MetricDrop,
    Prior,
    RelativeError,
    TuneResult,
    autotune,
    build_space,
    discover_units,
)

# matmul operands in fp32/bf16/fp8, sums in fp32/bf16: 3**3 * 2**3 = 216 configurations
CANDIDATES = {"matmul_inputs": ("fp32", "bf16", "fp8_e4m3"),
              "matmul_accumulation": ("fp32", "bf16")}
ROLES = ("matmul_inputs", "matmul_accumulation")
TARGET = RelativeError(3e-3)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16)(x))
        x = nn.tanh(nn.Dense(16)(x))
        return nn.Dense(4)(x)


def f64(tree):
    """Float leaves in float64 (index arrays of a CSR stay integers)."""
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree)


@pytest.fixture(scope="module")
def mlp():
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (64, 8))
    held_out = jax.random.normal(jax.random.key(7), (64, 8))
    params = model.init(jax.random.key(1), x)
    return model, params, x, held_out


def tune_mlp(mlp, search, **kwargs):
    model, params, x, held_out = mlp
    kwargs.setdefault("report_costs", ("bits",))
    return autotune(model.apply, params, (x,), candidates=CANDIDATES, roles=ROLES,
                    criterion=TARGET, search=search, **kwargs)


@pytest.fixture(scope="module")
def small():
    """A smaller model shared by several tests (its op-by-op kernels compile once)."""
    model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(2)])
    x = jax.random.normal(jax.random.key(0), (16, 4))
    return model, model.init(jax.random.key(1), x), x


@pytest.fixture(scope="module")
def exhaustive(mlp):
    return tune_mlp(mlp, "exhaustive")


@pytest.fixture(scope="module")
def delta(mlp):
    return tune_mlp(mlp, "delta", held_out_inputs=(mlp[3],),
                    report_costs=("bits", "energy", "measured"))


def bits_cost(result: TuneResult) -> float:
    return result.costs["bits"]["total"]


@pytest.mark.parametrize("search", ["delta", "knapsack"])
def test_tuner_within_10_percent_of_exhaustive_with_far_fewer_evaluations(
        mlp, exhaustive, delta, search):
    result = delta if search == "delta" else tune_mlp(mlp, search)
    assert exhaustive.evaluations == exhaustive.space_size == 216
    assert exhaustive.feasible and result.feasible
    assert result.value <= TARGET.max_error
    # the optimum is neither all-top nor all-lowest: the problem is not trivial
    assert 0 < bits_cost(exhaustive) < result.baselines[1]["costs"]["bits"]["total"]
    message = (f"{search}: cost {bits_cost(result):.0f} with {result.evaluations} evaluations; "
               f"exhaustive optimum {bits_cost(exhaustive):.0f} with {exhaustive.evaluations}")
    assert bits_cost(result) <= 1.1 * bits_cost(exhaustive), message
    assert result.evaluations <= exhaustive.evaluations / 5, message


def test_greedy_baseline_meets_the_criterion(mlp, exhaustive):
    greedy = tune_mlp(mlp, "greedy")
    assert greedy.feasible and greedy.value <= TARGET.max_error
    assert bits_cost(greedy) >= bits_cost(exhaustive)


def held_out_error(mlp, policy):
    model, params, _, held_out = mlp
    p64, x64 = f64(params), f64(held_out)
    reference = model.apply(p64, x64)
    out = jax.jit(emulate(model.apply, policy))(p64, x64)
    return float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))


def test_held_out_report_is_honest(mlp, delta):
    error = held_out_error(mlp, delta.policy)
    assert delta.held_out["value"] == pytest.approx(error, rel=1e-9)
    assert delta.held_out["meets"] == (error <= TARGET.max_error)
    assert delta.held_out["miss"] == pytest.approx(max(error - TARGET.max_error, 0.0))
    # the search's op-by-op value and the jitted re-run agree
    assert delta.verified_value == pytest.approx(delta.value, rel=1e-6)


def test_policy_with_margin_meets_criterion_on_held_out_inputs(mlp, delta):
    # tuned at the boundary, a policy may miss on other inputs (the report says by how much);
    # a 20 % margin on the calibration batch keeps it within the target on held-out inputs
    result = tune_mlp(mlp, "delta", held_out_inputs=(mlp[3],), margin=0.2)
    assert result.feasible and result.value <= 0.8 * TARGET.max_error
    error = held_out_error(mlp, result.policy)
    assert result.held_out["meets"] and error <= TARGET.max_error, result.summary()
    assert bits_cost(result) >= bits_cost(delta)


def test_held_out_miss_is_reported_not_hidden(small):
    model, params, x = small
    huge = 1e6 * x  # fp16 operands overflow to inf on these inputs, not on the calibration ones
    result = autotune(model.apply, params, (x,), candidates=("fp32", "fp16"),
                      roles=("matmul_inputs",), criterion=1e-2, search="knapsack",
                      held_out_inputs=(huge,), report_costs=("bits",))
    assert result.feasible and "fp16" in result.config.values()
    out = jax.jit(emulate(model.apply, result.policy))(f64(params), f64(huge))
    assert not bool(jnp.all(jnp.isfinite(out)))  # recomputed: it really misses
    assert result.held_out["meets"] is False and result.held_out["miss"] == float("inf")
    assert "misses by" in result.summary()


def test_infeasible_criterion_returns_best_found_with_reason(mlp):
    model, params, x, _ = mlp
    result = autotune(model.apply, params, (x,), candidates=("bf16", "fp8_e4m3"), roles=ROLES,
                      criterion=RelativeError(1e-12), report_costs=("bits",))
    assert result.feasible is False
    assert isinstance(result.policy, PrecisionPolicy)
    assert "1e-12" in result.reason and f"{result.value:.3g}" in result.reason
    assert "most precise candidate" in result.reason
    best = min(b["value"] for b in result.baselines if b["format"] in ("bf16", "fp8_e4m3"))
    assert result.value <= best  # the best found is at least as good as uniform bf16
    assert "NOT feasible" in result.summary()


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.LayerNorm()(nn.Dense(16)(x)))


def test_layernorm_reduction_stays_fp32_unless_prior_overridden():
    model = Normed()
    x = 3.0 + jax.random.normal(jax.random.key(0), (32, 8))
    params = model.init(jax.random.key(1), x)
    kwargs = dict(candidates=("fp32", "bf16"), roles=("reduction",), criterion=0.5,
                  report_costs=("bits",))
    default = autotune(model.apply, params, (x,), **kwargs)
    (row,) = default.table
    assert row["layer"].endswith("LayerNorm_0") and row["format"] == "fp32"
    assert row["candidates"] == ["fp32"] and row["prior"]
    lifted = autotune(model.apply, params, (x,), priors=(), **kwargs)
    assert lifted.table[0]["format"] == "bf16"
    assert lifted.table[0]["candidates"] == ["fp32", "bf16"]
    # an explicit prior placed first overrides the defaults the same way
    relaxed = autotune(model.apply, params, (x,), priors=(Prior("*LayerNorm*", "reduction",
                                                                min_format="bf16"),), **kwargs)
    assert relaxed.table[0]["format"] == "bf16"


def test_cost_models_reported_side_by_side(delta):
    assert set(delta.costs) == {"bits", "energy", "measured"}
    baselines = {b["format"]: b for b in delta.baselines}
    assert {"fp64", "fp32", "bf16", "fp8_e4m3"} <= set(baselines)
    # bits: uniform bf16 against fp32 is (mults/4 + adds/2 + bytes/2) / (mults + adds + bytes)
    units = [(r["role"], r["flops"], r["values_moved"]) for r in delta.table]
    mults = sum(f for role, f, _ in units if role == "matmul_inputs")
    adds = sum(f for role, f, _ in units if role == "matmul_accumulation")
    moved = sum(v for *_, v in units) * 4.0
    expected = (mults / 4 + adds / 2 + moved / 2) / (mults + adds + moved)
    ratio = (baselines["bf16"]["costs"]["bits"]["total"]
             / baselines["fp32"]["costs"]["bits"]["total"])
    assert ratio == pytest.approx(expected, rel=1e-12) and ratio < 1
    assert delta.savings["fp32"] == pytest.approx(
        1 - bits_cost(delta) / baselines["fp32"]["objective_cost"])
    # energy: fp32 and fp16 are the table's own figures (Horowitz, ISSCC 2014)
    assert EnergyCost.op_pj("fp32", "mult") == pytest.approx(3.7)
    assert EnergyCost.op_pj("fp32", "add") == pytest.approx(0.9)
    assert EnergyCost.op_pj("fp16", "mult") == pytest.approx(1.1)
    assert EnergyCost.op_pj("fp16", "add") == pytest.approx(0.4)
    assert EnergyCost.op_pj("int8", "mult") == pytest.approx(0.2)
    assert EnergyCost.op_pj("int8", "add") == pytest.approx(0.03)
    energy = baselines["fp32"]["costs"]["energy"]
    assert energy["total"] == pytest.approx(energy["compute_pj"] + energy["movement_pj"])
    assert energy["movement_pj"] > energy["compute_pj"]  # data movement dominates (DRAM)
    mult_pj = sum(f for role, f, _ in units if role == "matmul_inputs") * 3.7
    add_pj = sum(f for role, f, _ in units if role == "matmul_accumulation") * 0.9
    assert energy["compute_pj"] == pytest.approx(mult_pj + add_pj)
    # measured: positive times; native times for the native formats
    assert delta.costs["measured"]["emulated_s"] > 0
    assert baselines["fp32"]["costs"]["measured"]["native_s"] > 0
    assert baselines["fp8_e4m3"]["costs"]["measured"]["native_s"] is None
    text = delta.summary()
    assert "uniform fp32" in text and "energy pJ" in text and "emulated s" in text


def test_bits_cost_model_formula():
    def product(w, x):
        with jax.named_scope("mm"):
            return x @ w

    assert discover_units(lambda w, x: x @ w, jnp.ones((8, 4)), jnp.ones((16, 8))) == []
    unit = discover_units(product, jnp.ones((8, 4)), jnp.ones((16, 8)))[0]
    assert (unit.multiplies, unit.values_in) == (16 * 8 * 4, 8 * 4 + 16 * 8)
    assert BitsCost().unit_cost(unit, "bf16") == pytest.approx(
        unit.multiplies / 4 + unit.values_in * 2)


def test_cestac_digits_criterion(small):
    model, params, x = small
    criterion = CestacDigits(min_digits=2, reduce="median")
    result = autotune(model.apply, params, (x,), candidates=("fp32", "bf16"),
                      roles=("matmul_inputs",), criterion=criterion, search="knapsack",
                      report_costs=("bits",), baselines=("fp32",))
    assert result.feasible and result.value >= 2
    assert "bf16" in result.config.values(), result.summary()
    check = analyze(model.apply, f64(params), f64(x), policy=result.policy,
                    key=jax.random.key(criterion.seed))
    assert float(np.median(np.asarray(check.digits))) == pytest.approx(result.value)
    assert result.baselines[0]["value"] > result.value  # uniform fp32 keeps more digits


def test_policy_json_round_trip_and_determinism(mlp, delta):
    policy = delta.policy
    assert PrecisionPolicy.from_json(policy.to_json()) == policy
    assert PrecisionPolicy.from_toml(policy.to_toml()) == policy
    data = json.loads(delta.to_json())
    assert data["policy"] == policy.to_dict() and data["evaluations"] == delta.evaluations
    again = tune_mlp(mlp, "delta", held_out_inputs=(mlp[3],))
    assert again.config == delta.config and again.evaluations == delta.evaluations
    assert again.policy == delta.policy


def test_devices_round_robin_gives_the_same_result(small):
    model, params, x = small
    kwargs = dict(candidates=("fp32", "bf16", "fp8_e4m3"), roles=("matmul_inputs",),
                  criterion=1e-2, report_costs=("bits",), baselines=("fp32",))
    one = autotune(model.apply, params, (x,), **kwargs)
    # jitted per configuration (op-by-op kernels would compile again for the second device)
    two = autotune(model.apply, params, (x,), devices=jax.devices()[:2], execution="jit",
                   **kwargs)
    assert two.config == one.config and two.value == pytest.approx(one.value, rel=1e-9)
    assert two.evaluations == one.evaluations


def test_exhaustive_refuses_large_spaces_and_budget_stops_cleanly(mlp):
    model, params, x, _ = mlp
    with pytest.raises(ValueError, match="above the limit of 5000"):
        autotune(model.apply, params, (x,), candidates=("fp32", "bf16", "fp16", "fp8_e4m3"),
                 search="exhaustive", report_costs=("bits",))  # 4**10 configurations
    stopped = tune_mlp(mlp, "delta", max_evaluations=3)
    assert stopped.evaluations == 3 and "max_evaluations=3" in stopped.reason


def test_rules_use_exact_paths_children_first():
    def fn(x):
        with jax.named_scope("outer"):
            y = jnp.sin(x)
            with jax.named_scope("inner"):
                y = y * 3.0
        return y

    units = discover_units(fn, jnp.ones(4))
    assert [(u.layer, u.role) for u in units] == [("outer", "elementwise"),
                                                  ("outer/inner", "elementwise")]
    space = build_space(units, ("fp32", "bf16"))
    policy = space.policy(("bf16", "fp32"))
    assert policy.resolve("outer/inner", "elementwise").format.name == "fp32"
    assert policy.resolve("outer", "elementwise").format.name == "bf16"
    assert policy.resolve("other/outer", "elementwise").format.name == "bf16"  # a sub-run
    assert policy.resolve("outer2", "elementwise").format is None  # native default


def test_gcn_tuning_run():
    from dp2ejax import graph

    g = graph.contextual_sbm(60, 2, feature_dim=8, signal=3.0, seed=0, avg_degree=6,
                             homophily=0.9)
    P = graph.normalized_adjacency(g.adjacency, "gcn")
    model = graph.GCN(hidden=8, num_classes=2, depth=2)
    variables = model.init(jax.random.key(0), g.features, graph.emulation_operator(P))
    labels = np.asarray(g.labels)
    reference = model.apply(f64(variables), f64(g.features), f64(graph.emulation_operator(P)))
    agree = np.argmax(np.asarray(reference), -1)  # metric: agreement with the fp64 prediction

    def accuracy(logits):
        return float(np.mean(np.argmax(np.asarray(logits), -1) == agree))

    result = autotune(model.apply, variables, (g.features, P),
                      candidates=("fp32", "bf16", "fp8_e4m3"), roles=ROLES,
                      criterion=MetricDrop(accuracy, max_drop=0.02), report_costs=("bits",))
    layers = {row["layer"] for row in result.table}
    assert {"GCN/input", "GCN/layer_0", "GCN/layer_1", "GCN/output"} <= layers
    assert result.feasible and result.savings["fp32"] > 0.3, result.summary()
    out = jax.jit(emulate(model.apply, result.policy))(
        f64(variables), f64(g.features), f64(graph.emulation_operator(P)))
    assert 1.0 - accuracy(out) <= 0.02
    assert labels.shape == (60,)
