"""Sessions: tests per backend, lint, OTT-JAX reference, docs, benchmark, GPU tests.

`nox -t ci` is README's test command: every backend, operator and gradient, lint and the docs
check, without the tests marked slow (a longer sweep of what the quick set checks). `.ci/run`
runs it and then `nox -s tests-slow`, the slow set on every backend. PyTorch is pinned to the CPU build
that the project's CI machine has on local disk (a plain `torch` would pull a multi-GB
CUDA build); the user-facing `torch` extra stays a normal range in pyproject.toml.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TORCH_CPU = "torch==2.13.0"
PYTEST = ("pytest", "-q", "-p", "no:cacheprovider", "--durations=15")
#: The ci sessions leave the slow set to `tests-slow` (a later `-m` in posargs overrides).
QUICK = ("-m", "not slow")
JAX_ENV = {"JAX_ENABLE_X64": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _install(session: nox.Session, *extra: str, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]", *extra)


@nox.session(name="tests-numpy", tags=["ci"])
def tests_numpy(session: nox.Session) -> None:
    """NumPy backend (the default) plus import hygiene and doctests."""
    _install(session, extras="test,examples,dask")
    session.run(*PYTEST, *QUICK, "softsort", "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "numpy"})


@nox.session(name="tests-strict", tags=["ci"])
def tests_strict(session: nox.Session) -> None:
    """array-api-strict, including its non-default and no-float64 devices."""
    _install(session)
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "array_api_strict"})


@nox.session(name="tests-jax", tags=["ci"])
def tests_jax(session: nox.Session) -> None:
    """JAX in float64 (x64 enabled), jit/vmap/grad, two host CPU devices."""
    _install(session, "jax", "flax", "optax", extras="test,examples")
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "jax", **JAX_ENV})


@nox.session(name="tests-torch", tags=["ci"])
def tests_torch(session: nox.Session) -> None:
    """PyTorch CPU: autograd, torch.func, dtypes."""
    _install(session, TORCH_CPU, extras="test,examples")
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "torch"})


@nox.session(name="tests-cross", tags=["ci"])
def tests_cross(session: nox.Session) -> None:
    """Agreement of values and gradients across NumPy, JAX and PyTorch in float64."""
    _install(session, "jax", TORCH_CPU)
    env = {"SOFTSORT_TEST_BACKENDS": "numpy,jax,torch", "JAX_ENABLE_X64": "1"}
    session.run(*PYTEST, *QUICK, "tests/test_cross_backend.py", *session.posargs, env=env)


@nox.session(name="tests-slow")
def tests_slow(session: nox.Session) -> None:
    """The tests marked slow, on NumPy, array-api-strict, JAX (float64, two host devices) and PyTorch.

    Not tagged ci: README's test command stays within its time; `.ci/run` runs this after it.
    """
    _install(session, "jax", "flax", "optax", TORCH_CPU, extras="test,examples,dask")
    env = {"SOFTSORT_TEST_BACKENDS": "numpy,array_api_strict,jax,torch", **JAX_ENV}
    session.run(*PYTEST, "-m", "slow", "tests", *session.posargs, env=env)


@nox.session(name="tests-gpu")
def tests_gpu(session: nox.Session) -> None:
    """PyTorch CUDA, JAX GPU and CuPy (needs a CUDA machine; installs CUDA builds)."""
    session.install("-e", ".[test]", "torch", "jax[cuda12]", "cupy-cuda12x")
    env = {"SOFTSORT_TEST_BACKENDS": "torch,jax,cupy", "SOFTSORT_TEST_GPU": "1", "JAX_ENABLE_X64": "1"}
    session.run(*PYTEST, "tests", *session.posargs, env=env)


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and mypy --strict on softsort/ ([tool.mypy] in pyproject.toml).

    mypy sees the package's own dependencies (NumPy's types); jax, torch, cupy and dask are not
    installed here and are typed Any (pyproject.toml says why).
    """
    session.install("ruff==0.17.6", "mypy==2.4.1", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


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


@nox.session(tags=["ci"])
def wheel(session: nox.Session) -> None:
    """The package as users get it: sdist + wheel, twine check, then demo and NumPy tests on the installed wheel.

    The tests run from a temporary folder holding a copy of tests/ (and the pytest settings),
    so that `import softsort` finds the wheel in site-packages, never the checkout.
    """
    import glob
    import shutil
    import zipfile

    session.install("build", "twine", "setuptools>=77")
    tmp = session.create_tmp()
    dist = os.path.join(tmp, "dist")
    shutil.rmtree(dist, ignore_errors=True)
    # No isolation: the build backend is the session's setuptools (no second download per run).
    session.run("python", "-m", "build", "--no-isolation", "--outdir", dist, ".", silent=True)
    built = sorted(glob.glob(os.path.join(dist, "*")))
    session.run("twine", "check", "--strict", *built)
    (whl,) = (p for p in built if p.endswith(".whl"))
    with zipfile.ZipFile(whl) as zf:
        tops = {name.split("/")[0] for name in zf.namelist() if ".dist-info/" not in name}
    if tops != {"softsort"}:
        session.error(f"the wheel must hold one top-level package, softsort; it holds {sorted(tops)}")
    # Dependencies through the extra, then the wheel itself over any earlier install of the same version.
    session.install(f"{whl}[test]")
    session.install("--force-reinstall", "--no-deps", whl)
    run_dir = os.path.join(tmp, "installed")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree("tests", os.path.join(run_dir, "tests"), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy("pyproject.toml", run_dir)  # pytest settings only; there is no softsort/ beside it
    session.chdir(run_dir)
    session.run(
        "python",
        "-c",
        "import sysconfig, pathlib, softsort; f = pathlib.Path(softsort.__file__).resolve(); "
        "site = pathlib.Path(sysconfig.get_paths()['purelib']).resolve(); "
        "assert site in f.parents, f'softsort imported from {f}, not from {site}'; print('softsort from', f)",
    )
    session.run("python", "-m", "softsort", "demo", "--out", os.path.join(run_dir, "figures"))
    # The long checks stay in tests-numpy (same tests, on the checkout); posargs replace the selection.
    args = session.posargs or ["tests", "-m", "not slow"]
    session.run(*PYTEST, *args, env={"SOFTSORT_TEST_BACKENDS": "numpy"})
