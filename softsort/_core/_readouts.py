"""Reading each operator's answer off the plan, with hand-written VJPs.

Shapes: ``plan`` (B, n, m), ``values`` (B, n) (or (B, n, d) for sort_with), ``b`` (B, m).
``plan`` is an array or a plan operator (:mod:`._planop`): the read-outs use it only
through products with vectors, so the same code serves the dense plan and the blocked
one. Each ``*_vjp`` returns ``(dL/dplan, dL/dvalues)``, the plan's cotangent as a
:class:`._planop.LowRank` (a few outer products); ``None`` means zero. The framework
adapters differentiate the forward functions themselves; the VJPs serve
:func:`softsort.vjp` and are checked against framework autodiff in the tests.
"""

from __future__ import annotations

from typing import Any

from ._planop import as_plan, combined, lowrank


# -- sort: (P^T x) / (column sums of P) ---------------------------------------------------
# Divided by the plan's own column sums, not by ``b``: each value is then a convex
# combination of the inputs, within [min x, max x] whatever the plan's column error (the
# solver stops at ``threshold``, not at zero; dividing by ``b`` overshot the range by that
# relative error). At a converged plan the sums are ``b``; the derivatives agree there too,
# since the implicit backward keeps the column sums equal to ``b``.
def sorted_values(xp: Any, plan: Any, values: Any, b: Any) -> Any:
    """Composite sorted values, one per target (used by sort, quantile, quantize)."""
    num, s = as_plan(xp, plan).apply_t_and_col_sums(values)
    return num / s


def sorted_values_vjp(xp: Any, plan: Any, values: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    op = as_plan(xp, plan)
    num, s = op.apply_t_and_col_sums(values)
    w = cot / s
    out = num / s
    # dL/dP_ij = (values_i - out_j) w_j
    left = xp.stack([values, -xp.ones_like(values)], axis=-1)
    return lowrank(xp, left, xp.stack([w, out * w], axis=-1)), op.apply(w)


# -- ranks: (P @ t) / a, scaled ------------------------------------------------------------
def transported(xp: Any, plan: Any, targets: Any, scale: float) -> Any:
    """``scale * n * P @ targets``: for each input, the mean target it is sent to."""
    op = as_plan(xp, plan)
    return (scale * op.n) * op.apply(xp.broadcast_to(targets, (*op.batch, op.m)))


def transported_vjp(xp: Any, plan: Any, targets: Any, scale: float, cot: Any) -> Any:
    op = as_plan(xp, plan)
    return lowrank(xp, (scale * op.n) * cot, xp.broadcast_to(targets, (*cot.shape[:-1], op.m)))


# -- quantize: n * P @ ((P^T x) / b) -------------------------------------------------------
def quantized(xp: Any, plan: Any, values: Any, b: Any) -> Any:
    return transported(xp, plan, sorted_values(xp, plan, values, b), 1.0)


def quantized_vjp(xp: Any, plan: Any, values: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    op = as_plan(xp, plan)
    levels = sorted_values(xp, op, values, b)
    d_plan = transported_vjp(xp, op, levels, 1.0, cot)
    d_levels = op.n * op.apply_t(cot)
    d_plan2, d_values = sorted_values_vjp(xp, op, values, b, d_levels)
    return combined(xp, d_plan, d_plan2), d_values


# -- sort_with: rows of X mixed by P^T -----------------------------------------------------
def sorted_rows(xp: Any, plan: Any, rows: Any, b: Any) -> Any:
    num, s = as_plan(xp, plan).apply_t_and_col_sums(rows)
    return num / s[..., :, None]


def sorted_rows_vjp(xp: Any, plan: Any, rows: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    op = as_plan(xp, plan)
    num, s = op.apply_t_and_col_sums(rows)
    s = s[..., :, None]  # (B, m, 1)
    w = cot / s  # (B, m, d)
    out = num / s
    # dL/dP_ij = sum_k rows_ik w_jk - sum_k w_jk out_jk
    left = xp.concat([rows, -xp.ones_like(rows[..., :1])], axis=-1)
    right = xp.concat([w, xp.sum(w * out, axis=-1)[..., None]], axis=-1)
    return lowrank(xp, left, right), op.apply(w)
