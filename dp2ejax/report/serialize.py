"""JSON-safe conversion of results: NumPy and JAX arrays, scalars, dataclasses, paths.

Reports keep their data in ``report.json``; everything a section holds passes through
:func:`to_jsonable` first, so the figures and tables are drawn from exactly what the JSON says.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_jsonable(value: Any, where: str = "results") -> Any:
    """``value`` as plain JSON types: dicts with string keys, lists, str, int, float, bool, None.

    NumPy/JAX arrays become (nested) lists, NumPy scalars Python numbers, NaN and infinities
    ``None`` (strict JSON has neither), tuples and sets lists, paths and dates strings, enums
    their value; an object with a ``to_dict()`` method (``PrecisionPolicy``,
    ``OversmoothingProfile``…) or a dataclass becomes its dict.

    Args:
      value: what to convert.
      where: how to name ``value`` in an error message.

    Returns:
      The converted value.

    Raises:
      ValueError: naming the offending entry, for a value of no JSON form (a function, a
        complex number…).

    Example:
      >>> import numpy as np
      >>> to_jsonable({"loss": np.array([1.5, np.nan]), "step": np.int64(3), "ok": np.bool_(1)})
      {'loss': [1.5, None], 'step': 3, 'ok': True}
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool | np.integer):
                raise ValueError(f"{where}: dict keys must be strings or numbers, got {key!r}")
            out[str(key)] = to_jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(sorted(value, key=str))]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return to_jsonable(fields, where)
    if hasattr(value, "__array__") and hasattr(value, "dtype"):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            try:  # ml_dtypes (bfloat16, float8…) arrays: their values as float64
                array = array.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: an array of dtype {array.dtype} has no JSON form; "
                                 f"expected a numeric array") from None
        return to_jsonable(array.tolist(), where)
    raise ValueError(f"{where}: a {type(value).__name__} has no JSON form; expected numbers, "
                     f"strings, lists, dicts or arrays")
