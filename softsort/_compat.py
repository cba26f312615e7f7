"""The one module that imports array-api-compat; everything else imports from here."""

from __future__ import annotations

from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_cupy_namespace,
    is_jax_array,
    is_jax_namespace,
    is_lazy_array,
    is_numpy_array,
    is_numpy_namespace,
    is_torch_array,
    is_torch_namespace,
    is_writeable_array,
)

__all__ = [
    "array_namespace",
    "device",
    "is_array_api_obj",
    "is_cupy_namespace",
    "is_jax_array",
    "is_jax_namespace",
    "is_lazy_array",
    "is_numpy_array",
    "is_numpy_namespace",
    "is_torch_array",
    "is_torch_namespace",
    "is_writeable_array",
]
