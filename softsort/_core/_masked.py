"""Ragged rows (``mask=``): each row's problem restricted to its valid entries, batched.

Documented by the ``mask`` argument of the operators (:mod:`softsort._api`). A row with
``c`` valid entries is solved as the problem of those ``c`` values alone, inside the
padded ``(n, m)`` problem of the batch: invalid inputs and unused targets get weight zero
(the solver raises zero weights to the smallest normal float, a mass no result can see),
the squashing uses the valid entries' mean and std, and where the operator's targets
depend on ``c`` (the ``c`` uniform targets of a full sort or of ranks) each row gets its
own target positions ``linspace(0, 1, c)`` followed by unused ones. The read-outs here
divide only by masses that are positive and write zeros at invalid positions, so neither
values nor gradients see a ``0 / 0``.

A row without any valid entry is solved as a constant row (every entry valid, all
values 0), and its outputs are zeros: defined, finite, and with zero gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._compat import device
from ._planop import matvec, vecmat


class Rows(NamedTuple):
    """What every masked operator needs to know about its rows (batch as leading axis)."""

    valid: Any  # (B, n) bool: the entries of the user's mask
    weight: Any  # (B, n) 0/1 in the compute dtype: the entries that take part (empty rows: all)
    count: Any  # (B, 1) how many take part (at least 1)
    nonempty: Any  # (B, 1) bool: the row has a valid entry


def rows(xp: Any, valid: Any, like: Any) -> Rows:
    n = valid.shape[-1]
    count = xp.sum(xp.astype(valid, like.dtype), axis=-1, keepdims=True)
    nonempty = count > 0
    taking_part = valid | ~nonempty
    return Rows(valid, xp.astype(taking_part, like.dtype), xp.where(nonempty, count, xp.full_like(count, n)), nonempty)


def _arange(xp: Any, m: int, like: Any) -> Any:
    return xp.arange(m, dtype=like.dtype, device=device(like))


def input_weights(r: Rows) -> Any:
    """``1 / c`` on the entries that take part, 0 elsewhere."""
    return r.weight / r.count


def prefix(xp: Any, size: Any, m: int, like: Any) -> tuple[Any, Any, Any]:
    """``size`` (B, 1) uniform targets at ``linspace(0, 1, size)``, then unused ones at 1.

    Returns ``(b, y, used)``, each (B, m).
    """
    j = _arange(xp, m, like)[None, :]
    used = j < size
    b = xp.where(used, 1.0 / size, xp.zeros_like(j + size))
    span = xp.where(size > 1, size - 1.0, xp.ones_like(size))
    y = xp.where(used, j / span, xp.ones_like(j + size))
    return b, y, used


def selection(xp: Any, index: Any, on: Any, m: int, like: Any) -> Any:
    """One-hot ``(B, k, m)``: output ``l`` reads target ``index[:, l]`` where ``on``, else nothing.

    A gather written as a product, so that it has a plain linear VJP on every library.
    """
    hit = index[..., :, None] == _arange(xp, m, like)[None, None, :]
    return xp.astype(hit & on[..., :, None], like.dtype)


# -- composite values of the used targets (sort, topk, quantile, quantize, sort_with) ---------
def _sums(xp: Any, plan: Any, used: Any) -> Any:
    s = xp.sum(plan, axis=-2)
    return xp.where(used, s, xp.ones_like(s))  # unused targets hold (almost) no mass


def composite(xp: Any, plan: Any, values: Any, used: Any) -> Any:
    """``(P^T x) / (column sums)`` at the used targets (B, m), 0 at the others."""
    out = vecmat(values, plan) / _sums(xp, plan, used)
    return xp.where(used, out, xp.zeros_like(out))


def composite_vjp(xp: Any, plan: Any, values: Any, used: Any, cot: Any) -> tuple[Any, Any]:
    s = _sums(xp, plan, used)
    w = xp.where(used, cot, xp.zeros_like(cot)) / s
    out = vecmat(values, plan) / s
    return (values[..., :, None] - out[..., None, :]) * w[..., None, :], matvec(plan, w)


def composite_rows(xp: Any, plan: Any, rows_: Any, used: Any) -> Any:
    """Rows of ``X`` (B, n, d) mixed by ``P^T``, divided by the column sums; 0 at unused targets."""
    out = (xp.matrix_transpose(plan) @ rows_) / _sums(xp, plan, used)[..., :, None]
    return xp.where(used[..., :, None], out, xp.zeros_like(out))


def composite_rows_vjp(xp: Any, plan: Any, rows_: Any, used: Any, cot: Any) -> tuple[Any, Any]:
    s = _sums(xp, plan, used)[..., :, None]
    w = xp.where(used[..., :, None], cot, xp.zeros_like(cot)) / s
    out = (xp.matrix_transpose(plan) @ rows_) / s
    d_plan = rows_ @ xp.matrix_transpose(w) - xp.sum(w * out, axis=-1)[..., None, :]
    return d_plan, plan @ w


# -- per-input read-outs (ranks, topk_mask, quantize, quantile_normalization) ------------------
def spread(xp: Any, plan: Any, levels: Any, factor: Any, valid: Any) -> Any:
    """``factor * P @ levels`` at the valid inputs, 0 elsewhere (``levels`` (m,) or (B, m))."""
    out = factor * matvec(plan, xp.broadcast_to(levels, (*plan.shape[:-2], plan.shape[-1])))
    return xp.where(valid, out, xp.zeros_like(out))


def spread_vjp(xp: Any, plan: Any, levels: Any, factor: Any, valid: Any, cot: Any) -> Any:
    c = factor * xp.where(valid, cot, xp.zeros_like(cot))
    return c[..., :, None] * xp.broadcast_to(levels, (*plan.shape[:-2], plan.shape[-1]))[..., None, :]


# -- quantile targets with the row's own count ---------------------------------------------------
def quantile_weights(xp: Any, q_sorted: Any, count: Any, weight: Any) -> Any:
    """The measure of :func:`._targets.quantile_weights` for rows of ``count`` (B, 1) values.

    Only the default mass ``min(0.02, 1.5 / c)`` of the small targets depends on the row.
    """
    r = q_sorted.shape[-1]
    dt, dev = q_sorted.dtype, device(q_sorted)
    ext = xp.concat([xp.zeros((1,), dtype=dt, device=dev), q_sorted, xp.ones((1,), dtype=dt, device=dev)])
    filler = ext[1:] - ext[:-1]
    caps = [0.5 * filler, xp.full((1,), 0.5 / r, dtype=dt, device=dev)]
    if weight is not None:
        caps.append(xp.reshape(weight, (-1,)))
    w = xp.min(xp.concat(caps))
    if weight is None:
        w = xp.minimum(w, xp.minimum(xp.full_like(count, 0.02), 1.5 / count))  # (B, 1)
    else:
        w = xp.zeros_like(count) + w
    shift = xp.concat(
        [
            xp.full((1,), -0.5, dtype=dt, device=dev),
            -xp.ones((r - 1,), dtype=dt, device=dev),
            xp.full((1,), -0.5, dtype=dt, device=dev),
        ]
    )
    fill = filler[None, :] + w * shift[None, :]  # (B, r + 1)
    small = xp.zeros_like(fill) + w
    batch = count.shape[0]
    return xp.reshape(xp.stack([fill, small], axis=-1), (batch, 2 * r + 2))[..., :-1]
