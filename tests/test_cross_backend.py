"""Values and gradients agree across NumPy, JAX and PyTorch in float64 (to 1e-8)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import softsort

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jnp = jax.numpy

KW = {"epsilon": 0.05, "threshold": 1e-10, "max_iterations": 50000}
X = np.random.default_rng(7).normal(size=(3, 9))
COT = np.random.default_rng(8).normal(size=(3, 9))

OPS = {
    "sort": softsort.sort,
    "sort-topk": functools.partial(softsort.sort, topk=3),
    "ranks": softsort.ranks,
    "ranks-num_targets": functools.partial(softsort.ranks, num_targets=4),
    "topk_mask": functools.partial(softsort.topk_mask, k=3),
    "quantile": functools.partial(softsort.quantile, q=np.array([0.6, 0.1])),
    "quantize": functools.partial(softsort.quantize, num_levels=3),
    "quantile_normalization": functools.partial(softsort.quantile_normalization, targets=np.array([0.0, 1.0, 3.0])),
}


def _numpy(fun, x, cot_fn):
    base, kw = fun.func if isinstance(fun, functools.partial) else fun, dict(getattr(fun, "keywords", {}))
    out, pull = softsort.vjp(base, x, **kw, **KW)
    return out, pull(cot_fn(out.shape))


def _jax(fun, x, cot_fn):
    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in getattr(fun, "keywords", {}).items()}
    base = fun.func if isinstance(fun, functools.partial) else fun
    out, pull = jax.vjp(lambda a: base(a, **kw, **KW), jnp.asarray(x))
    return np.asarray(out), np.asarray(pull(jnp.asarray(cot_fn(out.shape)))[0])


def _torch(fun, x, cot_fn):
    kw = {k: torch.asarray(v) if isinstance(v, np.ndarray) else v for k, v in getattr(fun, "keywords", {}).items()}
    base = fun.func if isinstance(fun, functools.partial) else fun
    xt = torch.asarray(x).requires_grad_(True)
    out = base(xt, **kw, **KW)
    (g,) = torch.autograd.grad(out, xt, torch.asarray(cot_fn(tuple(out.shape))))
    return out.detach().numpy(), g.numpy()


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", list(OPS))
def test_values_and_gradients_agree(name) -> None:
    fun = OPS[name]
    cot_fn = lambda shape: np.random.default_rng(9).normal(size=shape)
    v_np, g_np = _numpy(fun, X, cot_fn)
    v_jax, g_jax = _jax(fun, X, cot_fn)
    v_t, g_t = _torch(fun, X, cot_fn)
    np.testing.assert_allclose(v_jax, v_np, atol=1e-8)
    np.testing.assert_allclose(v_t, v_np, atol=1e-8)
    np.testing.assert_allclose(g_jax, g_np, atol=1e-8)
    np.testing.assert_allclose(g_t, g_np, atol=1e-8)
