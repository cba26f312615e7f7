"""softsort.multivariate_cdf_quantile_maps: the maps, their inverse relation, monotonicity,
gradients against central finite differences, the Halton reference and input errors.

Data are generated with NumPy and converted per backend (``lib`` fixture); float64 where
the backend has it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib
from softsort._core._multivariate import halton

TIGHT = {"threshold": 1e-11, "max_iterations": 50000}


def _sample(seed: int, n: int, d: int, scale: float = 0.34) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.default_rng(seed)
    centre = rs.uniform(size=(1, d))
    return scale * rs.normal(size=(n, d)) + centre, centre


def test_centre_maps_to_centre(lib: Lib) -> None:
    # OTT-JAX's own check: a sample symmetric about z has its CDF at z near (1/2, ..., 1/2)
    # and its quantile at (1/2, ..., 1/2) near z (tolerance 0.1, as OTT-JAX's test).
    x, z = _sample(0, 512, 3)
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x))
    assert bool(maps.converged)
    cdf = lib.to_numpy(maps.transport(lib.asarray(z)))
    qua = lib.to_numpy(maps.transport(lib.asarray(np.full((1, 3), 0.5)), forward=False))
    assert cdf.shape == (1, 3)
    np.testing.assert_allclose(cdf, 0.5, atol=0.1)
    np.testing.assert_allclose(qua, z, atol=0.1)


def test_default_epsilon_is_scaled_cost_std(lib: Lib) -> None:
    # OTT-JAX's default for a point cloud: 0.05 * std of the n x m cost matrix (here
    # against the Halton reference, computed independently with NumPy).
    x, _ = _sample(1, 40, 2)
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), num_target_samples=30)
    y = lib.to_numpy(maps.targets)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    tol = 1e-12 if lib.float64 else 1e-5
    np.testing.assert_allclose(float(lib.to_numpy(maps.epsilon)), 0.05 * cost.std(), rtol=tol)


def test_maps_invert_each_other(lib: Lib) -> None:
    # At small epsilon the entropic maps approach the OT map and its inverse: the quantile
    # of the CDF of an interior point is the point (within a few % of the spread).
    x, _ = _sample(2, 300, 2, scale=1.0)
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), epsilon=2e-3)
    inner = x[np.linalg.norm(x - x.mean(0), axis=1) < 0.8][:20]
    back = lib.to_numpy(maps.transport(maps.transport(lib.asarray(inner)), forward=False))
    err = np.abs(back - inner).max()
    assert err < 0.1, err
    # and at a large epsilon both maps shrink towards the means: far from the identity
    blurred = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), epsilon=1.0)
    back = lib.to_numpy(blurred.transport(blurred.transport(lib.asarray(inner)), forward=False))
    assert np.abs(back - inner).max() > 3 * err


def test_cdf_monotone_for_product_measure(lib: Lib) -> None:
    # Independent coordinates: the k-th output of the CDF map grows with x_k (the
    # Brenier map of a product measure to the uniform cube is a product of 1-D CDFs).
    rs = np.random.default_rng(3)
    x = np.stack([rs.normal(size=400), rs.exponential(size=400)], axis=1)
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), epsilon=0.01)
    for k in range(2):
        grid = np.tile(np.median(x, axis=0), (25, 1))
        grid[:, k] = np.linspace(*np.quantile(x[:, k], [0.05, 0.95]), 25)
        out = lib.to_numpy(maps.transport(lib.asarray(grid)))[:, k]
        assert np.all(np.diff(out) > 0), out
        # and, roughly, the 1-D CDF of that coordinate
        ecdf = (x[:, k][None, :] <= grid[:, k][:, None]).mean(1)
        assert np.abs(out - ecdf).max() < 0.1


def test_estimator_matches_plan_barycentre(lib: Lib) -> None:
    # At the inputs the CDF map is the plan's barycentric projection sum_j P_ij y_j / a_i,
    # for non-uniform weights too (an independent NumPy computation from the potentials).
    rs = np.random.default_rng(4)
    x = rs.normal(size=(9, 2))
    a = rs.uniform(0.5, 1.5, 9)
    b = rs.uniform(0.5, 1.5, 9)
    a, b = a / a.sum(), b / b.sum()
    maps = softsort.multivariate_cdf_quantile_maps(
        lib.asarray(x),
        input_weights=lib.asarray(a),
        target_weights=lib.asarray(b),
        epsilon=0.05,
        **(TIGHT if lib.float64 else {"threshold": 1e-6}),
    )
    y, f, g = (lib.to_numpy(v) for v in (maps.targets, maps.f, maps.g))
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    plan = np.exp((f[:, None] + g[None, :] - cost) / 0.05)
    tol = 1e-8 if lib.float64 else 1e-4
    np.testing.assert_allclose(plan.sum(1), a, atol=tol)
    np.testing.assert_allclose(plan.sum(0), b, atol=tol)
    np.testing.assert_allclose(lib.to_numpy(maps.transport(lib.asarray(x))), plan @ y / a[:, None], atol=tol)
    np.testing.assert_allclose(
        lib.to_numpy(maps.transport(lib.asarray(y), forward=False)), plan.T @ x / b[:, None], atol=tol
    )


# -- gradients (frameworks with autodiff) ---------------------------------------------------
def _grads(lib: Lib, x: np.ndarray, pts: np.ndarray, cot: np.ndarray, forward: bool, **kw):
    """(loss, d loss / d inputs, d loss / d points) for loss = <cot, transport(pts)>."""

    def loss(xx, pp, xp):
        maps = softsort.multivariate_cdf_quantile_maps(xx, epsilon=0.1, **TIGHT, **kw)
        return xp.sum(xp.asarray(cot, dtype=xx.dtype) * maps.transport(pp, forward=forward))

    if lib.backend is Backend.JAX:
        import jax
        import jax.numpy as jnp

        value, (gx, gp) = jax.value_and_grad(functools.partial(loss, xp=jnp), argnums=(0, 1))(
            lib.asarray(x), lib.asarray(pts)
        )
        return float(value), np.asarray(gx), np.asarray(gp)
    import torch

    xt, pt = (lib.asarray(v).requires_grad_(True) for v in (x, pts))
    value = loss(xt, pt, torch)
    value.backward()
    return float(value.detach()), xt.grad.numpy(), pt.grad.numpy()


def _loss_value(lib: Lib, x: np.ndarray, pts: np.ndarray, cot: np.ndarray, forward: bool) -> float:
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), epsilon=0.1, **TIGHT)
    return float((cot * lib.to_numpy(maps.transport(lib.asarray(pts), forward=forward))).sum())


@pytest.mark.parametrize("forward", [True, False], ids=["cdf", "quantile"])
def test_gradients_match_finite_differences(lib: Lib, forward: bool) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("autodiff in float64 (JAX with x64, PyTorch)")
    rs = np.random.default_rng(5)
    x = rs.normal(size=(12, 2))
    pts = 0.5 * rs.normal(size=(4, 2)) if forward else rs.uniform(size=(4, 2))
    cot = rs.normal(size=(4, 2))
    _, gx, gp = _grads(lib, x, pts, cot, forward)
    h = 1e-5
    for target, grad, name in ((x, gx, "inputs"), (pts, gp, "points")):
        fd = np.zeros_like(target)
        for idx in np.ndindex(*target.shape):
            e = np.zeros_like(target)
            e[idx] = h
            if name == "inputs":
                up, down = _loss_value(lib, x + e, pts, cot, forward), _loss_value(lib, x - e, pts, cot, forward)
            else:
                up, down = _loss_value(lib, x, pts + e, cot, forward), _loss_value(lib, x, pts - e, cot, forward)
            fd[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, fd, atol=1e-6 * max(1.0, np.abs(fd).max()), err_msg=name)


@pytest.mark.parametrize("forward", [True, False], ids=["cdf", "quantile"])
def test_epsilon_gradient_matches_finite_differences(lib: Lib, forward: bool) -> None:
    # epsilon reaches the maps directly and through the potentials (f = eps * f / eps):
    # its implicit derivative must include both (it was a silent zero).
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("autodiff in float64 (JAX with x64, PyTorch)")
    rs = np.random.default_rng(8)
    x = lib.asarray(0.3 * rs.normal(size=(30, 2)) + 0.5)
    pts = lib.asarray(0.3 * rs.normal(size=(5, 2)) + 0.5 if forward else rs.uniform(0.2, 0.8, size=(5, 2)))
    cot = lib.asarray(rs.normal(size=(5, 2)))
    xp = lib.xp

    def loss(e):
        maps = softsort.multivariate_cdf_quantile_maps(x, epsilon=e, **TIGHT)
        return xp.sum(cot * maps.transport(pts, forward=forward))

    e0 = 0.05
    if lib.backend is Backend.JAX:
        import jax

        grad = float(jax.grad(loss)(lib.asarray(e0)))
    else:
        import torch

        e = torch.tensor(e0, dtype=torch.float64, requires_grad=True)
        loss(e).backward()
        grad = float(e.grad)
    h = 1e-6
    fd = (float(loss(lib.asarray(e0 + h))) - float(loss(lib.asarray(e0 - h)))) / (2 * h)
    assert grad != 0.0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_gradient_of_sampled_reference(lib: Lib) -> None:
    # A reference drawn by a differentiable sampler gets its gradient too (JAX).
    if lib.backend is not Backend.JAX or not lib.float64:
        pytest.skip("JAX with x64")
    import jax
    import jax.numpy as jnp

    rs = np.random.default_rng(6)
    x = jnp.asarray(rs.normal(size=(10, 2)))
    y0 = rs.uniform(size=(8, 2))
    pts = jnp.asarray(rs.normal(size=(3, 2)))
    cot = rs.normal(size=(3, 2))

    def loss(y):
        maps = softsort.multivariate_cdf_quantile_maps(
            x, target_sampler=lambda rng, shape: y, rng=0, num_target_samples=8, epsilon=0.1, **TIGHT
        )
        return jnp.sum(cot * maps.transport(pts))

    grad = np.asarray(jax.grad(loss)(jnp.asarray(y0)))
    h = 1e-5
    fd = np.zeros_like(y0)
    for idx in np.ndindex(*y0.shape):
        e = np.zeros_like(y0)
        e[idx] = h
        fd[idx] = (float(loss(jnp.asarray(y0 + e))) - float(loss(jnp.asarray(y0 - e)))) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_jit_and_sampler_like_ott(lib: Lib) -> None:
    # OTT-JAX's usage: jax.jit of the bound transport, and a custom sampler with an rng.
    if lib.backend is not Backend.JAX:
        pytest.skip("JAX only")
    import jax

    x, z = _sample(7, 256, 2)
    key = jax.random.key(1)

    def sampler(k, shape):
        return jax.random.uniform(k, shape, dtype=lib.float)

    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), target_sampler=sampler, rng=key)
    np.testing.assert_array_equal(np.asarray(maps.targets), np.asarray(sampler(key, (256, 2))))
    cdf = jax.jit(functools.partial(maps.transport, forward=True))
    eager = np.asarray(maps.transport(lib.asarray(z)))
    np.testing.assert_allclose(np.asarray(cdf(lib.asarray(z))), eager, rtol=1e-5)
    np.testing.assert_allclose(eager, 0.5, atol=0.1)


# -- the Halton reference ---------------------------------------------------------------------
def _radical_inverse(i: int, base: int) -> float:
    out, scale = 0.0, 1.0
    while i:
        scale /= base
        i, digit = divmod(i, base)
        out += digit * scale
    return out


def test_halton_sequence(lib: Lib) -> None:
    m, d = 200, 4
    pts = lib.to_numpy(halton(lib.xp, m, d, lib.float, lib.device))
    assert pts.shape == (m, d)
    assert np.all((pts >= 0) & (pts < 1))
    # coordinate k is the radical inverse in the k-th prime base (van der Corput for base 2)
    expected = np.array([[_radical_inverse(i, p) for p in (2, 3, 5, 7)] for i in range(1, m + 1)])
    np.testing.assert_allclose(pts, expected, rtol=0, atol=1e-6 if not lib.float64 else 1e-15)
    assert len({tuple(row) for row in pts}) == m
    # low discrepancy: every dyadic interval of length 1/8 holds m/8 points up to one
    counts = np.histogram(pts[:, 0], bins=8, range=(0, 1))[0]
    assert counts.max() - counts.min() <= 1
    # the default reference is this sequence, on the inputs' device and dtype
    x, _ = _sample(8, 20, 2)
    maps = softsort.multivariate_cdf_quantile_maps(lib.asarray(x), num_target_samples=16)
    np.testing.assert_allclose(lib.to_numpy(maps.targets), expected[:16, :2], atol=1e-6)
    assert maps.targets.dtype == lib.float


# -- errors -----------------------------------------------------------------------------------
def test_errors(lib: Lib) -> None:
    x, _ = _sample(9, 10, 2)
    xa = lib.asarray(x)
    fn = softsort.multivariate_cdf_quantile_maps
    with pytest.raises(ValueError, match="'inputs' must be a 2-D array"):
        fn(lib.asarray(x[:, 0]))
    with pytest.raises(ValueError, match="'inputs' must be a 2-D array"):
        fn(lib.asarray(x[None]))
    with pytest.raises(ValueError, match="'inputs' needs at least one point"):
        fn(lib.asarray(np.zeros((0, 2))))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="'inputs' holds 1 non-finite"):
        fn(lib.asarray(bad))
    with pytest.raises(ValueError, match="squared Euclidean cost only"):
        fn(xa, cost_fn="euclidean")
    with pytest.raises(TypeError, match="unexpected keyword"):
        fn(xa, lse_mod=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'squashing_fun'"):
        fn(xa, squashing_fun=lambda v: v)
    with pytest.raises(ValueError, match="'epsilon' must be finite and > 0"):
        fn(xa, epsilon=-1.0)
    with pytest.raises(ValueError, match="'input_weights' must have 10 entries"):
        fn(xa, input_weights=lib.asarray(np.full(9, 1 / 9)))
    with pytest.raises(ValueError, match="'num_target_samples' must be >= 1"):
        fn(xa, num_target_samples=0)
    with pytest.raises(TypeError, match="'rng' is required"):
        fn(xa, target_sampler=lambda rng, shape: xa)
    with pytest.raises(ValueError, match="must return an array of shape"):
        fn(xa, target_sampler=lambda rng, shape: xa, rng=0, num_target_samples=4)
    maps = fn(xa)
    with pytest.raises(ValueError, match=r"'vec' must have shape \(b, 2\)"):
        maps.transport(lib.asarray(np.zeros((4, 3))))
    with pytest.raises(ValueError, match=r"'vec' must have shape"):
        maps.transport(lib.asarray(np.zeros((1, 4, 2))))
    with pytest.raises(ValueError, match="'vec' holds 1 non-finite"):
        maps.transport(lib.asarray(np.array([[0.0, np.inf]])))
    with pytest.raises(TypeError, match="'forward' must be True or False"):
        maps.transport(xa, forward="yes")
    # a single point is read as one row (OTT-JAX's atleast_2d)
    assert tuple(maps.transport(lib.asarray(np.zeros(2))).shape) == (1, 2)


# -- agreement with OTT-JAX 0.6 (nox -s reference: needs ott-jax) -----------------------------
@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lineax's NormalCG, inside OTT-JAX's backward
@pytest.mark.parametrize("epsilon", [None, 0.05])
@pytest.mark.backend("jax")
def test_agrees_with_ott(epsilon: float | None) -> None:
    # Same reference sample (OTT's sampler and key), uniform weights, tight threshold: the
    # maps and the gradient of both with respect to the inputs agree (float64).
    ott_soft_sort = pytest.importorskip("ott.tools.soft_sort", reason="needs ott-jax (nox -s reference)")
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    with jax.enable_x64(True):
        rs = np.random.default_rng(10)
        x = jnp.asarray(0.5 * rs.normal(size=(60, 2)) + 0.3)
        pts = jnp.asarray(0.5 * rs.normal(size=(7, 2)) + 0.3)
        qs = jnp.asarray(rs.uniform(size=(7, 2)))
        cot = jnp.asarray(rs.normal(size=(7, 2)))
        key = jax.random.key(3)

        def sampler(k, shape):
            return jax.random.uniform(k, shape, dtype=jnp.float64)

        def maps_of(module, xx, **kw):
            return module.multivariate_cdf_quantile_maps(
                xx, target_sampler=sampler, rng=key, num_target_samples=50, epsilon=epsilon, **kw
            )

        ott_kw = {"threshold": 1e-11, "max_iterations": 100000}
        mine, dp = maps_of(softsort, x, **TIGHT), maps_of(ott_soft_sort, x, **ott_kw)
        for vec, forward in ((pts, True), (qs, False)):
            np.testing.assert_allclose(
                np.asarray(mine.transport(vec, forward=forward)),
                np.asarray(dp.transport(vec, forward=forward)),
                atol=1e-8,
            )

        def loss(module, xx, **kw):
            maps = maps_of(module, xx, **kw)
            return jnp.sum(cot * maps.transport(pts)) + jnp.sum(cot * maps.transport(qs, forward=False))

        g_ours = jax.grad(lambda v: loss(softsort, v, **TIGHT))(x)
        g_theirs = jax.grad(lambda v: loss(ott_soft_sort, v, **ott_kw))(x)
        np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_theirs), atol=1e-7)
