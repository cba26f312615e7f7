"""The softsort tutorial: demo figures, data pipeline and training scripts.

This package backs ``python -m softsort demo`` / ``python -m softsort train`` and the
example gallery of the documentation, so the command line and the docs run the same code.
It needs the optional extras (``pip install "softsort-ot[examples]"``, plus ``[jax]`` or
``[torch]`` for training); every framework is imported lazily, inside the functions that
use it.
"""

from __future__ import annotations

__all__ = ["data", "demo", "training"]
