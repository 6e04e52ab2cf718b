"""PageRank by power iteration in emulated formats, with its ranking agreement with fp64.

``x <- alpha P^T x + (alpha * sum(x[dangling]) * d + (1 - alpha) * v)`` from the uniform
vector, ``P`` the row-normalised adjacency (``A[i, j]`` the weight of the edge ``i -> j``:
networkx's ``to_scipy_sparse_array`` convention), ``v`` the personalization and ``d`` the
distribution of the dangling nodes' (no out-edges) rank (default ``v``): the iteration of
``networkx.pagerank``, which it matches to ~1e-15 in fp64.

Two formats: ``storage_format``, of the stored values of ``P`` (rounded once, as a sparse
matrix kept in bf16 or fp8 in memory), and ``accumulation_format``, of the arithmetic (every
product, sum and scaling of an iteration rounded by :func:`dp2ejax.emulate`; the iterate is the
result of that arithmetic, so it is stored in that format too). How a row sum of ``P^T x``
accumulates: ``"exact"`` (one rounding per row sum: a wide accumulator, as
:func:`dp2ejax.graph.emulation_operator`) or ``"sequential"`` (every addition rounded, in column
order). The stopping test is measured in float64: ``||x_{k+1} - x_k||_1 < tol``. In a low format
the residual stops falling at about the format's epsilon: an iteration whose residual has not
halved in 30 steps stops as ``"stalled"``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dp2ejax.arith.emulate import emulate
from dp2ejax.arith.formats import get_format
from dp2ejax.arith.policy import PrecisionPolicy
from dp2ejax.arith.rounding import round_to
from dp2ejax.sparse.csr import CSR

PAGERANK_STATUSES = ("converged", "stalled", "max_iter")
ACCUMULATIONS = ("exact", "sequential")
STALL_WINDOW = 30  # iterations without halving the residual before "stalled"


@dataclasses.dataclass(frozen=True)
class PageRankResult:
    """What :func:`pagerank` found.

    Attributes:
      scores: ``[n]`` float64 PageRank scores (the last iterate, as computed in the formats).
      status: ``"converged"`` (fp64-measured residual below ``tol``), ``"stalled"`` (the
        residual stopped falling: the format's floor) or ``"max_iter"``.
      iterations: power iterations done.
      residuals: ``||x_{k+1} - x_k||_1`` of each iteration, in float64.
      kendall_tau_top_k: Kendall's tau-b between these scores and the fp64 run's on the union
        of both top-``k`` lists (None when both formats are fp64).
      top_k_overlap: the share of the fp64 top-``k`` found in this run's top-``k`` (or None).
      max_abs_diff_fp64: the largest score difference with the fp64 run (or None).
      digits: CESTAC exact significant digits of each score (with ``cestac=True``), from
        ``iterations`` power iterations randomly rounded in the accumulation format.
    """

    scores: np.ndarray
    status: str
    iterations: int
    residuals: tuple[float, ...]
    alpha: float
    tol: float
    storage_format: str
    accumulation_format: str
    accumulation: str
    top_k: int
    kendall_tau_top_k: float | None = None
    top_k_overlap: float | None = None
    max_abs_diff_fp64: float | None = None
    digits: np.ndarray | None = None

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def top(self, k: int | None = None) -> np.ndarray:
        """The indices of the ``k`` (default ``top_k``) highest scores, highest first (ties by
        index)."""
        k = self.top_k if k is None else k
        return np.lexsort((np.arange(len(self.scores)), -self.scores))[:k]

    def digits_median(self) -> float | None:
        """Median CESTAC digits over the nodes (None without ``cestac=True``)."""
        return None if self.digits is None else float(np.median(self.digits))

    def to_dict(self) -> dict:
        """A JSON-ready dict (scores and digits summarised)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("scores", "digits", "residuals")}
        out["residuals"] = list(self.residuals)
        out["top"] = [int(i) for i in self.top()]
        out["digits_median"] = self.digits_median()
        out["digits_min"] = None if self.digits is None else float(np.min(self.digits))
        return out

    def summary(self) -> str:
        """A few lines: formats, status, agreement with fp64, digits."""
        last = self.residuals[-1] if self.residuals else math.nan
        lines = [f"PageRank (alpha {self.alpha}): storage {self.storage_format}, accumulation "
                 f"{self.accumulation_format} ({self.accumulation})",
                 f"status {self.status} after {self.iterations} iterations, residual "
                 f"{last:.2e} (tol {self.tol:.1e})"]
        if self.kendall_tau_top_k is not None:
            lines.append(f"vs fp64: Kendall tau of the top-{self.top_k} "
                         f"{self.kendall_tau_top_k:.3f}, overlap {self.top_k_overlap:.2f}, "
                         f"max |diff| "
                         f"{self.max_abs_diff_fp64:.2e}")
        if self.digits is not None:
            lines.append(f"CESTAC digits: median {self.digits_median():.1f}, min "
                         f"{float(np.min(self.digits)):.1f}")
        return "\n".join(lines)


# --- the jitted core --------------------------------------------------------------------------


def _step(pt: CSR, x, v, dw, dangling_mask, alpha):
    """One power iteration (plain jnp: rounded by ``emulate`` when it wraps it)."""
    dangling_mass = jnp.sum(jnp.where(dangling_mask, x, 0.0))
    return alpha * (pt @ x + dangling_mass * dw) + (1.0 - alpha) * v


def _in_format(fn, fmt_name: str):
    if fmt_name == "fp64":
        return fn
    return emulate(fn, PrecisionPolicy.uniform(fmt_name))


@functools.partial(jax.jit, static_argnames=("fmt", "max_iter"))
def _power_iteration(pt, v, dw, dangling_mask, alpha, tol, fmt: str, max_iter: int):
    """``(x, iterations, residuals, status)``; status 0 converged, 1 stalled, 2 max_iter."""
    step = _in_format(_step, fmt)
    n = v.shape[0]

    def cond(state):
        k, _, _, _, _, status = state
        return (k < max_iter) & (status < 0)

    def body(state):
        k, x, hist, anchor, since, _ = state
        x_new = step(pt, x, v, dw, dangling_mask, alpha)
        res = jnp.sum(jnp.abs(x_new - x))  # float64, outside the emulated step
        improved = res <= 0.5 * anchor
        anchor = jnp.where(improved, res, anchor)
        since = jnp.where(improved, 0, since + 1)
        status = jnp.where(res < tol, 0, jnp.where(since >= STALL_WINDOW, 1, -1))
        status = jnp.where((status < 0) & ~jnp.isfinite(res), 1, status)
        return k + 1, x_new, hist.at[k].set(res), anchor, since, status

    x0 = jnp.full(n, 1.0 / n, v.dtype)
    init = (jnp.asarray(0), x0, jnp.full(max_iter, jnp.nan, v.dtype), jnp.asarray(jnp.inf, v.dtype),
            jnp.asarray(0), jnp.asarray(-1))
    k, x, hist, _, _, status = lax.while_loop(cond, body, init)
    return x, k, hist, jnp.where(status < 0, 2, status)


def _fixed_iterations(pt, v, dw, dangling_mask, alpha, iterations: int):
    """``iterations`` power iterations from the uniform vector (what CESTAC analyses)."""
    x0 = jnp.full(v.shape[0], 1.0 / v.shape[0], v.dtype)
    return lax.fori_loop(0, iterations, lambda _, x: _step(pt, x, v, dw, dangling_mask, alpha),
                         x0)


# --- validation -------------------------------------------------------------------------------


def _distribution(value: Any, n: int, name: str) -> np.ndarray:
    out = np.asarray(value, np.float64)
    if out.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one weight per node), got {out.shape}")
    if not np.all(np.isfinite(out)) or np.any(out < 0) or not out.sum() > 0:
        raise ValueError(f"{name}: expected finite non-negative weights with a positive sum")
    return out / out.sum()


def _format_name(fmt: Any, name: str) -> str:
    try:
        return get_format(fmt).name
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{name}: {err}") from None


def _kendall_tau_top_k(ref: np.ndarray, low: np.ndarray, k: int) -> tuple[float, float]:
    """Kendall's tau-b (SciPy) of the two score vectors on the union of their top-``k`` node
    sets, and the share of ``ref``'s top-``k`` in ``low``'s."""
    from scipy.stats import kendalltau

    order = np.arange(len(ref))
    top_ref = np.lexsort((order, -ref))[:k]
    top_low = np.lexsort((order, -low))[:k]
    union = np.union1d(top_ref, top_low)
    tau = kendalltau(ref[union], low[union]).statistic
    return float(tau), len(np.intersect1d(top_ref, top_low)) / len(top_ref)


# --- the public function ----------------------------------------------------------------------


def pagerank(
    A: CSR | Any,
    *,
    alpha: float = 0.85,
    storage_format: str = "fp64",
    accumulation_format: str = "fp64",
    accumulation: str = "exact",
    tol: float = 1e-12,
    max_iter: int = 1000,
    personalization: Any = None,
    dangling: Any = None,
    cestac: bool = False,
    cestac_samples: int = 3,
    top_k: int = 10,
    key: jax.Array | None = None,
) -> PageRankResult:
    """PageRank scores of the graph with adjacency ``A`` by power iteration in chosen formats.

    Args:
      A: ``[n, n]`` :class:`~dp2ejax.sparse.CSR` (or SciPy sparse) adjacency, ``A[i, j]`` the
        non-negative weight of the edge ``i -> j`` (``networkx.to_scipy_sparse_array(G)``).
      alpha: the damping factor, in (0, 1).
      storage_format: format of the stored transition probabilities ``P``.
      accumulation_format: format of the arithmetic of each iteration (and so of the iterate).
      accumulation: ``"exact"`` (one rounding per row sum of ``P^T x``) or ``"sequential"``
        (every addition rounded).
      tol: stop when ``||x_{k+1} - x_k||_1 < tol`` (measured in float64).
      max_iter: the most iterations.
      personalization: ``[n]`` teleport weights (default uniform), normalised to sum 1.
      dangling: ``[n]`` weights the dangling nodes' rank goes to (default: personalization).
      cestac: also run :func:`dp2ejax.cestac.analyze` on the same number of iterations in the
        accumulation format (fills ``digits``).
      cestac_samples: CESTAC's number of samples (>= 2).
      top_k: the ranking agreement with fp64 is measured on the top ``top_k`` nodes.
      key: PRNG key of the CESTAC samples (default ``jax.random.key(0)``).

    Returns:
      A :class:`PageRankResult`; when a format is not fp64 the same iteration also runs in fp64
      and the result holds the agreement (Kendall tau of the top-k, overlap, max difference).

    Raises:
      ValueError: ``A`` not square, with negative, NaN or infinite weights; ``alpha`` outside
        (0, 1); bad ``personalization``/``dangling``; unknown format; non-positive ``tol``,
        ``max_iter``, ``top_k``.

    Example:
      >>> import jax, numpy as np
      >>> jax.config.update("jax_enable_x64", True)   # scores and residuals in float64
      >>> from dp2ejax.sparse import CSR
      >>> A = CSR.from_dense(np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0.0]]))  # 2 is dangling
      >>> r = pagerank(A)
      >>> r.status, np.round(r.scores, 4).tolist(), r.top(1).tolist()
      ('converged', [0.1976, 0.2816, 0.5209], [2])
    """
    import scipy.sparse as sp

    if not jax.config.jax_enable_x64:
        raise ValueError("pagerank computes on a float64 carrier, which JAX has disabled: call "
                         "jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) "
                         "before creating arrays")
    if sp.issparse(A):
        A = CSR.from_scipy(A, dtype=np.float64)
    if not isinstance(A, CSR):
        raise TypeError(f"A: expected a CSR (or scipy.sparse) adjacency, got {type(A).__name__}")
    n, m = A.shape
    if n != m:
        raise ValueError(f"A: expected a square adjacency, got shape {A.shape}")
    if n == 0:
        raise ValueError("A: expected a graph with at least one node, got shape (0, 0)")
    weights = np.asarray(A.data, np.float64)
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"A: contains {int(np.sum(~np.isfinite(weights)))} NaN or infinite "
                         "weight(s)")
    if np.any(weights < 0):
        raise ValueError(f"A: contains {int(np.sum(weights < 0))} negative weight(s); PageRank "
                         "needs non-negative edge weights")
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a damping factor in (0, 1), got {alpha!r}")
    if not float(tol) > 0:
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    for name, value, low in (("max_iter", max_iter, 1), ("top_k", top_k, 1),
                             ("cestac_samples", cestac_samples, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation: unknown model {accumulation!r}; known: "
                         f"{', '.join(ACCUMULATIONS)}")
    storage = _format_name(storage_format, "storage_format")
    acc = _format_name(accumulation_format, "accumulation_format")
    v = np.full(n, 1.0 / n) if personalization is None else _distribution(
        personalization, n, "personalization")
    dw = v if dangling is None else _distribution(dangling, n, "dangling")

    a64 = A.astype(jnp.float64)
    out_weight = np.asarray(a64.row_sums())
    dangling_mask = out_weight == 0
    inverse = np.where(dangling_mask, 1.0, 1.0 / np.where(dangling_mask, 1.0, out_weight))
    # "sequential" accumulation is the bucketed product's chain of additions; "exact" rounds
    # each row's segment sum once
    pt64 = a64.scale_rows(jnp.asarray(inverse)).transpose(buckets=accumulation != "exact")
    args = (jnp.asarray(v), jnp.asarray(dw), jnp.asarray(dangling_mask), jnp.asarray(alpha))

    def run(storage_name: str, acc_name: str):
        pt = pt64.with_data(round_to(pt64.data, storage_name))
        x, k, hist, status = _power_iteration(pt, *args, jnp.asarray(float(tol)), acc_name,
                                              max_iter)
        k = int(k)
        return pt, np.asarray(x, np.float64), k, np.asarray(hist)[:k], int(status)

    pt, scores, iterations, residuals, status = run(storage, acc)
    tau = overlap = diff = None
    k = min(top_k, n)
    if (storage, acc) != ("fp64", "fp64"):
        ref = run("fp64", "fp64")[1]
        tau, overlap = _kendall_tau_top_k(ref, scores, k)
        diff = float(np.max(np.abs(ref - scores)))
    digits = None
    if cestac:
        from dp2ejax.cestac import analyze

        fixed = functools.partial(_fixed_iterations, iterations=max(iterations, 1))
        analysis = analyze(fixed, pt, *args, fmt=acc, samples=cestac_samples, key=key)
        digits = np.asarray(analysis.digits, np.float64)
    return PageRankResult(
        scores=scores, status=PAGERANK_STATUSES[status], iterations=iterations,
        residuals=tuple(float(r) for r in residuals), alpha=alpha, tol=float(tol),
        storage_format=storage, accumulation_format=acc, accumulation=accumulation, top_k=k,
        kendall_tau_top_k=tau, top_k_overlap=overlap, max_abs_diff_fp64=diff, digits=digits)
