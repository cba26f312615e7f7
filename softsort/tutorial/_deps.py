"""Import optional dependencies with a message that says which extra to install."""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from types import ModuleType

#: softsort's name on PyPI (``softsort`` there is another author's project); the import name is ``softsort``.
DISTRIBUTION = "softsort-ot"

#: module name -> (pip distribution, softsort extra that provides it)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "examples"),
    "scipy": ("scipy", "examples"),
    "sklearn": ("scikit-learn", "examples"),
    "tqdm": ("tqdm", "examples"),
    "jax": ("jax", "jax"),
    "flax": ("flax", "examples,jax"),
    "optax": ("optax", "examples,jax"),
    "torch": ("torch", "torch"),
}


class MissingDependencyError(ImportError):
    """An optional dependency of the tutorial is not installed (the message says which extra)."""


def install_hint(name: str) -> str:
    """The ``pip install`` command that provides module ``name``.

    Parameters
    ----------
    name : str
        Top-level module name, e.g. ``"matplotlib"`` or ``"flax"``.

    Returns
    -------
    str
        A message naming the extra to install.
    """
    top = name.split(".")[0]
    dist, extra = EXTRAS.get(top, (top, "examples"))
    cmd = f'pip install "{DISTRIBUTION}[{extra}]"'
    if top in ("flax", "optax"):
        cmd += " flax optax"
    return f"{dist!r} is not installed; install it with: {cmd}"


def install_command(names: list[str]) -> str:
    """One ``pip install`` command providing all the modules ``names``.

    Parameters
    ----------
    names : list of str
        Top-level module names, e.g. ``["jax", "flax", "matplotlib"]``.

    Returns
    -------
    str
        E.g. ``pip install "softsort-ot[examples,jax]" flax optax``.
    """
    extras: set[str] = set()
    plain: list[str] = []
    for name in names:
        top = name.split(".")[0]
        extras.update(EXTRAS.get(top, (top, "examples"))[1].split(","))
        if top in ("flax", "optax"):
            plain += [p for p in ("flax", "optax") if p not in plain]
    order = ["examples", "jax", "torch"]
    ordered = [e for e in order if e in extras] + sorted(extras - set(order))
    return " ".join([f'pip install "{DISTRIBUTION}[{",".join(ordered)}]"', *plain])


def require(name: str) -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependencyError` naming the extra to install.

    Parameters
    ----------
    name : str
        Module to import (may be dotted, e.g. ``"flax.linen"``).

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        The module (or its top-level package) cannot be imported.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # ModuleNotFoundError included
        raise MissingDependencyError(install_hint(name)) from exc


@contextlib.contextmanager
def quiet_int64_warning() -> Iterator[None]:
    """Silence JAX's "Explicitly requested dtype int64" UserWarning (JAX without x64).

    softsort's convergence check casts the iteration count to int64; JAX without
    ``jax_enable_x64`` truncates it to int32 (harmless here) and warns each time it traces.

    Yields
    ------
    None
        Inside the block the warning is ignored.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Explicitly requested dtype int64", category=UserWarning)
        yield
