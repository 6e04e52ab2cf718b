"""Per-layer CESTAC digits of a model: where along the depth the exact digits go.

Works for the module systems users have: Flax linen (through ``capture_intermediates``), Flax
NNX and equinox (each module's ``__call__`` output is captured under its attribute path, as
:mod:`dp2ejax.arith.modules` names them). Outputs that are not floating point (integer
indices, boolean masks, PRNG keys) are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from dp2ejax.arith.modules import find_modules, patched_calls
from dp2ejax.cestac.analyze import CestacResult, analyze


@dataclasses.dataclass(frozen=True)
class LayerDigits:
    """Exact digits of one module's output (over its elements)."""

    path: str
    size: int
    digits_min: float
    digits_median: float
    computational_zeros: int
    nonfinite: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_linen(model) -> bool:
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, nn.Module)


_ANALYZE_OPTIONS = frozenset({"fmt", "samples", "key", "policy", "cancellation_digits",
                              "comparisons", "sample_sharding"})


def analyze_layers(model, *args, **kwargs):
    """CESTAC digits of every module's output, submodules before their parent.

    Args:
      model: a ``flax.linen.Module`` (then ``args`` are its variables and inputs, as for
        ``model.apply``), or a Flax NNX / equinox module (then ``args`` are its inputs).
      *args: ``variables, *inputs`` for linen; ``*inputs`` otherwise.
      **kwargs: :func:`analyze`'s options (``fmt``, ``samples``, ``key``, ``policy``,
        ``cancellation_digits``, ``comparisons``, ``sample_sharding``); any other keyword goes
        to the model: ``mutable=["batch_stats"]`` and ``rngs={"dropout": key}`` for a linen
        model in training mode (BatchNorm, dropout), ``train=True`` and the like.

    Returns:
      ``(layers, result)``: a list of :class:`LayerDigits` (the model's own output last, path
      ``""``) and the full :class:`CestacResult` of ``(output, {"<order>:<path>": module
      output})``.
      A module called several times gives ``path``, ``path#1``…; non-float outputs are skipped.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> jax.config.update("jax_enable_x64", True)
      >>> model = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((2, 3)); variables = model.init(jax.random.key(0), x)
      >>> layers, _ = analyze_layers(model, variables, x, fmt="bf16")
      >>> [layer.path for layer in layers]
      ['layers_0', 'layers_2', '']
    """
    analyze_kwargs = {k: v for k, v in kwargs.items() if k in _ANALYZE_OPTIONS}
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _ANALYZE_OPTIONS}
    if _is_linen(model):
        if not args:
            raise TypeError("analyze_layers(linen_module, variables, *inputs): variables missing")
        mutable = model_kwargs.pop("mutable", ())
        mutable = [mutable] if isinstance(mutable, str) else list(mutable or ())
        fn = functools.partial(_linen_outputs, model, tuple(mutable))
        analyze_kwargs = {**analyze_kwargs, **model_kwargs}  # go to fn, beside the inputs
    elif find_modules([model]):
        fn = _module_outputs
        args = (model, *args)
        analyze_kwargs = {**analyze_kwargs, **model_kwargs}
    else:
        raise TypeError(f"model must be a Flax linen, Flax NNX or equinox module, got "
                        f"{type(model).__name__}")
    result: CestacResult = analyze(fn, *args, **analyze_kwargs)
    _, digits = result.digits
    _, zeros = result.computational_zero
    _, bad = result.nonfinite
    layers = []
    for key in sorted(digits):  # "<order>:<path>": the order of capture
        d = np.asarray(digits[key], np.float64)
        path = key.split(":", 1)[1]
        layers.append(LayerDigits(
            path=path, size=int(d.size),
            digits_min=float(d.min()) if d.size else float("nan"),
            digits_median=float(np.median(d)) if d.size else float("nan"),
            computational_zeros=int(np.sum(np.asarray(zeros[key]))),
            nonfinite=int(np.sum(np.asarray(bad[key]))),
        ))
    return layers, result


def _floats(tree) -> list:
    return [leaf for leaf in jax.tree_util.tree_leaves(tree)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]


def _add(captured: dict, path: str, value) -> None:
    for leaf in _floats(value):
        name, n = path, 0
        while name in captured:
            n += 1
            name = f"{path}#{n}"
        captured[name] = leaf


def _linen_outputs(model, mutable, variables, *inputs, **model_kwargs):
    out, state = model.apply(variables, *inputs, capture_intermediates=True,
                             mutable=["intermediates", *mutable], **model_kwargs)
    captured: dict = {}
    for names, value in _walk(state.get("intermediates", {}), ()):
        _add(captured, "/".join(names), value)
    return _with_output(out, captured)


def _module_outputs(model, *inputs, **model_kwargs):
    captured: dict = {}
    with _capture(model, captured):
        out = model(*inputs, **model_kwargs)
    return _with_output(out, captured)


def _with_output(out, captured: dict):
    if "" not in captured:
        _add(captured, "", out)
    floats = _floats(out)
    # pytrees sort dict keys: the capture order goes into the key
    ordered = {f"{i:06d}:{path}": value for i, (path, value) in enumerate(captured.items())}
    return (out if len(floats) == len(jax.tree_util.tree_leaves(out)) else floats), ordered


@contextlib.contextmanager
def _capture(model, captured: dict):
    """Records each reachable module's ``__call__`` output under its attribute path (the root
    under ``""``), in the order the calls return: submodules before their parent."""
    modules = find_modules([model])
    paths = {key: path for key, (_, path) in modules.items()}
    classes = {type(m) for m, _ in modules.values()}
    originals = {cls: (cls.__dict__.get("__call__"), cls.__call__) for cls in classes}

    def wrap(original):
        @functools.wraps(original)
        def recorded(self, *a, **k):
            out = original(self, *a, **k)
            path = paths.get(id(self))
            if path is not None:
                _add(captured, path, out)
            return out

        return recorded

    with patched_calls(originals, wrap):
        yield


def _walk(tree, names):
    """(module path, captured outputs) of each linen module: submodules in natural name order
    (``Dense_2`` before ``Dense_10``, which for auto-named Flax modules is creation order), then
    the module's own output."""
    order = sorted(tree, key=lambda n: (n == "__call__", _natural_key(str(n))))
    for name in order:
        sub = tree[name]
        if name == "__call__":
            yield names, sub
        else:
            yield from _walk(sub, (*names, str(name)))


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
