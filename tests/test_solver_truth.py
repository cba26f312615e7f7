"""``converged`` tells the truth about the returned plan, and ranges hold at every epsilon.

At very small epsilon the potentials in units of epsilon outgrow the dtype's precision;
the plan returned used to differ from the iterate the loop checked (converged=True with
column sums off by O(1), ranks up to 48 for n = 8, sort values of -8.8e33). Now the error
that decides convergence is measured on the returned plan, whose rows are exact, sort
read-outs divide by the plan's own column sums, and an epsilon below what the dtype
resolves is refused.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import softsort

THRESHOLD = 1e-3
#: From this many machine epsilons up every plan converged in the sweeps (JAX, n <= 200:
#: worst column error 1.6e-2 at the limit, 9.8e-4 at 16 times it; NumPy and PyTorch, whose
#: plan is the loop's kernel times its scalings, converge down to the limit).
NEAR_LIMIT = 16


def _sweep(low: float) -> list[float]:
    """From the smallest accepted epsilon up to 0.1, log-spaced."""
    return [float(e) for e in np.geomspace(low, 1e-1, 8)]


#: The quick sweep keeps the points where the claims change: the limit itself (ranges only),
#: the first point where every plan must converge, the middle of the range and the top.
#: The full sweep (eight points, three sizes) is in the slow set.
SWEEPS = {
    "quick": (lambda low: [low, NEAR_LIMIT * low, 1e-3, 1e-1], (3, 40)),
    "full": (_sweep, (3, 8, 40)),
}


def _check_ranges(lib, x, eps):
    with warnings.catch_warnings():  # ranges hold converged or not
        warnings.simplefilter("ignore", softsort.ConvergenceWarning)
        _ranges(lib, x, eps)


def _ranges(lib, x, eps):
    n = x.shape[-1]
    xn = lib.to_numpy(x).astype(np.float64)
    lo, hi = xn.min(-1, keepdims=True), xn.max(-1, keepdims=True)
    slack = 1e-5 * (1.0 + np.abs(xn).max())
    r = lib.to_numpy(softsort.ranks(x, epsilon=eps))
    assert np.all(r >= -slack * n), (eps, r.min())
    assert np.all(r <= n - 1 + slack * n), (eps, r.max())
    s = lib.to_numpy(softsort.sort(x, epsilon=eps))
    assert np.all(s >= lo - slack), (eps, (lo - s).max())
    assert np.all(s <= hi + slack), (eps, (s - hi).max())
    m = lib.to_numpy(softsort.topk_mask(x, 2, epsilon=eps))
    assert np.all(m >= -slack), eps
    assert np.all(m <= 1 + slack), eps
    q = lib.to_numpy(softsort.quantile(x, lib.asarray([0.2, 0.5, 0.9], dtype=x.dtype), epsilon=eps))
    assert np.all(q >= lo - slack), eps
    assert np.all(q <= hi + slack), eps


@pytest.mark.parametrize("sweep", ["quick", pytest.param("full", marks=pytest.mark.slow)])
# Under JAX (compile-bound) the quick set keeps the float32 sweep; float64 is in the slow set there.
@pytest.mark.parametrize(
    "use_float64", [False, pytest.param(True, marks=pytest.mark.slow_on("jax"))], ids=["float32", "float64"]
)
@pytest.mark.parametrize("inner", [1, 10])
def test_ranges_and_convergence_truth_over_epsilon(lib, use_float64, inner, sweep):
    if use_float64 and not lib.float64:
        pytest.skip("no float64 on this backend")
    dtype = lib.xp.float64 if use_float64 else lib.xp.float32
    low = float(np.finfo(np.float64 if use_float64 else np.float32).eps)
    rng = np.random.default_rng(3)
    epsilons, sizes = SWEEPS[sweep]
    for eps in epsilons(low):
        for n in sizes:
            x = lib.asarray(rng.normal(size=(6, n)), dtype=dtype)
            _check_ranges(lib, x, eps)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", softsort.ConvergenceWarning)
                out = softsort.transport_for_sort(x, epsilon=eps, inner_iterations=inner, max_iterations=2000)
            plan = lib.to_numpy(out.plan).astype(np.float64)
            col = np.abs(plan.sum(-2) - 1.0 / n).sum(-1)
            row = np.abs(plan.sum(-1) - 1.0 / n).sum(-1)
            tol = 50 * np.finfo(np.float64 if use_float64 else np.float32).eps
            conv = lib.to_numpy(out.converged)
            err = lib.to_numpy(out.errors)
            # The returned plan's rows are exact; its measured column error decides converged.
            assert np.all(row <= tol), (eps, n, row.max())
            # (within rounding of the threshold either answer is right)
            assert np.all(conv[col < THRESHOLD - tol]), (eps, n, col, conv)
            assert not np.any(conv[col > THRESHOLD + tol]), (eps, n, col, conv)
            # JAX float32 makes its plan from the potentials: rounding can leave it just above
            # the threshold the loop's kernel met (1.0008e-3 at epsilon 2.9e-4, n = 40);
            # converged then says False (asserted above). Known limitation, reported.
            if eps >= NEAR_LIMIT * low and (use_float64 or lib.name != "jax"):
                # Closer to the limit a plan made from the potentials (JAX) can miss the
                # threshold by rounding alone; it then says so (asserted just above).
                assert np.all(conv), (eps, n, col)
            assert err.shape[0] == 6


@pytest.mark.parametrize("use_float64", [False, True], ids=["float32", "float64"])
def test_epsilon_below_dtype_limit_is_refused(lib, use_float64):
    if use_float64 and not lib.float64:
        pytest.skip("no float64 on this backend")
    dtype = lib.xp.float64 if use_float64 else lib.xp.float32
    tiny = [1e-30, 1e-100, 1e-300] if use_float64 else [1e-12, 1e-20, 1e-30, 1e-38]
    low = float(np.finfo(np.float64 if use_float64 else np.float32).eps)
    x = lib.asarray(np.random.default_rng(0).normal(size=(2, 8)), dtype=dtype)
    for eps in tiny:
        for fun in (softsort.ranks, softsort.sort, softsort.transport_for_sort):
            with pytest.raises(ValueError, match=r"epsilon.*outside the range the solver supports") as info:
                fun(x, epsilon=eps)
            assert f"{low:.3g}" in str(info.value)
    # The limit itself is accepted, and converges.
    out = softsort.transport_for_sort(x, epsilon=low)
    assert np.all(lib.to_numpy(out.converged))
    assert math.isfinite(float(np.abs(lib.to_numpy(out.plan)).sum()))


def test_sort_stays_in_range_at_loose_threshold(lib):
    """Dividing by ``b`` overshot [min x, max x] by the plan's column error; not any more."""
    rng = np.random.default_rng(5)
    x = lib.asarray(rng.normal(size=(50, 30)) * 100)
    xn = lib.to_numpy(x)
    s = lib.to_numpy(softsort.sort(x, epsilon=0.5, threshold=0.05))
    assert np.all(s >= xn.min(-1, keepdims=True) - 1e-9 * 100)
    assert np.all(s <= xn.max(-1, keepdims=True) + 1e-9 * 100)


@pytest.mark.backend("numpy")
def test_block_bounded_by_max_iterations():
    """``inner_iterations`` beyond ``max_iterations`` runs at most ``max_iterations`` steps."""
    import time

    x = np.random.default_rng(0).normal(size=(4, 50))
    ref = softsort.transport_for_sort(x, epsilon=1e-2, inner_iterations=20, max_iterations=20, threshold=1.0)
    start = time.perf_counter()
    out = softsort.transport_for_sort(x, epsilon=1e-2, inner_iterations=10**6, max_iterations=20, threshold=1.0)
    elapsed = time.perf_counter() - start
    assert np.all(np.asarray(out.iterations) == 20)
    np.testing.assert_allclose(np.asarray(out.plan), np.asarray(ref.plan), rtol=0, atol=1e-15)
    assert np.asarray(out.errors).shape == (4, 1)
    assert elapsed < 1.0, elapsed  # 10**6 steps took seconds before


def _fd_check(fun, w, direction, cot):
    """Autograd's directional derivative of ``sum(cot * fun(w))`` against central differences."""
    import torch

    w = w.clone().requires_grad_()
    out = fun(w)
    (grad,) = torch.autograd.grad((out * cot).sum(), w)
    h = 1e-6
    with torch.no_grad():
        up = (fun(w + h * direction) * cot).sum()
        down = (fun(w - h * direction) * cot).sum()
    fd = float((up - down) / (2 * h))
    assert abs(float((grad * direction).sum()) - fd) <= 1e-5 * (1 + abs(fd)), (float((grad * direction).sum()), fd)


@pytest.mark.backend("torch")
def test_torch_unrolled_gradient_of_weights_without_x_grad():
    """implicit_diff=False, x without grad, weights with: no in-place update of a saved tensor."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, generator=gen)
    cot = torch.randn(3, 6, dtype=torch.float64, generator=gen)
    w = torch.softmax(torch.randn(6, dtype=torch.float64, generator=gen), 0)
    d = torch.randn(6, dtype=torch.float64, generator=gen)
    d = d - d.mean()  # keeps the weights summing to one
    opts = {"implicit_diff": False, "epsilon": 0.1, "threshold": 1e-12, "max_iterations": 3000}
    _fd_check(lambda t: softsort.ranks(x, target_weights=t, **opts), w, d, cot)
    plan_cot = torch.randn(3, 6, 6, dtype=torch.float64, generator=gen)
    _fd_check(lambda t: softsort.transport_for_sort(x, t, **opts).plan, w, d, plan_cot)
    _fd_check(lambda t: softsort.transport_for_sort(x, None, t, **opts).plan, w, d, plan_cot)
    q = torch.tensor([0.2, 0.7], dtype=torch.float64)
    dq = torch.tensor([1.0, -0.5], dtype=torch.float64)
    _fd_check(lambda t: softsort.quantile(x, t, **opts), q, dq, cot[:, :2])
