"""The CESTAC estimate of the number of exact significant digits of a result.

Given N results R_1..R_N of the same computation run with random rounding, CESTAC (Vignes;
Chesneaux) estimates the number of exact significant decimal digits of their mean R̄ as

    C = log10( sqrt(N) |R̄| / (tau_N s) ),

with s the sample standard deviation and tau_N the 97.5% quantile of Student's t with N - 1
degrees of freedom (a 95% two-sided confidence). A result is a *computational zero* (CADNA's
``@.0``) when C <= 0: no digit of it can be trusted.

Exact results follow CADNA's own code (``nb_significant_digit`` in ``cadna_digitnumber.h``,
CADNA_C 2.0, vendored in github.com/bgin/LibAtmosCXX ``ThirdParty/cadna/``, commit 308b678):
equal samples, an exact zero included (``x == y == z == 0`` gives 15 digits there), have every
digit, and are not computational zeros when printed (CADNA prints an exact zero as
``0.000000000000000E+000``, not ``@.0``; its ``computedzero()``, which decides ``==``, is
true for it, and :meth:`dp2ejax.cestac.analyze`'s comparisons keep that). CADNA gives NaN and
infinite samples 0 digits and prints them as ``@.0``; here they get 0 digits and are flagged
*non-finite* instead (:func:`nonfinite`), not computational zeros.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Two-sided 95% quantiles of Student's t (the 0.975 quantile) for 1..30 degrees of freedom.
_T975 = (
    12.706204736174694, 4.302652729749462, 3.1824463052837078, 2.7764451051977934,
    2.5705818356363146, 2.4469118511449786, 2.364624251592784, 2.306004135204166,
    2.262157162798205, 2.2281388519862744, 2.200985160082949, 2.1788128296634177,
    2.1603686564610127, 2.1447866879169273, 2.131449545559323, 2.1199052992210112,
    2.1098155778331806, 2.10092204024096, 2.093024054408263, 2.0859634472658364,
    2.0796138447276626, 2.0738730679040147, 2.068657610419041, 2.0638985616280205,
    2.059538552753294, 2.055529438642871, 2.0518305164802833, 2.048407141795244,
    2.045229642132703, 2.0422724563012373,
)


def student_t_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (exact table up to 30,
    a Cornish-Fisher expansion beyond, accurate to 1e-4).

    Example:
      >>> round(student_t_975(2), 3)
      4.303
    """
    if dof < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom (2 samples), got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def precision_digits(precision_bits: int) -> float:
    """Decimal digits carried by a ``precision_bits``-bit significand: p log10(2)."""
    return precision_bits * math.log10(2.0)


def sample_statistics(samples: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Mean and standard deviation (ddof=1) of ``samples`` along ``axis``; where every sample is
    equal (and finite) they are that value and 0 exactly (the rounded sum alone would blur them:
    the mean of three equal samples differs from them in about 30% of cases)."""
    samples = jnp.asarray(samples)
    first = jnp.take(samples, 0, axis=axis)
    equal = jnp.all(samples == jnp.expand_dims(first, axis), axis=axis) & jnp.isfinite(first)
    mean = jnp.where(equal, first, jnp.mean(samples, axis=axis))
    std = jnp.where(equal, jnp.zeros_like(mean), jnp.std(samples, axis=axis, ddof=1))
    return mean, std


def significant_digits(
    samples: jax.Array, axis: int = 0, *, max_digits: float | None = None
) -> jax.Array:
    """CESTAC number of exact significant digits of the mean of ``samples`` along ``axis``.

    Args:
      samples: N >= 2 results of the same computation with random rounding, stacked on ``axis``.
      axis: the sample axis.
      max_digits: cap (the format's precision in digits); defaults to the dtype's.

    Returns:
      Float digits in [0, max_digits], shape ``samples.shape`` without ``axis``. Equal finite
      samples (exact zeros included) give ``max_digits``; a zero mean of unequal samples and a
      non-finite sample give 0.

    Example:
      >>> import jax.numpy as jnp
      >>> float(significant_digits(jnp.array([1.0, 1.001, 0.999])))  # ~ 3 digits agree
      2.6...
    """
    samples = jnp.asarray(samples)
    n = samples.shape[axis]
    if n < 2:
        raise ValueError(f"CESTAC needs at least 2 samples on axis {axis}, got {n}")
    if max_digits is None:
        max_digits = precision_digits(jnp.finfo(samples.dtype).nmant + 1)
    mean, std = sample_statistics(samples, axis)
    tau = student_t_975(n - 1)
    with np.errstate(divide="ignore"):
        digits = jnp.log10(math.sqrt(n) * jnp.abs(mean) / (tau * std))
    finite = jnp.all(jnp.isfinite(samples), axis=axis)
    digits = jnp.where(std == 0, max_digits, digits)
    digits = jnp.where(finite, digits, 0.0)
    return jnp.clip(jnp.nan_to_num(digits, nan=0.0, neginf=0.0), 0.0, max_digits)


def computational_zero(samples: jax.Array, axis: int = 0, digits: jax.Array | None = None):
    """CADNA's computational zero (``@.0``): no digit of the mean is exact (C <= 0), for finite
    samples. Exact results (equal samples, exact zeros included) and non-finite ones are not.

    Example:
      >>> import jax.numpy as jnp
      >>> computational_zero(jnp.array([[0.0, 1e-17], [0.0, -2e-17], [0.0, 3e-17]])).tolist()
      [False, True]
    """
    samples = jnp.asarray(samples)
    if digits is None:
        digits = significant_digits(samples, axis)
    return (digits <= 0) & jnp.all(jnp.isfinite(samples), axis=axis)


def nonfinite(samples: jax.Array, axis: int = 0) -> jax.Array:
    """Where some sample is NaN or infinite: a result CESTAC cannot give digits to.

    Example:
      >>> import jax.numpy as jnp
      >>> nonfinite(jnp.array([[1.0, jnp.inf], [1.0, 2.0]])).tolist()
      [False, True]
    """
    return ~jnp.all(jnp.isfinite(jnp.asarray(samples)), axis=axis)
