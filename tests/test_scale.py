"""Scale equivariance of the default squashing: sort(c x) = c sort(x), ranks(c x) = ranks(x).

The default squashing adds ``1e-10 * min(1, max|x - mean|)`` to the standard deviation
(OTT-JAX adds ``1e-10``): the same numbers as OTT-JAX for rows of spread >= 1, and a map
that does not depend on the scale of the row below, so rows of scale 1e-30 are sorted, not
collapsed to a constant.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import softsort
from conftest import Backend, Lib

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SOLVER = {"epsilon": 0.1, "threshold": 1e-9, "max_iterations": 5000}
#: exponent ranges of c: float64 1e-30..1e30, float32 1e-15..1e15
SPANS = {64: 30.0, 32: 15.0}


def _case(lib: Lib, data):
    widths = [32, 64] if lib.float64 else [32]
    width = data.draw(st.sampled_from(widths), label="width")
    n = data.draw(st.sampled_from([3, 8]) if lib.backend is Backend.JAX else st.integers(2, 12), label="n")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    exponent = data.draw(st.floats(-SPANS[width], SPANS[width]), label="log10 c")
    values = np.random.default_rng(seed).normal(size=(2, n))
    dtype = lib.xp.float32 if width == 32 else lib.xp.float64
    c = 10.0**exponent
    return values, c, dtype, width


def _run(lib: Lib, fun, values: np.ndarray, dtype, **kw) -> np.ndarray:
    solver = {**SOLVER, "threshold": 1e-9 if dtype == lib.xp.float64 else 1e-5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", softsort.ConvergenceWarning)
        return lib.to_numpy(fun(lib.asarray(values, dtype=dtype), **solver, **kw)).astype(np.float64)


@pytest.mark.slow_on("jax")  # Hypothesis shapes: a compile each under JAX
@SETTINGS
@given(data=st.data())
def test_sort_and_ranks_are_scale_equivariant(lib: Lib, data) -> None:
    values, c, dtype, width = _case(lib, data)
    # The scaled data as the dtype holds them: compare c * sort(x) with sort of exactly that.
    scaled = np.asarray(values * c, dtype=np.float32 if width == 32 else np.float64).astype(np.float64)
    unit = scaled / c
    tol = 1e-7 if width == 64 else 1e-3
    s_unit = _run(lib, softsort.sort, unit, dtype)
    s_scaled = _run(lib, softsort.sort, scaled, dtype)
    np.testing.assert_allclose(s_scaled / c, s_unit, atol=tol * np.max(np.abs(unit)), rtol=0)
    r_unit = _run(lib, softsort.ranks, unit, dtype)
    r_scaled = _run(lib, softsort.ranks, scaled, dtype)
    np.testing.assert_allclose(r_scaled, r_unit, atol=tol * values.shape[-1], rtol=0)


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e30])
def test_constant_row_stays_constant(lib: Lib, scale: float) -> None:
    x = lib.asarray(np.full((2, 5), 3.0 * scale))
    for fun in (softsort.sort, softsort.quantize):
        out = lib.to_numpy(fun(x))
        # Equal up to the rounding of the read-out's weighted sums (a few ulps).
        ulps = 64 * float(np.finfo(out.dtype).eps)
        np.testing.assert_allclose(out, np.broadcast_to(out[..., :1], out.shape), rtol=ulps)
        np.testing.assert_allclose(out, 3.0 * scale, rtol=ulps)
    np.testing.assert_allclose(lib.to_numpy(softsort.ranks(x)), 2.0, atol=1e-4)


def _ott_squash(lib: Lib):
    """OTT-JAX's default squashing written out: sigmoid((x - mean) / (std + 1e-10))."""
    xp = lib.xp

    def squash(c):
        centred = c - xp.mean(c, axis=-1, keepdims=True)
        std = xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True))
        return 1.0 / (1.0 + xp.exp(-centred / (std + 1e-10)))

    return squash


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e6])
def test_same_numbers_as_ott_at_ordinary_scales(lib: Lib, scale: float) -> None:
    """Rows with max|x - mean| >= 1: the same outputs as OTT-JAX's squashing, to rounding."""
    if not lib.float64:
        pytest.skip("needs float64")
    values = np.random.default_rng(3).normal(size=(4, 9)) * scale
    assert np.all(np.max(np.abs(values - values.mean(-1, keepdims=True)), axis=-1) >= 1)
    x = lib.asarray(values)
    for fun in (softsort.sort, softsort.ranks):
        ours = lib.to_numpy(fun(x, epsilon=1e-2))
        ott = lib.to_numpy(fun(x, epsilon=1e-2, squashing_fun=_ott_squash(lib)))
        np.testing.assert_allclose(ours, ott, rtol=1e-13, atol=1e-13 * scale)
