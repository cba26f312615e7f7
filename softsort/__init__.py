"""softsort: differentiable sorting, ranking and quantiles by entropic optimal transport.

The math is written once against the Python array API standard; NumPy, CuPy, JAX and
PyTorch arrays all work, and JAX and PyTorch differentiate through every operator.
"""

from __future__ import annotations

from ._api import (
    TransportResult,
    quantile,
    quantile_normalization,
    quantize,
    ranks,
    sort,
    sort_with,
    topk_mask,
    transport_for_sort,
    vjp,
)
from ._axis import apply_on_axis
from ._errors import ConvergenceWarning
from ._multivariate import CdfQuantileMaps, multivariate_cdf_quantile_maps

__version__ = "0.1.0"

__all__ = [
    "CdfQuantileMaps",
    "ConvergenceWarning",
    "TransportResult",
    "__version__",
    "apply_on_axis",
    "multivariate_cdf_quantile_maps",
    "quantile",
    "quantile_normalization",
    "quantize",
    "ranks",
    "sort",
    "sort_with",
    "topk_mask",
    "transport_for_sort",
    "vjp",
]
