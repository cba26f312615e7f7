"""Implicit differentiation of the Sinkhorn fixed point, written once for every backend.

At the fixed point ``P_ij = exp((f_i + g_j - C_ij) / eps)`` has row sums ``a`` and column
sums ``b``. Given ``G = dL/dP`` and ``Gh = G * P``, solve the symmetric system

    [diag(a)  P      ] [u]   [Gh 1  ]
    [P^T      diag(b)] [v] = [Gh^T 1]

(null space ``(1, -1)``); then ``dL/dC = P * (u_i + v_j - G_ij) / eps``, ``dL/db = v`` and
``dL/da = u`` (both up to a constant, which is all a probability vector's gradient is).

The fixed point depends on the cost only through ``K = C / eps`` (the conditions in
``alpha = f / eps``, ``beta = g / eps`` involve ``K`` alone), so ``dL/dK = eps dL/dC`` and
``dL/deps = sum_ij dL/dK_ij dK_ij/deps = -sum_ij dL/dC_ij C_ij / eps``.

Forward mode differentiates the same conditions along tangents: with ``W = P * dK``
(``dK = dC / eps - C deps / eps**2``) the same matrix gives ``(d alpha, d beta)`` from the
right-hand side ``(da + W 1, db + W^T 1)``, and ``dP = P * (d alpha_i + d beta_j) - W``; the
backward above is its adjoint. The iterations themselves are never differentiated, so
memory does not grow with them; the solve is linear in its right-hand side and
differentiable in the plan, so both rules can be differentiated again (second order).

``a`` and ``b`` are taken as the *actual* marginals of ``P``: at a finite threshold they
differ from the requested ones, and only the actual ones make ``(1, -1)`` an exact null
vector, so the rank-one pin below stays consistent.
"""

from __future__ import annotations

from typing import Any

from .._compat import device
from ._config import SolverConfig
from ._planop import DensePlan


def _cg_solve(backend: Any, config: SolverConfig, matvec: Any, diag: Any, rhs: Any) -> Any:
    """Jacobi-preconditioned conjugate gradients, batched, jit-safe (fixed-shape state)."""
    xp = backend.xp

    def dot(p: Any, q: Any) -> Any:
        return xp.sum(p * q, axis=-1, keepdims=True)

    x = xp.zeros_like(rhs)
    r = rhs
    zr = r / diag
    p = zr
    rz = dot(r, zr)
    tol2 = (config.cg_tol**2) * dot(rhs, rhs)

    def cond(state: tuple[Any, ...]) -> Any:
        _, r, _, _, k = state
        return xp.logical_and(k < config.cg_max_iterations, xp.any(dot(r, r) > tol2))

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        x, r, p, rz, k = state
        ap = matvec(p)
        pap = dot(p, ap)
        alpha = rz / xp.where(pap > 0, pap, xp.ones_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        zr = r / diag
        rz_new = dot(r, zr)
        beta = rz_new / xp.where(rz > 0, rz, xp.ones_like(rz))
        p = zr + beta * p
        return x, r, p, rz_new, k + 1

    k0 = xp.asarray(0, dtype=xp.int32, device=device(rhs))
    x, *_ = backend.while_loop(cond, body, (x, r, p, rz, k0))
    return x


def _marginal_solve(backend: Any, config: SolverConfig, plan: Any, ra: Any, rb: Any) -> tuple[Any, Any]:
    """Solve ``[diag(a) P; P^T diag(b)] [u; v] = [ra; rb]`` (``sum(ra) = sum(rb)``).

    Linear in ``(ra, rb)`` and differentiable in ``plan`` (the adapter's ``linear_solve``
    makes the iterative solve transposable), so the backward and the forward-mode rule can
    themselves be differentiated. Shapes: ``plan`` (B, n, m), ``ra`` (B, n), ``rb`` (B, m).
    ``plan`` is an array or a plan operator (:mod:`._planop`; the blocked plan of
    :mod:`._blocked`, whose products are made block by block): the solve uses the plan
    only through its sums, products and ``P^T diag(w) P`` (with it or applied to a vector).
    """
    xp = backend.xp
    op = DensePlan(xp, plan, backend) if not hasattr(plan, "gram_apply") else plan
    n, m = op.n, op.m
    a = op.row_sums()
    b = op.col_sums()
    tiny = xp.finfo(a.dtype).smallest_normal
    a = xp.where(a > tiny, a, xp.full_like(a, tiny))
    b = xp.where(b > tiny, b, xp.full_like(b, tiny))

    # Eliminate the larger block and solve the Schur complement on the smaller one. A plan
    # made by row blocks has no transpose: there the inputs' block is always eliminated
    # (one pass over the blocks per product with the Schur complement).
    if m <= n or not hasattr(op, "transposed"):
        big, small, r_big, r_small, p_bs = a, b, ra, rb, op  # p_bs: (big, small)
    else:
        big, small, r_big, r_small, p_bs = b, a, rb, ra, op.transposed()
    k = small.shape[-1]
    inv_big = 1.0 / big
    rhs = r_small - p_bs.apply_t(r_big * inv_big)
    # S = diag(small) - P_sb diag(1/big) P_bs is PSD with null vector 1; adding
    # mean(small) * 11^T pins the solution to sum(x) = 0 without changing the rest.
    pin = xp.mean(small, axis=-1, keepdims=True)
    # Near-hard plans (small epsilon, separated inputs) make S nearly zero: every direction
    # is almost null and the plan does not move. A ridge of sqrt(machine eps) relative to
    # the weights keeps the solve finite there and changes well-posed solutions by
    # O(sqrt(machine eps)).
    ridge = (float(xp.finfo(a.dtype).eps) ** 0.5) * pin
    use_dense = config.implicit_solver == "dense" or (config.implicit_solver == "auto" and k <= config.dense_limit)
    if use_dense:
        eye = xp.eye(k, dtype=a.dtype, device=device(a))
        schur = small[..., None] * eye - p_bs.gram(inv_big)
        schur = schur + pin[..., None] + ridge[..., None] * eye
        x_small = backend.dense_solve(schur, rhs)
    else:

        def matvec(v: Any) -> Any:
            return (small + ridge) * v - p_bs.gram_apply(v, inv_big) + pin * xp.sum(v, axis=-1, keepdims=True)

        diag = small - p_bs.weighted_sq_col_sums(inv_big) + pin + ridge
        diag = xp.where(diag > tiny, diag, xp.full_like(diag, tiny))
        diag = backend.stop_gradient(diag)  # a preconditioner: it changes the iterates, not the solution

        def solve(r: Any) -> Any:
            return _cg_solve(backend, config, matvec, diag, r)

        x_small = backend.linear_solve(matvec, solve, rhs)
    x_big = (r_big - p_bs.apply(x_small)) * inv_big
    return (x_big, x_small) if p_bs is op else (x_small, x_big)


def _centred(xp: Any, w: Any) -> Any:
    return w - xp.mean(w, axis=-1, keepdims=True)


def plan_vjp(
    backend: Any, config: SolverConfig, plan: Any, eps: Any, cot: Any, d_f: Any = None, d_g: Any = None
) -> tuple[Any, Any, Any]:
    """Cotangents of the cost matrix and of the target weights, given ``cot = dL/dP``.

    Returns ``(dL/dC, dL/da, dL/db)``; the weight cotangents are centred to sum to zero.
    Shapes: ``plan`` and ``cot`` (B, n, m), ``eps`` (B,). The cotangent of epsilon follows
    from ``dL/dC`` alone (see :func:`eps_cotangent`).

    ``d_f`` (B, n), ``d_g`` (B, m): optional cotangents of the potentials themselves
    (softsort.multivariate_cdf_quantile_maps). The optimality conditions differentiate to
    ``H [df; dg] = [(P * dC) 1 + eps da; (P * dC)^T 1 + eps db]`` with ``H`` the matrix
    of :func:`_marginal_solve`, so they enter the right-hand side as ``eps * d_f`` and
    ``eps * d_g``. Only functions invariant under ``(f + c, g - c)`` are defined by the
    plan, which makes ``sum(d_f) = sum(d_g)``: the system stays consistent with its null
    space.
    """
    xp = backend.xp
    gh = cot * plan
    ra = xp.sum(gh, axis=-1)
    rb = xp.sum(gh, axis=-2)
    if d_f is not None:
        ra = ra + eps[..., None] * d_f
    if d_g is not None:
        rb = rb + eps[..., None] * d_g
    del gh  # eager libraries free it: the backward then holds at most four n x m arrays
    u, v = _marginal_solve(backend, config, plan, ra, rb)
    d_cost = plan * (u[..., :, None] + v[..., None, :] - cot) / eps[..., None, None]
    return d_cost, _centred(xp, u), _centred(xp, v)


def eps_cotangent(backend: Any, d_cost: Any, z: Any, y: Any, eps: Any) -> Any:
    """``dL/deps = -sum_ij dL/dC_ij C_ij / eps`` for ``C_ij = (z_i - y_j)**2``, without an n x m cost.

    The plan depends on the cost only through ``C / eps``: ``dL/d(C/eps) = eps dL/dC`` and
    ``d(C/eps)/deps = -C / eps**2``. Shapes: ``d_cost`` (B, n, m), ``z`` (B, n), ``y`` (m,).
    """
    xp = backend.xp
    rows = xp.sum(d_cost, axis=-1)  # (B, n)
    cols = xp.sum(d_cost, axis=-2)  # (B, m)
    cross = backend.matvec(d_cost, xp.broadcast_to(y, cols.shape))  # (B, n): sum_j dC_ij y_j
    total = xp.sum(z * z * rows - 2.0 * z * cross, axis=-1) + xp.sum(cols * (y * y), axis=-1)
    return -total / eps


def plan_jvp(
    backend: Any, config: SolverConfig, plan: Any, z: Any, y: Any, eps: Any, dz: Any, da: Any, db: Any, de: Any
) -> Any:
    """Tangent of the plan for tangents ``dz, da, db, de`` of ``z, a, b, eps``.

    ``log P = alpha_i + beta_j - C_ij / eps`` (``alpha = f / eps``): differentiating the
    marginal conditions gives the system of :func:`plan_vjp` for ``(d alpha, d beta)`` with
    right-hand side ``(da + W 1, db + W^T 1)``, ``W = P * d(C / eps)``; then
    ``dP = P * (d alpha_i + d beta_j) - W``. The weight tangents are centred (the adjoint of
    the centred cotangents). ``d(C/eps)_ij = p_i + q_i y_j + r y_j**2`` with vectors
    ``p, q, r`` (C = z**2 - 2 z y + y**2), so no n x m array but the plan is kept.
    """
    xp = backend.xp
    e = eps[..., None]
    p = (2.0 * z * dz - z * z * de[..., None] / e) / e  # (B, n)
    q = (-2.0 * dz + 2.0 * z * de[..., None] / e) / e  # (B, n)
    r = -de[..., None] / (e * e)  # (B, 1)
    yb = xp.broadcast_to(y, (*plan.shape[:-2], plan.shape[-1]))
    mv, vm = backend.matvec, backend.vecmat
    a = xp.sum(plan, axis=-1)
    b = xp.sum(plan, axis=-2)
    w_rows = p * a + q * mv(plan, yb) + r * mv(plan, yb * yb)
    w_cols = vm(p, plan) + yb * vm(q, plan) + r * yb * yb * b
    dalpha, dbeta = _marginal_solve(backend, config, plan, _centred(xp, da) + w_rows, _centred(xp, db) + w_cols)
    shift = (dalpha - p)[..., :, None] + (dbeta - r * yb * yb)[..., None, :] - q[..., :, None] * yb[..., None, :]
    return plan * shift
