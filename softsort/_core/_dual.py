"""Starting potentials for Sinkhorn: the exact dual of the unregularized 1-D problem.

In one dimension the optimal plan for the cost ``(z_i - y_j)**2`` is the monotone one: sort
``z`` and pair the cumulative input mass with the cumulative target mass (the "north-west
corner" staircase). Its cells form a spanning tree of the bipartite graph, so the
Kantorovich potentials follow from ``f_i + g_j = C_ij`` along the staircase: one
cumulative sum of cost differences for ``f`` and one for ``g``. Everywhere else
``f_i + g_j <= C_ij``, hence the Gibbs kernel ``exp((f + g - C) / eps)`` built from these
potentials has its entries in (0, 1] and a 1 in every row and column: no row or column
underflows, even at very small epsilon.

When a cumulative input mass equals a cumulative target mass (uniform weights with
``m = n``: at every step) the dual is not unique: the staircase may turn down or right at
that point, and each choice gives optimal potentials. The entropic solution tends, as
epsilon -> 0, to one inside that set; the midpoint of the two extreme choices starts far
closer to it than either (measured, plain Sinkhorn to threshold 1e-3, n = 10, eps 1e-3:
about 1300 iterations from zero potentials, 1500 from the "down" choice, 7 from the
midpoint). Only the starting point changes: the fixed point is the same.
"""

from __future__ import annotations

import math
from typing import Any

from .._compat import device


def pairwise_order(xp: Any, z: Any) -> tuple[Any, Any]:
    """``(order, rank)`` of the rows of ``z`` (..., n) by comparing every pair of entries.

    ``rank_i`` counts the entries before ``z_i`` in NumPy's stable ascending order (NaN
    last), so ``rank`` is a permutation whatever the values and ``order`` (its inverse, by
    matching ranks to positions) equals ``argsort(z, stable=True)``. O(n^2) per row in
    a few fused passes: for short rows where the library's sort is slow (XLA's CPU sort:
    about a microsecond a row of 10). Indices have the default integer dtype.
    """
    n = z.shape[-1]
    idx = xp.arange(n, device=device(z))
    zi, zj = z[..., :, None], z[..., None, :]
    nan_i, nan_j = xp.isnan(zi), xp.isnan(zj)
    same = (zj == zi) | (nan_i & nan_j)
    before = (zj < zi) | (nan_i & ~nan_j) | (same & (idx[None, :] < idx[:, None]))
    rank = xp.sum(xp.astype(before, idx.dtype), axis=-1)
    hit = rank[..., :, None] == idx  # [i, r]: entry i has rank r
    order = xp.sum(xp.where(hit, idx[:, None], xp.zeros_like(idx[:, None])), axis=-2)
    return order, rank


def sort_order(backend: Any, z: Any) -> tuple[Any, Any]:
    """``(order, rank)``: the stable ascending argsort of the rows of ``z`` and its inverse.

    Rows of at most ``backend.pairwise_rows`` entries by :func:`pairwise_order`; longer
    ones by one sort, inverted by the adapter (a scatter where the library has one).
    """
    if z.shape[-1] <= backend.pairwise_rows:
        return pairwise_order(backend.xp, z)
    order = backend.xp.argsort(z, axis=-1, stable=True)
    return order, backend.inverse_permutation(order)


def _count_below(xp: Any, v: Any, w: Any, strict: bool, index_dtype: Any, pairwise: bool = False) -> Any:
    """For each ``v_k`` (..., p): how many of the ascending ``w`` (..., q) lie below it.

    ``w < v_k`` if ``strict`` else ``w <= v_k``. A binary search run on every row and entry
    at once: ``ceil(log2(q + 1))`` rounds of a gather and a comparison, O(p log q) per row
    with nothing of size p x q (a batched ``searchsorted``, which the standard lacks);
    ``pairwise``: one comparison of every pair instead (short rows, see :func:`sort_order`).
    Indices have ``index_dtype`` (PyTorch gathers with int64 only).
    """
    q = w.shape[-1]
    if pairwise:
        below = (w[..., None, :] < v[..., :, None]) if strict else (w[..., None, :] <= v[..., :, None])
        return xp.sum(xp.astype(below, index_dtype), axis=-1)
    low = xp.zeros(v.shape, dtype=index_dtype, device=device(v))
    high = xp.full(v.shape, q, dtype=index_dtype, device=device(v))
    for _ in range(math.ceil(math.log2(q + 1))):
        mid = (low + high) // 2
        probe = xp.take_along_axis(w, xp.clip(mid, 0, q - 1), axis=-1)
        right = (probe < v) if strict else (probe <= v)
        searching = low < high
        low = xp.where(searching & right, mid + 1, low)
        high = xp.where(searching & ~right, mid, high)
    return low


def exact_dual(backend: Any, z: Any, a: Any, b: Any, y: Any = None) -> tuple[Any, Any]:
    """Potentials ``(f, g)`` of the unregularized problem, ``f + g <= C`` with equality on the plan.

    ``z, a`` are (..., n), ``b`` is (..., m) (rows of ``a`` and ``b`` sum to one); the
    targets are ``linspace(0, 1, m)``, or the increasing positions ``y`` (..., m). Cost: a
    sort of ``z`` (and of its order, to undo it) and binary searches of each cumulative
    mass in the other: O((n + m) log(n + m)) per row, no array of size n x m (rows of at
    most ``backend.pairwise_rows`` inputs and targets: comparisons of every pair instead).
    """
    xp = backend.xp
    n, m = z.shape[-1], b.shape[-1]
    order, rank = sort_order(backend, z)
    pairwise = max(n, m) <= backend.pairwise_rows
    zs = xp.take_along_axis(z, order, axis=-1)
    cum_a = xp.cumulative_sum(xp.take_along_axis(a, order, axis=-1), axis=-1)
    cum_b = xp.cumulative_sum(b, axis=-1)
    step = 1.0 / (m - 1) if m > 1 else 0.0
    # Cumulative sums of equal weights may differ in the last bits: closer than this is a tie.
    tol = 4.0 * max(n, m) * xp.finfo(z.dtype).eps
    ca, cb = cum_a[..., :-1], cum_b[..., :-1]  # where rows 0..n-2 and columns 0..m-2 end

    def count_below(v: Any, w: Any, strict: bool) -> Any:
        native = None if pairwise else backend.count_below(v, w, strict)
        return _count_below(xp, v, w, strict, order.dtype, pairwise) if native is None else native

    def staircase(down_first: bool) -> tuple[Any, Any]:
        # Row i hands over to row i + 1 in column j(i), column j to j + 1 in row i(j).
        # j(i) = #{j: B_j < A_i}, i(j) = #{i: A_i <= B_j} turn down first at a tie;
        # j(i) = #{j: B_j <= A_i}, i(j) = #{i: A_i < B_j} turn right first.
        shift = -tol if down_first else tol
        col_of_row = backend.clip(count_below(ca + shift, cum_b, down_first), 0, m - 1)
        row_of_col = backend.clip(count_below(cb - shift, cum_a, not down_first), 0, n - 1)
        # C[i+1, j] - C[i, j] = (z[i+1] - z[i]) (z[i+1] + z[i] - 2 y_j)
        if y is None:
            y_row = xp.astype(col_of_row, z.dtype) * step
        else:
            y_row = xp.take_along_axis(y, col_of_row, axis=-1)
        d_f = (zs[..., 1:] - zs[..., :-1]) * (zs[..., 1:] + zs[..., :-1] - 2.0 * y_row)
        # C[i, j+1] - C[i, j] = step (y_j + y_{j+1} - 2 z_i)
        z_col = xp.take_along_axis(zs, row_of_col, axis=-1)
        if y is None:
            y_col = xp.astype(xp.arange(m - 1, device=device(z)), z.dtype) * step
            d_g = step * (2.0 * y_col + step - 2.0 * z_col)
        else:  # C[i, j+1] - C[i, j] = (y_{j+1} - y_j) (y_j + y_{j+1} - 2 z_i)
            d_g = (y[..., 1:] - y[..., :-1]) * (y[..., :-1] + y[..., 1:] - 2.0 * z_col)
        return _cumulative(xp, d_f), _cumulative(xp, d_g)

    f_down, g_down = staircase(True)
    f_right, g_right = staircase(False)
    f_sorted = 0.5 * (f_down + f_right)
    # Cell (0, 0) is on every staircase: f_0 + g_0 = C_00 = (z_0 - y_0)**2, with f_0 = 0.
    first = zs[..., :1] if y is None else zs[..., :1] - y[..., :1]
    g = first * first + 0.5 * (g_down + g_right)
    f = xp.take_along_axis(f_sorted, rank, axis=-1)
    return f, g


def _cumulative(xp: Any, d: Any) -> Any:
    """``[0, d_0, d_0 + d_1, ...]`` along the last axis."""
    zero = xp.zeros((*d.shape[:-1], 1), dtype=d.dtype, device=device(d))
    return xp.concat([zero, xp.cumulative_sum(d, axis=-1)], axis=-1)
