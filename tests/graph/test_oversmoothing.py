"""Tests for dp2ejax.graph.oversmoothing: the linear-propagation profile against spectral theory
in float64, the precision floors of fp32/fp16/bf16 against their epsilons, CESTAC digits per
layer, model profiles, reports and errors.

The graph is a seeded two-block planted-partition SBM (networkx), 120 nodes, p_in = 0.3,
p_out = 0.02, GCN-normalised here with SciPy. Its spectrum (float64, NumPy): λ₁ = 1,
|λ₂| = 0.8905, |λ₃| = 0.3895, so the spectral gap λ₃/λ₂ = 0.437.

Why the ratio d_{ℓ+1}/d_ℓ of eigenspace distances is bounded by |λ₂|: P is symmetric, so with
x_0 = Σ_i v_i c_iᵀ in its orthonormal eigenbasis, d_ℓ² = Σ_{i≥2} λ_i^{2ℓ} ‖c_i‖² and
d_{ℓ+1}² <= |λ₂|² d_ℓ² exactly; the squared ratio is a weighted mean of λ_i² with weights
λ_i^{2ℓ}‖c_i‖², which only moves toward λ₂² as ℓ grows (early layers decay faster), and it
differs from λ₂² by at most (n - 2)(λ₃/λ₂)^{2ℓ} max_i ‖c_i‖²/‖c_2‖² — below 1e-15 from about
ℓ = 25 here. In float64 each propagation and the distance itself carry rounding errors of a
few units of 1.1e-16 relative to ‖x_ℓ‖; while d_ℓ / ‖x_ℓ‖ > 1e-4 (true up to ℓ = 60 here:
0.8905^60 = 9e-4) they move the ratio by ~1e-12 relative at most, so the bound is checked with
a 1e-9 relative tolerance, and convergence to |λ₂| to 1e-9 from layer 30 on.
"""

import json
import math

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax import PrecisionPolicy, Rule
from dp2ejax.graph import GCN, OversmoothingProfile, oversmoothing_profile
from dp2ejax.sparse import CSR

DEPTH = 200
KEY_DEPTH = 60
EPS = {"fp32": 2.0**-23, "fp16": 2.0**-10, "bf16": 2.0**-7}


def gcn_normalised(graph):
    a = nx.to_scipy_sparse_array(graph, format="csr", dtype=np.float64)
    a_tilde = a + sp.eye(a.shape[0])
    inv_sqrt = sp.diags(1 / np.sqrt(np.asarray(a_tilde.sum(axis=1)).ravel()))
    return sp.csr_matrix(inv_sqrt @ a_tilde @ inv_sqrt)


@pytest.fixture(scope="module")
def sbm():
    graph = nx.stochastic_block_model([60, 60], [[0.3, 0.02], [0.02, 0.3]], seed=1)
    assert nx.is_connected(graph)
    P = gcn_normalised(graph)
    magnitudes = np.sort(np.abs(np.linalg.eigvalsh(P.toarray())))[::-1]
    x = np.random.default_rng(0).standard_normal((P.shape[0], 8))
    return P, magnitudes, x


@pytest.fixture(scope="module")
def profile(sbm):
    P, _, x = sbm
    return oversmoothing_profile(CSR.from_scipy(P), x, depth=DEPTH,
                                 policies=("fp64", "fp32", "bf16", "fp16"))


def test_spectral_rate_is_scipys_second_eigenvalue(profile, sbm):
    _, magnitudes, _ = sbm
    assert magnitudes[0] == pytest.approx(1.0, abs=1e-12)
    assert profile.spectral_rate == pytest.approx(magnitudes[1], rel=1e-12)
    assert magnitudes[2] / magnitudes[1] < 0.45  # the gap the tolerances below rely on


def test_float64_decay_ratio_is_bounded_by_and_converges_to_lambda2(profile, sbm):
    _, magnitudes, _ = sbm
    lam2 = magnitudes[1]
    ratio = profile.decay_ratio["fp64"][:KEY_DEPTH]
    rel = profile.relative_distance["fp64"]
    assert rel[KEY_DEPTH] > 1e-4  # far above float64's rounding: see the module docstring
    assert np.all(ratio <= lam2 * (1 + 1e-9)), (ratio.max(), lam2)
    assert ratio[0] < 0.5 * lam2  # early layers decay much faster (0.21 here)
    assert np.all(np.diff(ratio) >= -1e-9 * lam2)  # the ratio only grows toward |λ₂|
    np.testing.assert_allclose(ratio[30:], lam2, rtol=1e-9)
    assert abs(ratio[KEY_DEPTH - 1] / lam2 - 1) < 1e-3


def test_low_precision_decay_stops_at_a_floor_near_epsilon(profile, sbm):
    """At a fixed point x = fl(P x) of nearest rounding, (I - P) x is the rounding error, of
    norm at most ~2u‖x‖ (products and sums each rounded once, u = eps/2), and the part of x
    outside the eigenspace is at most ‖(I - P) x‖ / (1 - |λ₂|): so the floor is below
    ~eps / (1 - |λ₂|) = 9 eps here. A floor far below eps would mean that the rounding errors
    cancel; they do not (measured: fp32 0.52, fp16 0.43, bf16 0.71 eps)."""
    _, magnitudes, _ = sbm
    lam2 = magnitudes[1]
    for name, eps in EPS.items():
        floor, depth = profile.floor[name], profile.floor_depth[name]
        assert floor is not None and depth is not None, name
        assert eps / 100 < floor < eps / (1 - lam2), (name, floor / eps)
        assert profile.floor_over_epsilon[name] == pytest.approx(floor / eps)
        assert profile.format_epsilon[name] == eps
        assert depth < DEPTH - profile.floor_window
        rel = profile.relative_distance[name]
        assert rel[depth] <= 2 * floor and np.all(rel[depth:] >= floor)
        # the decay had stopped: the last layers decay by less than 1% per layer
        assert np.all(profile.decay_ratio[name][-10:] > 0.99), name
    # lower formats stall earlier, higher
    assert profile.floor_depth["bf16"] < profile.floor_depth["fp16"] < profile.floor_depth["fp32"]
    # fp64 is still decaying at depth 200, far below fp32's floor
    assert profile.floor["fp64"] is None
    assert profile.relative_distance["fp64"][-1] < profile.floor["fp32"] / 100


def test_collapse_depth_and_other_metrics(profile, sbm):
    _, magnitudes, _ = sbm
    rel = profile.relative_distance["fp64"]
    collapse = profile.collapse_depth["fp64"]
    assert rel[collapse] <= 1e-3 * rel[0] < rel[collapse - 1]
    # after the fast first layers the decay is |λ₂| per layer: at most 1 + log(1e-3)/log|λ₂|
    # layers plus the sqrt(n) the feature norm shrinks by
    assert collapse <= 1 + math.log(1e-3 / math.sqrt(120)) / math.log(magnitudes[1])
    for name in profile.policies:
        energy = profile.dirichlet_energy[name]
        assert energy.shape == (DEPTH + 1,) and profile.decay_ratio[name].shape == (DEPTH,)
        assert energy[-1] < 1e-3 * energy[0]
        assert profile.mad[name][-1] < 1e-3 * profile.mad[name][0]
        assert profile.effective_rank[name][0] > 6 and profile.effective_rank[name][-1] < 1.5
        assert profile.numerical_rank[name][0] == 8
        # the λ₂ component left (rel. 1e-10 in fp64) is above float64's resolution only
        assert profile.numerical_rank[name][-1] == (2 if name == "fp64" else 1), name
    assert profile.digits_min == {} and profile.no_digits_depth["fp16"] is None


def test_dense_and_csr_propagation_give_the_same_profile(sbm, profile):
    P, _, x = sbm
    dense = oversmoothing_profile(P.toarray(), x, depth=20, policies=("fp64",))
    np.testing.assert_allclose(dense.eigenspace_distance["fp64"],
                               profile.eigenspace_distance["fp64"][:21], rtol=1e-10)


def test_reports(profile):
    data = json.loads(profile.to_json())
    assert data["depth"] == DEPTH and list(data["policies"]) == ["fp64", "fp32", "bf16", "fp16"]
    bf16 = data["policies"]["bf16"]
    assert bf16["floor"] == profile.floor["bf16"] and len(bf16["layers"]["mad"]) == DEPTH + 1
    assert data["policies"]["fp64"]["floor"] is None
    assert profile.for_policy("fp16")["floor_depth"] == profile.floor_depth["fp16"]
    lines = profile.summary().splitlines()
    assert len(lines) == 2 + 4 and lines[3].startswith("fp32")
    with pytest.raises(KeyError, match="no policy 'fp8'"):
        profile.for_policy("fp8")


@pytest.fixture(scope="module")
def cestac_profile(sbm):
    P, _, x = sbm
    return oversmoothing_profile(P.toarray(), x, depth=KEY_DEPTH, policies=("bf16",),
                                 cestac=True)


def test_cestac_digits_fall_with_depth_in_a_low_format(cestac_profile):
    profile = cestac_profile
    residual = profile.residual_digits_median["bf16"]
    features = profile.digits_median["bf16"]
    assert residual.shape == features.shape == (KEY_DEPTH + 1,)
    assert residual[0] >= 2.4 and residual[-1] == 0  # bf16 carries 2.4 digits
    # weakly decreasing: never more than 0.3 digit above an earlier layer (CESTAC with 3
    # samples is noisy), and 2 digits lost over the run
    assert np.all(residual <= np.minimum.accumulate(residual) + 0.3)
    assert np.all(np.diff(profile.residual_digits_min["bf16"][1:]) <= 0.8)
    # the features themselves keep ~2 digits: what is lost is what tells nodes apart
    assert np.all(features[1:] > 1.5) and np.all(features <= features[0] + 1e-12)
    no_digits = profile.no_digits_depth["bf16"]
    assert no_digits is not None and residual[no_digits] == 0 and residual[no_digits - 1] > 0
    # the digits run out where the decay reaches the bf16 floor (layer ~45)
    assert abs(no_digits - profile.floor_depth["bf16"]) <= 15


def test_model_profile_per_layer_policy():
    graph = nx.Graph(nx.karate_club_graph().edges())
    P = gcn_normalised(graph).toarray()
    x = np.random.default_rng(0).standard_normal((34, 4))
    model = GCN(hidden=8, num_classes=2, depth=5)
    params = model.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(P))
    policies = {"fp64": "fp64",
                "layer_2_fp8": PrecisionPolicy(default="fp64",
                                               rules=[Rule("fp8_e4m3", path="layer_2")])}
    profile = oversmoothing_profile(P, x, model=model, params=params, policies=policies)
    assert isinstance(profile, OversmoothingProfile)
    assert profile.source == "model" and profile.depth == 5 and profile.n_features == 8
    ref, mixed = profile.eigenspace_distance["fp64"], profile.eigenspace_distance["layer_2_fp8"]
    np.testing.assert_array_equal(ref[:3], mixed[:3])  # h_0 .. h_2: before layer_2
    assert not np.allclose(ref[3:], mixed[3:], rtol=1e-3)
    assert profile.format_epsilon["layer_2_fp8"] == 2.0**-3
    with pytest.raises(ValueError, match="depth: 4 does not match the model's 5 layers"):
        oversmoothing_profile(P, x, depth=4, model=model, params=params, policies=("fp64",))


def test_errors_name_the_cause(sbm):
    P, _, x = sbm
    with pytest.raises(ValueError, match=r"depth: expected an int >= 1"):
        oversmoothing_profile(P, x, depth=0)
    with pytest.raises(ValueError, match=r"depth: expected an int >= 1"):
        oversmoothing_profile(P, x, depth=2.5)
    with pytest.raises(ValueError, match=r"policies\['fp7'\]: unknown format 'fp7'; known"):
        oversmoothing_profile(P, x, depth=3, policies=("fp32", "fp7"))
    with pytest.raises(ValueError, match=r"P: expected a propagation matrix of shape \(120, "
                                         r"120\) to match x with 120 nodes, got shape \(5, 5\)"):
        oversmoothing_profile(np.eye(5), x, depth=3)
    with pytest.raises(ValueError, match=r"x: expected float node features of shape \[n, f\]"):
        oversmoothing_profile(P, x[:, 0], depth=3)
    with pytest.raises(ValueError, match="params: the model's variables are required"):
        oversmoothing_profile(P, x, model=GCN(4, 2, 2))
    with pytest.raises(ValueError, match="policies: the name 'fp32' appears twice"):
        oversmoothing_profile(P, x, depth=3, policies=("fp32", "fp32"))


@pytest.mark.skipif(not hasattr(jax, "enable_x64"), reason="needs the jax.enable_x64 context")
def test_fp64_without_x64_names_the_setting(sbm):
    P, _, x = sbm
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"policies\['fp64'\]: format 'fp64' needs "
                                             r"float64.*jax_enable_x64"):
            oversmoothing_profile(P, np.float32(x), depth=3)
        small = oversmoothing_profile(P, np.float32(x), depth=3, policies=("bf16",))
        assert small.eigenspace_distance["bf16"].dtype == np.float32
