"""Log-domain Sinkhorn for the 1-D sorting problems, batched over leading rows.

Documented by :func:`softsort.transport_for_sort`. One call solves ``B`` independent
problems between ``n`` squashed inputs ``z`` (uniform weights ``1/n``) and ``m`` targets
``linspace(0, 1, m)`` with weights ``b``, for the cost ``C_ij = (z_i - y_j)**2``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._compat import device
from ._config import ACCELERATE_BELOW, SolverConfig
from ._dual import exact_dual
from ._lse import logsumexp


class SinkhornOutput(NamedTuple):
    """Arrays produced by :func:`solve` (all with the batch as leading axis)."""

    f: Any  # (B, n) potential of the inputs
    g: Any  # (B, m) potential of the targets
    errors: Any  # (B, num_checks) L1 error of the target marginal at each check, -1 unused
    iterations: Any  # (B,) Sinkhorn iterations run for each problem
    final_error: Any  # (B,) error at the last check (inf if never checked)
    plan: Any  # (B, n, m) the transport plan exp((f + g - C) / eps)


def targets_like(xp: Any, z: Any, m: int) -> Any:
    """Target positions ``linspace(0, 1, m)`` with the dtype and device of ``z``."""
    if m == 1:
        return xp.zeros((1,), dtype=z.dtype, device=device(z))
    return xp.linspace(0.0, 1.0, m, dtype=z.dtype, device=device(z))


def cost_matrix(xp: Any, z: Any, y: Any) -> Any:
    """``C[..., i, j] = (z[..., i] - y[j])**2``."""
    d = z[..., :, None] - y
    return d * d


def plan_from_potentials(backend: Any, f: Any, g: Any, cost: Any, eps: Any) -> Any:
    """``P_ij = exp((f_i + g_j - C_ij) / eps)``."""
    xp = backend.xp
    return xp.exp((f[..., :, None] + g[..., None, :] - cost) / eps[..., None, None])


def solve(backend: Any, config: SolverConfig, z: Any, a: Any, b: Any, eps: Any) -> SinkhornOutput:
    """Run Sinkhorn until the L1 error of the target marginal is below the threshold.

    ``z`` and ``a`` are (B, n), ``b`` is (B, m) (weights: rows sum to one), ``eps`` is
    (B,). The error is checked every ``inner_iterations`` (after the ``f`` update, so the
    input marginal is exact); a row stops when its error is below ``threshold`` or not
    finite, and the loop when every row has stopped or at ``max_iterations``, which is
    never exceeded. Also returns the plan, so the cost matrix is built once per solve.
    """
    xp = backend.xp
    dev = device(z)
    cost = cost_matrix(xp, z, targets_like(xp, z, b.shape[-1]))
    e = eps[..., None, None]
    eps_col = eps[..., None]
    log_a = xp.log(a)
    log_b = xp.log(b)
    inner, max_it = config.inner_iterations, config.max_iterations
    num_checks = config.num_checks
    check_ids = xp.arange(num_checks, device=dev)

    def g_update(f: Any) -> Any:
        return eps_col * (log_b - logsumexp(backend, (f[..., :, None] - cost) / e, axis=-2))

    def f_update(g: Any) -> Any:
        return eps_col * (log_a - logsumexp(backend, (g[..., None, :] - cost) / e, axis=-1))

    def marginal_error(f: Any, g: Any) -> Any:
        log_col = g / eps_col + logsumexp(backend, (f[..., :, None] - cost) / e, axis=-2)
        return xp.sum(xp.abs(xp.exp(log_col) - b), axis=-1)

    adaptive = config.momentum == "adaptive"
    omega_fixed = 1.0 if adaptive else float(config.momentum)
    use_kernel = config.kernel_steps and inner > 1
    # Scalings beyond this (in log) are absorbed into the potentials and the kernel rebuilt.
    absorb_at = 0.1 * math.log(xp.finfo(z.dtype).max)

    def relax(old: Any, new: Any, omega: Any, j: int) -> Any:
        # over-relax all but the last step of a block: rows are exact at the checks
        return old + omega * (new - old) if j < inner - 1 else new

    def partial(old: Any, new: Any, it: Any, j: int) -> Any:
        # the last block may be partial: keep max_iterations exact
        return xp.where((it + j) < max_it, new, old) if max_it % inner else new

    def log_block(f: Any, g: Any, it: Any, omega: Any) -> tuple[Any, Any, Any]:
        for j in range(inner):
            g_new = partial(g, relax(g, g_update(f), omega, j), it, j)
            f = partial(f, relax(f, f_update(g_new), omega, j), it, j)
            g = g_new
        return f, g, marginal_error(f, g)

    def gibbs(f: Any, g: Any) -> Any:
        return _gibbs_kernel(xp, f, g, cost, eps)

    def body(state: tuple[Any, ...], first: bool = False) -> tuple[Any, ...]:
        f0, g0, lu0, lv0, kernel0, errors, it, omega, last_err, row_it = state
        # Rows already below the threshold (or diverged) are frozen, exactly as under
        # jax.vmap: a row's result does not depend on the rest of its batch.
        active = last_err >= config.threshold
        keep = active[..., None]
        lu = lv = kernel = None
        if not use_kernel:
            f, g, err = log_block(f0, g0, it, omega)
        elif first:
            # One log-domain step makes the Gibbs kernel the current plan: every row and
            # column then holds significant entries (exp(-C / eps) alone may underflow).
            g = partial(g0, relax(g0, g_update(f0), omega, 0), it, 0)
            f = partial(f0, relax(f0, f_update(g), omega, 0), it, 0)
            kernel = gibbs(f, g)
            lu, lv, err = run_steps(kernel, xp.zeros_like(f), xp.zeros_like(g), range(1, inner), omega, it)
        else:
            f, g, kernel = f0, g0, kernel0
            lu, lv, err = run_steps(kernel, lu0, lv0, range(inner), omega, it)
            lu, lv = xp.where(keep, lu, lu0), xp.where(keep, lv, lv0)
        f = xp.where(keep, f, f0)
        g = xp.where(keep, g, g0)
        if use_kernel:
            f, g, lu, lv, kernel = _absorb_large(backend, f, g, lu, lv, kernel, eps, absorb_at, gibbs)
        # Diagnostics and step sizes steer the loop only: never differentiated (unrolled
        # differentiation through 0 ** (1/inner) and sqrt(0) would give NaN).
        err = backend.stop_gradient(err)
        k = it // inner
        errors = xp.where((check_ids == k) & keep, err[..., None], errors)
        if adaptive:
            omega = xp.where(keep, _adapt_omega(xp, k, omega, err, last_err, inner, eps), omega)
        steps = xp.minimum(xp.asarray(inner, dtype=it.dtype, device=dev), max_it - it)
        row_it = row_it + xp.where(active, steps, xp.zeros_like(steps))
        it = it + steps
        return f, g, lu, lv, kernel, errors, it, omega, xp.where(active, err, last_err), row_it

    def run_steps(kernel: Any, lu: Any, lv: Any, js: range, omega: Any, it: Any) -> tuple[Any, Any, Any]:
        if not adaptive and omega_fixed == 1.0:  # plain steps: no logs, no relaxation
            return _plain_kernel_steps(xp, kernel, lu, lv, a, b, js, lambda old, new, j: partial(old, new, it, j))

        def step(old: Any, new: Any, j: int) -> Any:
            return partial(old, relax(old, new, omega, j), it, j)

        return _kernel_steps(xp, kernel, lu, lv, log_a, log_b, b, js, step)

    def cond(state: tuple[Any, ...]) -> Any:
        it, last_err = state[6], state[8]
        # NaN >= threshold is False: a diverged row stops instead of spinning.
        return xp.logical_and(it < max_it, xp.any(last_err >= config.threshold))

    batch = z.shape[:-1]
    f0, g0 = _start(xp, config.init, z, a, b, eps)
    errors0 = -xp.ones((*batch, num_checks), dtype=z.dtype, device=dev)
    it0 = xp.asarray(0, dtype=xp.int32, device=dev)
    row_it0 = xp.zeros(batch, dtype=xp.int32, device=dev)
    err0 = xp.full(batch, math.inf, dtype=z.dtype, device=dev)
    if math.prod(batch) == 0:  # nothing to solve; any() of an empty batch is False anyway
        return SinkhornOutput(f0, g0, errors0, row_it0, err0, plan_from_potentials(backend, f0, g0, cost, eps))
    omega0 = xp.full((*batch, 1), omega_fixed, dtype=z.dtype, device=dev)
    state = (f0, g0, None, None, None, errors0, it0, omega0, err0, row_it0)
    # The first block always runs (every error starts at inf); the loop carries the kernel
    # and the scalings from there.
    state = body(state, first=True)
    if config.implicit_diff:
        state = backend.while_loop(cond, body, state)
    else:
        state = backend.bounded_while_loop(cond, body, state, num_checks - 1)
    f, g, lu, lv, _, errors, _, _, last_err, row_it = state
    if use_kernel:
        f, g = f + eps_col * lu, g + eps_col * lv
    # From the potentials, not as kernel * u * v (two products instead of an exp, 20% less
    # time for NumPy/PyTorch at n = 1000): keeping the loop's kernel alive up to here
    # raised JAX's compiled gradient of sort n=1000 from 4.0 to 7.0 arrays of n x m.
    plan = plan_from_potentials(backend, f, g, cost, eps)
    return SinkhornOutput(f, g, errors, row_it, last_err, plan)


def _start(xp: Any, init: str, z: Any, a: Any, b: Any, eps: Any) -> tuple[Any, Any]:
    """Starting potentials (see ``SolverConfig.init``)."""
    dev = device(z)
    f0 = xp.zeros(z.shape, dtype=z.dtype, device=dev)
    g0 = xp.zeros(b.shape, dtype=z.dtype, device=dev)
    if init == "zeros" or math.prod(z.shape) == 0:
        return f0, g0
    f, g = exact_dual(xp, z, a, b)
    if init == "auto":  # epsilon is an array here (resolved before when it is a number)
        fast = (eps < ACCELERATE_BELOW)[..., None]
        f, g = xp.where(fast, f, f0), xp.where(fast, g, g0)
    return f, g


def _gibbs_kernel(xp: Any, f: Any, g: Any, cost: Any, eps: Any) -> Any:
    """``K = exp((f + g - C) / eps)``, entries below the smallest normal float set to zero.

    Flushed entries carry no mass, and denormal operands slow down the matrix products of
    many CPU BLAS kernels. The exponent is clamped first: PyTorch's CPU exp takes a ~30x
    slower path when its result underflows (measured 273 us vs 8 us for 10^4 values).
    """
    log_kernel = (f[..., :, None] + g[..., None, :] - cost) / eps[..., None, None]
    log_tiny = math.log(xp.finfo(f.dtype).smallest_normal)
    # Written so that NaN (from NaN input, or epsilon poisoned under jit) stays NaN.
    return xp.where(log_kernel <= log_tiny, xp.zeros_like(log_kernel), xp.exp(xp.maximum(log_kernel, log_tiny)))


def _kernel_steps(
    xp: Any, kernel: Any, log_u: Any, log_v: Any, log_a: Any, log_b: Any, b: Any, steps: range, relax: Any
) -> tuple[Any, Any, Any]:
    """Sinkhorn steps in kernel space: ``v <- b / K^T u``, ``u <- a / K v`` (in log, relaxed).

    The potentials are ``f + eps log u`` and ``g + eps log v`` for the ``f, g`` the kernel
    was built from: the iterates are those of log-domain Sinkhorn, at the cost of two
    matrix-vector products per step instead of two log-sum-exps. ``relax(old, new, j)``
    applies over-relaxation and the ``max_iterations`` cut to step ``j`` of the block.
    Returns ``(log_u, log_v, error)``, the error being the L1 distance of the column sums
    to ``b``.
    """
    tiny = xp.finfo(log_u.dtype).smallest_normal
    cap = _log_scaling_cap(xp, log_u.dtype)
    u = xp.exp(log_u)
    for j in steps:
        ktu = _vm(u, kernel)
        step_v = log_b - xp.log(xp.where(ktu > tiny, ktu, xp.full_like(ktu, tiny)))
        log_v = xp.clip(relax(log_v, step_v, j), -cap, cap)
        kv = _mv(kernel, xp.exp(log_v))
        step_u = log_a - xp.log(xp.where(kv > tiny, kv, xp.full_like(kv, tiny)))
        log_u = xp.clip(relax(log_u, step_u, j), -cap, cap)
        u = xp.exp(log_u)
    column = xp.exp(log_v) * _vm(u, kernel)
    return log_u, log_v, xp.sum(xp.abs(column - b), axis=-1)


def _mv(kernel: Any, vec: Any) -> Any:
    """``K v`` for every problem of the batch."""
    return (kernel @ vec[..., None])[..., 0]


def _vm(vec: Any, kernel: Any) -> Any:
    """``K^T u``, computed as ``u^T K`` on the contiguous kernel."""
    return (vec[..., None, :] @ kernel)[..., 0, :]


def _log_scaling_cap(xp: Any, dtype: Any) -> float:
    """Bound on ``|log u|, |log v|`` within a block: 0.9 log of the largest float.

    The scalings stay moderate unless a column or row of K underflows entirely (far from the
    fixed point, amplified by over-relaxation); the kernel is a plan of total mass one when
    built, so with the cap ``K u`` and ``K^T v`` stay finite, and the next absorption repairs
    the path.
    """
    return 0.9 * math.log(xp.finfo(dtype).max)


def _plain_kernel_steps(
    xp: Any, kernel: Any, log_u: Any, log_v: Any, a: Any, b: Any, steps: range, cut: Any
) -> tuple[Any, Any, Any]:
    """:func:`_kernel_steps` without over-relaxation, on the scalings themselves.

    One division per half-step instead of a log, an exp and a relaxation (the matrix-vector
    products are the same): plain Sinkhorn, the path at epsilon >= 5e-3. The scalings are
    kept in ``[exp(-c), exp(c)]`` for the cap ``c`` of :func:`_log_scaling_cap`.
    """
    tiny = xp.finfo(log_u.dtype).smallest_normal
    c = _log_scaling_cap(xp, log_u.dtype)
    low, high = math.exp(-c), math.exp(c)
    u, v = xp.exp(log_u), xp.exp(log_v)
    for j in steps:
        v = cut(v, xp.clip(b / xp.maximum(_vm(u, kernel), tiny), low, high), j)
        u = cut(u, xp.clip(a / xp.maximum(_mv(kernel, v), tiny), low, high), j)
    column = v * _vm(u, kernel)
    return xp.log(u), xp.log(v), xp.sum(xp.abs(column - b), axis=-1)


def _absorb_large(
    backend: Any, f: Any, g: Any, log_u: Any, log_v: Any, kernel: Any, eps: Any, limit: float, gibbs: Any
) -> tuple[Any, ...]:
    """Absorb the scalings of the rows where one exceeds ``exp(limit)``: rebuild their kernel.

    Between absorptions an entry flushed to zero could only have grown by ``exp(2 limit)``
    (``limit`` is a tenth of the log of the largest float: below 1e-30 of a unit mass in
    float32), and no product can overflow. Rows whose scalings stay small keep their kernel,
    so most blocks cost matrix-vector products only; the rebuild (one ``exp`` of the
    ``n x m`` array) runs only when some row needs it.
    """
    xp = backend.xp
    big = (xp.max(xp.abs(log_u), axis=-1) > limit) | (xp.max(xp.abs(log_v), axis=-1) > limit)

    def absorb(ops: tuple[Any, ...]) -> tuple[Any, ...]:
        f, g, log_u, log_v, kernel = ops
        row = big[..., None]
        eps_col = eps[..., None]
        f = xp.where(row, f + eps_col * log_u, f)
        g = xp.where(row, g + eps_col * log_v, g)
        kernel = xp.where(row[..., None], gibbs(f, g), kernel)
        return f, g, xp.where(row, xp.zeros_like(log_u), log_u), xp.where(row, xp.zeros_like(log_v), log_v), kernel

    return backend.cond(xp.any(big), absorb, lambda ops: ops, (f, g, log_u, log_v, kernel))


#: Highest over-relaxation the adaptive rule picks (2 is the limit of convergence).
OMEGA_MAX = 1.9


def _adapt_omega(xp: Any, k: Any, omega: Any, err: Any, prev_err: Any, inner: int, eps: Any) -> Any:
    """Adaptive over-relaxation, per problem of the batch.

    After two plain blocks the error ratio estimates the contraction ``kappa`` of plain
    Sinkhorn per iteration; the over-relaxation ``2 / (1 + sqrt(1 - kappa))`` (the SOR
    optimum for that rate, as in Thibault et al. 2017, "Overrelaxed Sinkhorn-Knopp") is
    then fixed. If the error later grows, the row falls back towards plain steps. The
    fixed point is unchanged: only the path to it.

    Only for ``epsilon < ACCELERATE_BELOW``: there plain Sinkhorn needs hundreds to thousands
    of iterations and over-relaxation cuts them 4-20x. At larger epsilon plain Sinkhorn
    needs tens, and staying plain keeps results at the default threshold on the same
    path as OTT-JAX's (within 2e-3 on the tutorial's example, a promise of the core).
    """
    ratio = err / xp.where(prev_err > 0, prev_err, xp.ones_like(prev_err))
    ratio = xp.where(xp.isfinite(ratio), ratio, xp.zeros_like(ratio))
    kappa = xp.clip(ratio, 0.0, 0.999) ** (1.0 / inner)
    estimate = xp.clip(2.0 / (1.0 + xp.sqrt(1.0 - kappa)), 1.0, OMEGA_MAX)
    estimate = xp.where(eps < ACCELERATE_BELOW, estimate, xp.ones_like(estimate))
    omega = xp.where(k == 1, estimate[..., None], omega)
    grew = (k > 1) & (err > prev_err)
    return xp.where(grew[..., None], 1.0 + 0.5 * (omega - 1.0), omega)
