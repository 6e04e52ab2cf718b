"""The arithmetic core: floating-point formats, bit-exact rounding, precision policies and the
``emulate`` transformation that rounds every operation of a JAX function."""

from dp2ejax.arith.formats import ALIASES, FORMATS, FloatFormat, carrier_format, get_format
from dp2ejax.arith.rounding import ROUNDING_MODES, round_bits, round_to

__all__ = [
    "ALIASES",
    "FORMATS",
    "FloatFormat",
    "ROUNDING_MODES",
    "carrier_format",
    "get_format",
    "round_bits",
    "round_to",
]
