"""Epsilon scaling against softsort's default start, on the benchmark's iteration sweep.

Issue #5 asks to evaluate epsilon scaling. For each (epsilon, n) of the sweep (a plain sort
of standard normal float32 values, NumPy): the default solve (exact-dual start, adaptive
over-relaxation), and epsilon
scaling from 1e-1 (divided by 10 per stage) and from 1e-2 (divided by 4 per stage): each
stage starts from the potentials of the one before, stops at threshold 1e-2, and the last
one at the default 1e-3. Prints total iterations and the median time of 5 solves. Run::

    python benchmarks/epsilon_scaling.py

The warm start goes in through the solver's ``_start`` (no public option takes potentials).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import array_api_compat.numpy as xp
import numpy as np

from softsort._core import _sinkhorn
from softsort._core._config import DUAL_START_BELOW, SolverConfig, resolve_init
from softsort.backends import get_backend

BACKEND = get_backend(xp)


def _squash(x: np.ndarray) -> np.ndarray:
    """softsort's default squashing: standardize, then a sigmoid."""
    return (1.0 / (1.0 + np.exp(-(x - x.mean()) / x.std()))).astype(np.float32)


def _solve(z: np.ndarray, eps: float, config: SolverConfig, start: tuple[Any, Any] | None = None) -> Any:
    a = np.full((1, z.size), 1.0 / z.size, np.float32)
    e = np.full((1,), eps, np.float32)
    if start is None:
        return _sinkhorn.solve(BACKEND, config, z[None], a, a.copy(), e)
    original = _sinkhorn._start
    _sinkhorn._start = lambda *args: (start[0] / eps, start[1] / eps)  # units of epsilon
    try:
        return _sinkhorn.solve(BACKEND, config, z[None], a, a.copy(), e)
    finally:
        _sinkhorn._start = original


def default(z: np.ndarray, eps: float) -> tuple[int, Any]:
    init = resolve_init("dual" if eps < DUAL_START_BELOW else "by_targets", z.shape[-1], z.shape[-1])
    out = _solve(z, eps, SolverConfig(init=init, max_iterations=20000))
    return int(out.iterations[0]), out


def scaled(z: np.ndarray, eps: float, eps0: float, factor: float) -> tuple[int, Any]:
    iterations, start, e = 0, None, eps0
    while True:
        last = e <= eps * (1 + 1e-6)
        # "dual" only tells the solver that the start is not zero (it is replaced above)
        init = "zeros" if start is None else "dual"
        out = _solve(z, e, SolverConfig(init=init, threshold=1e-3 if last else 1e-2, max_iterations=20000), start)
        iterations += int(out.iterations[0])
        if last:
            return iterations, out
        start, e = (out.f, out.g), max(e / factor, eps)


def _median_ms(f: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    print("| epsilon | n | default: it / ms | from 1e-1, /10: it / ms | from 1e-2, /4: it / ms |")
    print("|---|---|---|---|---|")
    for eps in (1e-2, 1e-3, 1e-4):
        for n in (10, 100, 1000):
            z = _squash(np.random.default_rng([0, n, 99]).standard_normal(n))
            runs = [
                functools.partial(default, z, eps),
                functools.partial(scaled, z, eps, 1e-1, 10.0),
                functools.partial(scaled, z, eps, 1e-2, 4.0),
            ]
            cells = [f"{run()[0]} / {_median_ms(run):.2f}" for run in runs]
            print(f"| {eps:g} | {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
