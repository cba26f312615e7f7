"""JAX adapter: lax loops (jit-safe), ``jax.custom_vjp``, native logsumexp.

Under ``jax.jit``/``jax.vmap`` values are tracers: validation of values and the eager
ConvergenceWarning are skipped there (the result object still reports convergence).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._base import Backend, State


class JaxBackend(Backend):
    name = "jax"

    def is_concrete(self, x: Any) -> bool:
        return not isinstance(x, jax.core.Tracer)

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State], state: State) -> State:
        return jax.lax.while_loop(cond, body, state)

    def cond(self, pred: Any, true_fn: Callable[[Any], Any], false_fn: Callable[[Any], Any], operand: Any) -> Any:
        return jax.lax.cond(pred, true_fn, false_fn, operand)

    def map_rows(self, fn: Callable[[Any], Any], x: Any) -> Any:
        # OTT-JAX's apply_on_axis vmaps too: a function written for it traces the same way.
        return jax.vmap(fn)(x)

    def bounded_while_loop(
        self, cond: Callable[[State], Any], body: Callable[[State], State], state: State, max_trips: int
    ) -> State:
        # A fixed trip count lowers to scan, which reverse-mode autodiff can go through;
        # trips after convergence leave the state unchanged.
        def step(_: Any, s: State) -> State:
            return jax.lax.cond(cond(s), body, lambda t: t, s)

        return jax.lax.fori_loop(0, max_trips, step, state)

    def stop_gradient(self, x: Any) -> Any:
        return jax.lax.stop_gradient(x)

    def custom_vjp(
        self, fwd: Callable[..., Any], bwd: Callable[..., Any], differentiable_outputs: int
    ) -> Callable[..., Any]:
        @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
        def f(static: Any, *inputs: Any) -> Any:
            return fwd(static, *inputs)

        def f_fwd(static: Any, *inputs: Any) -> Any:
            outputs = fwd(static, *inputs)
            return outputs, (inputs, outputs)

        def f_bwd(static: Any, res: Any, cts: Any) -> Any:
            inputs, outputs = res
            grads = bwd(static, inputs, outputs, tuple(cts[:differentiable_outputs]))
            return tuple(jnp.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True))

        f.defvjp(f_fwd, f_bwd)
        # jit with the (hashable) configuration static: eager calls reuse one compiled
        # solver per configuration and shapes instead of re-tracing the while loop each
        # call (0.6 s and ~8 MB per eager call otherwise). Under an outer jit it inlines.
        return jax.jit(f, static_argnums=0)

    def logsumexp(self, x: Any, axis: int) -> Any:
        return jax.nn.logsumexp(x, axis=axis)
