"""Problems whose ``n x m`` plan exceeds ``memory_budget``: everything by row blocks.

When one problem's working set (``PEAK_ARRAYS_PER_ROW`` arrays of ``n x m``, see
:mod:`._operators`) exceeds the budget, the plan is never stored. It is held as its
potentials ``(alpha, beta)`` (units of epsilon) and the scaled positions ``zs = z /
sqrt(eps)``, ``ys = y / sqrt(eps)``, so that ``P_ij = exp(alpha_i + beta_j - (zs_i -
ys_j)**2)``; every use of it is a pass over blocks of ``rows`` inputs, each block's kernel
entries made again from the 1-D cost, used and dropped:

* the solve (:func:`solve`): log-domain Sinkhorn, one pass per iteration that updates
  ``alpha`` block by block (each block holds its rows whole: the row log-sum-exp is exact)
  and adds the block's share to the column sums of the new plan, which give the next
  ``beta`` update and the convergence check at no extra cost. The schedule is the dense
  solver's (:mod:`._sinkhorn`): same start, same over-relaxation, same checks, same
  freezing of stopped rows, so the iterates agree with it up to rounding;
* the read-outs: products ``P @ V`` and ``P^T @ U`` with a few vectors (:class:`BlockedPlan`,
  the interface of :mod:`._planop` that the dense plan shares);
* the backward: the plan's cotangent is a sum of outer products (:class:`._planop.LowRank`),
  so its pull-back to the potentials and positions is products too; the implicit solve is
  :func:`._implicit._marginal_solve`, with the Schur complement's products made by blocks.

A pass over the blocks is ``Backend.scan`` (``jax.lax.scan`` under JAX: static block
sizes, jit-safe) plus one last, smaller block when ``rows`` does not divide ``n``. The
differentiable pieces are two functions with hand-written reverse rules (the adapter's
``custom_vjp``): the potentials (implicit differentiation of the fixed point) and the
products. Forward mode and second derivatives are not provided here (JAX and PyTorch say
so when asked); the dense path has them.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

from .._compat import device
from ._config import SolverConfig
from ._implicit import _centred, _marginal_solve
from ._planop import LowRank
from ._sinkhorn import _adapt_omega, _gibbs_kernel, _in_place, _running, _start, targets_like

#: Block-sized arrays alive at once during a pass (eager libraries update one in place;
#: array-api-strict, which cannot, holds three): the budget divided by this many is the
#: block, so a pass stays within ``memory_budget``.
BLOCK_ARRAYS = 4
#: At most this many kernel entries per block: blocks beyond a few MB leave the CPU's
#: caches without saving any per-block overhead worth having.
MAX_BLOCK_ENTRIES = 2**20


def block_rows(n: int, m: int, itemsize: int, budget: int) -> int:
    """Rows per block for one problem of ``n x m`` in ``budget`` bytes (``ValueError`` if not one)."""
    rows = budget // (BLOCK_ARRAYS * m * itemsize)
    if rows < 1:
        msg = (
            f"option 'memory_budget' is {budget} bytes, but even one row of the plan of a problem of "
            f"m={m} targets needs {BLOCK_ARRAYS * m * itemsize} bytes to be made block by block; raise memory_budget"
        )
        raise ValueError(msg)
    return int(max(1, min(rows, n, MAX_BLOCK_ENTRIES // m)))


# -- passes over row blocks ---------------------------------------------------------------------
def _over_blocks(
    backend: Any, rows: int, body: Any, carry: Any, per_row: tuple[Any, ...]
) -> tuple[Any, tuple[Any, ...]]:
    """``carry, outs = body(carry, blocks)`` for each block of ``rows`` rows of ``per_row``.

    ``per_row`` are (B, n, ...) arrays; ``body`` gets their (B, r, ...) slices and returns
    the new carry and a tuple of (B, r, ...) outputs, put back together as (B, n, ...).
    """
    xp = backend.xp
    n = per_row[0].shape[1]
    full = n // rows
    pieces: list[tuple[Any, ...]] = []
    if full:

        def split(x: Any) -> Any:
            x = x[:, : full * rows, ...]
            x = xp.reshape(x, (x.shape[0], full, rows, *x.shape[2:]))
            return xp.permute_dims(x, (1, 0, *range(2, x.ndim)))

        def merge(y: Any) -> Any:  # (full, B, rows, ...) -> (B, full * rows, ...)
            y = xp.permute_dims(y, (1, 0, *range(2, y.ndim)))
            return xp.reshape(y, (y.shape[0], full * rows, *y.shape[3:]))

        carry, ys = backend.scan(body, carry, tuple(split(x) for x in per_row))
        pieces.append(tuple(merge(y) for y in ys))
    if n > full * rows:
        carry, ys = body(carry, tuple(x[:, full * rows :, ...] for x in per_row))
        pieces.append(tuple(ys))
    outs = tuple(xp.concat(list(parts), axis=1) if len(parts) > 1 else parts[0] for parts in zip(*pieces, strict=True))
    return carry, outs


def _cost_block(backend: Any, zs: Any, ys: Any) -> Any:
    """``(zs_i - ys_j)**2`` for a block: (B, r) and (B, m) -> (B, r, m), a new array."""
    d = zs[..., :, None] - ys[..., None, :]
    return _in_place(backend, operator.mul, d, d)


def _plan_block(backend: Any, zs: Any, alpha: Any, ys: Any, beta: Any) -> Any:
    """``exp(alpha_i + beta_j - (zs_i - ys_j)**2)`` for a block (entries floored as the kernel's)."""
    d = _in_place(backend, operator.sub, _cost_block(backend, zs, ys), beta[..., None, :])
    return _gibbs_kernel(backend, d, alpha)


class Geometry(NamedTuple):
    """What defines the blocked plans of a batch (leading axis: the problem)."""

    zs: Any  # (B, n) inputs / sqrt(eps)
    ys: Any  # (B, m) targets / sqrt(eps)
    alpha: Any  # (B, n) potentials in units of epsilon
    beta: Any  # (B, m)


def products(backend: Any, rows: int, geo: Geometry, right: Any, left: Any) -> tuple[Any, Any]:
    """``(P @ right, P^T @ left)`` in one pass: right (B, m, k), left (B, n, l); k or l may be 0."""
    xp = backend.xp
    zs, ys, alpha, beta = geo
    batch, m = ys.shape[0], ys.shape[-1]
    k, k_left = right.shape[-1], left.shape[-1]
    acc0 = xp.zeros((batch, m, k_left), dtype=ys.dtype, device=device(ys))

    def body(acc: Any, blk: tuple[Any, ...]) -> tuple[Any, ...]:
        zb, ab, lb = blk
        p = _plan_block(backend, zb, ab, ys, beta)
        out = (p @ right,) if k else ()
        if k_left:
            acc = acc + xp.matrix_transpose(p) @ lb
        return acc, out

    acc, outs = _over_blocks(backend, rows, body, acc0, (zs, alpha, left))
    pr = outs[0] if k else xp.zeros((batch, zs.shape[-1], 0), dtype=ys.dtype, device=device(ys))
    return pr, acc


def _sums(backend: Any, rows: int, geo: Geometry) -> tuple[Any, Any]:
    """Row and column sums of the plan."""
    xp = backend.xp
    ones_m = xp.ones((*geo.ys.shape, 1), dtype=geo.ys.dtype, device=device(geo.ys))
    ones_n = xp.ones((*geo.zs.shape, 1), dtype=geo.zs.dtype, device=device(geo.zs))
    r, c = products(backend, rows, geo, ones_m, ones_n)
    return r[..., 0], c[..., 0]


class BlockedPlan:
    """A plan made block by block (the operator of :mod:`._planop`), differentiable.

    Products go through :func:`_products_fn` (hand-written reverse rule); the implicit
    solve asks for the Schur complement's pieces (``gram``, ``gram_apply``, ...), which
    are not differentiated (the backward is not differentiated again).
    """

    def __init__(self, backend: Any, rows: int, geo: Geometry, a: Any = None, b: Any = None) -> None:
        self.backend, self.rows, self.geo = backend, rows, geo
        self.xp = backend.xp
        self.batch = tuple(geo.zs.shape[:-1])
        self.n, self.m = geo.zs.shape[-1], geo.ys.shape[-1]
        self._sums = None if a is None else (a, b)

    def _call(self, right: Any, left: Any) -> tuple[Any, Any]:
        xp, dt, dev = self.xp, self.geo.zs.dtype, device(self.geo.zs)
        if right is None:
            right = xp.zeros((*self.batch, self.m, 0), dtype=dt, device=dev)
        if left is None:
            left = xp.zeros((*self.batch, self.n, 0), dtype=dt, device=dev)
        out: tuple[Any, Any] = _products_fn(self.backend)((self.backend, self.rows), *self.geo, right, left)
        return out

    def apply(self, right: Any) -> Any:
        vector = right.ndim == 2
        out = self._call(right[..., None] if vector else right, None)[0]
        return out[..., 0] if vector else out

    def apply_t(self, left: Any) -> Any:
        vector = left.ndim == 2
        out = self._call(None, left[..., None] if vector else left)[1]
        return out[..., 0] if vector else out

    def apply_t_and_col_sums(self, left: Any) -> tuple[Any, Any]:
        xp = self.xp
        vector = left.ndim == 2
        left3 = left[..., None] if vector else left
        out = self._call(None, xp.concat([left3, xp.ones_like(left3[..., :1])], axis=-1))[1]
        num = out[..., :-1]
        return (num[..., 0] if vector else num), out[..., -1]

    def col_sums(self) -> Any:
        return self.apply_t(self.xp.ones((*self.batch, self.n), dtype=self.geo.zs.dtype, device=device(self.geo.zs)))

    # -- for the implicit solve (never differentiated) -----------------------------------------
    def row_sums(self) -> Any:
        if self._sums is None:
            self._sums = _sums(self.backend, self.rows, self.geo)
        return self._sums[0]

    def _col_sums_plain(self) -> Any:
        if self._sums is None:
            self._sums = _sums(self.backend, self.rows, self.geo)
        return self._sums[1]

    def gram(self, w: Any) -> Any:
        """``P^T diag(w) P`` (B, m, m): for few targets only (the dense Schur complement)."""
        xp, geo = self.xp, self.geo
        acc0 = xp.zeros((*self.batch, self.m, self.m), dtype=geo.zs.dtype, device=device(geo.zs))

        def body(acc: Any, blk: tuple[Any, ...]) -> tuple[Any, ...]:
            zb, ab, wb = blk
            p = _plan_block(self.backend, zb, ab, geo.ys, geo.beta)
            return acc + xp.matrix_transpose(p) @ (p * wb[..., :, None]), ()

        return _over_blocks(self.backend, self.rows, body, acc0, (geo.zs, geo.alpha, w))[0]

    def gram_apply(self, v: Any, w: Any) -> Any:
        """``P^T (w * (P v))`` in one pass: each block holds its rows whole."""
        xp, geo, mv, vm = self.xp, self.geo, self.backend.matvec, self.backend.vecmat
        acc0 = xp.zeros(v.shape, dtype=v.dtype, device=device(v))

        def body(acc: Any, blk: tuple[Any, ...]) -> tuple[Any, ...]:
            zb, ab, wb = blk
            p = _plan_block(self.backend, zb, ab, geo.ys, geo.beta)
            return acc + vm(wb * mv(p, v), p), ()

        return _over_blocks(self.backend, self.rows, body, acc0, (geo.zs, geo.alpha, w))[0]

    def weighted_sq_col_sums(self, w: Any) -> Any:
        xp, geo = self.xp, self.geo
        acc0 = xp.zeros(geo.beta.shape, dtype=geo.zs.dtype, device=device(geo.zs))

        def body(acc: Any, blk: tuple[Any, ...]) -> tuple[Any, ...]:
            zb, ab, wb = blk
            p = _plan_block(self.backend, zb, ab, geo.ys, geo.beta)
            p = _in_place(self.backend, operator.mul, p, p)
            return acc + self.backend.vecmat(wb, p), ()

        return _over_blocks(self.backend, self.rows, body, acc0, (geo.zs, geo.alpha, w))[0]


class _Solver(BlockedPlan):
    """The plan as the implicit solve sees it: plain (undifferentiated) products."""

    def apply(self, right: Any) -> Any:
        return products(self.backend, self.rows, self.geo, right[..., None], _empty(self, self.n))[0][..., 0]

    def apply_t(self, left: Any) -> Any:
        return products(self.backend, self.rows, self.geo, _empty(self, self.m), left[..., None])[1][..., 0]

    def col_sums(self) -> Any:
        return self._col_sums_plain()


def _empty(plan: BlockedPlan, size: int) -> Any:
    return plan.xp.zeros((*plan.batch, size, 0), dtype=plan.geo.zs.dtype, device=device(plan.geo.zs))


# -- pull-backs -----------------------------------------------------------------------------------
def lowrank_pullback(backend: Any, rows: int, geo: Geometry, cot: LowRank) -> tuple[Any, ...]:
    """Cotangents of ``(alpha, beta, zs, ys)`` for ``dL/dP = left @ right^T``, the potentials held fixed.

    ``P_ij = exp(alpha_i + beta_j - K_ij)``, ``K = (zs_i - ys_j)**2``: with ``H = P * G``,
    ``dL/dalpha = H 1``, ``dL/dbeta = H^T 1``, ``dL/dK = -H``, all products of ``P`` with
    the factors (one pass). Also returns ``P^T left`` and ``P right`` (the products'
    own cotangents).
    """
    xp = backend.xp
    zs, ys = geo.zs, geo.ys
    left, right = cot
    left = xp.broadcast_to(left, (*zs.shape, left.shape[-1]))
    right = xp.broadcast_to(right, (*ys.shape, right.shape[-1]))
    k = right.shape[-1]
    pr, ptl = products(
        backend,
        rows,
        geo,
        xp.concat([right, right * ys[..., None]], axis=-1),
        xp.concat([left, left * zs[..., None]], axis=-1),
    )
    d_alpha = xp.sum(left * pr[..., :k], axis=-1)
    d_beta = xp.sum(right * ptl[..., :k], axis=-1)
    d_zs = -2.0 * (zs * d_alpha - xp.sum(left * pr[..., k:], axis=-1))
    d_ys = -2.0 * (ys * d_beta - xp.sum(right * ptl[..., k:], axis=-1))
    return d_alpha, d_beta, d_zs, d_ys, ptl[..., :k], pr[..., :k]


def potentials_pullback(
    backend: Any, config: SolverConfig, rows: int, geo: Geometry, d_alpha: Any, d_beta: Any
) -> tuple[Any, Any, Any, Any]:
    """Cotangents of ``(zs, ys, a, b)`` from those of the fixed-point potentials (implicit).

    ``H [u; v] = [d_alpha; d_beta]`` (the matrix of :func:`._implicit._marginal_solve`),
    then ``dL/dK = P * (u_i + v_j)`` (a cotangent ``-(u 1^T + 1 v^T)`` of the plan for
    :func:`lowrank_pullback`'s cost part), ``dL/da = u``, ``dL/db = v`` (centred).
    """
    xp = backend.xp
    u, v = _marginal_solve(backend, config, _Solver(backend, rows, geo), d_alpha, d_beta)
    ones_n, ones_m = xp.ones_like(u), xp.ones_like(v)
    cot = LowRank(-xp.stack([u, ones_n], axis=-1), xp.stack([ones_m, v], axis=-1))
    _, _, d_zs, d_ys, _, _ = lowrank_pullback(backend, rows, geo, cot)
    return d_zs, d_ys, _centred(xp, u), _centred(xp, v)


# -- the differentiable functions ----------------------------------------------------------------
def _products_fwd(static: Any, zs: Any, ys: Any, alpha: Any, beta: Any, right: Any, left: Any) -> tuple[Any, Any]:
    backend, rows = static
    return products(backend, rows, Geometry(zs, ys, alpha, beta), right, left)


def _products_bwd(
    static: Any, inputs: tuple[Any, ...], outputs: tuple[Any, ...], cts: tuple[Any, ...]
) -> tuple[Any, ...]:
    backend, rows = static
    xp = backend.xp
    zs, ys, alpha, beta, right, left = inputs
    ct_r = xp.zeros_like(outputs[0]) if cts[0] is None else cts[0]
    ct_l = xp.zeros_like(outputs[1]) if len(cts) < 2 or cts[1] is None else cts[1]
    # dL/dP = ct_r right^T + left ct_l^T
    cot = LowRank(xp.concat([ct_r, left], axis=-1), xp.concat([right, ct_l], axis=-1))
    d_alpha, d_beta, d_zs, d_ys, ptl, pr = lowrank_pullback(backend, rows, Geometry(zs, ys, alpha, beta), cot)
    k = right.shape[-1]
    return d_zs, d_ys, d_alpha, d_beta, ptl[..., :k], pr[..., k:]


@functools.cache
def _products_fn(backend: Any) -> Any:
    return backend.custom_vjp(_products_fwd, _products_bwd, differentiable_outputs=2)


def _solve_fwd(static: Any, z: Any, zs: Any, ys: Any, a: Any, b: Any, eps: Any) -> tuple[Any, ...]:
    backend, config, rows = static
    return solve(backend, config, rows, z, zs, ys, a, b, eps)


def _solve_bwd(static: Any, inputs: tuple[Any, ...], outputs: tuple[Any, ...], cts: tuple[Any, ...]) -> tuple[Any, ...]:
    backend, config, rows = static
    xp = backend.xp
    zs, ys = inputs[1], inputs[2]
    alpha, beta = outputs[0], outputs[1]
    d_alpha = xp.zeros_like(alpha) if cts[0] is None else cts[0]
    d_beta = xp.zeros_like(beta) if len(cts) < 2 or cts[1] is None else cts[1]
    d_zs, d_ys, d_a, d_b = potentials_pullback(backend, config, rows, Geometry(zs, ys, alpha, beta), d_alpha, d_beta)
    # The start and the step sizes depend on z and epsilon, the fixed point does not.
    return None, d_zs, d_ys, d_a, d_b, None


@functools.cache
def _solve_fn(backend: Any) -> Any:
    return backend.custom_vjp(_solve_fwd, _solve_bwd, differentiable_outputs=2)


class Blocked(NamedTuple):
    """The blocked transport of a batch: the plan operator and the solver's diagnostics."""

    plan: BlockedPlan
    f: Any  # (B, n) potentials (not differentiated)
    g: Any  # (B, m)
    errors: Any
    iterations: Any
    final_error: Any


def _scaled(backend: Any, z: Any, m: int, eps: Any) -> tuple[Any, Any]:
    xp = backend.xp
    scale = 1.0 / xp.sqrt(eps)[..., None]
    y = targets_like(xp, z, m)
    return z * scale, xp.broadcast_to(y, (z.shape[0], m)) * scale


def transport(backend: Any, config: SolverConfig, rows: int, z: Any, a: Any, b: Any, eps: Any) -> Blocked:
    """Solve the batch blockwise; differentiable in ``z, a, b, eps`` through the plan's products."""
    zs, ys = _scaled(backend, z, b.shape[-1], eps)
    stop = backend.stop_gradient
    alpha, beta, errors, iterations, final_error = _solve_fn(backend)(
        (backend, config, rows), stop(z), zs, ys, a, b, eps
    )
    geo = Geometry(zs, ys, alpha, beta)
    e = stop(eps)[..., None]
    plan = BlockedPlan(backend, rows, geo)
    return Blocked(plan, e * stop(alpha), e * stop(beta), stop(errors), iterations, stop(final_error))


def transport_vjp(
    backend: Any, config: SolverConfig, rows: int, z: Any, a: Any, b: Any, eps: Any
) -> tuple[Blocked, Any]:
    """Eager forward and a pull-back ``dL/dP`` (a :class:`LowRank`) ``-> (dL/dz, dL/da, dL/db)``."""
    xp = backend.xp
    zs, ys = _scaled(backend, z, b.shape[-1], eps)
    alpha, beta, errors, iterations, final_error = solve(backend, config, rows, z, zs, ys, a, b, eps)
    geo = Geometry(zs, ys, alpha, beta)
    e = eps[..., None]
    out = Blocked(BlockedPlan(backend, rows, geo), e * alpha, e * beta, errors, iterations, final_error)

    def pullback(cot: LowRank) -> tuple[Any, Any, Any]:
        d_alpha, d_beta, d_zs, _, _, _ = lowrank_pullback(backend, rows, geo, cot)
        d_zs2, _, d_a, d_b = potentials_pullback(backend, config, rows, geo, d_alpha, d_beta)
        return (d_zs + d_zs2) / xp.sqrt(eps)[..., None], d_a, d_b

    return out, pullback


# -- the solve --------------------------------------------------------------------------------------
class _State(NamedTuple):
    f: Any  # (B, n) potentials in units of epsilon
    g: Any  # (B, m)
    col: Any  # (B, m) column sums of the plan of (f, g)
    errors: Any
    it: Any
    omega: Any
    last_err: Any
    row_it: Any


def _f_pass(backend: Any, rows: int, zs: Any, ys: Any, log_a: Any, f: Any, g: Any, update: Any) -> tuple[Any, Any]:
    """``f <- update(f, log a - LSE_j(g_j - K_ij))`` for every row, and the new plan's column sums.

    Per block: ``d = K - g``, its row minima ``low``, ``E = exp(low - d)`` (entries in (0, 1],
    a 1 in each row); the row log-sum-exp is ``-low + log(sum E)`` and the new plan's block
    is ``exp(f_new - low) * E``, whose column sums are accumulated. One ``exp`` per entry.
    """
    xp = backend.xp
    col0 = xp.zeros(g.shape, dtype=g.dtype, device=device(g))

    def body(col: Any, blk: tuple[Any, ...]) -> tuple[Any, ...]:
        zb, fb, lab = blk
        d = _in_place(backend, operator.sub, _cost_block(backend, zb, ys), g[..., None, :])
        low = backend.min(d, -1)
        e = _gibbs_kernel(backend, d, low)
        f_new = update(fb, lab + low - xp.log(xp.sum(e, axis=-1)))
        return col + backend.vecmat(xp.exp(f_new - low), e), (f_new,)

    col, (f,) = _over_blocks(backend, rows, body, col0, (zs, f, log_a))
    return f, col


def solve(
    backend: Any, config: SolverConfig, rows: int, z: Any, zs: Any, ys: Any, a: Any, b: Any, eps: Any
) -> tuple[Any, ...]:
    """Sinkhorn by row blocks: ``(alpha, beta, errors, iterations, final_error)``.

    The dense solver's schedule (:func:`._sinkhorn.solve`): blocks of ``inner_iterations``
    steps, a check after each (the column error of the current plan, rows exact), rows
    frozen once below ``STOP_MARGIN * threshold``, adaptive over-relaxation. The returned
    potentials are those of the last iterate with its rows made exact once more (the dense
    solver's row rescaling, an ``alpha`` update), and ``final_error`` is the column error of
    that plan, measured in the same pass.
    """
    xp = backend.xp
    dev = device(z)
    batch = a.shape[:-1]
    log_a, log_b = xp.log(a), xp.log(b)
    tiny = xp.finfo(z.dtype).smallest_normal
    inner, max_it = config.block, config.max_iterations
    adaptive = config.momentum == "adaptive"
    omega_fixed = 1.0 if adaptive else float(config.momentum)
    plain = not adaptive and omega_fixed == 1.0

    f0, g0 = _start(backend, config.init, z, a, b, eps, zero_weights=config.zero_weights)
    f0, g0 = backend.stop_gradient(f0), backend.stop_gradient(g0)
    f0, col0 = _f_pass(backend, rows, zs, ys, log_a, f0, g0, lambda old, new: old)
    errors0 = -xp.ones((*batch, config.num_checks), dtype=z.dtype, device=dev)
    it0 = xp.asarray(0, dtype=xp.int32, device=dev)
    row_it0 = xp.zeros(batch, dtype=xp.int32, device=dev)
    err0 = xp.full(batch, math.inf, dtype=z.dtype, device=dev)
    omega0 = xp.full((*batch, 1), 1.0 if adaptive else omega_fixed, dtype=z.dtype, device=dev)

    def relax(old: Any, new: Any, omega: Any, last: bool) -> Any:
        return new if (last or plain) else old + omega * (new - old)

    def block(s: _State) -> _State:
        active = _running(config, s)
        keep = active[..., None]
        it, omega = s.it, s.omega

        def cut(old: Any, new: Any, j: Any) -> Any:
            return xp.where((it + j) < max_it, new, old) if max_it % inner else new

        def step(j: Any, carry: tuple[Any, ...], last: bool) -> tuple[Any, ...]:
            f, g, col = carry
            g_new = g + log_b - xp.log(backend.clip(col, tiny, None))
            g = cut(g, relax(g, g_new, omega, last), j)

            def update(old: Any, new: Any) -> Any:
                return cut(old, relax(old, new, omega, last), j)

            f, col = _f_pass(backend, rows, zs, ys, log_a, f, g, update)
            return f, g, col

        carry = (s.f, s.g, s.col)
        if inner > 1:
            carry = backend.fori_loop(0, inner - 1, lambda j, c: step(j, c, False), carry)
        f, g, col = step(inner - 1, carry, True)
        err = backend.stop_gradient(xp.sum(xp.abs(col - b), axis=-1))
        f, g, col = xp.where(keep, f, s.f), xp.where(keep, g, s.g), xp.where(keep, col, s.col)
        k = it // inner
        check_ids = xp.arange(config.num_checks, device=dev)
        errors = xp.where((check_ids == k) & keep, err[..., None], s.errors)
        if adaptive:
            omega = xp.where(keep, _adapt_omega(xp, k, omega, err, s.last_err, inner), omega)
        steps = xp.minimum(xp.asarray(inner, dtype=it.dtype, device=dev), max_it - it)
        row_it = s.row_it + xp.where(active, steps, xp.zeros_like(steps))
        return _State(f, g, col, errors, it + steps, omega, xp.where(active, err, s.last_err), row_it)

    def cond(s: _State) -> Any:
        return xp.logical_and(s.it < max_it, xp.any(_running(config, s)))

    state = block(_State(f0, g0, col0, errors0, it0, omega0, err0, row_it0))
    state = backend.while_loop(cond, block, state)
    f, col = _f_pass(backend, rows, zs, ys, log_a, state.f, state.g, lambda old, new: new)
    final = backend.stop_gradient(xp.sum(xp.abs(col - b), axis=-1))
    return f, state.g, state.errors, state.row_it, final
