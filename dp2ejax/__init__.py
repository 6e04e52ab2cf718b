"""dp2ejax: mixed and emulated floating-point arithmetic for JAX."""

from dp2ejax.arith import FORMATS, FloatFormat, get_format, round_to

__version__ = "0.1.0"

__all__ = ["FORMATS", "FloatFormat", "get_format", "round_to"]
