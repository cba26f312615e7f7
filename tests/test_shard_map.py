"""``jax.shard_map`` over the batch: the loop state varies over the mesh axis like the data.

Before: ``while_loop body function carry input and carry output must have equal types``
(``int32[2]`` against ``int32[2]{V:b}``) for state made from constants. Needs
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort

pytestmark = pytest.mark.backend("jax")
jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.fixture
def mesh():
    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2")
    return jax.sharding.Mesh(np.array(devices[:2]), ("b",))


@pytest.mark.parametrize(
    ("name", "options", "jit"),
    [
        ("ranks", {}, True),
        ("sort", {}, True),
        ("ranks", {}, False),
        ("quantile", {"epsilon": 1e-3}, True),
        ("sort", {"implicit_diff": False}, True),
    ],
)
def test_shard_map_over_batch_matches_unsharded(mesh, name, options, jit):
    spec = jax.sharding.PartitionSpec("b")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 10)), dtype=jnp.float32)

    def fun(a):
        if name == "quantile":
            return softsort.quantile(a, jnp.asarray([0.3], dtype=a.dtype), **options)
        return getattr(softsort, name)(a, **options)

    sharded = jax.shard_map(fun, mesh=mesh, in_specs=spec, out_specs=spec)
    if jit:
        sharded = jax.jit(sharded)
    out = sharded(x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(fun(x)), rtol=1e-5, atol=1e-5)
    assert out.sharding.spec == spec
    assert len(out.sharding.device_set) == 2


def test_shard_map_gradient(mesh):
    spec = jax.sharding.PartitionSpec("b")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10)), dtype=jnp.float32)
    cot = jnp.asarray(np.random.default_rng(2).normal(size=(4, 10)), dtype=jnp.float32)
    sharded = jax.shard_map(softsort.ranks, mesh=mesh, in_specs=spec, out_specs=spec)
    g = jax.grad(lambda a: jnp.sum(sharded(a) * cot))(x)
    # the reference as one jitted program (eager, every operation of its backward compiles alone)
    ref = jax.jit(jax.grad(lambda a: jnp.sum(softsort.ranks(a) * cot)))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-4, atol=1e-4)
