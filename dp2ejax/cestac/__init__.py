"""CESTAC discrete stochastic arithmetic: exact significant digits and numerical instabilities
of JAX functions and Flax models, in any emulated format (what CADNA gives C programs)."""

from dp2ejax.cestac.analyze import SAMPLE_AXIS, CestacResult, analyze, random_policy
from dp2ejax.cestac.digits import (
    computational_zero,
    nonfinite,
    precision_digits,
    significant_digits,
    student_t_975,
)
from dp2ejax.cestac.instabilities import INSTABILITY_KINDS, Instability
from dp2ejax.cestac.layers import LayerDigits, analyze_layers

__all__ = [
    "INSTABILITY_KINDS",
    "SAMPLE_AXIS",
    "CestacResult",
    "Instability",
    "LayerDigits",
    "analyze",
    "analyze_layers",
    "computational_zero",
    "nonfinite",
    "precision_digits",
    "random_policy",
    "significant_digits",
    "student_t_975",
]
