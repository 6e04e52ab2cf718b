"""Evaluating configurations: run the program under a configuration's policy and measure the
criterion, with a cache keyed by the configuration and dispatch over devices.

What is batched: the calibration inputs run as one batch (one call of the program per
configuration); a batch of configurations is dispatched before any result is read, to the
devices round-robin (inputs placed on each device once), so JAX's asynchronous dispatch runs
them concurrently. Configurations cannot share one ``vmap``: each is a different program.

Execution: ``"eager"`` (default) interprets the emulated program operation by operation, whose
compiled kernels are shared by every configuration (0.02 s per configuration of a small MLP,
against 0.3 s to compile each jitted one); ``"jit"`` compiles every configuration, faster per
call for large inputs or long loops. Both round every operation as the policy says; XLA may
fuse operations inside a jitted program differently from op-by-op execution, so the final
policy is verified once more jitted (:func:`dp2ejax.tune.autotune`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax

from dp2ejax.arith.emulate import emulate
from dp2ejax.tune.criteria import Criterion
from dp2ejax.tune.space import Config, SearchSpace

EXECUTIONS = ("eager", "jit")


class BudgetExhausted(Exception):
    """Raised when a search asks for more distinct evaluations than ``max_evaluations``."""


@dataclasses.dataclass
class Evaluation:
    """One evaluated configuration."""

    config: Config
    value: float
    score: float
    meets: bool
    order: int  # the evaluation's rank (0 = first)


class Evaluator:
    """Evaluates configurations of ``space`` for ``criterion``; caches every result.

    Args:
      fn: the program ``fn(*args)``.
      args: its arguments (already in the evaluation carrier, float64 with x64).
      reference: the reference outputs (for criteria that compare outputs).
      criterion: the :class:`Criterion`.
      space: the :class:`SearchSpace`.
      devices: devices to spread configurations over (round-robin).
      execution: ``"eager"`` or ``"jit"``.
      max_evaluations: budget of distinct evaluations (None: unlimited).
      margin: a configuration passes when it meets the criterion with its score at most
        ``(1 - margin)`` times the criterion's threshold (a safety margin for held-out data).
    """

    def __init__(self, fn: Callable, args: tuple, reference: Any, criterion: Criterion,
                 space: SearchSpace, devices: Sequence[Any], execution: str = "eager",
                 max_evaluations: int | None = None, margin: float = 0.0):
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        self.fn = fn
        self.args = args
        self.reference = reference
        self.criterion = criterion
        self.space = space
        self.devices = list(devices)
        self.execution = execution
        self.max_evaluations = max_evaluations
        self.margin = margin
        self.cache: dict[Config, Evaluation] = {}
        self.cache_hits = 0
        self.counting = True  # evaluations outside the search (baselines) are not counted
        self.search_evaluations = 0
        self._placed: dict[int, tuple] = {}

    def _args_on(self, index: int) -> tuple:
        if index not in self._placed:
            device = self.devices[index]
            self._placed[index] = jax.device_put(self.args, device) if len(self.devices) > 1 \
                else self.args
        return self._placed[index]

    def _launch(self, config: Config, slot: int):
        policy = self.space.policy(config)
        emulated = emulate(self.fn, policy)
        if self.execution == "jit":
            emulated = jax.jit(emulated)
        return emulated(*self._args_on(slot % len(self.devices)))

    def evaluate_many(self, configs: Sequence[Config]) -> list[Evaluation]:
        """Evaluations of ``configs`` (cached ones reused), in order."""
        configs = [tuple(c) for c in configs]
        fresh = list(dict.fromkeys(c for c in configs if c not in self.cache))
        hits = len(configs) - sum(1 for c in configs if c in fresh)
        self.cache_hits += hits
        if self.counting and self.max_evaluations is not None and (
                self.search_evaluations + len(fresh) > self.max_evaluations):
            room = self.max_evaluations - self.search_evaluations
            if room <= 0:
                raise BudgetExhausted
            fresh = fresh[:room]  # evaluate what fits, then stop the search
            self._evaluate(fresh)
            raise BudgetExhausted
        self._evaluate(fresh)
        return [self.cache[c] for c in configs]

    def evaluate(self, config: Config) -> Evaluation:
        return self.evaluate_many([config])[0]

    def _evaluate(self, fresh: list[Config]) -> None:
        if not fresh:
            return
        if self.criterion.uses_outputs:
            pending = [self._launch(c, i) for i, c in enumerate(fresh)]  # dispatch all first
            values = [self._value(out) for out in pending]
        else:
            values = [self.criterion.value_of_policy(self.fn, self.args, self.space.policy(c))
                      for c in fresh]
        for config, value in zip(fresh, values, strict=True):
            score = self.criterion.score(value)
            meets = self.criterion.meets(value) and (
                self.margin == 0 or score <= (1 - self.margin) * self.criterion.threshold)
            self.cache[config] = Evaluation(config, value, score, bool(meets), len(self.cache))
            if self.counting:
                self.search_evaluations += 1

    def _value(self, outputs) -> float:
        value = self.criterion.value(outputs, self.reference)
        return value if not math.isnan(value) else math.inf

    def evaluated(self) -> list[Evaluation]:
        return list(self.cache.values())
