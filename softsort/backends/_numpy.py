"""NumPy adapter: the generic eager adapter with SciPy-free native fast paths."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ._base import Backend

#: Plans per chunk of a batch (see ``Backend.cache_chunk_bytes``); chosen with
#: ``benchmarks/chunk_sizes.py`` on a 2-core CPU.
CACHE_CHUNK_BYTES = 8 << 20


#: Reductions whose innermost run is at most this long are reordered (see ``_reduce``);
#: measured on a 2-core CPU, float32: 10 x 10 rows 5x faster, runs of 64 slower.
SHORT_RUN = 16


#: Arrays of at least this many entries are clipped with ``np.clip`` (see ``clip``).
NATIVE_CLIP_SIZE = 2048


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

    def cache_chunk_bytes(self, like: Any) -> int | None:
        del like
        return CACHE_CHUNK_BYTES

    def count_below(self, v: Any, w: Any, strict: bool) -> Any:
        side: Literal["left", "right"] = "left" if strict else "right"
        if math.prod(v.shape[:-1]) == 1:
            return np.reshape(np.searchsorted(np.reshape(w, (-1,)), np.reshape(v, (-1,)), side=side), v.shape)
        # A batch: NumPy's searchsorted takes one row. Both rows ascend, so a stable sort
        # of each row of v and w together places v_k after v_0..v_{k-1} and the w below it
        # (w equal to v_k after it when strict: v comes first in the row, before it when not).
        p = v.shape[-1]
        both = np.concatenate([v, w] if strict else [w, v], axis=-1)
        where = self.inverse_permutation(np.argsort(both, axis=-1, kind="stable"))
        placed = where[..., :p] if strict else where[..., w.shape[-1] :]
        return placed - np.arange(p)

    def inverse_permutation(self, order: Any) -> Any:
        out = np.empty_like(order)
        np.put_along_axis(out, order, np.broadcast_to(np.arange(order.shape[-1]), order.shape), axis=-1)
        return out

    def writable(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def clip(self, x: Any, low: float | None, high: float | None) -> Any:
        # NumPy's float32 maximum/minimum with a scalar run at about 1 ns an entry, its clip
        # at a fourth of that but with a fixed cost of ~6 us: float32, 10^4 values 21.8 ->
        # 9.3 us for both bounds, 10^3 6.3 -> 5.8, 10^2 3.9 -> 6.3.
        if x.size < NATIVE_CLIP_SIZE or not np.issubdtype(x.dtype, np.floating):
            return super().clip(x, low, high)
        return np.clip(x, -np.inf if low is None else low, np.inf if high is None else high)

    def min(self, x: Any, axis: int) -> Any:
        return _reduce(np.minimum, x, axis)

    def sum(self, x: Any, axis: int) -> Any:
        return _reduce(np.add, x, axis)

    def floored_exp(self, f: Any, d: Any, log_floor: float) -> Any:
        # In place, and the floor added after the exp: NumPy's float32 maximum takes 0.29 ms
        # on 10^6 values, as long as its exp, while an add takes 0.08 ms and its exp
        # underflows at full speed. Adding instead of clipping moves an entry by at most
        # the floor, which is what clipping does too.
        np.subtract(f[..., :, None], d, out=d)
        np.exp(d, out=d)
        d += math.exp(log_floor)
        return d


def _reduce(ufunc: Any, x: Any, axis: int) -> Any:
    """``ufunc.reduce(x, axis)``, reordered where NumPy's own order is slow.

    NumPy reduces with one inner loop per run of the innermost axis: where that run is
    short (the reduced axis itself, or the axes after it) the loop overhead dominates
    (float32 minimum of 10000 x 3: 0.49 ms along the last axis, 0.40 ms along the first;
    16384 x 64 x 2: 49 / 54 ms). A copy with the reduced axis moved first (elementwise
    reductions of long rows) or last (one long contiguous run per output) is 5-15x faster
    there. Minima are exact either way; sums may round differently (pairwise along a
    contiguous run, in order along the first axis).
    """
    axis %= x.ndim
    length = x.shape[axis]
    if x.size == length or (length > SHORT_RUN and math.prod(x.shape[axis + 1 :]) > SHORT_RUN):
        return ufunc.reduce(x, axis=axis)
    if length <= SHORT_RUN:
        return ufunc.reduce(np.ascontiguousarray(np.moveaxis(x, axis, 0)), axis=0)
    return ufunc.reduce(np.ascontiguousarray(np.moveaxis(x, axis, -1)), axis=-1)
