"""Gradient accuracy per operator and backend: relative error against central differences.

    python benchmarks/gradcheck.py

float64, epsilon 0.1, threshold 1e-12; random cotangents and directions independent of
the inputs. NumPy goes through ``softsort.vjp``, JAX through ``jax.vjp``, PyTorch through
autograd. Prints a markdown table of max relative errors over three directions.
"""

from __future__ import annotations

import functools

import numpy as np

import softsort

KW = {"epsilon": 0.1, "threshold": 1e-12, "max_iterations": 50000}
X = np.random.default_rng(0).normal(size=(3, 8))
OPS = {
    "sort": (softsort.sort, {}),
    "sort topk=3": (softsort.sort, {"topk": 3}),
    "sort num_targets=5": (softsort.sort, {"num_targets": 5}),
    "ranks": (softsort.ranks, {}),
    "ranks target_weights": (softsort.ranks, {"target_weights": np.array([0.1, 0.2, 0.3, 0.4])}),
    "topk_mask k=2": (softsort.topk_mask, {"k": 2}),
    "quantile q=[0.7,0.2]": (softsort.quantile, {"q": np.array([0.7, 0.2])}),
    "quantize 3 levels": (softsort.quantize, {"num_levels": 3}),
    "quantile_normalization": (softsort.quantile_normalization, {"targets": np.array([-1.0, 0.5, 2.0])}),
    "ranks (CG solve)": (softsort.ranks, {"implicit_solver": "cg"}),
}


def _numpy(fun, kw, x, cot):
    _, pull = softsort.vjp(fun, x, **kw)
    return pull(cot)


def _jax(fun, kw, x, cot):
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        _, pull = jax.vjp(lambda a: fun(a, **kw), jnp.asarray(x))
        return np.asarray(pull(jnp.asarray(cot))[0])


def _torch(fun, kw, x, cot):
    import torch

    kw = {k: torch.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    xt = torch.asarray(x).requires_grad_(True)
    (g,) = torch.autograd.grad(fun(xt, **kw), xt, torch.asarray(cot))
    return g.numpy()


def main() -> None:
    backends = {"numpy (softsort.vjp)": _numpy}
    try:
        import jax  # noqa: F401

        backends["jax (jax.vjp)"] = _jax
    except ImportError:
        pass
    try:
        import torch  # noqa: F401

        backends["torch (autograd)"] = _torch
    except ImportError:
        pass
    print("| operator | " + " | ".join(backends) + " |")
    print("|---" * (len(backends) + 1) + "|")
    for name, (fun, extra) in OPS.items():
        kw = {**KW, **extra}
        f = functools.partial(fun, **kw)
        out = f(X)
        cot = np.random.default_rng(1).normal(size=out.shape)
        errs = []
        for backend in backends.values():
            grad = backend(fun, kw, X, cot)
            worst = 0.0
            for seed in range(3):
                d = np.random.default_rng(10 + seed).normal(size=X.shape)
                h = 1e-5
                fd = (np.sum(cot * f(X + h * d)) - np.sum(cot * f(X - h * d))) / (2 * h)
                worst = max(worst, abs(np.sum(grad * d) - fd) / max(abs(fd), 1e-12))
            errs.append(f"{worst:.1e}")
        print(f"| {name} | " + " | ".join(errs) + " |")


if __name__ == "__main__":
    main()
