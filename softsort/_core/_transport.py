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
from ._sinkhorn import solve, targets_like


class Transport(NamedTuple):
    """The plan and the solver's diagnostics (batch as leading axis)."""

    plan: Any  # (B, n, m)
    f: Any  # (B, n)
    g: Any  # (B, m)
    errors: Any  # (B, num_checks)
    iterations: Any  # (B,)
    final_error: Any  # (B,)


Static = tuple[Any, SolverConfig]  # (backend, config): hashable


def _fwd(static: Static, z: Any, a: Any, b: Any, eps: Any) -> tuple[Any, ...]:
    backend, config = static
    out = solve(backend, config, z, a, b, eps)
    return out.plan, out.f, out.g, out.errors, out.iterations, out.final_error


def _bwd(static: Static, inputs: tuple[Any, ...], outputs: tuple[Any, ...], cts: tuple[Any, ...]) -> tuple[Any, ...]:
    backend, config = static
    xp = backend.xp
    z, _, b, eps = inputs
    plan = outputs[0]
    d_cost, d_a, d_b = plan_vjp(backend, config, plan, eps, cts[0])
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


@functools.cache
def _differentiable_plan(backend: Any) -> Any:
    return backend.custom_vjp(_fwd, _bwd, differentiable_outputs=1, jvp=_jvp)


def transport(backend: Any, config: SolverConfig, z: Any, a: Any, b: Any, eps: Any) -> Transport:
    """Solve the batch of problems; shapes ``z, a`` (B, n), ``b`` (B, m), ``eps`` (B,)."""
    static = (backend, config)
    if config.implicit_diff:
        outs = _differentiable_plan(backend)(static, z, a, b, eps)
    else:  # the framework differentiates through the iterations themselves
        outs = _fwd(static, z, a, b, eps)
    plan, f, g, errors, iterations, final_error = outs
    stop = backend.stop_gradient
    return Transport(plan, stop(f), stop(g), stop(errors), iterations, stop(final_error))


def transport_vjp(backend: Any, config: SolverConfig, z: Any, a: Any, b: Any, eps: Any) -> tuple[Transport, Any]:
    """Eager forward plus a pull-back ``dL/dP -> (dL/dz, dL/da, dL/db)`` (for softsort.vjp).

    epsilon is a Python float there (``softsort.vjp`` differentiates array inputs only).
    """
    static = (backend, config)
    inputs = (z, a, b, eps)
    outs = _fwd(static, *inputs)

    def pullback(d_plan: Any) -> tuple[Any, Any, Any]:
        return _bwd(static, inputs, outs, (d_plan,))[:3]

    return Transport(*outs), pullback
