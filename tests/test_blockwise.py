"""One problem over ``memory_budget`` is solved and read block by block (``_core/_blocked.py``).

The blocked path is checked against the dense one on the same problems, with a budget small
enough to force blocks of a few rows (and a last, smaller block): values, gradients with
respect to every differentiable input (float64), the solver's diagnostics and
``converged`` semantics, ``jax.jit``, the options that need the whole plan (refused), and
the memory of a mid-size call (NumPy, tracemalloc, in a fresh process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib
from softsort._core import _blocked
from softsort._core import _operators as ops
from softsort._core._config import SolverConfig
from softsort.backends import get_backend

#: Under JAX (compile-bound: each block size and read-out compiles) this module is in the slow set;
#: the blocked path is the same array-API code on every backend, checked in the quick set on the others.
pytestmark = pytest.mark.slow_on("jax")

ROOT = Path(__file__).resolve().parents[1]
N = 23  # 7-row blocks: three of them and a last one of 2 rows


def _budget(m: int, itemsize: int = 8, rows: int = 7) -> int:
    """A budget whose blocks hold ``rows`` rows of ``m`` targets (well below the dense need)."""
    return _blocked.BLOCK_ARRAYS * m * itemsize * rows


CASES = [
    ("sort", lambda x, **kw: softsort.sort(x, **kw), N),
    ("ranks", lambda x, **kw: softsort.ranks(x, **kw), N),
    ("topk_mask", lambda x, **kw: softsort.topk_mask(x, 3, **kw), 2),
    ("sort_topk", lambda x, **kw: softsort.sort(x, topk=4, descending=True, **kw), 5),
    ("quantize", lambda x, **kw: softsort.quantize(x, num_levels=4, **kw), 4),
]


def _x(lib: Lib, shape: tuple[int, ...] = (2, N)) -> object:
    return lib.asarray(np.random.default_rng(0).normal(size=shape))


@pytest.mark.parametrize(("name", "fun", "m"), CASES, ids=[c[0] for c in CASES])
def test_blocked_values_match_dense(lib: Lib, name: str, fun, m: int) -> None:
    x = _x(lib)
    itemsize = 8 if lib.float64 else 4
    dense = lib.to_numpy(fun(x, epsilon=0.05))
    blocked = lib.to_numpy(fun(x, epsilon=0.05, memory_budget=_budget(m, itemsize)))
    np.testing.assert_allclose(blocked, dense, rtol=0, atol=1e-10 if lib.float64 else 2e-4)


def test_blocked_other_readouts_match_dense(lib: Lib) -> None:
    """quantile (dense Schur complement by blocks), sort_with (rows), quantile_normalization."""
    x = _x(lib)
    q = lib.asarray(np.array([0.2, 0.7]))
    rows = lib.asarray(np.random.default_rng(1).normal(size=(2, N, 3)))
    tgt = lib.asarray(np.linspace(-1.0, 2.0, 6))
    tol = 1e-10 if lib.float64 else 2e-4
    pairs = [
        (lambda **kw: softsort.quantile(x, q, **kw), 5),
        (lambda **kw: softsort.sort_with(rows, x, **kw), N),
        (lambda **kw: softsort.quantile_normalization(x, tgt, **kw), 6),
    ]
    for fun, m in pairs:
        dense = lib.to_numpy(fun(epsilon=0.05))
        blocked = lib.to_numpy(fun(epsilon=0.05, memory_budget=_budget(m, 8 if lib.float64 else 4)))
        np.testing.assert_allclose(blocked, dense, rtol=0, atol=tol)


@pytest.mark.parametrize("epsilon", [0.05, 1e-3])
def test_blocked_vjp_matches_dense(lib: Lib, epsilon: float) -> None:
    """softsort.vjp (hand-written backward, every backend): value and gradient, float64."""
    if not lib.float64:
        pytest.skip("float64 comparison")
    x = _x(lib)
    cot = lib.asarray(np.random.default_rng(2).normal(size=(2, N)))
    for fun, m in ((softsort.sort, N), (softsort.ranks, N), (softsort.quantize, 10)):
        kw = {"epsilon": epsilon}
        out_d, pull_d = softsort.vjp(fun, x, **kw)
        out_b, pull_b = softsort.vjp(fun, x, memory_budget=_budget(m), **kw)
        np.testing.assert_allclose(lib.to_numpy(out_b), lib.to_numpy(out_d), rtol=0, atol=1e-10)
        g_d, g_b = lib.to_numpy(pull_d(cot)), lib.to_numpy(pull_b(cot))
        np.testing.assert_allclose(g_b, g_d, rtol=1e-7, atol=1e-9 * np.abs(g_d).max())


def test_blocked_solver_diagnostics_match_dense(lib: Lib) -> None:
    """Same iterations, errors and final error; ``converged`` judged on the returned plan.

    The final error is the L1 column error of the plan the read-outs use, recomputed here
    from that plan's products; a cap of 20 iterations leaves some rows unconverged, which
    warns on both paths alike.
    """
    if not lib.float64:
        pytest.skip("float64 comparison")
    x = _x(lib, (2, N))
    backend = get_backend(lib.xp)
    op = ops.ranks_op(None, None)
    eps = lib.asarray(np.float64(2e-3))
    for max_it in (2000, 20):
        # The blocked solver has no Newton steps (_newton.applies: dense rows only): compared
        # with the dense path without them, the iterates are the same; with them, the dense
        # path reaches the same fixed point sooner (tests/test_newton.py).
        dense_cfg = SolverConfig(max_iterations=max_it, threshold=1e-6, newton=False)
        blocked_cfg = SolverConfig(max_iterations=max_it, threshold=1e-6, memory_budget=_budget(N))
        _, td = ops.run(backend, op, x, x, eps, None, dense_cfg)
        outs = []
        for s in range(2):  # the blocked path solves one problem per chunk
            row = x[s : s + 1, ...]
            assert ops.blocked_rows(backend, op, row, blocked_cfg) == 7
            outs.append(ops.run(backend, op, row, row, eps, None, blocked_cfg)[1])
        iters = np.concatenate([lib.to_numpy(t.iterations) for t in outs])
        final = np.concatenate([lib.to_numpy(t.final_error) for t in outs])
        np.testing.assert_array_equal(iters, lib.to_numpy(td.iterations))
        np.testing.assert_allclose(final, lib.to_numpy(td.final_error), rtol=1e-6, atol=1e-14)
        errors = np.concatenate([lib.to_numpy(t.errors) for t in outs])
        np.testing.assert_allclose(errors, lib.to_numpy(td.errors), rtol=1e-6, atol=1e-14)
        for t in outs:
            b = np.full(N, 1.0 / N)
            col = lib.to_numpy(t.plan.col_sums())[0]
            assert abs(np.abs(col - b).sum() - float(lib.to_numpy(t.final_error)[0])) < 1e-14
        converged = final < 1e-6
        assert converged.all() == (max_it == 2000)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            softsort.ranks(x, epsilon=2e-3, max_iterations=max_it, threshold=1e-6, memory_budget=_budget(N))
        assert any(issubclass(w.category, softsort.ConvergenceWarning) for w in caught) == (max_it == 20)


def test_options_needing_the_whole_plan_are_refused(lib: Lib) -> None:
    x = _x(lib)
    budget = _budget(N)
    with pytest.raises(ValueError, match="transport_for_sort returns the plan"):
        softsort.transport_for_sort(x, memory_budget=budget)
    with pytest.raises(ValueError, match="straight_through"):
        softsort.ranks(x, straight_through=True, memory_budget=budget)
    with pytest.raises(ValueError, match="implicit_diff=False"):
        softsort.ranks(x, implicit_diff=False, memory_budget=budget)
    with pytest.raises(ValueError, match="even one row"):
        softsort.ranks(x, memory_budget=8)


def _jax_grads(fun, args, budget):
    import jax
    import jax.numpy as jnp

    cot = jnp.asarray(np.random.default_rng(3).normal(size=(2, N)))

    def loss(*a):
        return jnp.sum(fun(*a, budget) * cot)

    return jax.grad(loss, argnums=tuple(range(len(args))))(*args)


def test_jax_gradients_every_input_and_jit(lib: Lib) -> None:
    """jax.grad w.r.t. x, epsilon and target_weights; the same under jax.jit (static blocks)."""
    if lib.backend is not Backend.JAX or not lib.float64:
        pytest.skip("JAX in float64")
    import jax
    import jax.numpy as jnp

    x = _x(lib)
    w = jnp.asarray(np.random.default_rng(4).uniform(1.0, 2.0, size=N))
    w = w / jnp.sum(w)

    def fun(x, e, w, budget):
        return softsort.ranks(x, epsilon=e, target_weights=w, memory_budget=budget)

    args = (x, jnp.asarray(0.05), w)
    dense = _jax_grads(fun, args, 2**30)
    blocked = _jax_grads(fun, args, _budget(N))
    for gd, gb in zip(dense, blocked, strict=True):
        np.testing.assert_allclose(np.asarray(gb), np.asarray(gd), rtol=1e-7, atol=1e-9 * float(jnp.abs(gd).max()))
    jitted = jax.jit(lambda x: softsort.sort(x, epsilon=0.05, memory_budget=_budget(N)))
    np.testing.assert_allclose(np.asarray(jitted(x)), np.asarray(softsort.sort(x, epsilon=0.05)), atol=1e-10)
    g_jit = jax.jit(jax.grad(lambda x: jnp.sum(fun(x, 0.05, w, _budget(N)) * x)))(x)
    g_ref = jax.grad(lambda x: jnp.sum(fun(x, 0.05, w, 2**30) * x))(x)
    np.testing.assert_allclose(np.asarray(g_jit), np.asarray(g_ref), rtol=1e-7, atol=1e-9)


# PyTorch's forward mode warns about its own use of torch.jit.script (as in test_higher_order.py).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_gradients_every_input(lib: Lib) -> None:
    """autograd w.r.t. x, epsilon, quantile levels q and weight; forward mode says it is not available."""
    if lib.backend is not Backend.TORCH:
        pytest.skip("PyTorch")
    import torch

    x0 = np.random.default_rng(0).normal(size=(2, N))
    cot = torch.tensor(np.random.default_rng(5).normal(size=(2, 2)))
    grads = []
    for budget in (2**30, _budget(5)):
        x = torch.tensor(x0, requires_grad=True)
        e = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        q = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
        wt = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        out = softsort.quantile(x, q, weight=wt, epsilon=e, memory_budget=budget)
        grads.append(torch.autograd.grad((out * cot).sum(), (x, e, q, wt)))
    for gd, gb in zip(*grads, strict=True):
        np.testing.assert_allclose(gb.numpy(), gd.numpy(), rtol=1e-7, atol=1e-9 * float(gd.abs().max()))
    x = torch.tensor(x0)
    with pytest.raises(NotImplementedError, match="memory_budget"):
        torch.func.jvp(lambda v: softsort.ranks(v, memory_budget=_budget(N)), (x,), (torch.ones_like(x),))


_PEAK = """
import json, sys, tracemalloc
sys.path.insert(0, {root!r})
import numpy as np, softsort
rng = np.random.default_rng(0)
softsort.vjp(softsort.ranks, rng.normal(size=(1, 50)), memory_budget=10**4)[1](np.ones((1, 50)))
x = rng.normal(size=({n},))
budget = {budget}
tracemalloc.start()
out = softsort.ranks(x, memory_budget=budget)
_, forward = tracemalloc.get_traced_memory()
tracemalloc.reset_peak()
out, pull = softsort.vjp(softsort.ranks, x, memory_budget=budget)
grad = pull(np.ones_like(x))
_, backward = tracemalloc.get_traced_memory()
print(json.dumps({{"forward": forward, "vjp": backward}}))
"""


@pytest.mark.slow
def test_numpy_blocked_peak_within_budget() -> None:
    """n = 1200 in float64 (an 11.5 MB plan, 69 MB of dense working set) with a 1 MiB budget.

    Forward and vjp stay within the budget (tracemalloc: every NumPy allocation, vectors too).
    """
    budget = 2**20
    code = _PEAK.format(root=str(ROOT), n=1200, budget=budget)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    peak = json.loads(res.stdout.strip().splitlines()[-1])
    assert peak["forward"] <= budget, peak
    assert peak["vjp"] <= budget, peak
