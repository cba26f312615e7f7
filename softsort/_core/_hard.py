"""The epsilon -> 0 limit of the transport plan, computed exactly (no Sinkhorn).

Documented by the ``straight_through`` option of :func:`softsort.sort`. In one dimension
the optimal plan for the cost ``(z_i - y_j)**2`` between the inputs (weights ``a``) and the
increasing targets ``linspace(0, 1, m)`` (weights ``b``) is the monotone one: input ``i``
covers the interval ``[lo_i, hi_i]`` of cumulative mass in sorted order, target ``j`` the
interval ``[B_{j-1}, B_j]``, and the plan is their overlap. The entropic plan converges to
it as epsilon -> 0. Tied inputs have identical rows of the cost, so the entropic plan
splits their common interval in proportion to their weights at every epsilon; the limit
does the same: ``P_ij = a_i / (hi_i - lo_i) * |[lo_i, hi_i] ∩ [B_{j-1}, B_j]|`` where
``[lo_i, hi_i]`` is the interval of the whole tie group of ``i``.

Every operator's read-out applied to this plan gives the hard operator: sorted values,
integer ranks (averaged over ties), the 0/1 top-k mask, the quantile as the mean of the
sorted values over the quantile target's mass, and so on.
"""

from __future__ import annotations

from typing import Any

from .._compat import device
from ._dual import _count_below


def hard_plan(xp: Any, z: Any, a: Any, b: Any) -> Any:
    """The monotone plan, shape (B, n, m), for ``z, a`` (B, n) and ``b`` (B, m).

    O(n log n + n m) per row; the plan itself is the only ``n x m`` array made.
    """
    n = z.shape[-1]
    order = xp.argsort(z, axis=-1, stable=True)
    zs = xp.take_along_axis(z, order, axis=-1)
    zero = xp.zeros((*z.shape[:-1], 1), dtype=a.dtype, device=device(a))
    cum = xp.concat([zero, xp.cumulative_sum(xp.take_along_axis(a, order, axis=-1), axis=-1)], axis=-1)
    # The tie group of sorted position p spans positions [first, last): how many sorted
    # values lie strictly below, and at or below, its value.
    first = _count_below(xp, zs, zs, True, order.dtype)
    last = _count_below(xp, zs, zs, False, order.dtype)
    lo_sorted = xp.take_along_axis(cum, first, axis=-1)
    hi_sorted = xp.take_along_axis(cum, xp.clip(last, 0, n), axis=-1)
    inverse = xp.argsort(order, axis=-1)
    lo = xp.take_along_axis(lo_sorted, inverse, axis=-1)
    hi = xp.take_along_axis(hi_sorted, inverse, axis=-1)
    cum_b = xp.cumulative_sum(b, axis=-1)
    start_b = xp.concat([xp.zeros((*b.shape[:-1], 1), dtype=b.dtype, device=device(b)), cum_b[..., :-1]], axis=-1)
    overlap = xp.minimum(hi[..., :, None], cum_b[..., None, :]) - xp.maximum(lo[..., :, None], start_b[..., None, :])
    # Interval ends are cumulative sums: equal masses may differ in their last bits, and
    # such a rounding sliver is not an overlap (a hard mask must be exactly 0 or 1).
    sliver = 4.0 * max(n, b.shape[-1]) * xp.finfo(a.dtype).eps
    overlap = xp.where(overlap > sliver, overlap, xp.zeros_like(overlap))
    width = hi - lo
    share = a / xp.where(width > 0, width, xp.ones_like(width))
    return overlap * share[..., :, None]
