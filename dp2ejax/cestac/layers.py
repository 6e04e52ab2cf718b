"""Per-layer CESTAC digits of a Flax model: where along the depth the exact digits go."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from dp2ejax.cestac.analyze import CestacResult, analyze


@dataclasses.dataclass(frozen=True)
class LayerDigits:
    """Exact digits of one module's output (over its elements)."""

    path: str
    size: int
    digits_min: float
    digits_median: float
    computational_zeros: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def analyze_layers(model, variables, *inputs, **analyze_kwargs):
    """CESTAC digits of every Flax (linen) module's output, submodules before their parent.

    Runs ``model.apply(variables, *inputs, capture_intermediates=True)`` under
    :func:`dp2ejax.cestac.analyze` and summarises each captured module output.

    Args:
      model: a ``flax.linen.Module``.
      variables: its variables (``{"params": ...}``).
      *inputs: the model's inputs.
      **analyze_kwargs: passed to :func:`analyze` (``fmt``, ``samples``, ``key``…).

    Returns:
      ``(layers, result)``: a list of :class:`LayerDigits` (the model's own output last, path
      ``""``) and the full :class:`CestacResult` of ``(output, intermediates)``.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> jax.config.update("jax_enable_x64", True)
      >>> model = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((2, 3)); variables = model.init(jax.random.key(0), x)
      >>> layers, _ = analyze_layers(model, variables, x, fmt="bf16")
      >>> [layer.path for layer in layers]
      ['layers_0', 'layers_2', '']
    """

    def apply(v, *xs):
        return model.apply(v, *xs, capture_intermediates=True, mutable=["intermediates"])

    result: CestacResult = analyze(apply, variables, *inputs, **analyze_kwargs)
    _, state = result.digits
    _, zeros = result.computational_zero
    layers = []
    for names, digits, zero in _walk(state.get("intermediates", {}),
                                     zeros.get("intermediates", {}), ()):
        d = np.asarray(digits, np.float64)
        layers.append(LayerDigits(
            path="/".join(names), size=int(d.size),
            digits_min=float(d.min()) if d.size else float("nan"),
            digits_median=float(np.median(d)) if d.size else float("nan"),
            computational_zeros=int(np.sum(np.asarray(zero))),
        ))
    return layers, result


def _walk(digits, zeros, names):
    """(module path, digits, zeros) of each captured output: submodules in natural name order
    (``Dense_2`` before ``Dense_10``, which for auto-named Flax modules is creation order), then
    the module's own output."""
    order = sorted(digits, key=lambda n: (n == "__call__", _natural_key(str(n))))
    for name in order:
        sub = digits[name]
        if name == "__call__":
            for d, z in zip(jax.tree_util.tree_leaves(sub),
                            jax.tree_util.tree_leaves(zeros[name]), strict=True):
                yield names, d, z
        else:
            yield from _walk(sub, zeros[name], (*names, str(name)))


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
