"""The adapter protocol and the generic eager adapter.

The core (:mod:`softsort._core`) is written once against the array API standard. The few
things the standard does not cover -- loops that a compiler can trace, custom gradients,
stopping gradients, whether values can be inspected -- are asked of an adapter. This
module defines that small surface and implements it for every eager, standard-conforming
library (NumPy, array-api-strict, and anything unknown). Framework adapters in this
package override only what their framework does differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._compat import is_lazy_array

State = tuple[Any, ...]


def _quiet_blas() -> Any:
    """A context that drops NumPy's "invalid value" warning from a BLAS product.

    NumPy turns the CPU's floating-point flags after a BLAS call into warnings, and some
    OpenBLAS kernels set "invalid" on some CPUs with finite, moderate operands (numpy#24067,
    OpenBLAS#1924; seen in CI in the Sinkhorn loop in float32, every operand in [1e-10, 25]).
    The solver checks its own iterates (a row gone NaN is reported as diverged), so the flag
    says nothing here. Only NumPy-backed arrays (NumPy, array-api-strict) read it. A fresh
    context each time: one ``np.errstate`` cannot be entered twice (about 2 us each).
    """
    return np.errstate(invalid="ignore")


class Backend:
    """Generic eager adapter: value-only custom gradients, Python loops.

    Attributes
    ----------
    xp
        The array namespace (array-api-compat wrapped where needed).
    name
        Short name used in messages.
    """

    name = "generic"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def __repr__(self) -> str:
        return f"<softsort backend {self.name!r} for {self.xp.__name__}>"

    # -- inspection -------------------------------------------------------------------
    def is_concrete(self, x: Any) -> bool:
        """Whether the values of ``x`` can be read (False under tracing / vmap)."""
        return not is_lazy_array(x)

    # -- control flow -----------------------------------------------------------------
    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State], state: State) -> State:
        """Run ``body`` while ``cond`` holds; ``cond`` returns a 0-d boolean array."""
        while bool(cond(state)):
            state = body(state)
        return state

    def cond(self, pred: Any, true_fn: Callable[[Any], Any], false_fn: Callable[[Any], Any], operand: Any) -> Any:
        """``true_fn(operand)`` if the 0-d boolean ``pred`` holds, else ``false_fn(operand)``."""
        return true_fn(operand) if bool(pred) else false_fn(operand)

    def map_rows(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """``fn`` on each row of the 2-D ``x``, results stacked (used by ``apply_on_axis``).

        A Python loop: ``fn`` may be any function of a 1-D array, including ones that read
        values. Adapters with a vectorizing map (JAX: ``jax.vmap``) override it.
        """
        return self.xp.stack([fn(x[i, ...]) for i in range(x.shape[0])], axis=0)

    def map_chunks(self, fn: Callable[..., tuple[Any, ...]], xs: State, rows: int) -> tuple[Any, ...]:
        """``fn`` on chunks of ``rows`` rows of the arrays ``xs``; its outputs joined along axis 0.

        ``xs`` and the outputs of ``fn`` are tuples of arrays with the batch as leading axis;
        ``None`` entries pass through (``fn`` receives ``None``; an output ``None`` in the
        first chunk is ``None`` in the result). The rows are independent problems, so the
        order in which chunks are solved does not matter. Generic: a Python loop over
        consecutive slices (the last one may be shorter).
        """
        batch = next(x for x in xs if x is not None).shape[0]
        # stops within the axis: the standard leaves a slice past the end unspecified
        spans = [(start, min(start + rows, batch)) for start in range(0, batch, rows)]
        parts = [fn(*(None if x is None else x[s:e, ...] for x in xs)) for s, e in spans]
        return tuple(
            None if group[0] is None else self.xp.concat(list(group), axis=0) for group in zip(*parts, strict=True)
        )

    def fori_loop(self, lower: int, upper: int, body: Callable[[Any, State], State], state: State) -> State:
        """``state = body(i, state)`` for ``i`` in ``range(lower, upper)`` (fixed trip count)."""
        for i in range(lower, upper):
            state = body(i, state)
        return state

    def scan(self, body: Callable[[Any, State], tuple[Any, State]], carry: Any, xs: State) -> tuple[Any, State]:
        """``carry, y_i = body(carry, x_i)`` over the leading axis of the arrays ``xs``.

        Returns the last carry and the ``y_i`` stacked along a new leading axis (a tuple,
        one entry per output of ``body``; ``body`` returns a tuple, possibly empty). The
        blocked plan (:mod:`softsort._core._blocked`) runs its passes over row blocks with
        it; a compiler lowers it to one loop with a static trip count.
        """
        outs = []
        for i in range(xs[0].shape[0]):
            carry, y = body(carry, tuple(x[i, ...] for x in xs))
            outs.append(y)
        if not outs or not outs[0]:
            return carry, ()
        return carry, tuple(self.xp.stack(list(parts), axis=0) for parts in zip(*outs, strict=True))

    def bounded_while_loop(
        self,
        cond: Callable[[State], Any],
        body: Callable[[State], State],
        state: State,
        max_trips: int,
    ) -> State:
        """A while loop of at most ``max_trips`` trips that autodiff can reverse.

        Used by ``implicit_diff=False`` (differentiating through the iterations). Eager
        libraries record the loop as it runs, so a plain while loop does.
        """
        del max_trips
        return self.while_loop(cond, body, state)

    # -- differentiation --------------------------------------------------------------
    def stop_gradient(self, x: Any) -> Any:
        return x

    def custom_vjp(
        self,
        fwd: Callable[..., tuple[Any, ...]],
        bwd: Callable[..., tuple[Any, ...]],
        differentiable_outputs: int,
        jvp: Callable[..., tuple[Any, ...]] | None = None,
    ) -> Callable[..., tuple[Any, ...]]:
        """Attach a hand-written backward pass (and forward-mode rule) to ``fwd``.

        Parameters
        ----------
        fwd
            ``fwd(static, *inputs) -> outputs`` (a tuple of arrays). ``static`` is a
            hashable configuration object, never differentiated.
        bwd
            ``bwd(static, inputs, outputs, cotangents) -> input_cotangents``; it receives
            cotangents for the first ``differentiable_outputs`` outputs only and returns
            one cotangent (or ``None``) per input.
        differentiable_outputs
            How many leading outputs carry gradients; the rest are diagnostics.
        jvp
            ``jvp(static, inputs, outputs, tangents) -> output_tangents`` (one per
            differentiable output; a tangent ``None`` is zero), linear in ``tangents``. A
            framework may build every derivative from it (JAX: reverse mode by transposing
            it) or use it for forward mode only (PyTorch).

        Returns
        -------
        callable
            ``f(static, *inputs) -> outputs``. Eager libraries without autodiff get
            ``fwd`` itself: they differentiate through :func:`softsort.vjp` instead.
        """
        del bwd, differentiable_outputs, jvp
        return fwd

    def checkpoint(self, fn: Callable[..., Any], *like: Any) -> Callable[..., Any]:
        """``fn`` rematerialised under autodiff: its internals are not kept for the backward.

        For the chunks of a batch (``memory_budget``): under framework autodiff every
        chunk's plan would otherwise stay alive as a residual until the backward pass.
        ``like`` are arrays of the call (to tell whether autodiff may record). Generic: no
        autodiff, ``fn`` itself.
        """
        del like
        return fn

    def linear_solve(self, matvec: Callable[[Any], Any], solve: Callable[[Any], Any], rhs: Any) -> Any:
        """``solve(rhs)`` for the symmetric linear map ``matvec``, differentiable as a linear solve.

        ``solve`` may iterate (conjugate gradients): an adapter whose autodiff cannot go
        through its loop differentiates the solve implicitly instead (transpose: the same
        solve; derivative in ``matvec``'s parameters: ``-A^{-1} dA x``). Eager libraries
        record the iterations, which is exact up to the solver's tolerance.
        """
        del matvec
        return solve(rhs)

    def dense_solve(self, mat: Any, rhs: Any) -> Any:
        """``mat^{-1} rhs`` for a batch: ``mat`` (..., k, k), ``rhs`` (..., k) -> (..., k).

        Differentiable like ``linalg.solve``. The core passes symmetric positive definite
        matrices with a ridge only, so an adapter may solve without pivoting: JAX's does on
        several host CPU devices, around a hang of jaxlib's batched LU there.
        """
        return self.xp.linalg.solve(mat, rhs[..., None])[..., 0]

    # -- optional fast paths ----------------------------------------------------------
    #: Rows of at most this many entries are ordered (the exact-dual start) by comparing
    #: every pair instead of a sort and binary searches; 0: always sort. Adapters whose
    #: sort is slow on short rows raise it (chosen by measurement).
    pairwise_rows = 0

    def count_below(self, v: Any, w: Any, strict: bool) -> Any | None:
        """For each ``v_k`` (..., p): how many of ``w`` (..., q) lie below it, or ``None``.

        Both ``v`` and ``w`` ascend along the last axis; ``w < v_k`` if ``strict`` else
        ``w <= v_k``; default integer dtype (int64 on PyTorch). ``None``: the core's
        binary search (a gather and a comparison per round, built from the standard: fast
        under a compiler, a dozen small calls per round on an eager library).
        """
        del v, w, strict
        return None

    def inverse_permutation(self, order: Any) -> Any:
        """The inverse of the permutations ``order`` along the last axis (``argsort(order)``).

        Generic: a second sort; adapters with a scatter place ``arange(n)`` at ``order``.
        """
        return self.xp.argsort(order, axis=-1)

    def cache_chunk_bytes(self, like: Any) -> int | None:
        """Bytes of plans to solve at once when a batch is split for the cache, or ``None``.

        The Sinkhorn loop sweeps the plans of every problem of a batch each iteration; on a
        CPU a batch whose plans exceed the caches streams them from memory every sweep,
        while chunks that fit are swept from cache (the rows are independent problems: the
        result is the same). ``None``: never split (devices whose throughput comes from
        the whole batch at once, and libraries not measured). ``like``: an array of the
        call (its device). The sizes are measured by ``benchmarks/chunk_sizes.py``.
        """
        del like
        return None

    def clip(self, x: Any, low: float | None, high: float | None) -> Any:
        """``x`` clipped to ``[low, high]`` (``None``: no bound), NaN kept; Python scalar bounds.

        ``maximum``/``minimum``: array-api-compat's ``clip`` is Python code of its own for
        NumPy (8 us a call against 1.8 us for these two on 1000 values), and the Sinkhorn
        loop clips four times per step.
        """
        if low is not None:
            x = self.xp.maximum(x, low)
        return x if high is None else self.xp.minimum(x, high)

    def min(self, x: Any, axis: int) -> Any:
        """The minimum of ``x`` along ``axis`` (one axis, NaN kept). Generic: ``xp.min``."""
        return self.xp.min(x, axis=axis)

    def sum(self, x: Any, axis: int) -> Any:
        """The sum of ``x`` along ``axis`` (one axis). Generic: ``xp.sum``."""
        return self.xp.sum(x, axis=axis)

    def floored_exp(self, f: Any, d: Any, log_floor: float) -> Any:
        """``exp(f[..., :, None] - d)``, every entry at least ``exp(log_floor)``, NaN kept.

        ``d`` (..., n, m) is a temporary of the caller's: an adapter may overwrite it
        (eager libraries then allocate no new ``n x m`` array). Generic: the argument is
        clipped first, so ``exp`` never underflows (slow in some libraries).
        """
        return self.xp.exp(self.clip(f[..., :, None] - d, log_floor, None))

    def writable(self, x: Any) -> bool:
        """Whether the core may update its temporary ``x`` in place (``x -= y``, ``x *= y``).

        Only where nothing records ``x`` (autodiff, tracing) and arrays are mutable; an
        in-place update saves eager libraries a new ``n x m`` array (and its page faults).
        Generic: never.
        """
        del x
        return False

    def matvec(self, mat: Any, vec: Any) -> Any:
        """``mat @ vec`` for a batch: ``mat`` (..., n, m), ``vec`` (..., m) -> (..., n)."""
        with _quiet_blas():
            return (mat @ vec[..., None])[..., 0]

    def vecmat(self, vec: Any, mat: Any) -> Any:
        """``vec @ mat`` for a batch: ``vec`` (..., n), ``mat`` (..., n, m) -> (..., m)."""
        with _quiet_blas():
            return (vec[..., None, :] @ mat)[..., 0, :]

    def gram(self, mat: Any, w: Any) -> Any:
        """``mat^T diag(w) mat`` for a batch: ``mat`` (..., n, m), ``w`` (..., n) -> (..., m, m)."""
        with _quiet_blas():
            return self.xp.matrix_transpose(mat) @ (mat * w[..., :, None])

    def logsumexp(self, x: Any, axis: int) -> Any | None:
        """Native log-sum-exp, or ``None`` to use the core's portable one."""
        del x, axis
        return None
