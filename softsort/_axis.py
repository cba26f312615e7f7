"""``apply_on_axis``: a function of one 1-D array, applied along any axis (or axes) of an array."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _compat
from . import _validate as check
from ._api import _Layout
from .backends import get_backend

__all__ = ["apply_on_axis"]


def apply_on_axis(op: Callable[..., Any], inputs: Any, axis: Any, *args: Any, **kwargs: Any) -> Any:
    """Apply ``op``, a function of one 1-D array, along ``axis`` of ``inputs``.

    OTT-JAX's ``soft_sort.apply_on_axis``, on every array library: the axes named by
    ``axis`` are moved last and merged into one axis of ``n`` values, the other axes are
    flattened into a batch of rows, ``op(row, *args, **kwargs)`` maps each row of ``n``
    values to ``m`` values, and the results are put back, their axis of ``m`` values at
    the position of the first (smallest) axis of ``axis``.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> x = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    >>> softsort.apply_on_axis(np.sort, x, 0)  # each column sorted
    array([[0., 1., 2.],
           [3., 5., 4.]])
    >>> def top(u, k):
    ...     return np.sort(u)[-k:]
    >>> softsort.apply_on_axis(top, x, (0, 1), 2).shape  # both axes merged: 6 values, 2 kept
    (2,)

    Parameters
    ----------
    op : callable
        ``op(row, *args, **kwargs)`` takes a 1-D array of ``n`` values and returns a 1-D
        array of ``m`` values (``m`` the same for every row).
    inputs : array
        Any array API array with at least one dimension.
    axis : int or tuple of int
        The axis, or axes (merged into one, in increasing order), ``op`` works along.
    *args, **kwargs
        Passed to ``op`` unchanged, the same for every row.

    Returns
    -------
    array
        The shape of ``inputs`` without ``axis``, with an axis of ``m`` values inserted at
        ``min(axis)``.

    Raises
    ------
    TypeError
        ``inputs`` is not an array, ``axis`` not an integer or a tuple of integers,
        ``op`` not callable.
    ValueError
        ``axis`` out of range or repeated, no row to apply ``op`` to (a zero-size batch),
        ``op`` returning something else than one 1-D array per row.

    Notes
    -----
    On JAX the rows are mapped with ``jax.vmap`` (as OTT-JAX does: ``op`` is traced once);
    on other libraries ``op`` is called row by row and the results are stacked, so ``op``
    may read values. Gradients flow through ``op`` on JAX and PyTorch.
    """
    fname = "apply_on_axis"
    if not callable(op):
        msg = f"{fname}() argument 'op' must be callable, got {check._short(op)}"
        raise TypeError(msg)
    xp = check.namespace(fname, inputs=inputs)
    if inputs.ndim == 0:
        msg = f"{fname}() argument 'inputs' must have at least one dimension, got a 0-d array"
        raise ValueError(msg)
    dims = check.axes(fname, axis, inputs.ndim, allow_tuple=True)
    layout = _Layout(xp, tuple(inputs.shape), dims)
    if layout.size == 0:
        msg = f"{fname}() has no row to apply 'op' to: inputs of shape {tuple(inputs.shape)} along axis {axis!r}"
        raise ValueError(msg)

    def row_op(row: Any) -> Any:
        out = op(row, *args, **kwargs)
        if not _compat.is_array_api_obj(out) or out.ndim != 1:
            got = f"shape {tuple(out.shape)}" if _compat.is_array_api_obj(out) else type(out).__name__
            msg = f"{fname}() argument 'op' must return one 1-D array per row of {layout.n} values, got {got}"
            raise ValueError(msg)
        return out

    result = get_backend(xp).map_rows(row_op, layout.flatten(inputs))
    return layout.unflatten_output(result)
