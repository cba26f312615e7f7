"""Import hygiene: softsort imports no framework; NumPy calls load none either."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.backend("numpy")
def test_import_and_numpy_call_import_no_framework() -> None:
    code = (
        "import sys, numpy as np, softsort\n"
        "softsort.ranks(np.array([3.0, 1.0, 2.0]))\n"
        "out, f = softsort.vjp(softsort.sort, np.array([3.0, 1.0]))\n"
        "f(np.ones(2))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'torch', 'cupy', 'matplotlib', 'scipy'))\n"
        "print(','.join(bad))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""


@pytest.mark.backend("numpy")
def test_public_names() -> None:
    import softsort

    for name in softsort.__all__:
        assert hasattr(softsort, name)
    assert softsort.__version__


# -- the layers, read from the source ------------------------------------------------------------
# Frameworks a user brings; the library may import them only where it adapts to them.
FRAMEWORKS = {"jax", "jaxlib", "torch", "cupy", "dask", "flax", "optax"}
# The softsort that is imported (the checkout, or the installed wheel under `nox -s wheel`).
PACKAGE = pathlib.Path(importlib.util.find_spec("softsort").origin).parent  # type: ignore[arg-type,union-attr]
# Where a framework may be imported, and which. softsort/backends/ adapts the math to each
# array library. softsort/tutorial/ is not part of the library: it is a consumer of it
# (shipped inside the package so that `python -m softsort demo|train` needs no second
# top-level package), and a consumer builds its model and its input arrays in its own
# framework. So its model files import their framework, and demo.py creates JAX or PyTorch
# inputs for `--backend`; nothing else in the tutorial imports one.
ALLOWED_FRAMEWORKS = {
    "backends": {"jax", "jaxlib", "torch", "cupy", "dask"},
    "tutorial/_jax_model.py": {"jax", "flax", "optax"},
    "tutorial/_torch_model.py": {"torch"},
    "tutorial/demo.py": {"jax", "torch"},
}


def _imports(path: pathlib.Path, package: list[str] | None = None) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, inside a function) of every import in ``path``.

    Relative imports are resolved against the module's package; the tutorial's
    ``require("name")`` (its lazy import with an install hint) counts as an import.
    """
    import ast

    if package is None:  # a module's package; an __init__'s is its own folder
        package = list(path.relative_to(PACKAGE.parent).parts[:-1])
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                if child.module:
                    found.append((module, child.lineno, in_function))
                found.extend((f"{module}.{a.name}", child.lineno, in_function) for a in child.names)
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id in ("require", "import_module")
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append((child.args[0].value, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _modules() -> list[pathlib.Path]:
    found = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert PACKAGE / "tutorial" / "training.py" in found, PACKAGE  # the rules below see the whole package
    return found


def test_frameworks_imported_only_by_adapters_and_the_tutorial_models() -> None:
    bad = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = next((v for k, v in ALLOWED_FRAMEWORKS.items() if rel == k or rel.startswith(k + "/")), set())
        for name, line, _ in _imports(path):
            top = name.split(".")[0]
            if top in FRAMEWORKS and top not in allowed:
                bad.append(f"softsort/{rel}:{line} imports {name}")
    assert not bad, bad


def test_tutorial_is_a_leaf_on_the_public_api() -> None:
    import softsort

    public = set(softsort.__all__) | {"__version__"}
    bad = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        in_tutorial = rel.startswith("tutorial/")
        for name, line, in_function in _imports(path):
            parts = name.split(".")
            if parts[0] != "softsort":
                continue
            if in_tutorial:
                # softsort itself and the names it exports; the tutorial's own modules
                ok = len(parts) == 1 or parts[1] == "tutorial" or (len(parts) == 2 and parts[1] in public)
                if not ok:
                    bad.append(f"softsort/{rel}:{line} imports {name} (not public API)")
            elif len(parts) > 1 and parts[1] == "tutorial":
                # only the command line, and only when a command runs (import softsort stays light)
                if rel != "__main__.py" or not in_function:
                    bad.append(f"softsort/{rel}:{line} imports {name}")
    assert not bad, bad
    # attribute access to private names counts too: softsort._api.sort would bypass the rule
    import ast

    for path in (PACKAGE / "tutorial").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "softsort":
                assert node.attr in public, f"{path.name}:{node.lineno} uses softsort.{node.attr}"


def test_import_rules_see_what_they_forbid(tmp_path: pathlib.Path) -> None:
    """The checker finds a relative private import, a require() of a framework and a nested import."""
    fake = tmp_path / "probe.py"
    fake.write_text("from .. import _api\n\ndef f():\n    import torch\n    require('flax.linen')\n")
    found = _imports(fake, ["softsort", "tutorial"])
    assert ("softsort._api", 1, False) in found
    assert ("torch", 4, True) in found
    assert ("flax.linen", 5, True) in found
