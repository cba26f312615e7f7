"""Test harness: one ``xp`` fixture over every enabled backend (array-api-extra style).

``SOFTSORT_TEST_BACKENDS`` (comma-separated: numpy, array_api_strict, jax, torch, cupy)
selects backends; by default every installed one runs. array-api-strict runs on its
default device, on ``Device("device1")`` (device propagation without a GPU) and on its
``no_float64`` device (nothing may silently create float64); the extra devices are in the
quick set for ``EXTRA_DEVICE_MODULES``, in the slow set elsewhere. JAX runs with functions
tagged by ``lazy_xp_function`` re-run under ``jax.jit``; tests marked ``slow_on("jax")`` are
in the slow set there (compile-bound), in the quick set on the other backends.
"""

from __future__ import annotations

import enum
import importlib
import os
import sys
from typing import Any, NamedTuple

import numpy as np
import pytest
from array_api_extra.testing import patch_lazy_xp_functions


class Backend(enum.Enum):
    NUMPY = "numpy"
    STRICT = "array_api_strict"
    STRICT_DEVICE1 = "array_api_strict:device1"
    STRICT_NO_FLOAT64 = "array_api_strict:no_float64"
    JAX = "jax"
    TORCH = "torch"
    CUPY = "cupy"

    @property
    def module(self) -> str:
        return {"jax": "jax.numpy"}.get(self.value.split(":")[0], self.value.split(":")[0])


def _enabled() -> set[str]:
    raw = os.environ.get("SOFTSORT_TEST_BACKENDS")
    if raw:
        return {s.strip() for s in raw.split(",") if s.strip()}
    return {"numpy", "array_api_strict", "jax", "torch", "cupy"}


class Lib(NamedTuple):
    """The backend under test: its namespace, device and float dtypes."""

    backend: Backend
    xp: Any
    device: Any
    float64: bool

    @property
    def name(self) -> str:
        return self.backend.value

    @property
    def float(self) -> Any:
        return self.xp.float64 if self.float64 else self.xp.float32

    def asarray(self, data: Any, dtype: Any = None) -> Any:
        """An array of this backend on its device (default: the widest float allowed)."""
        arr = np.asarray(data)
        if dtype is None and arr.dtype.kind == "f":
            dtype = self.float
        if self.backend is Backend.JAX:
            import jax

            out = self.xp.asarray(arr, dtype=dtype)
            return jax.device_put(out, self.device) if self.device is not None else out
        if self.backend is Backend.TORCH:
            import torch

            return torch.asarray(arr, dtype=dtype, device=self.device)
        return self.xp.asarray(arr, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.backend is Backend.TORCH:
            return x.detach().cpu().numpy()
        if self.backend is Backend.CUPY:
            return x.get()
        if self.backend in (Backend.STRICT, Backend.STRICT_DEVICE1, Backend.STRICT_NO_FLOAT64):
            import array_api_strict

            return np.asarray(array_api_strict.asarray(x, device=array_api_strict.Device("CPU_DEVICE")))
        return np.asarray(x)


def _is_enabled(backend: Backend) -> bool:
    return backend.value.split(":")[0] in _enabled() or backend.value in _enabled()


#: The backends this session collects tests for. A backend not enabled is not collected at
#: all (rather than collected and skipped: each session would otherwise report every other
#: backend's tests as skipped). An enabled backend that is not installed is still collected
#: and skips, saying so, so that a session never passes silently without its backend.
ACTIVE = [b for b in Backend if _is_enabled(b)]


def pytest_report_header() -> str:
    return f"softsort backends: {', '.join(b.value for b in ACTIVE) or 'none'} (SOFTSORT_TEST_BACKENDS)"


#: Test modules that run on array-api-strict's two extra devices in the quick set: the
#: device and dtype checks themselves and one pass over every operator and its gradient.
#: Elsewhere the extra devices repeat the default device's test unchanged except for the
#: device, and those runs (about 60 % of the strict session's time) are in the slow set.
EXTRA_DEVICE_MODULES = frozenset(
    {"test_dtypes", "test_extreme", "test_gradients", "test_mask", "test_multivariate", "test_operators"}
)


def _lib_backend(item: pytest.Item) -> Backend | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("lib") if callspec is not None else None
    return value if isinstance(value, Backend) else None


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Route tests between the quick and the slow set, and drop other backends' tests.

    A test marked ``slow_on(*backends)`` is slow on those backends only (under JAX, each
    new shape and configuration compiles: a check that costs milliseconds on NumPy can take
    tens of seconds there). array-api-strict's extra devices run in the quick set for
    ``EXTRA_DEVICE_MODULES`` only. Both are marked ``slow`` here, so that ``-m "not slow"``
    leaves them to ``nox -s tests-slow``.

    A test marked ``backend(...)`` is collected only in sessions that enable one of those backends.

    The mark is for tests without the ``lib`` fixture (which parametrizes itself): NumPy-only
    checks (subprocesses, the tutorial) would otherwise run again, unchanged, in every
    backend's session, and framework-specific ones would be collected and skipped in others.
    Unmarked tests without ``lib`` still run in every session.
    """
    keep, drop = [], []
    for item in items:
        lib_backend = _lib_backend(item)
        slow_on = item.get_closest_marker("slow_on")
        if lib_backend is not None and slow_on is not None and lib_backend.value.split(":")[0] in slow_on.args:
            item.add_marker(pytest.mark.slow)
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        extra_device = lib_backend in (Backend.STRICT_DEVICE1, Backend.STRICT_NO_FLOAT64)
        if extra_device and module not in EXTRA_DEVICE_MODULES:
            item.add_marker(pytest.mark.slow)
        mark = item.get_closest_marker("backend")
        uses_lib = "lib" in getattr(item, "fixturenames", ())
        if mark is None or uses_lib or any(name in _enabled() for name in mark.args):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _make_lib(backend: Backend) -> Lib:
    mod = pytest.importorskip(backend.module)
    if backend is Backend.JAX:
        import jax

        f64 = bool(jax.config.jax_enable_x64)
        return Lib(backend, mod, None, f64)
    if backend is Backend.TORCH:
        import array_api_compat.torch as tx

        return Lib(backend, tx, None, True)
    if backend is Backend.CUPY:
        if os.environ.get("SOFTSORT_TEST_GPU") != "1":
            pytest.skip("CuPy needs a GPU (set SOFTSORT_TEST_GPU=1)")
        return Lib(backend, mod, None, True)
    if backend is Backend.STRICT_DEVICE1:
        return Lib(backend, mod, mod.Device("device1"), True)
    if backend is Backend.STRICT_NO_FLOAT64:
        return Lib(backend, mod, mod.Device("no_float64"), False)
    return Lib(backend, mod, None, True)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code() -> Any:
    """Drop JAX's compiled executables after each test module.

    Every compiled XLA executable keeps its machine code mapped; the JAX suite compiles
    thousands of functions (Hypothesis draws many shapes), and one process reached Linux's
    default limit of 65530 memory mappings (``vm.max_map_count``), after which XLA's
    compiler crashed with a segmentation fault. Clearing the caches unmaps them.
    """
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()


@pytest.fixture(params=ACTIVE, ids=lambda b: b.value)
def lib(request: pytest.FixtureRequest) -> Any:
    """Every enabled backend; under JAX, tagged functions run through ``jax.jit``."""
    lib = _make_lib(request.param)
    if lib.backend is Backend.JAX:
        with patch_lazy_xp_functions(request, xp=lib.xp):
            yield lib
    else:
        yield lib


def available(name: str) -> bool:
    if name not in _enabled():
        return False
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
