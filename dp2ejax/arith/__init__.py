"""The arithmetic core: floating-point formats, bit-exact rounding, precision policies and the
``emulate`` transformation that rounds every operation of a JAX function."""

from dp2ejax.arith.blockscaled import QuantizedArray, dequantize, quantize, round_block_scaled
from dp2ejax.arith.emulate import UnmatchedRuleWarning, emulate, module_path
from dp2ejax.arith.formats import (
    ALIASES,
    FORMATS,
    BlockScaledFormat,
    FloatFormat,
    Format,
    IntFormat,
    PositFormat,
    carrier_format,
    get_format,
)
from dp2ejax.arith.policy import (
    NATIVE,
    OP_KINDS,
    OPERAND_KINDS,
    Accumulation,
    PrecisionPolicy,
    Rule,
)
from dp2ejax.arith.primitives import RULE_KINDS, rule_kind
from dp2ejax.arith.random_bits import RANDOM_BIT_GENERATORS, random_bits
from dp2ejax.arith.rounding import RANDOM_MODES, ROUNDING_MODES, round_bits, round_kernel, round_to
from dp2ejax.arith.trace import COUNT_NAMES, EmulationTrace, NonFiniteWarning, TraceSite

__all__ = [
    "ALIASES",
    "COUNT_NAMES",
    "RULE_KINDS",
    "EmulationTrace",
    "NonFiniteWarning",
    "TraceSite",
    "UnmatchedRuleWarning",
    "rule_kind",
    "FORMATS",
    "NATIVE",
    "OPERAND_KINDS",
    "OP_KINDS",
    "RANDOM_BIT_GENERATORS",
    "RANDOM_MODES",
    "ROUNDING_MODES",
    "Accumulation",
    "QuantizedArray",
    "BlockScaledFormat",
    "FloatFormat",
    "Format",
    "IntFormat",
    "PositFormat",
    "PrecisionPolicy",
    "Rule",
    "carrier_format",
    "dequantize",
    "emulate",
    "get_format",
    "module_path",
    "quantize",
    "round_block_scaled",
    "random_bits",
    "round_bits",
    "round_kernel",
    "round_to",
]
