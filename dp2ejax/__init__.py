"""dp2ejax: mixed and emulated floating-point arithmetic for JAX.

The public API: formats (:class:`FloatFormat`, :class:`PositFormat`, :class:`IntFormat`,
:class:`BlockScaledFormat`, :data:`FORMATS`, :func:`get_format`), bit-exact rounding
(:func:`round_to`), precision policies (:class:`PrecisionPolicy`, :class:`Rule`,
:class:`Accumulation`), the :func:`emulate` transformation and its :class:`EmulationTrace`.
"""

from dp2ejax.arith import (
    FORMATS,
    OP_KINDS,
    ROUNDING_MODES,
    Accumulation,
    BlockScaledFormat,
    EmulationTrace,
    FloatFormat,
    IntFormat,
    PositFormat,
    PrecisionPolicy,
    QuantizedArray,
    Rule,
    dequantize,
    emulate,
    get_format,
    quantize,
    round_to,
)

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "OP_KINDS",
    "ROUNDING_MODES",
    "Accumulation",
    "BlockScaledFormat",
    "EmulationTrace",
    "FloatFormat",
    "IntFormat",
    "PositFormat",
    "PrecisionPolicy",
    "QuantizedArray",
    "Rule",
    "dequantize",
    "emulate",
    "get_format",
    "quantize",
    "round_to",
]
