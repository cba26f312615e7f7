"""Kernel-space Sinkhorn (``_sinkhorn._first_kernel`` and the steps after it).

The solver iterates in kernel space from a kernel built with hard minima. Its iterates must
be those of log-domain Sinkhorn (the path of OTT-JAX at the defaults), from any start and
at any epsilon, including where ``exp(-C / eps)`` underflows entirely; and the adapters'
fast paths (in-place exp, split matrix-vector products) must compute what they replace.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace, device

from conftest import Lib, available
from softsort._core import _sinkhorn
from softsort._core._config import SolverConfig
from softsort.backends import get_backend
from softsort.backends._base import Backend

#: In the slow set under JAX (compile-bound); the kernel steps are the same core code on every backend.
pytestmark = pytest.mark.slow_on("jax")


def _problem(lib: Lib, rows: int = 3, n: int = 30, m: int = 30, spread: float = 0.7):
    rng = np.random.default_rng(3)
    z = np.sort(rng.uniform(0.5 - spread / 2, 0.5 + spread / 2, size=(rows, n)), axis=-1)
    z = rng.permuted(z, axis=-1)
    a = np.full((rows, n), 1.0 / n)
    b = rng.uniform(0.5, 1.5, size=(rows, m))
    b /= b.sum(axis=-1, keepdims=True)
    return tuple(lib.asarray(v) for v in (z, a, b))


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3, 1e-5])
@pytest.mark.parametrize("init", ["zeros", "dual"])
@pytest.mark.parametrize("momentum", [1.0, "adaptive"])
def test_kernel_steps_follow_log_domain_sinkhorn(lib: Lib, epsilon: float, init: str, momentum) -> None:
    """Same iterates after a fixed number of steps (threshold 0: no row stops early).

    At epsilon 1e-5 and a zero start every entry of exp(-C / eps) underflows in float32
    (C / eps reaches 3e4), so this also checks that no row or column of the first kernel
    does.
    """
    if not lib.float64 and epsilon < 1e-3:
        pytest.skip("float32: the log-domain reference itself drifts at this epsilon")
    z, a, b = _problem(lib)
    xp = array_namespace(z)
    backend = get_backend(xp)
    eps = xp.full((z.shape[0],), epsilon, dtype=z.dtype, device=device(z))
    base = SolverConfig(threshold=0.0, max_iterations=40, init=init, momentum=momentum, implicit_diff=False)
    kernel = _sinkhorn.solve(backend, base, z, a, b, eps)
    log = _sinkhorn.solve(backend, dataclasses.replace(base, kernel_steps=False), z, a, b, eps)
    assert lib.to_numpy(kernel.iterations).tolist() == lib.to_numpy(log.iterations).tolist()
    plan_k, plan_l = lib.to_numpy(kernel.plan), lib.to_numpy(log.plan)
    assert np.all(np.isfinite(plan_k))
    tol = 1e-9 if lib.float64 else 1e-5
    np.testing.assert_allclose(plan_k, plan_l, atol=tol * plan_l.max())
    # potentials: same up to the constant that (f + c, g - c) leaves free
    f_k, f_l = lib.to_numpy(kernel.f), lib.to_numpy(log.f)
    shift = (f_k - f_l).mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(f_k - shift, f_l, atol=1e3 * tol * epsilon)


def test_first_kernel_rows_and_columns(lib: Lib) -> None:
    """Each row reaches a_i / count exactly; each column at least a b_j / (b_max count)."""
    z, a, b = _problem(lib, rows=2, n=50, m=7, spread=0.2)  # inputs bunched: far columns
    xp = array_namespace(z)
    backend = get_backend(xp)
    eps = xp.full((2,), 1e-4, dtype=z.dtype, device=device(z))
    scale = 1.0 / xp.sqrt(eps)[..., None]
    y = _sinkhorn.targets_like(xp, z, 7) * scale
    rows = _sinkhorn._Rows(z * scale, y, a, b, eps)
    f0 = xp.zeros_like(z)
    f, g, kernel = _sinkhorn._first_kernel(backend, rows, f0, xp.log(a), xp.log(b), zero_start=True)
    k, an, bn = lib.to_numpy(kernel), lib.to_numpy(a), lib.to_numpy(b)
    row_count = max(math.sqrt(math.pi * 1e-4) * 6, 1.0)
    col_count = max(math.sqrt(math.pi * 1e-4) * 49, 1.0)
    rtol = 1e-12 if lib.float64 else 1e-5
    np.testing.assert_allclose(k.max(axis=-1), an / row_count, rtol=rtol)
    low = an.min() * bn / (bn.max(axis=-1, keepdims=True) * col_count)
    # attained with equality in some columns; exponents up to C / eps ~ 1e4 carry float32
    # rounding of ~1e-3 relative into exp
    assert np.all(k.max(axis=-2) >= low * (1 - (1e-9 if lib.float64 else 1e-3)))
    # the references reproduce the kernel: K = exp(f + g - C) where above the floor
    cost = (lib.to_numpy(rows.z)[..., :, None] - lib.to_numpy(rows.y)[..., None, :]) ** 2
    expect = np.exp(lib.to_numpy(f)[..., :, None] + lib.to_numpy(g)[..., None, :] - cost)
    floor = np.finfo(k.dtype).smallest_normal * _sinkhorn.FLOOR
    np.testing.assert_allclose(k, expect, rtol=1e3 * rtol, atol=2 * floor)  # floored, or floor added
    assert np.all(k >= floor * (1 - rtol))


@pytest.mark.backend("numpy")
def test_numpy_floored_exp_in_place() -> None:
    backend = get_backend(array_namespace(np.zeros(1)))
    d = np.array([[0.0, 1.0, 200.0], [np.nan, -1.0, 50.0]], dtype=np.float32)
    f = np.array([0.5, -0.5], dtype=np.float32)
    floor = math.log(np.finfo(np.float32).smallest_normal * _sinkhorn.FLOOR)
    expect = np.exp(np.maximum(f[:, None] - d, floor))
    out = backend.floored_exp(f, d, floor)
    assert out is d  # no new n x m array
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=2 * math.exp(floor))
    assert np.isnan(out[1, 0])
    assert np.all(out[~np.isnan(out)] >= math.exp(floor))


@pytest.mark.backend("numpy")
@pytest.mark.parametrize(
    "shape", [(10000, 3), (1000, 10, 10), (64, 40, 2), (3,), (1, 5), (50, 50), (4, 17, 16), (2, 1, 3)]
)
def test_numpy_reductions_reordered(shape: tuple[int, ...]) -> None:
    """The reordered reductions (short runs): NumPy's minimum exactly, its sum up to rounding."""
    backend = get_backend(array_namespace(np.zeros(1)))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x.flat[:: max(1, x.size // 7)] = np.nan
    for axis in range(-x.ndim, 0):
        got = backend.min(x, axis)
        np.testing.assert_array_equal(got, np.min(x, axis=axis))
        assert got.dtype == x.dtype
        total = backend.sum(x, axis)
        assert total.dtype == x.dtype
        np.testing.assert_allclose(total, np.sum(x.astype(np.float64), axis=axis), rtol=1e-5, atol=1e-3)
        assert np.array_equal(np.isnan(total), np.isnan(np.sum(x, axis=axis)))


@pytest.mark.backend("numpy")
@pytest.mark.parametrize("size", [5, 4096])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_numpy_clip(size: int, dtype: Any) -> None:
    """The adapter's clip (np.clip on large arrays): the generic one's values, NaN and dtype kept."""
    backend = get_backend(array_namespace(np.zeros(1)))
    x = (np.random.default_rng(2).standard_normal(size) * 10).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x[:3] = [np.nan, np.inf, -np.inf]  # NaN kept
    floating = np.issubdtype(dtype, np.floating)
    for low, high in [(-1.5, 2.0), (-1.5, None), (None, 2.0)] if floating else [(0, 3), (-2, None), (None, 4)]:
        got = backend.clip(x, low, high)
        expect = Backend.clip(backend, x, low, high)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, expect)


@pytest.mark.skipif(not available("torch"), reason="PyTorch backend not enabled")
@pytest.mark.backend("torch")
def test_torch_split_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks per thread give the products of the whole matrix, and only where they may."""
    torch = pytest.importorskip("torch")
    from softsort.backends import _torch

    backend = get_backend(array_namespace(torch.zeros(1)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(0)
    mat = torch.asarray(rng.random((1, 512, 300)))
    u, v = torch.asarray(rng.random((1, 512))), torch.asarray(rng.random((1, 300)))
    assert _torch._row_blocks(mat) == 2
    np.testing.assert_allclose(backend.matvec(mat, v).numpy(), (mat[0] @ v[0]).numpy()[None], rtol=1e-12)
    np.testing.assert_allclose(backend.vecmat(u, mat).numpy(), (u[0] @ mat[0]).numpy()[None], rtol=1e-12)
    assert _torch._row_blocks(mat.mT) == 1  # a view: a reshape would copy
    assert _torch._row_blocks(torch.zeros(1, 511, 300)) == 1  # rows do not split evenly
    assert _torch._row_blocks(torch.zeros(2, 512, 300)) == 1  # the batch fills the threads
    assert _torch._row_blocks(torch.zeros(1, 100, 100)) == 1  # too small to be worth it
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    batch = torch.asarray(rng.random((2, 512, 300)))
    assert _torch._row_blocks(batch) == 2
    w = torch.asarray(rng.random((2, 300)))
    expect = torch.einsum("bij,bj->bi", batch, w).numpy()
    np.testing.assert_allclose(backend.matvec(batch, w).numpy(), expect, rtol=1e-12)
