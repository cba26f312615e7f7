"""Bad input found by the reliability review: each one a clear error naming the argument.

Epsilon checked in the compute dtype, arrays of the wrong kind for every array argument,
the output of a custom ``squashing_fun``, the cotangent of ``softsort.vjp``, masked arrays,
meta tensors; valid ``sort_with`` shapes accepted; warnings point at the caller; value
checks run under eager ``torch.func.grad``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib, available
from softsort._validate import epsilon_range

X5 = [1.0, 5.0, 4.0, 8.0, 12.0]


def foreign(lib: Lib, data):
    """An array of another library than ``lib``'s."""
    if lib.backend is Backend.NUMPY:
        strict = pytest.importorskip("array_api_strict")
        return strict.asarray(data)
    return np.asarray(data)


# -- epsilon --------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e39, 1e-46, 1e300, 1e-40])
def test_epsilon_out_of_float32_range_raises(lib: Lib, eps: float) -> None:
    """1e39 is inf and 1e-46 is 0 in float32: refused before conversion, naming the range."""
    x = lib.asarray(X5, dtype=lib.xp.float32)
    with pytest.raises(ValueError, match=r"'epsilon' = .* is outside the range the solver supports in float32"):
        softsort.sort(x, epsilon=eps)


def test_epsilon_huge_float64_raises(lib: Lib) -> None:
    if not lib.float64:
        pytest.skip("no float64")
    with pytest.raises(ValueError, match=r"'epsilon' = 1e\+308 is outside .* float64"):
        softsort.sort(lib.asarray(X5), epsilon=1e308)


def test_epsilon_array_out_of_range_raises(lib: Lib) -> None:
    """A float64 epsilon array cast to a float32 compute dtype is checked after the cast."""
    x = lib.asarray(X5, dtype=lib.xp.float32)
    for value in (1e-40, 1e7 * 10):
        eps = lib.asarray(value, dtype=lib.xp.float32)
        with pytest.raises(ValueError, match="'epsilon'"):
            softsort.sort(x, epsilon=eps)


def test_epsilon_huge_int_raises_naming_epsilon(lib: Lib) -> None:
    with pytest.raises(ValueError, match="'epsilon' must be finite and > 0, got an integer of 1329 bits"):
        softsort.sort(lib.asarray(X5), epsilon=10**400)


def test_epsilon_bool_array_raises(lib: Lib) -> None:
    with pytest.raises(TypeError, match=r"'epsilon' must be a real number, got an array of dtype .*bool"):
        softsort.sort(lib.asarray(X5), epsilon=lib.asarray(True))


def test_epsilon_of_another_library_raises(lib: Lib) -> None:
    with pytest.raises(TypeError, match="'epsilon' must be an array of the input's library"):
        softsort.sort(lib.asarray(X5), epsilon=foreign(lib, 0.1))


@pytest.mark.parametrize("width", [32, 64])
def test_epsilon_range_ends_are_usable(lib: Lib, width: int) -> None:
    """Both ends of epsilon_range give finite values; the top end is the epsilon -> inf limit (the mean)."""
    if width == 64 and not lib.float64:
        pytest.skip("no float64")
    dtype = lib.xp.float32 if width == 32 else lib.xp.float64
    values = np.random.default_rng(0).normal(size=(3, 8))
    x = lib.asarray(values, dtype=dtype)
    low, high = epsilon_range(dtype, lib.xp)
    assert low <= 1.2e-7  # float32's machine epsilon
    assert high >= 8e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", softsort.ConvergenceWarning)
        tiny = lib.to_numpy(softsort.sort(x, epsilon=low))
    assert np.all(np.isfinite(tiny))
    # Near the hard sort (JAX's solver may stop on max_iterations there, a few percent off).
    np.testing.assert_allclose(tiny, np.sort(values, axis=-1), atol=0.1)
    huge = lib.to_numpy(softsort.sort(x, epsilon=high))
    np.testing.assert_allclose(huge, np.broadcast_to(values.mean(-1, keepdims=True), huge.shape), rtol=1e-5)
    for outside in (low / 2, high * 2):
        with pytest.raises(ValueError, match="outside the range"):
            softsort.sort(x, epsilon=outside)


# -- arrays of the wrong kind ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda L, x: softsort.transport_for_sort(x, weights=[0.2] * 5), "'weights' must be an array"),
        (lambda L, x: softsort.transport_for_sort(x, target_weights=[0.5, 0.5]), "'target_weights' must be an array"),
        (lambda L, x: softsort.ranks(x, target_weights=[0.5, 0.5]), "'target_weights' must be an array"),
        (lambda L, x: softsort.quantile_normalization(x, [0.0, 1.0]), "'targets' must be an array"),
        (
            lambda L, x: softsort.quantile_normalization(x, L.asarray([0.0, 1.0]), weights=[0.5, 0.5]),
            "'weights' must be an array",
        ),
        (lambda L, x: softsort.quantile(x, "abc"), "'q' must be a number, a sequence of numbers or a 1-D array"),
        (lambda L, x: softsort.quantile(x, [0.5, "a"]), "'q' must be a number"),
        (lambda L, x: softsort.quantile(x, True), "'q' must be a number"),
        (lambda L, x: softsort.ranks(x, target_weights=foreign(L, [0.5, 0.5])), "different libraries"),
    ],
)
def test_non_array_argument_raises_naming_it(lib: Lib, call, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        call(lib, lib.asarray(X5))


def test_quantile_default_and_sequence_levels_accepted(lib: Lib) -> None:
    x = lib.asarray(X5)
    default = lib.to_numpy(softsort.quantile(x, epsilon=1e-3))
    given = lib.to_numpy(softsort.quantile(x, (0.2, 0.5, 0.8), epsilon=1e-3))
    np.testing.assert_allclose(default, given)
    np.testing.assert_allclose(given[1], np.median(X5), atol=1e-2)  # the soft median is the median


def test_quantile_level_rounding_to_one_says_so(lib: Lib) -> None:
    x = lib.asarray(X5, dtype=lib.xp.float32)
    with pytest.raises(ValueError, match=r"0\.999999999, which round to 0 or 1 in the compute dtype .*float32"):
        softsort.quantile(x, 0.999999999)
    if lib.float64:  # float64 input: the level is representable and accepted
        out = lib.to_numpy(softsort.quantile(lib.asarray(X5), 0.999999999, epsilon=1e-3))
        assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["x", "epsilon", "targets"])
@pytest.mark.backend("numpy")
def test_masked_array_refused(name: str) -> None:
    x = np.ma.masked_array(X5, mask=[0, 1, 0, 0, 0])
    x[1] = np.nan  # under the mask: np.ma's reductions would skip it
    calls = {
        "x": lambda: softsort.sort(x),
        "epsilon": lambda: softsort.sort(np.asarray(X5), epsilon=np.ma.masked_array(0.1)),
        "targets": lambda: softsort.quantile_normalization(np.asarray(X5), np.ma.masked_array([0.0, 1.0])),
    }
    with pytest.raises(TypeError, match=f"'{name}' is a numpy.ma.MaskedArray"):
        calls[name]()


# -- squashing_fun output -------------------------------------------------------------------------
def test_squashing_fun_bad_outputs_name_it(lib: Lib) -> None:
    x = lib.asarray(X5)
    other_dtype = lib.xp.float32 if lib.float64 else None
    cases = [
        (
            lambda c: foreign(lib, np.zeros(c.shape)),
            TypeError,
            "'squashing_fun' .* output must be an array of",
        ),
        (lambda c: [0.5] * 5, TypeError, "'squashing_fun' .* must return an array of the input's library"),
        (lambda c: c * math.nan, ValueError, "'squashing_fun' .* returned 5 non-finite value"),
        (lambda c: c[..., :2], ValueError, "'squashing_fun' must return an array of the shape it receives"),
    ]
    if other_dtype is not None:
        cases.append((lambda c: lib.xp.astype(c, other_dtype), TypeError, "'squashing_fun' .* must return the dtype"))
    for fun, exc, match in cases:
        with pytest.raises(exc, match=match):
            softsort.sort(x, squashing_fun=fun)


def test_squashing_fun_valid_output_used(lib: Lib) -> None:
    """A valid custom squashing is used as given: min-max scaling sorts like the default at small eps."""
    x = lib.asarray(X5)

    def minmax(c):
        xp = lib.xp
        lo, hi = xp.min(c, axis=-1, keepdims=True), xp.max(c, axis=-1, keepdims=True)
        return (c - lo) / (hi - lo)

    out = lib.to_numpy(softsort.sort(x, epsilon=1e-4, squashing_fun=minmax))
    np.testing.assert_allclose(out, np.sort(X5), atol=1e-2)


# -- vjp cotangents -------------------------------------------------------------------------------
def test_vjp_cotangent_checked(lib: Lib) -> None:
    x = lib.asarray(X5)
    _, pullback = softsort.vjp(softsort.sort, x)
    with pytest.raises(TypeError, match="'cotangent' must be an array of the input's library"):
        pullback([1.0] * 5)
    with pytest.raises(TypeError, match="'cotangent' must be an array of the input's library"):
        pullback(foreign(lib, np.ones(5)))
    with pytest.raises(TypeError, match=r"'cotangent' must hold real numbers, got dtype .*bool"):
        pullback(lib.asarray(np.ones(5, dtype=bool)))
    with pytest.raises(ValueError, match="'cotangent' holds 1 non-finite"):
        pullback(lib.asarray([1.0, np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="cotangent must have the output's shape"):
        pullback(lib.asarray([1.0] * 4))
    # A cotangent of another float dtype is accepted; the gradient has x's dtype.
    g = pullback(lib.asarray(np.ones(5), dtype=lib.xp.float32))
    assert g.dtype == x.dtype


# -- sort_with shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x_shape", "crit_shape"),
    [((1, 1, 2), (1, 1)), ((2, 3, 2), (2, 3)), ((4, 3), (4,)), ((4, 3), (4, 1)), ((4,), (4, 1)), ((3, 1, 2), (3, 1))],
)
def test_sort_with_valid_shapes(lib: Lib, x_shape, crit_shape) -> None:
    """x (..., n, d) by criterion (..., n), and OTT-JAX's (n, 1): equal to the hard row sort at small eps."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=x_shape)
    crit = rng.permutation(math.prod(crit_shape)).reshape(crit_shape).astype(float)
    out = lib.to_numpy(softsort.sort_with(lib.asarray(rows), lib.asarray(crit), epsilon=1e-4))
    r = rows[:, None] if rows.ndim == 1 else rows
    c = crit.reshape(r.shape[:-1])  # the (n, 1) form only drops a trailing axis of size 1
    expected = np.take_along_axis(r, np.argsort(c, axis=-1)[..., None], axis=-2).reshape(rows.shape)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-3)


# -- warnings point at the caller -----------------------------------------------------------------
def _entry_points(lib: Lib):
    x = lib.asarray(np.random.default_rng(0).normal(size=20))
    rows = lib.asarray(np.random.default_rng(1).normal(size=(20, 2)))
    targets = lib.asarray(np.linspace(-1.0, 1.0, 4))
    return {
        "sort": lambda o: softsort.sort(x, **o),
        "ranks": lambda o: softsort.ranks(x, **o),
        "topk_mask": lambda o: softsort.topk_mask(x, 3, **o),
        "quantile": lambda o: softsort.quantile(x, 0.3, **o),
        "quantize": lambda o: softsort.quantize(x, num_levels=3, **o),
        "quantile_normalization": lambda o: softsort.quantile_normalization(x, targets, **o),
        "sort_with": lambda o: softsort.sort_with(rows, x, **o),
        "transport_for_sort": lambda o: softsort.transport_for_sort(x, **o),
        "vjp": lambda o: softsort.vjp(softsort.ranks, x, **o),
    }


@pytest.mark.parametrize(
    "name",
    [
        "sort",
        "ranks",
        "topk_mask",
        "quantile",
        "quantize",
        "quantile_normalization",
        "sort_with",
        "transport_for_sort",
        "vjp",
    ],
)
def test_convergence_warning_points_at_the_caller(lib: Lib, name: str) -> None:
    # The zero start: the exact-dual start solves two-target problems (topk_mask) at once.
    hard = {"epsilon": 1e-3, "threshold": 1e-12, "max_iterations": 1, "inner_iterations": 1, "init": "zeros"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _entry_points(lib)[name](hard)  # the line the warning must point at
    found = [w for w in caught if issubclass(w.category, softsort.ConvergenceWarning)]
    assert found, f"{name}: no ConvergenceWarning"
    assert {w.filename for w in found} == {__file__}, [(w.filename, w.lineno) for w in found]


# -- low precision: every field of TransportResult in the input's dtype ---------------------------
def test_float16_transport_result_dtypes(lib: Lib) -> None:
    if lib.backend not in (Backend.NUMPY, Backend.JAX, Backend.TORCH):
        pytest.skip("no float16")
    x = lib.asarray(X5, dtype=lib.xp.float16)
    out = softsort.transport_for_sort(x)
    for field in ("plan", "f", "g", "errors"):
        assert getattr(out, field).dtype == lib.xp.float16, field


# -- PyTorch: meta tensors, eager torch.func.grad -----------------------------------------------------


def torch_only(test):
    return pytest.mark.backend("torch")(pytest.mark.skipif(not available("torch"), reason="torch not enabled")(test))


@torch_only
def test_torch_meta_tensor_clear_error() -> None:
    import torch

    for f in (softsort.sort, softsort.ranks):
        with pytest.raises(ValueError, match="'x' is a PyTorch meta tensor"):
            f(torch.ones(3, 4, device="meta"))
    with pytest.raises(ValueError, match="'target_weights' is a PyTorch meta tensor"):
        softsort.ranks(torch.ones(4), target_weights=torch.ones(4, device="meta"))


@torch_only
def test_torch_is_concrete_levels() -> None:
    import torch

    from softsort.backends import get_backend

    backend = get_backend(softsort._compat.array_namespace(torch.ones(1)))
    seen = {}

    def probe(name):
        def f(a):
            seen[name] = backend.is_concrete(a)
            return a.sum()

        return f

    torch.func.grad(probe("grad"))(torch.ones(3))
    torch.func.grad(torch.func.grad(probe("grad-grad")))(torch.ones(()))
    torch.func.vmap(probe("vmap"))(torch.ones(2, 3))
    torch.func.vmap(torch.func.grad(probe("vmap-grad")))(torch.ones(2, 3))
    assert seen == {"grad": True, "grad-grad": True, "vmap": False, "vmap-grad": False}
    assert backend.is_concrete(torch.ones(2))
    assert not backend.is_concrete(torch.ones(2, device="meta"))


@torch_only
def test_torch_func_grad_checks_values_like_eager() -> None:
    import torch

    nan = torch.tensor([1.0, math.nan, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="'x' holds 1 non-finite"):
        torch.func.grad(lambda a: softsort.sort(a).sum())(nan)
    with pytest.raises(ValueError, match="'epsilon'"):
        torch.func.grad(lambda e: softsort.sort(torch.ones(3, dtype=torch.float64), epsilon=e).sum())(
            torch.tensor(-1.0, dtype=torch.float64)
        )
    y = torch.asarray(np.random.default_rng(0).normal(size=30))
    with pytest.warns(softsort.ConvergenceWarning):
        torch.func.grad(lambda a: softsort.sort(a, threshold=1e-12, max_iterations=3, inner_iterations=1).sum())(y)
    # The gradient is the one eager autograd gives.
    cot = torch.asarray(np.random.default_rng(1).normal(size=30))
    g_func = torch.func.grad(lambda a: (softsort.ranks(a) * cot).sum())(y)
    leaf = y.clone().requires_grad_()
    (g_eager,) = torch.autograd.grad((softsort.ranks(leaf) * cot).sum(), leaf)
    np.testing.assert_allclose(g_func.numpy(), g_eager.numpy(), rtol=1e-10, atol=1e-12)


@torch_only
def test_torch_vmap_still_skips_value_checks() -> None:
    """Under torch.func.vmap values cannot be read: NaN input gives NaN output, no error."""
    import torch

    x = torch.tensor([[1.0, math.nan, 3.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    out = torch.func.vmap(softsort.sort)(x)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1]).all()
