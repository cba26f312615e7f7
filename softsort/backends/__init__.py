"""Backend adapters: the only place where jax, torch or cupy are imported.

:func:`get_backend` picks the adapter for an array namespace. A framework module is
imported only when the user has passed an array of that framework, so ``import softsort``
and a call on NumPy input import nothing else.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import _compat
from ._base import Backend

__all__ = ["Backend", "get_backend"]


@functools.cache
def get_backend(xp: Any) -> Backend:
    """Return the (cached) adapter for the array namespace ``xp``."""
    if _compat.is_jax_namespace(xp):
        from ._jax import JaxBackend

        return JaxBackend(xp)
    if _compat.is_torch_namespace(xp):
        from ._torch import TorchBackend

        return TorchBackend(xp)
    if _compat.is_cupy_namespace(xp):
        from ._cupy import CupyBackend

        return CupyBackend(xp)
    if _compat.is_numpy_namespace(xp):
        from ._numpy import NumpyBackend

        return NumpyBackend(xp)
    return Backend(xp)
