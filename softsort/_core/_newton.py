"""Newton steps on the semi-dual, for the small rows that Sinkhorn leaves running.

Sinkhorn contracts by a factor that depends on the problem, not on its size: a row of 10
ranks at epsilon 1e-2 takes from 20 to 250 iterations to reach 1e-3, and a near-tie of three
values (``[0, 1e-6, 1]``) more than 20,000 to reach 1e-6. With few targets (``m``) a Newton
step costs about as much as a few Sinkhorn steps and converges quadratically, so
:func:`softsort._core._sinkhorn.solve` hands the rows still running after
:data:`NEWTON_AFTER` iterations to :func:`newton_step` (see :func:`applies` for when).

The semi-dual: with ``f`` eliminated, ``f_i(g) = log a_i - LSE_j(g_j - C_ij)`` (units of
epsilon; the row marginal is then exact), the concave objective
``sum_j b_j g_j + sum_i a_i f_i(g)`` has gradient ``b - c(g)``, ``c`` the column sums of
the plan ``P_ij = a_i pi_ij`` (``pi_i`` the softmax of row ``i``), and Hessian ``-M`` with

    M = sum_i a_i (diag(pi_i) - pi_i pi_i^T) = diag(c) - sum_i a_i pi_i pi_i^T,

positive semi-definite, null along the constant vector (the gauge ``f + t, g - t``).
``M + 1 1^T / m^2`` is non-singular and, the right-hand side summing to zero, gives the
same step with no constant component (``sum g`` is kept). ``M`` is formed from ``pi`` and
``a``, never ``1 / a``: tiny input weights cannot overflow it.

Safeguard: the direction is capped to a trust region (:data:`MAX_STEP`), then among
``g + t delta`` for ``t`` in :data:`STEP_SIZES` and the plain Sinkhorn ``g``-update the step
of least L1 column error (what the stopping rule measures) is taken: the error never grows
beyond what a Sinkhorn step would leave, and a NaN candidate (a failed solve) never wins.
The fixed point is that of Sinkhorn: only the path to it changes (``f`` and ``g`` may
differ from plain Sinkhorn's by the gauge constant, the plan does not).
"""

from __future__ import annotations

import math
from typing import Any

from .._compat import device
from ._config import SolverConfig
from ._lse import logsumexp

#: Largest number of targets for which Newton steps are used: the system is ``m x m``.
NEWTON_MAX_TARGETS = 64

#: Rows still running after this many Sinkhorn iterations switch to Newton steps; the
#: others keep plain (over-relaxed) Sinkhorn's path exactly and pay nothing. Chosen by
#: measurement (NumPy, float32, epsilon 1e-2, threshold 1e-3; plain / Newton after 30, 60,
#: 100): ranks of 1000 x 10 (W3) 33 / 38, 36, 36 ms; top-2 mask of 16384 x 64 0.94 / 2.2,
#: 2.1, 1.15 s (a Newton step costs more than a block of kernel steps, which are
#: matrix-vector products only). After 100 the slowest rows still reach 1e-9 within 200
#: iterations (measured at most 170, near-ties included: tests/test_newton.py).
NEWTON_AFTER = 100

#: Trust region: the Newton direction is scaled to move no coordinate of ``g`` by more than
#: this many units of epsilon (before the step sizes). Far from the solution (a row whose
#: column sums sit on a plateau of the sum of steep softmaxes, e.g. a top-k mask with a
#: near-tie at the boundary) ``M`` is tiny and the raw step astronomically long.
MAX_STEP = 8.0

#: At NEWTON_AFTER, a running row predicted (from its last two checks' contraction) to
#: stop within this many more blocks goes on with Sinkhorn instead, up to NEWTON_LAST
#: iterations (then Newton, if it still runs: 4 steps are left before 200).
NEWTON_PATIENCE = 10
NEWTON_LAST = 160

#: Step sizes tried along the (trust-region scaled) Newton direction; the one of least
#: column error wins (one row softmax each). Steps beyond 1 matter: along a direction where
#: the column sums are exponential in ``g`` (a near-tie), Newton's linear model reduces
#: the error only by ``1 / e`` per step; the dense grid (rather than halving from 1) finds
#: the narrow window of a plateau's solution (measured: n <= 64, m in 2..64, epsilon
#: 1e-3..1e-1, threshold 1e-9, near-ties: at most 110 iterations, against 170 to 630 with
#: halving only).
STEP_SIZES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def applies(config: SolverConfig, n: int, m: int, ndim: int) -> bool:
    """Whether :func:`softsort._core._sinkhorn.solve` switches slow rows to Newton steps.

    Only in the implicit-differentiation path (``implicit_diff=False`` differentiates through
    the iterations: they stay plain Sinkhorn), for 1-D problems with ``2 <= m <=
    NEWTON_MAX_TARGETS`` targets (``n`` is free: a step costs ``O(n m^2 + m^3)``). With
    ``mask=`` the padded width decides: a row whose valid entries alone would take Newton
    steps but whose padded width exceeds the limit stays on plain Sinkhorn, and then
    agrees with its valid entries solved alone to the threshold rather than to rounding.
    """
    del n
    return config.newton and config.implicit_diff and ndim == 2 and 2 <= m <= NEWTON_MAX_TARGETS


def newton_step(backend: Any, cost: Any, a: Any, b: Any, g: Any) -> tuple[Any, Any, Any]:
    """One safeguarded Newton step on ``g``: returns ``(f(g'), g', column error at g')``.

    ``cost`` is ``C / eps`` (B, n, m), ``a`` (B, n), ``b`` (B, m), ``g`` (B, m). Costs one
    log-sum-exp over rows and one over columns, ``1 + len(STEP_SIZES)`` exps of the ``n x
    m`` array with a matrix-vector product or two each, one batched ``m x m`` solve.
    """
    xp, mv, vm = backend.xp, backend.matvec, backend.vecmat
    m = b.shape[-1]
    log_a = xp.log(a)
    ones = xp.ones_like(b)
    tiny = float(xp.finfo(g.dtype).smallest_normal)
    f = log_a - logsumexp(backend, g[..., None, :] - cost, axis=-1)
    # pi_ij = exp(g_j - C_ij + f_i - log a_i): the row softmax (rows sum to one)
    logits = (g[..., None, :] - cost) + (f - log_a)[..., :, None]  # log pi, at most 0 up to rounding
    pi = xp.exp(logits)
    weighted = a[..., :, None] * pi  # the plan of g (its rows sum to a)
    c = vm(a, pi)
    outer = xp.matrix_transpose(weighted) @ pi  # sum_i a_i pi_i pi_i^T, (B, m, m)
    eye = xp.eye(m, dtype=g.dtype, device=device(g))
    # Targets of zero weight (mask=, raised to the smallest normal float) are left out of
    # the system (their row and column replaced by the identity's, so their step is 0) and
    # follow their own Sinkhorn update instead (they keep their weight's column mass): the
    # valid targets then take the step of their problem alone, as the rest of the solver
    # promises for mask=. Inputs of zero weight enter M only through a_i pi_i: nothing.
    valid = b > tiny
    pair = valid[..., :, None] & valid[..., None, :]
    count = xp.sum(xp.astype(valid, g.dtype), axis=-1)[..., None, None]
    # The pin (1 1^T over the valid targets) / count^2 removes the gauge; the ridge (a
    # thousand ulps of each column's mass) keeps the matrix invertible where rows of pi are
    # one-hot up to rounding (M = 0 along some directions: NumPy and PyTorch raise there).
    ridge = 1e3 * float(xp.finfo(g.dtype).eps) * b
    diagonal = xp.where(valid, c + ridge, xp.ones_like(c))
    mat = xp.where(pair, 1.0 / count**2 - outer, xp.zeros_like(outer)) + eye * diagonal[..., None, :]
    rhs = xp.where(valid, b - c, xp.zeros_like(c))
    delta = backend.dense_solve(mat, rhs)
    size = xp.max(xp.abs(delta), axis=-1, keepdims=True)
    capped = size > MAX_STEP
    delta = delta * xp.where(capped, MAX_STEP / xp.where(capped, size, ones[..., :1]), ones[..., :1])
    # Fallback: a plain Sinkhorn g-update from (f(g), g), evaluated exactly (log-sum-exps).
    g_best = xp.log(b) - logsumexp(backend, f[..., :, None] - cost, axis=-2)
    f_best = log_a - logsumexp(backend, g_best[..., None, :] - cost, axis=-1)
    column = xp.exp(g_best + logsumexp(backend, f_best[..., :, None] - cost, axis=-2))
    err_best = xp.sum(xp.abs(column - b), axis=-1)
    own = g_best - g  # the zero-weight targets' step in every candidate
    low = -float(xp.finfo(g.dtype).max)
    valid_rows = (a > tiny)[..., :, None]
    for t in STEP_SIZES:
        step = xp.where(valid, t * delta, own)
        top = xp.max(xp.where(valid, step, xp.full_like(step, low)), axis=-1, keepdims=True)
        # log pi + t delta - max(t delta) <= 0 on the valid targets: no overflow. A candidate
        # where the row sums of some input of nonzero weight underflow has error inf: it
        # never wins.
        e = xp.exp(logits + (step - top)[..., None, :])
        total = mv(e, ones)  # row sums: products, not reductions over a short last axis
        fine = total >= tiny  # a / total stays finite (a <= 1)
        full = xp.all(fine | ~valid_rows[..., 0], axis=-1)
        total = xp.where(fine, total, xp.ones_like(total))
        err_t = xp.sum(xp.abs(vm(a / total, e) - b), axis=-1)
        err_t = xp.where(full, err_t, xp.full_like(err_t, math.inf))
        ok = (err_t < err_best) | (xp.isnan(err_best) & xp.isfinite(err_t))
        g_best = xp.where(ok[..., None], g + step, g_best)
        f_best = xp.where(ok[..., None], f - xp.log(total) - top, f_best)
        err_best = xp.where(ok, err_t, err_best)
    return f_best, g_best, err_best
