"""Dask adapter: a call on a ``dask.array`` becomes a lazy graph of per-chunk calls.

Unlike the other adapters this one sits above the core: Sinkhorn's convergence checks read
values, which on a lazy array would compute the graph at every check. The problems of a call
(the rows along the batch axes) are independent, so each chunk of rows is solved by the
public function itself on the chunk's own array type (NumPy, CuPy: the normal dispatch), and
``dask.array.blockwise`` stitches the results. Building the graph computes nothing: output
shapes and dtypes come from a dry run of the same function on an empty batch, which also
raises the NumPy path's errors for bad arguments at call time. Errors that need values
(non-finite input, unsorted ``targets``) and convergence warnings come when a chunk is
computed, where it is computed.

Arguments, by kind:

* the input ``x`` (and for :func:`softsort.sort_with` its ``criterion``): the operator's
  axes are rechunked to one chunk, with a ``PerformanceWarning`` when a block then outgrows
  dask's ``array.chunk-size`` (128 MiB by default); the batch axes keep their chunks;
* arrays that parametrize a whole problem (:data:`WHOLE`: ``q``, ``weight``, ``targets``,
  ``weights``, ``target_weights``, ``epsilon``) and 0-d arrays go whole to every chunk;
* any other array keyword (``mask``, ...) holds a value per element: it is broadcast to the
  shape of ``x`` (of ``criterion`` for ``sort_with``) and chunked like it.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning
from dask.array.utils import meta_from_array
from dask.utils import parse_bytes

from .. import _compat
from .. import _validate as check

__all__ = ["WHOLE", "call", "vjp"]

#: arguments that parametrize a whole problem: every chunk gets all of them
WHOLE = frozenset({"q", "weight", "targets", "weights", "target_weights", "epsilon"})


class _Plan:
    """One call of ``fun``: the rechunked arrays, their blockwise labels, the static arguments."""

    def __init__(self, fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fname = fun.__name__
        bound = inspect.signature(fun).bind(*args, **kwargs)
        named: dict[str, Any] = {}
        for key, value in bound.arguments.items():
            kind = bound.signature.parameters[key].kind
            named.update(value if kind is inspect.Parameter.VAR_KEYWORD else {key: value})
        x = _as_dask(named.pop(next(iter(bound.signature.parameters))))
        if any(math.isnan(s) for s in x.shape):
            msg = (
                f"{self.fname}() needs the chunk sizes of its dask input, got shape {x.shape}; "
                "call x.compute_chunk_sizes() first"
            )
            raise ValueError(msg)
        if self.fname == "sort_with":
            # x (..., n, d) is sorted by criterion (..., n): the frame of per-element arrays.
            crit = _criterion(x, named.get("criterion"))
            named["criterion"] = crit
            self.batch_axes = tuple(range(x.ndim - 2))
            x = _one_chunk(self.fname, "x", x, (x.ndim - 2, x.ndim - 1))
            frame_shape = tuple(crit.shape)
        else:
            core = check.axes(self.fname, named.get("axis", -1), x.ndim, allow_tuple=self.fname == "quantile")
            # Negative axes: the same axes in the dry run, which prepends an empty batch axis.
            given = named.get("axis", -1)
            named["axis"] = tuple(a - x.ndim for a in core) if isinstance(given, (tuple, list)) else core[0] - x.ndim
            self.batch_axes = tuple(d for d in range(x.ndim) if d not in core)
            x = _one_chunk(self.fname, "x", x, core)
            frame_shape = tuple(x.shape)
        self.x = x
        labels = iter(f"b{i}" for i in range(len(self.batch_axes)))
        self.x_ind = tuple(next(labels) if d in self.batch_axes else f"x{d}" for d in range(x.ndim))
        self.batch = tuple(label for label in self.x_ind if label.startswith("b"))
        self.frame_ind = self.x_ind[: len(frame_shape)]
        frame_chunks = x.chunks[: len(frame_shape)]
        self.frame_batch = tuple(d for d in range(len(frame_shape)) if d in self.batch_axes)
        self.frame_shape = frame_shape
        self.static: dict[str, Any] = {}
        self.arrays: list[tuple[str, Any, tuple[str, ...]]] = []
        for key, value in named.items():
            if not _compat.is_array_api_obj(value):
                self.static[key] = value
            elif not _compat.is_dask_array(value) and (key in WHOLE or value.ndim == 0):
                self.static[key] = value
            elif key in WHOLE or value.ndim == 0:
                v = value.rechunk(-1)
                self.arrays.append((key, v, tuple(f"w_{key}{i}" for i in range(v.ndim))))
            else:
                try:
                    v = da.broadcast_to(_as_dask(value), frame_shape)
                except ValueError:
                    frame = "criterion" if self.fname == "sort_with" else "x"
                    msg = (
                        f"{self.fname}() argument {key!r} of shape {tuple(value.shape)} does not broadcast "
                        f"to the shape {frame_shape} of {frame!r}"
                    )
                    raise ValueError(msg) from None
                self.arrays.append((key, v.rechunk(frame_chunks), self.frame_ind))

    def dry_run(self, fun: Callable[..., Any]) -> Any:
        """``fun`` on an empty batch of the chunks' array type: output shapes, dtypes, argument errors."""
        xp = _compat.array_namespace(self.x._meta)

        def empty(shape: tuple[int, ...], batch: tuple[int, ...], dtype: Any) -> Any:
            return xp.zeros((0, *(0 if d in batch else s for d, s in enumerate(shape))), dtype=dtype)

        kw = dict(self.static)
        for key, v, ind in self.arrays:
            frame = ind == self.frame_ind
            kw[key] = empty(self.frame_shape, self.frame_batch, v.dtype) if frame else _stand_in(key, xp, v)
        return fun(empty(tuple(self.x.shape), self.batch_axes, self.x.dtype), **kw)

    def inputs(self) -> list[Any]:
        pairs: list[Any] = [self.x, self.x_ind]
        for _, v, ind in self.arrays:
            pairs += [v, ind]
        return pairs

    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _, _ in self.arrays)

    def out_layout(self, dry_shape: tuple[int, ...], name: str) -> tuple[tuple[str, ...], dict[str, int]]:
        """Labels of an output from its dry-run shape: the batch labels, new labels for its core axes.

        In the dry run every batch axis is empty and every core axis is not (except a
        zero-width ``sort_with`` row), so the core axes are the run of nonzero sizes; an
        output with no such run has its core axes last, as ``sort_with`` and the plan do.
        """
        shape = dry_shape[1:]
        ncore = len(shape) - len(self.batch)
        nonzero = [i for i, s in enumerate(shape) if s]
        start = len(self.batch)
        if ncore and len(nonzero) == ncore and nonzero == list(range(nonzero[0], nonzero[0] + ncore)):
            start = nonzero[0]
        core = {f"{name}{i}": shape[start + i] for i in range(ncore)}
        return (*self.batch[:start], *core, *self.batch[start:]), core

    def meta(self, ndim: int, dtype: Any) -> Any:
        return meta_from_array(self.x._meta, ndim, dtype)


def _as_dask(value: Any) -> Any:
    if _compat.is_dask_array(value):
        return value
    if not _compat.is_array_api_obj(value):
        msg = f"expected an array, got {type(value).__name__}"
        raise TypeError(msg)
    return da.from_array(value, chunks=-1)


def _criterion(x: Any, criterion: Any) -> Any:
    if not _compat.is_array_api_obj(criterion):
        msg = f"sort_with() argument 'criterion' must be an array, got {type(criterion).__name__}"
        raise TypeError(msg)
    crit = _as_dask(criterion)
    want = tuple(x.shape[:-1])
    if tuple(crit.shape) != want and crit.ndim >= 1 and crit.shape[-1] == 1 and tuple(crit.shape[:-1]) == want:
        crit = crit[..., 0]  # OTT-JAX's (n, 1) criterion
    if tuple(crit.shape) != want:
        msg = (
            f"sort_with() argument 'criterion' must have shape {want} "
            f"(x without its last axis), got {tuple(criterion.shape)}"
        )
        raise ValueError(msg)
    return crit


def _one_chunk(fname: str, name: str, x: Any, core: tuple[int, ...]) -> Any:
    """``x`` with the axes ``core`` in one chunk each; warns when the blocks grow too large."""
    if all(len(x.chunks[d]) == 1 for d in core):
        return x
    y = x.rechunk({d: -1 for d in core})
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    largest = math.prod(max(c) for c in y.chunks) * y.dtype.itemsize
    if largest > limit:
        msg = (
            f"{fname}(): argument {name!r} rechunked to one chunk along the operator's axes has blocks of "
            f"{largest / 2**20:.0f} MiB, over dask's array.chunk-size ({limit / 2**20:.0f} MiB); "
            "rechunk its batch axes smaller (each block is solved in one task)"
        )
        warnings.warn(msg, PerformanceWarning, stacklevel=check.stacklevel())
    return y


def _stand_in(key: str, xp: Any, v: Any) -> Any:
    """A valid value of the shape and dtype of the dask argument ``key``, for the dry run."""
    if v.ndim == 0:
        return xp.asarray({"epsilon": 1e-2, "q": 0.5, "weight": 1e-2}.get(key, 1.0), dtype=v.dtype)
    size = v.shape[0]
    if key == "q":
        return xp.asarray([(i + 1) / (size + 1) for i in range(size)], dtype=v.dtype)
    if key in ("weights", "target_weights"):
        return xp.full(tuple(v.shape), 1 / size, dtype=v.dtype)
    return xp.asarray([float(i) for i in range(size)], dtype=v.dtype)  # sorted, as targets must be


# -- per-chunk functions (module level: pickled by reference for distributed workers) --------
def _solve(fun: Callable[..., Any], keys: tuple[str, ...], static: dict[str, Any], x: Any, *arrays: Any) -> Any:
    return fun(x, **static, **dict(zip(keys, arrays, strict=True)))


def _pull(pair: Any, cotangent: Any) -> Any:
    return pair[1](cotangent)


def _field(index: int, result: Any) -> Any:
    return result[index]


# -- entry points ------------------------------------------------------------------------------
def call(fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fun(*args, **kwargs)`` as a lazy dask array (``transport_for_sort``: a TransportResult of them)."""
    if fun.__name__ == "sort_with" and args and _compat.is_array_api_obj(args[0]) and args[0].ndim == 1:
        return call(fun, (args[0][:, None], *args[1:]), kwargs)[..., 0]  # one value per row
    plan = _Plan(fun, args, kwargs)
    dry = plan.dry_run(fun)
    solve = functools.partial(_solve, fun, plan.keys(), plan.static)
    if not _compat.is_array_api_obj(dry):  # transport_for_sort: a tuple of arrays per chunk
        results = _objects(plan, solve)
        return type(dry)(*(_extract(plan, results, i, d, f"o{i}_") for i, d in enumerate(dry)))
    ind, core = plan.out_layout(tuple(dry.shape), "o")
    return da.blockwise(
        solve, ind, *plan.inputs(), new_axes=core, concatenate=True, meta=plan.meta(len(ind), dry.dtype)
    )


def vjp(
    vjp_fun: Callable[..., Any], op: Callable[..., Any], x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Callable[[Any], Any]]:
    """``vjp_fun(op, x, ...)`` on dask: the output and the pullback both build lazy graphs."""
    if getattr(op, "__name__", None) == "sort_with" and _compat.is_array_api_obj(x) and x.ndim == 1:
        out, pull = vjp(vjp_fun, op, x[:, None], args, kwargs)
        return out[..., 0], lambda cotangent: pull(_as_dask(cotangent)[..., None])[..., 0]
    vjp_of = functools.partial(vjp_fun, op)
    if not callable(op) or not hasattr(op, "__name__"):
        return vjp_fun(op, _as_dask(x)._meta, *args, **kwargs)  # vjp's TypeError for a non-operator
    plan = _Plan(op, (x, *args), kwargs)
    out0, pull0 = plan.dry_run(vjp_of)  # also vjp's TypeError for a function it does not know
    pairs = _objects(plan, functools.partial(_solve, vjp_of, plan.keys(), plan.static))
    out = _extract(plan, pairs, 0, out0, "o")
    out_ind, _ = plan.out_layout(tuple(out0.shape), "o")
    grad_meta = plan.meta(plan.x.ndim, pull0(out0).dtype)
    # The gradient has x's layout; x's core axes are new outputs of the pullback.
    x_core = {label: plan.x.shape[d] for d, label in enumerate(plan.x_ind) if label not in plan.batch}
    out_shape = tuple(out.shape)

    def vjp_fn(cotangent: Any) -> Any:
        if not _compat.is_array_api_obj(cotangent) or tuple(cotangent.shape) != out_shape:
            got = tuple(cotangent.shape) if _compat.is_array_api_obj(cotangent) else type(cotangent).__name__
            msg = f"vjp_fn() argument 'cotangent' must be an array of shape {out_shape}, got {got}"
            raise ValueError(msg)
        cot = _as_dask(cotangent).rechunk(out.chunks)
        return da.blockwise(
            _pull, plan.x_ind, pairs, plan.batch, cot, out_ind, new_axes=x_core, concatenate=True, meta=grad_meta
        )

    return out, vjp_fn


def _objects(plan: _Plan, solve: Callable[..., Any]) -> Any:
    """One task per block of rows, returning what ``solve`` returns (a tuple, not an array)."""
    meta = np.empty((0,) * len(plan.batch), dtype=object)
    return da.blockwise(solve, plan.batch, *plan.inputs(), concatenate=True, meta=meta)


def _extract(plan: _Plan, results: Any, index: int, dry: Any, name: str) -> Any:
    ind, core = plan.out_layout(tuple(dry.shape), name)
    getter = functools.partial(_field, index)
    return da.blockwise(getter, ind, results, plan.batch, new_axes=core, meta=plan.meta(len(ind), dry.dtype))
