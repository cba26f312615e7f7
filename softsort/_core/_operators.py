"""Every operator as (target measure, read-out), and the one pipeline that runs them.

squash the criterion -> solve for the plan (:mod:`._transport`) -> read the answer off the
plan (:mod:`._readouts`). Public documentation: the functions of :mod:`softsort._api`.
Inputs arrive here already validated, moved to the last axis and flattened to (B, n).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from .._compat import device
from . import _blocked, _targets
from . import _masked as mk
from . import _readouts as ro
from ._config import SolverConfig
from ._hard import hard_plan
from ._planop import dense_cotangent, matvec, vecmat
from ._squash import default_squash, default_squash_vjp
from ._transport import Transport, transport, transport_vjp


class Prepared(NamedTuple):
    b: Any  # (m,) or (B, m) target weights
    aux: Any  # whatever the read-out needs (targets, selection matrix, ...)
    a: Any = None  # (n,) or (B, n) input weights; None means uniform
    y: Any = None  # (B, m) target positions of each row (mask=); None means linspace(0, 1, m)


class Operator(NamedTuple):
    """An operator: its target measure and how its answer is read off the plan."""

    prepare: Callable[..., Prepared]  # (xp, n, like) -> Prepared
    readout: Callable[..., Any]  # (xp, plan, values, b, aux) -> out
    readout_vjp: Callable[..., tuple[Any, Any]]  # (xp, plan, values, b, aux, cot) -> (dP, dv)
    #: Whether the caller reads the potentials and error log (transport_for_sort); else a
    #: chunk of a batch keeps only its read-out, iterations and final error.
    diagnostics: bool = False
    #: The same operator on ragged rows (``mask=``): an Operator whose ``prepare`` takes
    #: ``(xp, n, like, rows)`` (:class:`._masked.Rows`) and returns per-row ``a``, ``b``
    #: (and ``y`` where the targets depend on the row's count); None: not supported.
    masked: Any = None


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

    op = Operator(prepare, readout, readout_vjp, masked=_sort_masked(topk, num_targets, rows, descending))
    return _flipped(op, -2 if rows else -1) if descending else op


def _sort_masked(topk: int | None, num_targets: int | None, rows: bool, descending: bool) -> Operator:
    """Each row's composite values first (in the requested order), zeros after.

    A row of ``c`` valid entries: ``c`` uniform targets of its own (full sort, output
    length ``n``); ``num_targets`` uniform targets (every row, output ``num_targets``); with
    ``topk = k``, the top-k measure of ``c`` values when ``c > k``, else the full sort of
    its ``c`` values (output length ``k``, zeros after the ``c`` values).
    """

    def prepare(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        c = r.count
        if topk is not None and topk < n:
            m, k = topk + 1, topk
            big = c > k
            b_small, y_small, used_small = mk.prefix(xp, c, m, like)
            j = _arange_like(xp, m, like)[None, :]
            b_big = xp.where(j == 0, (c - k) / c, 1.0 / c)
            b = xp.where(big, b_big, b_small)
            y = xp.where(big, xp.zeros_like(y_small) + j / k, y_small)
            used = big | used_small
            out = _arange_like(xp, k, like)[None, :]
            if descending:
                index = xp.where(big, k - out, c - 1 - out)
            else:
                index = xp.where(big, out + 1, out)
            on = r.nonempty & (big | (out < c))
        elif num_targets is not None:
            m = num_targets
            b, y = _targets.uniform(xp, m, like), None
            used = xp.ones((1, m), dtype=xp.bool, device=device(like))
            out = _arange_like(xp, m, like)[None, :]
            index = (m - 1) - out if descending else out
            on = r.nonempty & (out >= 0)
        else:
            m = n
            b, y, used = mk.prefix(xp, c, m, like)
            out = _arange_like(xp, m, like)[None, :]
            index = (c - 1) - out if descending else out
            on = r.nonempty & (out < c)
        index = xp.zeros_like(c) + index
        used = used & (c > 0)  # (B, m)
        return Prepared(b, (used, mk.selection(xp, index, on, m, like)), mk.input_weights(r), y)

    if rows:

        def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
            return aux[1] @ mk.composite_rows(xp, plan, values, aux[0])

        def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
            return mk.composite_rows_vjp(xp, plan, values, aux[0], xp.matrix_transpose(aux[1]) @ cot)

    else:

        def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
            return matvec(aux[1], mk.composite(xp, plan, values, aux[0]))

        def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
            return mk.composite_vjp(xp, plan, values, aux[0], vecmat(cot, aux[1]))

    return Operator(prepare, readout, readout_vjp)


def _flipped(op: Operator, axis: int) -> Operator:
    """``op`` with its output read in the reverse order of the targets (``descending=True``)."""

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return xp.flip(op.readout(xp, plan, values, b, aux), axis=axis)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return op.readout_vjp(xp, plan, values, b, aux, xp.flip(cot, axis=axis))

    return Operator(op.prepare, readout, readout_vjp, masked=op.masked)


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

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        # Ranks of a row of c values lie in [0, c - 1]: c times the mean target position,
        # times (c - 1) / (m - 1) (m = c by default: each row has its own c targets).
        c = r.count
        y = None
        if target_weights is not None:
            b = xp.flip(target_weights) if descending else target_weights
            m = b.shape[-1]
            levels = _arange_like(xp, m, like)[None, :]
            size = xp.zeros_like(c) + m
        elif num_targets is not None:
            m = num_targets
            b = _targets.uniform(xp, m, like)
            levels = _arange_like(xp, m, like)[None, :]
            size = xp.zeros_like(c) + m
        else:
            m = n
            b, y, _ = mk.prefix(xp, c, m, like)
            levels = _arange_like(xp, m, like)[None, :]
            size = c
        if descending:
            levels = (size - 1) - levels
        levels = xp.where(levels >= 0, levels, xp.zeros_like(levels))  # unused targets: no mass anyway
        span = xp.where(size > 1, size - 1.0, xp.ones_like(size))
        factor = xp.where(size > 1, c * (c - 1) / span, xp.zeros_like(c))
        return Prepared(b, (levels, factor, r.valid), mk.input_weights(r), y)

    return Operator(prepare, readout, readout_vjp, masked=_spread_masked(prepare_masked))


def _spread_masked(prepare: Callable[..., Prepared]) -> Operator:
    """A masked operator reading ``aux = (levels, factor, valid)`` as :func:`._masked.spread`."""

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return mk.spread(xp, plan, *aux)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        levels, factor, valid = aux
        return mk.spread_vjp(xp, plan, levels, factor, valid, cot), None

    return Operator(prepare, readout, readout_vjp)


def topk_mask_op(k: int) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        return Prepared(_targets.two_level(xp, n, k, like), _arange_like(xp, 2, like))

    def readout(xp: Any, plan: Any, values: Any, b: Any, levels: Any) -> Any:
        return ro.transported(xp, plan, levels, 1.0)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, levels: Any, cot: Any) -> Any:
        return ro.transported_vjp(xp, plan, levels, 1.0, cot), None

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        # A row of c <= k values keeps them all: every input goes to the upper target.
        top = xp.minimum(k / r.count, xp.ones_like(r.count))
        b = xp.concat([1.0 - top, top], axis=-1)
        return Prepared(b, (_arange_like(xp, 2, like), r.count, r.valid), mk.input_weights(r))

    return Operator(prepare, readout, readout_vjp, masked=_spread_masked(prepare_masked))


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

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        order = xp.argsort(q)
        b = mk.quantile_weights(xp, xp.take(q, order), r.count, weight)
        select = prepare(xp, n, like).aux
        used = xp.ones(b.shape, dtype=xp.bool, device=device(like))
        return Prepared(b, (used, select, r.nonempty), mk.input_weights(r))

    def readout_masked(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        out = mk.composite(xp, plan, values, aux[0]) @ aux[1]
        return xp.where(aux[2], out, xp.zeros_like(out))

    def readout_vjp_masked(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        cot = xp.where(aux[2], cot, xp.zeros_like(cot))
        return mk.composite_vjp(xp, plan, values, aux[0], cot @ xp.matrix_transpose(aux[1]))

    masked = Operator(prepare_masked, readout_masked, readout_vjp_masked)
    return Operator(prepare, readout, readout_vjp, masked=masked)


# -- quantize and quantile_normalization ------------------------------------------------------
def quantize_op(num_levels: int) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        return Prepared(_targets.uniform(xp, num_levels, like), None)

    def readout(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        return ro.quantized(xp, plan, values, b)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        return ro.quantized_vjp(xp, plan, values, b, cot)

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        used = xp.ones((1, num_levels), dtype=xp.bool, device=device(like))
        return Prepared(_targets.uniform(xp, num_levels, like), (used, r.count, r.valid), mk.input_weights(r))

    def readout_masked(xp: Any, plan: Any, values: Any, b: Any, aux: Any) -> Any:
        used, count, valid = aux
        return mk.spread(xp, plan, mk.composite(xp, plan, values, used), count, valid)

    def readout_vjp_masked(xp: Any, plan: Any, values: Any, b: Any, aux: Any, cot: Any) -> Any:
        used, count, valid = aux
        levels = mk.composite(xp, plan, values, used)
        d_plan = mk.spread_vjp(xp, plan, levels, count, valid, cot)
        d_levels = vecmat(count * xp.where(valid, cot, xp.zeros_like(cot)), plan)
        d_plan2, d_values = mk.composite_vjp(xp, plan, values, used, d_levels)
        return d_plan + d_plan2, d_values

    masked = Operator(prepare_masked, readout_masked, readout_vjp_masked)
    return Operator(prepare, readout, readout_vjp, masked=masked)


def quantile_normalization_op(targets: Any, weights: Any) -> Operator:
    def prepare(xp: Any, n: int, like: Any) -> Prepared:
        m = targets.shape[-1]
        b = weights if weights is not None else _targets.uniform(xp, m, like)
        return Prepared(b, targets)

    def readout(xp: Any, plan: Any, values: Any, b: Any, tgt: Any) -> Any:
        return ro.transported(xp, plan, tgt, 1.0)

    def readout_vjp(xp: Any, plan: Any, values: Any, b: Any, tgt: Any, cot: Any) -> Any:
        return ro.transported_vjp(xp, plan, tgt, 1.0, cot), None

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        prep = prepare(xp, n, like)
        return Prepared(prep.b, (targets, r.count, r.valid), mk.input_weights(r))

    return Operator(prepare, readout, readout_vjp, masked=_spread_masked(prepare_masked))


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

    def prepare_masked(xp: Any, n: int, like: Any, r: mk.Rows) -> Prepared:
        # weights with a mask are refused by the API; each row's c uniform inputs
        y = None
        if target_weights is not None or num_targets is not None:
            b = prepare(xp, n, like).b
            used = xp.ones((1, b.shape[-1]), dtype=xp.bool, device=device(like))
        else:
            b, y, used = mk.prefix(xp, r.count, n, like)
        keep = r.valid[..., :, None] & used[..., None, :]
        return Prepared(b, keep, mk.input_weights(r), y)

    def readout_masked(xp: Any, plan: Any, values: Any, b: Any, keep: Any) -> Any:
        return xp.where(keep, plan, xp.zeros_like(plan))

    def readout_vjp_masked(xp: Any, plan: Any, values: Any, b: Any, keep: Any, cot: Any) -> Any:
        return xp.where(keep, cot, xp.zeros_like(cot)), None

    masked = Operator(prepare_masked, readout_masked, readout_vjp_masked, diagnostics=True)
    return Operator(prepare, readout, readout_vjp, diagnostics=True, masked=masked)


# -- the pipeline -------------------------------------------------------------------------------
def _problem(backend: Any, op: Operator, criterion: Any, eps: Any, rows: Any = None) -> tuple[Any, ...]:
    xp = backend.xp
    batch, n = criterion.shape[0], criterion.shape[-1]
    prep = op.prepare(xp, n, criterion) if rows is None else op.prepare(xp, n, criterion, rows)
    m = prep.b.shape[-1]
    b = xp.broadcast_to(prep.b, (batch, m))
    if prep.a is not None:
        a = xp.broadcast_to(prep.a, (batch, n))
    else:
        a = xp.full((batch, n), 1.0 / n, dtype=criterion.dtype, device=device(criterion))
    eps = xp.broadcast_to(eps, (batch,))
    if prep.y is not None:
        prep = prep._replace(y=xp.broadcast_to(prep.y, (batch, m)))
    return prep, a, b, eps


def _masked_inputs(xp: Any, op: Operator, values: Any, criterion: Any, valid: Any) -> tuple[Any, ...]:
    """``mask=``: the masked operator, its rows, and the inputs with invalid entries set to 0.

    Zeroing (a select, not a product) makes the result and its gradient independent of
    the invalid entries exactly, whatever they hold.
    """
    if op.masked is None:
        msg = "this operator does not take 'mask'"
        raise ValueError(msg)
    rows = mk.rows(xp, valid, criterion)
    crit = xp.where(valid, criterion, xp.zeros_like(criterion))
    if values is criterion:
        vals = crit
    else:
        keep = valid[..., None] if values.ndim == 3 else valid
        vals = xp.where(keep, values, xp.zeros_like(values))
    return op.masked, rows, vals, crit


def _zero_weights(config: SolverConfig) -> SolverConfig:
    return config if config.zero_weights else dataclasses.replace(config, zero_weights=True)


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


def cache_rows(backend: Any, op: Operator, criterion: Any, squash: Callable[[Any], Any] | None) -> int | None:
    """Rows per cache-sized chunk of the batch (``Backend.cache_chunk_bytes``), or ``None``: at once.

    Not split: the plan op (its answer is the whole plan and the potentials), a custom
    ``squashing_fun`` (it may mix the rows it is given), a batch that fits one chunk, and a
    problem whose plan alone exceeds a chunk (nothing to gain).
    """
    if op.diagnostics or squash is not None:
        return None
    budget = backend.cache_chunk_bytes(criterion)
    if budget is None:
        return None
    n, m, itemsize = _sizes(backend, op, criterion)
    rows = budget // (n * m * itemsize)
    return rows if 1 <= rows < criterion.shape[0] else None


def _refuse_straight_through(n: int, config: SolverConfig) -> None:
    msg = (
        f"option 'straight_through=True' reads the hard operator off the whole exact plan, but one problem of "
        f"n={n} inputs exceeds memory_budget={config.memory_budget} (it is solved block by block); "
        "raise memory_budget or use straight_through=False"
    )
    raise ValueError(msg)


def _blocked_checked(
    backend: Any, op: Operator, criterion: Any, config: SolverConfig, straight_through: bool, valid: Any
) -> int | None:
    """:func:`blocked_rows`, with the options the blocked path cannot serve refused first."""
    block = blocked_rows(backend, op, criterion, config)
    if block is None:
        return None
    if straight_through:
        _refuse_straight_through(criterion.shape[-1], config)
    if valid is not None:
        msg = (
            f"option 'mask' gives each row its own targets, which the block-by-block solver of a problem over "
            f"memory_budget={config.memory_budget} (n={criterion.shape[-1]}) does not take; raise memory_budget "
            "or solve the rows of one length without mask"
        )
        raise ValueError(msg)
    return block


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
    valid: Any = None,
) -> tuple[Any, Transport]:
    """Forward pass, differentiable by the framework (the plan by its implicit VJP).

    ``valid`` (B, n) booleans: ``mask=`` (see :mod:`._masked`); None: every entry.

    A batch larger than ``config.memory_budget`` is solved in chunks of rows, one after
    the other; rows are independent problems, so the result is the same. A chunk keeps
    its read-out and vectors only: its plan is dropped (``Transport.plan`` is then
    ``None``; :func:`softsort.transport_for_sort` returns the plan as its read-out). Under
    framework autodiff each chunk runs under the adapter's ``checkpoint``, so a chunk's
    plan is not kept as a residual either: it is made again in the backward pass.

    Within that, a batch whose plans exceed the adapter's ``cache_chunk_bytes`` is solved
    in chunks that fit the cache (:func:`cache_rows`, ``Backend.map_chunks``).
    """
    xp = backend.xp
    spans = chunks(backend, op, criterion, config)
    if len(spans) > 1:
        if valid is None:

            def one(v: Any, c: Any) -> tuple[Any, Transport]:
                out, t = run(backend, op, v, c, eps, squash, config, straight_through)
                return out, _kept(op, t)

            chunk = backend.checkpoint(one, values, criterion)
            return _concat_runs(xp, [chunk(values[s:e, ...], criterion[s:e, ...]) for s, e in spans])

        def one_masked(v: Any, c: Any, ok: Any) -> tuple[Any, Transport]:
            out, t = run(backend, op, v, c, eps, squash, config, straight_through, ok)
            return out, _kept(op, t)

        chunk = backend.checkpoint(one_masked, values, criterion)
        parts = [chunk(values[s:e, ...], criterion[s:e, ...], valid[s:e, ...]) for s, e in spans]
        return _concat_runs(xp, parts)
    rows = cache_rows(backend, op, criterion, squash)
    if rows is None:
        return _run_one(backend, op, values, criterion, eps, squash, config, straight_through, valid)
    same = values is criterion  # sort: pass the array once (one copy per chunk, not two)

    def cached(*xs: Any) -> tuple[Any, ...]:
        v, c, ok = (xs[0], *xs) if same else xs
        out, t = _run_one(backend, op, v, c, eps, squash, config, straight_through, ok)
        return (out, *_kept(op, t))

    res = backend.map_chunks(cached, (criterion, valid) if same else (values, criterion, valid), rows)
    return res[0], Transport(*res[1:])


def _run_one(
    backend: Any,
    op: Operator,
    values: Any,
    criterion: Any,
    eps: Any,
    squash: Callable[[Any], Any] | None,
    config: SolverConfig,
    straight_through: bool = False,
    valid: Any = None,
) -> tuple[Any, Transport]:
    """:func:`run` for one batch solved at once."""
    xp = backend.xp
    block = _blocked_checked(backend, op, criterion, config, straight_through, valid)
    rows = None
    if valid is not None:
        op, rows, values, criterion = _masked_inputs(xp, op, values, criterion, valid)
        config = _zero_weights(config)
    prep, a, b, eps = _problem(backend, op, criterion, eps, rows)
    if rows is None:
        z = default_squash(backend, criterion) if squash is None else squash(criterion)
    else:  # the API refuses a custom squashing_fun with mask=
        z = default_squash(backend, criterion, (rows.weight, rows.count))
    if tuple(z.shape) != tuple(criterion.shape):
        shapes = f"{tuple(criterion.shape)}, got {tuple(z.shape)}"
        msg = f"option 'squashing_fun' must return an array of the shape it receives {shapes}"
        raise ValueError(msg)
    if block is None:
        t = transport(backend, config, z, a, b, eps, prep.y, fixed_targets=True)
    else:  # one problem over the budget: the plan is an operator made by row blocks
        t = Transport(*_blocked.transport(backend, config, block, z, a, b, eps))
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
    valid: Any = None,
) -> tuple[Any, Transport, Callable[[Any], Any]]:
    """Eager forward and a pull-back to ``values`` (default squashing; for softsort.vjp)."""
    xp = backend.xp
    same = values is criterion if same is None else same  # differentiate the criterion too?

    def part(s: int, e: int) -> Any:
        return None if valid is None else valid[s:e, ...]

    spans = chunks(backend, op, criterion, config)
    if len(spans) > 1:
        # Each chunk's pull-back holds its plan: keeping them all would hold the whole
        # batch's plans. Only read-outs and vectors are kept; the pull-back solves each
        # chunk again (the same deterministic iterations: the same plan) and pulls back
        # through it before the next.
        parts = []
        for s, e in spans:
            out, t, _ = run_vjp(
                backend, op, values[s:e, ...], criterion[s:e, ...], eps, config, same, straight_through, part(s, e)
            )
            parts.append((out, _kept(op, t)))
        out, t = _concat_runs(xp, parts)
        del parts

        def chunked_pullback(cot: Any) -> Any:
            grads = []
            for s, e in spans:
                sub = (values[s:e, ...], criterion[s:e, ...])
                pull = run_vjp(backend, op, *sub, eps, config, same, False, part(s, e))[2]
                grads.append(pull(cot[s:e, ...]))
                del pull
            return xp.concat(grads, axis=0)

        return out, t, chunked_pullback
    rows = cache_rows(backend, op, criterion, None)
    if rows is not None:
        # Cache-sized chunks (see run). Each pull-back keeps its chunk's plan: together no
        # more than the whole batch's plan, which the unsplit pull-back keeps too.
        batch = criterion.shape[0]
        spans = [(s, min(s + rows, batch)) for s in range(0, batch, rows)]
        runs = [
            run_vjp(backend, op, values[s:e, ...], criterion[s:e, ...], eps, config, same, straight_through, part(s, e))
            for s, e in spans
        ]
        out, t = _concat_runs(xp, [(o, _kept(op, tr)) for o, tr, _ in runs])
        pulls = [pull for _, _, pull in runs]
        del runs

        def cached_pullback(cot: Any) -> Any:
            return xp.concat([pull(cot[s:e, ...]) for (s, e), pull in zip(spans, pulls, strict=True)], axis=0)

        return out, t, cached_pullback
    block = _blocked_checked(backend, op, criterion, config, straight_through, valid)
    rows = squash_rows = None
    if valid is not None:
        op, rows, values, criterion = _masked_inputs(xp, op, values, criterion, valid)
        squash_rows = (rows.weight, rows.count)
        config = _zero_weights(config)
    prep, a, b, eps = _problem(backend, op, criterion, eps, rows)
    z = default_squash(backend, criterion, squash_rows)
    if block is None:
        t, dense_pullback = transport_vjp(backend, config, z, a, b, eps, prep.y)

        def plan_pullback(d_plan: Any) -> Any:
            return dense_pullback(dense_cotangent(xp, d_plan))

    else:
        blocked, plan_pullback = _blocked.transport_vjp(backend, config, block, z, a, b, eps)
        t = Transport(*blocked)
    out = op.readout(xp, t.plan, values, b, prep.aux)
    if straight_through:  # the value is the hard operator's, the pull-back the soft one's
        out = _straight_through(backend, op, out, z, a, b, values, prep.aux)

    def pullback(cot: Any) -> Any:
        d_plan, d_values = op.readout_vjp(xp, t.plan, values, b, prep.aux, cot)
        d_z = plan_pullback(d_plan)[0]
        d_crit = default_squash_vjp(backend, criterion, d_z, squash_rows)
        if same:
            grad = d_crit if d_values is None else d_values + d_crit
        else:
            grad = xp.zeros_like(values) if d_values is None else d_values
        if valid is None:
            return grad
        # the invalid entries were replaced by zeros: their gradient is exactly zero
        keep = valid[..., None] if grad.ndim == 3 else valid
        return xp.where(keep, grad, xp.zeros_like(grad))

    return out, t, pullback
