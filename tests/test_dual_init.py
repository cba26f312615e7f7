"""The exact-dual start (softsort._core._dual) and the ``init`` option.

The potentials are checked against the definition of optimality (feasible, and their dual
value equals the optimal transport cost computed independently from quantile functions);
the solver is checked to reach the same fixed point from either start, in fewer
iterations from the exact dual.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib
from softsort._compat import array_namespace
from softsort._core._dual import exact_dual, sort_order
from softsort.backends import get_backend


def backend_of(x: object, pairwise: bool | None = None) -> object:
    """The adapter for ``x``; ``pairwise``: force (True) or forbid (False) the pairwise path."""
    backend = get_backend(array_namespace(x))
    if pairwise is None:
        return backend
    backend = copy.copy(backend)
    backend.pairwise_rows = 10**6 if pairwise else 0
    return backend


def w2_squared(z: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray) -> float:
    """Optimal cost for ``(z - y)**2`` in 1-D: the integral of (F^-1 - G^-1)**2 over (0, 1)."""
    order = np.argsort(z, kind="stable")
    z, a = z[order], a[order]
    i = j = 0
    left_a, left_b, total = a[0], b[0], 0.0
    while True:
        mass = min(left_a, left_b)
        total += mass * (z[i] - y[j]) ** 2
        left_a, left_b = left_a - mass, left_b - mass
        if left_a <= 1e-15 and i + 1 < len(z):
            i, left_a = i + 1, left_a + a[i + 1]
        elif left_b <= 1e-15 and j + 1 < len(y):
            j, left_b = j + 1, left_b + b[j + 1]
        else:
            return total


def problems() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    out = []
    for n, m in [(1, 1), (1, 4), (5, 1), (7, 7), (12, 5), (5, 12), (40, 40)]:
        z = rng.uniform(size=(3, n))
        out.append((f"uniform-{n}x{m}", z, np.full((3, n), 1 / n), np.full((3, m), 1 / m)))
    z = rng.uniform(size=(2, 9))
    z[:, 3] = z[:, 5]  # tied inputs
    out.append(("ties", z, np.full((2, 9), 1 / 9), np.full((2, 9), 1 / 9)))
    b = rng.dirichlet(np.ones(6), size=2)
    out.append(("weights", rng.uniform(size=(2, 8)), rng.dirichlet(np.ones(8), size=2), b))
    topk = np.array([[0.7, 0.1, 0.1, 0.1]])  # the shape of the top-k target measure
    out.append(("topk", rng.uniform(size=(1, 10)), np.full((1, 10), 0.1), topk))
    out.append(("spread", 50.0 * rng.normal(size=(2, 6)), np.full((2, 6), 1 / 6), np.full((2, 6), 1 / 6)))
    return out


@pytest.mark.slow_on("jax")  # compile-bound under JAX; same core code elsewhere
@pytest.mark.parametrize("pairwise", [False, True], ids=["sorted", "pairwise"])
@pytest.mark.parametrize(("name", "z", "a", "b"), problems(), ids=[p[0] for p in problems()])
def test_exact_dual_is_optimal(
    lib: Lib, name: str, z: np.ndarray, a: np.ndarray, b: np.ndarray, pairwise: bool
) -> None:
    """Both ways to order and search (a sort and binary searches, or comparisons of every
    pair: ``Backend.pairwise_rows``) give optimal potentials."""
    del name
    zz, aa, bb = lib.asarray(z), lib.asarray(a), lib.asarray(b)
    f, g = exact_dual(backend_of(zz, pairwise), zz, aa, bb)
    f, g = lib.to_numpy(f), lib.to_numpy(g)
    assert f.shape == z.shape
    assert g.shape == b.shape
    m = b.shape[-1]
    y = np.linspace(0.0, 1.0, m) if m > 1 else np.zeros(1)
    scale = max(1.0, float(np.max((z[..., :, None] - y) ** 2)))
    tol = (1e-9 if lib.float64 else 1e-4) * scale
    for row in range(z.shape[0]):
        reduced = f[row][:, None] + g[row][None, :] - (z[row][:, None] - y) ** 2
        assert reduced.max() <= tol  # feasible: f_i + g_j <= C_ij
        # a 1 in every row and column of the Gibbs kernel (no row or column can underflow)
        assert np.all(reduced.max(axis=1) >= -tol)
        assert np.all(reduced.max(axis=0) >= -tol)
        value = a[row] @ f[row] + b[row] @ g[row]  # strong duality: the dual value is the optimum
        np.testing.assert_allclose(value, w2_squared(z[row], a[row], y, b[row]), atol=tol)


@pytest.mark.backend("numpy")
def test_ties_take_the_midpoint() -> None:
    """Uniform n = m: every handover is a tie; the start is the mean of the two extreme duals."""
    z = np.array([[0.1, 0.45, 0.5, 0.9]])
    w = np.full((1, 4), 0.25)
    f, g = exact_dual(backend_of(z), z, w, w)
    # Handovers at ties are degenerate cells: their reduced cost is strictly negative at the
    # midpoint (each extreme choice makes one of them tight).
    reduced = f[0][:, None] + g[0][None, :] - (z[0][:, None] - np.linspace(0, 1, 4)) ** 2
    np.testing.assert_allclose(np.diag(reduced), 0.0, atol=1e-12)
    off = np.diag(reduced, 1), np.diag(reduced, -1)
    assert np.all(np.concatenate(off) < -1e-6)


@pytest.mark.parametrize("pairwise", [False, True], ids=["sorted", "pairwise"])
def test_sort_order_is_a_stable_argsort_and_its_inverse(lib: Lib, pairwise: bool) -> None:
    """Ties keep their order, NaN goes last (NumPy's order), infinities sort, and ``rank``
    inverts ``order``: on every adapter, by a sort and by comparisons of every pair."""
    rng = np.random.default_rng(5)
    z = rng.integers(0, 4, size=(6, 9)).astype(float)  # many ties
    z[1, [2, 7]] = np.nan
    z[2, :] = np.nan
    z[3, [0, 4]] = [np.inf, -np.inf]
    z[4, :] = 1.0
    zz = lib.asarray(z)
    order, rank = sort_order(backend_of(zz, pairwise), zz)
    order, rank = lib.to_numpy(order), lib.to_numpy(rank)
    np.testing.assert_array_equal(order, np.argsort(z, axis=-1, kind="stable"))
    np.testing.assert_array_equal(np.take_along_axis(rank, order, axis=-1), np.broadcast_to(np.arange(9), z.shape))


@pytest.mark.slow_on("jax")  # compile-bound under JAX; same core code elsewhere
@pytest.mark.parametrize("epsilon", [1e-2, 5e-3, 3e-3])
def test_same_fixed_point_from_either_start(lib: Lib, epsilon: float) -> None:
    """Tightly converged, both starts give the same plan (below 3e-3 the zero start can need
    more than 50000 iterations to reach 1e-9 on these inputs, so it is not a usable reference)."""
    rng = np.random.default_rng(1)
    x = np.stack([rng.permutation(np.linspace(-2, 2, 8)) + 0.05 * rng.normal(size=8) for _ in range(3)])
    kw = {"epsilon": epsilon, "threshold": 1e-9 if lib.float64 else 1e-5, "max_iterations": 50000}
    for op in (softsort.sort, softsort.ranks):
        dual = lib.to_numpy(op(lib.asarray(x), init="dual", **kw))
        zeros = lib.to_numpy(op(lib.asarray(x), init="zeros", **kw))
        np.testing.assert_allclose(dual, zeros, atol=1e-7 if lib.float64 else 1e-3)


@pytest.mark.parametrize(("n", "epsilon"), [(10, 1e-3), (10, 1e-4), (100, 1e-3), (100, 1e-4)])
@pytest.mark.backend("numpy")
def test_dual_start_cuts_iterations(n: int, epsilon: float) -> None:
    x = np.random.default_rng(2).normal(size=(4, n))
    kw = {"epsilon": epsilon, "max_iterations": 20000}
    plain = softsort.transport_for_sort(x, init="zeros", momentum=1.0, **kw).iterations
    fast = softsort.transport_for_sort(x, **kw).iterations
    assert np.all(fast <= plain / 5), (fast, plain)


@pytest.mark.backend("numpy")
def test_auto_start_follows_epsilon_and_the_number_of_targets() -> None:
    """``init="auto"``: the exact dual below 5e-3, and above it with at least as many targets
    as inputs (sort, ranks); zeros with fewer targets (quantiles) from 5e-3 up."""
    x = np.random.default_rng(4).normal(size=(2, 15))
    cases = [(None, 1e-2, "dual"), (None, 5e-3, "dual"), (15, 1e-2, "dual"), (20, 0.1, "dual")]
    cases += [(3, 1e-2, "zeros"), (3, 5e-3, "zeros"), (3, 4e-3, "dual"), (14, 1e-4, "dual")]
    for targets, epsilon, same_as in cases:
        auto = softsort.transport_for_sort(x, epsilon=epsilon, num_targets=targets)
        ref = softsort.transport_for_sort(x, epsilon=epsilon, num_targets=targets, init=same_as)
        np.testing.assert_array_equal(auto.plan, ref.plan, err_msg=f"{targets} targets, epsilon {epsilon}")
        np.testing.assert_array_equal(auto.iterations, ref.iterations)
    other = softsort.transport_for_sort(x, epsilon=1e-2, num_targets=3, init="dual")
    assert not np.array_equal(other.plan, softsort.transport_for_sort(x, epsilon=1e-2, num_targets=3).plan)


@pytest.mark.backend("numpy")
def test_auto_start_compares_epsilon_in_the_compute_dtype() -> None:
    """``0.0049999999`` is below ``5e-3`` in float64 but rounds to it in float32: the start
    follows the compute dtype, as it does for an epsilon traced under ``jax.jit``."""
    x = np.random.default_rng(4).normal(size=(2, 15))
    for dtype, same_as in [(np.float64, "dual"), (np.float32, "zeros")]:
        xd = x.astype(dtype)
        auto = softsort.transport_for_sort(xd, epsilon=0.0049999999, num_targets=3)
        ref = softsort.transport_for_sort(xd, epsilon=0.0049999999, num_targets=3, init=same_as)
        np.testing.assert_array_equal(auto.plan, ref.plan, err_msg=str(dtype))
        np.testing.assert_array_equal(auto.iterations, ref.iterations)


def test_auto_start_with_traced_epsilon(lib: Lib) -> None:
    """An array epsilon is decided per problem inside the solver: same results as a number."""
    if lib.backend is not Backend.JAX:
        pytest.skip("traced epsilon is a JAX feature")
    import jax

    x = lib.asarray(np.random.default_rng(5).normal(size=(2, 15)))
    for epsilon, kw in [(1e-2, {}), (1e-3, {}), (1e-2, {"num_targets": 3}), (0.0049999999, {"num_targets": 3})]:
        traced = jax.jit(lambda a, e, kw=kw: softsort.ranks(a, epsilon=e, **kw))(x, lib.asarray(epsilon))
        number = softsort.ranks(x, epsilon=epsilon, **kw)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(number), atol=1e-12 if lib.float64 else 1e-5)
