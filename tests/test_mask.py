"""Ragged rows, ``mask=``: each row's result is the operator on that row's valid entries alone.

Every operator on a batch of rows with different numbers of valid entries (all, a few,
one, none) is compared with unmasked calls on each row's valid values (float64: 1e-6;
the masked batch runs the same iterations, so the agreement is to rounding); outputs at
invalid positions are zeros; gradients at valid positions match the per-row gradients and
finite differences, are exactly zero at invalid positions and never NaN.
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

RNG = np.random.default_rng(7)
X = RNG.normal(size=(5, 6))
MASK = np.array(
    [
        [True] * 6,  # every entry
        [False, False, True, False, False, False],  # one
        [False] * 6,  # none
        [True, False, True, True, False, True],  # ragged
        [False, True, True, False, True, False],
    ]
)
ROWS = np.stack([X, X**2], axis=-1)  # for sort_with: rows (5, 6, 2) sorted by X

# name: (operator on (x, **options), how its output is laid out)
#   "first": each row's values first, zeros after; "inputs": one value per input, zeros
#   at invalid ones; "all": a fixed number of values per row (zeros for an empty row).
OPS = {
    "sort": (lambda x, **o: softsort.sort(x, **o), "first"),
    "sort descending": (lambda x, **o: softsort.sort(x, descending=True, **o), "first"),
    "sort num_targets": (lambda x, **o: softsort.sort(x, num_targets=3, **o), "all"),
    "sort topk": (lambda x, **o: softsort.sort(x, topk=3, **o), "first"),
    "sort topk descending": (lambda x, **o: softsort.sort(x, topk=3, descending=True, **o), "first"),
    "ranks": (lambda x, **o: softsort.ranks(x, **o), "inputs"),
    "ranks descending": (lambda x, **o: softsort.ranks(x, descending=True, **o), "inputs"),
    "ranks num_targets": (lambda x, **o: softsort.ranks(x, num_targets=3, **o), "inputs"),
    "topk_mask": (lambda x, **o: softsort.topk_mask(x, 2, **o), "inputs"),
    "quantile": (lambda x, **o: softsort.quantile(x, [0.7, 0.3], **o), "all"),
    "quantize": (lambda x, **o: softsort.quantize(x, num_levels=3, **o), "inputs"),
    "quantile_normalization": (lambda x, **o: _qn(x, **o), "inputs"),
}


def _qn(x, **o):
    xp = softsort._compat.array_namespace(x)
    t = xp.asarray([0.0, 1.0, 3.0], dtype=x.dtype, device=softsort._compat.device(x))
    return softsort.quantile_normalization(x, t, **o)


def _tol(lib: Lib) -> float:
    return 1e-6 if lib.float64 else 2e-4


#: Every operator runs on NumPy and array-api-strict (the math is the same code on every
#: backend); JAX compiles each new shape, so JAX and PyTorch run a subset that covers
#: every read-out kind (per-row targets, top-k, per-input values, quantiles).
_FRAMEWORK_OPS = {"sort", "sort topk descending", "ranks", "topk_mask", "quantile", "quantize"}


def _subset(lib: Lib, name: str) -> None:
    if lib.backend in (Backend.JAX, Backend.TORCH) and name not in _FRAMEWORK_OPS:
        pytest.skip("covered on NumPy and array-api-strict (same code); JAX compiles every shape")


def _np_lib() -> Lib:
    return Lib(Backend.NUMPY, np, None, True)


def _reference(lib: Lib, name: str, row: np.ndarray, valid: np.ndarray, width: int, **options) -> np.ndarray:
    """The operator on the row's valid values alone, laid out as the masked output."""
    fun, layout = OPS[name]
    if lib.backend in (Backend.JAX, Backend.TORCH):
        lib = _np_lib()  # the same computation; per-row shapes would each compile under JAX
    v = row[valid]
    c = v.shape[0]
    out = np.zeros(width)
    if c == 0:
        return out
    if name == "topk_mask" and c <= 2:
        ref = np.ones(c)  # documented: a row of at most k values keeps them all
    else:
        ref = lib.to_numpy(fun(lib.asarray(v), **options))
    if layout == "inputs":
        out[valid] = ref
    else:
        out[: ref.shape[0]] = ref
    return out


@pytest.mark.parametrize("name", list(OPS))
def test_each_row_is_the_operator_on_its_valid_entries(lib: Lib, name) -> None:
    _subset(lib, name)
    fun, _ = OPS[name]
    opts = {"epsilon": 0.05}
    out = lib.to_numpy(fun(lib.asarray(X), mask=lib.asarray(MASK), **opts))
    assert np.all(np.isfinite(out))
    for i in range(X.shape[0]):
        ref = _reference(lib, name, X[i], MASK[i], out.shape[-1], **opts)
        np.testing.assert_allclose(out[i], ref, atol=_tol(lib), err_msg=f"row {i}")


@pytest.mark.slow_on("jax")  # compile-bound under JAX
def test_sort_with_rows(lib: Lib) -> None:
    opts = {"epsilon": 0.05}
    for topk in (None, 2):
        out = lib.to_numpy(
            softsort.sort_with(lib.asarray(ROWS), lib.asarray(X), topk=topk, mask=lib.asarray(MASK), **opts)
        )
        for i in range(X.shape[0]):
            ref = np.zeros(out.shape[1:])
            c = int(MASK[i].sum())
            if c:
                r = softsort.sort_with(lib.asarray(ROWS[i][MASK[i]]), lib.asarray(X[i][MASK[i]]), topk=topk, **opts)
                r = lib.to_numpy(r)
                ref[: r.shape[0]] = r
            np.testing.assert_allclose(out[i], ref, atol=_tol(lib), err_msg=f"topk={topk} row {i}")


def test_straight_through_with_mask(lib: Lib) -> None:
    x, m = lib.asarray(X), lib.asarray(MASK)
    ranks = lib.to_numpy(softsort.ranks(x, mask=m, straight_through=True))
    hard = np.zeros_like(X)
    for i in range(X.shape[0]):
        v = X[i][MASK[i]]
        hard[i][MASK[i]] = np.argsort(np.argsort(v))
    np.testing.assert_allclose(ranks, hard, atol=1e-9 if lib.float64 else 1e-5)
    s = lib.to_numpy(softsort.sort(x, mask=m, straight_through=True))
    for i in range(X.shape[0]):
        v = np.sort(X[i][MASK[i]])
        np.testing.assert_allclose(s[i], np.concatenate([v, np.zeros(6 - v.size)]), atol=1e-9 if lib.float64 else 1e-5)


def test_mask_broadcasts_and_follows_axis(lib: Lib) -> None:
    if lib.backend is Backend.JAX:
        pytest.skip("layout code shared by every backend; JAX compiles each shape")
    x = lib.asarray(X)
    row = np.array([True, False, True, True, True, False])
    full = lib.to_numpy(softsort.ranks(x, mask=lib.asarray(np.broadcast_to(row, X.shape).copy())))
    np.testing.assert_allclose(lib.to_numpy(softsort.ranks(x, mask=lib.asarray(row))), full, atol=1e-12)
    along0 = lib.to_numpy(softsort.ranks(lib.asarray(X.T.copy()), axis=0, mask=lib.asarray(row[:, None])))
    np.testing.assert_allclose(along0.T, full, atol=1e-12)
    col = lib.asarray(np.array([[True], [False], [True], [True], [False]]))
    q = lib.to_numpy(softsort.quantile(x, 0.5, mask=col))
    assert np.all(q[[1, 4]] == 0)
    assert np.all(q[[0, 2, 3]] != 0)


def test_invalid_entries_do_not_matter(lib: Lib) -> None:
    m = lib.asarray(MASK)
    other = np.where(MASK, X, 1e6)
    for name in ("sort", "ranks", "quantile"):
        fun = OPS[name][0]
        a = lib.to_numpy(fun(lib.asarray(X), mask=m))
        b = lib.to_numpy(fun(lib.asarray(other), mask=m))
        np.testing.assert_array_equal(a, b)


def test_transport_for_sort_with_mask(lib: Lib) -> None:
    t = softsort.transport_for_sort(lib.asarray(X), mask=lib.asarray(MASK), epsilon=0.05)
    plan, f, g = (lib.to_numpy(a) for a in (t.plan, t.f, t.g))
    for i in range(X.shape[0]):
        c = int(MASK[i].sum())
        ref = np.zeros((6, 6))
        ref_f, ref_g = np.zeros(6), np.zeros(6)
        if c:
            r = softsort.transport_for_sort(X[i][MASK[i]], epsilon=0.05)
            ref[np.ix_(MASK[i], np.arange(c))] = r.plan
            ref_f[MASK[i]], ref_g[:c] = r.f, r.g
            assert int(lib.to_numpy(t.iterations)[i]) == int(r.iterations)
        np.testing.assert_allclose(plan[i], ref, atol=_tol(lib) / 10, err_msg=f"row {i}")
        np.testing.assert_allclose(f[i], ref_f, atol=_tol(lib))
        np.testing.assert_allclose(g[i], ref_g, atol=_tol(lib))
    with pytest.raises(ValueError, match="'mask' or 'weights'"):
        softsort.transport_for_sort(lib.asarray(X), lib.asarray(np.full(6, 1 / 6)), mask=lib.asarray(MASK))


def test_chunked_batches_give_the_same_rows(lib: Lib) -> None:
    if lib.backend is Backend.JAX:
        pytest.skip("eager chunks are the other backends' loop; JAX compiles each shape")
    # memory_budget of one problem: every row is solved alone, one chunk after the other
    x, m = lib.asarray(X), lib.asarray(MASK)
    whole = lib.to_numpy(softsort.sort(x, mask=m, topk=2))
    chunked = lib.to_numpy(softsort.sort(x, mask=m, topk=2, memory_budget=6 * 6 * 3 * 8))
    np.testing.assert_array_equal(chunked, whole)


# -- gradients ---------------------------------------------------------------------------------
_GRAD_OPS = ["sort", "sort topk descending", "ranks", "topk_mask", "quantile", "quantize"]
_TIGHT = {"epsilon": 0.1, "threshold": 1e-12, "max_iterations": 20000}


def _grad(lib: Lib, fun, x, mask, cot, **options) -> np.ndarray:
    if lib.backend is Backend.JAX:
        import jax

        return np.asarray(jax.grad(lambda v: (fun(v, mask=mask, **options) * cot).sum())(x))
    v = x.detach().clone().requires_grad_(True)
    (fun(v, mask=mask, **options) * cot).sum().backward()
    return v.grad.numpy()


@pytest.mark.parametrize("name", _GRAD_OPS)
def test_gradients(lib: Lib, name) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("framework autodiff in float64")
    if lib.backend is Backend.JAX and name not in ("sort", "ranks", "quantile"):
        # both plan paths (per-row targets, shared targets); each compiles for a minute
        pytest.skip("the other read-outs' JAX gradients are those of PyTorch's test (same code)")
    fun = OPS[name][0]
    x, m = lib.asarray(X), lib.asarray(MASK)
    out = lib.to_numpy(fun(x, mask=m, **_TIGHT))
    cot_np = np.random.default_rng(1).normal(size=out.shape)
    g = _grad(lib, fun, x, m, lib.asarray(cot_np), **_TIGHT)
    assert np.all(np.isfinite(g))
    assert np.all(g[~MASK] == 0.0)  # exactly
    # finite differences at the valid positions of one ragged row (evaluated with NumPy:
    # the same computation, without a compilation per call under JAX)
    i, h = 3, 1e-6
    for j in np.flatnonzero(MASK[i]):
        step = np.zeros_like(X)
        step[i, j] = h
        up = fun(X + step, mask=MASK, **_TIGHT)
        down = fun(X - step, mask=MASK, **_TIGHT)
        fd = np.sum((up - down) * cot_np) / (2 * h)
        np.testing.assert_allclose(g[i, j], fd, rtol=1e-5, atol=1e-7, err_msg=f"entry {j}")


def test_sort_with_gradient_is_zero_at_invalid_rows(lib: Lib) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH) or not lib.float64:
        pytest.skip("framework autodiff in float64")
    crit, m = lib.asarray(X), lib.asarray(MASK)
    cot = lib.asarray(np.random.default_rng(2).normal(size=ROWS.shape))

    def fun(rows, mask, **o):
        return softsort.sort_with(rows, crit, mask=mask, **o)

    g = _grad(lib, fun, lib.asarray(ROWS), m, cot, epsilon=0.1)
    assert np.all(np.isfinite(g))
    assert np.all(g[~MASK] == 0.0)
    assert np.any(g[MASK] != 0.0)


@pytest.mark.parametrize("name", ["sort", "ranks", "quantize"])
def test_vjp_without_a_framework(lib: Lib, name) -> None:
    if not lib.float64 or lib.backend in (Backend.JAX, Backend.TORCH):
        pytest.skip("softsort.vjp, for libraries without autodiff, in float64")
    fun = {"sort": softsort.sort, "ranks": softsort.ranks, "quantize": softsort.quantize}[name]
    extra = {"num_levels": 3} if name == "quantize" else {}
    x, m = lib.asarray(X), lib.asarray(MASK)
    out, pull = softsort.vjp(fun, x, mask=m, **extra)
    np.testing.assert_allclose(lib.to_numpy(out), lib.to_numpy(fun(x, mask=m, **extra)), atol=1e-12)
    cot = np.random.default_rng(4).normal(size=tuple(out.shape))
    g = lib.to_numpy(pull(lib.asarray(cot)))
    assert np.all(np.isfinite(g))
    assert np.all(g[~MASK] == 0.0)
    for i in (0, 3, 4):  # the per-row pull-back of the row's valid values alone
        c = int(MASK[i].sum())
        _, pull_row = softsort.vjp(fun, lib.asarray(X[i][MASK[i]]), **extra)
        row_cot = cot[i][MASK[i]] if name != "sort" else cot[i][:c]
        ref = lib.to_numpy(pull_row(lib.asarray(row_cot)))
        np.testing.assert_allclose(g[i][MASK[i]], ref, rtol=1e-6, atol=1e-9)


# -- JAX transformations -------------------------------------------------------------------------
def test_jax_jit_and_vmap(lib: Lib) -> None:
    if lib.backend is not Backend.JAX:
        pytest.skip("JAX only")
    import jax

    x, m = lib.asarray(X), lib.asarray(MASK)
    # references from NumPy (the same computation): fewer compilations
    jitted = jax.jit(lambda v, k: softsort.sort(v, mask=k))(x, m)
    np.testing.assert_allclose(np.asarray(jitted), softsort.sort(X, mask=MASK), atol=_tol(lib))
    mapped = jax.vmap(lambda v, k: softsort.ranks(v, mask=k))(x, m)
    np.testing.assert_allclose(np.asarray(mapped), softsort.ranks(X, mask=MASK), atol=_tol(lib))
    # forward mode (per-row target positions too): the adjoint of reverse mode
    tangent = lib.asarray(np.random.default_rng(5).normal(size=X.shape))
    cot = lib.asarray(np.random.default_rng(6).normal(size=X.shape))

    def sort(v):
        return softsort.sort(v, mask=m)

    _, forward = jax.jvp(sort, (x,), (tangent,))
    reverse = jax.grad(lambda v: (sort(v) * cot).sum())(x)
    np.testing.assert_allclose(float((forward * cot).sum()), float((reverse * tangent).sum()), rtol=1e-9)
    assert np.all(np.isfinite(np.asarray(reverse)))
    assert np.all(np.asarray(reverse)[~MASK] == 0.0)


# -- errors ----------------------------------------------------------------------------------------
def test_bad_masks_are_refused(lib: Lib) -> None:
    x = lib.asarray(X)
    with pytest.raises(TypeError, match=r"'mask'.*boolean"):
        softsort.sort(x, mask=lib.asarray(MASK.astype(np.int32)))
    with pytest.raises(ValueError, match="'mask' of shape"):
        softsort.ranks(x, mask=lib.asarray(MASK[:, :3]))
    with pytest.raises(TypeError, match="'mask'"):
        softsort.quantile(x, 0.5, mask=MASK.tolist())
    with pytest.raises(ValueError, match="'mask' with the default squashing"):
        softsort.sort(x, mask=lib.asarray(MASK), squashing_fun=lambda v: v)
    if lib.backend is not Backend.NUMPY:
        with pytest.raises(TypeError, match="'mask'"):
            softsort.sort(x, mask=MASK)
