"""Rows longer than memory: one problem whose plan exceeds ``memory_budget``, solved by blocks.

Measures, each in a fresh process:

* sort and ranks of one row of ``n`` float32 values (default 50,000: a 10 GB plan in
  float32, 60 GB of working set for the dense path) at the default ``memory_budget``
  (1 GiB) and epsilon, forward only: wall time, and peak extra memory = the process's peak
  resident set during the call minus its resident set just before (``/proc/self/clear_refs``
  resets the peak; JAX: the solver is compiled ahead, its compile time reported apart);
* the agreement of the blocked path with the dense solver on ``n`` = 5,000 in float64
  (blocked at the default budget, dense with a budget that fits): values and gradients
  (``softsort.vjp`` for NumPy, ``jax.grad`` w.r.t. x and epsilon for JAX), max abs
  difference relative to the max abs value.

Writes ``benchmarks/results/long_rows.json`` and ``long_rows.rst`` (the table the docs
include). Usage: ``python benchmarks/long_rows.py [--n 50000] [--agree-n 5000]
[--backends numpy,jax]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _list_table(*columns: str) -> list[str]:
    """The opening lines of an rst list-table with a header row of ``columns``."""
    return [".. list-table::", "   :header-rows: 1", "", f"   * - {columns[0]}", *(f"     - {c}" for c in columns[1:])]


def _rss() -> tuple[int, int]:
    """(current, peak) resident set of this process, bytes."""
    cur = peak = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


BUDGET = int(os.environ.get("LONG_ROWS_BUDGET", str(2**30)))  # smaller only to try the script quickly


def worker_speed(backend: str, op: str, n: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import softsort

    base = {"sort": softsort.sort, "ranks": softsort.ranks}[op]

    def fun(x: object) -> object:
        return base(x, memory_budget=BUDGET)

    x = np.random.default_rng(0).normal(size=n).astype(np.float32)
    compile_s = None
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        xj = jnp.asarray(x)
        start = time.perf_counter()
        call = jax.jit(fun).lower(xj).compile()
        compile_s = time.perf_counter() - start

        def run() -> object:
            return jax.block_until_ready(call(xj))

    else:
        fun(x[:50])  # imports and first-call set-up outside the measurement

        def run() -> object:
            return fun(x)

    reset = _reset_peak()
    before, _ = _rss()
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    _, peak = _rss()
    out = np.asarray(out)
    ok = bool(np.all(np.isfinite(out)))
    if op == "ranks":
        ok = ok and abs(float(out.astype(np.float64).sum()) - n * (n - 1) / 2) < 1e-2 * n * (n - 1) / 2
    else:
        ok = ok and bool(np.all(np.diff(out.astype(np.float64)) >= -1e-3))
    return {
        "backend": backend,
        "op": op,
        "n": n,
        "dtype": "float32",
        "seconds": seconds,
        "compile_seconds": compile_s,
        "peak_extra_bytes": peak - before if reset else None,
        "budget_bytes": BUDGET,
        "output_sane": ok,
    }


def worker_agree(backend: str, n: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import softsort
    from softsort._core._operators import PEAK_ARRAYS_PER_ROW

    dense_budget = PEAK_ARRAYS_PER_ROW * n * n * 8 + 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    cot = rng.normal(size=n)
    eps = 1e-2
    res: dict = {"backend": backend, "n": n, "dtype": "float64", "epsilon": eps}

    def rel(a: object, b: object) -> float:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    for name, fun in (("sort", softsort.sort), ("ranks", softsort.ranks)):
        if backend == "numpy":
            start = time.perf_counter()
            out_b, pull_b = softsort.vjp(fun, x, epsilon=eps, memory_budget=BUDGET)
            g_b = pull_b(cot)
            blocked_s = time.perf_counter() - start
            out_d, pull_d = softsort.vjp(fun, x, epsilon=eps, memory_budget=dense_budget)
            g_d = pull_d(cot)
            res[name] = {"value": rel(out_b, out_d), "grad_x": rel(g_b, g_d), "blocked_seconds": blocked_s}
        else:
            import jax
            import jax.numpy as jnp

            jax.config.update("jax_enable_x64", True)
            xj, cj = jnp.asarray(x), jnp.asarray(cot)

            def loss(x: object, e: object, budget: int, fun: object = fun, cj: object = cj) -> object:
                return jnp.sum(fun(x, epsilon=e, memory_budget=budget) * cj)

            grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
            start = time.perf_counter()
            (_, (gx_b, ge_b)) = jax.block_until_ready(grad(xj, eps, BUDGET))
            blocked_s = time.perf_counter() - start
            (_, (gx_d, ge_d)) = grad(xj, eps, dense_budget)
            out_b = fun(xj, epsilon=eps, memory_budget=BUDGET)
            out_d = fun(xj, epsilon=eps, memory_budget=dense_budget)
            res[name] = {
                "value": rel(out_b, out_d),
                "grad_x": rel(gx_b, gx_d),
                "grad_epsilon": rel(ge_b, ge_d),
                "blocked_seconds_with_compile": blocked_s,
            }
    return res


def _cache(args: list[str]) -> Path:
    return Path(tempfile.gettempdir()) / "softsort_long_rows" / ("_".join(args) + f"_{BUDGET}.json")


def _spawn(args: list[str], cached_only: bool = False) -> dict:
    if cached_only and not _cache(args).exists():
        return {"args": args, "error": "not measured in this run (--cached-only)"}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if "agree" in args and "jax" in args:
        env["JAX_ENABLE_X64"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode:
        return {"args": args, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rst(data: dict) -> str:
    lines = [
        f"Measured by ``python benchmarks/long_rows.py`` (table assembled {data['date']}) on {data['machine']}, "
        f"{data['cpus']} CPUs shared with other jobs throughout (load average {data['load_before']:.1f} when the "
        "table was assembled): timings are upper bounds. NumPy at n = 50,000 did not finish in the time this "
        "shared machine allowed; its blocked timing at n = 5,000 is in the JSON file (``blocked_seconds``, "
        "forward and ``softsort.vjp`` in float64).",
        "",
        f"One row of n = {data['n']} float32 values, ``memory_budget`` {data['budget'] / 2**20:.0f} MiB "
        "(1024 is the default), default epsilon (``1e-2``), "
        "forward pass. Peak extra memory: the process's peak resident set during the call minus its resident "
        "set just before.",
        "",
        *_list_table("backend", "operator", "seconds", "peak extra memory (MiB)", "within budget"),
    ]
    for r in data["speed"]:
        if "error" in r:
            what = "not measured" if "not measured" in r["error"] else "failed"
            lines += [f"   * - {r['args'][1]}", f"     - {r['args'][2]}", f"     - {what}", "     -", "     -"]
            continue
        peak = r["peak_extra_bytes"]
        secs = f"{r['seconds']:.0f}"
        if r.get("compile_seconds") is not None:
            secs += f" (+ {r['compile_seconds']:.0f} compile)"
        lines += [
            f"   * - {r['backend']}",
            f"     - {r['op']}",
            f"     - {secs}",
            f"     - {'n/a' if peak is None else f'{peak / 2**20:.0f}'}",
            f"     - {'n/a' if peak is None else ('yes' if peak <= r['budget_bytes'] else 'no')}",
        ]
    lines += [
        "",
        f"Agreement with the dense solver, n = {data['agree_n']} in float64 (max abs difference over max abs "
        "value; gradients of ``sum(cotangent * out)`` for a random cotangent):",
        "",
        *_list_table("backend", "operator", "values", "gradient w.r.t. x", "gradient w.r.t. epsilon"),
    ]
    for r in data["agreement"]:
        if "error" in r:
            continue
        for op in ("sort", "ranks"):
            a = r[op]
            ge = a.get("grad_epsilon")
            lines += [
                f"   * - {r['backend']}",
                f"     - {op}",
                f"     - {a['value']:.1e}",
                f"     - {a['grad_x']:.1e}",
                f"     - {'—' if ge is None else f'{ge:.1e}'}",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--agree-n", type=int, default=5_000)
    parser.add_argument("--backends", default="numpy,jax")
    parser.add_argument("--cached-only", action="store_true", help="only collect results that workers kept earlier")
    args = parser.parse_args()
    if args.worker:
        # A worker's result is kept (outside the repository) so that a run interrupted, or
        # one worker started ahead by hand, is not measured twice.
        cache = _cache(args.worker)
        if cache.exists():
            print(cache.read_text())
            return
        kind, backend, *rest = args.worker
        out = worker_speed(backend, rest[0], int(rest[1])) if kind == "speed" else worker_agree(backend, int(rest[0]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
        print(json.dumps(out))
        return
    backends = args.backends.split(",")
    data = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "n": args.n,
        "agree_n": args.agree_n,
        "budget": BUDGET,
        "agreement": [],
        "speed": [],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (RESULTS / "long_rows.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "long_rows.rst").write_text(_rst(data))

    # Agreement first where it is quick; the long rows of the compiled backend before NumPy's.
    order = sorted(backends, key=lambda b: b == "numpy")
    if "numpy" in backends:
        data["agreement"].append(_spawn(["agree", "numpy", str(args.agree_n)], args.cached_only))
        save()
    for backend in order:
        for op in ("sort", "ranks"):
            data["speed"].append(_spawn(["speed", backend, op, str(args.n)], args.cached_only))
            save()
        if backend != "numpy":
            data["agreement"].append(_spawn(["agree", backend, str(args.agree_n)], args.cached_only))
            save()
    print(_rst(data))


if __name__ == "__main__":
    main()
