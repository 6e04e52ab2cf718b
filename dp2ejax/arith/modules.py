"""Module paths for the module systems users have: Flax NNX and equinox.

Flax linen names every operation by its module path through JAX's name stack; NNX modules do not,
and equinox names them by class (``eqx.nn.MLP/eqx.nn.Linear``). While :func:`dp2ejax.emulate`
traces a function, :func:`module_scopes` finds the NNX and equinox modules it can reach (the
function itself, a bound method's object, ``functools.partial`` arguments, closure cells and the
function's arguments) and wraps each one's ``__call__`` in a ``jax.named_scope`` of its
attribute path, so an operation of ``model.layers[0].linear`` is at ``layers/0/linear`` (a
policy rule ``Rule("bf16", path="layers/0")`` then applies to that block only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

import jax


def _module_types() -> tuple[type, ...]:
    types = []
    if "flax.nnx" in sys.modules:
        types.append(sys.modules["flax.nnx"].Module)
    if "equinox" in sys.modules:
        import equinox

        types.append(equinox.Module)
    return tuple(types)


def _is_nnx(obj) -> bool:
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def _children(obj) -> Iterator[tuple[str, Any]]:
    """(attribute name, value) of a module or container, one level down."""
    if isinstance(obj, list | tuple):
        yield from ((str(i), v) for i, v in enumerate(obj))
    elif isinstance(obj, dict):
        yield from ((str(k), v) for k, v in obj.items())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            if hasattr(obj, field.name):
                yield field.name, getattr(obj, field.name)
    elif hasattr(obj, "__dict__"):
        yield from ((k, v) for k, v in vars(obj).items() if not k.startswith("_"))
    if _is_nnx(obj) and hasattr(obj, "__iter__") and hasattr(obj, "__len__"):
        yield from ((str(i), v) for i, v in enumerate(obj))  # nnx.List / nnx.Sequential


def find_modules(roots, types: tuple[type, ...] | None = None) -> dict[int, tuple[Any, str]]:
    """``id(module) -> (module, attribute path)`` of every NNX/equinox module reachable from
    ``roots``; a root module has the path ``""``.

    Example:
      >>> import equinox as eqx, jax
      >>> mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
      >>> sorted(path for _, path in find_modules([mlp]).values())
      ['', 'layers/0', 'layers/1']
    """
    types = _module_types() if types is None else types
    found: dict[int, tuple[Any, str]] = {}
    if not types:
        return found
    seen: set[int] = set()

    def walk(obj, path: str, inside: bool, depth: int):
        if depth > 64 or id(obj) in seen or isinstance(obj, str | bytes | int | float | type):
            return
        is_module = isinstance(obj, types)
        if not (is_module or isinstance(obj, list | tuple | dict)):
            return
        if isinstance(obj, jax.Array):
            return
        seen.add(id(obj))
        if is_module:
            found.setdefault(id(obj), (obj, path))
        for name, child in _children(obj):
            walk(child, f"{path}/{name}" if path else name, inside or is_module, depth + 1)

    for root in roots:
        walk(root, "", False, 0)
    return found


def _roots(fn, args) -> list:
    roots = [fn, args]
    bound = getattr(fn, "__self__", None)
    if bound is not None:
        roots.append(bound)
    if isinstance(fn, functools.partial):
        roots += [fn.func, fn.args, dict(fn.keywords)]
    closure = getattr(fn, "__closure__", None) or ()
    for cell in closure:
        try:
            roots.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return roots


def _subclasses(cls: type) -> set[type]:
    found, stack = set(), [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


@contextlib.contextmanager
def module_scopes(fn, args):
    """While active, calls of NNX/equinox modules push their attribute paths onto JAX's name
    stack (see the module docstring). Modules reachable from ``fn`` and ``args`` are named
    before the call; a module built inside ``fn`` (``nnx.merge``, ``eqx.combine``) is named
    when it is first called outside any other module, as the root of its own paths."""
    types = _module_types()
    if not types:
        yield
        return
    modules = find_modules(_roots(fn, args), types)
    paths = {key: path for key, (_, path) in modules.items()}
    keep = [m for m, _ in modules.values()]  # the ids stay unique while the trace runs
    classes = {type(m) for m in keep}
    for base in types:
        classes |= {c for c in _subclasses(base) if "__call__" in c.__dict__}
    originals = {cls: (cls.__dict__.get("__call__"), cls.__call__) for cls in classes
                 if any("__call__" in k.__dict__ for k in cls.__mro__[:-1])}
    active: list[str] = []

    def wrap(original):
        @functools.wraps(original)
        def scoped(self, *a, **k):
            path = paths.get(id(self))
            if path is None and not active:  # built inside fn: the root of its own paths
                for key, (module, sub) in find_modules([self], types).items():
                    paths.setdefault(key, sub)
                    keep.append(module)
                path = paths.get(id(self))
            if path is None:
                return original(self, *a, **k)
            parent = active[-1] if active else None
            if parent == path:  # super().__call__ of the same module
                return original(self, *a, **k)
            rel = path[len(parent) + 1:] if parent and path.startswith(parent + "/") else path
            active.append(path)
            try:
                with jax.named_scope(rel) if rel else contextlib.nullcontext():
                    return original(self, *a, **k)
            finally:
                active.pop()

        return scoped

    with patched_calls(originals, wrap):
        yield


@contextlib.contextmanager
def patched_calls(originals: dict, wrap):
    """Sets each class's ``__call__`` to ``wrap(its resolved __call__)`` while active;
    ``originals`` maps a class to ``(its own __call__ or None, the resolved one)``."""
    try:
        for cls, (_, resolved) in originals.items():
            type.__setattr__(cls, "__call__", wrap(resolved))
        yield
    finally:
        for cls, (own, _) in originals.items():
            if own is None:
                type.__delattr__(cls, "__call__")
            else:
                type.__setattr__(cls, "__call__", own)
