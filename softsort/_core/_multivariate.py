"""Multivariate CDF and quantile maps: the reference sample and the entropic map estimator.

Documented by :func:`softsort.multivariate_cdf_quantile_maps`. The transport problem itself
(squared Euclidean cost between ``n`` inputs and ``m`` reference points in ``d`` dimensions)
is solved by the same Sinkhorn solver and implicit backward as every operator
(:func:`._transport.transport` with explicit target positions); this module holds what is
specific to the maps.
"""

from __future__ import annotations

import math
from typing import Any

from .._compat import device
from ._lse import logsumexp
from ._sinkhorn import sq_distances

#: OTT-JAX's default epsilon is this fraction of the standard deviation of the cost matrix.
DEFAULT_EPSILON_SCALE = 0.05


def _primes(count: int) -> list[int]:
    """The first ``count`` primes (trial division: ``count`` is a dimension, small)."""
    found: list[int] = []
    candidate = 2
    while len(found) < count:
        if all(candidate % p for p in found if p * p <= candidate):
            found.append(candidate)
        candidate += 1
    return found


def halton(xp: Any, m: int, d: int, dtype: Any, dev: Any) -> Any:
    """The points ``1..m`` of the (unscrambled) Halton sequence in ``[0, 1)^d``, shape (m, d).

    Coordinate ``k`` is the radical inverse of the index in the ``k``-th prime base (the
    van der Corput sequence in base 2 first): digit ``t`` of the index in base ``p``
    contributes ``digit * p**-(t + 1)``. Deterministic and written in the array API, so
    every backend gets the same reference sample without a random generator. Index 0 (the
    origin) is skipped.
    """
    # The library's index dtype: int64, or int32 for JAX without x64 (which warns on int64).
    index_dtype = xp.__array_namespace_info__().default_dtypes(device=dev)["indexing"]
    index = xp.arange(1, m + 1, dtype=index_dtype, device=dev)
    columns = []
    for p in _primes(d):
        digits = max(1, math.ceil(math.log(m + 1, p)) + 1)  # enough digits for index m
        rest = index
        value = xp.zeros((m,), dtype=dtype, device=dev)
        scale = 1.0
        for _ in range(digits):
            scale /= p
            value = value + xp.astype(rest % p, dtype) * scale
            rest = rest // p
        columns.append(value)
    return xp.stack(columns, axis=-1)


def default_epsilon(backend: Any, x: Any, y: Any) -> Any:
    """``0.05 * std(C)`` over all ``n x m`` entries of ``C_ij = |x_i - y_j|^2`` (OTT-JAX's default).

    Unweighted, as OTT-JAX's PointCloud computes it, and carrying no gradient (OTT-JAX
    stops it too). Two passes (mean, then squared deviations) where OTT-JAX subtracts the
    squared mean from the mean square: the same value up to rounding, without cancellation.
    """
    xp = backend.xp
    cost = sq_distances(backend, x, y)
    mean = xp.mean(cost)
    std = xp.sqrt(xp.mean((cost - mean) ** 2))
    return backend.stop_gradient(DEFAULT_EPSILON_SCALE * std)


def entropic_map(backend: Any, points: Any, support: Any, potential: Any, eps: Any) -> Any:
    """The entropic map estimator: ``sum_j w_j(p) s_j`` with ``w_j(p) ∝ exp((h_j - |p - s_j|^2) / eps)``.

    ``points`` (b, d) are mapped onto the convex hull of ``support`` (k, d) whose potential
    is ``h`` (k,) (``g`` on the reference points for the CDF map, ``f`` on the inputs for
    the quantile map): the soft c-transform's gradient, ``p - grad h^c(p) / 2``. Weights as
    a softmax of the log-weights (max-shifted by the log-sum-exp): no underflow, and the
    framework differentiates it with respect to everything it depends on.
    """
    xp = backend.xp
    logits = (potential[None, :] - sq_distances(backend, points, support)) / eps
    weights = xp.exp(logits - logsumexp(backend, logits, axis=-1)[:, None])
    return weights @ support


def ones_like_weights(xp: Any, k: int, like: Any) -> Any:
    """Uniform weights ``1/k`` with the dtype and device of ``like``."""
    return xp.full((k,), 1.0 / k, dtype=like.dtype, device=device(like))
