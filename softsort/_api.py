"""Public functions: validate, move the axis last, flatten the batch, dispatch to the core.

Everything here is about shapes, dtypes and messages; the math is in :mod:`softsort._core`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _compat
from . import _validate as check
from ._core import _operators as ops
from ._core._config import SolverConfig
from ._core._transport import Transport
from ._docs import solver_options
from ._errors import ConvergenceWarning
from .backends import Backend, get_backend

__all__ = [
    "TransportResult",
    "quantile",
    "quantile_normalization",
    "quantize",
    "ranks",
    "sort",
    "sort_with",
    "topk_mask",
    "transport_for_sort",
    "vjp",
]


class TransportResult(NamedTuple):
    """What :func:`transport_for_sort` returns (a NamedTuple, hence a JAX pytree).

    Attributes
    ----------
    plan
        Transport plans, shape ``(..., n, m)``: ``plan[..., i, j]`` is the mass sent from
        input ``i`` to target ``j``; rows sum to the input weights, columns to the target
        weights (up to ``threshold``).
    f, g
        Dual potentials, ``(..., n)`` and ``(..., m)`` (gradients are not propagated
        through them).
    errors
        L1 error of the target marginal at each check, ``(..., ceil(max_iterations /
        inner_iterations))``; ``-1`` where no check was made.
    iterations
        Number of Sinkhorn iterations run for each problem, ``(...)`` (a problem stops
        once its error is below ``threshold``, as it would alone or under ``jax.vmap``).
    converged
        Boolean array ``(...)``: the last error is below ``threshold``.
    """

    plan: Any
    f: Any
    g: Any
    errors: Any
    iterations: Any
    converged: Any

    @property
    def matrix(self) -> Any:
        """Alias of :attr:`plan` (the name OTT-JAX's output uses)."""
        return self.plan


# -- layout: one axis (or several merged) moved last, the rest flattened ---------------------
class _Layout:
    def __init__(self, xp: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
        self.xp = xp
        rest = [d for d in range(len(shape)) if d not in axes]
        self.perm = (*rest, *axes)
        self.batch = tuple(shape[d] for d in rest)
        self.core = tuple(shape[d] for d in axes)
        self.size = math.prod(self.batch)
        self.n = math.prod(self.core)
        self.insert_at = axes[0]

    def flatten(self, x: Any) -> Any:
        return self.xp.reshape(self.xp.permute_dims(x, self.perm), (self.size, self.n))

    def unflatten_input(self, x2: Any) -> Any:
        x = self.xp.reshape(x2, (*self.batch, *self.core))
        inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)
        return self.xp.permute_dims(x, tuple(inverse))

    def _move(self, o: Any, source: int, dest: int) -> Any:
        # permute_dims rather than moveaxis: torch.func.vmap has no batching rule for the latter.
        order = [d for d in range(o.ndim) if d != source % o.ndim]
        order.insert(dest % o.ndim, source % o.ndim)
        return self.xp.permute_dims(o, tuple(order))

    def unflatten_output(self, o2: Any) -> Any:
        o = self.xp.reshape(o2, (*self.batch, o2.shape[-1]))
        return self._move(o, -1, self.insert_at)

    def flatten_output(self, o: Any) -> Any:
        o = self._move(o, self.insert_at, -1)
        return self.xp.reshape(o, (self.size, o.shape[-1]))


# -- one prepared call ------------------------------------------------------------------------
class _Call(NamedTuple):
    fname: str
    backend: Backend
    op: ops.Operator
    values: Any  # internal (B, n) or (B, n, d)
    criterion: Any  # internal (B, n)
    eps: Any
    squash: Callable[[Any], Any] | None
    config: SolverConfig
    out_dtype: Any
    to_user: Callable[[Any], Any]  # internal output -> user layout
    from_user: Callable[[Any], Any]  # user-layout cotangent -> internal
    grad_to_user: Callable[[Any], Any]  # internal gradient of values -> user layout
    straight_through: bool = False
    valid: Any = None  # internal (B, n) booleans of mask=, or None

    def cast(self, out: Any) -> Any:
        xp = self.backend.xp
        return out if out.dtype == self.out_dtype else xp.astype(out, self.out_dtype)

    def run(self) -> tuple[Any, Transport]:
        return ops.run(
            self.backend,
            self.op,
            self.values,
            self.criterion,
            self.eps,
            self.squash,
            self.config,
            self.straight_through,
            self.valid,
        )

    def evaluate(self) -> Any:
        out, t = self.run()
        _report(self.fname, self.backend, t, self.config)
        return self.cast(self.to_user(out))


def _report(fname: str, backend: Backend, t: Transport, config: SolverConfig) -> Any:
    """Warn (eager mode) when some problem of the batch did not converge."""
    xp = backend.xp
    converged = t.final_error < config.threshold
    if converged.shape[0] and check.violated(backend, xp.all(converged)):
        bad = int(xp.sum(xp.astype(~converged, xp.int32)))
        # A problem stops once the loop's own error is below the threshold; the returned
        # plan's error is recomputed from it in the compute dtype and may, by rounding, miss
        # a threshold close to what that dtype resolves: say so instead of blaming the cap.
        early = int(xp.sum(xp.astype(~converged & (t.iterations < config.max_iterations), xp.int32)))
        why = ""
        if early:
            why = (
                f" ({early} of them stopped earlier: the solver's error went below the threshold but the "
                f"returned plan's, rounded in {t.final_error.dtype}, did not; the threshold is close to "
                "what that dtype resolves)"
            )
        msg = (
            f"{fname}(): Sinkhorn did not reach threshold={config.threshold} within "
            f"max_iterations={config.max_iterations} for {bad} of {converged.shape[0]} problem(s){why}; "
            "increase max_iterations or epsilon, or loosen threshold"
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=check.stacklevel())
    return converged


def _along_axis(
    fname: str,
    x: Any,
    axis: Any,
    options: dict[str, Any],
    make_op: Callable[[Backend, int, Any, Any], ops.Operator],
    /,
    allow_tuple: bool = False,
    name: str = "x",
    mask: Any = None,
    **others: Any,
) -> _Call:
    """Validate ``x`` (called ``name`` in messages) and the options; prepare the operator.

    ``mask``: booleans broadcastable to ``x`` (``mask=`` of the operators), or None.
    """
    xp = check.namespace(fname, **{name: x}, **others)
    options = dict(options)
    straight_through = options.pop("straight_through", False)
    if not isinstance(straight_through, bool):
        msg = f"{fname}() option 'straight_through' must be True or False, got {check._short(straight_through)}"
        raise TypeError(msg)
    epsilon, squash, config = check.options(fname, options)
    backend = get_backend(xp)
    if x.ndim == 0:
        msg = f"{fname}() argument {name!r} must have at least one dimension, got a 0-d array"
        raise ValueError(msg)
    dims = check.axes(fname, axis, x.ndim, allow_tuple)
    layout = _Layout(xp, tuple(x.shape), dims)
    if layout.n == 0:
        msg = f"{fname}() needs at least one value along axis {axis!r}, got shape {tuple(x.shape)}"
        raise ValueError(msg)
    dtype, out_dtype = check.compute_dtype(fname, name, xp, x, **others)
    dev = check.placement(x)
    check.finite(fname, name, backend, x)
    x2 = layout.flatten(xp.astype(x, dtype) if x.dtype != dtype else x)
    eps = check.epsilon_array(fname, backend, epsilon, dtype, dev)
    config = check.start_for(config, epsilon, dtype, xp)
    op = make_op(backend, layout.n, dtype, dev)
    valid = None
    if mask is not None:
        valid = layout.flatten(check.mask(fname, xp, mask, tuple(x.shape), name))
        if squash is not None:
            msg = (
                f"{fname}() takes 'mask' with the default squashing only: a 'squashing_fun' sees whole "
                "rows, invalid entries included (squash the valid entries yourself, or drop the mask)"
            )
            raise ValueError(msg)
    return _Call(
        fname,
        backend,
        op,
        x2,
        x2,
        eps,
        check.squashing(fname, backend, squash),
        config,
        out_dtype,
        layout.unflatten_output,
        lambda c: layout.flatten_output(xp.astype(c, dtype)),
        layout.unflatten_input,
        straight_through,
        valid,
    )


# -- the operators ----------------------------------------------------------------------------
def _sort(
    x: Any,
    /,
    *,
    axis: int = -1,
    topk: int | None = None,
    num_targets: int | None = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> _Call:
    desc = _flag("sort", "descending", descending)

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        k = _topk("sort", topk, n)
        m = None if num_targets is None else check.as_int("sort", "num_targets", num_targets, 1)
        if k is not None and m is not None:
            msg = f"sort() takes 'topk' or 'num_targets', not both (got topk={topk}, num_targets={num_targets})"
            raise ValueError(msg)
        return ops.sort_op(k, m, descending=desc)

    return _along_axis("sort", x, axis, options, make, mask=mask)


def _flag(fname: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"{fname}() argument {name!r} must be True or False, got {check._short(value)}"
        raise TypeError(msg)
    return value


def _topk(fname: str, topk: Any, n: int) -> int | None:
    """Number of largest values kept, or ``None`` for a full sort.

    OTT-JAX's meaning: ``None``, ``topk <= 0`` (its default is ``-1``) and ``topk >= n``
    are a full sort. Any integer type is accepted (``numpy.int64`` too); bools are not.
    """
    if topk is None:
        return None
    k = check.integer(fname, "topk", topk, "an integer or None")
    return None if k <= 0 or k >= n else k


@solver_options()
def sort(
    x: Any,
    /,
    *,
    axis: int = -1,
    topk: int | None = None,
    num_targets: int | None = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> Any:
    r"""Soft sort: increasing convex combinations of the values of ``x`` along ``axis``.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    >>> np.round(softsort.sort(x, epsilon=1e-4), 1)  # close to the hard sort
    array([ 1.,  4.,  5.,  8., 12.])
    >>> np.sort(x)
    array([ 1.,  4.,  5.,  8., 12.])
    >>> valid = np.array([True, True, False, True, True])  # a ragged row: 4 is left out
    >>> np.round(softsort.sort(x, mask=valid, epsilon=1e-4), 1)
    array([ 1.,  5.,  8., 12.,  0.])

    Parameters
    ----------
    x : array
        Values to sort (any array API library). The output dtype, used for the whole
        computation, is the promoted dtype of every floating array argument of the call
        (``x``, and for the other operators ``criterion``, ``targets``, ``weights``,
        ``target_weights``, ``q``, ``weight``); Python numbers and ``epsilon`` do not
        promote, integer arrays take no part, and without any floating argument the
        library's default floating dtype is used. float16/bfloat16 are computed in
        float32 and cast back.
    axis : int
        Axis to sort along. Other axes are a batch, solved in one batched Sinkhorn.
    topk : int, optional
        Return only the ``topk`` largest values, in increasing order, at the cost of
        ``topk + 1`` targets instead of ``n``. ``None``, ``topk <= 0`` (OTT-JAX's default
        is ``-1``) and ``topk >= n`` sort fully, as in OTT-JAX.
    num_targets : int, optional
        Number of composite sorted values (default ``n``).
    descending : bool
        Return the values in decreasing order (the same plan read from the last target
        down; with ``topk``, the ``topk`` largest values, largest first).
    mask : array of bool, optional
        Ragged rows: ``True`` where an entry takes part; the shape of ``x`` or
        broadcastable to it, of ``x``'s library. Each row (every position of the other
        axes) gives the result of the operator on its ``c`` valid entries alone, all rows
        in one batched solve: its ``c`` composite values first (in the requested order),
        zeros after. With ``num_targets``, ``num_targets`` values per row; with ``topk``,
        a row of ``c > topk`` values gives its ``topk`` largest, a row of ``c <= topk``
        its ``c`` sorted values then zeros. A row without valid entries gives zeros.
        Invalid entries never matter (any finite value) and get an exactly zero gradient.
        Only with the default squashing (over the valid entries).
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Same shape as ``x`` except along ``axis``: ``n``, ``topk`` or ``num_targets``.

    Raises
    ------
    ValueError
        Non-finite values, an empty axis, bad options
        (``epsilon`` outside its range), a PyTorch meta tensor.
    TypeError
        Complex input, a non-array (any array argument), a ``numpy.ma.MaskedArray``,
        arrays of two libraries, an unknown option, a ``squashing_fun`` output of the
        wrong library or dtype.

    Notes
    -----
    With ``z`` the squashed inputs and ``P`` the entropic transport plan from the uniform
    measure on ``z`` to ``b`` on ``linspace(0, 1, m)``, the output is ``(P^T x) / b``.
    Soft sort is increasing and keeps the mean of ``x``.
    """
    return _sort(
        x, axis=axis, topk=topk, num_targets=num_targets, descending=descending, mask=mask, **options
    ).evaluate()


def _ranks(
    x: Any,
    /,
    *,
    axis: int = -1,
    num_targets: int | None = None,
    target_weights: Any = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> _Call:
    desc = _flag("ranks", "descending", descending)

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        if target_weights is not None:
            if num_targets is not None and num_targets != target_weights.shape[0]:
                msg = (
                    f"ranks() got num_targets={num_targets} and target_weights of "
                    f"{target_weights.shape[0]} entries; give one or make them agree"
                )
                raise ValueError(msg)
            w = check.weights("ranks", "target_weights", backend, target_weights, dtype, dev)
            if w.shape[0] < 2 and n > 1:
                msg = "ranks() argument 'target_weights' needs at least 2 entries"
                raise ValueError(msg)
            return ops.ranks_op(None, w, desc)
        m = None if num_targets is None else check.as_int("ranks", "num_targets", num_targets, 2)
        return ops.ranks_op(m, None, desc)

    return _along_axis("ranks", x, axis, options, make, mask=mask, target_weights=target_weights)


@solver_options()
def ranks(
    x: Any,
    /,
    *,
    axis: int = -1,
    num_targets: int | None = None,
    target_weights: Any = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> Any:
    r"""Soft ranks in ``[0, n - 1]`` of the values of ``x`` along ``axis``.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    >>> np.round(softsort.ranks(x, epsilon=1e-4), 1)
    array([0., 2., 1., 3., 4.])
    >>> np.argsort(np.argsort(x))  # the hard ranks
    array([0, 2, 1, 3, 4])

    Parameters
    ----------
    x : array
        Values to rank.
    axis : int
        Axis to rank along; other axes are a batch.
    num_targets : int, optional
        Number of uniform targets (at least 2; default ``n``). Fewer targets cost less.
    target_weights : array, optional
        Weights (positive, summing to 1) of the targets, overriding ``num_targets``.
        May be traced under ``jax.jit`` and differentiated.
    descending : bool
        Rank from the largest: rank 0 goes to the largest value, and
        ``target_weights[r]`` is the mass of rank ``r`` counted from the largest.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`): a row of ``c`` valid entries gets their ranks in
        ``[0, c - 1]`` (by default on ``c`` targets of its own; ``num_targets`` and
        ``target_weights`` are the same for every row), 0 at invalid entries; a row of
        one valid entry ranks it 0.
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Same shape and dtype as ``x``.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; also invalid ``target_weights``.

    Notes
    -----
    Output ``n * (P @ arange(m)) * (n - 1) / (m - 1)``. Ranks keep the order of the
    inputs, lie in ``[0, n - 1]`` and sum to ``n (n - 1) / 2``.
    """
    return _ranks(
        x,
        axis=axis,
        num_targets=num_targets,
        target_weights=target_weights,
        descending=descending,
        mask=mask,
        **options,
    ).evaluate()


def _topk_mask(x: Any, /, k: int, *, axis: int = -1, mask: Any = None, **options: Any) -> _Call:
    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        if n < 2:
            msg = f"topk_mask() needs at least 2 values along the axis, got {n}"
            raise ValueError(msg)
        kk = check.as_int("topk_mask", "k", k, 1)
        if kk >= n:
            msg = f"topk_mask() argument 'k' must be in [1, {n - 1}] (below the axis size {n}), got {kk}"
            raise ValueError(msg)
        return ops.topk_mask_op(kk)

    return _along_axis("topk_mask", x, axis, options, make, mask=mask)


@solver_options()
def topk_mask(x: Any, /, k: int = 1, *, axis: int = -1, mask: Any = None, **options: Any) -> Any:
    r"""Soft top-k mask: values in [0, 1], near 1 on the ``k`` largest entries, summing to ``k``.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    >>> np.round(softsort.topk_mask(x, 2, epsilon=1e-4), 3)
    array([0., 0., 0., 1., 1.])
    >>> (x >= np.sort(x)[-2]).astype(float)  # the hard mask
    array([0., 0., 0., 1., 1.])

    Parameters
    ----------
    x : array
        Values.
    k : int
        How many entries to select, in ``[1, n - 1]``.
    axis : int
        Axis along which to select.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`): the mask of each row's ``c`` valid entries (two
        targets weighing ``1 - k/c`` and ``k/c``), 0 at invalid entries; a row of
        ``c <= k`` valid entries keeps them all (1 at each).
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Same shape as ``x``.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; ``k`` outside ``[1, n - 1]``.

    Notes
    -----
    Two targets weighing ``1 - k/n`` and ``k/n``; the mask is ``n`` times the mass each
    input sends to the second one.
    """
    return _topk_mask(x, k, axis=axis, mask=mask, **options).evaluate()


def _quantile(
    x: Any, /, q: Any = None, *, axis: Any = -1, weight: Any = None, mask: Any = None, **options: Any
) -> _Call:
    fname = "quantile"
    check.levels(fname, q)

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        xp = backend.xp
        levels = [0.2, 0.5, 0.8] if q is None else q
        qa = check.as_compute(xp, levels, dtype, dev)
        if qa.ndim > 1:
            msg = f"{fname}() argument 'q' must be a number or a 1-D array, got shape {tuple(qa.shape)}"
            raise ValueError(msg)
        qa = xp.reshape(qa, (-1,))
        if qa.shape[0] == 0:
            msg = f"{fname}() argument 'q' must hold at least one level"
            raise ValueError(msg)
        if check.violated(backend, xp.all((qa > 0) & (qa < 1))):
            msg = f"{fname}() argument 'q' must lie strictly between 0 and 1, got {check._short(levels)}"
            given = levels if isinstance(levels, (list, tuple)) else [levels]
            if not _compat.is_array_api_obj(levels) and all(0 < v < 1 for v in given):
                # In (0, 1) as Python floats, but not in the compute dtype.
                msg += f", which round to 0 or 1 in the compute dtype {dtype} (pass float64 input)"
            raise ValueError(msg)
        if qa.shape[0] > 1:
            ordered = xp.sort(qa)
            if check.violated(backend, xp.all(ordered[1:] > ordered[:-1])):
                msg = f"{fname}() argument 'q' must hold distinct levels, got {check._short(levels)}"
                raise ValueError(msg)
        w = weight
        if w is not None:
            w = check.as_compute(xp, w, dtype, dev)
            if check.violated(backend, xp.all(xp.isfinite(w) & (w > 0))):
                msg = f"{fname}() argument 'weight' must be finite and > 0, got {check._short(weight)}"
                raise ValueError(msg)
        return ops.quantile_op(qa, w)

    arrays = {k: v for k, v in (("q", q), ("weight", weight)) if _compat.is_array_api_obj(v)}
    return _along_axis(fname, x, axis, options, make, allow_tuple=True, mask=mask, **arrays)


@solver_options()
def quantile(x: Any, /, q: Any = None, *, axis: Any = -1, weight: Any = None, mask: Any = None, **options: Any) -> Any:
    r"""Soft quantiles of ``x`` at levels ``q`` along ``axis`` (an int or a tuple).

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    >>> np.round(softsort.quantile(x, 0.5, epsilon=1e-3), 1)  # the soft median
    array([5.])
    >>> np.quantile(x, 0.5)
    np.float64(5.0)

    Parameters
    ----------
    x : array
        Values.
    q : float or array
        Levels in (0, 1), in any order; the output follows that order. A scalar gives an
        axis of size 1 (as OTT-JAX does). Default ``[0.2, 0.5, 0.8]``. May be traced.
    axis : int or tuple of int
        Axis, or axes merged into one, to take quantiles over.
    weight : float, optional
        Mass of each quantile's target (default ``min(0.02, 1.5 / n)``), capped so that
        every filler target keeps a positive mass.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`), of the shape of ``x`` (or broadcastable): each
        row's quantiles of its valid entries (the default ``weight`` uses the row's own
        count ``c``: ``min(0.02, 1.5 / c)``); zeros for a row without valid entries.
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Shape of ``x`` with the quantile axes replaced by one axis of ``len(q)`` values,
        placed at the first of them.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; ``q`` outside (0, 1); ``weight`` not > 0.

    Notes
    -----
    For sorted levels ``q_1 < ... < q_r`` the target measure has ``2r + 1`` targets:
    targets of mass ``w`` sitting at cumulative mass ``q_k``, interleaved with fillers
    carrying the rest. The cost is ``O(n r)`` per problem, not ``O(n^2)``.
    """
    return _quantile(x, q, axis=axis, weight=weight, mask=mask, **options).evaluate()


def _quantize(x: Any, /, *, num_levels: int = 10, axis: int = -1, mask: Any = None, **options: Any) -> _Call:
    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        return ops.quantize_op(check.as_int("quantize", "num_levels", num_levels, 1))

    return _along_axis("quantize", x, axis, options, make, mask=mask)


@solver_options()
def quantize(x: Any, /, *, num_levels: int = 10, axis: int = -1, mask: Any = None, **options: Any) -> Any:
    r"""Soft quantization: each value moved towards one of ``num_levels`` soft-sorted levels.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 1.2, 5.0, 5.2, 9.0, 9.2])
    >>> np.round(softsort.quantize(x, num_levels=3, epsilon=1e-4), 3)
    array([1.1, 1.1, 5.1, 5.1, 9.1, 9.1])

    Parameters
    ----------
    x : array
        Values.
    num_levels : int
        Number of levels (uniform targets).
    axis : int
        Axis along which to quantize.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`): each valid entry moved towards the levels of its
        row's valid entries; 0 at invalid entries.
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Same shape as ``x``.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; ``num_levels`` < 1.

    Notes
    -----
    ``levels = (P^T x) / b`` (a soft sort onto ``num_levels`` targets); output
    ``n * P @ levels``.
    """
    return _quantize(x, num_levels=num_levels, axis=axis, mask=mask, **options).evaluate()


def _quantile_normalization(
    x: Any, /, targets: Any, *, weights: Any = None, axis: int = -1, mask: Any = None, **options: Any
) -> _Call:
    fname = "quantile_normalization"

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        xp = backend.xp
        if not _compat.is_array_api_obj(targets):
            msg = f"{fname}() argument 'targets' must be a 1-D array, got {check._short(targets)}"
            raise TypeError(msg)
        if targets.ndim != 1 or targets.shape[0] < 1:
            msg = f"{fname}() argument 'targets' must be a non-empty 1-D array, got shape {tuple(targets.shape)}"
            raise ValueError(msg)
        if weights is not None and tuple(weights.shape) != tuple(targets.shape):
            msg = (
                f"{fname}() arguments 'targets' and 'weights' must have the same shape, "
                f"got {tuple(targets.shape)} and {tuple(weights.shape)}"
            )
            raise ValueError(msg)
        t = check.as_compute(xp, targets, dtype, dev)
        check.finite(fname, "targets", backend, t)
        if t.shape[0] > 1 and check.violated(backend, xp.all(t[1:] >= t[:-1])):
            msg = f"{fname}() argument 'targets' must be sorted in increasing order, got {check._short(targets)}"
            raise ValueError(msg)
        w = None
        if weights is not None:
            w = check.weights(fname, "weights", backend, weights, dtype, dev)
        return ops.quantile_normalization_op(t, w)

    return _along_axis(fname, x, axis, options, make, mask=mask, targets=targets, weights=weights)


@solver_options()
def quantile_normalization(
    x: Any, /, targets: Any, *, weights: Any = None, axis: int = -1, mask: Any = None, **options: Any
) -> Any:
    r"""Remap ``x`` onto the distribution of ``targets`` (with ``weights``), keeping its order.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([0.3, -2.0, 7.0])
    >>> np.round(softsort.quantile_normalization(x, np.array([1.0, 2.0, 3.0]), epsilon=1e-4), 3)
    array([2., 1., 3.])

    Parameters
    ----------
    x : array
        Values to remap.
    targets : array
        Sorted 1-D array of target values.
    weights : array, optional
        Their weights (positive, summing to 1), same shape as ``targets``; default uniform.
    axis : int
        Axis along which to normalize.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`): each row's valid entries remapped onto
        ``targets``; 0 at invalid entries.
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Same shape as ``x``.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; unsorted ``targets``; ``weights`` of another shape.

    Notes
    -----
    Output ``n * P @ targets``: the hard version replaces the ``k``-th smallest value of
    ``x`` by the matching quantile of the target distribution.
    """
    return _quantile_normalization(x, targets, weights=weights, axis=axis, mask=mask, **options).evaluate()


def _sort_with(
    x: Any,
    /,
    criterion: Any,
    *,
    topk: int | None = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> _Call:
    fname = "sort_with"
    desc = _flag(fname, "descending", descending)
    xp = check.namespace(fname, x=x, criterion=criterion)
    if x.ndim == 0:
        msg = f"{fname}() argument 'x' must have at least one dimension, got a 0-d array"
        raise ValueError(msg)
    vector = x.ndim == 1
    rows = x[:, None] if vector else x
    crit = criterion
    want = tuple(rows.shape[:-1])  # x (..., n, d) sorts by criterion (..., n)
    if tuple(crit.shape) != want and crit.ndim >= 1 and crit.shape[-1] == 1 and tuple(crit.shape[:-1]) == want:
        crit = crit[..., 0]  # OTT-JAX's (n, 1) criterion
    if crit.ndim < 1 or tuple(crit.shape) != want:
        msg = (
            f"{fname}() argument 'criterion' must have shape {tuple(rows.shape[:-1])} "
            f"(x without its last axis), got {tuple(criterion.shape)}"
        )
        raise ValueError(msg)
    n = crit.shape[-1]
    k = _topk(fname, topk, n)

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        return ops.sort_op(k, None, rows=True, descending=desc)

    # The rows promote with the criterion: both are computed in their common dtype.
    call = _along_axis(fname, crit, -1, options, make, name="criterion", mask=mask, x=x)
    b = call.backend
    check.finite(fname, "x", b, rows)
    batch = tuple(rows.shape[:-2])
    size, d = math.prod(batch), rows.shape[-1]
    rows = xp.astype(rows, call.criterion.dtype) if rows.dtype != call.criterion.dtype else rows
    values = xp.reshape(rows, (size, n, d))

    def to_user(o: Any) -> Any:
        o = xp.reshape(o, (*batch, o.shape[-2], d))
        return o[..., 0] if vector else o

    def from_user(c: Any) -> Any:
        c = c[..., None] if vector else c
        return xp.reshape(xp.astype(c, values.dtype), (size, c.shape[-2], d))

    def grad_to_user(g: Any) -> Any:
        g = xp.reshape(g, (*batch, n, d))
        return g[..., 0] if vector else g

    return call._replace(values=values, to_user=to_user, from_user=from_user, grad_to_user=grad_to_user)


@solver_options()
def sort_with(
    x: Any,
    /,
    criterion: Any,
    *,
    topk: int | None = None,
    descending: bool = False,
    mask: Any = None,
    **options: Any,
) -> Any:
    r"""Sort the rows of ``x`` by ``criterion``: composite rows in increasing criterion order.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> rows = np.array([[0.0, 1.0], [10.0, 11.0], [5.0, 6.0]])
    >>> crit = np.array([3.0, 1.0, 2.0])
    >>> np.round(softsort.sort_with(rows, crit, epsilon=1e-4), 3)
    array([[10., 11.],
           [ 5.,  6.],
           [ 0.,  1.]])
    >>> rows[np.argsort(crit)]
    array([[10., 11.],
           [ 5.,  6.],
           [ 0.,  1.]])

    Parameters
    ----------
    x : array
        Rows to mix, shape ``(..., n, d)`` (or ``(n,)`` for one value per row).
    criterion : array
        Shape ``(..., n)`` (or OTT-JAX's ``(n, 1)``): the values the rows are sorted by.
    topk : int, optional
        Keep only the rows of the ``topk`` largest criteria (increasing order);
        ``None``, ``topk <= 0`` and ``topk >= n`` keep every row, as in OTT-JAX.
    descending : bool
        Composite rows in decreasing criterion order.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`), of the shape of ``criterion`` (or broadcastable):
        which rows of ``x`` take part; each batch entry gives its composite rows of the
        valid rows first, rows of zeros after (with ``topk``, as :func:`sort`).
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    array
        Shape ``(..., n or topk, d)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; ``criterion`` of the wrong shape.

    Notes
    -----
    Output ``(P^T X) / b`` where ``P`` is the plan of :func:`sort` on ``criterion``.
    """
    return _sort_with(x, criterion, topk=topk, descending=descending, mask=mask, **options).evaluate()


@solver_options()
def transport_for_sort(
    x: Any,
    /,
    weights: Any = None,
    target_weights: Any = None,
    *,
    axis: int = -1,
    num_targets: int | None = None,
    mask: Any = None,
    **options: Any,
) -> TransportResult:
    r"""The entropic transport plan behind every operator, with the solver's diagnostics.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> out = softsort.transport_for_sort(np.array([3.0, 1.0, 2.0]), epsilon=1e-3)
    >>> np.round(3 * out.plan, 2)  # a soft permutation matrix
    array([[0., 0., 1.],
           [1., 0., 0.],
           [0., 1., 0.]])
    >>> bool(out.converged), int(out.iterations) > 0
    (True, True)

    Parameters
    ----------
    x : array
        Values along ``axis`` (other axes are a batch).
    weights : array, optional
        Input weights ``a`` (positive, summing to 1); default uniform.
    target_weights : array, optional
        Target weights ``b`` on ``linspace(0, 1, m)``; default ``num_targets`` (or ``n``)
        uniform targets.
    axis : int
        Axis of the values.
    num_targets : int, optional
        Number of uniform targets when ``target_weights`` is not given.
    mask : array of bool, optional
        Ragged rows (see :func:`sort`; not with ``weights``): each row's plan between its
        ``c`` valid inputs (weights ``1 / c``) and, by default, ``c`` uniform targets of
        its own (the first ``c`` columns); ``target_weights`` and ``num_targets`` are the
        same for every row. The plan, ``f`` and ``g`` are 0 at invalid inputs and unused
        targets.
    **options
        Solver options, listed under Other Parameters.

    Returns
    -------
    TransportResult
        ``plan`` of shape ``(..., n, m)`` (``axis`` moved last), potentials, errors,
        iterations and a ``converged`` flag. Non-convergence also warns in eager mode.

    Raises
    ------
    ValueError, TypeError
        As :func:`sort`; invalid weights.

    Notes
    -----
    Log-domain Sinkhorn on ``C_ij = (z_i - y_j)^2``, ``y = linspace(0, 1, m)``; the error
    is the L1 distance of the plan's column sums to ``b``, checked every
    ``inner_iterations``. The plan is differentiable (implicit differentiation).
    """
    fname = "transport_for_sort"

    def make(backend: Backend, n: int, dtype: Any, dev: Any) -> ops.Operator:
        a = None if weights is None else check.weights(fname, "weights", backend, weights, dtype, dev, size=n)
        b = (
            None
            if target_weights is None
            else check.weights(fname, "target_weights", backend, target_weights, dtype, dev)
        )
        m = None if num_targets is None else check.as_int(fname, "num_targets", num_targets, 1)
        if mask is not None and weights is not None:
            msg = f"{fname}() takes 'mask' or 'weights', not both (a mask weighs each row's valid inputs equally)"
            raise ValueError(msg)
        return ops.plan_op(a, b, m)

    call = _along_axis(fname, x, axis, options, make, mask=mask, weights=weights, target_weights=target_weights)
    plan, t = call.run()
    converged = _report(fname, call.backend, t, call.config)
    xp = call.backend.xp
    if call.valid is not None:  # potentials of entries that took no part: 0, like the plan
        f_kept = xp.where(call.valid, t.f, xp.zeros_like(t.f))
        used = xp.sum(plan, axis=-2) > 0
        t = t._replace(f=f_kept, g=xp.where(used, t.g, xp.zeros_like(t.g)))
    dims = check.axes(fname, axis, x.ndim)
    batch = tuple(s for i, s in enumerate(x.shape) if i not in dims)

    def shape(a: Any) -> Any:
        return xp.reshape(a, (*batch, *a.shape[1:]))

    # Potentials and errors in the output dtype too (float16 input is solved in float32).
    return TransportResult(
        shape(call.cast(plan)),
        shape(call.cast(t.f)),
        shape(call.cast(t.g)),
        shape(call.cast(t.errors)),
        xp.reshape(t.iterations, batch),
        xp.reshape(converged, batch),
    )


# -- gradients without a framework -------------------------------------------------------------
_BUILDERS: dict[Callable[..., Any], Callable[..., _Call]] = {
    sort: _sort,
    ranks: _ranks,
    topk_mask: _topk_mask,
    quantile: _quantile,
    quantize: _quantize,
    quantile_normalization: _quantile_normalization,
    sort_with: _sort_with,
}


def vjp(fun: Callable[..., Any], x: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], Any]]:
    r"""Value and vector-Jacobian product of an operator with respect to ``x``, on any backend.

    For NumPy and CuPy users (no autodiff), and for anyone who wants the hand-written
    backward: the implicit-differentiation VJP of the plan chained with the VJPs of the
    read-out and of the default squashing, all in the array API.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    >>> r, pullback = softsort.vjp(softsort.ranks, x, epsilon=0.1)
    >>> g = pullback(np.array([1.0, 0.0, 0.0, 0.0, 0.0]))  # gradient of r[0]
    >>> g.shape, bool(g[0] > 0)
    ((5,), True)

    Parameters
    ----------
    fun : callable
        One of :func:`sort`, :func:`ranks`, :func:`topk_mask`, :func:`quantile`,
        :func:`quantize`, :func:`quantile_normalization`, :func:`sort_with`.
    x : array
        The array to differentiate with respect to (for :func:`sort_with`, the rows).
    *args, **kwargs
        The other arguments of ``fun``, as in a direct call (``mask`` included: the
        gradient is then exactly zero at invalid entries).

    Returns
    -------
    out : array
        ``fun(x, *args, **kwargs)``.
    vjp_fn : callable
        ``vjp_fn(cotangent) -> gradient``: ``cotangent`` has the shape of ``out``, the
        gradient the shape of ``x``.

    Raises
    ------
    TypeError
        ``fun`` is not a softsort operator.
    ValueError
        A custom ``squashing_fun`` (only the default squashing has a hand-written VJP),
        or a cotangent of the wrong shape; plus ``fun``'s own errors.
    """
    builder = _BUILDERS.get(fun)
    if builder is None:
        names = ", ".join(f.__name__ for f in _BUILDERS)
        msg = f"vjp() argument 'fun' must be a softsort operator ({names}), got {fun!r}"
        raise TypeError(msg)
    call = builder(x, *args, **kwargs)
    if call.squash is not None:
        msg = (
            "vjp() differentiates the default squashing only; use JAX or PyTorch autodiff for a custom 'squashing_fun'"
        )
        raise ValueError(msg)
    out, t, pullback = ops.run_vjp(
        call.backend,
        call.op,
        call.values,
        call.criterion,
        call.eps,
        call.config,
        straight_through=call.straight_through,
        valid=call.valid,
    )
    _report(call.fname, call.backend, t, call.config)
    user_out = call.cast(call.to_user(out))
    x_dtype = x.dtype

    def vjp_fn(cotangent: Any) -> Any:
        xp = call.backend.xp
        check.cotangent("vjp_fn", call.backend, cotangent, tuple(user_out.shape))
        grad = call.grad_to_user(pullback(call.from_user(cotangent)))
        if xp.isdtype(x_dtype, "real floating") and grad.dtype != x_dtype:
            grad = xp.astype(grad, x_dtype)
        return grad

    return user_out, vjp_fn


# -- lazy arrays: a call with a dask array goes whole to backends/_dask.py ----------------------
# Kept apart from the operators above: every keyword passes through unchanged, so options
# added to an operator work on dask arrays too (array-valued ones are split with the rows).
def _dask_aware(fun: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fun)
    def routed(*args: Any, **kwargs: Any) -> Any:
        if _compat.any_dask_array(args, kwargs):
            from .backends import _dask

            if fun is _vjp_eager and len(args) >= 2:
                return _dask.vjp(routed, args[0], args[1], args[2:], kwargs)
            return _dask.call(routed, args, kwargs)
        return fun(*args, **kwargs)

    return routed


_vjp_eager = vjp
_PUBLIC: tuple[Callable[..., Any], ...] = (*_BUILDERS, transport_for_sort, vjp)
_ROUTED = {f.__name__: _dask_aware(f) for f in _PUBLIC}
_BUILDERS = {_ROUTED[f.__name__]: build for f, build in _BUILDERS.items()}
sort, ranks, topk_mask = _ROUTED["sort"], _ROUTED["ranks"], _ROUTED["topk_mask"]
quantile, quantize, sort_with = _ROUTED["quantile"], _ROUTED["quantize"], _ROUTED["sort_with"]
quantile_normalization, transport_for_sort = _ROUTED["quantile_normalization"], _ROUTED["transport_for_sort"]
vjp = _ROUTED["vjp"]
