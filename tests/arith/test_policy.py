"""Tests for dp2ejax.arith.policy: accumulation models, rules, path matching, resolution order,
validation errors that name the culprit, JSON/TOML round trips and hashability.

Everything here is exact (strings, dataclass equality), so there are no tolerances.
"""

import json

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings

from dp2ejax.arith import (
    FORMATS,
    NATIVE,
    OP_KINDS,
    Accumulation,
    FloatFormat,
    PrecisionPolicy,
    Rule,
)

# --- Accumulation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, block, text",
    [
        ("exact", None, "exact"),
        (None, None, "exact"),
        ("sequential", 1, "sequential"),
        ("blocked(32)", 32, "blocked(32)"),
        ("blocked:8", 8, "blocked(8)"),
        (" blocked(4) ", 4, "blocked(4)"),
        ("blocked(1)", 1, "sequential"),
        (16, 16, "blocked(16)"),
        (Accumulation(5), 5, "blocked(5)"),
    ],
)
def test_accumulation_parse(spec, block, text):
    acc = Accumulation.parse(spec)
    assert acc.block_size == block
    assert str(acc) == text
    assert Accumulation.parse(str(acc)) == acc  # str is a parseable canonical form


@pytest.mark.parametrize(
    "spec",
    [
        "blocked(0)",
        "blocked()",
        "blocked(-3)",
        "blocked(2.5)",
        "block(3)",
        "Exact",
        "sequencial",
        "blocked(3",
        "blocked:3)",
        "blocked:(3)",
        "",
        0,
        -4,
        2.5,
        True,
        [8],
    ],
)
def test_accumulation_parse_rejects(spec):
    with pytest.raises(ValueError, match="accumulation"):
        Accumulation.parse(spec)


@pytest.mark.parametrize("block", [0, -1, 2.0, "8"])
def test_accumulation_constructor_rejects(block):
    with pytest.raises(ValueError, match="block_size"):
        Accumulation(block)


# --- Rule -----------------------------------------------------------------------------------------


def test_rule_normalises_its_fields():
    rule = Rule("bfloat16", kinds="elementwise", accumulation="blocked(8)")
    assert rule.format == FORMATS["bf16"]  # alias resolved to the registry format
    assert rule.kinds == ("elementwise",)  # a single kind becomes a tuple
    assert rule.accumulation == Accumulation(8)
    assert Rule(NATIVE).format is None
    assert Rule(None).format is None
    assert Rule("e6m9").format == FloatFormat("e6m9", 6, 9)
    assert Rule("fp16").kinds == OP_KINDS


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "fp7"}, "unknown format 'fp7'"),
        ({"format": "bf16", "mode": "nearest_even"}, "unknown rounding mode 'nearest_even'"),
        ({"format": "bf16", "kinds": ("matmul",)}, "kinds"),
        ({"format": "bf16", "kinds": ()}, "kinds"),
        ({"format": "bf16", "path": ""}, "path"),
        ({"format": "bf16", "accumulation": "blocked(0)"}, "accumulation"),
    ],
)
def test_rule_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Rule(**kwargs)


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("Dense_1", "MLP/Dense_1", True),
        ("Dense_1", "MLP/Dense_1/inner", True),
        ("Dense_1", "Dense_1", True),
        ("Dense_1", "MLP/Dense_10", False),
        ("Dense_1", "MLP/Dense_0", False),
        ("Dense_1", "MLP/MyDense_1", False),  # components match whole, not by suffix
        ("Dense_1*", "MLP/Dense_10", True),
        ("Dense_?", "MLP/Dense_3/x", True),
        ("Dense_?", "MLP/Dense_10", False),
        ("MLP/Dense_1", "Outer/MLP/Dense_1/kernel", True),  # a run of consecutive components
        ("MLP/Dense_1", "MLP/Block/Dense_1", False),  # not consecutive
        ("Block_*/attn", "Model/Block_3/attn/q", True),
        ("*", "", True),
        ("*", "anything/at/all", True),
        ("Dense_1", "", False),
    ],
)
def test_rule_path_matching(pattern, path, expected):
    assert Rule("bf16", path=pattern).matches(path, "elementwise") is expected


def test_rule_kinds_restrict_matching():
    rule = Rule("bf16", path="Dense_1", kinds=("matmul_inputs",))
    assert rule.matches("MLP/Dense_1", "matmul_inputs")
    for kind in ("matmul_accumulation", "elementwise", "reduction"):
        assert not rule.matches("MLP/Dense_1", kind)


# --- PrecisionPolicy.resolve ----------------------------------------------------------------------


def test_resolve_first_matching_rule_wins():
    fp16_dense1 = Rule("fp16", path="Dense_1")
    bf16_inputs = Rule("bf16", kinds=("matmul_inputs",))
    blocked = Rule("fp32", kinds=("matmul_accumulation",), accumulation="blocked(32)")
    policy = PrecisionPolicy(default="fp32", rules=[fp16_dense1, bf16_inputs, blocked])

    # Dense_1 matches the first rule for every kind, even where a later rule matches too.
    for kind in OP_KINDS:
        assert policy.resolve("MLP/Dense_1", kind) is policy.rules[0]
    # Elsewhere the kind decides; unmatched kinds fall through to the default.
    assert policy.resolve("MLP/Dense_0", "matmul_inputs") is policy.rules[1]
    assert policy.resolve("MLP/Dense_0", "matmul_accumulation") is policy.rules[2]
    assert policy.resolve("MLP/Dense_0", "elementwise") is policy.default
    assert policy.resolve("MLP/Dense_10", "reduction") is policy.default
    assert policy.resolve("", "reduction").format.name == "fp32"

    # Reordering the rules changes the answer: the order is the priority.
    swapped = PrecisionPolicy(default="fp32", rules=[bf16_inputs, fp16_dense1, blocked])
    assert swapped.resolve("MLP/Dense_1", "matmul_inputs").format.name == "bf16"
    assert swapped.resolve("MLP/Dense_1", "elementwise").format.name == "fp16"


def test_resolve_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown operation kind 'matmul'"):
        PrecisionPolicy().resolve("x", "matmul")


def test_uniform_policy():
    policy = PrecisionPolicy.uniform(
        "fp8_e4m3", mode="stochastic", accumulation="blocked(4)", saturate=True
    )
    for kind in OP_KINDS:
        rule = policy.resolve("any/where", kind)
        assert rule.format == FORMATS["fp8_e4m3"]
        assert rule.mode == "stochastic"
        assert rule.saturate
        assert rule.accumulation == Accumulation(4)
    assert policy.rules == ()


def test_policy_defaults_and_normalisation():
    assert PrecisionPolicy().default == Rule("fp32")
    policy = PrecisionPolicy(default="bf16", rules=[{"format": "fp16", "path": "Dense_1"}])
    assert policy.default == Rule("bf16")
    assert policy.rules == (Rule("fp16", path="Dense_1"),)  # dicts become Rules; list -> tuple
    assert policy.formats() == (FORMATS["bf16"], FORMATS["fp16"])
    with_native = PrecisionPolicy(default=NATIVE, rules=[Rule("bf16"), Rule("fp16"), Rule("bf16")])
    assert with_native.formats() == (FORMATS["bf16"], FORMATS["fp16"])  # native has none


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rules": Rule("bf16")}, "sequence of Rule"),
        ({"rules": "bf16"}, "sequence of Rule"),
        ({"rules": [{"format": "bf16", "pth": "x"}]}, r"rules\[0\].*'pth'"),
        ({"rng": "philox"}, "rng"),
        ({"default": "fp7"}, "fp7"),
    ],
)
def test_policy_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrecisionPolicy(**kwargs)


# --- hashing --------------------------------------------------------------------------------------


def _example_policy() -> PrecisionPolicy:
    return PrecisionPolicy(
        default=Rule("fp32"),
        rules=[
            Rule("fp16", path="Dense_1", saturate=True),
            Rule("bf16", kinds=("matmul_inputs",), mode="stochastic"),
            Rule("fp32", kinds=("matmul_accumulation",), accumulation="blocked(32)"),
        ],
        rng="jax",
    )


def test_policy_is_hashable_and_a_jit_static_argument():
    a, b = _example_policy(), _example_policy()
    assert a is not b and a == b and hash(a) == hash(b)
    assert len({a, b, PrecisionPolicy.uniform("bf16")}) == 2

    traces = []

    def count_rules(x, policy):
        traces.append(policy)
        return x * len(policy.rules)

    scaled = jax.jit(count_rules, static_argnums=1)
    x = jnp.ones(3, jnp.float32)
    assert float(scaled(x, a)[0]) == 3.0
    assert float(scaled(x, b)[0]) == 3.0  # an equal policy reuses the compiled function
    assert len(traces) == 1
    scaled(x, PrecisionPolicy.uniform("bf16"))
    assert len(traces) == 2


# --- serialisation --------------------------------------------------------------------------------


def _rich_policy() -> PrecisionPolicy:
    """Every serialisable feature: custom format (non-IEEE specials, explicit bias), a custom
    e<E>m<M> name, native, every accumulation model, saturate, all modes' spellings, rng."""
    custom = FloatFormat("my_e5m4", 5, 4, has_inf=False, has_nan=True, overflow="nan", bias=14)
    return PrecisionPolicy(
        default=Rule("bf16", mode="toward_zero", accumulation="sequential", saturate=True),
        rules=(
            Rule(custom, path="Block_*/attn", kinds=("matmul_inputs",), mode="stochastic"),
            Rule(NATIVE, path="LayerNorm_0"),
            Rule("e6m9", kinds=("matmul_accumulation",), accumulation="blocked(16)"),
            Rule(
                "fp8_e4m3",
                path="Dense_1",
                kinds=("elementwise", "reduction"),
                saturate=True,
                mode="random",
            ),
            Rule("fp16", mode="up", accumulation="exact"),
        ),
        rng="jax",
    )


def test_json_round_trip():
    policy = _rich_policy()
    text = policy.to_json(indent=2)
    assert PrecisionPolicy.from_json(text) == policy
    data = json.loads(text)
    # Registry formats are written by name, customs as a table of fields, native as "native".
    assert data["default"]["format"] == "bf16"
    assert data["rules"][0]["format"] == {
        "name": "my_e5m4",
        "exponent_bits": 5,
        "mantissa_bits": 4,
        "has_subnormals": True,
        "has_inf": False,
        "has_nan": True,
        "overflow": "nan",
        "bias": 14,
    }
    assert data["rules"][1]["format"] == "native"
    assert data["rules"][2]["accumulation"] == "blocked(16)"
    assert data["default"]["accumulation"] == "sequential"
    assert "saturate" not in data["rules"][4]  # only written when set


def test_toml_round_trip():
    policy = _rich_policy()
    text = policy.to_toml()
    assert PrecisionPolicy.from_toml(text) == policy
    assert PrecisionPolicy.from_toml(text).to_toml() == text


def test_from_toml_hand_written():
    policy = PrecisionPolicy.from_toml(
        """
        rng = "hash"

        [default]
        format = "fp32"

        [[rules]]
        format = "fp16"
        path = "Dense_1"

        [[rules]]
        format = "bf16"
        kinds = ["matmul_inputs"]

        [[rules]]
        format = { name = "e4m2", exponent_bits = 4, mantissa_bits = 2 }
        kinds = ["matmul_accumulation"]
        accumulation = "blocked:8"
        """
    )
    assert policy == PrecisionPolicy(
        default="fp32",
        rules=[
            Rule("fp16", path="Dense_1"),
            Rule("bf16", kinds=("matmul_inputs",)),
            Rule(
                FloatFormat("e4m2", 4, 2), kinds=("matmul_accumulation",), accumulation="blocked(8)"
            ),
        ],
    )
    assert policy.resolve("MLP/Dense_1", "matmul_inputs").format.name == "fp16"
    assert policy.resolve("MLP/Dense_0", "matmul_accumulation").accumulation.block_size == 8


def test_from_dict_minimal_forms():
    assert PrecisionPolicy.from_dict({}) == PrecisionPolicy()
    assert PrecisionPolicy.from_dict({"default": "bf16"}) == PrecisionPolicy.uniform("bf16")
    assert PrecisionPolicy.from_json('{"default": {"format": "fp16", "mode": "up"}}') == (
        PrecisionPolicy.uniform("fp16", mode="up")
    )


@pytest.mark.parametrize(
    "text, names",
    [
        ('{"default": "fp32", "rulez": []}', ["rulez"]),
        ('{"default": {"format": "bf16", "rounding": "up"}}', ["default", "rounding"]),
        (
            '{"rules": [{"format": "bf16"}, {"format": "fp16", "pattern": "x"}]}',
            [r"rules\[1\]", "pattern"],
        ),
    ],
)
def test_unknown_keys_are_named(text, names):
    for parse, source in (
        (PrecisionPolicy.from_json, text),
        (PrecisionPolicy.from_dict, json.loads(text)),
    ):
        with pytest.raises(ValueError) as err:
            parse(source)
        for name in names:
            assert err.match(name)


def test_unknown_key_in_toml_is_named():
    with pytest.raises(ValueError, match=r"rules\[0\].*'kind'"):
        PrecisionPolicy.from_toml('[[rules]]\nformat = "bf16"\nkind = "elementwise"\n')
    with pytest.raises(ValueError, match="'seed'"):
        PrecisionPolicy.from_toml('seed = 3\n[default]\nformat = "bf16"\n')


@pytest.mark.parametrize(
    "data, message",
    [
        ({"default": {"format": "fp7"}}, r"default: unknown format 'fp7'"),
        ({"rules": [{"format": "bf16", "mode": "stochastik"}]}, r"rules\[0\]: .*'stochastik'"),
        ({"rules": [{"format": "bf16", "kinds": ["elementwise", "conv"]}]}, r"rules\[0\]: .*kinds"),
        ({"rules": [{"format": "bf16", "accumulation": "tree"}]}, r"rules\[0\]: .*'tree'"),
        ({"rules": [{"path": "Dense_1"}]}, r"rules\[0\] needs a 'format'"),
        ({"rules": {"format": "bf16"}}, "list"),
        ({"rules": ["bf16"]}, r"rules\[0\] must be a table"),
        ({"rng": "mt19937"}, "rng"),
        (
            {"default": {"format": {"name": "x", "exponent_bits": 4, "mantisa_bits": 3}}},
            "bad fields",
        ),
    ],
)
def test_from_dict_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        PrecisionPolicy.from_dict(data)


@pytest.mark.parametrize(
    "parse, text",
    [
        (PrecisionPolicy.from_json, '{"default": '),
        (PrecisionPolicy.from_toml, "[default\nformat = 1"),
        (PrecisionPolicy.from_json, "[1, 2]"),
    ],
)
def test_malformed_text_raises_value_error(parse, text):
    with pytest.raises(ValueError):
        parse(text)


_formats = st.one_of(
    st.sampled_from([*FORMATS, NATIVE, "e5m7", "e3m4"]),
    st.builds(
        lambda e, m, sub: FloatFormat(f"custom_e{e}m{m}", e, m, has_subnormals=sub),
        st.integers(2, 11),
        st.integers(0, 20),
        st.booleans(),
    ),
)
_rules = st.builds(
    Rule,
    format=_formats,
    mode=st.sampled_from(["nearest", "toward_zero", "up", "down", "stochastic", "random"]),
    path=st.sampled_from(["*", "Dense_1", "Block_*/attn", "MLP/Dense_?"]),
    kinds=st.lists(st.sampled_from(OP_KINDS), min_size=1, max_size=4, unique=True).map(tuple),
    accumulation=st.one_of(st.none(), st.integers(1, 64)).map(Accumulation),
    saturate=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    default=_rules.map(
        lambda r: Rule(r.format, r.mode, accumulation=r.accumulation, saturate=r.saturate)
    ),
    rules=st.lists(_rules, max_size=4),
    rng=st.sampled_from(["hash", "jax"]),
)
def test_round_trips_property(default, rules, rng):
    # The default's path and kinds are not serialised (they are ignored), so it is drawn with
    # the defaults for those.
    policy = PrecisionPolicy(default=default, rules=rules, rng=rng)
    assert PrecisionPolicy.from_json(policy.to_json()) == policy
    assert PrecisionPolicy.from_toml(policy.to_toml()) == policy
    assert hash(PrecisionPolicy.from_json(policy.to_json())) == hash(policy)
