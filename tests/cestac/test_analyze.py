"""Tests for dp2ejax.cestac.analyze (and analyze_layers): digits against analytic truth,
instability sites, reproducibility, formats, sharding, reports and errors.

Every ``analyze`` call traces and compiles one program (a few seconds on CPU), so the analyses
are module-scoped fixtures shared by the tests that read them.

A note on sample counts. One random rounding has two outcomes; with N = 3 samples all three agree
with probability 1/4, and CESTAC (CADNA too) then reports every digit of that element. The
constructed cases below round each element once, so they use N = 8 (agreement 1/128) and accept
an element as either within one digit of the truth or with identical samples.
"""

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dp2ejax import PrecisionPolicy, Rule
from dp2ejax.cestac import (
    INSTABILITY_KINDS,
    analyze,
    analyze_layers,
    precision_digits,
    significant_digits,
)

THIS_FILE = Path(__file__)
PRECISION = {"fp64": 53, "fp32": 24, "bf16": 8}
NUMPY_TYPE = {"fp64": np.float64, "fp32": np.float32, "bf16": ml_dtypes.bfloat16}
N_TERMS = 64


def line_of(marker: str) -> int:
    """Line number of the unique line of this file that ends with ``# <marker>``."""
    lines = [i + 1 for i, text in enumerate(THIS_FILE.read_text().splitlines())
             if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, (marker, lines)
    return lines[0]


def sites(result, kind):
    return [i for i in result.instabilities if i.kind == kind]


def at_line(instability, marker):
    return f"{THIS_FILE.name}:{line_of(marker)}:" in instability.source


def all_samples_equal(samples):
    samples = np.asarray(samples)
    return np.all(samples == samples[:1], axis=0)


# --- constructed cases with known digits ----------------------------------------------------------


def ulp(x, precision):
    """Unit in the last place of ``x`` (normal range) for a ``precision``-bit significand."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - precision + 1)


def constructed_inputs(fmt):
    """Inputs exactly representable in ``fmt`` (so that only the operations round):
    ``terms``: 64 well-scaled positive terms in [1, 2); ``x`` and ``d`` for ``(x + d) - x``, whose
    exact value d has full significands that ``x + d`` cannot hold: it keeps about
    log10(d / ulp(x)) digits, having lost log10(x / d) of the precision's."""
    cast = NUMPY_TYPE[fmt]
    rng = np.random.default_rng(0)
    terms = rng.uniform(1.0, 2.0, N_TERMS).astype(cast).astype(np.float64)
    shifts = {"fp64": [14, 27, 40], "fp32": [5, 10, 15], "bf16": [2, 3]}[fmt]
    d = np.repeat([(2.0**-s) / 3 for s in shifts], 8).astype(cast).astype(np.float64)
    x = np.full_like(d, 1.25)
    return terms, x, d


def constructed(terms, x, d, a, b, c):
    def add(total, term):
        return total + term, None

    total, _ = lax.scan(add, jnp.zeros((), terms.dtype), terms)  # sequential, as a C loop
    return {
        "sum": total,
        "cancel": (x + d) - x,
        # exact in fp64: random rounding must leave them alone
        "exact": jnp.stack([a + b, a - b, a * b, a / b, jnp.sqrt(c), -a, jnp.abs(b)]),
    }


EXACT_ARGS = (0.5, 0.25, 2.25)  # a, b, c
EXACT_VALUES = [0.75, 0.25, 0.125, 2.0, 1.5, -0.5, 0.25]


def run_constructed(fmt, seed, samples=8):
    terms, x, d = constructed_inputs(fmt)
    return analyze(constructed, terms, x, d, *EXACT_ARGS, fmt=fmt, samples=samples,
                   key=jax.random.key(seed))


@pytest.fixture(scope="module")
def fp64_runs():
    return {seed: run_constructed("fp64", seed) for seed in (0, 1, 2)}


@pytest.fixture(scope="module")
def narrow_runs():
    return {fmt: run_constructed(fmt, 0) for fmt in ("fp32", "bf16")}


@pytest.fixture(scope="module")
def constructed_runs(fp64_runs, narrow_runs):
    return {"fp64": fp64_runs[0], **narrow_runs}


@pytest.mark.parametrize("fmt", ["fp64", "fp32", "bf16"])
def test_sum_of_positive_terms_keeps_nearly_all_digits(constructed_runs, fmt):
    """Recursive summation of positive terms has condition number 1: with random rounding its
    error grows like sqrt(n) units in the last place, so at most log10(sqrt(n)) digits go, plus
    one digit of estimation tolerance. The estimate must not overstate the accuracy either: the
    mean's true error (against the exact rational sum) is within 10 ** (1 - digits)."""
    result = constructed_runs[fmt]
    max_digits = precision_digits(PRECISION[fmt])
    assert result.max_digits == pytest.approx(max_digits)
    digits = float(result.digits["sum"])
    assert max_digits - math.log10(math.sqrt(N_TERMS)) - 1 <= digits <= max_digits
    terms, _, _ = constructed_inputs(fmt)
    exact = sum(Fraction(t) for t in terms)
    error = abs(Fraction(float(result.mean["sum"])) - exact) / exact
    assert error <= 10.0 ** (1 - digits)


@pytest.mark.parametrize("fmt", ["fp64", "fp32", "bf16"])
def test_cancellation_loses_the_cancelled_digits(constructed_runs, fmt):
    """(x + d) - x keeps log10(d / ulp(x)) digits: the digits of x that cancel are lost."""
    result = constructed_runs[fmt]
    _, x, d = constructed_inputs(fmt)
    truth = np.log10(d / ulp(1.25, PRECISION[fmt]))
    digits = np.asarray(result.digits["cancel"])
    identical = all_samples_equal(result.samples["cancel"])
    close = np.abs(digits - truth) <= 1.0
    assert np.all(close | identical), (digits, truth)
    assert np.mean(close) >= 0.75
    for value in np.unique(truth):  # per loss, the median is within one digit
        assert abs(np.median(digits[truth == value]) - value) <= 1.0
    # a loss of >= 4 digits is reported as a cancellation at the subtraction, per element
    lost = np.log10(x / d)
    cancellations = sites(result, "cancellation")
    # CADNA's test is on the digits of the operands and the result (cadna_sub.h), estimated
    # from 3 samples: an element at the threshold may fall either side of it
    assert abs(sum(i.count for i in cancellations) - int(np.sum(lost >= 4))) <= 1
    assert all(i.primitive == "sub" for i in cancellations)


def test_fp64_exact_operations_keep_every_digit(fp64_runs):
    """Random rounding at the carrier's precision never moves an exact add/sub/mul/div/sqrt."""
    for result in fp64_runs.values():
        samples = np.asarray(result.samples["exact"])
        np.testing.assert_array_equal(samples, np.broadcast_to(EXACT_VALUES, samples.shape))
        np.testing.assert_array_equal(result.mean["exact"], EXACT_VALUES)
        np.testing.assert_array_equal(result.std["exact"], 0.0)
        np.testing.assert_array_equal(result.digits["exact"], precision_digits(53))
        assert not np.any(result.computational_zero["exact"])


def test_fp64_runs_in_float64(fp64_runs):
    result = fp64_runs[0]
    assert result.format == "fp64"
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(result.samples))
    assert float(result.digits["sum"]) > 13  # more digits than float32 could hold
    assert 0 < float(result.std["sum"]) < 1e-12  # the samples do differ, in float64


def test_same_key_same_result(fp64_runs):
    again = run_constructed("fp64", 0)
    for name in ("sum", "cancel", "exact"):
        np.testing.assert_array_equal(again.samples[name], fp64_runs[0].samples[name])
        np.testing.assert_array_equal(again.digits[name], fp64_runs[0].digits[name])
    assert again.instabilities == fp64_runs[0].instabilities


def test_different_keys_agree_within_one_digit(fp64_runs):
    """A well-conditioned sum: other keys give other samples but the same digits, to one digit."""
    sums = [np.asarray(r.samples["sum"]) for r in fp64_runs.values()]
    assert not np.array_equal(sums[0], sums[1])
    digits = [float(r.digits["sum"]) for r in fp64_runs.values()]
    assert max(digits) - min(digits) <= 1.0, digits


# --- instabilities per site -----------------------------------------------------------------------


def non_significant(samples):
    """CADNA's ``approx_digit() == 0`` in NumPy (``cadna_digitnumber.h``, CADNA_C 2.0 in
    github.com/bgin/LibAtmosCXX ``ThirdParty/cadna/``, commit 308b678): samples not all equal,
    finite, and C < 0.5 (an exact value, zero included, is reliable)."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[0]
    mean, std = samples.mean(axis=0), samples.std(axis=0, ddof=1)
    tau = {2: 12.706204736174694, 3: 4.302652729749462}[n]
    with np.errstate(divide="ignore", invalid="ignore"):
        digits = np.log10(math.sqrt(n) * np.abs(mean) / (tau * std))
    equal = np.all(samples == samples[:1], axis=0)
    return ~equal & np.all(np.isfinite(samples), axis=0) & ~(digits >= 0.5)


def unstable(x, step, d):
    exact_zero = x - x  # zero in every sample: an exact result, never unstable
    # each term is exact or one ulp off: a non-significant sum, its samples almost never agree
    noise = sum((x * c) / c - x for c in (3.0, 7.0, 11.0, 13.0, 17.0, 19.0))  # site: noise
    with jax.named_scope("block"):
        noisy_product = noise * noise  # site: multiplication
    exact_product = exact_zero * exact_zero  # 0 * 0: exact, not unstable
    quotient = x / noise  # site: division
    exact_quotient = x / (exact_zero + 1.0)
    exponential = jnp.exp(noise)  # site: exp
    logarithm = jnp.log(exact_zero + 1.0)  # log(1): stable, not reported
    selected = jnp.where(noise > 0.0, 1.0, 2.0)  # site: select
    equal = jnp.where(noise == 0.0, 1.0, 2.0)  # == is never unstable (CADNA's cadna_eq.h)
    masked = jnp.where(exact_zero != 0.0, 1.0, 2.0)  # an exact mask: not unstable
    chosen = lax.cond(noise[0] < 0.0, lambda: 1.0, lambda: 2.0)  # site: cond

    def below_one(carry):
        return carry[0] < 1.0  # site: while

    # step 0.25 is exact: the last test compares 1.0 with 1.0, an exact zero difference
    t, steps = lax.while_loop(below_one, lambda c: (c[0] + step, c[1] + 1.0), (0.0, 0.0))
    shifted = x + d
    cancelled = shifted - x  # site: cancellation
    kept = (x + 0.1) - x  # loses one digit only: not reported
    return {
        "noise": noise, "exact_zero": exact_zero, "noisy_product": noisy_product,
        "exact_product": exact_product, "quotient": quotient, "exact_quotient": exact_quotient,
        "exponential": exponential, "logarithm": logarithm, "selected": selected,
        "equal": equal, "masked": masked, "chosen": chosen, "t": t, "steps": steps,
        "shifted": shifted, "cancelled": cancelled, "kept": kept,
    }


N_UNSTABLE = 16


@pytest.fixture(scope="module")
def unstable_run():
    x = jnp.asarray(np.random.default_rng(5).uniform(0.5, 2.0, N_UNSTABLE))
    return analyze(unstable, x, 0.25, 1e-9, fmt="fp64", samples=3, key=jax.random.key(0))


def expected_count(run, marker):
    noisy = int(non_significant(run.samples["noise"]).sum())
    first = int(non_significant(run.samples["noise"][:, :1]).sum())
    return {"site: multiplication": noisy, "site: division": noisy, "site: exp": noisy,
            "site: select": noisy, "site: cond": first}[marker]


@pytest.mark.parametrize(
    "kind, primitive, marker",
    [
        ("multiplication", "mul", "site: multiplication"),
        ("division", "div", "site: division"),
        ("math_function", "exp", "site: exp"),
        ("branching", "gt", "site: select"),
        ("branching", "lt", "site: cond"),
    ],
)
def test_instability_reported_at_its_site(unstable_run, kind, primitive, marker):
    """CADNA's rules (see dp2ejax.cestac.instabilities): the counts are the elements whose
    operands are non-significant, computed here from the returned samples."""
    assert non_significant(unstable_run.samples["noise"]).sum() >= N_UNSTABLE // 2
    expected = expected_count(unstable_run, marker)
    found = [i for i in sites(unstable_run, kind) if at_line(i, marker)]
    assert len(found) == (1 if expected else 0), unstable_run.instabilities
    if expected:
        (site,) = found
        assert site.primitive == primitive
        assert site.count == expected


def test_cancellation_is_cadnas_digit_loss(unstable_run):
    """``cadna_sub.h``: unstable when min(C_a, C_b) - C_result >= 4 (CADNA's default). x is
    exact (15.95 digits); x + d carries its rounding; their difference d ~ 1e-9 keeps ~7."""
    digits = lambda name: np.asarray(significant_digits(unstable_run.samples[name]))  # noqa: E731
    lost = np.minimum(digits("shifted"), precision_digits(53)) - digits("cancelled")
    (site,) = [i for i in sites(unstable_run, "cancellation") if at_line(i, "site: cancellation")]
    assert site.primitive == "sub"
    assert abs(site.count - int(np.sum(lost >= 4))) <= 1  # digits estimated in two programs
    assert site.count >= N_UNSTABLE // 2
    assert site.digits_lost_min is not None and 4 <= site.digits_lost_min <= 10
    assert site.digits_lost_min <= site.digits_lost_median <= 10
    assert not site.benign


def test_exact_values_are_not_unstable(unstable_run):
    """Exact results, exact zeros included, have every digit and raise no instability: 0 * 0,
    x / 1, an exact mask compared with 0, == on noise, the loop's exact last test."""
    for name in ("exact_zero", "exact_product", "exact_quotient", "masked"):
        np.testing.assert_array_equal(unstable_run.digits[name], precision_digits(53))
        assert not np.any(unstable_run.computational_zero[name])
    reported = {int(i.source.split(f"{THIS_FILE.name}:")[1].split(":")[0])
                for i in unstable_run.instabilities}
    allowed = {line_of(m) for m in ("site: noise", "site: multiplication", "site: division",
                                    "site: exp", "site: select", "site: cond",
                                    "site: cancellation")}
    assert reported <= allowed, unstable_run.instabilities
    assert np.all(np.asarray(unstable_run.samples["steps"]) == 4.0)


def test_instability_module_path(unstable_run):
    (site,) = [i for i in unstable_run.instabilities if at_line(i, "site: multiplication")]
    assert site.path == "block"
    others = [i for i in unstable_run.instabilities if i is not site]
    assert all(i.path == "" for i in others)
    assert all("unstable" in i.source for i in unstable_run.instabilities)  # function named


def test_instability_totals(unstable_run):
    totals = unstable_run.instability_totals()
    assert set(totals) == set(INSTABILITY_KINDS)
    for kind in INSTABILITY_KINDS:
        assert totals[kind] == sum(i.count for i in sites(unstable_run, kind))
    assert totals["branching"] == (expected_count(unstable_run, "site: select")
                                   + expected_count(unstable_run, "site: cond"))
    counts = [i.count for i in unstable_run.instabilities]
    assert counts == sorted(counts, reverse=True)  # most frequent first


def test_summary_and_json(unstable_run):
    data = json.loads(unstable_run.to_json())
    assert data["format"] == "fp64" and data["samples"] == 3
    assert data["max_digits"] == pytest.approx(precision_digits(53))
    assert data["instability_totals"] == unstable_run.instability_totals()
    assert data["instabilities"] == [i.to_dict() for i in unstable_run.instabilities]
    assert {tuple(sorted(i)) for i in data["instabilities"]} == {
        ("benign", "count", "digits_lost_median", "digits_lost_min", "kind", "path",
         "primitive", "source")}
    outputs = {o["output"]: o for o in data["outputs"]}
    assert outputs["['exact_product']"]["computational_zeros"] == 0
    assert outputs["['noisy_product']"]["computational_zeros"] >= N_UNSTABLE // 2
    assert outputs["['steps']"]["shape"] == [] and outputs["['steps']"]["mean_first"] == 4.0
    assert outputs["['kept']"]["digits_min"] > 13

    text = unstable_run.summary()
    total = sum(unstable_run.instability_totals().values())
    assert f"There are {total} numerical instabilities" in text
    for kind in INSTABILITY_KINDS:
        assert f"unstable {kind.replace('_', ' ')}" in text
    for site in unstable_run.instabilities:
        assert site.source in text
    assert f"{THIS_FILE.name}:{line_of('site: division')}:" in text
    assert "at block" in text


def test_softmax_cancellation_is_benign():
    """x - max(x) feeds only exp: the cancellation there is benign; (x + d) - x returned as it
    is is not. (x carries rounding errors, so the differences lose digits.)"""
    x = jnp.asarray(np.random.default_rng(1).uniform(10.0, 10.0 + 1e-6, 8))

    def fn(x):
        y = (x * 3.0) / 3.0
        return jax.nn.softmax(y), (y + 1e-9) - y

    result = analyze(fn, x, fmt="fp64", samples=3)
    found = {i.benign for i in sites(result, "cancellation")}
    assert found == {True, False}, result.instabilities


# --- per-layer digits of a Flax model -------------------------------------------------------------


class Shifted(nn.Module):
    """(h + 1000) - 1000: in fp32 the values ~1 lose log10(1000) = 3 of their ~7 digits."""

    @nn.compact
    def __call__(self, h):
        return (h + 1000.0) - 1000.0


def test_analyze_layers_locates_the_lost_digits():
    model = nn.Sequential([nn.Dense(8), Shifted(), nn.Dense(2)])
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    layers, result = analyze_layers(model, variables, x, fmt="fp32", samples=3,
                                    key=jax.random.key(1))
    assert [layer.path for layer in layers] == ["layers_0", "layers_1", "layers_2", ""]
    assert [layer.size for layer in layers] == [32, 32, 8, 8]
    first, shifted, last, output = layers
    assert first.digits_median >= 6.0
    assert shifted.digits_median <= first.digits_median - 2.0
    assert last.digits_median <= shifted.digits_median + 1.0
    assert output.digits_median == last.digits_median  # the model's output is layers_2's
    assert result.format == "fp32"
    assert all(0 <= layer.computational_zeros <= layer.size for layer in layers)
    assert all(layer.to_dict()["path"] == layer.path for layer in layers)
    # any cancellation found is the shift's (h ~ 0.1 or less there loses >= 4 digits)
    paths = {i.path for i in result.instabilities if i.kind == "cancellation"}
    assert paths <= {"Sequential/layers_1"}, result.instabilities


# --- formats, policies, sharding ------------------------------------------------------------------


def scoped(x):
    y = jnp.sin(x) * 1.1
    with jax.named_scope("inner"):
        z = y * 1.3 + 0.7
    return z


def test_policy_is_made_random_and_names_the_narrowest_format():
    x = jnp.linspace(0.1, 1.0, 8)
    nearest = PrecisionPolicy(default=Rule("fp32"), rules=[Rule("bf16", path="inner")])
    result = analyze(scoped, x, policy=nearest, samples=3, key=jax.random.key(0))
    assert result.format == "bf16"
    assert result.max_digits == pytest.approx(precision_digits(8))
    assert result.samples.dtype == jnp.float64  # fp32 is the widest format: float64 carrier
    assert not np.all(all_samples_equal(result.samples))  # the nearest rules were randomised
    assert np.all(np.asarray(result.digits) <= precision_digits(8))


def test_sharded_samples_match_unsharded():
    devices = jax.devices()
    assert len(devices) >= 8, "tests/conftest.py asks for 8 host CPU devices"
    x = jnp.linspace(1.0, 2.0, 16)

    def fn(v):
        return jnp.cumsum(v) / 3.0

    plain = analyze(fn, x, samples=8, key=jax.random.key(3))
    sharding = NamedSharding(Mesh(np.array(devices[:8]), ("s",)), P("s"))
    sharded = analyze(fn, x, samples=8, key=jax.random.key(3), sample_sharding=sharding)
    assert not sharded.samples.sharding.is_fully_replicated
    assert len(sharded.samples.sharding.device_set) == 8
    assert {shard.data.shape for shard in sharded.samples.addressable_shards} == {(1, 16)}
    np.testing.assert_array_equal(sharded.samples, plain.samples)
    np.testing.assert_array_equal(sharded.digits, plain.digits)
    assert sharded.instabilities == plain.instabilities


X64_OFF_SCRIPT = """
import jax, jax.numpy as jnp
from dp2ejax.cestac import analyze
f = lambda x: jnp.sum(x * 1.1)
x = jnp.linspace(1, 2, 8)
for fmt in ("bf16", "fp32"):
    r = analyze(f, x, fmt=fmt)
    assert r.samples.dtype == jnp.float32, (fmt, r.samples.dtype)
    assert 0 < float(r.digits) <= r.max_digits, (fmt, r.digits)
try:
    analyze(f, x, fmt="fp64")
except ValueError as err:
    print("ValueError:", err)
else:
    print("no error")
"""


def test_fp64_needs_x64_enabled():
    """With float64 disabled, fp64 is refused with a message naming the setting; bf16 and fp32
    still run (in float32)."""
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", X64_OFF_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=THIS_FILE.parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ValueError:"), out.stdout
    assert "jax_enable_x64" in out.stdout and "float64" in out.stdout


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [1, 0, -3, 2.0, 3.5, "3"])
def test_samples_must_be_an_int_of_at_least_two(samples):
    with pytest.raises(ValueError, match="samples must be an int >= 2"):
        analyze(jnp.sin, jnp.ones(3), samples=samples)


def test_policy_must_be_a_precision_policy():
    with pytest.raises(ValueError, match="policy must be a PrecisionPolicy, got str"):
        analyze(jnp.sin, jnp.ones(3), policy="fp32")


def test_unknown_format():
    with pytest.raises(ValueError, match="fp7"):
        analyze(jnp.sin, jnp.ones(3), fmt="fp7")


def test_outputs_must_be_floating_point():
    with pytest.raises(ValueError, match="floating-point.*int"):
        analyze(lambda x: (jnp.sin(x), jnp.argmax(x)), jnp.ones(3))


def test_input_rounded_once_per_sample():
    """An input not representable in the format is rounded once per sample, as CADNA converts a
    datum once: x - x is exactly 0 (bf16, x = 1/3) though each sample rounds x differently."""
    result = analyze(lambda x: x - x, jnp.full(8, 1 / 3), fmt="bf16", samples=4,
                     key=jax.random.key(0))
    np.testing.assert_array_equal(result.samples, 0.0)
    plain = analyze(lambda x: x + 0.0, jnp.full(8, 1 / 3), fmt="bf16", samples=4,
                    key=jax.random.key(0))
    assert len(np.unique(np.asarray(plain.samples))) == 2  # the two bf16 neighbours of 1/3


# --- compile once; exact masks --------------------------------------------------------------------


def test_second_analyze_reuses_the_compiled_program():
    traced = []

    def fn(x, power):
        traced.append(power)
        return jnp.sin(x) ** power

    x = jnp.linspace(0.1, 1.0, 6)
    first = analyze(fn, x, 3, fmt="bf16")
    again = analyze(fn, x + 0.5, 3, fmt="bf16")  # same shapes and static value: no trace
    assert traced == [3]
    assert not np.array_equal(first.mean, again.mean)
    analyze(fn, x, 2, fmt="bf16")  # a new static value is a new program
    analyze(fn, jnp.ones(3), 3, fmt="bf16")  # so is a new shape
    assert traced == [3, 2, 3]


def test_exact_attention_masks_raise_no_instability():
    """Flax's combine_masks compares exact 0/1 masks (``mask != 0``, ``where``): CADNA never
    flags == / != and exact operands are never non-significant."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 8)))
    pad = jnp.array([[1, 1, 1, 0]])
    mask = nn.combine_masks(nn.make_attention_mask(pad, pad), nn.make_causal_mask(pad))
    layer = nn.SelfAttention(num_heads=2, qkv_features=8)
    params = layer.init(jax.random.key(1), x, mask=mask)
    result = analyze(lambda p, x: layer.apply(p, x, mask=mask), params, x, fmt="bf16")
    totals = result.instability_totals()
    assert totals["branching"] == 0 and totals["multiplication"] == 0, result.instabilities
    assert float(np.median(result.digits)) > 1.0  # bf16 carries 2.4
    assert not np.any(result.nonfinite)


def test_analyze_layers_for_nnx_and_equinox_and_non_float_outputs():
    import equinox as eqx
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](jnp.tanh(self.layers[0](x)))

    x = jnp.ones((2, 3))
    layers, _ = analyze_layers(Net(nnx.Rngs(0)), x, fmt="bf16")
    assert [layer.path for layer in layers] == ["layers/0", "layers/1", ""]
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    layers, _ = analyze_layers(mlp, jnp.ones(3), fmt="bf16")
    assert [layer.path for layer in layers] == ["layers/0", "layers/1", ""]

    class WithIndex(nn.Module):  # an integer output is skipped, not an error
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(3)(x)
            return h, jnp.argmax(h, -1)

    model = WithIndex()
    layers, _ = analyze_layers(model, model.init(jax.random.key(0), x), x, fmt="bf16")
    assert [(layer.path, layer.size) for layer in layers] == [("Dense_0", 6), ("", 6)]
    with pytest.raises(TypeError, match="linen, Flax NNX or equinox"):
        analyze_layers(lambda x: x, x)
