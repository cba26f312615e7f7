"""Properties of the soft operators, driven by Hypothesis, on every backend of the ``lib`` fixture.

Inputs are random shapes, axes, dtypes (float32, and float64 where the backend has it) and
bounded finite values. Settings are modest and derandomized so CI is reproducible; JAX
compiles one solver per shape and configuration, so its sizes come from a small set.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import softsort
from conftest import Backend, Lib

#: Hypothesis draws a new shape per example, a compile each under JAX: slow set there.
pytestmark = pytest.mark.slow_on("jax")

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EPSILONS = st.sampled_from([1e-2, 1e-1, 1.0])


def identity(z):
    """Identity squashing (module-level: one object, so JAX reuses its compiled solver)."""
    return z


def solver(lib: Lib, dtype) -> dict:
    """A tight threshold for each precision, and a bounded number of iterations.

    Near-ties (which Hypothesis likes) at small epsilon converge slowly; these properties
    hold for every Sinkhorn iterate, converged or not, so ``run`` ignores the
    ConvergenceWarning unless asked (non-convergence reporting: tests/test_extreme.py).
    """
    return {"threshold": 1e-6 if dtype == np.float64 else 1e-4, "max_iterations": 3000}


def dtypes(lib: Lib) -> st.SearchStrategy:
    return st.sampled_from([np.float32, np.float64] if lib.float64 else [np.float32])


def sizes(lib: Lib) -> st.SearchStrategy:
    """Axis sizes; few distinct ones for JAX (one compilation per shape)."""
    return st.sampled_from([3, 8]) if lib.backend is Backend.JAX else st.integers(2, 12)


def batches(lib: Lib) -> st.SearchStrategy:
    if lib.backend is Backend.JAX:
        return st.sampled_from([(), (3,)])
    return st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def inputs(draw, lib: Lib, low: float = -10.0, high: float = 10.0, min_n: int = 2):
    """(values as a NumPy array, sorted axis, numpy dtype)."""
    dtype = draw(dtypes(lib))
    n = draw(sizes(lib).filter(lambda v: v >= min_n))
    batch = draw(batches(lib))
    axis = draw(st.integers(0, len(batch)))
    shape = (*batch[:axis], n, *batch[axis:])
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=width)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    return x, axis, dtype


def tol(dtype, n: int) -> float:
    """Rounding-level tolerance, growing with n."""
    return (1e-6 if dtype == np.float64 else 1e-4) * n


def min_gap(x: np.ndarray, axis: int) -> float:
    """Smallest gap between sorted values along ``axis``."""
    s = np.sort(x, axis=axis)
    return float(np.min(np.diff(s, axis=axis))) if x.shape[axis] > 1 else np.inf


def run(lib: Lib, fun, x: np.ndarray, dtype, converge: bool = False, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        if not converge:
            warnings.simplefilter("ignore", softsort.ConvergenceWarning)
        out = fun(lib.asarray(x, dtype=getattr(lib.xp, np.dtype(dtype).name)), **kw)
    assert str(out.dtype).endswith(np.dtype(dtype).name)
    return lib.to_numpy(out).astype(np.float64)


# -- monotonicity ------------------------------------------------------------------------------
@SETTINGS
@given(data=st.data())
def test_soft_sort_is_increasing(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(inputs(lib))
    eps = data.draw(EPSILONS)
    out = run(lib, softsort.sort, x, dtype, axis=axis, epsilon=eps, **solver(lib, dtype))
    scale = max(1.0, float(np.max(np.abs(x))))
    assert np.all(np.diff(out, axis=axis) >= -tol(dtype, x.shape[axis]) * scale)


@SETTINGS
@given(data=st.data())
def test_soft_ranks_preserve_order(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(inputs(lib))
    eps = data.draw(EPSILONS)
    r = run(lib, softsort.ranks, x, dtype, axis=axis, epsilon=eps, **solver(lib, dtype))
    xm, rm = np.moveaxis(x, axis, -1), np.moveaxis(r, axis, -1)
    smaller = xm[..., :, None] < xm[..., None, :]  # x_i < x_j
    worse = rm[..., :, None] > rm[..., None, :] + tol(dtype, x.shape[axis])  # r_i > r_j beyond rounding
    assert not np.any(smaller & worse)


# -- permutations --------------------------------------------------------------------------------
EQUIVARIANT = {
    "ranks": (softsort.ranks, {}),
    "topk_mask": (softsort.topk_mask, {"k": 1}),
    "quantize": (softsort.quantize, {"num_levels": 3}),
}


@pytest.mark.parametrize("name", list(EQUIVARIANT))
@SETTINGS
@given(data=st.data())
def test_permutation_equivariance(lib: Lib, name, data) -> None:
    fun, kw = EQUIVARIANT[name]
    x, axis, dtype = data.draw(inputs(lib))
    perm = np.asarray(data.draw(st.permutations(range(x.shape[axis]))))
    opts = {**kw, "axis": axis, "epsilon": data.draw(EPSILONS), **solver(lib, dtype)}
    out = run(lib, fun, x, dtype, **opts)
    out_perm = run(lib, fun, np.take(x, perm, axis=axis), dtype, **opts)
    scale = max(1.0, float(np.max(np.abs(x)))) if name == "quantize" else 1.0
    n = x.shape[axis]
    np.testing.assert_allclose(out_perm, np.take(out, perm, axis=axis), atol=100 * tol(dtype, n) * scale)


@SETTINGS
@given(data=st.data())
def test_soft_sort_invariant_to_permuting_input(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(inputs(lib))
    perm = np.asarray(data.draw(st.permutations(range(x.shape[axis]))))
    opts = {"axis": axis, "epsilon": data.draw(EPSILONS), **solver(lib, dtype)}
    out = run(lib, softsort.sort, x, dtype, **opts)
    out_perm = run(lib, softsort.sort, np.take(x, perm, axis=axis), dtype, **opts)
    scale = max(1.0, float(np.max(np.abs(x))))
    np.testing.assert_allclose(out_perm, out, atol=100 * tol(dtype, x.shape[axis]) * scale)


# -- shift and scale ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sort", "ranks", "topk_mask"])
@SETTINGS
@given(data=st.data())
def test_shift_and_scale_invariance(lib: Lib, name, data) -> None:
    """x -> a x + c (a > 0): ranks and masks unchanged, sort -> a sort + c (default squashing)."""
    x, axis, dtype = data.draw(inputs(lib, -1.0, 1.0))
    # Away from the 1e-10 floor added to the standard deviation, the z-score is invariant.
    assume(float(np.min(np.std(x, axis=axis))) > 0.05)
    a = data.draw(st.floats(0.25, 4.0))
    c = data.draw(st.floats(-3.0, 3.0))
    y = (a * x.astype(np.float64) + c).astype(dtype)
    opts = {"axis": axis, "epsilon": data.draw(st.sampled_from([1e-1, 1.0])), **solver(lib, dtype)}
    fun = {"sort": softsort.sort, "ranks": softsort.ranks, "topk_mask": softsort.topk_mask}[name]
    extra = {"k": 1} if name == "topk_mask" else {}
    out_x = run(lib, fun, x, dtype, **opts, **extra)
    out_y = run(lib, fun, y, dtype, **opts, **extra)
    expected = a * out_x + c if name == "sort" else out_x
    scale = (a + abs(c)) if name == "sort" else 1.0
    np.testing.assert_allclose(out_y, expected, atol=100 * tol(dtype, x.shape[axis]) * scale)


# -- ranges ----------------------------------------------------------------------------------------
@SETTINGS
@given(data=st.data())
def test_ranks_lie_in_0_to_n_minus_1(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(inputs(lib))
    n = x.shape[axis]
    r = run(lib, softsort.ranks, x, dtype, axis=axis, epsilon=data.draw(EPSILONS), **solver(lib, dtype))
    assert np.all(r >= -tol(dtype, n))
    assert np.all(r <= n - 1 + tol(dtype, n))


@SETTINGS
@given(data=st.data())
def test_topk_mask_in_unit_interval_and_sums_to_k(lib: Lib, data) -> None:
    """Mask in [0, 1]; once converged, it sums to k within n * threshold (the L1 marginal error)."""
    x, axis, dtype = data.draw(inputs(lib))
    n = x.shape[axis]
    k = data.draw(st.integers(1, n - 1))
    threshold = data.draw(st.sampled_from([1e-4, 1e-3, 1e-2] if dtype == np.float32 else [1e-6, 1e-3, 1e-2]))
    eps = data.draw(EPSILONS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", softsort.ConvergenceWarning)
        m = run(lib, softsort.topk_mask, x, dtype, True, k=k, axis=axis, epsilon=eps, threshold=threshold)
    assert np.all(m >= -tol(dtype, 1))
    assert np.all(m <= 1 + tol(dtype, n))
    if not caught:  # converged: the promise of the threshold
        sums = np.sum(m, axis=axis)
        assert np.all(np.abs(sums - k) <= n * threshold + tol(dtype, n))


@SETTINGS
@given(data=st.data())
def test_quantiles_lie_within_min_and_max(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(inputs(lib))
    # Distinct levels: repeated levels give NaN (see tests/test_extreme.py::test_quantile_repeated_levels_finite).
    levels = st.sampled_from([0.01, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 0.99])
    q = np.asarray(data.draw(st.lists(levels, min_size=1, max_size=3, unique=True)))
    qs = lib.asarray(q, dtype=getattr(lib.xp, np.dtype(dtype).name))
    out = run(lib, softsort.quantile, x, dtype, q=qs, axis=axis, epsilon=data.draw(EPSILONS), **solver(lib, dtype))
    lo, hi = np.min(x, axis=axis, keepdims=True), np.max(x, axis=axis, keepdims=True)
    # The read-out divides by the target weight w = min(0.02, 1.5 / n), not by the plan's
    # column mass, so a column-marginal error up to ``threshold`` moves a quantile by up to
    # threshold / w times the spread of x.
    n = x.shape[axis]
    weight = min(0.02, 1.5 / n)
    spread = max(1.0, float(np.max(hi - lo)))
    slack = (solver(lib, dtype)["threshold"] / weight + tol(dtype, n)) * spread
    assert np.all(out >= lo - slack)
    assert np.all(out <= hi + slack)


# -- hard limit ------------------------------------------------------------------------------------
@st.composite
def separated(draw, lib: Lib):
    """Well separated values in [0, 1] (gaps >= 0.6 / n), as (x, axis, dtype)."""
    dtype = draw(dtypes(lib))
    n = draw(sizes(lib).filter(lambda v: v <= 8))  # eps = 1e-3 takes thousands of iterations
    batch = draw(batches(lib))
    axis = draw(st.integers(0, len(batch)))
    rows = []
    for _ in range(int(np.prod(batch, dtype=int))):
        perm = np.asarray(draw(st.permutations(range(n))), dtype=np.float64)
        jitter = np.asarray(draw(st.lists(st.floats(0.0, 0.4), min_size=n, max_size=n)))
        rows.append((perm + jitter) / n)
    x = np.reshape(np.asarray(rows), (*batch, n))
    return np.moveaxis(x, -1, axis).astype(dtype), axis, dtype


HARD = {"epsilon": 1e-3, "threshold": 1e-4, "max_iterations": 20000, "squashing_fun": identity}


@settings(SETTINGS, max_examples=12)
@given(data=st.data())
def test_hard_limit_sort_and_ranks(lib: Lib, data) -> None:
    x, axis, dtype = data.draw(separated(lib))
    out = run(lib, softsort.sort, x, dtype, True, axis=axis, **HARD)
    np.testing.assert_allclose(out, np.sort(x, axis=axis), atol=1e-2)
    r = run(lib, softsort.ranks, x, dtype, True, axis=axis, **HARD)
    hard = np.argsort(np.argsort(x, axis=axis), axis=axis)
    np.testing.assert_allclose(r, hard, atol=5e-2)
