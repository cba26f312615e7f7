"""NumPy adapter: the generic eager adapter with SciPy-free native fast paths."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class NumpyBackend(Backend):
    name = "numpy"

    def logsumexp(self, x: Any, axis: int) -> Any:
        # Same max-shift as the portable version, but with in-place temporaries: the
        # Sinkhorn loop spends most of its time here and NumPy allocates otherwise.
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        t = np.subtract(x, m)
        np.exp(t, out=t)
        s = np.sum(t, axis=axis, keepdims=True)
        with np.errstate(divide="ignore"):
            np.log(s, out=s)
        s += m
        return np.squeeze(s, axis=axis)
