"""Log-sum-exp, written once: the array API standard has none."""

from __future__ import annotations

from typing import Any


def logsumexp(backend: Any, x: Any, axis: int) -> Any:
    """Max-shifted ``log(sum(exp(x), axis))``; ``-inf`` rows stay ``-inf``, never NaN."""
    native = backend.logsumexp(x, axis)
    if native is not None:
        return native
    xp = backend.xp
    m = xp.max(x, axis=axis, keepdims=True)
    # An all -inf slice would give inf - inf = nan; shift it by 0 instead.
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    return xp.squeeze(xp.log(s) + m, axis=axis)
