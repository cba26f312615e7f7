"""Every gradient path against central finite differences in float64.

Cotangents and directions are random and independent of the inputs (a gradient helper
tested only with cotangent = input can hide a factor of two). NumPy and array-api-strict
go through ``softsort.vjp`` (the hand-written backward); JAX through ``jax.vjp`` (also
under ``jax.jit``); PyTorch through autograd. All share the core's implicit backward.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

TIGHT = {"threshold": 1e-12, "max_iterations": 50000}
RNG = np.random.default_rng(1234)
X = RNG.normal(size=(2, 7))


def cases():
    """(id, fun, kwargs) for every operator and every option that changes the backward."""
    return [
        ("sort", softsort.sort, {}),
        ("sort-eps", softsort.sort, {"epsilon": 0.05}),
        ("sort-topk", softsort.sort, {"topk": 3}),
        ("sort-num_targets", softsort.sort, {"num_targets": 4}),
        ("sort-num_targets-large", softsort.sort, {"num_targets": 11}),
        ("ranks", softsort.ranks, {}),
        ("ranks-num_targets", softsort.ranks, {"num_targets": 3}),
        ("ranks-target_weights", softsort.ranks, {"target_weights": np.array([0.1, 0.2, 0.3, 0.4])}),
        ("topk_mask", functools.partial(softsort.topk_mask, k=2), {}),
        ("quantile", softsort.quantile, {"q": np.array([0.7, 0.2])}),
        ("quantile-weight", softsort.quantile, {"q": 0.5, "weight": 0.1}),
        ("quantize", softsort.quantize, {"num_levels": 3}),
        ("quantile_normalization", softsort.quantile_normalization, {"targets": np.array([-1.0, 0.5, 2.0])}),
        ("implicit-cg", softsort.ranks, {"implicit_solver": "cg"}),
    ]


def _convert(lib: Lib, kwargs: dict) -> dict:
    return {k: lib.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def value_and_vjp(lib: Lib, fun, x: np.ndarray, cot: np.ndarray, kwargs: dict):
    """(value, gradient of <cot, fun(x)>) through the backend's own gradient machinery."""
    kw = _convert(lib, kwargs)
    if lib.backend is Backend.JAX:
        import jax

        out, pull = jax.vjp(lambda a: fun(a, **kw), lib.asarray(x))
        return np.asarray(out), np.asarray(pull(lib.asarray(cot))[0])
    if lib.backend is Backend.TORCH:
        import torch

        xt = lib.asarray(x).requires_grad_(True)
        out = fun(xt, **kw)
        (g,) = torch.autograd.grad(out, xt, lib.asarray(cot))
        return lib.to_numpy(out), lib.to_numpy(g)
    base = fun.func if isinstance(fun, functools.partial) else fun
    extra = fun.keywords if isinstance(fun, functools.partial) else {}
    out, pull = softsort.vjp(base, lib.asarray(x), **extra, **kw)
    return lib.to_numpy(out), lib.to_numpy(pull(lib.asarray(cot)))


def numeric(lib: Lib, fun, x: np.ndarray, cot: np.ndarray, direction: np.ndarray, kwargs: dict, h: float = 1e-5):
    kw = _convert(lib, kwargs)

    def f(a):
        return float(np.sum(cot * lib.to_numpy(fun(lib.asarray(a), **kw))))

    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize(("name", "fun", "kwargs"), cases(), ids=[c[0] for c in cases()])
def test_gradient_matches_finite_differences(lib: Lib, name, fun, kwargs) -> None:
    if not lib.float64:
        pytest.skip("finite differences need float64")
    kwargs = {**TIGHT, "epsilon": 0.1, **kwargs}
    out0 = lib.to_numpy(fun(lib.asarray(X), **_convert(lib, kwargs)))
    cot = RNG.normal(size=out0.shape)
    out, grad = value_and_vjp(lib, fun, X, cot, kwargs)
    np.testing.assert_allclose(out, out0, rtol=1e-10, atol=1e-12)
    for seed in range(2):
        direction = np.random.default_rng(seed).normal(size=X.shape)
        expected = numeric(lib, fun, X, cot, direction, kwargs)
        assert np.sum(grad * direction) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_sort_with_gradient(lib: Lib) -> None:
    if not lib.float64:
        pytest.skip("finite differences need float64")
    rows = RNG.normal(size=(6, 3))
    crit = lib.asarray(RNG.normal(size=6))
    kw = {**TIGHT, "epsilon": 0.1, "topk": 4}
    fun = lambda r, **k: softsort.sort_with(r, crit, **k)
    out0 = lib.to_numpy(fun(lib.asarray(rows), **kw))
    cot = RNG.normal(size=out0.shape)
    if lib.backend in (Backend.JAX, Backend.TORCH):
        _, grad = value_and_vjp(lib, fun, rows, cot, kw)
    else:
        _, pull = softsort.vjp(softsort.sort_with, lib.asarray(rows), crit, **kw)
        grad = lib.to_numpy(pull(lib.asarray(cot)))
    direction = RNG.normal(size=rows.shape)
    assert np.sum(grad * direction) == pytest.approx(numeric(lib, fun, rows, cot, direction, kw), rel=1e-6)


def test_squashing_fun_gradient(lib: Lib) -> None:
    """A custom squashing function is differentiated by the framework (JAX, PyTorch)."""
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("needs a framework with autodiff, in float64")
    xp = lib.xp
    squash = lambda z: 1.0 / (1.0 + xp.exp(-2.0 * z))
    kw = {**TIGHT, "epsilon": 0.1, "squashing_fun": squash}
    cot = RNG.normal(size=X.shape)
    _, grad = value_and_vjp(lib, softsort.ranks, X, cot, kw)
    direction = RNG.normal(size=X.shape)
    assert np.sum(grad * direction) == pytest.approx(numeric(lib, softsort.ranks, X, cot, direction, kw), rel=1e-5)


def test_implicit_equals_unrolled(lib: Lib) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("unrolled differentiation needs a framework with autodiff")
    cot = RNG.normal(size=X.shape)
    kw = {"threshold": 1e-12, "max_iterations": 3000, "epsilon": 0.1}
    _, g_implicit = value_and_vjp(lib, softsort.ranks, X, cot, kw)
    _, g_unrolled = value_and_vjp(lib, softsort.ranks, X, cot, {**kw, "implicit_diff": False})
    np.testing.assert_allclose(g_implicit, g_unrolled, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("momentum", [1.0, 1.5])
@pytest.mark.parametrize("init", ["dual", "zeros"])
def test_unrolled_truncated_solve_matches_finite_differences(lib: Lib, init: str, momentum: float) -> None:
    """Unrolled through a fixed 10 iterations, the gradient is that of the truncated solve.

    From the exact-dual start too (the default of sort and ranks below epsilon 0.05): the
    start enters the iterates once, through the scalings, not again through the kernel.
    Fixed momentum only: the adaptive factor is steered by non-differentiated errors.
    """
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("unrolled differentiation needs a framework with autodiff")
    kw = {"epsilon": 1e-2, "init": init, "momentum": momentum, "implicit_diff": False, "max_iterations": 10}
    cot = RNG.normal(size=X.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after 10 iterations, by design
        for fun in (softsort.sort, softsort.ranks):
            _, grad = value_and_vjp(lib, fun, X, cot, kw)
            direction = np.random.default_rng(7).normal(size=X.shape)
            expected = numeric(lib, fun, X, cot, direction, kw, h=1e-6)
            assert np.sum(grad * direction) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.slow  # JAX compiles each input's gradient; test_grad_inputs.py checks them by finite differences
@pytest.mark.backend("jax")
def test_gradient_wrt_target_weights_and_q() -> None:
    """Gradients with respect to traced weights and quantile levels (JAX)."""
    jax = pytest.importorskip("jax")
    if not jax.config.jax_enable_x64:
        pytest.skip("needs JAX_ENABLE_X64")
    jnp = jax.numpy
    x = jnp.asarray(X[0])
    cot = jnp.asarray(RNG.normal(size=7))
    kw = {**TIGHT, "epsilon": 0.1}

    def via_logits(theta):  # weights parameterized on the simplex
        return jnp.sum(cot * softsort.ranks(x, target_weights=jax.nn.softmax(theta), **kw))

    theta = jnp.asarray([0.1, -0.3, 0.5, 0.2])
    g = jax.grad(via_logits)(theta)
    d = jnp.asarray(RNG.normal(size=4))
    h = 1e-5
    fd = (via_logits(theta + h * d) - via_logits(theta - h * d)) / (2 * h)
    assert float(jnp.sum(g * d)) == pytest.approx(float(fd), rel=1e-5)

    def via_q(q):
        return jnp.sum(softsort.quantile(x, q, **kw) * jnp.asarray([1.0, -2.0]))

    q = jnp.asarray([0.3, 0.75])
    gq = jax.grad(via_q)(q)
    fdq = [(via_q(q.at[i].add(h)) - via_q(q.at[i].add(-h))) / (2 * h) for i in range(2)]
    np.testing.assert_allclose(np.asarray(gq), np.asarray(fdq), rtol=1e-4)


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3, 1e-4])
def test_float32_gradients_finite(lib: Lib, epsilon: float) -> None:
    """float32, small epsilon, constant and tied rows: no NaN anywhere."""
    x = np.stack([RNG.normal(size=8), np.full(8, 3.0), np.array([1, 1, 2, 2, 3, 3, 3, 0.0])])
    cot = RNG.normal(size=x.shape)
    lib32 = lib._replace(float64=False)
    for fun in (softsort.sort, softsort.ranks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", softsort.ConvergenceWarning)
            out, grad = value_and_vjp(lib32, fun, x.astype(np.float32), cot.astype(np.float32), {"epsilon": epsilon})
        assert np.all(np.isfinite(out))
        assert np.all(np.isfinite(grad))
