"""Newton steps on the semi-dual for small rows (:mod:`softsort._core._newton`).

The promise (docs/guarantees.rst): rows with ``n <= 64`` inputs and ``2 <= m <= 64``
targets converge to any threshold ``>= 1e-9`` (float64) within 200 iterations, near-ties
included; the fixed point (the plan) is plain Sinkhorn's; gradients are unchanged (they
come from the implicit rule at the fixed point).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from array_api_compat import array_namespace, device

import softsort
from conftest import Lib, available
from softsort._core import _newton, _sinkhorn
from softsort._core._config import SolverConfig
from softsort.backends import get_backend


def _rows(n: int, m: int, rows: int = 16, seed: int = 0, topk: bool = False):
    """Squashed inputs with near-ties (1e-6 and 1e-9 apart) in half the rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n))
    if n >= 3:
        x[::2, 1] = x[::2, 0] + 1e-6 * rng.normal(size=x[::2].shape[0])
        x[1::4, 2] = x[1::4, 0] + 1e-9
    z = 1.0 / (1.0 + np.exp(-(x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-10)))
    a = np.full((rows, n), 1.0 / n)
    if topk:  # a top-k mask: two targets [1 - k/n, k/n]
        k = max(1, n // 8)
        b = np.tile([1.0 - k / n, k / n], (rows, 1))
    else:
        b = np.full((rows, m), 1.0 / m)
    return z, a, b


def _solve(lib: Lib, z, a, b, epsilon: float, **options):
    backend = get_backend(lib.xp)
    z, a, b = (lib.asarray(v) for v in (z, a, b))
    xp = array_namespace(z)
    eps = xp.full((z.shape[0],), epsilon, dtype=z.dtype, device=device(z))
    return _sinkhorn.solve(backend, SolverConfig(**{"newton": True, **options}), z, a, b, eps)


def _needs_float64(lib: Lib) -> None:
    if not lib.float64:
        pytest.skip("the promise is for float64")


@pytest.mark.slow_on("jax")  # compile-bound under JAX: 12 configurations
@pytest.mark.parametrize(
    ("n", "m", "topk"), [(3, 3, False), (10, 10, False), (64, 64, False), (20, 2, True), (64, 2, True), (10, 5, False)]
)
@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_small_rows_converge_within_200_iterations(lib: Lib, n: int, m: int, topk: bool, epsilon: float) -> None:
    """Threshold 1e-9 in float64 in at most 200 iterations, near-ties included.

    Plain Sinkhorn needs up to 1300 iterations on these rows at epsilon 1e-2 (and more
    than 20,000 on x = [0, 1e-6, 1]).
    """
    _needs_float64(lib)
    z, a, b = _rows(n, m, topk=topk)
    out = _solve(lib, z, a, b, epsilon, threshold=1e-9, max_iterations=2000)
    iterations = lib.to_numpy(out.iterations)
    final = lib.to_numpy(out.final_error)
    assert iterations.max() <= 200, iterations
    assert np.all(final < 1e-9), final.max()


def test_near_tie_of_three(lib: Lib) -> None:
    """x = [0, 1e-6, 1] at epsilon 1e-2: plain Sinkhorn from zero (OTT-JAX's path) crawls, Newton reaches 1e-9 fast."""
    _needs_float64(lib)
    x = lib.asarray([[0.0, 1e-6, 1.0]])
    result = softsort.transport_for_sort(x, epsilon=1e-2, threshold=1e-9, newton=True)
    assert int(lib.to_numpy(result.iterations).max()) <= 200
    assert bool(np.all(lib.to_numpy(result.converged)))
    plain = _solve(
        lib,
        *_rows_of(lib.to_numpy(x)),
        1e-2,
        threshold=1e-6,
        max_iterations=2000,
        newton=False,
        init="zeros",
        momentum=1.0,
    )
    assert int(lib.to_numpy(plain.iterations)[0]) == 2000  # plain does not get there


def _rows_of(x: np.ndarray):
    z = 1.0 / (1.0 + np.exp(-(x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-10)))
    n = x.shape[-1]
    return z, np.full(x.shape, 1.0 / n), np.full(x.shape, 1.0 / n)


@pytest.mark.parametrize(("n", "m", "topk"), [(3, 3, False), (10, 10, False), (20, 2, True)])
def test_same_fixed_point_as_plain_sinkhorn(lib: Lib, n: int, m: int, topk: bool) -> None:
    """The plan Newton converges to is plain Sinkhorn's (both solved to 1e-12 / 1e-9)."""
    _needs_float64(lib)
    z, a, b = _rows(n, m, rows=8, topk=topk, seed=1)
    newton = _solve(lib, z, a, b, 1e-1, threshold=1e-12, max_iterations=2000)
    plain = _solve(lib, z, a, b, 1e-1, threshold=1e-12, max_iterations=20000, newton=False, momentum=1.0, init="zeros")
    assert np.all(lib.to_numpy(plain.final_error) < 1e-12)
    assert np.all(lib.to_numpy(newton.final_error) < 1e-12)
    np.testing.assert_allclose(lib.to_numpy(newton.plan), lib.to_numpy(plain.plan), atol=1e-11)
    # potentials: the same up to the gauge constant (f + c, g - c)
    f_n, f_p = lib.to_numpy(newton.f), lib.to_numpy(plain.f)
    shift = (f_n - f_p).mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(f_n - shift, f_p, atol=1e-9)


def test_fast_rows_keep_their_path(lib: Lib) -> None:
    """Rows that stop before NEWTON_AFTER are untouched: same results as without Newton."""
    z, a, b = _rows(10, 10, rows=32, seed=2)
    on = _solve(lib, z, a, b, 1e-1, threshold=1e-3)
    off = _solve(lib, z, a, b, 1e-1, threshold=1e-3, newton=False)
    assert lib.to_numpy(on.iterations).max() < _newton.NEWTON_AFTER
    for name in ("f", "g", "plan", "iterations", "errors", "final_error"):
        np.testing.assert_array_equal(lib.to_numpy(getattr(on, name)), lib.to_numpy(getattr(off, name)))


def test_iteration_accounting(lib: Lib) -> None:
    """A Newton step counts as one block: iterations stay on the check grid, max_iterations holds."""
    z, a, b = _rows(20, 2, rows=8, topk=True, seed=3)
    tight = 1e-9 if lib.float64 else 1e-5
    out = _solve(lib, z, a, b, 1e-2, threshold=tight, max_iterations=2000)
    its = lib.to_numpy(out.iterations)
    errors = lib.to_numpy(out.errors)
    assert np.all(its % 10 == 0)
    assert np.all((errors >= 0).sum(axis=-1) == its // 10)  # one logged error per check
    for cap in (105, 120):
        capped = _solve(lib, z, a, b, 1e-2, threshold=1e-14, max_iterations=cap)
        assert lib.to_numpy(capped.iterations).max() == cap
    at_least = _solve(lib, z, a, b, 1e-2, threshold=1e-3, min_iterations=150)
    assert lib.to_numpy(at_least.iterations).min() >= 150


def test_not_used_where_it_does_not_apply() -> None:
    """Unrolled differentiation, more than 64 targets, one target, d-dimensional rows: plain path."""
    base = SolverConfig()
    assert not _newton.applies(base, 10, 10, 2)  # off by default: the public option newton=True
    base = dataclasses.replace(base, newton=True)
    assert _newton.applies(base, 10, 10, 2)
    assert _newton.applies(dataclasses.replace(base, zero_weights=True), 10, 10, 2)  # mask=
    assert not _newton.applies(dataclasses.replace(base, newton=False), 10, 10, 2)
    assert not _newton.applies(dataclasses.replace(base, implicit_diff=False), 10, 10, 2)
    assert not _newton.applies(base, 10, _newton.NEWTON_MAX_TARGETS + 1, 2)
    assert not _newton.applies(base, 10, 1, 2)
    assert not _newton.applies(base, 10, 10, 3)


def test_gradient_unchanged(lib: Lib) -> None:
    """The implicit gradient at the fixed point: the same with and without Newton steps."""
    if lib.name not in ("numpy", "jax", "torch"):
        pytest.skip("gradients through softsort.vjp on NumPy, framework autodiff elsewhere")
    _needs_float64(lib)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 10))  # plain Sinkhorn: a few hundred iterations to 1e-9
    options = {"epsilon": 1e-2, "threshold": 1e-9}
    cot = rng.normal(size=(3, 10))

    def grad(newton: bool) -> np.ndarray:
        opts = {**options, "newton": newton, "max_iterations": 2000 if newton else 20000}
        return _grad_of_ranks(lib, x, cot, opts)

    np.testing.assert_allclose(grad(True), grad(False), rtol=1e-6, atol=1e-8)


def _grad_of_ranks(lib: Lib, x: np.ndarray, cot: np.ndarray, options: dict) -> np.ndarray:
    if lib.name == "numpy":
        _, pullback = softsort.vjp(softsort.ranks, lib.asarray(x), **options)
        return np.asarray(pullback(lib.asarray(cot)))
    if lib.name == "torch":
        xt = lib.asarray(x).requires_grad_(True)
        (softsort.ranks(xt, **options) * lib.asarray(cot)).sum().backward()
        return lib.to_numpy(xt.grad)
    import jax

    g = jax.grad(lambda v: (softsort.ranks(v, **options) * lib.asarray(cot)).sum())
    return lib.to_numpy(g(lib.asarray(x)))


@pytest.mark.skipif(not available("jax"), reason="needs jax")
def test_jit_and_vmap() -> None:
    """Under jax.jit and jax.vmap: the same results as eager (static shapes, lax loops)."""
    import jax
    import jax.numpy as jnp

    if not jax.config.jax_enable_x64:
        pytest.skip("float64 (JAX_ENABLE_X64=1)")
    z, a, b = _rows(20, 2, rows=4, topk=True, seed=4)
    backend = get_backend(jnp)
    config = SolverConfig(threshold=1e-9, newton=True)

    def one(z, a, b):
        out = _sinkhorn.solve(backend, config, z[None], a[None], b[None], jnp.full((1,), 1e-2))
        return out.plan[0], out.iterations[0]

    args = tuple(jnp.asarray(v) for v in (z, a, b))
    plan_v, its_v = jax.jit(jax.vmap(one))(*args)
    out = _sinkhorn.solve(backend, config, *args, jnp.full((4,), 1e-2))
    assert int(its_v.max()) <= 200
    np.testing.assert_allclose(np.asarray(plan_v), np.asarray(out.plan), atol=1e-10)
    np.testing.assert_array_equal(np.asarray(its_v), np.asarray(out.iterations))


def test_public_option(lib: Lib) -> None:
    """``newton=True`` on the public operators: a near-tie reaches 1e-9 within 200 iterations.

    Without it plain Sinkhorn from zero (OTT-JAX's path) stalls (the rows are returned with a
    ConvergenceWarning), and a value that is not a bool is refused with the option's name.
    """
    _needs_float64(lib)
    x = lib.asarray(np.array([[0.0, 1e-6, 1.0], [0.3, -1.2, 0.3 + 1e-7]]))
    out = softsort.transport_for_sort(x, epsilon=1e-2, threshold=1e-9, newton=True)
    assert bool(np.all(lib.to_numpy(out.converged)))
    assert int(lib.to_numpy(out.iterations).max()) <= 200
    with pytest.warns(softsort.ConvergenceWarning):
        softsort.ranks(x, epsilon=1e-2, threshold=1e-9, max_iterations=2000, init="zeros", momentum=1.0)
    r = softsort.ranks(x, epsilon=1e-2, threshold=1e-9, newton=True)
    np.testing.assert_allclose(lib.to_numpy(r), [[0.5, 0.5, 2.0], [1.5, 0.0, 1.5]], atol=1e-3)
    with pytest.raises(TypeError, match="newton"):
        softsort.ranks(x, newton="yes")
