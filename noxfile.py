"""Sessions: tests per backend, lint, OTT-JAX reference, docs, benchmark, GPU tests.

`nox -t ci` is README's test command: every backend, operator and gradient, lint and the docs
check, without the tests marked slow (a longer sweep of what the quick set checks). The NumPy
tests run in the `wheel` session, on the installed wheel (`tests-numpy` runs them on the checkout). `.ci/run`
runs it and then `nox -s tests-slow`, the slow set on every backend. PyTorch is pinned to the CPU build
that the project's CI machine has on local disk (a plain `torch` would pull a multi-GB
CUDA build); the user-facing `torch` extra stays a normal range in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TORCH_CPU = "torch==2.13.0"
#: One pytest worker per core (pytest-xdist; 2 on the CI machine); a test file stays on one
#: worker, so module fixtures (a Dask cluster, JAX's compiled solvers) are made once per file.
PYTEST = ("pytest", "-q", "-p", "no:cacheprovider", "--durations=15", "-n", "auto", "--dist", "loadfile")
#: The ci sessions leave the slow set to `tests-slow` (a later `-m` in posargs overrides).
QUICK = ("-m", "not slow")


def _jax_env(session: nox.Session, **extra: str) -> dict[str, str]:
    """JAX's settings for a test session: x64 (accuracy tests), two host CPU devices (a mesh).

    The JAX tests are bound by XLA compilation (each new shape and configuration compiles,
    a second or more), so the session compiles faster: XLA's backend optimization level 0
    (the programs are the same; only the machine code is less tuned), and a persistent
    compilation cache, emptied at the start of every run, through which a test module
    reuses what an earlier module or the other pytest worker compiled (tests/conftest.py
    clears JAX's in-memory caches after each module). Measured on test_gradients.py and
    test_grad_inputs.py, one worker: 132 s, 107 s with level 0, 88 s with the cache too.
    """
    cache = os.path.join(session.create_tmp(), "jax-compilation-cache")
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "JAX_ENABLE_X64": "1",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **extra,
    }


def _install(session: nox.Session, *extra: str, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]", *extra)


@nox.session(name="tests-numpy")
def tests_numpy(session: nox.Session) -> None:
    """NumPy backend (the default) plus import hygiene and doctests, on the checkout.

    Not tagged ci: the ``wheel`` session runs the same tests on the installed wheel.
    """
    _install(session, extras="test,examples,dask")
    session.run(*PYTEST, *QUICK, "softsort", "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "numpy"})


@nox.session(name="tests-strict", tags=["ci"])
def tests_strict(session: nox.Session) -> None:
    """array-api-strict, including its non-default and no-float64 devices."""
    _install(session)
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "array_api_strict"})


@nox.session(name="tests-jax", tags=["ci"])
def tests_jax(session: nox.Session) -> None:
    """JAX in float64 (x64 enabled), jit/vmap/grad, two host CPU devices.

    PyTorch is installed too, so tests/test_cross_backend.py (NumPy, JAX and PyTorch agree)
    runs here: CI saves the environment and installs of a separate tests-cross session.
    """
    _install(session, "jax", "flax", "optax", TORCH_CPU, extras="test,examples")
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env=_jax_env(session, SOFTSORT_TEST_BACKENDS="jax"))


@nox.session(name="tests-torch", tags=["ci"])
def tests_torch(session: nox.Session) -> None:
    """PyTorch CPU: autograd, torch.func, dtypes."""
    _install(session, TORCH_CPU, extras="test,examples")
    session.run(*PYTEST, *QUICK, "tests", *session.posargs, env={"SOFTSORT_TEST_BACKENDS": "torch"})


@nox.session(name="tests-cross")
def tests_cross(session: nox.Session) -> None:
    """Agreement of values and gradients across NumPy, JAX and PyTorch in float64.

    Not tagged ci: tests-jax runs the same file (it installs PyTorch as well).
    """
    _install(session, "jax", TORCH_CPU)
    env = _jax_env(session, SOFTSORT_TEST_BACKENDS="numpy,jax,torch")
    session.run(*PYTEST, *QUICK, "tests/test_cross_backend.py", *session.posargs, env=env)


@nox.session(name="tests-slow")
def tests_slow(session: nox.Session) -> None:
    """The tests marked slow, on NumPy, array-api-strict, JAX (float64, two host devices) and PyTorch.

    Not tagged ci: README's test command stays within its time; `.ci/run` runs this after it.
    """
    _install(session, "jax", "flax", "optax", TORCH_CPU, extras="test,examples,dask")
    env = _jax_env(session, SOFTSORT_TEST_BACKENDS="numpy,array_api_strict,jax,torch")
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
    """softsort (JAX, NumPy, PyTorch) vs OTT-JAX and torchsort; posargs go to bench.py (default --separate)."""
    session.install("-e", ".", "jax==0.10.2", TORCH_CPU, "ott-jax==0.6.0", "matplotlib")
    # torchsort compiles against the installed torch; a stray nvcc on PATH makes it try a
    # CUDA build, so hide it. The benchmark skips torchsort (saying why) if this fails.
    session.install("torchsort==0.1.10", "--no-build-isolation", env={"PATH": "/usr/bin:/bin"}, success_codes=[0, 1])
    session.run("python", "benchmarks/bench.py", *(session.posargs or ["--separate"]))


@nox.session(name="bench-gpu")
def bench_gpu(session: nox.Session) -> None:
    """W1-W8 at GPU scale (benchmarks/gpu.py): softsort on JAX, PyTorch, CuPy vs OTT-JAX, torchsort.

    Needs a CUDA machine and nothing else: installs the CUDA builds of JAX, PyTorch and
    CuPy, OTT-JAX and torchsort (compiled against the CUDA toolkit when nvcc is found;
    skipped, with the reason, if that build fails), then writes
    benchmarks/results/gpu/gpu.{json,md}. posargs go to the script (``--scale tiny
    --device cpu`` checks it anywhere).
    """
    session.install("-e", ".", "jax[cuda12]", "torch", "cupy-cuda12x", "ott-jax==0.6.0", "setuptools", "ninja")
    session.install("torchsort==0.1.10", "--no-build-isolation", success_codes=[0, 1])
    session.run("python", "-c", "import jax, torch; print(jax.devices(), torch.cuda.is_available())")
    session.run("python", "benchmarks/gpu.py", *session.posargs)


@nox.session(tags=["ci"])
def wheel(session: nox.Session) -> None:
    """The package as users get it: sdist + wheel, twine check, then demo and NumPy tests on the installed wheel.

    The tests run from a temporary folder holding a copy of tests/ (and the pytest settings),
    so that `import softsort` finds the wheel in site-packages, never the checkout.
    """
    import glob
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
    # Dependencies through the extras, then the wheel itself over any earlier install of the same version.
    session.install(f"{whl}[test,examples,dask]")
    session.install("--force-reinstall", "--no-deps", whl)
    run_dir = os.path.join(tmp, "installed")
    shutil.rmtree(run_dir, ignore_errors=True)
    # The docs and examples too: tests/test_docs.py checks their figures and options.
    ignore = shutil.ignore_patterns("__pycache__", "_build", "auto_examples", "gen_modules")
    for folder in ("tests", "docs", "examples"):
        shutil.copytree(folder, os.path.join(run_dir, folder), ignore=ignore)
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
    # CI's NumPy run: the quick set and the installed modules' doctests, without the adapters
    # whose framework this environment lacks (as the checkout's conftest.py does). posargs
    # replace the selection.
    listing = session.run(
        "python",
        "-c",
        "import importlib.util as u, pathlib, softsort; p = pathlib.Path(softsort.__file__).parent; "
        "print(p); missing = [n for n in ('jax', 'torch', 'cupy', 'dask') if u.find_spec(n) is None]; "
        "[print(p / 'backends' / f'_{n}.py') for n in missing]; "
        "print(p / '__main__.py')",
        silent=True,
    )
    package, *skipped = str(listing).split()
    args = session.posargs or [package, "tests", "-m", "not slow", *(f"--ignore={f}" for f in skipped)]
    session.run(*PYTEST, *args, env={"SOFTSORT_TEST_BACKENDS": "numpy"})
