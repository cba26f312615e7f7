"""``memory_budget`` bounds the working memory of one call.

What is measured: NumPy, tracemalloc's peak of the bytes NumPy allocates during the call
(in a fresh subprocess, after a warm-up call), against ``memory_budget`` plus the arrays the
call hands back (counted twice: chunks' results are joined by a concatenation). PyTorch
autograd over a chunked batch: the bytes autograd saves for the backward.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import softsort

ROOT = Path(__file__).resolve().parents[1]

_PEAK = """
import json, sys, tracemalloc
sys.path.insert(0, {root!r})
import numpy as np, softsort
rng = np.random.default_rng(0)
softsort.vjp(softsort.sort, rng.normal(size=(2, 5)), memory_budget=10**6)[1](np.ones((2, 5)))
x = rng.normal(size=({b}, {n}))
cot = rng.normal(size=x.shape)
budget = {budget}
tracemalloc.start()
out = softsort.sort(x, memory_budget=budget)
_, forward = tracemalloc.get_traced_memory()
del out
tracemalloc.reset_peak()
out, pull = softsort.vjp(softsort.sort, x, memory_budget=budget)
grad = pull(cot)
_, backward = tracemalloc.get_traced_memory()
print(json.dumps({{"forward": forward, "vjp": backward, "out": out.nbytes, "grad": grad.nbytes}}))
"""


def _peaks(b: int, n: int, budget: int) -> dict:
    code = _PEAK.format(root=str(ROOT), b=b, n=n, budget=budget)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("b", "n"), [(10000, 50), (8000, 50), (300, 200)])
@pytest.mark.backend("numpy")
def test_numpy_peak_within_budget(b, n):
    """Forward and vjp of a chunked batch stay within the budget plus what they return.

    Before: 10000 x 50 with 8 MiB used 164 MiB (every chunk's plan kept), and vjp on
    8000 x 50 138 MiB (every chunk's pull-back kept its plan).
    """
    budget = 8 * 2**20
    p = _peaks(b, n, budget)
    slack = 2**20  # interpreter and small vectors
    assert p["forward"] <= budget + 2 * p["out"] + slack, p
    assert p["vjp"] <= budget + p["out"] + 2 * p["grad"] + slack, p


def test_one_problem_over_budget_is_refused(lib):
    """transport_for_sort, whose answer is the plan, refuses a problem over the budget, naming the bytes.

    The other operators solve such a problem block by block (tests/test_blockwise.py): the
    same result as with a budget that fits.
    """
    x = lib.asarray(np.random.default_rng(0).normal(size=(3, 100)))
    itemsize = 8 if lib.float64 else 4
    need = 6 * 100 * 100 * itemsize
    with pytest.raises(ValueError, match=r"memory_budget.*" + str(need)):
        softsort.transport_for_sort(x, memory_budget=need - 1)
    for fun in (softsort.sort, softsort.ranks):
        blocked = lib.to_numpy(fun(x, memory_budget=need - 1))
        np.testing.assert_allclose(blocked, lib.to_numpy(fun(x)), rtol=0, atol=1e-9 if lib.float64 else 1e-3)
    out = softsort.transport_for_sort(x, memory_budget=need).plan  # exactly one row per chunk fits
    np.testing.assert_allclose(lib.to_numpy(out), lib.to_numpy(softsort.transport_for_sort(x).plan), atol=1e-12)


@pytest.mark.backend("numpy")
def test_refused_before_allocating():
    """transport_for_sort of n = 4000 with 4 MiB raises at once (it used to allocate 61 MiB first)."""
    code = f"""
import sys, tracemalloc
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, softsort
x = np.random.default_rng(0).normal(size=(1, 4000))
softsort.transport_for_sort(np.ones((1, 3)) * np.arange(3))
tracemalloc.start()
try:
    softsort.transport_for_sort(x, memory_budget=4 * 2**20)
except ValueError as e:
    print(tracemalloc.get_traced_memory()[1], 'memory_budget' in str(e))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    peak, named = res.stdout.split()
    assert named == "True"
    assert int(peak) < 2**20


@pytest.mark.backend("torch")
def test_torch_autograd_chunks_keep_no_plans():
    """Under autograd each chunk is checkpointed: saved tensors no longer hold every plan."""
    torch = pytest.importorskip("torch")
    x0 = torch.tensor(np.random.default_rng(0).normal(size=(64, 100)), dtype=torch.float64)
    cot = torch.tensor(np.random.default_rng(1).normal(size=(64, 100)), dtype=torch.float64)
    budget = 8 * 6 * 100 * 100 * 8  # 8 rows per chunk
    results = {}
    for b in (2**30, budget):
        x = x0.clone().requires_grad_()
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = softsort.ranks(x, epsilon=1e-2, memory_budget=b)
        (grad,) = torch.autograd.grad((out * cot).sum(), x)
        results[b] = (saved[0], grad)
    plans = 64 * 100 * 100 * 8
    assert results[2**30][0] >= plans  # unchunked: at least the plan is saved
    assert results[budget][0] <= budget  # chunked: within the budget
    np.testing.assert_allclose(results[budget][1].numpy(), results[2**30][1].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.backend("jax")
def test_jax_chunked_gradient_matches():
    """jax.grad over a chunked batch (each chunk under jax.checkpoint) equals the unchunked one."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    # 7 rows, 3 per chunk: full chunks and a remainder, as many rows did (each chunk shape compiles)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 30)), dtype=jnp.float32)
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(7, 30)), dtype=jnp.float32)
    small = 3 * 6 * 30 * 30 * 4

    def loss(a, budget):
        return jnp.sum(softsort.ranks(a, epsilon=1e-2, memory_budget=budget) * cot)

    # float32: chunks and the whole batch round differently (compaction differs). The eager
    # jax.grad (op by op: each operation compiles on its own, most of this test's time) is
    # what is checked on the chunked call; the unchunked reference is one jitted program.
    jitted = jax.jit(jax.grad(loss), static_argnums=1)
    g_full = jitted(x, 2**30)
    g_chunk = jax.grad(loss)(x, small)
    g_jit = jitted(x, small)
    np.testing.assert_allclose(
        np.asarray(g_chunk), np.asarray(g_full), rtol=1e-3, atol=1e-4
    )  # float32: chunks round differently
    np.testing.assert_allclose(
        np.asarray(g_jit), np.asarray(g_full), rtol=1e-3, atol=1e-4
    )  # float32: chunks round differently
