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
from jax.custom_derivatives import SymbolicZero

from ._base import Backend, State

#: Plans per chunk of a batch on a CPU (see ``Backend.cache_chunk_bytes``); chosen with
#: ``benchmarks/chunk_sizes.py`` on a 2-core CPU. Other devices: never split.
CACHE_CHUNK_BYTES = 1 << 20

#: Plans with at most this many targets (columns) take the CPU products of ``matvec`` and
#: ``vecmat`` below. Measured on a 2-core CPU, 100 Sinkhorn steps (a ``matvec`` and a
#: ``vecmat`` each) under jit, ms per step, dot / these: 2048 x 64 x 2 (a chunk of W7)
#: 0.32 / 0.19, 1000 x 10 x 3 0.070 / 0.036, 1 x 10000 x 3 (W6) 0.049 / 0.0056; at m = 10 and
#: beyond they were no faster than the dot.
FEW_TARGETS = 4

#: Plans of at most this many rows and columns form ``P^T diag(w) P`` (the implicit
#: backward's Schur complement) as a broadcast product on a CPU. ms, batched matrix product
#: / broadcast, 2-core CPU, jit: 1000 x 10 x 10 (G1) 1.79 / 0.58, 256 x 16 x 16 0.62 /
#: 0.16, 1000 x 32 x 16 1.71 / 0.63; but 2048 x 64 x 3 1.38 / 2.57, 1 x 10^5 x 16 3.6 / 4.2.
SMALL_GRAM = (32, 16)


class JaxBackend(Backend):
    name = "jax"

    def is_concrete(self, x: Any) -> bool:
        return not isinstance(x, jax.core.Tracer)

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State], state: State) -> State:
        return jax.lax.while_loop(cond, body, _varying_like_data(state))

    def cond(self, pred: Any, true_fn: Callable[[Any], Any], false_fn: Callable[[Any], Any], operand: Any) -> Any:
        return jax.lax.cond(pred, true_fn, false_fn, operand)

    def map_rows(self, fn: Callable[[Any], Any], x: Any) -> Any:
        # OTT-JAX's apply_on_axis vmaps too: a function written for it traces the same way.
        return jax.vmap(fn)(x)

    def map_chunks(self, fn: Callable[..., tuple[Any, ...]], xs: State, rows: int) -> tuple[Any, ...]:
        present = [x for x in xs if x is not None]
        if all(self.is_concrete(x) for x in present):
            # An eager batch over several devices is solved whole: slices of consecutive rows
            # and their concatenation would lose its sharding (under tracing the strided
            # chunks below keep it).
            if any(len(x.devices()) > 1 for x in present):
                return tuple(fn(*xs))
            # Eagerly each chunk reuses the solver compiled for its shape; a lax.map of a
            # new closure would be compiled again on every call.
            return super().map_chunks(fn, xs, rows)
        batch = present[0].shape[0]
        count = batch // rows
        full = count * rows

        # Chunk j holds rows j, j + count, ...: a batch sharded by rows stays sharded by
        # rows inside every chunk, and each device sweeps its own rows.
        def split(x: Any) -> Any:
            return None if x is None else jnp.swapaxes(jnp.reshape(x[:full], (rows, count, *x.shape[1:])), 0, 1)

        def join(y: Any) -> Any:
            return None if y is None else jnp.reshape(jnp.swapaxes(y, 0, 1), (full, *y.shape[2:]))

        outs = tuple(join(y) for y in jax.lax.map(lambda c: tuple(fn(*c)), tuple(split(x) for x in xs)))
        if full == batch:
            return outs
        rest = fn(*(None if x is None else x[full:] for x in xs))
        return tuple(None if y is None else jnp.concatenate([y, r], axis=0) for y, r in zip(outs, rest, strict=True))

    def fori_loop(self, lower: int, upper: int, body: Callable[[Any, State], State], state: State) -> State:
        return jax.lax.fori_loop(lower, upper, body, state)

    def scan(self, body: Callable[[Any, State], Any], carry: Any, xs: State) -> Any:
        return jax.lax.scan(body, carry, xs)

    def bounded_while_loop(
        self, cond: Callable[[State], Any], body: Callable[[State], State], state: State, max_trips: int
    ) -> State:
        # A fixed trip count lowers to scan, which reverse-mode autodiff can go through;
        # trips after convergence leave the state unchanged.
        def step(_: Any, s: State) -> State:
            return jax.lax.cond(cond(s), body, lambda t: t, s)

        return jax.lax.fori_loop(0, max_trips, step, _varying_like_data(state))

    def stop_gradient(self, x: Any) -> Any:
        return jax.lax.stop_gradient(x)

    def custom_vjp(
        self,
        fwd: Callable[..., Any],
        bwd: Callable[..., Any],
        differentiable_outputs: int,
        jvp: Callable[..., Any] | None = None,
    ) -> Callable[..., Any]:
        if jvp is None:
            return self._custom_vjp(fwd, bwd, differentiable_outputs)
        # With a forward-mode rule: jax.custom_jvp, reverse mode by transposing the rule.
        # Every order then works (grad of grad, jacfwd, hessian): the rule computes the
        # primal outputs with the custom function itself, so differentiating the rule uses
        # the rule again and never the solver's while loop.

        @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
        def f(static: Any, *inputs: Any) -> Any:
            return fwd(static, *inputs)

        def f_jvp(static: Any, primals: Any, tangents: Any) -> Any:
            outputs = f(static, *primals)
            tangents = tuple(_instantiate(t, p) for t, p in zip(tangents, primals, strict=True))
            d_out = jvp(static, tuple(primals), outputs, tangents)
            rest = tuple(_zero_tangent(o) for o in outputs[differentiable_outputs:])
            return outputs, (*d_out, *rest)

        # Symbolic zeros: the diagnostics' zero tangents then take the outputs' types, which
        # under shard_map vary over the mesh axes (a float0 array cannot).
        f.defjvp(f_jvp, symbolic_zeros=True)
        # jit with the (hashable) configuration static: eager calls reuse one compiled
        # solver per configuration and shapes instead of re-tracing the while loop each
        # call (0.6 s and ~8 MB per eager call otherwise). Under an outer jit it inlines.
        return jax.jit(f, static_argnums=0)

    def _custom_vjp(
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
            return tuple(
                jnp.zeros_like(x) if g is None else _reduce_to_type_of(g, x) for x, g in zip(inputs, grads, strict=True)
            )

        f.defvjp(f_fwd, f_bwd)
        return jax.jit(f, static_argnums=0)

    def checkpoint(self, fn: Callable[..., Any], *like: Any) -> Callable[..., Any]:
        # Only traced calls (grad, jit, vmap) keep residuals; eager calls run fn as is.
        if all(self.is_concrete(x) for x in like):
            return fn
        return jax.checkpoint(fn)

    def linear_solve(self, matvec: Callable[[Any], Any], solve: Callable[[Any], Any], rhs: Any) -> Any:
        # The CG while loop is not reverse-differentiable; custom_linear_solve differentiates
        # the solve implicitly (symmetric: the transpose is the same solve).
        return jax.lax.custom_linear_solve(matvec, rhs, lambda _, r: solve(r), symmetric=True)

    def dense_solve(self, mat: Any, rhs: Any) -> Any:
        if jax.default_backend() != "cpu":
            return jnp.linalg.solve(mat, rhs[..., None])[..., 0]
        # jaxlib's batched LAPACK kernels (LU, triangular solves) split a large batch into
        # tasks on XLA's intra-op thread pool and block a pool thread until those finish.
        # Two such kernels at once (the chunks of a batch, several host devices, two
        # operators of one program: XLA runs independent work in parallel) can occupy every
        # pool thread while they wait: nothing runs the tasks, and the program hangs for
        # ever (seen: jit of value_and_grad of ranks on 2 host devices; and on one device,
        # over 4096 lists of 128, two memory-budget chunks each in its triangular solve).
        # So on a CPU the solve is plain array operations, which also keep each device on
        # its own rows. The matrices of the core (Schur complements, Newton steps) carry a
        # ridge: elimination without pivoting is stable on them. Differentiated as a linear
        # solve (implicitly), not through the elimination's k steps.
        batch = jnp.broadcast_shapes(mat.shape[:-2], rhs.shape[:-1])
        mat = jnp.broadcast_to(mat, (*batch, *mat.shape[-2:]))
        rhs = jnp.broadcast_to(rhs, (*batch, rhs.shape[-1]))
        fixed = jax.lax.stop_gradient(mat)
        return jax.lax.custom_linear_solve(
            lambda v: (mat @ v[..., None])[..., 0],
            rhs,
            lambda _, r: _eliminate(fixed, r),
            transpose_solve=lambda _, r: _eliminate(jnp.swapaxes(fixed, -1, -2), r),
        )

    def cache_chunk_bytes(self, like: Any) -> int | None:
        return CACHE_CHUNK_BYTES if self._platform(like) == "cpu" else None

    def _platform(self, like: Any) -> str:
        # A traced array has no device to ask: it runs where JAX's default backend is.
        return jax.default_backend() if not self.is_concrete(like) else next(iter(like.devices())).platform

    def matvec(self, mat: Any, vec: Any) -> Any:
        m = mat.shape[-1]
        if m <= FEW_TARGETS and self._platform(mat) == "cpu":
            # XLA's CPU dot of (..., n, m) by (..., m) with m tiny is slow (a top-2 mask: m = 2);
            # m scaled columns added up fuse into one elementwise pass (see FEW_TARGETS).
            out = mat[..., 0] * vec[..., 0, None]
            for j in range(1, m):
                out = out + mat[..., j] * vec[..., j, None]
            return out
        return super().matvec(mat, vec)

    def vecmat(self, vec: Any, mat: Any) -> Any:
        if mat.shape[-1] <= FEW_TARGETS and self._platform(mat) == "cpu":
            # The same product with the short axis leading: XLA's dot is fast on that layout.
            return (jnp.swapaxes(mat, -1, -2) @ vec[..., None])[..., 0]
        return super().vecmat(vec, mat)

    def gram(self, mat: Any, w: Any) -> Any:
        small = mat.shape[-2] <= SMALL_GRAM[0] and mat.shape[-1] <= SMALL_GRAM[1]
        if small and self._platform(mat) == "cpu":
            # XLA's CPU batched dot of many tiny matrices is slow; a broadcast product summed
            # over the rows fuses into one pass (see SMALL_GRAM).
            return jnp.sum(mat[..., :, :, None] * (mat * w[..., :, None])[..., :, None, :], axis=-3)
        return super().gram(mat, w)

    #: XLA's CPU sort takes about a microsecond a row of 10: the exact-dual start of 1000
    #: rows of 10 took 2.8 ms by sort and searches, 0.65 ms pairwise (1000 x 32: 17 -> 2.5
    #: ms); at rows of 64 pairwise is slower. Same limit on other devices (not measured).
    pairwise_rows = 32

    def inverse_permutation(self, order: Any) -> Any:
        rows = jnp.reshape(order, (-1, order.shape[-1]))
        batch = jnp.arange(rows.shape[0], dtype=order.dtype)[:, None]
        positions = jnp.broadcast_to(jnp.arange(order.shape[-1], dtype=order.dtype), rows.shape)
        return jnp.reshape(jnp.zeros_like(rows).at[batch, rows].set(positions, unique_indices=True), order.shape)

    def logsumexp(self, x: Any, axis: int) -> Any:
        return jax.nn.logsumexp(x, axis=axis)


def _varying_axes(x: Any) -> set[Any]:
    """The manual mesh axes ``x`` varies over (``{V:b}`` in its type); empty outside shard_map."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10; earlier releases: aval.vma
    return set(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _reduce_to_type_of(ct: Any, x: Any) -> Any:
    """The cotangent of ``x`` under ``shard_map``: summed over the axes ``x`` does not vary on.

    An input replicated over a mesh axis (a constant such as uniform weights) whose
    cotangent varies (it mixes in the sharded data) receives the sum over the devices, the
    transpose of broadcasting it to them.
    """
    extra = tuple(sorted(_varying_axes(ct) - _varying_axes(x)))
    return jax.lax.psum(ct, extra) if extra else ct


def _varying_like_data(state: State) -> State:
    """The loop state with every array varying over the manual mesh axes the data varies on.

    Under ``jax.shard_map`` the data is "varying" over the sharded axis, but state made from
    constants (counters, error logs, over-relaxation) is not, while the body makes it so
    (it mixes in the data): ``while_loop`` then refuses the carry (``int32[2]`` against
    ``int32[2]{V:b}``). Outside ``shard_map`` nothing varies and the state is unchanged.
    """
    leaves, tree = jax.tree_util.tree_flatten(state)
    axes: set[Any] = set()
    for leaf in leaves:
        axes |= _varying_axes(leaf)
    if not axes:
        return state

    def widen(leaf: Any) -> Any:
        missing = tuple(sorted(axes - _varying_axes(leaf)))
        return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf

    return jax.tree_util.tree_unflatten(tree, [widen(leaf) for leaf in leaves])


def _zero_tangent(x: Any) -> Any:
    """A symbolic zero tangent for an output that carries none (diagnostics, counts)."""
    return SymbolicZero(jax.typeof(x).to_tangent_aval())


def _instantiate(t: Any, primal: Any) -> Any:
    """An input tangent as an array (zeros where JAX passes a symbolic zero)."""
    return jnp.zeros_like(primal) if isinstance(t, SymbolicZero) else t


def _eliminate(mat: Any, rhs: Any) -> Any:
    """``mat^{-1} rhs`` by Gauss-Jordan elimination without pivoting: ``k`` batched rank-1 updates."""
    k = mat.shape[-1]
    rows = jnp.arange(k)
    aug = jnp.concatenate([mat, rhs[..., None]], axis=-1)  # (..., k, k + 1)

    def step(j: Any, aug: Any) -> Any:
        pivot = jnp.take(aug, j, axis=-2)  # row j, (..., k + 1)
        pivot = pivot / jnp.take(pivot, j, axis=-1)[..., None]
        col = jnp.where(rows == j, 0.0, jnp.take(aug, j, axis=-1))  # column j off the pivot
        aug = aug - col[..., :, None] * pivot[..., None, :]
        return jnp.where((rows == j)[:, None], pivot[..., None, :], aug)

    return jax.lax.fori_loop(0, k, step, aug)[..., -1]
