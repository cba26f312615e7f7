"""The one module that imports array-api-compat; everything else imports from here."""

from __future__ import annotations

from typing import Any

from array_api_compat import (
    array_namespace,
    is_array_api_obj,
    is_cupy_namespace,
    is_dask_array,
    is_jax_array,
    is_jax_namespace,
    is_lazy_array,
    is_numpy_array,
    is_numpy_namespace,
    is_torch_array,
    is_torch_namespace,
    is_writeable_array,
)
from array_api_compat import device as _device


def device(x: Any) -> Any:
    """``array_api_compat.device``, except ``None`` for a JAX array spread over several devices.

    There ``array_api_compat.device`` returns the array's sharding, which only fits arrays of
    its rank and divisible shape (``asarray(eps, device=NamedSharding(mesh, P("b", None)))``
    raises for a 0-d ``eps``). Arrays created without a device are placed by JAX, and
    operations with the sharded input follow its sharding, as they do under ``jax.jit``.
    """
    dev = _device(x)
    if dev is not None and is_jax_array(x) and len(getattr(dev, "device_set", ())) > 1:
        return None
    return dev


def any_dask_array(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a positional or keyword argument is a dask array (dask is never imported here)."""
    return any(is_dask_array(a) for a in args) or any(is_dask_array(v) for v in kwargs.values())


__all__ = [
    "any_dask_array",
    "array_namespace",
    "device",
    "is_array_api_obj",
    "is_cupy_namespace",
    "is_dask_array",
    "is_jax_array",
    "is_jax_namespace",
    "is_lazy_array",
    "is_numpy_array",
    "is_numpy_namespace",
    "is_torch_array",
    "is_torch_namespace",
    "is_writeable_array",
]
