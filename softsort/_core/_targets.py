"""Target measures of each operator: the weights ``b`` of ``linspace(0, 1, m)``.

Documented by the public operators (:mod:`softsort._api`). All weights are built with the
array API so that traced values (quantile levels, weights) stay traced.
"""

from __future__ import annotations

from typing import Any

from .._compat import device


def uniform(xp: Any, m: int, like: Any) -> Any:
    """``m`` equal weights."""
    return xp.full((m,), 1.0 / m, dtype=like.dtype, device=device(like))


def topk(xp: Any, n: int, k: int, like: Any) -> Any:
    """One target holding the ``n - k`` smallest inputs, then ``k`` targets of ``1/n``."""
    head = xp.full((1,), (n - k) / n, dtype=like.dtype, device=device(like))
    return xp.concat([head, xp.full((k,), 1.0 / n, dtype=like.dtype, device=device(like))])


def two_level(xp: Any, n: int, k: int, like: Any) -> Any:
    """``[1 - k/n, k/n]``: the bottom ``n - k`` and the top ``k`` (for topk_mask)."""
    return xp.asarray([1.0 - k / n, k / n], dtype=like.dtype, device=device(like))


def quantile_weights(xp: Any, q_sorted: Any, n: int, weight: Any) -> Any:
    """Interleave filler targets with small targets at cumulative masses ``q_sorted``.

    With ``r`` levels the measure has ``2r + 1`` targets: fillers of mass
    ``q_1 - w/2, q_2 - q_1 - w, ..., 1 - q_r - w/2`` alternating with ``r`` targets of mass
    ``w``, so the ``k``-th small target sits exactly at cumulative mass ``q_k``. ``w`` is
    ``weight`` when given, else ``min(0.02, 1.5/n)``, and is always capped at half the
    smallest gap between levels and ``0.5 / r`` so every filler stays positive
    (the rule of OTT-JAX's ``soft_sort.quantile``).
    """
    r = q_sorted.shape[-1]
    dev = device(q_sorted)
    dt = q_sorted.dtype
    zero = xp.zeros((1,), dtype=dt, device=dev)
    one = xp.ones((1,), dtype=dt, device=dev)
    ext = xp.concat([zero, q_sorted, one])
    filler = ext[1:] - ext[:-1]
    caps = [0.5 * filler, xp.full((1,), 0.5 / r, dtype=dt, device=dev)]
    if weight is None:
        caps.append(xp.asarray([0.02, 1.5 / n], dtype=dt, device=dev))
    else:
        # weight is already an array of the compute dtype (softsort._validate.as_compute); no
        # asarray: PyTorch warns on asarray of a tensor that requires grad.
        caps.append(xp.reshape(weight, (-1,)))
    w = xp.min(xp.concat(caps))
    shift = xp.concat(
        [
            xp.full((1,), -0.5, dtype=dt, device=dev),
            -xp.ones((r - 1,), dtype=dt, device=dev),
            xp.full((1,), -0.5, dtype=dt, device=dev),
        ]
    )
    filler = filler + w * shift
    small = xp.zeros_like(filler) + w
    return xp.reshape(xp.stack([filler, small], axis=1), (-1,))[:-1]
