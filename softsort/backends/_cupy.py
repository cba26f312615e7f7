"""CuPy adapter: eager like NumPy; arrays stay on their current CUDA device.

CuPy has no autodiff: gradients for CuPy users come from :func:`softsort.vjp`, which runs
the core's hand-written backward on the GPU.
"""

from __future__ import annotations

from typing import Any

import cupy

from ._base import Backend


class CupyBackend(Backend):
    name = "cupy"

    def logsumexp(self, x: Any, axis: int) -> Any:
        m = cupy.max(x, axis=axis, keepdims=True)
        m = cupy.where(cupy.isfinite(m), m, 0.0)
        s = cupy.log(cupy.sum(cupy.exp(x - m), axis=axis, keepdims=True)) + m
        return cupy.squeeze(s, axis=axis)
