"""JAX specifics: jit with traced options, vmap, grad without unrolling, devices."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import softsort
from conftest import available

pytestmark = [pytest.mark.backend("jax"), pytest.mark.skipif(not available("jax"), reason="JAX backend not enabled")]
jax = pytest.importorskip("jax")
jnp = jax.numpy

X = np.random.default_rng(0).normal(size=(4, 12))


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_jit_with_traced_epsilon_q_and_weights() -> None:
    x = jnp.asarray(X)
    np.testing.assert_allclose(jax.jit(softsort.sort)(x, epsilon=1e-3), softsort.sort(x, epsilon=1e-3), atol=1e-9)
    np.testing.assert_allclose(jax.jit(softsort.quantile)(x, q=0.5), softsort.quantile(x, q=0.5), atol=1e-9)
    w = jnp.asarray([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(
        jax.jit(softsort.ranks)(x, target_weights=w), softsort.ranks(x, target_weights=w), atol=1e-9
    )
    top = jax.jit(functools.partial(softsort.sort, topk=5))(x)
    assert top.shape == (4, 5)
    static = jax.jit(softsort.sort, static_argnames=("topk",))(x, topk=3)
    np.testing.assert_allclose(static, softsort.sort(x, topk=3), atol=1e-9)


OPS = [
    softsort.sort,
    functools.partial(softsort.sort, topk=3),
    softsort.ranks,
    functools.partial(softsort.topk_mask, k=2),
    functools.partial(softsort.quantile, q=jnp.asarray([0.3, 0.9])),
    functools.partial(softsort.quantize, num_levels=3),
    functools.partial(softsort.quantile_normalization, targets=jnp.asarray([0.0, 1.0, 2.0])),
]


@pytest.mark.parametrize("op", OPS)
def test_vmap_equals_batched_call(op) -> None:
    x = jnp.asarray(X)
    np.testing.assert_allclose(jax.vmap(op)(x), op(x), atol=1e-9)
    np.testing.assert_allclose(jax.jit(jax.vmap(op))(x), op(x), atol=1e-9)


def test_vmap_over_epsilon_and_grad_of_vmap() -> None:
    x = jnp.asarray(X[0])
    eps = jnp.asarray([0.01, 0.1, 1.0])
    out = jax.vmap(lambda e: softsort.ranks(x, epsilon=e))(eps)
    for i in range(3):
        np.testing.assert_allclose(out[i], softsort.ranks(x, epsilon=float(eps[i])), atol=1e-9)
    g = jax.grad(lambda a: jnp.sum(jax.vmap(softsort.sort)(a) ** 2))(jnp.asarray(X))
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.slow  # JAX compiles a training step / long loops: slow set
def test_backward_memory_does_not_grow_with_iterations() -> None:
    """Implicit differentiation: the compiled gradient's buffers do not depend on max_iterations."""
    x = jnp.asarray(X)

    def temp_bytes(max_iterations: int) -> int:
        f = lambda a: jnp.sum(softsort.ranks(a, epsilon=1e-4, max_iterations=max_iterations, threshold=1e-12))
        analysis = jax.jit(jax.grad(f)).lower(x).compile().memory_analysis()
        return int(analysis.temp_size_in_bytes)

    assert temp_bytes(20) == temp_bytes(5000)


def test_outputs_stay_on_input_device() -> None:
    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2")
    x = jax.device_put(jnp.asarray(X), devices[1])
    for out in (softsort.sort(x), softsort.ranks(x), jax.jit(softsort.quantile)(x, q=0.5)):
        assert out.devices() == {devices[1]}
    g = jax.grad(lambda a: jnp.sum(softsort.ranks(a) ** 2))(x)
    assert g.devices() == {devices[1]}


@pytest.mark.slow  # JAX compiles a training step / long loops: slow set
def test_tutorial_training_step() -> None:
    """value_and_grad of the soft 0/1 loss on 1000x10 logits, jitted: finite, non-zero."""
    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (1000, 10), dtype=jnp.float32)
    labels = jax.random.randint(jax.random.PRNGKey(1), (1000,), 0, 10)
    one_hot = jax.nn.one_hot(labels, 10)

    @jax.jit
    def loss(z):
        r = softsort.ranks(z, axis=-1)
        return jnp.mean(jax.nn.relu(9.0 - jnp.sum(one_hot * r, axis=1)))

    value, grad = jax.jit(jax.value_and_grad(loss))(logits)
    assert bool(jnp.isfinite(value))
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0


def test_transport_result_is_a_pytree_under_jit() -> None:
    out = jax.jit(softsort.transport_for_sort)(jnp.asarray(X))
    assert out.plan.shape == (4, 12, 12)
    assert bool(jnp.all(out.converged))


def test_cpu_gradient_calls_no_lapack_kernel() -> None:
    """On a CPU the dense solves (Newton steps, the implicit backward) are array operations.

    jaxlib's batched LAPACK kernels wait on XLA's thread pool for their own tasks; two at once
    (two memory-budget chunks of ``value_and_grad`` of ranks over 4096 lists of 128, on one
    device and two cores) held every pool thread and hung for ever. The compiled gradient,
    here with two memory-budget chunks and cache chunks inside them, has no LAPACK call and
    gives NumPy's value and gradient.
    """
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU path")
    import re

    rows = np.random.default_rng(2).normal(size=(16, 32))
    cot = np.random.default_rng(3).normal(size=(16, 32))
    kwargs = dict(epsilon=1e-3, init="dual", memory_budget=8 * 6 * 32 * 32 * 8)  # 2 chunks of 8 rows
    ref_out, pullback = softsort.vjp(softsort.ranks, rows, **kwargs)

    def loss(a, c):
        return jnp.sum(softsort.ranks(a, **kwargs) * c)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(jnp.asarray(rows), jnp.asarray(cot)).compile()
    assert re.search(r"custom_call_target=\"lapack", compiled.as_text()) is None
    v, g = compiled(jnp.asarray(rows), jnp.asarray(cot))
    np.testing.assert_allclose(float(v), float(np.sum(ref_out * cot)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(g), pullback(cot), rtol=1e-6, atol=1e-8)
