"""Output dtype: the promoted dtype of every floating array argument, computed in that dtype.

x, criterion, targets, weights, target_weights and q arrays promote together (Python
numbers do not); integer arrays take no part; float16/bfloat16 results are computed in
float32. The reference for values is the same call with every array already in the promoted
dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

X = np.array([1.0, 5.0, 4.0, 8.0, 12.0, 3.0])
TARGETS = np.array([-1.0, 0.0, 0.5, 2.0])
TARGET_W = np.array([0.1, 0.2, 0.3, 0.4])
ROWS = np.arange(12.0).reshape(6, 2)

# (name, call(x, arrays), the array arguments besides x)
CASES = [
    ("ranks-target_weights", lambda x, a: softsort.ranks(x, target_weights=a["tw"]), {"tw": TARGET_W}),
    ("quantile-q", lambda x, a: softsort.quantile(x, a["q"]), {"q": np.array([0.3, 0.7])}),
    ("quantile_normalization-targets", lambda x, a: softsort.quantile_normalization(x, a["t"]), {"t": TARGETS}),
    (
        "quantile_normalization-weights",
        lambda x, a: softsort.quantile_normalization(x, a["t"], weights=a["w"]),
        {"t": TARGETS, "w": TARGET_W},
    ),
    ("sort_with-criterion", lambda x, a: softsort.sort_with(x, a["c"]), {"c": X[::-1].copy()}),
    ("transport_for_sort-weights", lambda x, a: softsort.transport_for_sort(x, a["w"]).plan, {"w": np.full(6, 1 / 6)}),
    (
        "transport_for_sort-target_weights",
        lambda x, a: softsort.transport_for_sort(x, target_weights=a["tw"]).plan,
        {"tw": TARGET_W},
    ),
]


def _need_float64(lib: Lib) -> None:
    if not lib.float64 or lib.backend is Backend.STRICT_NO_FLOAT64:
        pytest.skip("no float64")


@pytest.mark.parametrize(("name", "call", "arrays"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("wide", ["x", "others"])
def test_mixed_dtypes_promote(lib: Lib, name: str, call, arrays: dict, wide: str) -> None:
    """float32 with float64 in either place: float64 out, equal to the all-float64 call."""
    _need_float64(lib)
    f32, f64 = lib.xp.float32, lib.xp.float64
    x_dtype, other_dtype = (f64, f32) if wide == "x" else (f32, f64)
    base = ROWS if name.startswith("sort_with") else X
    x = lib.asarray(base, dtype=x_dtype)
    mixed = call(x, {k: lib.asarray(v, dtype=other_dtype) for k, v in arrays.items()})
    assert mixed.dtype == f64, f"{name}: {mixed.dtype}"
    # Reference: everything in float64, from the same (float32-rounded where narrow) data.
    x64 = lib.xp.astype(x, f64)
    ref = call(x64, {k: lib.xp.astype(lib.asarray(v, dtype=other_dtype), f64) for k, v in arrays.items()})
    np.testing.assert_allclose(lib.to_numpy(mixed), lib.to_numpy(ref), rtol=1e-12, atol=1e-12)


def test_sort_with_float64_rows_float32_criterion_keeps_row_precision(lib: Lib) -> None:
    """Rows 1e8 + 1/8 ... come back with their eighths (float32 would round them all to 1e8)."""
    _need_float64(lib)
    rows = lib.asarray(1e8 + np.array([[0.125], [0.25], [0.5]]), dtype=lib.xp.float64)
    crit = lib.asarray([3.0, 1.0, 2.0], dtype=lib.xp.float32)
    out = softsort.sort_with(rows, crit, epsilon=1e-4)
    assert out.dtype == lib.xp.float64
    # float32 rows would all be 1e8 (errors 0.125 to 0.5); the soft plan's leak costs ~1e-5.
    np.testing.assert_allclose(lib.to_numpy(out)[:, 0] - 1e8, [0.25, 0.5, 0.125], atol=1e-3)


def test_python_numbers_do_not_promote(lib: Lib) -> None:
    x = lib.asarray(X, dtype=lib.xp.float32)
    assert softsort.quantile(x, 0.5).dtype == lib.xp.float32
    assert softsort.quantile(x, [0.2, 0.5], weight=0.01).dtype == lib.xp.float32
    assert softsort.sort(x, epsilon=0.1).dtype == lib.xp.float32
    # epsilon arrays do not promote either: epsilon is a parameter, not data.
    if lib.float64:
        assert softsort.sort(x, epsilon=lib.asarray(0.1, dtype=lib.xp.float64)).dtype == lib.xp.float32


def test_integer_input_takes_the_floating_argument_dtype(lib: Lib) -> None:
    x = lib.asarray(np.array([3, 1, 2, 5]), dtype=lib.xp.int32)
    t = lib.asarray(TARGETS, dtype=lib.xp.float32)
    assert softsort.quantile_normalization(x, t).dtype == lib.xp.float32
    info = lib.xp.__array_namespace_info__()
    default = info.default_dtypes(device=lib.device)["real floating"]
    assert softsort.sort(x).dtype == default


def test_float16_with_float32_argument(lib: Lib) -> None:
    if lib.backend not in (Backend.NUMPY, Backend.JAX, Backend.TORCH):
        pytest.skip("no float16")
    x16 = lib.asarray(X, dtype=lib.xp.float16)
    t32 = lib.asarray(TARGETS, dtype=lib.xp.float32)
    out = softsort.quantile_normalization(x16, t32)
    assert out.dtype == lib.xp.float32
    ref = softsort.quantile_normalization(lib.xp.astype(x16, lib.xp.float32), t32)
    np.testing.assert_allclose(lib.to_numpy(out), lib.to_numpy(ref), rtol=1e-6)
    assert softsort.quantile_normalization(x16, lib.xp.astype(t32, lib.xp.float16)).dtype == lib.xp.float16


def test_vjp_gradient_has_x_dtype_with_mixed_inputs(lib: Lib) -> None:
    _need_float64(lib)
    x = lib.asarray(X, dtype=lib.xp.float32)
    t = lib.asarray(TARGETS, dtype=lib.xp.float64)
    out, pullback = softsort.vjp(softsort.quantile_normalization, x, t)
    assert out.dtype == lib.xp.float64
    assert pullback(lib.xp.ones_like(out)).dtype == lib.xp.float32
