"""Searches over configurations: per-unit sensitivity, then delta debugging (the default), a
knapsack on the sensitivities, a greedy baseline, or exhaustive enumeration.

Every search starts from the *top* configuration (each unit at its most precise candidate),
works through an :class:`~dp2ejax.tune.evaluate.Evaluator` (which caches every configuration)
and returns a configuration; :func:`dp2ejax.tune.autotune` then keeps the cheapest evaluated
configuration that meets the criterion. All are deterministic: ties are broken by unit order,
and ``seed`` only permutes units of equal sensitivity in the delta search.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from dp2ejax.tune.evaluate import Evaluation, Evaluator
from dp2ejax.tune.space import Config, SearchSpace

SEARCHES = ("delta", "knapsack", "greedy", "exhaustive")
MAX_EXHAUSTIVE = 5000


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """The top configuration's evaluation and, per unit, the evaluation with only that unit
    lowered to each of its other candidates (``by_format[u][fmt]``)."""

    top: Evaluation
    by_format: tuple[dict[str, Evaluation], ...]

    def delta(self, unit: int, fmt: str) -> float:
        """The score increase of lowering ``unit`` alone to ``fmt`` (0 for its top)."""
        if fmt not in self.by_format[unit]:
            return 0.0
        return max(self.by_format[unit][fmt].score - self.top.score, 0.0)

    def meets(self, unit: int, fmt: str) -> bool:
        return fmt not in self.by_format[unit] or self.by_format[unit][fmt].meets


def _with(config: Config, changes: dict[int, str]) -> Config:
    return tuple(changes.get(i, f) for i, f in enumerate(config))


def sensitivity(space: SearchSpace, evaluator: Evaluator) -> Sensitivity:
    """Evaluates the top configuration and every one-unit-lowered configuration (one batch)."""
    top = space.top()
    jobs = [(u, f) for u, cands in enumerate(space.candidates) for f in cands[1:]]
    evals = evaluator.evaluate_many([top] + [_with(top, {u: f}) for u, f in jobs])
    by_format: list[dict[str, Evaluation]] = [{} for _ in space.units]
    for (u, f), e in zip(jobs, evals[1:], strict=True):
        by_format[u][f] = e
    return Sensitivity(evals[0], tuple(by_format))


def _cheaper(space, costs, unit: int, current: str) -> list[str]:
    """Candidates of ``unit`` strictly cheaper than ``current``, cheapest first (ties: the more
    precise first)."""
    cands = space.candidates[unit]
    here = costs[unit][current]
    options = [f for f in cands if costs[unit][f] < here]
    return sorted(options, key=lambda f: (costs[unit][f], cands.index(f)))


# --- delta debugging -----------------------------------------------------------------------------


def delta_search(space: SearchSpace, evaluator: Evaluator, costs: Sequence[dict[str, float]],
                 sens: Sensitivity, seed: int = 0) -> Config:
    """Sensitivity-guided delta debugging, after Precimonious (Rubio-González et al., SC 2013)
    and PROMISE (Graillat et al., 2019), over several format levels.

    Each round proposes, for every unit, its cheapest candidate that is cheaper than its
    current format, met the criterion when lowered alone (sensitivity), and was not rejected
    before. Delta debugging then finds a 1-maximal set of proposals that can be applied
    together: try all; otherwise split the proposals into ``n`` chunks (ordered by cost saved
    per unit of single-unit score increase, the most efficient first)
    and apply every chunk that passes with what was accepted so far, or a chunk's complement;
    refine the split (``n -> 2n``) when none passes, down to single units. Units left out are
    rejected at that format, and the next round proposes their next cheaper candidate. Rounds
    end when nothing is left to propose. Evaluations: O(k log k) per round when few proposals
    fail, O(k^2) at worst, for k proposals.
    """
    rng = np.random.default_rng(seed)
    current = list(space.top())
    rejected: set[tuple[int, str]] = set()
    tie_break = rng.permutation(len(space.units))
    while True:
        proposals: dict[int, str] = {}
        for u in range(len(space.units)):
            for f in _cheaper(space, costs, u, current[u]):
                if sens.meets(u, f) and (u, f) not in rejected:
                    proposals[u] = f
                    break
        if not proposals:
            return tuple(current)
        eps = 1e-9 * max(evaluator.criterion.threshold, 1e-300)  # delta 0: most efficient

        # cost saved per unit of score spent, the most efficient first
        efficiency = {u: (costs[u][current[u]] - costs[u][f]) / (sens.delta(u, f) + eps)
                      for u, f in proposals.items()}
        order = sorted(proposals, key=lambda u: (-efficiency[u], tie_break[u]))
        accepted = _ddmax(tuple(current), order, proposals, evaluator)
        for u, f in proposals.items():
            if u in accepted:
                current[u] = f
            else:
                rejected.add((u, f))


def _ddmax(base: Config, units: list[int], proposals: dict[int, str],
           evaluator: Evaluator) -> set[int]:
    """A 1-maximal subset of ``units`` whose proposals applied together to ``base`` pass."""

    def passes(subset) -> bool:
        return evaluator.evaluate(_with(base, {u: proposals[u] for u in subset})).meets

    accepted: list[int] = []
    remaining = list(units)
    if passes(remaining):
        return set(remaining)
    n = 2
    while remaining:
        size = math.ceil(len(remaining) / n)
        chunks = [remaining[i:i + size] for i in range(0, len(remaining), size)]
        progress = False
        for chunk in chunks:
            if passes(accepted + chunk):
                accepted += chunk
                progress = True
            elif n > 2:
                complement = [u for u in remaining if u not in chunk and u not in accepted]
                if complement and passes(accepted + complement):
                    accepted += complement
                    progress = True
                    break
        remaining = [u for u in remaining if u not in accepted]
        if not remaining:
            break
        if progress:
            n = max(2, min(n, len(remaining)))
            if passes(accepted + remaining):
                accepted += remaining
                break
        elif size == 1:
            break  # every single remaining proposal fails with the accepted ones
        else:
            n = min(2 * n, len(remaining))
    return set(accepted)


# --- knapsack ------------------------------------------------------------------------------------


def _solve_knapsack(space, costs, sens: Sensitivity, budget: float,
                    resolution: int) -> Config | None:
    """Per unit the format minimising the total cost subject to the sum of the single-unit
    score increases <= budget; the increases are discretised (rounded up) to ``resolution``
    steps of the budget, and solved exactly by dynamic programming over the capacity."""
    capacity = resolution
    dp = np.zeros(capacity + 1)
    choices = []
    for u, cands in enumerate(space.candidates):
        options = []
        for f in cands:
            delta = sens.delta(u, f)
            if not sens.meets(u, f) or not math.isfinite(delta) or delta > budget:
                continue
            weight = 0 if delta <= 0 else math.ceil(delta / budget * capacity - 1e-9)
            options.append((f, weight, costs[u][f]))
        new = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1, dtype=np.int64)
        for j, (_, weight, cost) in enumerate(options):
            shifted = np.full(capacity + 1, np.inf)
            shifted[weight:] = dp[: capacity + 1 - weight] + cost
            better = np.isfinite(shifted) & ~(shifted >= new)
            new = np.where(better, shifted, new)
            pick = np.where(better, j, pick)
        dp = new
        choices.append((options, pick))
    if not np.isfinite(dp[capacity]):
        return None
    config = [None] * len(space.units)
    c = capacity
    for u in range(len(space.units) - 1, -1, -1):
        options, pick = choices[u]
        f, weight, _ = options[pick[c]]
        config[u] = f
        c -= weight
    return tuple(config)


def knapsack_search(space: SearchSpace, evaluator: Evaluator, costs: Sequence[dict[str, float]],
                    sens: Sensitivity, resolution: int = 256, attempts: int = 8,
                    refine: bool = True) -> Config:
    """A knapsack on the sensitivities (as in mixed-precision quantisation, HAWQ-style), then
    verification and repair of the whole configuration.

    The budget is the criterion's score threshold minus the top configuration's score. Solve
    (:func:`_solve_knapsack`), evaluate the solution; when it fails (the errors of several
    units do not simply add), halve the budget and solve again, up to ``attempts`` times; then
    repair by raising the lowered unit with the largest single-unit score increase one step
    until the configuration meets the criterion. ``refine`` then tries, one unit at a time
    (largest saving first), the next cheaper candidate, keeping each change that passes.
    """
    top = space.top()
    budget = (1 - evaluator.margin) * evaluator.criterion.threshold - sens.top.score
    if not budget > 0:
        return top
    config = top
    for _ in range(attempts):
        solved = _solve_knapsack(space, costs, sens, budget, resolution)
        if solved is None:
            break
        config = solved
        if evaluator.evaluate(config).meets:
            break
        budget /= 2
    current = list(config)
    while not evaluator.evaluate(tuple(current)).meets:
        lowered = [u for u in range(len(current)) if current[u] != top[u]]
        if not lowered:
            break
        u = max(lowered, key=lambda i: (sens.delta(i, current[i]), -i))
        cands = space.candidates[u]
        current[u] = cands[cands.index(current[u]) - 1]
    if refine and evaluator.evaluate(tuple(current)).meets:
        current = list(_refine(space, evaluator, costs, sens, tuple(current)))
    return tuple(current)


def _refine(space, evaluator, costs, sens, config: Config) -> Config:
    current = list(config)
    moves = []
    for u in range(len(current)):
        options = [f for f in _cheaper(space, costs, u, current[u]) if sens.meets(u, f)]
        if options:
            f = max(options, key=lambda g: (costs[u][g], -space.candidates[u].index(g)))
            moves.append((costs[u][current[u]] - costs[u][f], u, f))
    for _, u, f in sorted(moves, key=lambda m: (-m[0], m[1])):
        trial = _with(tuple(current), {u: f})
        if evaluator.evaluate(trial).meets:
            current = list(trial)
    return tuple(current)


# --- baselines -----------------------------------------------------------------------------------


def greedy_search(space: SearchSpace, evaluator: Evaluator,
                  costs: Sequence[dict[str, float]]) -> Config:
    """The plain greedy baseline: from the top configuration, evaluate every one-step lowering
    (each unit to its next cheaper cost level), apply the one with the largest saving that
    keeps the criterion (ties: the smaller score), and repeat until none keeps it."""
    current = space.top()
    while True:
        moves = []
        for u in range(len(current)):
            options = _cheaper(space, costs, u, current[u])
            if options:
                level = max(costs[u][f] for f in options)
                moves += [(u, f) for f in options if costs[u][f] == level]
        if not moves:
            return current
        evals = evaluator.evaluate_many([_with(current, {u: f}) for u, f in moves])
        passing = [(costs[u][current[u]] - costs[u][f], -e.score, -u, f, e)
                   for (u, f), e in zip(moves, evals, strict=True) if e.meets]
        if not passing:
            return current
        best = max(passing, key=lambda m: m[:3])
        current = best[4].config


def exhaustive_search(space: SearchSpace, evaluator: Evaluator,
                      costs: Sequence[dict[str, float]], limit: int = MAX_EXHAUSTIVE,
                      chunk: int = 64) -> Config:
    """Evaluates every configuration (refused above ``limit``); returns the cheapest that meets
    the criterion (ties: the smaller score), or the top configuration if none does."""
    if space.size > limit:
        raise ValueError(
            f"exhaustive search over {space.size} configurations ({len(space.units)} units) is "
            f"above the limit of {limit}; use search='delta' or 'knapsack', or fewer candidates "
            f"or roles")
    best: tuple[float, float] | None = None
    best_config = space.top()
    configs = itertools.product(*space.candidates)
    while batch := list(itertools.islice(configs, chunk)):
        for e in evaluator.evaluate_many(batch):
            if e.meets:
                key = (sum(costs[u][f] for u, f in enumerate(e.config)), e.score)
                if best is None or key < best:
                    best, best_config = key, e.config
    return best_config
