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
    never exceeded.
    """
    xp = backend.xp
    dev = device(z)
    m = b.shape[-1]
    y = targets_like(xp, z, m)
    cost = cost_matrix(xp, z, y)
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

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        f0, g0, errors, it, omega, last_err, row_it = state
        # Rows already below the threshold (or diverged) are frozen, exactly as under
        # jax.vmap: a row's result does not depend on the rest of its batch.
        active = last_err >= config.threshold
        if config.kernel_steps and inner > 1:
            f, g, err = _kernel_block(
                xp, f0, g0, it, omega, log_a, log_b, b, cost, eps, inner, max_it, g_update, f_update
            )
        else:
            f, g = f0, g0
            for j in range(inner):
                g_new = g_update(f)
                if j < inner - 1:  # over-relax all but the last step: rows are exact at checks
                    g_new = g + omega * (g_new - g)
                f_new = f_update(g_new)
                if j < inner - 1:
                    f_new = f + omega * (f_new - f)
                if max_it % inner:  # the last block may be partial: keep max_iterations exact
                    keep = (it + j) < max_it
                    g_new = xp.where(keep, g_new, g)
                    f_new = xp.where(keep, f_new, f)
                f, g = f_new, g_new
            err = marginal_error(f, g)
        f = xp.where(active[..., None], f, f0)
        g = xp.where(active[..., None], g, g0)
        # Diagnostics and step sizes steer the loop only: never differentiated (unrolled
        # differentiation through 0 ** (1/inner) and sqrt(0) would give NaN).
        err = backend.stop_gradient(err)
        k = it // inner
        errors = xp.where((check_ids == k) & active[..., None], err[..., None], errors)
        if adaptive:
            omega = xp.where(active[..., None], _adapt_omega(xp, k, omega, err, last_err, inner, eps), omega)
        steps = xp.minimum(xp.asarray(inner, dtype=it.dtype, device=dev), max_it - it)
        row_it = row_it + xp.where(active, steps, xp.zeros_like(steps))
        it = it + steps
        return f, g, errors, it, omega, xp.where(active, err, last_err), row_it

    def cond(state: tuple[Any, ...]) -> Any:
        it, last_err = state[3], state[5]
        # NaN >= threshold is False: a diverged row stops instead of spinning.
        return xp.logical_and(it < max_it, xp.any(last_err >= config.threshold))

    batch = z.shape[:-1]
    f0, g0 = _start(xp, config.init, z, a, b, eps)
    errors0 = -xp.ones((*batch, num_checks), dtype=z.dtype, device=dev)
    it0 = xp.asarray(0, dtype=xp.int32, device=dev)
    row_it0 = xp.zeros(batch, dtype=xp.int32, device=dev)
    err0 = xp.full(batch, math.inf, dtype=z.dtype, device=dev)
    if math.prod(batch) == 0:  # nothing to solve; any() of an empty batch is False anyway
        return SinkhornOutput(f0, g0, errors0, row_it0, err0)
    omega0 = xp.full((*batch, 1), omega_fixed, dtype=z.dtype, device=dev)
    state = (f0, g0, errors0, it0, omega0, err0, row_it0)
    if config.implicit_diff:
        state = backend.while_loop(cond, body, state)
    else:
        state = backend.bounded_while_loop(cond, body, state, num_checks)
    f, g, errors, _, _, last_err, row_it = state
    return SinkhornOutput(f, g, errors, row_it, last_err)


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


def _kernel_block(
    xp: Any,
    f: Any,
    g: Any,
    it: Any,
    omega: Any,
    log_a: Any,
    log_b: Any,
    b: Any,
    cost: Any,
    eps: Any,
    inner: int,
    max_it: int,
    g_update: Any,
    f_update: Any,
) -> tuple[Any, Any, Any]:
    """One block of ``inner`` iterations: one log-domain step, the rest in kernel space.

    The log-domain step makes the Gibbs kernel ``K = exp((f + g - C) / eps)`` the current
    plan, so its entries are at most the input weights and no significant one underflows
    (this is the absorption of the potentials into the kernel, done every block). The
    remaining steps are matrix-vector products on ``K`` with scalings ``u, v`` that start
    at one; at the end the scalings are absorbed back, ``f += eps log u``. One ``exp`` of
    the ``n x m`` array per block instead of two log-sum-exps per iteration; the iterates
    are those of log-domain Sinkhorn (same fixed point, same over-relaxation).
    Returns ``(f, g, error)``, the error being the L1 distance of the column sums to ``b``.
    """
    eps_col = eps[..., None]

    def relax(old: Any, new: Any, j: int) -> Any:
        return old + omega * (new - old) if j < inner - 1 else new

    def partial(old: Any, new: Any, j: int) -> Any:
        return xp.where((it + j) < max_it, new, old) if max_it % inner else new

    g_new = partial(g, relax(g, g_update(f), 0), 0)
    f = partial(f, relax(f, f_update(g_new), 0), 0)
    g = g_new
    # Entries below the smallest normal float are flushed to zero: they carry no mass, and
    # denormal operands slow down the matrix products of many CPU BLAS kernels.
    log_kernel = (f[..., :, None] + g[..., None, :] - cost) / eps[..., None, None]
    log_tiny = math.log(xp.finfo(f.dtype).smallest_normal)
    # exp of the clamped argument: PyTorch's CPU exp takes a ~30x slower path when its
    # result underflows (measured 273 us vs 8 us for 10^4 values).
    kernel = xp.where(log_kernel > log_tiny, xp.exp(xp.maximum(log_kernel, log_tiny)), xp.zeros_like(log_kernel))
    log_u = xp.zeros_like(f)
    log_v = xp.zeros_like(g)
    u, v = xp.ones_like(f), xp.ones_like(g)
    tiny = xp.finfo(f.dtype).smallest_normal
    # Within a block the scalings stay moderate unless a column or row of K underflows
    # entirely (far from the fixed point, amplified by over-relaxation); capping their
    # logs keeps u, v and K u finite, and the next block's log-domain step repairs the path.
    cap = 0.9 * math.log(xp.finfo(f.dtype).max)

    def mv(vec: Any) -> Any:  # K v
        return (kernel @ vec[..., None])[..., 0]

    def vm(vec: Any) -> Any:  # K^T u, computed as u^T K on the contiguous kernel
        return (vec[..., None, :] @ kernel)[..., 0, :]

    for j in range(1, inner):
        # v <- b / (K^T u), over-relaxed in log space: log v += omega (log v_new - log v)
        ktu = vm(u)
        step_v = log_b - xp.log(xp.where(ktu > tiny, ktu, xp.full_like(ktu, tiny)))
        log_v = xp.clip(partial(log_v, relax(log_v, step_v, j), j), -cap, cap)
        v = xp.exp(log_v)
        kv = mv(v)
        step_u = log_a - xp.log(xp.where(kv > tiny, kv, xp.full_like(kv, tiny)))
        log_u = xp.clip(partial(log_u, relax(log_u, step_u, j), j), -cap, cap)
        u = xp.exp(log_u)
    column = v * vm(u)
    err = xp.sum(xp.abs(column - b), axis=-1)
    return f + eps_col * log_u, g + eps_col * log_v, err


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
