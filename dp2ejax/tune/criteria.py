"""Accuracy criteria of the autotuner: what "within budget" means.

A criterion turns the outputs of a candidate configuration (and those of the fp64 reference)
into a *value* in its own units (a relative error, a metric drop, a number of exact digits),
says whether the value meets the target, and maps it to a *score* (lower is better, roughly
additive over small independent perturbations) that the knapsack search sums over units:

- :class:`RelativeError`: ``||y - y_ref|| / ||y_ref||`` over every float output leaf; score =
  value.
- :class:`MetricDrop`: ``metric(y_ref) - metric(y)`` (``higher_is_better``) or the reverse;
  score = max(value, 0).
- :class:`CestacDigits`: the exact significant digits (CESTAC, :func:`dp2ejax.cestac.analyze`)
  of the outputs under the candidate policy with random rounding; score = ``10**-digits`` (an
  error magnitude, which adds).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def _float_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)
            if np.issubdtype(np.asarray(leaf).dtype, np.floating)]


class Criterion:
    """Base class. Subclasses define :meth:`value` (or :meth:`value_of_policy`), :meth:`meets`
    and :meth:`score`; ``target`` is the value at the boundary."""

    name = "criterion"
    uses_outputs = True  # False: the criterion runs the program itself (value_of_policy)
    target: float

    def value(self, outputs, reference, *, held_out: bool = False) -> float:
        raise NotImplementedError

    def meets(self, value: float) -> bool:
        raise NotImplementedError

    def score(self, value: float) -> float:
        raise NotImplementedError

    @property
    def threshold(self) -> float:
        """The score of the target value."""
        return self.score(self.target)

    def describe(self) -> str:
        return f"{self.name} target {self.target:.3g}"

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "description": self.describe()}


@dataclasses.dataclass(frozen=True)
class RelativeError(Criterion):
    """Relative error of the outputs against the fp64 reference at most ``max_error``.

    The error is ``||y - y_ref||_2 / ||y_ref||_2`` over all float output leaves together
    (``ord=inf``: the max-norm). NaN or infinite outputs give an infinite error.

    Example:
      >>> import numpy as np
      >>> c = RelativeError(1e-2)
      >>> round(c.value(np.array([1.0, 2.01]), np.array([1.0, 2.0])), 6), c.meets(0.005)
      (0.004472, True)
    """

    max_error: float
    ord: float = 2

    name = "relative_error"

    def __post_init__(self):
        if not (isinstance(self.max_error, int | float) and self.max_error > 0):
            raise ValueError(f"RelativeError max_error must be a positive number, got "
                             f"{self.max_error!r}")

    @property
    def target(self) -> float:
        return float(self.max_error)

    def value(self, outputs, reference, *, held_out: bool = False) -> float:
        y, ref = _float_leaves(outputs), _float_leaves(reference)
        if len(y) != len(ref) or any(a.shape != b.shape for a, b in zip(y, ref, strict=True)):
            raise ValueError("the candidate's outputs do not have the reference's structure")
        y = np.concatenate(y) if y else np.zeros(0)
        ref = np.concatenate(ref) if ref else np.zeros(0)
        if not np.all(np.isfinite(y)):
            return math.inf
        norm = np.linalg.norm(ref, self.ord)
        diff = np.linalg.norm(y - ref, self.ord)
        return float(diff / norm) if norm > 0 else float(diff)

    def meets(self, value: float) -> bool:
        return value <= self.max_error

    def score(self, value: float) -> float:
        return float(value)

    def describe(self) -> str:
        return f"relative error <= {self.max_error:.3g}"


@dataclasses.dataclass(frozen=True)
class MetricDrop(Criterion):
    """A task metric (accuracy, loss…) may drop by at most ``max_drop`` from the reference's.

    Attributes:
      metric_fn: ``metric_fn(outputs) -> scalar`` on the calibration inputs' outputs (close
        over the labels).
      max_drop: the largest allowed drop (in the metric's units).
      higher_is_better: True for accuracies (drop = reference - candidate), False for losses
        (drop = candidate - reference).
      held_out_metric_fn: the metric on the held-out inputs' outputs (their labels); default
        ``metric_fn``.

    Example:
      >>> import numpy as np
      >>> labels = np.array([0, 1, 1])
      >>> accuracy = lambda logits: float(np.mean(np.argmax(logits, -1) == labels))
      >>> c = MetricDrop(accuracy, max_drop=0.01)
      >>> ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> round(c.value(ref[[0, 0, 2]], ref), 4), c.meets(0.3333)
      (0.3333, False)
    """

    metric_fn: Callable[[Any], Any]
    max_drop: float
    higher_is_better: bool = True
    held_out_metric_fn: Callable[[Any], Any] | None = None

    name = "metric_drop"

    def __post_init__(self):
        if not callable(self.metric_fn):
            raise ValueError("MetricDrop metric_fn must be callable: metric_fn(outputs) -> float")
        if not (isinstance(self.max_drop, int | float) and self.max_drop >= 0):
            raise ValueError(f"MetricDrop max_drop must be a number >= 0, got {self.max_drop!r}")

    @property
    def target(self) -> float:
        return float(self.max_drop)

    def metric(self, outputs, *, held_out: bool = False) -> float:
        fn = self.held_out_metric_fn if held_out and self.held_out_metric_fn else self.metric_fn
        value = float(fn(outputs))
        return value if math.isfinite(value) else (-math.inf if self.higher_is_better
                                                   else math.inf)

    def value(self, outputs, reference, *, held_out: bool = False) -> float:
        ours, ref = self.metric(outputs, held_out=held_out), self.metric(reference,
                                                                         held_out=held_out)
        drop = ref - ours if self.higher_is_better else ours - ref
        return float(drop) if not math.isnan(drop) else math.inf

    def meets(self, value: float) -> bool:
        return value <= self.max_drop

    def score(self, value: float) -> float:
        return max(float(value), 0.0)

    def describe(self) -> str:
        return f"metric drop <= {self.max_drop:.3g}"


@dataclasses.dataclass(frozen=True)
class CestacDigits(Criterion):
    """At least ``min_digits`` exact significant digits (CESTAC) in the outputs.

    Each candidate policy runs under :func:`dp2ejax.cestac.analyze` (its modes switched to
    ``random``, ``samples`` runs in one vmapped program), and the digits of the output elements
    are reduced by ``reduce`` (``"min"``: every element; ``"median"``, ``"mean"``).

    Example:
      >>> c = CestacDigits(2)
      >>> c.meets(2.5), c.meets(1.5), c.score(3.0)
      (True, False, 0.001)
    """

    min_digits: float
    samples: int = 3
    reduce: str = "min"
    seed: int = 0

    name = "cestac_digits"
    uses_outputs = False

    def __post_init__(self):
        if not (isinstance(self.min_digits, int | float) and self.min_digits > 0):
            raise ValueError(f"CestacDigits min_digits must be a positive number, got "
                             f"{self.min_digits!r}")
        if self.reduce not in ("min", "median", "mean"):
            raise ValueError(f"CestacDigits reduce must be 'min', 'median' or 'mean', got "
                             f"{self.reduce!r}")

    @property
    def target(self) -> float:
        return float(self.min_digits)

    def value_of_policy(self, fn: Callable, args: tuple, policy) -> float:
        """The reduced digits of ``fn(*args)`` under ``policy`` with random rounding."""
        from dp2ejax.cestac.analyze import analyze

        result = analyze(fn, *args, policy=policy, samples=self.samples,
                         key=jax.random.key(self.seed))
        digits = np.concatenate(_float_leaves(result.digits))
        if digits.size == 0:
            return result.max_digits
        return float({"min": np.min, "median": np.median, "mean": np.mean}[self.reduce](digits))

    def meets(self, value: float) -> bool:
        return value >= self.min_digits

    def score(self, value: float) -> float:
        return 10.0 ** (-float(value))

    def describe(self) -> str:
        return f"CESTAC exact digits ({self.reduce}) >= {self.min_digits:g}"


def as_criterion(criterion) -> Criterion:
    """A :class:`Criterion` from a criterion or a float (a relative error)."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, int | float) and not isinstance(criterion, bool):
        return RelativeError(float(criterion))
    raise ValueError(f"criterion must be RelativeError(...), MetricDrop(...), CestacDigits(...) "
                     f"or a float (a relative error), got {criterion!r}")
