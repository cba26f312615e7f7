"""OTT-JAX's vocabulary: each keyword's translation equals the softsort-native call; refusals name the alternative.

OTT-JAX's objects are stood in for by small classes with the same attribute names (softsort
recognises them by those names only); ``test_real_ott_objects`` checks the real ones where
OTT-JAX is installed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

X = [0.3, -1.2, 2.5, 0.7, 1.9, -0.4, 1.1]
N = len(X)


@dataclasses.dataclass(frozen=True)
class Momentum:
    """The attributes of OTT-JAX's ``acceleration.Momentum`` (defaults as there)."""

    start: int = 0
    error_threshold: float = math.inf
    value: float = 1.0
    inner_iterations: int = 1


@dataclasses.dataclass(frozen=True)
class ImplicitDiff:
    """The attributes of OTT-JAX's ``implicit_differentiation.ImplicitDiff`` (defaults as there)."""

    solver: Any = None
    solver_kwargs: Any = None
    symmetric: bool = False
    precondition_fun: Any = None


def _same(lib: Lib, a: Any, b: Any) -> None:
    np.testing.assert_array_equal(lib.to_numpy(a), lib.to_numpy(b))


def _grad(lib: Lib, fun: Any, x: Any) -> np.ndarray:
    """Gradient of sum(fun(x) * w) (w fixed, not depending on x) by the backend's autodiff."""
    w = np.linspace(-1.0, 2.0, N)
    if lib.backend is Backend.JAX:
        import jax

        return np.asarray(jax.grad(lambda v: (fun(v) * lib.asarray(w)).sum())(x))
    v = x.detach().clone().requires_grad_(True)
    (fun(v) * lib.asarray(w)).sum().backward()
    return v.grad.detach().cpu().numpy()


# -- lse_mode, use_danskin, norm_error=1, parallel_dual_updates=False: accepted, no effect ------
@pytest.mark.parametrize(
    "ott",
    [
        {"lse_mode": True},
        {"lse_mode": False},
        {"use_danskin": True},
        {"use_danskin": False},
        {"use_danskin": None},
        {"parallel_dual_updates": False},
        {"recenter_potentials": False},
        {"norm_error": 1},
        {"anderson": None},
        {"initializer": None},
        {"progress_fn": None},
        {"momentum": None},
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_accepted_keywords_change_nothing(lib: Lib, ott: dict[str, Any]) -> None:
    x = lib.asarray(X)
    for fun in (softsort.sort, softsort.ranks):
        _same(lib, fun(x, epsilon=1e-3, **ott), fun(x, epsilon=1e-3))


# -- momentum=acceleration.Momentum(...) ----------------------------------------------------
@pytest.mark.parametrize(
    ("ott", "native"),
    [
        (Momentum(), 1.0),  # start=0: the fixed value, 1 = plain
        (Momentum(value=1.4), 1.4),
        (Momentum(start=100), "adaptive"),  # plain steps, then the adaptive factor
        (Momentum(start=20, inner_iterations=10), "adaptive"),
    ],
)
@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_momentum_object(lib: Lib, ott: Momentum, native: Any, epsilon: float) -> None:
    x = lib.asarray(X)
    got = softsort.transport_for_sort(x, epsilon=epsilon, momentum=ott)
    want = softsort.transport_for_sort(x, epsilon=epsilon, momentum=native)
    _same(lib, got.plan, want.plan)
    _same(lib, got.iterations, want.iterations)


@pytest.mark.parametrize(
    ("ott", "match"),
    [
        (Momentum(value=0.5), r"Momentum\(value=0.5\) is not supported.*momentum=<factor in \[1, 2\)>"),
        (Momentum(value=2.0), r"Momentum\(value=2.0\)"),
        (Momentum(start=100, value=1.3), r"Momentum\(start=100, value=1.3\).*momentum=1.3.*momentum='adaptive'"),
        (Momentum(start=100, error_threshold=1e-2), r"error_threshold=0.01.*momentum='adaptive'"),
        (Momentum(start=-1), r"Momentum.start must be an integer >= 0"),
    ],
)
def test_momentum_object_refused(lib: Lib, ott: Momentum, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        softsort.sort(lib.asarray(X), momentum=ott)


# -- implicit_diff=None / ImplicitDiff(...) ---------------------------------------------------
@pytest.mark.slow_on("jax")  # compile-bound under JAX; unrolled JAX gradients: test_gradients.py
@pytest.mark.parametrize(
    ("ott", "native"), [(None, False), (ImplicitDiff(), True), (ImplicitDiff(symmetric=True), True)]
)
def test_implicit_diff_translation(lib: Lib, ott: Any, native: bool) -> None:
    x = lib.asarray(X)
    # A tight threshold: then both ways of differentiating give the same gradient.
    opts = {"epsilon": 0.1, "threshold": 1e-9 if lib.float64 else 1e-5}
    _same(lib, softsort.ranks(x, implicit_diff=ott, **opts), softsort.ranks(x, implicit_diff=native, **opts))
    if lib.backend not in (Backend.JAX, Backend.TORCH):
        return
    got = _grad(lib, lambda v: softsort.ranks(v, implicit_diff=ott, **opts), x)
    want = _grad(lib, lambda v: softsort.ranks(v, implicit_diff=native, **opts), x)
    np.testing.assert_array_equal(got, want)
    other = _grad(lib, lambda v: softsort.ranks(v, implicit_diff=not native, **opts), x)
    # The two modes are different computations of one gradient: not bitwise equal (so
    # the translation above is not vacuous), equal to the solver's accuracy.
    assert not np.array_equal(got, other)
    np.testing.assert_allclose(got, other, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(
    ("ott", "match"),
    [
        (ImplicitDiff(solver=lambda *a: None), r"custom linear solver.*implicit_solver='dense' or 'cg'"),
        (ImplicitDiff(solver_kwargs={"ridge_identity": 0.1}), r"solver_kwargs=.*implicit_solver"),
        (ImplicitDiff(precondition_fun=np.log), r"precondition_fun=.*implicit_diff=True"),
    ],
)
def test_implicit_diff_refused(lib: Lib, ott: ImplicitDiff, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        softsort.ranks(lib.asarray(X), implicit_diff=ott)


def test_implicit_diff_other_values_refused(lib: Lib) -> None:
    with pytest.raises(TypeError, match="'implicit_diff' must be True or False, got 'yes'"):
        softsort.ranks(lib.asarray(X), implicit_diff="yes")


# -- min_iterations ---------------------------------------------------------------------------
def test_min_iterations(lib: Lib) -> None:
    x = lib.asarray(np.stack([X, np.linspace(0.0, 1.0, N)]))
    free = softsort.transport_for_sort(x, epsilon=1e-1)
    free_it = lib.to_numpy(free.iterations)
    assert free_it.max() <= 40  # the check below needs rows that would stop early
    for m, expected in [(0, free_it), (35, [40, 40]), (40, [40, 40]), (41, [50, 50])]:
        out = softsort.transport_for_sort(x, epsilon=1e-1, min_iterations=m)
        # checks come every inner_iterations = 10: a row stops at the first one at or after m
        np.testing.assert_array_equal(lib.to_numpy(out.iterations), np.maximum(expected, free_it))
        assert bool(np.all(lib.to_numpy(out.converged)))
    if not lib.float64:
        return  # float32: the free run is already at the fixed point to rounding
    # More iterations than needed: closer to the fixed point than the free run.
    ref = softsort.transport_for_sort(x, epsilon=1e-1, threshold=1e-12, max_iterations=20_000)
    longer = softsort.transport_for_sort(x, epsilon=1e-1, min_iterations=200)
    err_free = np.abs(lib.to_numpy(free.plan) - lib.to_numpy(ref.plan)).max()
    err_long = np.abs(lib.to_numpy(longer.plan) - lib.to_numpy(ref.plan)).max()
    assert err_long < err_free


def test_min_iterations_equal_max_runs_exactly_max(lib: Lib) -> None:
    out = softsort.transport_for_sort(lib.asarray(X), epsilon=1e-1, min_iterations=75, max_iterations=75)
    assert int(lib.to_numpy(out.iterations)) == 75


def test_min_iterations_bounds(lib: Lib) -> None:
    x = lib.asarray(X)
    with pytest.raises(ValueError, match=r"'min_iterations' must be in \[0, 100\], got 101"):
        softsort.sort(x, min_iterations=101, max_iterations=100)
    with pytest.raises(ValueError, match="'min_iterations'"):
        softsort.sort(x, min_iterations=-1)
    with pytest.raises(TypeError, match="'min_iterations' must be an integer"):
        softsort.sort(x, min_iterations=2.5)


# -- keywords softsort cannot honour ----------------------------------------------------------
@pytest.mark.parametrize(
    ("ott", "match"),
    [
        ({"anderson": object()}, r"'anderson'=.*not supported by softsort; use momentum='adaptive'"),
        ({"parallel_dual_updates": True}, r"'parallel_dual_updates'=True.*alternates"),
        ({"recenter_potentials": True}, r"'recenter_potentials'=True.*transport_for_sort"),
        ({"progress_fn": print}, r"'progress_fn'=.*\.errors"),
        ({"initializer": object()}, r"'initializer'=.*init='auto', 'dual' or 'zeros'"),
        ({"norm_error": 2}, r"'norm_error'=2.*L1"),
        ({"lse_mode": "yes"}, r"'lse_mode' must be True or False"),
        ({"use_danskin": 1}, r"'use_danskin' must be True or False"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_refused_keywords(lib: Lib, ott: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        softsort.sort(lib.asarray(X), **ott)


# -- topk: OTT-JAX's full-sort meaning of topk <= 0 and topk >= n -----------------------------
@pytest.mark.parametrize("topk", [-1, 0, -5, N, N + 3, np.int64(-1), np.int64(N), np.int32(100)], ids=repr)
def test_topk_full_sort(lib: Lib, topk: Any) -> None:
    x = lib.asarray(X)
    _same(lib, softsort.sort(x, topk=topk), softsort.sort(x))
    rows = lib.asarray(np.stack([X, np.arange(N)], axis=1))
    _same(lib, softsort.sort_with(rows, x, topk=topk), softsort.sort_with(rows, x))


def test_topk_numpy_integer_partial(lib: Lib) -> None:
    x = lib.asarray(X)
    out = softsort.sort(x, topk=np.int64(3), epsilon=1e-3)
    _same(lib, out, softsort.sort(x, topk=3, epsilon=1e-3))
    np.testing.assert_allclose(lib.to_numpy(out), np.sort(X)[-3:], atol=1e-2)


@pytest.mark.parametrize("topk", [True, 2.5, "3"], ids=repr)
def test_topk_not_an_integer(lib: Lib, topk: Any) -> None:
    with pytest.raises(TypeError, match="'topk' must be an integer or None"):
        softsort.sort(lib.asarray(X), topk=topk)


# -- apply_on_axis ----------------------------------------------------------------------------
def _reference(op: Any, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """moveaxis the axes last, merge them, apply op row by row, put the new axis at min(axes)."""
    moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    rows = moved.reshape(-1, math.prod(x.shape[a] for a in axes))
    out = np.stack([op(r) for r in rows])
    out = out.reshape((*moved.shape[: x.ndim - len(axes)], out.shape[-1]))
    return np.moveaxis(out, -1, min(axes))


@pytest.mark.parametrize(
    ("axis", "axes"), [(0, (0,)), (1, (1,)), (-1, (2,)), ((0, 2), (0, 2)), ((2, 1), (1, 2)), ((0, 1, 2), (0, 1, 2))]
)
def test_apply_on_axis_matches_moveaxis(lib: Lib, axis: Any, axes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(3, 4, 5))
    xp = lib.xp

    def op(u: Any, scale: float, *, last: int) -> Any:  # shape-changing: n values -> `last`
        return scale * xp.sort(u)[-last:]

    got = softsort.apply_on_axis(op, lib.asarray(x_np), axis, 2.0, last=2)
    want = _reference(lambda r: 2.0 * np.sort(r)[-2:], x_np, axes)
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(lib.to_numpy(got), want, rtol=1e-6)


def test_apply_on_axis_softsort_operator(lib: Lib) -> None:
    x_np = np.random.default_rng(1).uniform(size=(4, 6, 3))
    got = softsort.apply_on_axis(softsort.ranks, lib.asarray(x_np), 1, epsilon=1e-2)
    want = softsort.ranks(lib.asarray(x_np), axis=1, epsilon=1e-2)
    np.testing.assert_allclose(lib.to_numpy(got), lib.to_numpy(want), rtol=1e-5, atol=1e-6)


def test_apply_on_axis_gradient(lib: Lib) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH):
        pytest.skip("autodiff backends only")
    x = lib.asarray(X)

    def through(v: Any) -> Any:
        return softsort.apply_on_axis(softsort.sort, lib.xp.reshape(v, (1, N)), 1, epsilon=1e-2)[0]

    np.testing.assert_allclose(
        _grad(lib, through, x), _grad(lib, lambda v: softsort.sort(v, epsilon=1e-2), x), rtol=1e-6, atol=1e-9
    )


def test_apply_on_axis_errors(lib: Lib) -> None:
    x = lib.asarray(np.ones((2, 3)))
    with pytest.raises(TypeError, match="'op' must be callable"):
        softsort.apply_on_axis(3, x, 0)
    with pytest.raises(ValueError, match="'op' must return one 1-D array per row of 2 values, got shape"):
        softsort.apply_on_axis(lambda u: u[0], x, 0)
    with pytest.raises(ValueError, match="repeats an axis"):
        softsort.apply_on_axis(lambda u: u, x, (1, -1))
    with pytest.raises(ValueError, match="out of range"):
        softsort.apply_on_axis(lambda u: u, x, 2)
    with pytest.raises(ValueError, match="no row"):
        softsort.apply_on_axis(lambda u: u, lib.asarray(np.ones((0, 3))), 1)
    with pytest.raises(TypeError, match="'inputs' must be an array"):
        softsort.apply_on_axis(lambda u: u, [1.0, 2.0], 0)


# -- the real OTT-JAX objects, where installed --------------------------------------------------
@pytest.mark.backend("jax")
def test_real_ott_objects() -> None:
    acceleration = pytest.importorskip("ott.solvers.linear.acceleration")
    implicit_lib = pytest.importorskip("ott.solvers.linear.implicit_differentiation")
    x = np.asarray(X)
    pairs = [
        ({"momentum": acceleration.Momentum(start=100)}, {"momentum": "adaptive"}),
        ({"momentum": acceleration.Momentum(value=1.3)}, {"momentum": 1.3}),
        ({"implicit_diff": implicit_lib.ImplicitDiff()}, {"implicit_diff": True}),
    ]
    for ott, native in pairs:
        np.testing.assert_array_equal(softsort.sort(x, epsilon=1e-3, **ott), softsort.sort(x, epsilon=1e-3, **native))
    with pytest.raises(TypeError, match="implicit_solver"):
        softsort.sort(x, implicit_diff=implicit_lib.ImplicitDiff(solver_kwargs={"ridge_kernel": 0.1}))
