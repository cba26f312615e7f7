"""Accuracy on OTT-JAX's own test inputs: softsort and OTT-JAX at the default threshold vs the converged answer.

For each operator call of OTT-JAX 0.6.0's ``tests/tools/soft_sort_test.py`` (same inputs,
drawn from ``jax.random.key(0)`` as there, same options, float32 as there), this measures
``max |softsort - converged|`` and ``max |OTT-JAX - converged|``, where "converged" is
softsort on NumPy in float64 at ``threshold=1e-10`` (the fixed point both solvers
approach; the table says whether that run reached it).

Needs ``ott-jax==0.6.0`` and ``jax`` (e.g. the ``ott-tests`` nox session's environment)::

    python benchmarks/ott_accuracy.py [--out benchmarks/results]

writes ``ott_accuracy.rst`` (the table included by docs/migration.rst) and ``ott_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ott.solvers.linear import acceleration
from ott.tools import soft_sort as ott

import softsort

# Checks every 1000 iterations: the solver's error log has max_iterations / inner_iterations
# entries and each check rewrites it, so 10-iteration checks up to 1e6 iterations would cost
# O(1e5) per check. The check interval only moves where a converged run stops.
CONVERGED = {"threshold": 1e-10, "max_iterations": 1_000_000, "inner_iterations": 1000}


def identity(z: Any) -> Any:
    return z


Call = Callable[[Any, dict[str, Any]], Any]


def _cases() -> list[tuple[str, str, Call]]:
    """(operator, case as text, call(module, extra options) -> output), as in OTT-JAX's tests."""
    key = jax.random.key(0)
    cases = []

    def add(name: str, text: str, fn: Call) -> None:
        cases.append((name, text, fn))

    x20 = jax.random.uniform(key, (20,))
    add("sort", "n=20, defaults", lambda m, o: m.sort(x20, axis=0, **o))
    x33 = jax.random.uniform(key, (33, 1))
    mom = {"momentum": acceleration.Momentum(start=100)}
    add(
        "sort",
        "(33, 1), identity squashing, eps=5e-4, Momentum(start=100)",
        lambda m, o: m.sort(x33, axis=0, squashing_fun=identity, epsilon=5e-4, **{**mom, **o}),
    )
    add(
        "sort",
        "(33, 1), eps=2e-4, Momentum(start=100)",
        lambda m, o: m.sort(x33, axis=0, epsilon=2e-4, **{**mom, **o}),
    )
    add(
        "sort",
        "n=20, topk=4, identity squashing, eps=1e-3",
        lambda m, o: m.sort(x20, axis=0, topk=4, epsilon=1e-3, squashing_fun=identity, **o),
    )
    xb = jax.random.uniform(key, (32, 10, 6, 4))
    add("sort", "(32, 10, 6, 4), axis=1, defaults", lambda m, o: m.sort(xb, axis=1, **o))
    add("sort", "(32, 10, 6, 4), axis=1, topk=2", lambda m, o: m.sort(xb, axis=1, topk=2, **o))
    r1, r2 = jax.random.split(key, 2)
    xr = jax.random.uniform(r1, (8, 5, 2))
    rk = {"squashing_fun": identity, "epsilon": 1e-4, "axis": 0}
    add(
        "ranks",
        "(8, 5, 2), identity squashing, eps=1e-4",
        lambda m, o: m.ranks(xr, **rk, **{"max_iterations": 20_000, **o}),
    )
    add(
        "ranks",
        "(8, 5, 2), num_targets=13, eps=1e-4",
        lambda m, o: m.ranks(xr, num_targets=13, **rk, **{"max_iterations": 20_000, **o}),
    )
    tw = jax.random.uniform(r2, (13,))
    tw = tw / jnp.sum(tw)
    add(
        "ranks",
        "(8, 5, 2), 13 random target weights, eps=1e-4",
        lambda m, o: m.ranks(xr, target_weights=tw, **rk, **{"max_iterations": 20_000, **o}),
    )
    xm = jax.random.uniform(key, (13, 7, 1))
    add(
        "topk_mask",
        "(13, 7, 1), k=3, identity squashing, eps=1e-4",
        lambda m, o: m.topk_mask(
            xm, k=3, axis=0, squashing_fun=identity, epsilon=1e-4, **{"max_iterations": 15_000, **o}
        ),
    )
    lin = jnp.linspace(0.0, 1.0, 100)
    for q in (0.2, 0.9):
        add(
            "quantile",
            f"linspace(0, 1, 100), q={q}, weight=0.05, eps=1e-3",
            lambda m, o, q=q: m.quantile(lin, q=q, weight=0.05, epsilon=1e-3, **o),
        )
    xi = jax.random.uniform(key, (4, 47, 45, 3))
    add(
        "quantile",
        "(4, 47, 45, 3), axis=(1, 2), q=0.5, weight=0.05",
        lambda m, o: m.quantile(xi, axis=(1, 2), q=0.5, weight=0.05, epsilon=1e-2, **o),
    )
    xq = jax.random.uniform(key, (100, 2, 3))
    qs = jnp.array([0.1, 0.8, 0.4])
    add("quantile", "(100, 2, 3), q=[0.1, 0.8, 0.4], axis=0", lambda m, o: m.quantile(xq, q=qs, axis=0, **o))
    rngs = jax.random.split(key, 2)
    xn = jax.random.uniform(rngs[0], (100,))
    y = jnp.sort(2.0 + 1.2 * jax.random.normal(key, (48,)))
    add(
        "quantile_normalization",
        "n=100, 48 targets, eps=1e-4",
        lambda m, o: m.quantile_normalization(xn, y, epsilon=1e-4, **o),
    )
    xs = jax.random.uniform(key, (20, 4))
    crit = jnp.linspace(0.1, 1.2, 20)
    add("sort_with", "(20, 4), eps=1e-4", lambda m, o: m.sort_with(xs, crit, epsilon=1e-4, **o))
    add("sort_with", "(20, 4), topk=4, eps=1e-3", lambda m, o: m.sort_with(xs, crit, topk=4, epsilon=1e-3, **o))
    xz = jnp.linspace(0.0, 1.0, 100)[..., None]
    add(
        "quantize", "(100, 1), 4 levels, eps=1e-4", lambda m, o: m.quantize(xz, num_levels=4, axis=0, epsilon=1e-4, **o)
    )
    rj = jax.random.split(key, 3)
    zj = jax.random.uniform(rj[0], (10, 40))
    add("ranks", "(10, 40), num_targets=20, defaults", lambda m, o: m.ranks(zj, axis=-1, num_targets=20, **o))
    return cases


class _NumpyFloat64:
    """softsort called with every JAX array argument turned into a float64 NumPy array."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(softsort, name)

        def convert(v: Any) -> Any:
            return np.asarray(v, dtype=np.float64) if isinstance(v, jax.Array) else v

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("momentum", None)  # a path to the fixed point, not the fixed point
            return fn(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})

        return call


def measure() -> list[dict[str, Any]]:
    rows = []
    for name, text, fn in _cases():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conv = np.asarray(fn(_NumpyFloat64(), CONVERGED))
        reached = not any(issubclass(w.category, softsort.ConvergenceWarning) for w in caught)
        ours = np.asarray(fn(softsort, {}), dtype=np.float64)
        theirs = np.asarray(fn(ott, {}), dtype=np.float64)
        rows.append(
            {
                "operator": name,
                "case": text,
                "softsort_error": float(np.max(np.abs(ours - conv))),
                "ott_error": float(np.max(np.abs(theirs - conv))),
                "converged_reached_1e-10": reached,
            }
        )
        print(rows[-1], flush=True)
    return rows


def write(rows: list[dict[str, Any]], out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ott_accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - operator",
        "     - case (OTT-JAX's test inputs and options)",
        "     - max abs(softsort - converged)",
        "     - max abs(OTT-JAX - converged)",
    ]
    for r in rows:
        mark = "" if r["converged_reached_1e-10"] else " (the reference did not reach 1e-10)"
        lines += [
            f"   * - ``{r['operator']}``",
            f"     - {r['case']}{mark}",
            f"     - {r['softsort_error']:.2e}",
            f"     - {r['ott_error']:.2e}",
        ]
    versions = f"softsort {softsort.__version__}, ott-jax {__import__('ott').__version__}, jax {jax.__version__}"
    lines += ["", f"Float32 inputs, default threshold 1e-3; {versions}."]
    (out / "ott_accuracy.rst").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()
    write(measure(), args.out)


if __name__ == "__main__":
    main()
