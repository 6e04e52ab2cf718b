"""The docstring examples of the public modules run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "dp2ejax.arith.formats",
    "dp2ejax.arith.rounding",
    "dp2ejax.arith.random_bits",
    "dp2ejax.arith.policy",
    "dp2ejax.arith.emulate",
    "dp2ejax.arith.posit",
    "dp2ejax.arith.blockscaled",
    "dp2ejax.arith.integer",
    "dp2ejax.attention.kernel",
    "dp2ejax.attention.layers",
    "dp2ejax.attention.mask",
    "dp2ejax.attention.patterns",
    "dp2ejax.cestac.digits",
    "dp2ejax.cestac.analyze",
    "dp2ejax.cestac.layers",
    "dp2ejax.config",
    "dp2ejax.graph.data",
    "dp2ejax.graph.gcn",
    "dp2ejax.graph.generators",
    "dp2ejax.graph.io",
    "dp2ejax.graph.metrics",
    "dp2ejax.graph.normalize",
    "dp2ejax.graph.oversmoothing",
    "dp2ejax.linalg.eigs",
    "dp2ejax.linalg.matrices",
    "dp2ejax.linalg.pagerank",
    "dp2ejax.linalg.refine",
    "dp2ejax.linalg.svd",
    "dp2ejax.parallel.checkpoint",
    "dp2ejax.parallel.distributed",
    "dp2ejax.parallel.mesh",
    "dp2ejax.parallel.spmm",
    "dp2ejax.parallel.transformer",
    "dp2ejax.report.figures",
    "dp2ejax.report.sections",
    "dp2ejax.report.serialize",
    "dp2ejax.report.write",
    "dp2ejax.sparse.buckets",
    "dp2ejax.sparse.coo",
    "dp2ejax.sparse.csr",
    "dp2ejax.tune.cost",
    "dp2ejax.tune.criteria",
    "dp2ejax.tune.space",
    "dp2ejax.tune.tuner",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
