"""Second derivatives of every operator, and PyTorch's torch.func transforms over the loops.

Hessian-vector products (JAX: grad of grad, jax.hessian = jacfwd of jacrev; PyTorch:
double backward with create_graph=True, torch.func.hessian) against central finite
differences of the first derivative, in float64, for the dense and the conjugate-gradient
implicit solve. The plan's derivative rules are used at every order (never the Sinkhorn
loop), so the iteration count does not enter. Directions are random, independent of the
input.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

TIGHT = {"threshold": 1e-12, "max_iterations": 50000, "epsilon": 0.1}
RNG = np.random.default_rng(77)
X = RNG.normal(size=6)
H = 1e-5
# PyTorch's first forward-mode call loads decompositions through torch.jit.script, which
# PyTorch itself deprecates (a warning from PyTorch's internals, not from softsort).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _plan(x, **kw):
    return softsort.transport_for_sort(x, num_targets=4, **kw).plan


def _sort_with(x, **kw):
    # the criterion is differentiated too (the values alone enter linearly)
    return softsort.sort_with(x * x, x, **kw)


OPERATORS = [
    ("sort", softsort.sort),
    ("sort-topk", functools.partial(softsort.sort, topk=2)),
    ("ranks", softsort.ranks),
    ("topk_mask", functools.partial(softsort.topk_mask, k=2)),
    ("quantile", functools.partial(softsort.quantile, q=np.array([0.3, 0.8]))),
    ("quantize", functools.partial(softsort.quantize, num_levels=3)),
    ("quantile_normalization", functools.partial(softsort.quantile_normalization, targets=np.array([-1.0, 0.0, 2.0]))),
    ("sort_with", _sort_with),
    ("transport_for_sort", _plan),
]
#: Conjugate gradients on two operators in the quick set, on every operator in the slow set
#: (the dense solve covers every operator in both). Under JAX, where each case compiles its
#: second-order program (10-30 s), the quick set keeps sort's dense solve only.
CG_QUICK = ("sort", "ranks")


def _marks(name: str, solver: str) -> list[pytest.MarkDecorator]:
    if solver == "cg" and name not in CG_QUICK:
        return [pytest.mark.slow]
    return [] if (name, solver) == ("sort", "dense") else [pytest.mark.slow_on("jax")]


CASES = [
    pytest.param(name, fun, solver, id=f"{name}-{solver}", marks=_marks(name, solver))
    for name, fun in OPERATORS
    for solver in ("dense", "cg")
]


def _arrays(lib: Lib, fun):
    """``fun`` with its NumPy keyword arrays converted to the backend's."""
    if not isinstance(fun, functools.partial):
        return fun
    kw = {k: lib.asarray(v) if isinstance(v, np.ndarray) else v for k, v in fun.keywords.items()}
    return functools.partial(fun.func, **kw)


def _framework(lib: Lib) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH):
        pytest.skip("second derivatives need a framework with autodiff")
    if not lib.float64:
        pytest.skip("finite differences need float64")


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize(("name", "fun", "solver"), CASES)
def test_hessian_vector_product_matches_finite_differences(lib: Lib, name, fun, solver) -> None:
    _framework(lib)
    op = _arrays(lib, fun)
    out_shape = np.asarray(fun(X, **TIGHT)).shape
    cot = lib.asarray(np.random.default_rng(len(name)).normal(size=out_shape))
    d = np.random.default_rng(5).normal(size=X.shape)
    kw = {**TIGHT, "implicit_solver": solver}

    def loss(x):
        return (op(x, **kw) * cot).sum()

    if lib.backend is Backend.JAX:
        import jax

        grad = jax.grad(loss)
        fd = (np.asarray(grad(lib.asarray(X + H * d))) - np.asarray(grad(lib.asarray(X - H * d)))) / (2 * H)
        hvp = jax.grad(lambda x: grad(x) @ lib.asarray(d))(lib.asarray(X))
        _assert_close(np.asarray(hvp), fd)
        hess = jax.hessian(loss)(lib.asarray(X))
        _assert_close(np.asarray(hess @ lib.asarray(d)), fd)
        # symmetric, as a Hessian must be (up to the CG tolerance)
        _assert_close(np.asarray(hess), np.asarray(hess).T)
    else:
        import torch

        def grad_at(x):
            xt = lib.asarray(x).requires_grad_(True)
            return torch.autograd.grad(loss(xt), xt)[0].numpy()

        fd = (grad_at(X + H * d) - grad_at(X - H * d)) / (2 * H)
        xt = lib.asarray(X).requires_grad_(True)
        (g,) = torch.autograd.grad(loss(xt), xt, create_graph=True)
        (hvp,) = torch.autograd.grad(g @ lib.asarray(d), xt)
        _assert_close(hvp.numpy(), fd)
        hess = torch.func.hessian(loss)(lib.asarray(X))
        _assert_close((hess @ lib.asarray(d)).numpy(), fd)


def test_second_derivative_in_epsilon(lib: Lib) -> None:
    """d^2/deps^2 (mixed orders through the epsilon rule) against differences of the first."""
    _framework(lib)
    x = lib.asarray(X)
    cot = lib.asarray(np.random.default_rng(3).normal(size=X.shape))
    kw = {k: v for k, v in TIGHT.items() if k != "epsilon"}

    def loss(e):
        return (softsort.ranks(x, epsilon=e, **kw) * cot).sum()

    e0 = 0.1
    if lib.backend is Backend.JAX:
        import jax

        d1 = jax.grad(loss)
        d2 = float(jax.grad(d1)(e0))
        fd = (float(d1(e0 + H)) - float(d1(e0 - H))) / (2 * H)
    else:
        import torch

        def d1(e):
            et = lib.asarray(np.float64(e)).requires_grad_(True)
            return torch.autograd.grad(loss(et), et, create_graph=True)[0], et

        g, et = d1(e0)
        d2 = float(torch.autograd.grad(g, et)[0])
        fd = (float(d1(e0 + H)[0].detach()) - float(d1(e0 - H)[0].detach())) / (2 * H)
    assert d2 == pytest.approx(fd, rel=1e-5, abs=1e-6)


# -- torch.func over the loops (conjugate gradients for n > 128, unrolled Sinkhorn) ------------
N_CG = 150  # above the dense limit: the implicit backward runs conjugate gradients
KW_CG = {"epsilon": 0.1, "threshold": 1e-10, "max_iterations": 20000}


def _torch(lib: Lib):
    if lib.backend is not Backend.TORCH or not lib.float64:
        pytest.skip("torch.func transforms, float64")
    import torch

    return torch


def test_torch_vmap_of_grad_with_cg(lib: Lib) -> None:
    torch = _torch(lib)
    xs = lib.asarray(np.random.default_rng(11).normal(size=(3, N_CG)))
    w = lib.asarray(np.random.default_rng(12).normal(size=N_CG))

    def loss(x):
        return (w * softsort.ranks(x, **KW_CG)).sum()

    batched = torch.func.vmap(torch.func.grad(loss))(xs)
    one_by_one = torch.stack([torch.func.grad(loss)(x) for x in xs])
    np.testing.assert_allclose(batched.numpy(), one_by_one.numpy(), rtol=1e-9, atol=1e-9)


def test_torch_jacrev_with_cg(lib: Lib) -> None:
    torch = _torch(lib)
    x = lib.asarray(np.random.default_rng(13).normal(size=N_CG))
    jac = torch.func.jacrev(lambda v: softsort.sort(v, **KW_CG))(x)
    xt = x.clone().requires_grad_(True)
    out = softsort.sort(xt, **KW_CG)
    for i in (0, 74, 149):
        (row,) = torch.autograd.grad(out[i], xt, retain_graph=True)
        np.testing.assert_allclose(jac[i].numpy(), row.numpy(), rtol=1e-9, atol=1e-9)


def test_torch_vmap_unrolled(lib: Lib) -> None:
    """vmap with implicit_diff=False: values and gradients equal per-example loops."""
    torch = _torch(lib)
    xs = lib.asarray(np.random.default_rng(14).normal(size=(4, 9)))
    w = lib.asarray(np.random.default_rng(15).normal(size=9))
    kw = {"epsilon": 0.3, "threshold": 1e-9, "max_iterations": 3000, "implicit_diff": False}

    def sort(x):
        return softsort.sort(x, **kw)

    np.testing.assert_allclose(
        torch.func.vmap(sort)(xs).numpy(), torch.stack([sort(x) for x in xs]).numpy(), rtol=1e-12, atol=1e-12
    )

    def loss(x):
        return (w * sort(x)).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(xs)
    ref = torch.stack([torch.func.grad(loss)(x) for x in xs])
    np.testing.assert_allclose(grads.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)
