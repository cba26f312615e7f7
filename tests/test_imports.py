"""Import hygiene: softsort imports no framework; NumPy calls load none either."""

from __future__ import annotations

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
