"""JAX arrays sharded over several devices: eager calls work and keep the input's sharding.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two host CPU devices).
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import available

pytestmark = [pytest.mark.backend("jax"), pytest.mark.skipif(not available("jax"), reason="jax not enabled")]


@pytest.fixture
def sharded():
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices: XLA_FLAGS=--xla_force_host_platform_device_count=2")
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    values = np.random.default_rng(0).normal(size=(4, 6))
    return values, jax.device_put(jax.numpy.asarray(values), NamedSharding(mesh, P("batch", None)))


CALLS = {
    "sort": lambda x, jnp: softsort.sort(x),
    "ranks": lambda x, jnp: softsort.ranks(x),
    "topk_mask": lambda x, jnp: softsort.topk_mask(x, 2),
    "quantize": lambda x, jnp: softsort.quantize(x, num_levels=3),
    "quantile_normalization": lambda x, jnp: softsort.quantile_normalization(x, jnp.linspace(0.0, 1.0, 3)),
    "sort_with": lambda x, jnp: softsort.sort_with(x[..., None], x)[..., 0],
}


@pytest.mark.parametrize("name", list(CALLS))
def test_eager_sharded_input_keeps_sharding(sharded, name: str) -> None:
    import jax
    import jax.numpy as jnp

    values, x = sharded
    call = CALLS[name]
    out = call(x, jnp)
    assert out.sharding.is_equivalent_to(x.sharding, x.ndim), (out.sharding, x.sharding)
    # The same numbers as the unsharded input, eager and jitted.
    plain = call(jnp.asarray(values), jnp)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-10, atol=1e-12)
    jitted = jax.jit(lambda a: call(a, jnp))(x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(plain), rtol=1e-10, atol=1e-12)


def test_eager_sharded_epsilon_and_weights(sharded) -> None:
    import jax.numpy as jnp

    values, x = sharded
    out = softsort.ranks(x, epsilon=jnp.asarray(0.05), target_weights=jnp.full(3, 1 / 3))
    ref = softsort.ranks(jnp.asarray(values), epsilon=0.05, num_targets=3)
    assert out.sharding.is_equivalent_to(x.sharding, x.ndim)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-10, atol=1e-12)
    t = softsort.transport_for_sort(x)
    assert bool(np.all(np.asarray(t.converged)))
