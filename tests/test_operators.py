"""Operators on every backend: hard limits, properties, shapes, dtypes and devices.

Functions tagged with ``lazy_xp_function`` run under ``jax.jit`` on the JAX backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_extra.testing import lazy_xp_function

import softsort
from conftest import Backend, Lib
from softsort import quantile, quantile_normalization, quantize, ranks, sort, sort_with, topk_mask

for _f in (sort, ranks, quantile, topk_mask, quantize, quantile_normalization, sort_with):
    lazy_xp_function(_f)

IDENTITY = {"squashing_fun": lambda z: z}
TIGHT = {"threshold": 1e-6, "max_iterations": 20000}


def tight(lib: Lib) -> dict:
    """A threshold each precision can reach."""
    return {"threshold": 1e-5 if lib.float64 else 1e-4, "max_iterations": 20000}


X5 = [1.0, 5.0, 4.0, 8.0, 12.0]


def close(lib: Lib, actual, desired, atol: float, rtol: float = 0.0) -> None:
    if not lib.float64:  # float32 backends: loosen to single precision
        atol, rtol = max(atol, 5e-5), max(rtol, 1e-4)
    np.testing.assert_allclose(lib.to_numpy(actual), np.asarray(desired), atol=atol, rtol=rtol)


def sample(n: int, batch: tuple[int, ...] = (), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(*batch, n))


# -- hard limits as epsilon -> 0 (identity squashing on spread-out inputs) ------------------------
def spread(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of well separated values in [0, 1]."""
    return np.random.default_rng(seed).permutation(np.linspace(0.0, 1.0, n))


HARD = {"threshold": 1e-4, "max_iterations": 20000}


def test_sort_hard_limit(lib: Lib) -> None:
    x = spread(8)
    out = sort(lib.asarray(x), epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, np.sort(x), atol=5e-3)


def test_ranks_hard_limit(lib: Lib) -> None:
    x = spread(8)
    out = ranks(lib.asarray(x), epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, np.argsort(np.argsort(x)), atol=1e-2)


def test_quantile_hard_limit(lib: Lib) -> None:
    x = spread(11)
    out = quantile(lib.asarray(x), lib.asarray([0.5, 0.15]), epsilon=1e-3, **IDENTITY, **HARD)
    # With 11 values the small targets (mass 0.02 around 0.5 and 0.15) sit inside the
    # masses of the 6th and 2nd sorted values.
    close(lib, out, np.sort(x)[[5, 1]], atol=1e-2)


def test_topk_mask_hard_limit(lib: Lib) -> None:
    x = spread(9)
    out = topk_mask(lib.asarray(x), 3, epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, (x >= np.sort(x)[-3]).astype(float), atol=5e-3)


def test_sort_topk_hard_limit(lib: Lib) -> None:
    x = spread(9)
    out = sort(lib.asarray(x), topk=3, epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, np.sort(x)[-3:], atol=5e-3)


def test_quantize_hard_limit(lib: Lib) -> None:
    x = np.array([0.0, 0.02, 0.5, 0.52, 1.0, 0.98])
    out = quantize(lib.asarray(x), num_levels=3, epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, [0.01, 0.01, 0.51, 0.51, 0.99, 0.99], atol=5e-3)


def test_quantile_normalization_hard_limit(lib: Lib) -> None:
    x = spread(4)
    targets = np.array([-1.0, 0.0, 2.0, 3.0])
    out = quantile_normalization(lib.asarray(x), lib.asarray(targets), epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, targets[np.argsort(np.argsort(x))], atol=5e-3)


def test_sort_with_hard_limit(lib: Lib) -> None:
    crit = spread(6)
    rows = np.random.default_rng(1).normal(size=(6, 3))
    out = sort_with(lib.asarray(rows), lib.asarray(crit), epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, out, rows[np.argsort(crit)], atol=5e-3)
    top = sort_with(lib.asarray(rows), lib.asarray(crit), topk=2, epsilon=1e-3, **IDENTITY, **HARD)
    close(lib, top, rows[np.argsort(crit)][-2:], atol=5e-3)


# -- large epsilon: everything collapses to the mean -----------------------------------------------
def test_large_epsilon_collapses_to_mean(lib: Lib) -> None:
    x = sample(7)
    xa = lib.asarray(x)
    close(lib, sort(xa, epsilon=1e4), np.full(7, x.mean()), atol=1e-4)
    close(lib, ranks(xa, epsilon=1e4), np.full(7, 3.0), atol=1e-3)
    close(lib, quantile(xa, 0.3, epsilon=1e4), [x.mean()], atol=1e-4)


# -- properties -------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-3, 1e-2, 1e-1, 1.0])
def test_sort_increasing_and_mean_preserving(lib: Lib, epsilon: float) -> None:
    x = sample(30, (4,), seed=3) * 10 - 5
    out = lib.to_numpy(sort(lib.asarray(x), epsilon=epsilon))
    assert np.all(np.diff(out, axis=-1) >= -1e-6)
    tol = 1e-3 * np.abs(x).max() if lib.float64 else 5e-3 * np.abs(x).max()
    np.testing.assert_allclose(out.mean(axis=-1), x.mean(axis=-1), atol=tol)


@pytest.mark.parametrize("epsilon", [1e-3, 1e-2, 1e-1, 1.0])
def test_ranks_properties(lib: Lib, epsilon: float) -> None:
    n = 25
    x = sample(n, (3,), seed=4)
    out = lib.to_numpy(ranks(lib.asarray(x), epsilon=epsilon))
    order = np.argsort(x, axis=-1)
    assert np.all(np.diff(np.take_along_axis(out, order, axis=-1), axis=-1) >= -1e-6)
    assert out.min() >= -1e-6
    assert out.max() <= n - 1 + 1e-5
    np.testing.assert_allclose(out.sum(axis=-1), n * (n - 1) / 2, rtol=1e-3)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_topk_mask_properties(lib: Lib, k: int) -> None:
    x = sample(10, (3,), seed=5)
    out = lib.to_numpy(topk_mask(lib.asarray(x), k, **HARD))
    assert out.min() >= -1e-7
    assert out.max() <= 1 + 1e-5
    # The row sums are exact; the sum of the mask is n times a column sum: off by n * threshold / 2.
    np.testing.assert_allclose(out.sum(axis=-1), k, atol=10 * 1e-4 / 2 if lib.float64 else 1e-3)
    # At the default threshold the sum is off by at most n * threshold / 2.
    loose = lib.to_numpy(topk_mask(lib.asarray(x), k))
    assert np.abs(loose.sum(axis=-1) - k).max() <= 10 * 1e-3 / 2


def test_quantile_order_follows_q(lib: Lib) -> None:
    x = lib.asarray(sample(40, seed=6))
    q = [0.9, 0.1, 0.5]
    out = lib.to_numpy(quantile(x, lib.asarray(q)))
    ref = lib.to_numpy(quantile(x, lib.asarray(sorted(q))))
    np.testing.assert_allclose(out, ref[[2, 0, 1]], rtol=1e-6)


# -- shapes, axes, batches --------------------------------------------------------------------------
def test_axis_and_batch_shapes(lib: Lib) -> None:
    x = sample(6, (2, 3), seed=7)  # (2, 3, 6)
    xa = lib.asarray(x)
    assert sort(xa).shape == (2, 3, 6)
    assert sort(xa, axis=1).shape == (2, 3, 6)
    assert sort(xa, axis=0, topk=1).shape == (1, 3, 6)
    assert sort(xa, num_targets=4).shape == (2, 3, 4)
    assert ranks(xa, axis=-2).shape == (2, 3, 6)
    assert quantile(xa, lib.asarray([0.2, 0.7]), axis=(0, 2)).shape == (2, 3)
    assert quantile(xa, 0.5, axis=1).shape == (2, 1, 6)
    assert quantize(xa, num_levels=3, axis=0).shape == (2, 3, 6)
    assert topk_mask(xa, 2, axis=1).shape == (2, 3, 6)


def test_batch_equals_rows(lib: Lib) -> None:
    """A batch is solved at once; each row must match the row solved alone."""
    x = sample(9, (3,), seed=8)
    batched = lib.to_numpy(ranks(lib.asarray(x), **tight(lib)))
    for i in range(3):
        single = lib.to_numpy(ranks(lib.asarray(x[i]), **tight(lib)))
        np.testing.assert_allclose(batched[i], single, atol=1e-4 if lib.float64 else 1e-3)


def test_axis_equals_moveaxis(lib: Lib) -> None:
    x = sample(5, (4, 3), seed=9)  # (4, 3, 5)
    a = lib.to_numpy(sort(lib.asarray(x), axis=0))
    b = lib.to_numpy(sort(lib.asarray(np.moveaxis(x, 0, -1))))
    np.testing.assert_allclose(a, np.moveaxis(b, -1, 0), rtol=1e-6)


def test_quantile_tuple_axis_equals_flattened(lib: Lib) -> None:
    x = sample(4, (3, 5), seed=10)  # (3, 5, 4) -> quantiles over axes 0 and 2
    out = lib.to_numpy(quantile(lib.asarray(x), lib.asarray([0.25, 0.75]), axis=(0, 2)))
    flat = np.transpose(x, (1, 0, 2)).reshape(5, 12)
    ref = lib.to_numpy(quantile(lib.asarray(flat), lib.asarray([0.25, 0.75])))
    np.testing.assert_allclose(out, ref.T, rtol=1e-6)


def test_squashing_fun_identity_differs_from_default(lib: Lib) -> None:
    x = lib.asarray(np.array(X5) / 12)
    a = lib.to_numpy(ranks(x, **IDENTITY))
    b = lib.to_numpy(ranks(x))
    assert np.abs(a - b).max() > 1e-3


# -- dtypes and devices -----------------------------------------------------------------------------
def test_output_dtype_and_device(lib: Lib) -> None:
    from softsort._compat import device

    x = lib.asarray(sample(6))
    for out in (sort(x), ranks(x), quantile(x, 0.5), topk_mask(x, 2), quantize(x, num_levels=2)):
        assert out.dtype == x.dtype
        if lib.backend is not Backend.JAX:  # jitted outputs land on the default device
            assert device(out) == device(x)


def test_integer_input_promotes_to_default_float(lib: Lib) -> None:
    xp = lib.xp
    x = lib.asarray(np.array([3, 1, 2]), dtype=xp.int32)
    out = sort(x)
    info = xp.__array_namespace_info__()
    from softsort._compat import device

    assert out.dtype == info.default_dtypes(device=device(x))["real floating"]


def test_float16_computes_in_float32(lib: Lib) -> None:
    xp = lib.xp
    if not hasattr(xp, "float16"):
        pytest.skip("no float16 in this namespace")
    x = lib.asarray(np.array(X5), dtype=xp.float16)
    out = ranks(x)
    assert out.dtype == xp.float16
    ref = lib.to_numpy(ranks(lib.asarray(np.array(X5), dtype=xp.float32)))
    np.testing.assert_allclose(lib.to_numpy(out).astype(np.float64), ref, atol=5e-3)


def test_float32_input_stays_float32(lib: Lib) -> None:
    xp = lib.xp
    x = lib.asarray(sample(6), dtype=xp.float32)
    assert sort(x).dtype == xp.float32
    assert softsort.transport_for_sort(x).plan.dtype == xp.float32


def test_transport_for_sort_result(lib: Lib) -> None:
    x = lib.asarray(sample(7, (2,)))
    out = softsort.transport_for_sort(x, **tight(lib))
    plan = lib.to_numpy(out.plan)
    assert plan.shape == (2, 7, 7)
    tol = 1e-5 if lib.float64 else 1e-4
    np.testing.assert_allclose(plan.sum(-1), 1 / 7, atol=tol)
    np.testing.assert_allclose(plan.sum(-2), 1 / 7, atol=tol)
    assert bool(np.all(lib.to_numpy(out.converged)))
    errors = lib.to_numpy(out.errors)
    iters = lib.to_numpy(out.iterations)
    assert iters.shape == (2,)
    for row, it in zip(errors, iters, strict=True):
        assert it % 10 == 0
        assert it > 0
        assert np.all(row[: it // 10] >= 0)
        assert np.all(row[it // 10 :] == -1)


@pytest.mark.slow_on("jax")  # JAX chunking: test_memory_budget.py
def test_memory_budget_chunks_the_batch(lib: Lib) -> None:
    """A batch over the memory budget is solved in chunks of rows: same result."""
    x = lib.asarray(sample(12, (9,), seed=11))
    small = 5 * 12 * 12 * 8 * 2  # about two rows per chunk
    for f in (softsort.sort, softsort.ranks, lambda a, **k: quantile(a, 0.5, **k)):
        close(lib, f(x, memory_budget=small), lib.to_numpy(f(x)), atol=1e-12)
    t = softsort.transport_for_sort(x, memory_budget=small)
    assert t.plan.shape == (9, 12, 12)
    assert t.iterations.shape == (9,)


@pytest.mark.backend("numpy")
def test_memory_budget_chunks_the_vjp() -> None:
    x = sample(12, (9,), seed=12)
    cot = sample(12, (9,), seed=13)
    out_a, pull_a = softsort.vjp(softsort.sort, x)
    out_b, pull_b = softsort.vjp(softsort.sort, x, memory_budget=5 * 12 * 12 * 8 * 2)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(pull_a(cot), pull_b(cot))
