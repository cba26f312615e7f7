"""Long blocks (``inner_iterations`` beyond the unroll limit) run their steps in a loop.

Same iterates as the unrolled block; under ``jax.jit`` the compile time no longer grows with
``inner_iterations`` (it was 27 s at 200 and 101 s at 1000).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib
from softsort._core import _sinkhorn


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_looped_block_equals_unrolled(lib: Lib, epsilon: float, monkeypatch: pytest.MonkeyPatch) -> None:
    x = lib.asarray(np.random.default_rng(0).normal(size=(3, 12)))
    options = {"epsilon": epsilon, "inner_iterations": 40, "max_iterations": 1000, "threshold": 1e-5}
    looped = lib.to_numpy(softsort.ranks(x, **options))
    monkeypatch.setattr(_sinkhorn, "UNROLL", 1000)
    unrolled = lib.to_numpy(softsort.ranks(x, **options))
    np.testing.assert_allclose(looped, unrolled, rtol=1e-12 if lib.float64 else 1e-5, atol=1e-12)


def test_jit_compile_time_does_not_grow_with_inner_iterations(lib: Lib) -> None:
    if lib.backend is not Backend.JAX:
        pytest.skip("JAX compile time")
    import jax

    x = lib.asarray(np.random.default_rng(1).normal(size=(4, 10)))
    seconds = {}
    for inner in (20, 1000):
        fun = jax.jit(lambda v, inner=inner: softsort.ranks(v, inner_iterations=inner, max_iterations=2000))
        start = time.perf_counter()
        jax.block_until_ready(fun(x))
        seconds[inner] = time.perf_counter() - start
    assert seconds[1000] < 3 * seconds[20] + 5.0, seconds
