"""Reading each operator's answer off the plan, with hand-written VJPs.

Shapes: ``plan`` (B, n, m), ``values`` (B, n) (or (B, n, d) for sort_with), ``b`` (B, m).
Each ``*_vjp`` returns ``(dL/dplan, dL/dvalues)``; ``None`` means zero. The framework
adapters differentiate the forward functions themselves; the VJPs serve
:func:`softsort.vjp` and are checked against framework autodiff in the tests.
"""

from __future__ import annotations

from typing import Any


def _mv(mat: Any, vec: Any) -> Any:
    return (mat @ vec[..., None])[..., 0]


def _vm(vec: Any, mat: Any) -> Any:
    return (vec[..., None, :] @ mat)[..., 0, :]


# -- sort: (P^T x) / (column sums of P) ---------------------------------------------------
# Divided by the plan's own column sums, not by ``b``: each value is then a convex
# combination of the inputs, within [min x, max x] whatever the plan's column error (the
# solver stops at ``threshold``, not at zero; dividing by ``b`` overshot the range by that
# relative error). At a converged plan the sums are ``b``; the derivatives agree there too,
# since the implicit backward keeps the column sums equal to ``b``.
def sorted_values(xp: Any, plan: Any, values: Any, b: Any) -> Any:
    """Composite sorted values, one per target (used by sort, quantile, quantize)."""
    return _vm(values, plan) / xp.sum(plan, axis=-2)


def sorted_values_vjp(xp: Any, plan: Any, values: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    s = xp.sum(plan, axis=-2)
    w = cot / s
    out = _vm(values, plan) / s
    return (values[..., :, None] - out[..., None, :]) * w[..., None, :], _mv(plan, w)


# -- ranks: (P @ t) / a, scaled ------------------------------------------------------------
def transported(xp: Any, plan: Any, targets: Any, scale: float) -> Any:
    """``scale * n * P @ targets``: for each input, the mean target it is sent to."""
    n = plan.shape[-2]
    return (scale * n) * _mv(plan, targets)


def transported_vjp(xp: Any, plan: Any, targets: Any, scale: float, cot: Any) -> Any:
    n = plan.shape[-2]
    return (scale * n) * (cot[..., :, None] * targets[..., None, :])


# -- quantize: n * P @ ((P^T x) / b) -------------------------------------------------------
def quantized(xp: Any, plan: Any, values: Any, b: Any) -> Any:
    return transported(xp, plan, sorted_values(xp, plan, values, b), 1.0)


def quantized_vjp(xp: Any, plan: Any, values: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    levels = sorted_values(xp, plan, values, b)
    d_plan = transported_vjp(xp, plan, levels, 1.0, cot)
    n = plan.shape[-2]
    d_levels = n * _vm(cot, plan)
    d_plan2, d_values = sorted_values_vjp(xp, plan, values, b, d_levels)
    return d_plan + d_plan2, d_values


# -- sort_with: rows of X mixed by P^T -----------------------------------------------------
def sorted_rows(xp: Any, plan: Any, rows: Any, b: Any) -> Any:
    return (xp.matrix_transpose(plan) @ rows) / xp.sum(plan, axis=-2)[..., :, None]


def sorted_rows_vjp(xp: Any, plan: Any, rows: Any, b: Any, cot: Any) -> tuple[Any, Any]:
    s = xp.sum(plan, axis=-2)[..., :, None]  # (B, m, 1)
    w = cot / s  # (B, m, d)
    out = (xp.matrix_transpose(plan) @ rows) / s
    d_plan = rows @ xp.matrix_transpose(w) - xp.sum(w * out, axis=-1)[..., None, :]
    return d_plan, plan @ w
