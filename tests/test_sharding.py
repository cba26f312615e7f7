"""JAX arrays sharded over the batch (``NamedSharding`` on a 2-device mesh of host CPUs).

Eager, under ``jax.jit`` and inside ``jax.shard_map``: the output and the gradient keep the
input's sharding, and each device solves only its own rows: in the compiled program every
array with a batch axis holds half the rows (the plans are ``[3, 5, 5]`` per device, no array
has the 6 rows of the whole batch). The collectives' names do not tell: XLA on CPU rewrites a
gather as an all-reduce, and the convergence test needs an all-reduce of its flag anyway.
Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import softsort
from conftest import available

pytestmark = pytest.mark.skipif(not available("jax"), reason="jax not enabled")

B, N = 6, 5
ROWS = np.random.default_rng(0).normal(size=(B, N))
COT = np.random.default_rng(1).normal(size=(B, N))
# References from NumPy (softsort.vjp), which compiles nothing.
REF_OUT, _pullback = softsort.vjp(softsort.ranks, ROWS, epsilon=0.1)
REF_GRAD = _pullback(COT)
#: an array of the whole batch in HLO text: B rows (or B * N, the batch times the axis, flattened)
WHOLE_BATCH = re.compile(rf"\b[fsu]\d+\[({B}|{B * N})[,\]]")
OWN_PLAN = f"f64[{B // 2},{N},{N}]"


def assert_solves_own_rows(compiled) -> None:
    hlo = compiled.as_text()
    assert OWN_PLAN in hlo, "the per-device plan is missing: is the input sharded?"
    found = WHOLE_BATCH.search(hlo)
    assert found is None, f"an array of the whole batch in the compiled program: {found.group(0)}"


@pytest.fixture(scope="module")
def mesh():
    import jax

    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices: XLA_FLAGS=--xla_force_host_platform_device_count=2")
    return jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))


def shard(mesh, values):
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return jax.device_put(jax.numpy.asarray(values), NamedSharding(mesh, P("batch", None)))


def assert_own_rows(out, x) -> None:
    """``out`` is laid out like ``x``: each device holds the result of exactly its rows."""
    assert out.sharding.is_equivalent_to(x.sharding, x.ndim), (out.sharding, x.sharding)
    mine = {s.device: s.index for s in x.addressable_shards}
    for s in out.addressable_shards:
        assert s.index == mine[s.device]
        assert s.data.shape == (x.shape[0] // 2, *out.shape[1:])


def loss(x, cot):
    import jax.numpy as jnp

    return jnp.sum(softsort.ranks(x, epsilon=0.1) * cot)


def test_eager_value_and_gradient_keep_sharding(mesh) -> None:
    import jax

    x = shard(mesh, ROWS)
    out = softsort.ranks(x, epsilon=0.1)
    assert_own_rows(out, x)
    g = jax.grad(loss)(x, shard(mesh, COT))
    assert_own_rows(g, x)
    np.testing.assert_allclose(np.asarray(out), REF_OUT, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g), REF_GRAD, atol=1e-10)


@pytest.mark.slow
def test_jit_keeps_sharding_and_solves_own_rows(mesh) -> None:
    import jax

    x = shard(mesh, ROWS)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(x, shard(mesh, COT)).compile()
    assert_solves_own_rows(compiled)
    v, g = compiled(x, shard(mesh, COT))
    assert_own_rows(g, x)
    np.testing.assert_allclose(float(v), float(np.sum(REF_OUT * COT)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), REF_GRAD, atol=1e-10)


@pytest.mark.slow
def test_shard_map_gradient_keeps_sharding(mesh) -> None:
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    x = shard(mesh, ROWS)
    per_device = jax.shard_map(
        lambda a: softsort.ranks(a, epsilon=0.1), mesh=mesh, in_specs=P("batch"), out_specs=P("batch")
    )
    cot = shard(mesh, COT)
    compiled = jax.jit(jax.grad(lambda a, c: jnp.sum(per_device(a) * c))).lower(x, cot).compile()
    assert_solves_own_rows(compiled)
    g = compiled(x, cot)
    assert_own_rows(g, x)
    np.testing.assert_allclose(np.asarray(g), REF_GRAD, atol=1e-10)


@pytest.mark.slow
def test_jit_gradient_at_small_epsilon_solves_without_lapack_calls(mesh) -> None:
    """The implicit backward's dense solve, on a batch large enough for LAPACK to go parallel.

    jaxlib's batched LU splits such a batch into tasks on XLA's thread pool and blocks a pool
    thread until they finish; two host devices doing so at once on two cores hung for ever
    (16 rows of 32, epsilon 1e-3: the exact-dual start). On several host devices the adapter
    solves by elimination instead: the compiled program has no LAPACK call, keeps each device
    on its own rows, and gives NumPy's value and gradient.
    """
    import jax
    import jax.numpy as jnp

    rows = np.random.default_rng(2).normal(size=(16, 32))
    cot = np.random.default_rng(3).normal(size=(16, 32))
    kwargs = dict(epsilon=1e-3, init="dual")
    ref_out, pullback = softsort.vjp(softsort.ranks, rows, **kwargs)

    def small_eps_loss(a, c):
        return jnp.sum(softsort.ranks(a, **kwargs) * c)

    x, c = shard(mesh, rows), shard(mesh, cot)
    compiled = jax.jit(jax.value_and_grad(small_eps_loss)).lower(x, c).compile()
    hlo = compiled.as_text()
    assert re.search(r"custom_call_target=\"lapack", hlo) is None
    assert "f64[8,32,32]" in hlo
    assert re.search(r"\bf64\[16,32,32\]", hlo) is None
    v, g = compiled(x, c)
    assert_own_rows(g, x)
    np.testing.assert_allclose(float(v), float(np.sum(ref_out * cot)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(g), pullback(cot), atol=1e-7)
