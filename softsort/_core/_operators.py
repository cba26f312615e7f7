"""Every operator as (target measure, read-out), and the one pipeline that runs them.

squash the criterion -> solve for the plan (:mod:`._transport`) -> read the answer off the
plan (:mod:`._readouts`). Public documentation: the functions of :mod:`softsort._api`.
Inputs arrive here already validated, moved to the last axis and flattened to (B, n).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .._compat import device
from . import _blocked, _targets
from . import _readouts as ro
from ._config import SolverConfig
from ._hard import hard_plan
from ._planop import dense_cotangent
from ._squash import default_squash, default_squash_vjp
from ._transport import Transport, transport, transport_vjp


class Prepared(NamedTuple):
    b: Any  # (m,) or (B, m) target weights
    aux: Any  # whatever the read-out needs (targets, selection matrix, ...)
    a: Any = None  # (n,) or (B, n) input weights; None means uniform


class Operator(NamedTuple):
    """An operator: its target measure and how its answer is read off the plan."""

    prepare: Callable[..., Prepared]  # (xp, n, like) -> Prepared
    readout: Callable[..., Any]  # (xp, plan, values, b, aux) -> out
    readout_vjp: Callable[..., tuple[Any, Any]]  # (xp, plan, values, b, aux, cot) -> (dP, dv)
    #: Whether the caller reads the potentials and error log (transport_for_sort); else a
    #: chunk of a batch keeps only its read-out, iterations and final error.
    diagnostics: bool = False


def _arange_like(xp: Any, m: int, like: Any) -> Any:
    return xp.arange(m, dtype=like.dtype, device=device(like))


def _pad_front(xp: Any, cot: Any, start: int, axis: int) -> Any:
    if start == 0:
        return cot
    shape = list(cot.shape)
    shape[axis] = start
    return xp.concat([xp.zeros(tuple(shape), dtype=cot.dtype, device=device(cot)), cot], axis=axis)


# -- sort and sort_with ----------------------------------------------------------------------
def sort_op(topk: int | None, num_targets: int | None, rows: bool = False, descending: bool = False) -> Operator:
    """``topk`` in [1, n) selects the top-k measure; else ``num_targets`` uniform targets.

    ``descending``: the same plan, its composite values read from the last target down.
    """

    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        if topk is not None and topk < n:
            return Prepared(_targets.topk(xp, n, topk, like), 1)
        return Prepared(_targets.uniform(xp, num_targets or n, like), 0)

    if rows:

        def readout(xp: Any, plan: Any, values: Any, b: Any, start: int) -> Any:
            return ro.sorted_rows(xp, plan, values, b)[..., start:, :]

        def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, start: int, cot: Any) -> Any:
            return ro.sorted_rows_vjp(xp, plan, values, b, _pad_front(xp, cot, start, -2))

    else:

        def readout(xp: Any, plan: Any, values: Any, b: Any, start: int) -> Any:
            return ro.sorted_values(xp, plan, values, b)[..., start:]

        def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, start: int, cot: Any) -> Any:
            return ro.sorted_values_vjp(xp, plan, values, b, _pad_front(xp, cot, start, -1))

    op = Operator(prepare, readout, readout_vjp)
    return _flipped(op, -2 if rows else -1) if descending else op


def _flipped(op: Operator, axis: int) -> Operator:
    """``op`` with its output read in the reverse order of the targets (``descending=True``)."""

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return xp.flip(op.readout(xp, plan, values, b, aux), axis=axis)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return op.readout_vjp(xp, plan, values, b, aux, xp.flip(cot, axis=axis))

    return Operator(op.prepare, readout, readout_vjp)


# -- ranks and topk_mask ----------------------------------------------------------------------
def ranks_op(num_targets: int | None, target_weights: Any, descending: bool = False) -> Operator:
    """Ranks on ``num_targets`` uniform targets or ``target_weights``.

    ``descending``: target ``j`` stands for rank ``m - 1 - j`` (rank 0 is the largest
    value), and ``target_weights[r]`` is the mass of rank ``r`` counted from the largest.
    """

    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        if target_weights is not None:
            b = xp.flip(target_weights) if descending else target_weights
        else:
            b = _targets.uniform(xp, num_targets or n, like)
        m = b.shape[-1]
        scale = (n - 1) / (m - 1) if m > 1 else 0.0
        levels = _arange_like(xp, m, like)
        return Prepared(b, ((m - 1) - levels if descending else levels, scale))

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return ro.transported(xp, plan, aux[0], aux[1])

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return ro.transported_vjp(xp, plan, aux[0], aux[1], cot), None

    return Operator(prepare, readout, readout_vjp)


def topk_mask_op(k: int) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        return Prepared(_targets.two_level(xp, n, k, like), _arange_like(xp, 2, like))

    def readout(xp: Any, plan: Any, values: Any, b: Any, levels: Any) -> Any:
        return ro.transported(xp, plan, levels, 1.0)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, levels: Any, cot: Any) -> Any:
        return ro.transported_vjp(xp, plan, levels, 1.0, cot), None

    return Operator(prepare, readout, readout_vjp)


# -- quantile ---------------------------------------------------------------------------------
def quantile_op(q: Any, weight: Any) -> Operator:
    """``q`` is a 1-D array of levels in any order; output follows that order."""

    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        r = q.shape[-1]
        order = xp.argsort(q)
        b = _targets.quantile_weights(xp, xp.take(q, order), n, weight)
        # select[j, l] = 1 when target j is the small target of the level q[l]:
        # the k-th smallest level sits at target 2k + 1.
        rank = xp.argsort(order)
        m = 2 * r + 1
        rows = xp.arange(m, device=device(like))
        select = xp.astype(rows[:, None] == (2 * rank + 1)[None, :], like.dtype)
        return Prepared(b, select)

    def readout(xp: Any, plan: Any, values: Any, b: Any, select: Any) -> Any:
        return ro.sorted_values(xp, plan, values, b) @ select

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, select: Any, cot: Any) -> Any:
        return ro.sorted_values_vjp(xp, plan, values, b, cot @ xp.matrix_transpose(select))

    return Operator(prepare, readout, readout_vjp)


# -- quantize and quantile_normalization ------------------------------------------------------
def quantize_op(num_levels: int) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        return Prepared(_targets.uniform(xp, num_levels, like), None)

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return ro.quantized(xp, plan, values, b)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return ro.quantized_vjp(xp, plan, values, b, cot)

    return Operator(prepare, readout, readout_vjp)


def quantile_normalization_op(targets: Any, weights: Any) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        m = targets.shape[-1]
        b = weights if weights is not None else _targets.uniform(xp, m, like)
        return Prepared(b, targets)

    def readout(xp: Any, plan: Any, values: Any, b: Any, tgt: Any) -> Any:
        return ro.transported(xp, plan, tgt, 1.0)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, tgt: Any, cot: Any) -> Any:
        return ro.transported_vjp(xp, plan, tgt, 1.0, cot), None

    return Operator(prepare, readout, readout_vjp)


def plan_op(weights: Any, target_weights: Any, num_targets: int | None) -> Operator:
    """No read-out: for transport_for_sort, which returns the plan itself."""

    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        if target_weights is not None:
            return Prepared(target_weights, None, weights)
        return Prepared(_targets.uniform(xp, num_targets or n, like), None, weights)

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return plan

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return cot, None

    return Operator(prepare, readout, readout_vjp, diagnostics=True)


# -- the pipeline -------------------------------------------------------------------------------
def _problem(backend: Any, op: Operator, criterion: Any, eps: Any) -> tuple[Any, ...]:
    xp = backend.xp
    batch, n = criterion.shape[0], criterion.shape[-1]
    prep = op.prepare(xp, n, criterion)
    m = prep.b.shape[-1]
    b = xp.broadcast_to(prep.b, (batch, m))
    if prep.a is not None:
        a = xp.broadcast_to(prep.a, (batch, n))
    else:
        a = xp.full((batch, n), 1.0 / n, dtype=criterion.dtype, device=device(criterion))
    eps = xp.broadcast_to(eps, (batch,))
    return prep, a, b, eps


#: Working memory of one problem, in ``n x m`` arrays: the bound ``memory_budget`` is
#: enforced with. Measured peaks (tests/test_memory_budget.py, extra memory of a call in a
#: fresh process): NumPy forward about 2 arrays (tracemalloc), ``softsort.vjp`` 4; JAX
#: 2.0 forward, 4.0 gradient; the rest is margin for PyTorch's autograd and for read-outs
#: that make their own ``n x m`` cotangent.
PEAK_ARRAYS_PER_ROW = 6


def _sizes(backend: Any, op: Operator, criterion: Any) -> tuple[int, int, int]:
    xp = backend.xp
    n = criterion.shape[-1]
    return n, op.prepare(xp, n, criterion).b.shape[-1], xp.finfo(criterion.dtype).bits // 8


def blocked_rows(backend: Any, op: Operator, criterion: Any, config: SolverConfig) -> int | None:
    """Rows per block when one problem's working set exceeds ``memory_budget`` (else ``None``).

    Such a problem is solved and read by row blocks (:mod:`._blocked`), its plan never
    stored. ``transport_for_sort``, whose answer is the plan, and the options that need the
    whole plan are refused with a ``ValueError``, before anything of size ``n x m`` exists.
    """
    n, m, itemsize = _sizes(backend, op, criterion)
    per_row = PEAK_ARRAYS_PER_ROW * n * m * itemsize
    if per_row <= config.memory_budget:
        return None
    if op.diagnostics:
        msg = (
            f"option 'memory_budget' is {config.memory_budget} bytes, but one problem of n={n} inputs and "
            f"m={m} targets needs {per_row} bytes ({PEAK_ARRAYS_PER_ROW} arrays of n x m in {criterion.dtype}), "
            "and transport_for_sort returns the plan itself; raise memory_budget or use fewer values per problem "
            "(the other operators run such problems block by block)"
        )
        raise ValueError(msg)
    if not config.implicit_diff:
        msg = (
            f"option 'implicit_diff=False' differentiates through the iterations, which keeps the whole plan, "
            f"but one problem of n={n} inputs and m={m} targets ({per_row} bytes) exceeds "
            f"memory_budget={config.memory_budget}; use implicit_diff=True or raise memory_budget"
        )
        raise ValueError(msg)
    return _blocked.block_rows(n, m, itemsize, config.memory_budget)


def chunks(backend: Any, op: Operator, criterion: Any, config: SolverConfig) -> list[tuple[int, int]]:
    """Row ranges whose problems fit ``config.memory_budget`` together (one range if all fit).

    A problem that does not fit alone gets a range of its own, solved block by block (see
    :func:`blocked_rows`, which raises ``ValueError`` where that is not possible).
    """
    batch = criterion.shape[0]
    n, m, itemsize = _sizes(backend, op, criterion)
    per_row = PEAK_ARRAYS_PER_ROW * n * m * itemsize
    if per_row > config.memory_budget:
        blocked_rows(backend, op, criterion, config)  # raises where blocks cannot serve
    rows = max(1, config.memory_budget // per_row)
    return [(start, min(start + rows, batch)) for start in range(0, max(batch, 1), rows)]


def _refuse_straight_through(n: int, config: SolverConfig) -> None:
    msg = (
        f"option 'straight_through=True' reads the hard operator off the whole exact plan, but one problem of "
        f"n={n} inputs exceeds memory_budget={config.memory_budget} (it is solved block by block); "
        "raise memory_budget or use straight_through=False"
    )
    raise ValueError(msg)


def _concat_runs(xp: Any, runs: list[tuple[Any, Transport]]) -> tuple[Any, Transport]:
    """Put the chunks back together; a chunk's plan is ``None`` (dropped) except for the plan op."""
    out = xp.concat([r[0] for r in runs], axis=0)
    fields = zip(*(r[1] for r in runs), strict=True)
    return out, Transport(*(None if parts[0] is None else xp.concat(list(parts), axis=0) for parts in fields))


def _kept(op: Operator, t: Transport) -> Transport:
    """What a chunk of a batch keeps of its transport: never the plan, vectors the caller reads."""
    if op.diagnostics:
        return t._replace(plan=None)
    return t._replace(plan=None, f=None, g=None, errors=None)


def run(
    backend: Any,
    op: Operator,
    values: Any,
    criterion: Any,
    eps: Any,
    squash: Callable[[Any], Any] | None,
    config: SolverConfig,
    straight_through: bool = False,
) -> tuple[Any, Transport]:
    """Forward pass, differentiable by the framework (the plan by its implicit VJP).

    A batch larger than ``config.memory_budget`` is solved in chunks of rows, one after
    the other; rows are independent problems, so the result is the same. A chunk keeps
    its read-out and vectors only: its plan is dropped (``Transport.plan`` is then
    ``None``; :func:`softsort.transport_for_sort` returns the plan as its read-out). Under
    framework autodiff each chunk runs under the adapter's ``checkpoint``, so a chunk's
    plan is not kept as a residual either: it is made again in the backward pass.
    """
    xp = backend.xp
    spans = chunks(backend, op, criterion, config)
    if len(spans) > 1:

        def one(v: Any, c: Any) -> tuple[Any, Transport]:
            out, t = run(backend, op, v, c, eps, squash, config, straight_through)
            return out, _kept(op, t)

        chunk = backend.checkpoint(one, values, criterion)
        return _concat_runs(xp, [chunk(values[s:e, ...], criterion[s:e, ...]) for s, e in spans])
    rows = blocked_rows(backend, op, criterion, config)
    if rows is not None and straight_through:
        _refuse_straight_through(criterion.shape[-1], config)
    prep, a, b, eps = _problem(backend, op, criterion, eps)
    z = default_squash(backend, criterion) if squash is None else squash(criterion)
    if tuple(z.shape) != tuple(criterion.shape):
        shapes = f"{tuple(criterion.shape)}, got {tuple(z.shape)}"
        msg = f"option 'squashing_fun' must return an array of the shape it receives {shapes}"
        raise ValueError(msg)
    if rows is None:
        t = transport(backend, config, z, a, b, eps)
    else:  # one problem over the budget: the plan is an operator made by row blocks
        t = Transport(*_blocked.transport(backend, config, rows, z, a, b, eps))
    out = op.readout(xp, t.plan, values, b, prep.aux)
    if straight_through:
        out = _straight_through(backend, op, out, z, a, b, values, prep.aux)
    return out, t


def _straight_through(backend: Any, op: Operator, soft: Any, z: Any, a: Any, b: Any, values: Any, aux: Any) -> Any:
    """The hard operator's value with the soft operator's derivatives (``straight_through=True``).

    The hard value is the same read-out on the exact epsilon -> 0 plan (:mod:`._hard`);
    ``soft - stop_gradient(soft)`` is exactly zero and carries the soft derivatives.
    """
    xp, stop = backend.xp, backend.stop_gradient
    hard = stop(op.readout(xp, hard_plan(xp, stop(z), stop(a), stop(b)), stop(values), stop(b), aux))
    return hard + (soft - stop(soft))


def run_vjp(
    backend: Any,
    op: Operator,
    values: Any,
    criterion: Any,
    eps: Any,
    config: SolverConfig,
    same: bool | None = None,
    straight_through: bool = False,
) -> tuple[Any, Transport, Callable[[Any], Any]]:
    """Eager forward and a pull-back to ``values`` (default squashing; for softsort.vjp)."""
    xp = backend.xp
    same = values is criterion if same is None else same  # differentiate the criterion too?
    spans = chunks(backend, op, criterion, config)
    if len(spans) > 1:
        # Each chunk's pull-back holds its plan: keeping them all would hold the whole
        # batch's plans. Only read-outs and vectors are kept; the pull-back solves each
        # chunk again (the same deterministic iterations: the same plan) and pulls back
        # through it before the next.
        parts = []
        for s, e in spans:
            out, t, _ = run_vjp(backend, op, values[s:e, ...], criterion[s:e, ...], eps, config, same, straight_through)
            parts.append((out, _kept(op, t)))
        out, t = _concat_runs(xp, parts)
        del parts

        def chunked_pullback(cot: Any) -> Any:
            grads = []
            for s, e in spans:
                pull = run_vjp(backend, op, values[s:e, ...], criterion[s:e, ...], eps, config, same)[2]
                grads.append(pull(cot[s:e, ...]))
                del pull
            return xp.concat(grads, axis=0)

        return out, t, chunked_pullback
    rows = blocked_rows(backend, op, criterion, config)
    if rows is not None and straight_through:
        _refuse_straight_through(criterion.shape[-1], config)
    prep, a, b, eps = _problem(backend, op, criterion, eps)
    z = default_squash(backend, criterion)
    if rows is None:
        t, dense_pullback = transport_vjp(backend, config, z, a, b, eps)

        def plan_pullback(d_plan: Any) -> Any:
            return dense_pullback(dense_cotangent(xp, d_plan))

    else:
        blocked, plan_pullback = _blocked.transport_vjp(backend, config, rows, z, a, b, eps)
        t = Transport(*blocked)
    out = op.readout(xp, t.plan, values, b, prep.aux)
    if straight_through:  # the value is the hard operator's, the pull-back the soft one's
        out = _straight_through(backend, op, out, z, a, b, values, prep.aux)

    def pullback(cot: Any) -> Any:
        d_plan, d_values = op.readout_vjp(xp, t.plan, values, b, prep.aux, cot)
        d_z = plan_pullback(d_plan)[0]
        d_crit = default_squash_vjp(backend, criterion, d_z)
        if same:
            return d_crit if d_values is None else d_values + d_crit
        return xp.zeros_like(values) if d_values is None else d_values

    return out, t, pullback
