"""A short tour of the arithmetic core, printed to the terminal (``make run``).

Run with ``python -m dp2ejax.demo``. It enables float64 so that fp64 is a real reference.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dp2ejax import FORMATS, FloatFormat, PrecisionPolicy, Rule, cestac, emulate, round_to  # noqa: E402


class _MLP(nn.Module):
    width: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.width)(x))
        x = nn.tanh(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


def _formats_table() -> str:
    lines = [f"{'format':<10} {'bits':>4} {'max':>12} {'min normal':>12} {'min subnormal':>14} "
             f"{'eps':>10}  overflow"]
    others = []
    for fmt in FORMATS.values():
        if not isinstance(fmt, FloatFormat):
            others.append(f"  {fmt.describe()}")
            continue
        lines.append(
            f"{fmt.name:<10} {fmt.total_bits:>4} {fmt.max_finite:>12.5g} {fmt.min_normal:>12.5g} "
            f"{fmt.min_subnormal:>14.5g} {fmt.epsilon:>10.3g}  {fmt.overflow}"
        )
    return "\n".join([*lines, "Block-scaled, integer and posit formats:", *others])


def _rounding_modes() -> str:
    x = jnp.array([1 / 3, -1 / 3, 2.6, 1000.0], jnp.float64)
    key = jax.random.key(0)
    lines = [f"x = {np.asarray(x)}"]
    for fmt in ("bf16", "fp8_e4m3", "fp4_e2m1"):
        for mode in ("nearest", "toward_zero", "up", "down", "stochastic", "random"):
            r = round_to(x, fmt, mode, key if mode in ("stochastic", "random") else None)
            lines.append(f"  {fmt:<9} {mode:<12} -> {np.asarray(r)}")
    return "\n".join(lines)


def _stochastic_unbiased() -> str:
    x = jnp.full((1 << 20,), 1 / 3, jnp.float64)
    nearest = float(round_to(x[:1], "bf16")[0])
    mean = float(jnp.mean(round_to(x, "bf16", "stochastic", jax.random.key(1))))
    return (f"1/3 in bf16: nearest {nearest:.8f} (error {nearest - 1 / 3:+.2e}); mean of 2^20 "
            f"stochastic roundings {mean:.8f} (error {mean - 1 / 3:+.2e})")


def _emulated_mlp() -> str:
    model = _MLP()
    x = jax.random.normal(jax.random.key(2), (256, 16), jnp.float64)
    params = model.init(jax.random.key(3), x)
    reference = model.apply(params, x)
    policies = {
        "fp32": PrecisionPolicy.uniform("fp32"),
        "bf16": PrecisionPolicy.uniform("bf16"),
        "bf16 seq. acc.": PrecisionPolicy.uniform("bf16", accumulation="sequential"),
        "bf16 in, fp32 acc.": PrecisionPolicy(
            default="fp32", rules=[Rule("bf16", kinds=("matmul_inputs",))]),
        "fp16 on Dense_1": PrecisionPolicy(default="fp32", rules=[Rule("fp16", path="Dense_1")]),
        "fp8_e4m3 stoch.": PrecisionPolicy.uniform("fp8_e4m3", "stochastic"),
        "mxfp4 w, mxfp8 x": PrecisionPolicy(default="fp32", rules=[
            Rule("mxfp4", kinds=("matmul_rhs",)), Rule("mxfp8_e4m3", kinds=("matmul_lhs",))]),
        "nvfp4 matmuls": PrecisionPolicy(default="fp32", rules=[
            Rule("nvfp4", kinds=("matmul_inputs",))]),
        "int8 matmuls": PrecisionPolicy(default="fp32", rules=[
            Rule("int8_channel", kinds=("matmul_inputs",))]),
        "posit16, quire": PrecisionPolicy.uniform("posit16", accumulation="quire"),
    }
    lines = [f"{'policy':<20} {'max rel. error vs fp64':>24}"]
    scale = float(jnp.max(jnp.abs(reference)))
    for name, policy in policies.items():
        out = jax.jit(emulate(model.apply, policy))(params, x, rounding_key=jax.random.key(4))
        err = float(jnp.max(jnp.abs(out - reference))) / scale
        lines.append(f"{name:<20} {err:>24.3e}")
    return "\n".join(lines)


def _rump(x, y):
    return (333.75 * y**6 + x * x * (11 * x * x * y * y - y**6 - 121 * y**4 - 2) + 5.5 * y**8
            + x / (2 * y))


def _cestac() -> str:
    plain = float(_rump(jnp.float64(77617.0), jnp.float64(33096.0)))
    result = cestac.analyze(_rump, 77617.0, 33096.0, fmt="fp64")
    lines = [f"Rump's polynomial: IEEE double gives {plain:.6e} (exact: -0.827396...); CESTAC: "
             f"{float(result.digits):.1f} exact digits, computational zero "
             f"{bool(result.computational_zero)}, instabilities "
             f"{ {k: v for k, v in result.instability_totals().items() if v} }"]
    model = _MLP(width=32)
    x = jax.random.normal(jax.random.key(2), (64, 16), jnp.float64)
    variables = model.init(jax.random.key(3), x)
    lines.append(f"{'layer':<10} " + " ".join(f"{f + ' min/med':>16}" for f in
                                               ("fp64", "fp32", "bf16", "posit16", "fp8_e4m3")))
    per_format = {f: cestac.analyze_layers(model, variables, x, fmt=f)[0]
                  for f in ("fp64", "fp32", "bf16", "posit16", "fp8_e4m3")}
    for i, layer in enumerate(per_format["fp64"]):
        cells = [f"{per_format[f][i].digits_min:>7.1f}/{per_format[f][i].digits_median:<8.1f}"
                 for f in per_format]
        lines.append(f"{layer.path or '(output)':<10} " + " ".join(cells))
    return "\n".join(lines)


def _oversmoothing() -> str:
    from dp2ejax import graph

    g = graph.stochastic_block_model([60, 60], p_in=0.3, p_out=0.02, seed=0)
    P = graph.normalized_adjacency(g.adjacency, "gcn")
    x = jax.random.normal(jax.random.key(4), (g.num_nodes, 8), jnp.float64)
    profile = graph.oversmoothing_profile(P, x, depth=150,
                                          policies=("fp64", "fp32", "fp16", "bf16"))
    return profile.summary()


def main() -> None:
    print("dp2ejax — emulated floating-point arithmetic for JAX\n")
    print("Formats\n" + _formats_table() + "\n")
    print("round_to in every mode\n" + _rounding_modes() + "\n")
    print("Stochastic rounding is unbiased\n" + _stochastic_unbiased() + "\n")
    print("A Flax MLP (16 -> 64 -> 64 -> 1) under emulated precision policies\n"
          + _emulated_mlp() + "\n")
    print("CESTAC: exact significant digits (3 samples, random rounding)\n" + _cestac() + "\n")
    print("Oversmoothing: x <- P x on a 2-block SBM (GCN-normalised), per format\n"
          + _oversmoothing())


if __name__ == "__main__":
    main()
