"""The default squashing map, ``sigmoid(z-score)``, and its hand-written VJP.

Documented by the ``squashing_fun`` option of :func:`softsort.sort`. The VJP serves
:func:`softsort.vjp` on libraries without autodiff; framework adapters differentiate the
forward directly.
"""

from __future__ import annotations

from typing import Any

#: Added to the standard deviation, as OTT-JAX does, so constant rows map to 0.5.
STD_FLOOR = 1e-10


def _sigmoid(xp: Any, s: Any) -> Any:
    # Two-sided form: exp of a non-positive number only, so no overflow for large |s|.
    e = xp.exp(-xp.abs(s))
    return xp.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _centred_std(xp: Any, x: Any) -> tuple[Any, Any]:
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    var = xp.mean(centred * centred, axis=-1, keepdims=True)
    positive = var > 0
    # Double where: sqrt's derivative at 0 is infinite, and inf * 0 would poison gradients.
    std = xp.where(positive, xp.sqrt(xp.where(positive, var, xp.ones_like(var))), var)
    return centred, std


def default_squash(xp: Any, x: Any) -> Any:
    """``sigmoid((x - mean) / (std + 1e-10))`` along the last axis (population std)."""
    centred, std = _centred_std(xp, x)
    return _sigmoid(xp, centred / (std + STD_FLOOR))


def default_squash_vjp(xp: Any, x: Any, d_z: Any) -> Any:
    """Pull ``dL/dz`` back to ``dL/dx`` through :func:`default_squash`."""
    n = x.shape[-1]
    centred, std = _centred_std(xp, x)
    denom = std + STD_FLOOR
    z = _sigmoid(xp, centred / denom)
    d_s = d_z * z * (1.0 - z)
    # s = centred / denom: through the centring, and through std (d std/dx = centred/(n std)).
    d_centred = d_s / denom
    d_denom = -xp.sum(d_s * centred, axis=-1, keepdims=True) / (denom * denom)
    safe_std = xp.where(std > 0, std, xp.ones_like(std))
    d_x_std = xp.where(std > 0, d_denom * centred / (n * safe_std), xp.zeros_like(centred))
    d_x = d_centred - xp.mean(d_centred, axis=-1, keepdims=True)
    return d_x + d_x_std
