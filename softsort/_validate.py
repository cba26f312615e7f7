"""Checks of user input: every failure names the argument and the value received.

Values are read only where the backend says they are concrete (not under ``jax.jit``,
``jax.vmap`` or ``torch.func.vmap``); shapes and static arguments are always checked.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
import struct
import sys
import types
from typing import Any, cast

from . import _compat, _ott_compat
from ._core._config import DUAL_START_BELOW, SolverConfig, smallest_epsilon

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
    "newton": False,
}
OPTION_NAMES = ("epsilon", "squashing_fun", *_SOLVER_OPTIONS)
_IMPLICIT_SOLVERS = ("auto", "dense", "cg")
_INITS = ("auto", "dual", "zeros")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_masked(value: Any) -> bool:
    numpy = sys.modules.get("numpy")  # never import NumPy just to ask
    return numpy is not None and isinstance(value, numpy.ma.MaskedArray)


def _refuse_masked(fname: str, label: str, value: Any) -> None:
    # A masked array passes as a NumPy array: its masked entries would be ranked as data,
    # and a NaN under the mask would pass the finite check (np.ma's reductions skip it).
    if _is_masked(value):
        msg = (
            f"{fname}() {label} is a numpy.ma.MaskedArray; masks are not supported "
            "(masked entries would be treated as data): pass numpy.ma.filled(x, value) or the "
            "unmasked values"
        )
        raise TypeError(msg)


def _refuse_meta(fname: str, name: str, value: Any) -> None:
    # Meta tensors have no values, and the Sinkhorn loop stops on the values of its error.
    if _compat.is_torch_array(value) and value.device.type == "meta":
        msg = (
            f"{fname}() argument {name!r} is a PyTorch meta tensor; softsort needs values (its "
            "Sinkhorn loop stops on the error it measures): pass a CPU or GPU tensor"
        )
        raise ValueError(msg)


def namespace(fname: str, **arrays: Any) -> Any:
    """The array namespace shared by the named arrays (``None`` entries are skipped).

    Every named value other than ``None`` must be an array (the first one is the input);
    masked arrays and meta tensors are refused.
    """
    for name, value in arrays.items():
        if value is None:
            continue
        if not _compat.is_array_api_obj(value):
            hint = "; wrap it with numpy.asarray(...)" if name == next(iter(arrays)) else ""
            msg = (
                f"{fname}() argument {name!r} must be an array of a library that follows the "
                f"array API standard (NumPy, JAX, PyTorch, CuPy, ...), got {type(value).__name__} "
                f"{_short(value)}{hint}"
            )
            raise TypeError(msg)
        _refuse_masked(fname, f"argument {name!r}", value)
        _refuse_meta(fname, name, value)
    given = {k: v for k, v in arrays.items() if v is not None}
    try:
        return _compat.array_namespace(*given.values())
    except TypeError:
        kinds = ", ".join(f"{k}: {type(v).__module__}.{type(v).__name__}" for k, v in given.items())
        msg = f"{fname}() got arrays of different libraries ({kinds}); pass arrays of one library"
        raise TypeError(msg) from None


def same_library(fname: str, name: str, xp: Any, value: Any) -> None:
    """``value`` must be an array of the namespace ``xp`` (TypeError naming ``name``)."""
    if not _compat.is_array_api_obj(value):
        msg = f"{fname}() {name} must be an array of the input's library, got {type(value).__name__} {_short(value)}"
        raise TypeError(msg)
    _refuse_masked(fname, name, value)
    try:
        other = _compat.array_namespace(value)
    except TypeError:
        other = None
    if other is not xp and getattr(other, "__name__", None) != getattr(xp, "__name__", ""):
        kind = f"{type(value).__module__}.{type(value).__name__}"
        library = xp.__name__.removeprefix("array_api_compat.")
        msg = f"{fname}() {name} must be an array of the input's library ({library}), got a {kind}"
        raise TypeError(msg)


def placement(x: Any) -> Any:
    """The device to create arrays on for input ``x`` (``None``: let the library place them; see ``_compat.device``)."""
    return _compat.device(x)


def stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called here that points at the first frame outside softsort."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame: types.FrameType | None
    frame, level = sys._getframe(1), 1  # the caller of stacklevel() is level 1 of its warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def integer(fname: str, name: str, value: Any, kind: str = "an integer") -> int:
    """``value`` as a Python int: any integer type (``numpy.int64`` too), not a bool."""
    if isinstance(value, bool):
        msg = f"{fname}() argument {name!r} must be {kind}, got {value!r}"
        raise TypeError(msg)
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{fname}() argument {name!r} must be {kind}, got {_short(value)}"
        raise TypeError(msg) from None


def as_int(fname: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """A Python integer in ``[low, high]``."""
    number = integer(fname, name, value)
    if number < low or (high is not None and number > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"{fname}() argument {name!r} must be {bound}, got {number}"
        raise ValueError(msg)
    return number


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
        if not -ndim <= int(a) < ndim:
            msg = f"{fname}() argument 'axis' = {axis!r} is out of range for an array of {ndim} dimension(s)"
            raise ValueError(msg)
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        msg = f"{fname}() argument 'axis' = {axis!r} repeats an axis"
        raise ValueError(msg)
    return tuple(sorted(out))


def compute_dtype(fname: str, name: str, xp: Any, x: Any, /, **others: Any) -> tuple[Any, Any]:
    """(dtype to compute in, dtype to return) for the input ``x`` and the other arrays.

    The output dtype is the promoted dtype of every floating array among ``x`` and
    ``others`` (integer arrays and Python numbers do not promote); the default floating
    dtype if there is none. float16/bfloat16 are computed in float32 and cast back.
    """
    floating = []
    for label, arr in {name: x, **others}.items():
        if arr is None or not _compat.is_array_api_obj(arr):
            continue
        dt = arr.dtype
        if xp.isdtype(dt, "complex floating"):
            msg = f"{fname}() argument {label!r} must be real, got complex dtype {dt}"
            raise TypeError(msg)
        if xp.isdtype(dt, "bool"):
            msg = f"{fname}() argument {label!r} must hold numbers, got dtype {dt}"
            raise TypeError(msg)
        if xp.isdtype(dt, "real floating"):
            floating.append(dt)
        elif not xp.isdtype(dt, "integral"):
            msg = f"{fname}() argument {label!r} has unsupported dtype {dt}"
            raise TypeError(msg)
    if not floating:
        info = xp.__array_namespace_info__()
        default = info.default_dtypes(device=_compat.device(x))["real floating"]
        return default, default
    out = floating[0] if len(floating) == 1 else xp.result_type(*floating)
    if xp.finfo(out).bits < 32:  # float16 / bfloat16: compute in float32, cast back
        return xp.float32, out
    return out, out


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
    if not (math.isfinite(threshold) and cast(float, threshold) > 0):
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
        # (cast: a numbers.Real compares as a float does; typeshed's Real declares no comparisons)
        if not 1.0 <= cast(float, momentum) < 2.0:
            msg = f"{fname}() option 'momentum' must be in [1, 2) (1 = plain Sinkhorn), got {momentum!r}"
            raise ValueError(msg)
        momentum = float(momentum)
    init = merged["init"]
    if init not in _INITS:
        msg = f"{fname}() option 'init' must be one of {_INITS}, got {_short(init)}"
        raise ValueError(msg)
    budget = as_int(fname, "memory_budget", merged["memory_budget"], 1)
    newton = merged["newton"]
    if not isinstance(newton, bool):
        msg = f"{fname}() option 'newton' must be True or False, got {_short(newton)}"
        raise TypeError(msg)
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
        newton=newton,
    )
    return epsilon, squash, config


def epsilon_range(dtype: Any, xp: Any) -> tuple[float, float]:
    """``(low, high)``: the epsilons the solver supports in the compute dtype ``dtype``.

    ``low`` is the solver's :func:`softsort._core._config.smallest_epsilon` (the machine
    epsilon: why is said there); ``tests/test_bad_inputs.py::test_epsilon_range_ends_are_usable``
    checks both ends.

    ``high`` is ``1 / machine epsilon`` (float32: about 8.4e6, float64: 4.5e15): above it
    every ``cost / epsilon`` is below the machine epsilon, ``exp(-cost / epsilon)`` rounds
    to 1 or its neighbour, the plan is the product measure and every operator returns its
    ``epsilon -> inf`` limit (the mean); a larger value is a mistake rather than a request.
    """
    low = smallest_epsilon(xp, dtype)
    return low, 1.0 / low


def _dtype_name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def start_for(config: SolverConfig, epsilon: Any, dtype: Any, xp: Any) -> SolverConfig:
    """``config`` with ``init="auto"`` decided for a number ``epsilon`` (checked before).

    As the solver decides it for an array epsilon (``_sinkhorn._start``): ``epsilon <
    DUAL_START_BELOW`` compared in the compute ``dtype``, so that ``0.0049999999``, which
    float32 rounds to ``5e-3``, starts as it does traced under ``jax.jit``. Known here, the
    exact dual is not computed where it would not be used. An array epsilon is left to the
    solver.
    """
    if config.init != "auto" or isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        return config
    bits = xp.finfo(dtype).bits
    if bits == 64:
        below = float(epsilon) < DUAL_START_BELOW
    elif bits == 32:
        below = _float32(float(epsilon)) < _float32(DUAL_START_BELOW)
    else:  # no such compute dtype today (float16 and bfloat16 compute in float32)
        return config
    return dataclasses.replace(config, init="dual" if below else "by_targets")


def _float32(value: float) -> float:
    return cast(float, struct.unpack("f", struct.pack("f", value))[0])


def epsilon_array(fname: str, backend: Any, epsilon: Any, dtype: Any, dev: Any) -> Any:
    """``epsilon`` as a 0-d array of the compute dtype, checked in that dtype where its value is known.

    Documented with the ``epsilon`` option of :func:`softsort.sort`: finite and within
    :func:`epsilon_range` of the compute dtype, after conversion (``1e39`` is inf in float32).
    """
    xp = backend.xp
    low, high = epsilon_range(dtype, xp)
    where = f"the range the solver supports in {_dtype_name(dtype)}: [{low:.3g}, {high:.3g}]"
    if isinstance(epsilon, bool):
        msg = f"{fname}() option 'epsilon' must be a number, got {epsilon!r}"
        raise TypeError(msg)
    if isinstance(epsilon, numbers.Real):
        try:
            value = float(epsilon)
        except OverflowError:  # a Python int beyond float64
            bits = cast(int, math.trunc(epsilon)).bit_length()
            msg = f"{fname}() option 'epsilon' must be finite and > 0, got an integer of {bits} bits"
            raise ValueError(msg) from None
        if not (math.isfinite(value) and value > 0):
            msg = f"{fname}() option 'epsilon' must be finite and > 0, got {epsilon!r}"
            raise ValueError(msg)
        if not low <= value <= high:
            msg = f"{fname}() option 'epsilon' = {epsilon!r} is outside {where}"
            raise ValueError(msg)
        return xp.asarray(value, dtype=dtype, device=dev)
    if not _compat.is_array_api_obj(epsilon):
        msg = f"{fname}() option 'epsilon' must be a number or a 0-d array, got {_short(epsilon)}"
        raise TypeError(msg)
    same_library(fname, "option 'epsilon'", xp, epsilon)
    if epsilon.ndim != 0:
        msg = f"{fname}() option 'epsilon' must be a scalar, got an array of shape {tuple(epsilon.shape)}"
        raise ValueError(msg)
    if xp.isdtype(epsilon.dtype, "bool") or xp.isdtype(epsilon.dtype, "complex floating"):
        msg = f"{fname}() option 'epsilon' must be a real number, got an array of dtype {epsilon.dtype}"
        raise TypeError(msg)
    eps = as_compute(xp, epsilon, dtype, dev)
    valid = xp.isfinite(eps) & (eps >= low) & (eps <= high)
    if violated(backend, valid):
        if violated(backend, xp.isfinite(eps) & (eps > 0)):
            msg = f"{fname}() option 'epsilon' must be finite and > 0, got {float(backend.stop_gradient(eps))!r}"
        else:
            msg = f"{fname}() option 'epsilon' = {float(backend.stop_gradient(eps))!r} is outside {where}"
        raise ValueError(msg)
    # Under tracing the check above cannot run: make a bad value visible as NaN output
    # rather than a finite, meaningless result (a negative epsilon "sorts" backwards).
    return xp.where(valid, eps, xp.full_like(eps, math.nan))


def weights(fname: str, name: str, backend: Any, w: Any, dtype: Any, dev: Any, size: int | None = None) -> Any:
    """A 1-D probability vector: positive entries summing to one (checked where known)."""
    xp = backend.xp
    if not _compat.is_array_api_obj(w):
        msg = f"{fname}() argument {name!r} must be a 1-D array, got {type(w).__name__} {_short(w)}"
        raise TypeError(msg)
    same_library(fname, f"argument {name!r}", xp, w)
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
        msg = f"{fname}() argument {name!r} must sum to 1, got a sum of {float(backend.stop_gradient(total))!r}"
        raise ValueError(msg)
    # Traced weights cannot be checked: invalid ones turn the output into NaN.
    valid = (xp.abs(total - 1.0) <= tol) & xp.all(w > 0)
    return xp.where(valid, w, xp.full_like(w, math.nan))


def squashing(fname: str, backend: Any, fun: Any) -> Any:
    """``fun`` wrapped so that its output is checked: an array of the input's library, dtype and values finite.

    Documented with the ``squashing_fun`` option of :func:`softsort.sort`; the shape is
    checked by the pipeline (:func:`softsort._core._operators.run`).
    """
    if fun is None:
        return None
    xp = backend.xp
    name = getattr(fun, "__name__", type(fun).__name__)

    def checked(values: Any) -> Any:
        z = fun(values)
        if not _compat.is_array_api_obj(z):
            msg = (
                f"{fname}() option 'squashing_fun' ({name}) must return an array of the input's library "
                f"({xp.__name__}), got {type(z).__name__} {_short(z)}"
            )
            raise TypeError(msg)
        same_library(fname, f"option 'squashing_fun' ({name}) output", xp, z)
        if z.dtype != values.dtype:
            msg = (
                f"{fname}() option 'squashing_fun' ({name}) must return the dtype it receives "
                f"({values.dtype}), got {z.dtype}"
            )
            raise TypeError(msg)
        if tuple(z.shape) == tuple(values.shape) and violated(backend, xp.all(xp.isfinite(z))):
            bad = int(xp.sum(xp.astype(~xp.isfinite(z), xp.int32)))
            msg = f"{fname}() option 'squashing_fun' ({name}) returned {bad} non-finite value(s) (nan or inf)"
            raise ValueError(msg)
        return z

    return checked


def cotangent(fname: str, backend: Any, cot: Any, shape: tuple[int, ...]) -> None:
    """The cotangent given to the pull-back of :func:`softsort.vjp`: same library and shape, real, finite."""
    xp = backend.xp
    same_library(fname, "argument 'cotangent'", xp, cot)
    if not (xp.isdtype(cot.dtype, "real floating") or xp.isdtype(cot.dtype, "integral")):
        msg = f"{fname}() argument 'cotangent' must hold real numbers, got dtype {cot.dtype}"
        raise TypeError(msg)
    if tuple(cot.shape) != tuple(shape):
        msg = f"{fname}() cotangent must have the output's shape {tuple(shape)}, got {tuple(cot.shape)}"
        raise ValueError(msg)
    finite(fname, "cotangent", backend, cot)


def levels(fname: str, q: Any) -> None:
    """``q`` of :func:`softsort.quantile` given as Python values: a real number or a sequence of them."""
    if q is None or _compat.is_array_api_obj(q):  # None: the default levels
        return
    items = q if isinstance(q, (list, tuple)) else [q]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in items):
        msg = f"{fname}() argument 'q' must be a number, a sequence of numbers or a 1-D array, got {_short(q)}"
        raise TypeError(msg)


def mask(fname: str, xp: Any, value: Any, shape: tuple[int, ...], name: str = "x") -> Any:
    """``mask=``: a boolean array of the input's library broadcastable to ``shape``, broadcast."""
    if not _compat.is_array_api_obj(value):
        msg = (
            f"{fname}() argument 'mask' must be a boolean array of the input's library, got "
            f"{type(value).__name__} {_short(value)}"
        )
        raise TypeError(msg)
    same_library(fname, "argument 'mask'", xp, value)
    if value.dtype != xp.bool:
        msg = f"{fname}() argument 'mask' must have a boolean dtype (True: the entry takes part), got {value.dtype}"
        raise TypeError(msg)
    got = tuple(value.shape)
    fits = len(got) <= len(shape) and all(g in (1, s) for g, s in zip(reversed(got), reversed(shape), strict=False))
    if not fits:
        msg = f"{fname}() argument 'mask' of shape {got} does not broadcast to the shape {shape} of {name!r}"
        raise ValueError(msg)
    return value if got == shape else xp.broadcast_to(value, shape)
