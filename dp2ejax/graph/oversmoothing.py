"""Oversmoothing profiles: how node features collapse with depth, in each floating-point format.

Repeated propagation ``x_ℓ = P^ℓ x`` by the GCN-normalised adjacency drives node features to the
dominant eigenspace of ``P`` (``∝ √d̃`` for a connected graph): the distance to it decays like
``|λ₂|^ℓ`` (Oono & Suzuki 2020). In a floating-point format the decay stops at a **floor**: once
the part of the features that distinguishes nodes is as small as the rounding errors each
propagation makes, rounding keeps re-injecting it. :func:`oversmoothing_profile` measures all of
this, layer by layer, for several precision policies (and optionally the CESTAC exact digits,
which show when the distinguishing part is only noise).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.emulate import emulate
from dp2ejax.arith.formats import (
    BlockScaledFormat,
    FloatFormat,
    IntFormat,
    PositFormat,
    get_format,
)
from dp2ejax.arith.policy import PrecisionPolicy
from dp2ejax.graph.gcn import emulation_operator
from dp2ejax.graph.metrics import (
    dirichlet_energy,
    dominant_eigenspace,
    effective_rank,
    eigenspace_distance,
    leading_eigenvalue_magnitudes,
    mean_average_distance,
    numerical_rank,
)
from dp2ejax.sparse import CSR

DEFAULT_POLICIES: tuple[str, ...] = ("fp64", "fp32", "bf16", "fp16", "fp8_e4m3")

# Per-layer arrays of a profile (length depth + 1, except decay_ratio: depth).
LAYER_FIELDS: tuple[str, ...] = (
    "dirichlet_energy", "mad", "eigenspace_distance", "relative_distance", "decay_ratio",
    "feature_norm", "effective_rank", "numerical_rank",
)
DIGIT_FIELDS: tuple[str, ...] = (
    "digits_min", "digits_median", "residual_digits_min", "residual_digits_median",
)
_FORMAT_TYPES = (FloatFormat, PositFormat, IntFormat, BlockScaledFormat)


@dataclasses.dataclass(frozen=True)
class OversmoothingProfile:
    """Per-layer oversmoothing metrics of node features under several precision policies.

    Layer ``ℓ`` (``0 … depth``) holds the features after ``ℓ`` propagations (linear profile:
    ``x_ℓ = P^ℓ x``, layer 0 the input) or the model's hidden features ``h_ℓ`` (layer 0 its
    input projection). Every per-layer field is a dict ``policy name -> NumPy array``; metrics
    are computed in float64 (the carrier) on the features each policy produced.

    Attributes:
      source: ``"linear"`` (``P^ℓ x``) or ``"model"`` (a model's hidden features).
      depth: number of propagations / layers; arrays have ``depth + 1`` entries.
      n_nodes, n_features: shape of the profiled features.
      policies: the policy names, in order.
      format_epsilon: machine epsilon ``2^(1-p)`` of each policy's narrowest format.
      dirichlet_energy: ``trace(xᵀ (I - P) x)`` per layer (:func:`~.metrics.dirichlet_energy`).
      mad: Mean Average Distance (cosine) per layer (:func:`~.metrics.mean_average_distance`).
      eigenspace_distance: ``d_ℓ = ‖x_ℓ - U Uᵀ x_ℓ‖_F``, ``U`` the dominant eigenspace of ``P``.
      relative_distance: ``d_ℓ / ‖x_ℓ‖_F``: the scale-free share of the features outside the
        eigenspace, what ``collapse_depth`` and ``floor`` are read from, and what compares with
        the format's epsilon.
      decay_ratio: ``d_{ℓ+1} / d_ℓ`` (``depth`` entries). For the linear profile in exact
        arithmetic it never exceeds ``spectral_rate`` and tends to it; a ratio near 1 in a
        low format means the decay stopped.
      feature_norm: ``‖x_ℓ‖_F``.
      effective_rank: Roy & Vetterli's effective rank of ``x_ℓ``.
      numerical_rank: singular values above ``format_epsilon · σ_max``: the directions the
        format resolves beside the largest (NumPy's ``eps · max(n, f)`` would leave bf16 with
        120 nodes a threshold of 0.94 σ_max).
      digits_min, digits_median: with ``cestac=True``, CESTAC exact significant digits of the
        features (min, median over the elements); otherwise empty dicts.
      residual_digits_min, residual_digits_median: the same for the component of the features
        outside the dominant eigenspace, ``x_ℓ - U Uᵀ x_ℓ`` (projected in float64 per sample):
        the part that still tells nodes apart. Its digits fall to 0 as it sinks into the floor.
      spectral_rate: ``|λ_{k+1}|`` of ``P`` (float64, SciPy), the theoretical decay rate with
        ``k = eigenspace_dim`` (``|λ₂|`` for a connected graph).
      eigenspace_dim: ``k``, the dimension of ``U``.
      collapse_threshold: see ``collapse_depth``.
      floor_window: see ``floor``.
      collapse_depth: first layer where ``relative_distance`` is at most ``collapse_threshold``
        times its layer-0 value (None: not within ``depth``).
      floor: the lowest ``relative_distance`` reached, when the decay has stopped: the running
        minimum of ``relative_distance`` fell by less than a factor
        ``max(0.5, spectral_rate^(floor_window/2))`` over ``floor_window`` layers (half the
        spectral decay, in log scale). None when the decay never stalled within ``depth``
        (a stall in the last ``floor_window`` layers cannot be seen).
      floor_depth: first layer whose ``relative_distance`` is within a factor 2 of ``floor``.
      floor_over_epsilon: ``floor / format_epsilon``.
      no_digits_depth: with ``cestac=True``, first layer where ``residual_digits_median`` is 0:
        no exact digit remains in the distinguishing part of the features (None otherwise).
    """

    source: str
    depth: int
    n_nodes: int
    n_features: int
    policies: tuple[str, ...]
    format_epsilon: dict[str, float]
    dirichlet_energy: dict[str, np.ndarray]
    mad: dict[str, np.ndarray]
    eigenspace_distance: dict[str, np.ndarray]
    relative_distance: dict[str, np.ndarray]
    decay_ratio: dict[str, np.ndarray]
    feature_norm: dict[str, np.ndarray]
    effective_rank: dict[str, np.ndarray]
    numerical_rank: dict[str, np.ndarray]
    digits_min: dict[str, np.ndarray]
    digits_median: dict[str, np.ndarray]
    residual_digits_min: dict[str, np.ndarray]
    residual_digits_median: dict[str, np.ndarray]
    spectral_rate: float | None
    eigenspace_dim: int
    collapse_threshold: float
    floor_window: int
    collapse_depth: dict[str, int | None]
    floor: dict[str, float | None]
    floor_depth: dict[str, int | None]
    floor_over_epsilon: dict[str, float | None]
    no_digits_depth: dict[str, int | None]

    def for_policy(self, name: str) -> dict[str, Any]:
        """Everything measured for one policy: its per-layer arrays and derived values."""
        if name not in self.policies:
            raise KeyError(f"no policy {name!r} in this profile; it has {list(self.policies)}")
        data: dict[str, Any] = {"format_epsilon": self.format_epsilon[name]}
        for field in ("collapse_depth", "floor", "floor_depth", "floor_over_epsilon",
                      "no_digits_depth"):
            data[field] = getattr(self, field)[name]
        for field in LAYER_FIELDS + DIGIT_FIELDS:
            values = getattr(self, field)
            if name in values:
                data[field] = values[name]
        return data

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of floats; NaN and infinities become None)."""
        policies = {}
        for name in self.policies:
            entry = self.for_policy(name)
            layers = {f: _json_list(entry.pop(f)) for f in LAYER_FIELDS + DIGIT_FIELDS
                      if f in entry}
            policies[name] = {**{k: _json_value(v) for k, v in entry.items()}, "layers": layers}
        return {
            "source": self.source,
            "depth": self.depth,
            "n_nodes": self.n_nodes,
            "n_features": self.n_features,
            "eigenspace_dim": self.eigenspace_dim,
            "spectral_rate": _json_value(self.spectral_rate),
            "collapse_threshold": self.collapse_threshold,
            "floor_window": self.floor_window,
            "policies": policies,
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A short text table: one row per policy."""
        rate = "n/a" if self.spectral_rate is None else f"{self.spectral_rate:.6g}"
        lines = [
            f"Oversmoothing profile ({self.source}): {self.n_nodes} nodes x {self.n_features} "
            f"features, depth {self.depth}, spectral rate |lambda_{self.eigenspace_dim + 1}| = "
            f"{rate}",
            f"{'policy':<12}{'eps':>10}{'collapse@':>11}{'floor':>11}{'floor@':>8}"
            f"{'floor/eps':>11}{'final rel':>11}{'last ratio':>12}{'no digits@':>12}",
        ]

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        for name in self.policies:
            ratio = self.decay_ratio[name]
            lines.append(
                f"{name[:12]:<12}{self.format_epsilon[name]:>10.2e}"
                f"{fmt(self.collapse_depth[name], 'd'):>11}{fmt(self.floor[name], '.2e'):>11}"
                f"{fmt(self.floor_depth[name], 'd'):>8}"
                f"{fmt(self.floor_over_epsilon[name], '.3g'):>11}"
                f"{self.relative_distance[name][-1]:>11.2e}"
                f"{(ratio[-1] if ratio.size else float('nan')):>12.4f}"
                f"{fmt(self.no_digits_depth[name], 'd'):>12}")
        return "\n".join(lines)


def _json_value(value):
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_list(values) -> list:
    return [_json_value(v) for v in np.asarray(values).tolist()]


def _policy_table(policies) -> dict[str, PrecisionPolicy]:
    """``policies`` (names, formats, policies, or a dict name -> any of these) as a dict."""
    if isinstance(policies, (str, PrecisionPolicy, *_FORMAT_TYPES)):
        policies = (policies,)
    if isinstance(policies, Mapping):
        items = list(policies.items())
    elif isinstance(policies, Sequence):
        items = []
        for i, entry in enumerate(policies):
            if isinstance(entry, str):
                items.append((entry, entry))
            elif isinstance(entry, _FORMAT_TYPES):
                items.append((entry.name, entry))
            else:
                items.append((f"policy_{i}", entry))
    else:
        raise ValueError(
            f"policies: expected format names, policies, or a dict name -> policy/format, got "
            f"{type(policies).__name__}")
    if not items:
        raise ValueError("policies: expected at least one policy, got none")
    table: dict[str, PrecisionPolicy] = {}
    for name, spec in items:
        if not isinstance(name, str):
            raise ValueError(f"policies: names must be strings, got {name!r}")
        if name in table:
            raise ValueError(f"policies: the name {name!r} appears twice")
        if isinstance(spec, PrecisionPolicy):
            table[name] = spec
            continue
        try:
            table[name] = PrecisionPolicy.uniform(get_format(spec))
        except ValueError as err:
            raise ValueError(f"policies[{name!r}]: {err}") from None
    return table


def _carrier(table: Mapping[str, PrecisionPolicy]):
    if jax.config.jax_enable_x64:
        return jnp.float64
    for name, policy in table.items():
        for fmt in policy.formats():
            if not fmt.fits_in(np.float32):
                raise ValueError(
                    f"policies[{name!r}]: format {fmt.name!r} needs float64, which JAX has "
                    f"disabled: call jax.config.update('jax_enable_x64', True) (or set "
                    f"JAX_ENABLE_X64=1) before creating arrays, or leave {name!r} out")
    return jnp.float32


def _epsilon(policy: PrecisionPolicy, carrier) -> float:
    formats = policy.formats()
    if not formats:
        return float(jnp.finfo(carrier).eps)
    precision = min(fmt.precision for fmt in formats)
    return math.ldexp(1.0, 1 - precision)


def _operator(P, n: int, dtype):
    """``P`` in the carrier dtype (a ``CSR`` or a dense JAX array), shape-checked."""
    import scipy.sparse as sp

    if sp.issparse(P):
        P = CSR.from_scipy(P)
    shape = tuple(getattr(P, "shape", np.shape(P)))
    if shape != (n, n):
        raise ValueError(
            f"P: expected a propagation matrix of shape ({n}, {n}) to match x with {n} nodes, "
            f"got shape {shape}")
    if isinstance(P, CSR):
        return emulation_operator(dataclasses.replace(P, data=P.data.astype(dtype)))
    if isinstance(P, np.ndarray | jax.Array):
        return jnp.asarray(P, dtype)
    raise ValueError(
        f"P: expected a dense [n, n] array, a dp2ejax.sparse.CSR or a SciPy sparse matrix, "
        f"got {type(P).__name__}")


def _linear_propagation(depth: int):
    def propagate_layers(P, x):
        def step(h, _):
            h = P @ h
            return h, h

        _, layers = lax.scan(step, x, None, length=depth)
        return jnp.concatenate([x[None], layers], axis=0)

    return propagate_layers


def _model_hidden(model):
    def hidden_layers(params, x, P):
        _, hidden = model.apply(params, x, P, return_hidden=True)
        return hidden

    return hidden_layers


@jax.jit
def _layer_metrics(layers, P, basis, rtol):
    def one(h):
        return {
            "dirichlet_energy": dirichlet_energy(h, P),
            "mad": mean_average_distance(h),
            "eigenspace_distance": eigenspace_distance(h, basis),
            "feature_norm": jnp.sqrt(jnp.sum(h * h)),
            "effective_rank": effective_rank(h),
            "numerical_rank": numerical_rank(h, rtol),
        }

    return lax.map(one, layers)


def _collapse_depth(rel: np.ndarray, threshold: float) -> int | None:
    below = np.nonzero(rel <= threshold * rel[0])[0]
    return int(below[0]) if below.size else None


def _floor(rel: np.ndarray, window: int, rate: float | None) -> tuple[float | None, int | None]:
    """The level where the running minimum of ``rel`` stalls, and the layer it is reached."""
    stall = 0.5
    if rate is not None and 0 < rate < 1:
        stall = max(stall, rate ** (window / 2))
    values = np.where(np.isfinite(rel), rel, np.inf)
    running = np.minimum.accumulate(values)
    for layer in range(len(values) - window):
        if running[layer + window] >= stall * running[layer]:
            level = float(running[-1])
            if not math.isfinite(level):
                return None, None
            reached = int(np.nonzero(values <= 2 * level)[0][0])
            return level, reached
    return None, None


def _residual(samples: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``s - U Uᵀ s`` for samples ``[S, L, n, f]``, in float64."""
    samples = np.asarray(samples, np.float64)
    projected = np.einsum("nk,slnf->slkf", basis, samples)
    return samples - np.einsum("nk,slkf->slnf", basis, projected)


def oversmoothing_profile(
    P: Any,
    x: jax.Array,
    *,
    depth: int | None = None,
    model: Any = None,
    params: Any = None,
    policies: Sequence[Any] | Mapping[str, Any] = DEFAULT_POLICIES,
    cestac: bool = False,
    cestac_samples: int = 3,
    seed: int = 0,
    eigenspace_dim: int = 1,
    collapse_threshold: float = 1e-3,
    floor_window: int = 10,
) -> OversmoothingProfile:
    """Measures oversmoothing layer by layer under each precision policy.

    Without ``model``: linear propagation ``x_ℓ = P^ℓ x`` for ``ℓ = 0 … depth`` (one
    ``lax.scan``), run under :func:`dp2ejax.emulate` with each policy. With ``model`` and
    ``params``: the model's per-layer hidden features (``model.apply(params, x, P,
    return_hidden=True)`` returns ``(output, hidden)`` with ``hidden`` of shape
    ``[depth + 1, n, f]``, as :class:`~dp2ejax.graph.GCN` does), each policy emulating the
    whole model (use :class:`~dp2ejax.PrecisionPolicy` rules on ``layer_i`` for per-layer
    policies). The metrics of each layer (see :class:`OversmoothingProfile`) are computed in
    float64 on the features each policy produced; ``U``, ``|λ|`` are computed host-side in
    float64 (dense for ``n <= 2000``, ARPACK above).

    Float64: every run uses a float64 carrier when ``jax_enable_x64`` is on (so that the
    metrics can resolve floors far below fp32's epsilon). With x64 off, policies that fit
    float32 run in float32, and asking for fp64 (the default policies do) raises a ValueError
    naming ``jax_enable_x64``.

    Args:
      P: ``[n, n]`` propagation matrix: a dense array, a :class:`~dp2ejax.sparse.CSR` or a
        SciPy sparse matrix (e.g. ``D̃^-1/2 (A + I) D̃^-1/2``). A ``CSR`` multiplies by segment
        sums (one rounding per row sum under every policy, as a dense ``P`` with ``exact``
        accumulation; see :func:`~dp2ejax.graph.gcn.emulation_operator`).
      x: ``[n, f]`` node features (the input of the propagation or of the model).
      depth: number of propagations (required without ``model``; with one, its hidden layers
        decide and ``depth``, if given, must agree).
      model, params: optional Flax model and its variables.
      policies: format names / formats / policies (named by the format, or ``policy_i``), or a
        dict ``name -> policy or format``.
      cestac: also run :func:`dp2ejax.cestac.analyze` (random rounding in each policy's
        formats) and record the exact digits per layer; slower (one compiled program per
        policy, ``cestac_samples`` runs vectorised).
      cestac_samples: CESTAC samples (>= 2).
      seed: seed of the random rounding (stochastic policies and CESTAC).
      eigenspace_dim: ``k``, the dimension of the dominant eigenspace ``U`` (the number of
        connected components for the GCN normalisation).
      collapse_threshold: relative level that defines ``collapse_depth``.
      floor_window: layers over which a stalled decay defines the ``floor``.

    Returns:
      An :class:`OversmoothingProfile`.

    Example:
      >>> import jax, numpy as np
      >>> jax.config.update("jax_enable_x64", True)
      >>> A = np.roll(np.eye(7), 1, axis=1); A = A + A.T     # a 7-cycle ...
      >>> A[0, 3] = A[3, 0] = 1                              # ... with a chord
      >>> d = A.sum(1) + 1                                   # d̃: degrees with self-loops
      >>> P = (A + np.eye(7)) / np.sqrt(np.outer(d, d))      # D̃^-1/2 (A + I) D̃^-1/2
      >>> x = np.random.default_rng(0).standard_normal((7, 3))
      >>> profile = oversmoothing_profile(P, x, depth=80, policies=("fp64", "fp16", "bf16"))
      >>> round(profile.spectral_rate, 4)                    # |λ₂|
      0.7513
      >>> profile.floor["fp64"] is None                      # still decaying at depth 80
      True
      >>> [0.1 < profile.floor_over_epsilon[p] < 10 for p in ("fp16", "bf16")]
      [True, True]
      >>> print(profile.summary())
      Oversmoothing profile (linear): 7 nodes x 3 features, depth 80, ...
      policy  eps  collapse@  floor  floor@  floor/eps  final rel  last ratio  no digits@
      fp64 ...
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x: expected float node features of shape [n, f], got shape {x.shape} and dtype "
            f"{x.dtype}")
    n, f = x.shape
    if model is None:
        if params is not None:
            raise ValueError("params: given without a model; pass model= too, or leave out "
                             "params for linear propagation")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth: expected an int >= 1 (number of propagations), got "
                             f"{depth!r}")
    else:
        if params is None:
            raise ValueError("params: the model's variables are required with model=")
        if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool)
                                  or depth < 0):
            raise ValueError(f"depth: expected None or an int >= 0, got {depth!r}")
    for name, value, low in (("cestac_samples", cestac_samples, 2),
                             ("eigenspace_dim", eigenspace_dim, 1),
                             ("floor_window", floor_window, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if not 0 < collapse_threshold < 1:
        raise ValueError(f"collapse_threshold: expected a number in (0, 1), got "
                         f"{collapse_threshold!r}")
    table = _policy_table(policies)
    carrier = _carrier(table)
    operator = _operator(P, n, carrier)
    if not 1 <= eigenspace_dim < n:
        raise ValueError(f"eigenspace_dim: expected an int in [1, {n - 1}], got {eigenspace_dim}")
    basis_host = dominant_eigenspace(operator, eigenspace_dim)
    rate = float(leading_eigenvalue_magnitudes(operator, eigenspace_dim + 1)[eigenspace_dim])
    basis = jnp.asarray(basis_host, carrier)
    x = x.astype(carrier)
    key = jax.random.key(seed)

    if model is None:
        fn = _linear_propagation(depth)
        args = (operator, x)
    else:
        fn = _model_hidden(model)
        cast = lambda leaf: (leaf.astype(carrier)  # noqa: E731
                             if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf)
        args = (jax.tree_util.tree_map(cast, params), x, operator)
        shape = jax.eval_shape(fn, *args).shape
        if len(shape) != 3 or shape[1] != n:
            raise ValueError(f"model: expected hidden features of shape [depth + 1, {n}, f] from "
                             f"apply(..., return_hidden=True), got {shape}")
        if depth is not None and shape[0] != depth + 1:
            raise ValueError(f"depth: {depth} does not match the model's {shape[0] - 1} layers")
        depth = shape[0] - 1

    per_layer: dict[str, dict[str, np.ndarray]] = {field: {} for field in LAYER_FIELDS}
    digits: dict[str, dict[str, np.ndarray]] = {field: {} for field in DIGIT_FIELDS}
    epsilon, collapse, floor, floor_depth, floor_eps, no_digits = {}, {}, {}, {}, {}, {}
    for name, policy in table.items():
        epsilon[name] = _epsilon(policy, carrier)
        layers = jax.jit(emulate(fn, policy))(*args, rounding_key=key)
        rtol = jnp.asarray(epsilon[name], carrier)
        metrics = jax.device_get(_layer_metrics(layers, operator, basis, rtol))
        for field, values in metrics.items():
            per_layer[field][name] = np.asarray(values)
        distance = per_layer["eigenspace_distance"][name].astype(np.float64)
        norm = per_layer["feature_norm"][name].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(norm > 0, distance / norm, 0.0)
            per_layer["decay_ratio"][name] = distance[1:] / distance[:-1]
        per_layer["relative_distance"][name] = rel
        collapse[name] = _collapse_depth(rel, collapse_threshold)
        floor[name], floor_depth[name] = _floor(rel, floor_window, rate)
        floor_eps[name] = None if floor[name] is None else floor[name] / epsilon[name]
        no_digits[name] = None
        if cestac:
            from dp2ejax.cestac import analyze, significant_digits

            result = analyze(fn, *args, policy=policy, samples=cestac_samples, key=key)
            d = np.asarray(result.digits, np.float64)
            residual = _residual(result.samples, basis_host)
            rd = np.asarray(significant_digits(jnp.asarray(residual), 0,
                                               max_digits=result.max_digits), np.float64)
            digits["digits_min"][name] = d.min(axis=(1, 2))
            digits["digits_median"][name] = np.median(d, axis=(1, 2))
            digits["residual_digits_min"][name] = rd.min(axis=(1, 2))
            digits["residual_digits_median"][name] = np.median(rd, axis=(1, 2))
            none_left = np.nonzero(digits["residual_digits_median"][name] <= 0)[0]
            no_digits[name] = int(none_left[0]) if none_left.size else None

    return OversmoothingProfile(
        source="linear" if model is None else "model",
        depth=int(depth), n_nodes=int(n), n_features=int(layers.shape[-1]),
        policies=tuple(table), format_epsilon=epsilon,
        **per_layer, **digits,
        spectral_rate=rate, eigenspace_dim=eigenspace_dim,
        collapse_threshold=float(collapse_threshold), floor_window=floor_window,
        collapse_depth=collapse, floor=floor, floor_depth=floor_depth,
        floor_over_epsilon=floor_eps, no_digits_depth=no_digits,
    )
