"""``descending=True`` and ``straight_through=True`` on every backend.

descending: the same plan read from the last target down. straight_through: the value of
the exact epsilon -> 0 operator (hard sort, integer ranks, 0/1 mask, ...), checked against
NumPy's sort/argsort, with the derivatives of the soft operator.
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

#: In the slow set under JAX (compile-bound); descending and straight-through are core code, shared.
pytestmark = pytest.mark.slow_on("jax")

X = np.array([[1.0, 5.0, 4.0, 8.0, 12.0, -3.0], [0.3, -0.2, 0.9, 0.1, 0.5, 0.0]])


def _np(lib: Lib, x):
    return lib.to_numpy(x)


def _atol(lib: Lib) -> float:
    return 1e-12 if lib.float64 else 1e-5


@pytest.mark.parametrize("topk", [None, 2])
def test_sort_descending_is_the_reversed_sort(lib: Lib, topk) -> None:
    x = lib.asarray(X)
    up = _np(lib, softsort.sort(x, topk=topk))
    down = _np(lib, softsort.sort(x, topk=topk, descending=True))
    np.testing.assert_allclose(down, up[..., ::-1], atol=_atol(lib))
    assert np.all(np.diff(down, axis=-1) <= 0)


def test_ranks_descending_gives_rank_zero_to_the_largest(lib: Lib) -> None:
    x = lib.asarray(X)
    down = _np(lib, softsort.ranks(x, descending=True, epsilon=1e-3, threshold=1e-6, max_iterations=20000))
    hard = np.argsort(np.argsort(-X, axis=-1), axis=-1)
    np.testing.assert_allclose(down, hard, atol=0.05)
    up = _np(lib, softsort.ranks(x, threshold=1e-8 if lib.float64 else 1e-5, max_iterations=20000))
    soft_down = _np(lib, softsort.ranks(x, descending=True, threshold=1e-8 if lib.float64 else 1e-5))
    # Rows of the returned plan are exact: descending ranks are n - 1 minus the ascending.
    np.testing.assert_allclose(soft_down, (X.shape[-1] - 1) - up, atol=1e-6 if lib.float64 else 1e-3)


def test_ranks_descending_target_weights_count_from_the_largest(lib: Lib) -> None:
    w = np.array([0.5, 0.3, 0.2])
    x = lib.asarray(X)
    down = _np(lib, softsort.ranks(x, target_weights=lib.asarray(w), descending=True))
    # The same as ascending ranks of -x with the weights in that order (odd squashing).
    ref = _np(lib, softsort.ranks(lib.asarray(-X), target_weights=lib.asarray(w)))
    np.testing.assert_allclose(down, ref, atol=1e-6 if lib.float64 else 1e-3)


def test_sort_with_descending(lib: Lib) -> None:
    rows = np.arange(12.0).reshape(6, 2)
    crit = X[0]
    out = _np(lib, softsort.sort_with(lib.asarray(rows), lib.asarray(crit), descending=True, epsilon=1e-4))
    np.testing.assert_allclose(out, rows[np.argsort(-crit)], atol=1e-2)
    out = _np(lib, softsort.sort_with(lib.asarray(rows), lib.asarray(crit), topk=2, descending=True, epsilon=1e-4))
    np.testing.assert_allclose(out, rows[np.argsort(-crit)][:2], atol=1e-2)


def test_descending_must_be_a_bool(lib: Lib) -> None:
    with pytest.raises(TypeError, match="descending"):
        softsort.sort(lib.asarray(X), descending=1)
    with pytest.raises(TypeError, match="straight_through"):
        softsort.ranks(lib.asarray(X), straight_through="yes")


# -- straight-through: hard values ---------------------------------------------------------
def _hard_cases():
    rows = np.arange(12.0).reshape(6, 2)
    x = X[0]
    order = np.argsort(x)
    return [
        ("sort", lambda L, **o: softsort.sort(L.asarray(X), **o), np.sort(X, axis=-1)),
        ("sort topk", lambda L, **o: softsort.sort(L.asarray(X), topk=3, **o), np.sort(X, axis=-1)[:, -3:]),
        ("sort desc", lambda L, **o: softsort.sort(L.asarray(X), descending=True, **o), -np.sort(-X, axis=-1)),
        ("ranks", lambda L, **o: softsort.ranks(L.asarray(X), **o), np.argsort(np.argsort(X, -1), -1)),
        (
            "ranks desc",
            lambda L, **o: softsort.ranks(L.asarray(X), descending=True, **o),
            np.argsort(np.argsort(-X, -1), -1),
        ),
        (
            "topk_mask",
            lambda L, **o: softsort.topk_mask(L.asarray(X), 2, **o),
            (X >= np.sort(X, -1)[:, -2][:, None]).astype(float),
        ),
        # 6 values, level 0.5 with width 0.02: the band [0.49, 0.51] straddles the 3rd and
        # 4th sorted values, half each: their mean (the median's usual definition).
        ("quantile", lambda L, **o: softsort.quantile(L.asarray(X), 0.5, **o), np.median(X, -1)[:, None]),
        (
            "quantile_normalization",
            lambda L, **o: softsort.quantile_normalization(L.asarray(X), L.asarray(np.arange(6.0) * 10), **o),
            10.0 * np.argsort(np.argsort(X, -1), -1),
        ),
        (
            "sort_with",
            lambda L, **o: softsort.sort_with(L.asarray(rows), L.asarray(x), **o),
            rows[order],
        ),
        (
            "transport_for_sort",
            lambda L, **o: softsort.transport_for_sort(L.asarray(x), **o).plan,
            np.eye(6)[np.argsort(np.argsort(x))] / 6,
        ),
    ]


@pytest.mark.parametrize(("name", "fun", "hard"), _hard_cases(), ids=[c[0] for c in _hard_cases()])
def test_straight_through_value_is_the_hard_operator(lib: Lib, name, fun, hard) -> None:
    out = _np(lib, fun(lib, straight_through=True))
    scale = max(1.0, np.abs(hard).max())
    np.testing.assert_allclose(out, hard, atol=_atol(lib) * scale)


def test_straight_through_ties_are_averaged(lib: Lib) -> None:
    x = lib.asarray(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))
    np.testing.assert_allclose(_np(lib, softsort.ranks(x, straight_through=True)), [3, 0, 3, 1, 3], atol=_atol(lib))
    np.testing.assert_allclose(
        _np(lib, softsort.topk_mask(x, 2, straight_through=True)), [2 / 3, 0, 2 / 3, 0, 2 / 3], atol=_atol(lib)
    )


# -- straight-through: soft derivatives ----------------------------------------------------
_GRAD_OPS = {
    "sort": lambda x, **o: softsort.sort(x, **o),
    "sort desc": lambda x, **o: softsort.sort(x, descending=True, **o),
    "ranks": lambda x, **o: softsort.ranks(x, **o),
    "ranks desc": lambda x, **o: softsort.ranks(x, descending=True, **o),
    "topk_mask": lambda x, **o: softsort.topk_mask(x, 2, **o),
    "quantile": lambda x, **o: softsort.quantile(x, 0.3, **o),
    "quantize": lambda x, **o: softsort.quantize(x, num_levels=3, **o),
}


def _grad(lib: Lib, fun, x, cot, **options):
    if lib.backend is Backend.JAX:
        import jax

        return np.asarray(jax.grad(lambda v: (fun(v, **options) * cot).sum())(x))
    if lib.backend is Backend.TORCH:
        v = x.detach().clone().requires_grad_(True)
        (fun(v, **options) * cot).sum().backward()
        return v.grad.numpy()
    out, pullback = softsort.vjp(fun, x, **options)
    return lib.to_numpy(pullback(lib.xp.ones_like(out) * cot))


@pytest.mark.parametrize("name", list(_GRAD_OPS))
def test_straight_through_gradient_is_the_soft_gradient(lib: Lib, name) -> None:
    if not lib.float64:
        pytest.skip("float64 comparison")
    fun = _GRAD_OPS[name]
    x = lib.asarray(X)
    shape = fun(x).shape
    cot = lib.asarray(np.random.default_rng(3).normal(size=tuple(shape)))
    if lib.backend not in (Backend.JAX, Backend.TORCH):
        # softsort.vjp takes the operator itself: wrap-free operators only.
        if name not in ("sort", "ranks", "quantize"):
            pytest.skip("softsort.vjp needs the operator itself")
        fun = {"sort": softsort.sort, "ranks": softsort.ranks, "quantize": softsort.quantize}[name]
        extra = {"num_levels": 3} if name == "quantize" else {}
        st_out, pull_st = softsort.vjp(fun, x, straight_through=True, **extra)
        soft_out, pull = softsort.vjp(fun, x, **extra)
        np.testing.assert_allclose(lib.to_numpy(soft_out), lib.to_numpy(st_out), atol=0.1 * np.abs(X).max())
        np.testing.assert_allclose(lib.to_numpy(pull_st(cot)), lib.to_numpy(pull(cot)), rtol=1e-12, atol=1e-14)
        return
    soft = _grad(lib, fun, x, cot)
    st = _grad(lib, fun, x, cot, straight_through=True)
    assert np.abs(soft).max() > 0
    np.testing.assert_allclose(st, soft, rtol=1e-10, atol=1e-14)
