"""Cost models of the autotuner: what a configuration of formats costs.

Two models are *additive* over tuning units (a configuration's cost is the sum of its units'
costs, so the knapsack search can use them), one is measured:

- :class:`BitsCost` (the default): FLOPs weighted by the format's bits relative to 32, plus
  the bytes moved at the format's ``bits_per_value``.
- :class:`EnergyCost`: picojoules, from the 45 nm table of Horowitz (ISSCC 2014), split into
  compute and data movement.
- :class:`MeasuredCost`: seconds, the median time of the jitted emulated program (and of the
  native program where every format is a native dtype). It is reported, not optimised: the
  time of an emulation is not the time of the hardware (rounding to a narrow format *adds*
  work in emulation), and timings are noisy, which would make the search non-deterministic.

Write your own by subclassing :class:`CostModel` and defining :meth:`CostModel.unit_breakdown`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax

from dp2ejax.arith.formats import Format, IntFormat, get_format
from dp2ejax.tune.space import Unit


class CostModel:
    """An additive cost model: :meth:`unit_breakdown` prices one unit in one format as a dict
    of named parts; the cost is their sum (``total_key`` excepted)."""

    name = "cost"
    unit = ""
    additive = True

    def unit_breakdown(self, unit: Unit, fmt: Format) -> dict[str, float]:
        raise NotImplementedError

    def unit_cost(self, unit: Unit, fmt: str | Format) -> float:
        return float(sum(self.unit_breakdown(unit, get_format(fmt)).values()))

    def config_breakdown(self, units: Sequence[Unit], config: Sequence[str]) -> dict[str, float]:
        """The parts summed over the units, and their ``total``."""
        parts: dict[str, float] = {}
        for unit, fmt in zip(units, config, strict=True):
            for key, value in self.unit_breakdown(unit, get_format(fmt)).items():
                parts[key] = parts.get(key, 0.0) + float(value)
        parts["total"] = float(sum(parts.values()))
        return parts

    def config_cost(self, units: Sequence[Unit], config: Sequence[str]) -> float:
        return self.config_breakdown(units, config)["total"]

    def to_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit}


@dataclasses.dataclass(frozen=True)
class BitsCost(CostModel):
    """Bits-weighted FLOPs plus bytes moved, in fp32-FLOP equivalents.

    For a unit in a format of ``b = bits_per_value`` bits, with ``r = b / 32``:

    - ``matmul_inputs``: ``multiplies * r**2`` (a multiplier's area and energy grow with the
      square of its width) + ``bytes_weight * values_in * b / 8`` (the operands read);
    - ``matmul_accumulation``: ``additions * r`` (an adder grows linearly) + the results
      written, ``bytes_weight * values_out * b / 8``;
    - ``elementwise``: ``operations * r`` + the operands and results moved;
    - ``reduction``: ``additions * r`` + the values moved.

    ``bytes_weight`` converts bytes to FLOP equivalents (1.0: one fp32 operation per byte).

    Example:
      >>> u = Unit("Dense_0", "matmul_inputs", multiplies=1000.0, values_in=100.0)
      >>> BitsCost().unit_breakdown(u, get_format("fp32"))
      {'flops': 1000.0, 'bytes': 400.0}
      >>> BitsCost().unit_breakdown(u, get_format("bf16"))
      {'flops': 250.0, 'bytes': 200.0}
    """

    bytes_weight: float = 1.0

    name = "bits"
    unit = "fp32-FLOP equivalents"

    def unit_breakdown(self, unit: Unit, fmt: Format) -> dict[str, float]:
        bits = float(fmt.bits_per_value)
        r = bits / 32.0
        flops = unit.multiplies * r * r + (unit.additions + unit.operations) * r
        return {"flops": flops, "bytes": self.bytes_weight * unit.values_moved * bits / 8.0}


HOROWITZ_PJ = {
    "fp32_add": 0.9, "fp32_mult": 3.7, "fp16_add": 0.4, "fp16_mult": 1.1,
    "int8_add": 0.03, "int8_mult": 0.2, "int32_add": 0.1, "int32_mult": 3.1,
}
"""Energy per operation in pJ at 45 nm, 0.9 V (M. Horowitz, "Computing's energy problem (and
what we can do about it)", ISSCC 2014, doi:10.1109/ISSCC.2014.6757323)."""

HOROWITZ_MEMORY_PJ_PER_64_BITS = {
    "sram_8kb": 10.0, "sram_32kb": 20.0, "sram_1mb": 100.0, "dram": 1300.0, "dram_high": 2600.0,
}
"""Energy of reading 64 bits, in pJ (same source): SRAM caches of 8 KB, 32 KB and 1 MB, and
DRAM (1.3-2.6 nJ: ``dram`` is the low end, ``dram_high`` the high end)."""


def _fit(x1, y1, x2, y2):
    slope = (y2 - y1) / (x2 - x1)
    return y1 - slope * x1, slope


# float: multiplier a + b p^2 through (p=24, fp32) and (p=11, fp16); adder c + d bits through
# (32, fp32) and (16, fp16). integers: a + b bits^2 and c + d bits through int8 and int32.
_FLOAT_MULT = _fit(24 ** 2, HOROWITZ_PJ["fp32_mult"], 11 ** 2, HOROWITZ_PJ["fp16_mult"])
_FLOAT_ADD = _fit(32, HOROWITZ_PJ["fp32_add"], 16, HOROWITZ_PJ["fp16_add"])
_INT_MULT = _fit(32 ** 2, HOROWITZ_PJ["int32_mult"], 8 ** 2, HOROWITZ_PJ["int8_mult"])
_INT_ADD = _fit(32, HOROWITZ_PJ["int32_add"], 8, HOROWITZ_PJ["int8_add"])
_MIN_PJ = HOROWITZ_PJ["int8_add"]  # no operation below the cheapest in the table


@dataclasses.dataclass(frozen=True)
class EnergyCost(CostModel):
    """Energy in picojoules, from Horowitz's 45 nm table (ISSCC 2014), compute and data movement.

    Operations: the table gives fp32 add 0.9, fp32 mult 3.7, fp16 add 0.4, fp16 mult 1.1, int8
    add 0.03, int8 mult 0.2, int32 add 0.1, int32 mult 3.1 pJ. Other formats are interpolated
    through the two table points of their family: a float (or posit, block-scaled) multiplier
    costs ``a + b p**2`` with ``p`` the significand precision (``fmt.precision``; array
    multipliers grow with its square), an adder ``c + d bits`` (linear in ``bits_per_value``);
    integer formats ``a + b bits**2`` and ``c + d bits``; never below the table's cheapest
    operation (int8 add, 0.03 pJ). So fp32 is exact, fp16 exact, bf16 (p = 8) multiplies for
    0.774 pJ, fp8_e4m3 (p = 4) for 0.50 pJ, fp64 (p = 53) for 16.5 pJ (an extrapolation).
    Elementwise operations are priced as additions (transcendentals are not distinguished).

    Data movement: every value a unit reads or writes is moved once at ``bits_per_value``, for
    ``memory``'s energy per 64 bits (``sram_8kb`` 10 pJ, ``sram_32kb`` 20, ``sram_1mb`` 100,
    ``dram`` 1300, ``dram_high`` 2600). Data movement dominates, as the paper stresses.

    Example:
      >>> u = Unit("Dense_0", "matmul_inputs", multiplies=1.0, values_in=2.0)
      >>> EnergyCost(memory="sram_8kb").unit_breakdown(u, get_format("fp32"))
      {'compute_pj': 3.7, 'movement_pj': 10.0}
      >>> round(EnergyCost.op_pj(get_format("bf16"), "mult"), 3)
      0.774
    """

    memory: str = "dram"

    name = "energy"
    unit = "pJ"

    def __post_init__(self):
        if self.memory not in HOROWITZ_MEMORY_PJ_PER_64_BITS:
            raise ValueError(f"EnergyCost memory must be one of "
                             f"{sorted(HOROWITZ_MEMORY_PJ_PER_64_BITS)}, got {self.memory!r}")

    @staticmethod
    def op_pj(fmt: Format, op: str) -> float:
        """Energy of one ``op`` (``"add"`` or ``"mult"``) in ``fmt``, in pJ."""
        fmt = get_format(fmt)
        if isinstance(fmt, IntFormat):
            a, b = _INT_MULT if op == "mult" else _INT_ADD
            x = fmt.bits ** 2 if op == "mult" else fmt.bits
        else:
            a, b = _FLOAT_MULT if op == "mult" else _FLOAT_ADD
            x = fmt.precision ** 2 if op == "mult" else fmt.bits_per_value
        return max(a + b * x, _MIN_PJ)

    def unit_breakdown(self, unit: Unit, fmt: Format) -> dict[str, float]:
        compute = (unit.multiplies * self.op_pj(fmt, "mult")
                   + (unit.additions + unit.operations) * self.op_pj(fmt, "add"))
        per_bit = HOROWITZ_MEMORY_PJ_PER_64_BITS[self.memory] / 64.0
        return {"compute_pj": compute,
                "movement_pj": unit.values_moved * fmt.bits_per_value * per_bit}

    def to_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit, "memory": self.memory,
                "source": "Horowitz, ISSCC 2014, 45 nm"}


@dataclasses.dataclass(frozen=True)
class MeasuredCost(CostModel):
    """Seconds: the median of ``repeats`` timed calls of a jitted program (after one untimed
    call that compiles it), each timed to ``block_until_ready``.

    The emulated program's time is **not** hardware time: emulation rounds with integer
    operations on a float32/float64 carrier, so a narrower format costs *more* emulation work.
    Where every format of a configuration is a native dtype (fp64, fp32, bf16, fp16) the
    native program (parameters and inputs cast to that dtype) is timed too. This model is not
    additive; the search does not optimise it (see the result's notes).

    Example:
      >>> import jax.numpy as jnp
      >>> MeasuredCost(repeats=3).time(jnp.sin, (jnp.ones(8),)) > 0
      True
    """

    repeats: int = 5

    name = "measured"
    unit = "s"
    additive = False

    def time(self, fn: Callable, args: tuple) -> float:
        """The median seconds of ``jax.jit(fn)(*args)`` over ``repeats`` calls."""
        compiled = jax.jit(fn)
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(max(1, self.repeats)):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        return float(statistics.median(times))

    def unit_breakdown(self, unit: Unit, fmt: Format) -> dict[str, float]:
        raise TypeError("MeasuredCost times whole programs; it has no per-unit cost")


def as_cost_model(model) -> CostModel:
    """A cost model from ``"bits"``, ``"energy"``, ``"measured"`` or a :class:`CostModel`."""
    if isinstance(model, CostModel):
        return model
    named = {"bits": BitsCost, "energy": EnergyCost, "measured": MeasuredCost}
    if isinstance(model, str) and model in named:
        return named[model]()
    raise ValueError(f"cost_model must be one of {sorted(named)} or a CostModel instance, got "
                     f"{model!r}")
