"""The transport plan as a differentiable function with hand-written derivative rules.

``plan(z, a, b, eps)`` runs the Sinkhorn solve (:mod:`._sinkhorn`) and returns the plan;
its backward and its forward-mode rule are the implicit ones (:mod:`._implicit`), in every
input: ``z``, both weights and ``eps``. The adapter's ``custom_vjp`` wires them into the
framework's autodiff (JAX: reverse mode by transposing the forward rule), so everything
around the plan -- squashing, target weights, read-outs -- is differentiated by the
framework itself, to any order.
Documented by :func:`softsort.transport_for_sort`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from ._config import SolverConfig
from ._implicit import eps_cotangent, plan_jvp, plan_vjp
from ._sinkhorn import solve, sq_distances, targets_like


class Transport(NamedTuple):
    """The plan and the solver's diagnostics (batch as leading axis)."""

    plan: Any  # (B, n, m)
    f: Any  # (B, n)
    g: Any  # (B, m)
    errors: Any  # (B, num_checks)
    iterations: Any  # (B,)
    final_error: Any  # (B,)


Static = tuple[Any, SolverConfig]  # (backend, config): hashable


def _fwd(static: Static, z: Any, a: Any, b: Any, eps: Any, *y: Any) -> tuple[Any, ...]:
    backend, config = static
    out = solve(backend, config, z, a, b, eps, *y)
    return out.plan, out.f, out.g, out.errors, out.iterations, out.final_error


def _bwd(static: Static, inputs: tuple[Any, ...], outputs: tuple[Any, ...], cts: tuple[Any, ...]) -> tuple[Any, ...]:
    backend, config = static
    xp = backend.xp
    z, _, b, eps, *explicit = inputs
    plan = outputs[0]
    d_f, d_g = (cts[1], cts[2]) if len(cts) == 3 else (None, None)  # see _differentiable_transport
    d_cost, d_a, d_b = plan_vjp(backend, config, plan, eps, cts[0], d_f, d_g)
    if explicit:  # explicit target positions: they get a cotangent too
        y = explicit[0]
        d_z, d_y = _cost_vjp(xp, z, y, d_cost)
        points = (z, y) if z.ndim == 3 else (z[..., None], y[..., None])
        # The plan and f / eps, g / eps depend on (C, eps) through C / eps only, and
        # f = eps (f / eps): dL/deps = -sum dL/dC C / eps + (sum d_f f + sum d_g g) / eps.
        d_eps = -xp.sum(d_cost * sq_distances(backend, *points), axis=(-2, -1))
        if d_f is not None:
            d_eps = d_eps + xp.sum(d_f * outputs[1], axis=-1) + xp.sum(d_g * outputs[2], axis=-1)
        return d_z, d_a, d_b, d_eps / eps, d_y
    y = targets_like(xp, z, b.shape[-1])
    d_z = 2.0 * (z * xp.sum(d_cost, axis=-1) - backend.matvec(d_cost, xp.broadcast_to(y, b.shape)))
    return d_z, d_a, d_b, eps_cotangent(backend, d_cost, z, y, eps)


def _jvp(static: Static, inputs: tuple[Any, ...], outputs: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any]:
    """Tangent of the plan (the forward-mode rule); a tangent ``None`` is zero."""
    backend, config = static
    xp = backend.xp
    z, _, b, _ = inputs
    dz, da, db, de = (xp.zeros_like(x) if t is None else t for x, t in zip(inputs, tangents, strict=True))
    y = targets_like(xp, z, b.shape[-1])
    return (plan_jvp(backend, config, outputs[0], z, y, inputs[3], dz, da, db, de),)


def _jvp_targets(
    static: Static, inputs: tuple[Any, ...], outputs: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any]:
    """:func:`_jvp` with explicit 1-D target positions ``y`` (B, m) (``mask=``), held fixed."""
    backend, config = static
    xp = backend.xp
    z, _, _, eps, y = inputs
    dz, da, db, de = (xp.zeros_like(x) if t is None else t for x, t in zip(inputs[:4], tangents[:4], strict=True))
    return (plan_jvp(backend, config, outputs[0], z, y, eps, dz, da, db, de),)


def _cost_vjp(xp: Any, z: Any, y: Any, d_cost: Any) -> tuple[Any, Any]:
    """Cotangents of ``z`` (B, n[, d]) and ``y`` (B, m[, d]) from ``dL/dC``, ``C = |z_i - y_j|^2``."""
    point = z.ndim == 3
    zz, yy = (z, y) if point else (z[..., None], y[..., None])
    d_z = 2.0 * (zz * xp.sum(d_cost, axis=-1)[..., None] - d_cost @ yy)
    d_y = 2.0 * (yy * xp.sum(d_cost, axis=-2)[..., None] - xp.matrix_transpose(d_cost) @ zz)
    return (d_z, d_y) if point else (d_z[..., 0], d_y[..., 0])


@functools.cache
def _differentiable_plan(backend: Any) -> Any:
    return backend.custom_vjp(_fwd, _bwd, differentiable_outputs=1, jvp=_jvp)


@functools.cache
def _differentiable_plan_targets(backend: Any) -> Any:
    # Per-row 1-D target positions that carry no gradient (mask=): the plan alone is
    # differentiable, with the forward-mode rule, as on the default path.
    return backend.custom_vjp(_fwd, _bwd, differentiable_outputs=1, jvp=_jvp_targets)


@functools.cache
def _differentiable_transport(backend: Any) -> Any:
    # The plan and both potentials carry gradients (the multivariate maps read the
    # potentials); the operators' path above keeps the plan only.
    return backend.custom_vjp(_fwd, _bwd, differentiable_outputs=3)


def transport(
    backend: Any,
    config: SolverConfig,
    z: Any,
    a: Any,
    b: Any,
    eps: Any,
    y: Any = None,
    fixed_targets: bool = False,
) -> Transport:
    """Solve the batch of problems; shapes ``z, a`` (B, n), ``b`` (B, m), ``eps`` (B,).

    With explicit target positions ``y`` ((B, m), or (B, m, d) for ``z`` (B, n, d): see
    :func:`._sinkhorn.solve`) the potentials ``f, g`` are differentiable too (implicitly,
    like the plan) and ``y`` gets a gradient; with ``fixed_targets`` (1-D ``y`` of
    ``mask=``, constant) only the plan is, as without ``y``, forward mode included.
    """
    static = (backend, config)
    extra = () if y is None else (y,)
    potentials = y is not None and not fixed_targets
    if config.implicit_diff:
        if y is None:
            wrapped = _differentiable_plan
        else:
            wrapped = _differentiable_plan_targets if fixed_targets else _differentiable_transport
        outs = wrapped(backend)(static, z, a, b, eps, *extra)
    else:  # the framework differentiates through the iterations themselves
        outs = _fwd(static, z, a, b, eps, *extra)
    plan, f, g, errors, iterations, final_error = outs
    stop = backend.stop_gradient
    if not potentials:
        f, g = stop(f), stop(g)
    return Transport(plan, f, g, stop(errors), iterations, stop(final_error))


def transport_vjp(
    backend: Any, config: SolverConfig, z: Any, a: Any, b: Any, eps: Any, y: Any = None
) -> tuple[Transport, Any]:
    """Eager forward plus a pull-back ``dL/dP -> (dL/dz, dL/da, dL/db)`` (for softsort.vjp).

    epsilon is a Python float there (``softsort.vjp`` differentiates array inputs only);
    ``y``: explicit target positions, as in :func:`transport`.
    """
    static = (backend, config)
    inputs = (z, a, b, eps) if y is None else (z, a, b, eps, y)
    outs = _fwd(static, *inputs)

    def pullback(d_plan: Any) -> tuple[Any, Any, Any]:
        return _bwd(static, inputs, outs, (d_plan,))[:3]

    return Transport(*outs), pullback
