"""Bad input: a clear ValueError/TypeError naming the argument, in eager mode, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import Lib

X = [1.0, 5.0, 4.0, 8.0, 12.0]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda L, x: softsort.sort(L.asarray([1.0, np.nan, 2.0])), ValueError, "'x' holds 1 non-finite"),
        (lambda L, x: softsort.ranks(L.asarray([1.0, np.inf])), ValueError, "non-finite"),
        (lambda L, x: softsort.sort(L.asarray(np.zeros((2, 0)))), ValueError, "at least one value"),
        (lambda L, x: softsort.sort(x, axis=3), ValueError, "'axis' = 3 is out of range"),
        (lambda L, x: softsort.sort(x, axis=1.5), TypeError, "'axis' must be an integer"),
        (lambda L, x: softsort.sort(x, topk=2.5), TypeError, "'topk' must be an integer"),
        (lambda L, x: softsort.sort(x, num_targets=0), ValueError, "'num_targets' must be >= 1"),
        (lambda L, x: softsort.topk_mask(x, 5), ValueError, "'k' must be in \\[1, 4\\]"),
        (lambda L, x: softsort.topk_mask(x, 0), ValueError, "'k' must be >= 1"),
        (lambda L, x: softsort.quantile(x, 1.0), ValueError, "'q' must lie strictly between 0 and 1"),
        (lambda L, x: softsort.quantile(x, L.asarray([0.5, -0.1])), ValueError, "'q' must lie"),
        (lambda L, x: softsort.quantile(x, 0.5, weight=-1.0), ValueError, "'weight' must be finite and > 0"),
        (lambda L, x: softsort.sort(x, epsilon=0.0), ValueError, "'epsilon' must be finite and > 0, got 0.0"),
        (lambda L, x: softsort.sort(x, epsilon=-1.0), ValueError, "'epsilon'"),
        (lambda L, x: softsort.sort(x, epsilon=float("inf")), ValueError, "'epsilon'"),
        (lambda L, x: softsort.sort(x, epsilon=L.asarray(-1.0)), ValueError, "'epsilon'"),
        (lambda L, x: softsort.sort(x, epsilon="big"), TypeError, "'epsilon' must be a number"),
        (lambda L, x: softsort.sort(x, threshold=0), ValueError, "'threshold'"),
        (lambda L, x: softsort.sort(x, max_iterations=0), ValueError, "'max_iterations' must be >= 1"),
        (lambda L, x: softsort.sort(x, inner_iterations=-1), ValueError, "'inner_iterations'"),
        (lambda L, x: softsort.sort(x, squashing_fun=3), TypeError, "'squashing_fun' must be callable"),
        (lambda L, x: softsort.sort(x, momentum=2.5), ValueError, "'momentum'"),
        (lambda L, x: softsort.sort(x, init="ones"), ValueError, "'init' must be one of"),
        (lambda L, x: softsort.sort(x, memory_budget=0), ValueError, "'memory_budget' must be >= 1"),
        (lambda L, x: softsort.sort(x, lse_mod=True), TypeError, "unexpected keyword argument\\(s\\) 'lse_mod'"),
        (lambda L, x: softsort.ranks(x, target_weights=L.asarray([0.5, 0.6])), ValueError, "must sum to 1"),
        (
            lambda L, x: softsort.ranks(x, target_weights=L.asarray([1.5, -0.5])),
            ValueError,
            "'target_weights' must hold finite weights > 0",
        ),
        (
            lambda L, x: softsort.quantile_normalization(x, L.asarray([0.0, 1.0]), weights=L.asarray([1.0])),
            ValueError,
            "'targets' and 'weights' must have the same shape",
        ),
        (lambda L, x: softsort.quantile_normalization(x, L.asarray([2.0, 1.0])), ValueError, "must be sorted"),
        (lambda L, x: softsort.sort([1.0, 2.0]), TypeError, "argument 'x' must be an array"),
        (
            lambda L, x: softsort.sort_with(L.asarray(np.ones((5, 2))), L.asarray([1.0, 2.0])),
            ValueError,
            "'criterion' must have shape",
        ),
        (lambda L, x: softsort.sort(L.asarray(3.0)), ValueError, "at least one dimension"),
        (lambda L, x: softsort.vjp(len, x), TypeError, "'fun' must be a softsort operator"),
    ],
)
def test_bad_input_raises(lib: Lib, call, exc, match) -> None:
    x = lib.asarray(X)
    with pytest.raises(exc, match=match):
        call(lib, x)


def test_complex_input(lib: Lib) -> None:
    if not hasattr(lib.xp, "complex128") or not lib.float64:
        pytest.skip("no complex128")
    x = lib.asarray(np.array([1 + 1j, 2.0]), dtype=lib.xp.complex128)
    with pytest.raises(TypeError, match="'x' must be real"):
        softsort.sort(x)


@pytest.mark.backend("numpy")
def test_two_libraries() -> None:
    strict = pytest.importorskip("array_api_strict")
    x = np.asarray(X)
    with pytest.raises(TypeError, match="different libraries"):
        softsort.ranks(x, target_weights=strict.asarray([0.5, 0.5]))


@pytest.mark.backend("numpy")
def test_input_never_modified_and_read_only_ok() -> None:
    x = np.array([3.0, 1.0, 2.0])
    x.setflags(write=False)
    before = x.copy()
    _, pullback = softsort.vjp(softsort.sort, x)
    pullback(np.ones(3))
    for f in (softsort.sort, softsort.ranks, softsort.quantize):
        f(x)
    np.testing.assert_array_equal(x, before)


def test_non_convergence_warns_and_reports(lib: Lib) -> None:
    x = lib.asarray(np.random.default_rng(0).normal(size=50))
    with pytest.warns(softsort.ConvergenceWarning, match="max_iterations=5"):
        softsort.sort(x, epsilon=0.01, threshold=1e-9, max_iterations=5, inner_iterations=2)
    with pytest.warns(softsort.ConvergenceWarning):
        out = softsort.transport_for_sort(x, epsilon=0.01, threshold=1e-9, max_iterations=5, inner_iterations=2)
    assert not bool(lib.to_numpy(out.converged))
    assert int(lib.to_numpy(out.iterations)) == 5  # max_iterations is respected exactly
    assert lib.to_numpy(out.iterations).shape == ()


def test_topk_equal_n_is_full_sort(lib: Lib) -> None:
    x = lib.asarray(X)
    np.testing.assert_allclose(lib.to_numpy(softsort.sort(x, topk=5)), lib.to_numpy(softsort.sort(x)))
    np.testing.assert_allclose(lib.to_numpy(softsort.sort(x, topk=-1)), lib.to_numpy(softsort.sort(x)))
