"""The default squashing map, ``sigmoid(z-score)``, and its hand-written VJP.

Documented by the ``squashing_fun`` option of :func:`softsort.sort`. The VJP serves
:func:`softsort.vjp` on libraries without autodiff; framework adapters differentiate the
forward directly.
"""

from __future__ import annotations

from typing import Any

#: Added to the standard deviation, as OTT-JAX does, so constant rows map to 0.5 -- but
#: relative to the row: ``STD_FLOOR * min(1, max|x - mean|)`` (see :func:`_floor`).
STD_FLOOR = 1e-10


def _sigmoid(xp: Any, s: Any) -> Any:
    # Two-sided form: exp of a non-positive number only, so no overflow for large |s|.
    e = xp.exp(-xp.abs(s))
    return xp.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _mean(xp: Any, v: Any, rows: Any) -> Any:
    """Mean along the last axis; over the valid entries only with ``rows = (w, count)``.

    ``w`` (B, n) is 1 at the valid entries of a ``mask=`` and 0 elsewhere, ``count``
    (B, 1) their number (at least one).
    """
    if rows is None:
        return xp.mean(v, axis=-1, keepdims=True)
    return xp.sum(v * rows[0], axis=-1, keepdims=True) / rows[1]


def _centred_std(backend: Any, x: Any, rows: Any = None) -> tuple[Any, Any, Any]:
    xp = backend.xp
    centred = x - _mean(xp, x, rows)
    if rows is not None:  # invalid entries take no part in the scale or the std
        centred = centred * rows[0]
    # Scale by max |centred| before squaring: the variance of values near 1e20 (float32)
    # or 1e155 (float64) would overflow, and every row would look constant. std does not
    # depend on the scale chosen, so its gradient is stopped (exactly zero in theory, and
    # 1 / scale**2 overflows float32 for inputs near 1e-30).
    scale = backend.stop_gradient(xp.max(xp.abs(centred), axis=-1, keepdims=True))
    positive = scale > 0
    safe_scale = xp.where(positive, scale, xp.ones_like(scale))
    unit = centred / safe_scale
    # Double where: sqrt's derivative at 0 is infinite, and inf * 0 = NaN would leak
    # through the unselected branch into the gradient of constant rows.
    mean_sq = _mean(xp, unit * unit, rows)
    std = xp.where(positive, safe_scale * xp.sqrt(xp.where(positive, mean_sq, xp.ones_like(mean_sq))), scale)
    return centred, std, scale


def _floor(xp: Any, scale: Any) -> Any:
    """What is added to the std: ``1e-10 * min(1, scale)``, and ``1e-10`` for constant rows.

    OTT-JAX adds an absolute ``1e-10``, so rows whose spread is near or below 1e-10 all map
    to 0.5 and scale equivariance ``sort(c x) = c sort(x)`` fails for small ``c``. Rows with
    ``max|x - mean| >= 1`` get OTT-JAX's floor exactly (the same numbers up to rounding);
    smaller rows a floor proportional to their spread, so that ``(x - mean) / (std + floor)``
    does not depend on the scale of the row. A constant row (scale 0) keeps the absolute
    floor: its centred values are exactly 0, it maps to 0.5 as before.
    """
    return STD_FLOOR * xp.where(scale > 0, xp.minimum(scale, xp.ones_like(scale)), xp.ones_like(scale))


def default_squash(backend: Any, x: Any, rows: Any = None) -> Any:
    """``sigmoid((x - mean) / (std + 1e-10 * min(1, max|x - mean|)))`` along the last axis (population std).

    With ``rows = (w, count)`` (``mask=``, see :func:`_mean`) mean and std are those of the
    valid entries, and the invalid entries map to the constant 0.5 (they carry no weight).
    """
    xp = backend.xp
    centred, std, scale = _centred_std(backend, x, rows)
    # Divided in units of the row's scale: autodiff of centred / denom takes the square of
    # denom (d(a/b)/db = -a/b**2), and 1e-30**2 underflows float32 to 0 (inf, then NaN
    # gradients for rows of scale 1e-30); both terms below are O(1).
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))
    z = _sigmoid(xp, (centred / safe) / ((std + _floor(xp, scale)) / safe))
    return z if rows is None else xp.where(rows[0] > 0, z, xp.full_like(z, 0.5))


def default_squash_vjp(backend: Any, x: Any, d_z: Any, rows: Any = None) -> Any:
    """Pull ``dL/dz`` back to ``dL/dx`` through :func:`default_squash` (``rows``: see there)."""
    xp = backend.xp
    n = x.shape[-1] if rows is None else rows[1]
    centred, std, scale = _centred_std(backend, x, rows)
    if rows is not None:
        d_z = d_z * rows[0]
    # The floor's dependence on x is ignored, as in the forward (its scale is stop_gradient'ed):
    # a relative change of 1e-10 of the gradient at most.
    denom = std + _floor(xp, scale)
    z = _sigmoid(xp, centred / denom)
    d_s = d_z * z * (1.0 - z)
    # s = centred / denom: through the centring, and through std (d std/dx = centred/(n std)).
    d_centred = d_s / denom
    s = centred / denom  # O(1) even for huge inputs: never square centred itself
    d_denom = -xp.sum(d_s * s, axis=-1, keepdims=True) / denom
    safe_std = xp.where(std > 0, std, xp.ones_like(std))
    d_x_std = xp.where(std > 0, d_denom * (centred / safe_std) / n, xp.zeros_like(centred))
    d_x = d_centred - _mean(xp, d_centred, rows)
    if rows is not None:
        d_x = d_x * rows[0]
    return d_x + d_x_std
