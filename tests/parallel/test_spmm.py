"""Row-partitioned SpMM (all-gather and halo exchanges) on 8 host CPU devices: equal to the
single-device product, sharded as claimed, with the collectives expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from dp2ejax import graph
from dp2ejax.parallel import make_mesh
from dp2ejax.parallel.spmm import PartitionedCSR, collective_bytes
from dp2ejax.sparse import CSR


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 CPU devices)")


@pytest.fixture(scope="module")
def sbm():
    g = graph.stochastic_block_model([50, 50, 50, 50], p_in=0.1, p_out=0.005, seed=0)
    return graph.normalized_adjacency(g.adjacency, "gcn")


@pytest.fixture(scope="module")
def product():
    return jax.jit(lambda a, x: a @ x)


def random_square(n, density, seed, empty_rows=()):
    m = sp.random(n, n, density=density, format="lil", random_state=seed, dtype=np.float64)
    for r in empty_rows:
        m[r, :] = 0
    return CSR.from_scipy(m.tocsr())


@pytest.mark.parametrize("exchange", ["allgather", "halo"])
@pytest.mark.parametrize("mesh_axes", [{"rows": 8}, {"rows": 4, "data": 2}, {"data": 2, "rows": 4}])
def test_equals_single_device_product(sbm, product, exchange, mesh_axes):
    axis = "rows"
    mesh = make_mesh(mesh_axes)
    pa = PartitionedCSR.from_csr(sbm, mesh, axis, exchange=exchange)
    x = np.random.default_rng(1).standard_normal((sbm.n_rows, 6))
    y = product(pa, x)
    # Every row's terms are summed in the same order as the single-device segment-sum
    # product (the matrix's order within the row): bit for bit.
    np.testing.assert_array_equal(np.asarray(y), np.asarray(sbm.without_buckets() @ x))
    np.testing.assert_allclose(y, sbm.to_scipy() @ x, rtol=1e-12, atol=1e-15)
    assert y.sharding.spec[0] == axis
    assert {s.data.shape for s in y.addressable_shards} == {(sbm.n_rows // 4 if mesh.shape[
        axis] == 4 else sbm.n_rows // 8, 6)}


@pytest.mark.parametrize("exchange", ["allgather", "halo"])
def test_uneven_rows_empty_rows_vectors_and_grad(product, exchange):
    a = random_square(45, 0.08, 3, empty_rows=(0, 7, 44))  # 45 rows over 8 blocks of 6
    mesh = make_mesh({"rows": 8})
    pa = PartitionedCSR.from_csr(a, mesh, exchange=exchange)
    dense = np.asarray(a.todense())
    x = np.random.default_rng(2).standard_normal(45)
    np.testing.assert_allclose(product(pa, x), dense @ x, rtol=1e-12, atol=1e-15)
    w = np.random.default_rng(3).standard_normal((45, 3))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(pa @ x) * w[:, 0])))(x)
    want = dense.T @ ((1 - np.tanh(dense @ x) ** 2) * w[:, 0])
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14)


def test_compiled_program_exchanges_only_what_it_should(sbm, product):
    mesh = make_mesh({"rows": 8})
    x = jax.ShapeDtypeStruct((sbm.n_rows, 16), jnp.float32)
    texts = {}
    for exchange in ("allgather", "halo"):
        pa = PartitionedCSR.from_csr(sbm.astype(jnp.float32), mesh, exchange=exchange)
        texts[exchange] = (pa, product.lower(pa, x).compile().as_text())
    pa, text = texts["allgather"]
    assert "all-gather" in text and "collective-permute" not in text
    assert collective_bytes(text) == {"all-gather": sbm.n_rows * 16 * 4}
    pa, text = texts["halo"]
    # the halo exchange never gathers the operand: only permutes, one per round
    assert "all-gather" not in text and "all-to-all" not in text
    moved = collective_bytes(text)["collective-permute"]
    needed = pa.halo_rows * 16 * 4 / 8  # what a device needs on average, unpadded
    assert needed <= moved < 7 / 8 * sbm.n_rows * 16 * 4  # less than the all-gather receives
    assert text.count("collective-permute-start") + text.count(" collective-permute(") >= len(
        pa.shifts) >= 1


def test_community_order_needs_fewer_halo_rows(sbm):
    mesh = make_mesh({"rows": 8})
    ordered = PartitionedCSR.from_csr(sbm, mesh)
    perm = np.random.default_rng(0).permutation(sbm.n_rows)
    shuffled = PartitionedCSR.from_csr(CSR.from_scipy(sbm.to_scipy()[perm][:, perm]), mesh)
    assert ordered.halo_rows < shuffled.halo_rows / 2


def test_errors(sbm):
    mesh = make_mesh({"rows": 8})
    with pytest.raises(ValueError, match="axis 'nodes' is not a mesh axis"):
        PartitionedCSR.from_csr(sbm, mesh, "nodes")
    with pytest.raises(ValueError, match="exchange must be one of"):
        PartitionedCSR.from_csr(sbm, mesh, exchange="broadcast")
    with pytest.raises(ValueError, match="expected a square matrix"):
        PartitionedCSR.from_csr(CSR.from_dense(np.ones((4, 6))), mesh)
    with pytest.raises(TypeError, match="expected a dp2ejax.sparse.CSR"):
        PartitionedCSR.from_csr(np.eye(4), mesh)
    pa = PartitionedCSR.from_csr(sbm, mesh)
    with pytest.raises(ValueError, match=r"x: expected shape \[200\] or \[200, k\]"):
        pa @ np.ones((100, 2))


def test_collective_bytes_parses_tuples_and_comments():
    text = ("%a = (f32[1,5,16]{2,1,0}, /*index=1*/f32[1,5,16]{2,1,0}) all-to-all(%x, %y)\n"
            "%b = bf16[4]{0} collective-permute-start(%z), source_target_pairs={{0,1}}\n")
    assert collective_bytes(text) == {"all-to-all": 2 * 5 * 16 * 4, "collective-permute": 8}
