"""Checks of user input: every failure names the argument and the value received.

Values are read only where the backend says they are concrete (not under ``jax.jit``,
``jax.vmap`` or ``torch.func.vmap``); shapes and static arguments are always checked.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from . import _compat, _ott_compat
from ._core._config import ACCELERATE_BELOW, SolverConfig

DEFAULT_EPSILON = 1e-2
_SOLVER_OPTIONS = {
    "threshold": 1e-3,
    "max_iterations": 2000,
    "min_iterations": 0,
    "inner_iterations": 10,
    "implicit_diff": True,
    "implicit_solver": "auto",
    "momentum": "adaptive",
    "init": "auto",
    "memory_budget": 2**30,
}
OPTION_NAMES = ("epsilon", "squashing_fun", *_SOLVER_OPTIONS)
_IMPLICIT_SOLVERS = ("auto", "dense", "cg")
_INITS = ("auto", "dual", "zeros")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def namespace(fname: str, **arrays: Any) -> Any:
    """The array namespace shared by the named arrays (``None`` entries are skipped)."""
    given = {k: v for k, v in arrays.items() if v is not None and _compat.is_array_api_obj(v)}
    first = next(iter(arrays))
    if first not in given:
        value = arrays[first]
        msg = (
            f"{fname}() argument {first!r} must be an array of a library that follows the "
            f"array API standard (NumPy, JAX, PyTorch, CuPy, ...), got {type(value).__name__} "
            f"{_short(value)}; wrap it with numpy.asarray(...)"
        )
        raise TypeError(msg)
    try:
        return _compat.array_namespace(*given.values())
    except TypeError:
        kinds = ", ".join(f"{k}: {type(v).__module__}.{type(v).__name__}" for k, v in given.items())
        msg = f"{fname}() got arrays of different libraries ({kinds}); pass arrays of one library"
        raise TypeError(msg) from None


def as_int(fname: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """A Python integer in ``[low, high]``."""
    if isinstance(value, bool):
        msg = f"{fname}() argument {name!r} must be an integer, got {value!r}"
        raise TypeError(msg)
    try:
        value = operator.index(value)
    except TypeError:
        msg = f"{fname}() argument {name!r} must be an integer, got {_short(value)}"
        raise TypeError(msg) from None
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"{fname}() argument {name!r} must be {bound}, got {value}"
        raise ValueError(msg)
    return value


def axes(fname: str, axis: Any, ndim: int, allow_tuple: bool = False) -> tuple[int, ...]:
    """Normalized, sorted, unique axes."""
    raw = axis if (allow_tuple and isinstance(axis, (tuple, list))) else (axis,)
    if not raw:
        msg = f"{fname}() argument 'axis' must name at least one axis, got {axis!r}"
        raise ValueError(msg)
    out = []
    for a in raw:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            kind = "an integer or a tuple of integers" if allow_tuple else "an integer"
            msg = f"{fname}() argument 'axis' must be {kind}, got {_short(axis)}"
            raise TypeError(msg)
        if not -ndim <= a < ndim:
            msg = f"{fname}() argument 'axis' = {axis!r} is out of range for an array of {ndim} dimension(s)"
            raise ValueError(msg)
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        msg = f"{fname}() argument 'axis' = {axis!r} repeats an axis"
        raise ValueError(msg)
    return tuple(sorted(out))


def compute_dtype(fname: str, name: str, xp: Any, x: Any) -> tuple[Any, Any]:
    """(dtype to compute in, dtype to return) for the array ``x``."""
    dt = x.dtype
    if xp.isdtype(dt, "complex floating"):
        msg = f"{fname}() argument {name!r} must be real, got complex dtype {dt}"
        raise TypeError(msg)
    if xp.isdtype(dt, "bool"):
        msg = f"{fname}() argument {name!r} must hold numbers, got dtype {dt}"
        raise TypeError(msg)
    if xp.isdtype(dt, "integral"):
        info = xp.__array_namespace_info__()
        default = info.default_dtypes(device=_compat.device(x))["real floating"]
        return default, default
    if xp.isdtype(dt, "real floating"):
        if xp.finfo(dt).bits < 32:  # float16 / bfloat16: compute in float32, cast back
            return xp.float32, dt
        return dt, dt
    msg = f"{fname}() argument {name!r} has unsupported dtype {dt}"
    raise TypeError(msg)


def as_compute(xp: Any, value: Any, dtype: Any, dev: Any) -> Any:
    """``value`` in the compute dtype; Python values are placed on the input's device.

    Arrays keep their placement: moving a traced array (e.g. batched by ``jax.vmap``
    while the input is not) to a concrete device is not possible, and frameworks place
    scalars themselves.
    """
    if _compat.is_array_api_obj(value):
        return value if value.dtype == dtype else xp.astype(value, dtype)
    return xp.asarray(value, dtype=dtype, device=dev)


def violated(backend: Any, ok: Any) -> bool:
    """Whether the 0-d boolean ``ok`` is known to be False (unknown under tracing: no)."""
    return backend.is_concrete(ok) and not bool(ok)


def finite(fname: str, name: str, backend: Any, x: Any) -> None:
    xp = backend.xp
    if violated(backend, xp.all(xp.isfinite(x))):
        bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int32)))
        msg = f"{fname}() argument {name!r} holds {bad} non-finite value(s) (nan or inf)"
        raise ValueError(msg)


def options(fname: str, given: dict[str, Any]) -> tuple[Any, Any, SolverConfig]:
    """``(epsilon, squashing_fun, SolverConfig)`` from the ``**options`` of a call."""
    given = _ott_compat.translate(fname, given)  # OTT-JAX's keywords -> softsort's options
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        msg = (
            f"{fname}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"the solver options are {', '.join(OPTION_NAMES)}"
        )
        raise TypeError(msg)
    epsilon = given.get("epsilon", DEFAULT_EPSILON)
    squash = given.get("squashing_fun")
    if squash is not None and not callable(squash):
        msg = f"{fname}() option 'squashing_fun' must be callable or None, got {_short(squash)}"
        raise TypeError(msg)
    merged = {**_SOLVER_OPTIONS, **{k: v for k, v in given.items() if k in _SOLVER_OPTIONS}}
    threshold = merged["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        msg = f"{fname}() option 'threshold' must be a number, got {_short(threshold)}"
        raise TypeError(msg)
    if not (math.isfinite(threshold) and threshold > 0):
        msg = f"{fname}() option 'threshold' must be finite and > 0, got {threshold!r}"
        raise ValueError(msg)
    max_it = as_int(fname, "max_iterations", merged["max_iterations"], 1)
    min_it = as_int(fname, "min_iterations", merged["min_iterations"], 0, max_it)
    inner = as_int(fname, "inner_iterations", merged["inner_iterations"], 1)
    implicit = merged["implicit_diff"]
    if not isinstance(implicit, bool):
        msg = f"{fname}() option 'implicit_diff' must be True or False, got {_short(implicit)}"
        raise TypeError(msg)
    solver = merged["implicit_solver"]
    if solver not in _IMPLICIT_SOLVERS:
        msg = f"{fname}() option 'implicit_solver' must be one of {_IMPLICIT_SOLVERS}, got {_short(solver)}"
        raise ValueError(msg)
    momentum = merged["momentum"]
    if momentum != "adaptive":
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            msg = f"{fname}() option 'momentum' must be 'adaptive' or a number in [1, 2), got {_short(momentum)}"
            raise TypeError(msg)
        if not 1.0 <= momentum < 2.0:
            msg = f"{fname}() option 'momentum' must be in [1, 2) (1 = plain Sinkhorn), got {momentum!r}"
            raise ValueError(msg)
        momentum = float(momentum)
    init = merged["init"]
    if init not in _INITS:
        msg = f"{fname}() option 'init' must be one of {_INITS}, got {_short(init)}"
        raise ValueError(msg)
    if isinstance(epsilon, numbers.Real) and not isinstance(epsilon, bool):
        # Decided here for a number; for an array epsilon the solver decides per problem.
        if init == "auto":
            init = "dual" if epsilon < ACCELERATE_BELOW else "zeros"
        if momentum == "adaptive" and epsilon >= ACCELERATE_BELOW:
            momentum = 1.0  # what the adaptive rule picks there; known plain, the steps are cheaper
    budget = as_int(fname, "memory_budget", merged["memory_budget"], 1)
    config = SolverConfig(
        threshold=float(threshold),
        max_iterations=max_it,
        min_iterations=min_it,
        inner_iterations=inner,
        implicit_diff=implicit,
        implicit_solver=solver,
        momentum=momentum,
        init=init,
        memory_budget=budget,
    )
    return epsilon, squash, config


def epsilon_array(fname: str, backend: Any, epsilon: Any, dtype: Any, dev: Any) -> Any:
    """``epsilon`` as a 0-d array; checked to be finite and > 0 where its value is known."""
    xp = backend.xp
    if isinstance(epsilon, bool):
        msg = f"{fname}() option 'epsilon' must be a number, got {epsilon!r}"
        raise TypeError(msg)
    if isinstance(epsilon, numbers.Real):
        if not (math.isfinite(epsilon) and epsilon > 0):
            msg = f"{fname}() option 'epsilon' must be finite and > 0, got {epsilon!r}"
            raise ValueError(msg)
        return xp.asarray(float(epsilon), dtype=dtype, device=dev)
    if not _compat.is_array_api_obj(epsilon):
        msg = f"{fname}() option 'epsilon' must be a number or a 0-d array, got {_short(epsilon)}"
        raise TypeError(msg)
    if epsilon.ndim != 0:
        msg = f"{fname}() option 'epsilon' must be a scalar, got an array of shape {tuple(epsilon.shape)}"
        raise ValueError(msg)
    eps = as_compute(xp, epsilon, dtype, dev)
    if violated(backend, xp.isfinite(eps) & (eps > 0)):
        msg = f"{fname}() option 'epsilon' must be finite and > 0, got {float(eps)!r}"
        raise ValueError(msg)
    # Under tracing the check above cannot run: make a bad value visible as NaN output
    # rather than a finite, meaningless result (a negative epsilon "sorts" backwards).
    return xp.where(eps > 0, eps, xp.full_like(eps, math.nan))


def weights(fname: str, name: str, backend: Any, w: Any, dtype: Any, dev: Any, size: int | None = None) -> Any:
    """A 1-D probability vector: positive entries summing to one (checked where known)."""
    xp = backend.xp
    if not _compat.is_array_api_obj(w):
        msg = f"{fname}() argument {name!r} must be a 1-D array, got {_short(w)}"
        raise TypeError(msg)
    if w.ndim != 1 or w.shape[0] < 1:
        msg = f"{fname}() argument {name!r} must be a non-empty 1-D array, got shape {tuple(w.shape)}"
        raise ValueError(msg)
    if size is not None and w.shape[0] != size:
        msg = f"{fname}() argument {name!r} must have {size} entries, got {w.shape[0]}"
        raise ValueError(msg)
    w = as_compute(xp, w, dtype, dev)
    if violated(backend, xp.all(xp.isfinite(w) & (w > 0))):
        msg = f"{fname}() argument {name!r} must hold finite weights > 0, got {_short(w)}"
        raise ValueError(msg)
    tol = 1e-5 * max(1, w.shape[0]) ** 0.5 + 10 * float(xp.finfo(dtype).eps)
    total = xp.sum(w)
    if violated(backend, xp.abs(total - 1.0) <= tol):
        msg = f"{fname}() argument {name!r} must sum to 1, got a sum of {float(total)!r}"
        raise ValueError(msg)
    # Traced weights cannot be checked: invalid ones turn the output into NaN.
    valid = (xp.abs(total - 1.0) <= tol) & xp.all(w > 0)
    return xp.where(valid, w, xp.full_like(w, math.nan))
