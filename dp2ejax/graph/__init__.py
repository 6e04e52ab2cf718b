"""Graphs: data (``Graph``), normalised adjacencies, generators and loaders, GCN layers (Flax),
oversmoothing metrics and per-format oversmoothing profiles.

The propagation matrix ``P`` (e.g. ``D̃^-1/2 (A + I) D̃^-1/2``, :func:`normalized_adjacency`) is
a dense ``[n, n]`` array or a :class:`dp2ejax.sparse.CSR`.
"""

from dp2ejax.graph.data import Graph, SplitMasks
from dp2ejax.graph.gcn import (
    GCN,
    NORMS,
    GCNLayer,
    PairNorm,
    emulation_operator,
    propagate,
    train_node_classifier,
)
from dp2ejax.graph.generators import (
    NETWORKX_GRAPHS,
    barabasi_albert,
    chung_lu,
    contextual_sbm,
    erdos_renyi,
    networkx_graph,
    random_features,
    stochastic_block_model,
)
from dp2ejax.graph.io import (
    load_edge_list,
    load_graph,
    load_mtx,
    load_npz,
    save_edge_list,
    save_graph,
    save_mtx,
    save_npz,
)
from dp2ejax.graph.metrics import (
    dirichlet_energy,
    dominant_eigenspace,
    effective_rank,
    eigenspace_distance,
    leading_eigenvalue_magnitudes,
    mean_average_distance,
    numerical_rank,
    second_eigenvalue_magnitude,
)
from dp2ejax.graph.normalize import (
    NORMALIZATION_KINDS,
    add_self_loops,
    degrees,
    normalized_adjacency,
)
from dp2ejax.graph.oversmoothing import (
    DEFAULT_POLICIES,
    OversmoothingProfile,
    oversmoothing_profile,
)

__all__ = [
    "DEFAULT_POLICIES",
    "GCN",
    "NETWORKX_GRAPHS",
    "NORMALIZATION_KINDS",
    "NORMS",
    "GCNLayer",
    "Graph",
    "OversmoothingProfile",
    "PairNorm",
    "SplitMasks",
    "add_self_loops",
    "barabasi_albert",
    "chung_lu",
    "contextual_sbm",
    "degrees",
    "dirichlet_energy",
    "dominant_eigenspace",
    "effective_rank",
    "eigenspace_distance",
    "emulation_operator",
    "erdos_renyi",
    "leading_eigenvalue_magnitudes",
    "load_edge_list",
    "load_graph",
    "load_mtx",
    "load_npz",
    "mean_average_distance",
    "networkx_graph",
    "normalized_adjacency",
    "numerical_rank",
    "oversmoothing_profile",
    "propagate",
    "random_features",
    "save_edge_list",
    "save_graph",
    "save_mtx",
    "save_npz",
    "second_eigenvalue_magnitude",
    "stochastic_block_model",
    "train_node_classifier",
]
