"""Gradients with respect to every differentiable input other than ``x``, in float64.

epsilon, target weights, input weights, quantile levels and widths, quantile
normalization targets and weights: each against central finite differences, on JAX and
PyTorch (the frameworks that differentiate non-``x`` inputs; ``softsort.vjp`` is with
respect to ``x`` only). Cotangents and directions are random, independent of the inputs.

Probability vectors (``target_weights``, ``weights``) must sum to one, and the plan's
weight cotangents are centred (defined up to a constant): their finite differences are
taken along directions with zero sum, which keep the sum at one. Quantile levels, widths
and normalization targets are free parameters (the target measure they build always sums
to one), so their directions are unconstrained.
"""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib

TIGHT = {"threshold": 1e-12, "max_iterations": 50000}
RNG = np.random.default_rng(2026)
X = RNG.normal(size=7)
H = 1e-5


def _w(k: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).uniform(0.5, 1.5, size=k)
    return w / w.sum()


def _plan(x, **kw):
    return softsort.transport_for_sort(x, **kw).plan


# (id, operator, fixed keyword arguments, {input name: (value, "free" | "simplex")})
CASES = [
    ("sort-epsilon", softsort.sort, {}, {"epsilon": (0.1, "free")}),
    ("sort-topk-epsilon", softsort.sort, {"topk": 3}, {"epsilon": (0.07, "free")}),
    ("ranks-epsilon", softsort.ranks, {}, {"epsilon": (0.1, "free")}),
    ("topk_mask-epsilon", softsort.topk_mask, {"k": 2}, {"epsilon": (0.1, "free")}),
    ("quantize-epsilon", softsort.quantize, {"num_levels": 3}, {"epsilon": (0.1, "free")}),
    ("quantile-epsilon", softsort.quantile, {"q": np.array([0.3, 0.8])}, {"epsilon": (0.1, "free")}),
    ("plan-epsilon", _plan, {}, {"epsilon": (0.1, "free")}),
    ("plan-epsilon-cg", _plan, {"implicit_solver": "cg"}, {"epsilon": (0.1, "free")}),
    ("ranks-target_weights", softsort.ranks, {}, {"target_weights": (_w(4, 1), "simplex")}),
    (
        "ranks-target_weights-cg",
        softsort.ranks,
        {"implicit_solver": "cg"},
        {"target_weights": (_w(4, 1), "simplex")},
    ),
    ("plan-target_weights", _plan, {}, {"target_weights": (_w(5, 2), "simplex")}),
    ("plan-weights", _plan, {}, {"weights": (_w(7, 3), "simplex")}),
    ("plan-weights-wide", _plan, {"target_weights": _w(9, 4)}, {"weights": (_w(7, 3), "simplex")}),
    ("quantile-q", softsort.quantile, {}, {"q": (np.array([0.3, 0.75]), "free")}),
    ("quantile-weight", softsort.quantile, {"q": 0.4}, {"weight": (0.15, "free")}),
    (
        "quantile_normalization-targets",
        softsort.quantile_normalization,
        {},
        {"targets": (np.array([-1.0, 0.5, 2.0]), "free")},
    ),
    (
        "quantile_normalization-weights",
        softsort.quantile_normalization,
        {"targets": np.array([-1.0, 0.5, 2.0])},
        {"weights": (_w(3, 5), "simplex")},
    ),
]


def _needs_autodiff(lib: Lib) -> None:
    if lib.backend not in (Backend.JAX, Backend.TORCH):
        pytest.skip("gradients with respect to inputs other than x need a framework with autodiff")
    if not lib.float64:
        pytest.skip("finite differences need float64")


def _convert(lib: Lib, v):
    return lib.asarray(v) if isinstance(v, np.ndarray) else v


def _loss(lib: Lib, fun, fixed: dict, cot: np.ndarray):
    """``params -> sum(cot * fun(X, **fixed, **params))`` in the framework's arrays."""
    fixed_kw = {k: _convert(lib, v) for k, v in fixed.items()}

    def loss(params: dict):
        out = fun(lib.asarray(X), **{**TIGHT, "epsilon": 0.1, **fixed_kw, **params})
        return (out * lib.asarray(cot)).sum()

    return loss


def _grad(lib: Lib, loss, params: dict) -> dict:
    if lib.backend is Backend.JAX:
        import jax

        return {k: np.asarray(v) for k, v in jax.grad(loss)(params).items()}
    import torch

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(loss(leaves), list(leaves.values()))
    return {k: g.detach().cpu().numpy() for k, g in zip(leaves, grads, strict=True)}


#: epsilon's gradient through four more read-outs: in the slow set under JAX (compile-bound);
#: sort's, ranks' and the plan's stay in its quick set.
JAX_SLOW = ("sort-topk-epsilon", "topk_mask-epsilon", "quantize-epsilon", "quantile-epsilon")


@pytest.mark.parametrize(
    ("name", "fun", "fixed", "inputs"),
    [pytest.param(*c, id=c[0], marks=[pytest.mark.slow_on("jax")] if c[0] in JAX_SLOW else []) for c in CASES],
)
def test_input_gradient_matches_finite_differences(lib: Lib, name, fun, fixed, inputs) -> None:
    _needs_autodiff(lib)
    shape = np.asarray(fun(X, **TIGHT, **{"epsilon": 0.1, **fixed, **{k: v for k, (v, _) in inputs.items()}})).shape
    cot = np.random.default_rng(len(name)).normal(size=shape)
    loss = _loss(lib, fun, fixed, cot)
    base = {k: np.asarray(v, dtype=np.float64) for k, (v, _) in inputs.items()}
    grads = _grad(lib, loss, {k: lib.asarray(v) for k, v in base.items()})
    for key, (_, kind) in inputs.items():
        for seed in range(2):
            d = np.random.default_rng(100 + seed).normal(size=base[key].shape)
            if kind == "simplex":
                d = d - d.mean()  # keeps the sum at one
            d *= 1e-1 if base[key].ndim == 0 else 1e-1 / np.sqrt(d.size)

            def at(t: float, key=key, d=d):
                p = {k: lib.asarray(v + t * d if k == key else v) for k, v in base.items()}
                return float(lib.to_numpy(loss(p)))

            fd = (at(H) - at(-H)) / (2 * H)
            analytic = float(np.sum(grads[key] * d))
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8), (key, seed)


def test_epsilon_gradient_is_not_zero_and_matches_unrolled(lib: Lib) -> None:
    """The implicit epsilon derivative equals differentiation through the iterations."""
    _needs_autodiff(lib)
    cot = np.random.default_rng(7).normal(size=X.shape)
    kw = {"threshold": 1e-12, "max_iterations": 3000}
    g_implicit = _grad(lib, _loss(lib, softsort.ranks, kw, cot), {"epsilon": lib.asarray(np.float64(0.1))})
    unrolled = {**kw, "implicit_diff": False}
    g_unrolled = _grad(lib, _loss(lib, softsort.ranks, unrolled, cot), {"epsilon": lib.asarray(np.float64(0.1))})
    assert abs(float(g_implicit["epsilon"])) > 1e-3
    np.testing.assert_allclose(g_implicit["epsilon"], g_unrolled["epsilon"], rtol=1e-6)
