"""The per-layer precision autotuner: given a model and an accuracy budget, the cheapest
format for each layer and role (matmul inputs, accumulation, elementwise, reductions), as a
:class:`dp2ejax.PrecisionPolicy`, with the sensitivities, costs and baselines that explain it.

Modules: ``space`` (tuning units, candidates, priors), ``criteria`` (relative error, metric
drop, CESTAC digits), ``cost`` (bits, energy, measured cost models), ``evaluate`` (cached,
device-spread evaluation), ``search`` (sensitivity, delta debugging, knapsack, greedy,
exhaustive) and ``tuner`` (the entry point, :func:`autotune`, and :class:`TuneResult`).
"""

from dp2ejax.tune.cost import (
    HOROWITZ_MEMORY_PJ_PER_64_BITS,
    HOROWITZ_PJ,
    BitsCost,
    CostModel,
    EnergyCost,
    MeasuredCost,
)
from dp2ejax.tune.criteria import CestacDigits, Criterion, MetricDrop, RelativeError
from dp2ejax.tune.search import MAX_EXHAUSTIVE, SEARCHES
from dp2ejax.tune.space import (
    DEFAULT_PRIORS,
    Prior,
    SearchSpace,
    Unit,
    build_space,
    discover_units,
)
from dp2ejax.tune.tuner import DEFAULT_CANDIDATES, TuneResult, autotune

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_PRIORS",
    "HOROWITZ_MEMORY_PJ_PER_64_BITS",
    "HOROWITZ_PJ",
    "MAX_EXHAUSTIVE",
    "SEARCHES",
    "BitsCost",
    "CestacDigits",
    "CostModel",
    "Criterion",
    "EnergyCost",
    "MeasuredCost",
    "MetricDrop",
    "Prior",
    "RelativeError",
    "SearchSpace",
    "TuneResult",
    "Unit",
    "autotune",
    "build_space",
    "discover_units",
]
