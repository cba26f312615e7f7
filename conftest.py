"""Doctest collection: skip adapter modules whose framework is not installed."""

from __future__ import annotations

import importlib.util

collect_ignore = [
    f"softsort/backends/_{name}.py"
    for name in ("jax", "torch", "cupy", "dask")
    if importlib.util.find_spec(name) is None
]
collect_ignore.append("softsort/__main__.py")
