"""Sessions: tests per backend, lint, OTT-JAX reference, docs, benchmark, GPU tests.

`nox -t ci` runs what CI runs (README's test command). PyTorch is pinned to the CPU build
that the project's CI machine has on local disk (a plain `torch` would pull a multi-GB
CUDA build); the user-facing `torch` extra stays a normal range in pyproject.toml.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TORCH_CPU = "torch==2.13.0"
PYTEST = ("pytest", "-q", "-p", "no:cacheprovider")


def _install(session: nox.Session, *extra: str, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]", *extra)


@nox.session(name="tests-numpy", tags=["ci"])
def tests_numpy(session: nox.Session) -> None:
    """NumPy backend (the default) plus import hygiene and doctests."""
    _install(session, extras="test,examples,dask")
    session.run(*PYTEST, "softsort", "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "numpy"})


@nox.session(name="tests-strict", tags=["ci"])
def tests_strict(session: nox.Session) -> None:
    """array-api-strict, including its non-default and no-float64 devices."""
    _install(session)
    session.run(*PYTEST, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "array_api_strict"})


@nox.session(name="tests-jax", tags=["ci"])
def tests_jax(session: nox.Session) -> None:
    """JAX in float64 (x64 enabled), jit/vmap/grad, two host CPU devices."""
    _install(session, "jax", "flax", "optax", extras="test,examples")
    env = {
        "SOFTSORT_TEST_BACKENDS": "jax",
        "JAX_ENABLE_X64": "1",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    session.run(*PYTEST, "tests", *session.posargs, env=env)


@nox.session(name="tests-torch", tags=["ci"])
def tests_torch(session: nox.Session) -> None:
    """PyTorch CPU: autograd, torch.func, dtypes."""
    _install(session, TORCH_CPU, extras="test,examples")
    session.run(*PYTEST, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "torch"})


@nox.session(name="tests-cross", tags=["ci"])
def tests_cross(session: nox.Session) -> None:
    """Agreement of values and gradients across NumPy, JAX and PyTorch in float64."""
    _install(session, "jax", TORCH_CPU)
    env = {"SOFTSORT_TEST_BACKENDS": "numpy,jax,torch", "JAX_ENABLE_X64": "1"}
    session.run(*PYTEST, "tests/test_cross_backend.py", *session.posargs, env=env)


@nox.session(name="tests-gpu")
def tests_gpu(session: nox.Session) -> None:
    """PyTorch CUDA, JAX GPU and CuPy (needs a CUDA machine; installs CUDA builds)."""
    session.install("-e", ".[test]", "torch", "jax[cuda12]", "cupy-cuda12x")
    env = {"SOFTSORT_TEST_BACKENDS": "torch,jax,cupy", "SOFTSORT_TEST_GPU": "1", "JAX_ENABLE_X64": "1"}
    session.run(*PYTEST, "tests", *session.posargs, env=env)


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def reference(session: nox.Session) -> None:
    """Agreement with OTT-JAX 0.6's soft_sort, float64, threshold 1e-10."""
    _install(session, "ott-jax==0.6.0")
    env = {"SOFTSORT_TEST_BACKENDS": "numpy", "JAX_ENABLE_X64": "1"}
    session.run(*PYTEST, "tests/test_reference_ott.py", "-m", "reference", *session.posargs, env=env)


@nox.session(name="ott-tests")
def ott_tests(session: nox.Session) -> None:
    """OTT-JAX 0.6.0's own soft-sort tests, run against softsort (one import line changed).

    The test file is not in this repository: give its path as OTT_SOFT_SORT_TEST=... or as
    the first posarg (further posargs go to pytest). Get it with
    `git clone https://github.com/ott-jax/ott && git -C ott show 0.6.0:tests/tools/soft_sort_test.py`.
    Not tagged ci: CI must not depend on a fetched file.
    """
    args = list(session.posargs)
    path = args.pop(0) if args and args[0].endswith(".py") else os.environ.get("OTT_SOFT_SORT_TEST")
    if not path:
        session.error(
            "set OTT_SOFT_SORT_TEST=/path/to/soft_sort_test.py (or pass it as the first posarg); get the file with "
            "`git clone https://github.com/ott-jax/ott && git -C ott show 0.6.0:tests/tools/soft_sort_test.py "
            "> soft_sort_test.py`"
        )
    # The file imports OTT-JAX's acceleration and implicit-differentiation objects itself.
    _install(session, "ott-jax==0.6.0", "jax==0.10.2")
    harness = os.path.join("tests", "ott_harness", "run_ott_tests.py")
    session.run("python", harness, os.path.abspath(path), os.path.join(session.create_tmp(), "ott_tests"), *args)


@nox.session
def docs(session: nox.Session) -> None:
    """Sphinx site with the gallery executed; warnings are errors."""
    session.install("-e", ".[docs,examples,jax]", TORCH_CPU, "flax", "optax")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs)


@nox.session(name="docs-check", tags=["ci"])
def docs_check(session: nox.Session) -> None:
    """Fast docs check for CI: the whole site with warnings as errors, gallery not executed.

    `nox -s docs` is the full build that executes every example (training included).
    """
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-q", "-D", "plot_gallery=0", "-b", "html", "docs", "docs/_build/check"
    )


@nox.session
def bench(session: nox.Session) -> None:
    """softsort (JAX, NumPy, PyTorch) vs OTT-JAX and torchsort, side by side."""
    session.install("-e", ".", "jax==0.10.2", TORCH_CPU, "ott-jax==0.6.0", "matplotlib")
    # torchsort compiles against the installed torch; a stray nvcc on PATH makes it try a
    # CUDA build, so hide it. The benchmark skips torchsort (saying why) if this fails.
    session.install("torchsort==0.1.10", "--no-build-isolation", env={"PATH": "/usr/bin:/bin"}, success_codes=[0, 1])
    session.run("python", "benchmarks/bench.py", *session.posargs)
