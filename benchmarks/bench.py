"""softsort (JAX, NumPy, PyTorch) vs OTT-JAX 0.6 and torchsort, side by side (issue #5).

Usage::

    python benchmarks/bench.py                 # full run, writes benchmarks/results/
    python benchmarks/bench.py --quick         # a fast check (few repeats, small sweep)
    python benchmarks/bench.py --only W1,G1,sweep --libs softsort-jax,ott
    python benchmarks/bench.py --separate      # each (library, workload) in its own process

Every library gets the same float32 inputs (``_workloads.py``). Without ``--separate`` all
run in this one process; with it (the committed results, ``nox -s bench``) each (library,
workload) cell runs in a process of its own, stopped after ``--cell-timeout`` seconds.
Methods (also written to results.md):

* time: median wall time of repeated calls after warm-up (the first warm-up call
  includes jit compilation and is reported separately); JAX results are waited for
  with ``jax.block_until_ready``. In one process the calls are made in 3 rounds: in each
  round every library runs a block of calls on the workload in turn, so that load from
  other processes during a workload reaches all libraries alike; with ``--separate`` the
  rounds of a cell run in its own process, one cell after another (a change of load between
  cells is not shared: compare the load averages at the top).
* iterations: Sinkhorn iterations of the workload's transport problem with the same
  options: softsort the largest of ``transport_for_sort(...).iterations`` over the batch, OTT
  the largest ``n_iters`` over the batch, read from ``ott.tools.soft_sort.transport_for_sort``
  with a ``jax.debug.callback`` (so it counts what the operator really ran, with OTT's
  sorting initializer for full sorts). For gradients, the iterations of the forward solve.
* accuracy: max abs distance to a tightly converged float64 NumPy softsort (same epsilon);
  for G1 the loss value and the gradient together. torchsort solves another problem,
  so its cell is the distance to the hard operator ('hard:'); the 'distance to hard'
  table gives that distance for every library.
* equal accuracy: the column softsort-jax-matched is softsort-jax at the loosest threshold
  1e-3 / 2^k whose accuracy is at least that of the best working OTT-JAX mode on the
  workload (found with untimed calls); its speed ratio to OTT-JAX compares results of
  equal or better accuracy.
* peak memory: JAX (softsort-jax, OTT): XLA's buffer assignment of the compiled
  function (temp + output bytes, ``compiled.memory_analysis()``); NumPy: tracemalloc
  peak over one call (NumPy reports its buffers to tracemalloc); PyTorch and torchsort:
  peak of glibc's in-use heap (``mallinfo2``) minus its value before the call,
  sampled every 0.2 ms by a thread (misses short spikes; RSS if mallinfo2 is absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:  # an installed softsort (nox -s bench) wins; else the checkout this file lives in
    import softsort  # noqa: F401
except ImportError:
    sys.path.insert(1, os.path.dirname(HERE))

import _libs  # noqa: E402
import _measure  # noqa: E402
import _targets  # noqa: E402
import _workloads as wl  # noqa: E402

DOCS_STATIC = os.path.join(os.path.dirname(HERE), "docs", "_static")
SWEEP_EPS = (1e-2, 1e-3, 1e-4)
SWEEP_N = (10, 100, 1000)
SWEEP_MAX_ITERATIONS = 10000


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # lineax/equinox errors carry a long essay: keep the first sentence
    for marker in ("The linear solver returned non-finite", "A linear solver returned non-finite"):
        if marker in text:
            return "implicit linear solve returned non-finite output (lineax)"
    return f"{type(exc).__name__}: {text[:110]}"


# -- one (library, workload) cell ---------------------------------------------------------------
def _ott_accuracy(cells: dict, name: str) -> float | None:
    """The best accuracy of a working OTT-JAX mode on this workload (None if none works)."""
    found = [
        c["ref_distance"]
        for lib in ("ott", "ott-unrolled")
        if (c := cells.get((lib, name))) is not None and c["status"] == "ok" and "ref_distance" in c
    ]
    return min(found) if found else None


def matched_threshold(name: str, data: wl.Data, ref: np.ndarray, target: float, opts: _libs.Options) -> float:
    """The loosest threshold ``1e-3 / 2**k`` at which softsort-JAX is at least as accurate as ``target``.

    Untimed calls; the cell is then timed at that threshold (so that a speed ratio compares
    results of equal or better accuracy).
    """
    threshold = opts.threshold
    while threshold > 1e-7:
        runner = _libs.build("softsort-jax", name, data, dataclasses.replace(opts, threshold=threshold))
        runner()
        if float(np.max(np.abs(wl.flatten_output(name, runner.result()) - ref))) <= target:
            break
        threshold /= 2
    return threshold


def measure_cell(
    lib: str, name: str, data: wl.Data, ref: np.ndarray | None, hard: np.ndarray, args: Any, cells: dict
) -> dict:
    """Time, accuracy, iterations and memory of one library on one workload.

    The cell keeps its runner (key ``_runner``, removed before the results are written) for
    the later timing rounds of :func:`more_rounds`.
    """
    cell: dict[str, Any] = {"library": lib, "workload": name}
    opts = _libs.Options(epsilon=args.epsilon, torchsort_strength=args.torchsort_strength)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if lib == "softsort-jax-matched":
                target = _ott_accuracy(cells, name)
                if target is None or ref is None:
                    raise _libs.NotApplicable("no working OTT-JAX mode to match")
                opts = dataclasses.replace(opts, threshold=matched_threshold(name, data, ref, target, opts))
                cell["threshold"] = opts.threshold
            runner = _libs.build(lib, name, data, opts)
        except _libs.NotApplicable as exc:
            cell["status"] = "n/a"
            cell["reason"] = str(exc)
            return cell
        try:
            budget = args.budget if name[0] == "W" else args.budget * 2
            warmup = args.warmup if (lib in _libs.JAX_LIBS or not args.quick) else 0  # eager libs: no compile
            first = None
            if warmup:  # a non-finite first answer is not timed (OTT-JAX's G7 takes minutes a call)
                t0 = time.perf_counter()
                runner()
                first = time.perf_counter() - t0
                bad = _nonfinite(wl.flatten_output(name, runner.result()))
                if bad:
                    cell.update(status="FAIL", reason=bad + " (not timed)", first_call_s=first)
                    return cell
            cell.update(
                _measure.time_calls(
                    runner, warmup - 1 if warmup else 0, args.per_round, args.min_repeats, budget / args.rounds
                )
            )
            if first is not None:
                cell["first_call_s"] = first
            cell["_runner"] = runner
            out = wl.flatten_output(name, runner.result())
        except Exception as exc:
            cell["status"] = "FAIL"
            cell["reason"] = _short(exc)
            cell["traceback"] = traceback.format_exc(limit=3)[-2000:]
            return cell
        bad = _nonfinite(out)
        cell["status"] = "FAIL" if bad else "ok"
        if bad:
            cell["reason"] = bad
        cell["hard_distance"] = float(np.max(np.abs(out - hard))) if out.shape == hard.shape else None
        if ref is not None and out.shape == ref.shape:
            cell["ref_distance"] = float(np.max(np.abs(out - ref)))
        try:
            cell["iterations"] = runner.iterations()
        except Exception as exc:
            cell["iterations_error"] = _short(exc)
        try:
            mem = runner.static_memory()
            if mem is None and not args.quick:  # --quick: no extra call to sample memory
                mem = _measure.peak_memory(runner, runner.memory_method)
            if mem is not None:
                cell["peak_memory_bytes"], cell["memory_method"] = mem
        except Exception as exc:
            cell["memory_error"] = _short(exc)
    msgs = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if msgs:
        cell["warnings"] = msgs
    return cell


def _nonfinite(out: np.ndarray) -> str | None:
    bad = int(np.sum(~np.isfinite(out)))
    return f"non-finite output ({bad} of {out.size} values)" if bad else None


def more_rounds(cells: list[dict], name: str, args: Any) -> None:
    """Rounds 2..R of timing: every working library of the workload in turn, again.

    One block of calls per library and round, so that a change of machine load during
    the workload (other processes on a shared machine) reaches every library alike; the
    median is over all rounds.
    """
    budget = (args.budget if name[0] == "W" else args.budget * 2) / args.rounds
    for _ in range(args.rounds - 1):
        for cell in cells:
            if cell.get("status") != "ok" or "_runner" not in cell:
                continue
            cell["times_s"] += _measure.time_more(cell["_runner"], args.per_round, cell["min_repeats"], budget)
    for cell in cells:
        cell.pop("_runner", None)
        if "times_s" in cell:
            cell.update(_measure.summary(cell["times_s"]))
            cell["rounds"] = args.rounds


# -- iteration sweep --------------------------------------------------------------------------
def sweep(libs: list[str], args: Any) -> list[dict]:
    """Iterations of a plain sort over epsilon x n, threshold 1e-3, max_iterations 10000."""
    ns = SWEEP_N if not args.quick else (10, 100)
    rows = []
    soft_backend = next((b for b in ("softsort-jax", "softsort-torch", "softsort-numpy") if b in libs), None)
    for eps in SWEEP_EPS:
        for n in ns:
            x = np.random.default_rng([wl.SEED, n, 99]).standard_normal(n).astype(np.float32)
            row: dict[str, Any] = {"epsilon": eps, "n": n}
            opts = {"epsilon": eps, "threshold": 1e-3, "max_iterations": SWEEP_MAX_ITERATIONS}
            if soft_backend is not None:
                try:
                    it, conv, secs = _sweep_softsort(soft_backend, x, opts)
                    row.update(softsort=it, softsort_converged=conv, softsort_s=secs)
                    row["softsort_backend"] = soft_backend
                except Exception as exc:
                    row["softsort_error"] = _short(exc)
            if "ott" in libs:
                try:
                    row["ott"], row["ott_s"] = _sweep_ott(x, opts)
                except Exception as exc:
                    row["ott_error"] = _short(exc)
            rows.append(row)
            print(f"  sweep eps={eps:g} n={n}: softsort {row.get('softsort')} ott {row.get('ott')}", flush=True)
    return rows


def _sweep_softsort(backend: str, x: np.ndarray, opts: dict) -> tuple[int, bool, float]:
    import softsort

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "softsort-jax":
            import jax
            import jax.numpy as jnp

            def solve(x: Any) -> Any:
                r = softsort.transport_for_sort(x, **opts)
                return r.iterations, r.converged

            it, conv = jax.jit(solve)(jnp.asarray(x))
        else:
            xx = x if backend == "softsort-numpy" else __import__("torch").from_numpy(x)
            r = softsort.transport_for_sort(xx, **opts)
            it, conv = r.iterations, r.converged
    return int(it), bool(np.all(np.asarray(conv))), time.perf_counter() - t0


def _sweep_ott(x: np.ndarray, opts: dict) -> tuple[int, float]:
    import jax
    import jax.numpy as jnp
    from ott.tools import soft_sort as ots

    t0 = time.perf_counter()
    with _libs._record_ott_iterations() as rec:
        jax.block_until_ready(jax.jit(lambda x: ots.sort(x, **opts))(jnp.asarray(x)))
    return int(max(int(np.max(r)) for r in rec)), time.perf_counter() - t0


# -- report -------------------------------------------------------------------------------------
def _fmt_time(c: dict | None) -> str:
    if c is None:
        return "—"
    if c["status"] == "n/a":
        return "n/a"
    if c["status"] == "timeout":
        return f"stopped: the cell ran over {c['timeout_s']:g} s"
    if c["status"] == "FAIL":
        t = f" (ran {c['median_s'] * 1e3:.3g} ms)" if "median_s" in c else ""
        return f"FAIL: {c['reason']}{t}"
    return f"{c['median_s'] * 1e3:.3g}"


def _fmt(c: dict | None, key: str, fmt: str, prefix: str = "") -> str:
    if c is None or c["status"] in ("n/a", "timeout"):
        return {None: "—", "n/a": "n/a", "timeout": "stopped"}[c and c["status"]]
    if c["status"] == "FAIL" and key not in c:
        return "FAIL"
    v = c.get(key)
    if v is None:
        return "—"
    return prefix + format(v, fmt)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in xs) / len(xs))


def ratios(cells: dict, sweep_rows: list[dict]) -> dict[str, Any]:
    def t(lib: str, name: str) -> float | None:
        c = cells.get((lib, name))
        return c["median_s"] if c is not None and c["status"] == "ok" else None

    out: dict[str, Any] = {}
    for lib, label in (
        ("softsort-jax", "softsort-jax"),
        ("softsort-jax-ottpath", "softsort-jax-ottpath (OTT-JAX's path: init='zeros', momentum=1)"),
        ("softsort-jax-matched", "softsort-jax-matched (accuracy >= OTT's)"),
    ):
        pairs = [(w, t("ott", w), t(lib, w)) for w in wl.FORWARD]
        ok = [(w, o, s) for w, o, s in pairs if o is not None and s is not None]
        if ok:
            out[f"W1-W6 geomean speedup {label} over ott"] = _geomean([o / s for _, o, s in ok])
            if lib == "softsort-jax":
                out["W1-W6 geomean: workloads used"] = [w for w, _, _ in ok]
    for lib in ("softsort-jax", "softsort-jax-matched") if any(k[0].startswith("ott") for k in cells) else ():
        worse = {
            w: f"{c['ref_distance'] / target:.4g}x"
            for w in wl.WORKLOADS
            if (c := cells.get((lib, w))) is not None
            and c["status"] == "ok"
            and (target := _ott_accuracy(cells, w)) is not None
            and c.get("ref_distance", math.inf) > target
        }
        out[f"workloads where {lib} is less accurate than OTT-JAX (its error / OTT-JAX's)"] = worse or "none"
    s_g1 = t("softsort-jax", "G1")
    for mode in ("ott", "ott-unrolled"):
        if s_g1 and t(mode, "G1"):
            out[f"G1 speedup softsort-jax over {mode} (OTT's working mode)"] = t(mode, "G1") / s_g1
            break
    for w in ("W1", "W2", "W4", "W6", "W8"):
        base = t("softsort-jax", w)
        for lib in ("softsort-numpy", "softsort-torch"):
            v = t(lib, w)
            if base and v:
                out[f"{w} {lib} time / softsort-jax time"] = v / base
    for w in ("W3", "G1", "W7", "G7", "W8", "G8"):
        base, now, ts = t("softsort-jax-base", w), t("softsort-jax", w), t("torchsort", w)
        if base and now:
            out[f"{w} speedup softsort-jax over softsort-jax-base"] = base / now
        if now and ts:
            out[f"{w} softsort-jax time / torchsort time"] = now / ts
    it = [r["softsort"] / r["ott"] for r in sweep_rows if r["epsilon"] <= 1e-3 and r.get("softsort") and r.get("ott")]
    if it:
        out["sweep iterations softsort/ott at eps<=1e-3, geomean"] = _geomean(it)
        out["sweep iterations softsort/ott at eps<=1e-3, max"] = max(it)
    return out


def report(cells: dict, libs: list[str], names: list[str], sweep_rows: list[dict], meta: dict) -> str:
    described = meta["workloads"]

    def rows(render: Any) -> list[list[str]]:
        return [[f"{n} {described[n]}"] + [render(cells.get((lib, n)), lib) for lib in libs] for n in names]

    head = ["workload", *libs]
    parts = [
        "# softsort benchmark (issues #5 and #16)",
        "",
        f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['usable_cpus']} usable CPUs; "
        f"Python {meta['machine']['python']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
        + f"; softsort commit {meta['machine']['softsort_commit']}. "
        f"Load average (1 min) at start / end: {meta['machine']['load_average_at_start'][0]:.2f} / "
        f"{meta['machine']['load_average_1_5_15min'][0]:.2f} (other processes on the machine skew timings).",
        f"float32 inputs; epsilon={meta['options']['epsilon']}, threshold=1e-3, max_iterations=2000, "
        f"inner_iterations=10; torchsort regularization_strength={meta['options']['torchsort_strength']} (l2). "
        f"Mode: {'quick' if meta['options']['quick'] else 'full'}.",
    ]
    parts[-1] += f" Accuracy reference threshold {meta['options']['reference']['threshold']:g}."
    if meta["options"].get("base"):
        parts[-1] += f" softsort-jax-base: softsort at revision {meta['options']['base']}."
    parts[-1] += (
        f" Each (library, workload) cell timed in its own process (``--separate``), stopped after "
        f"{meta['options']['cell_timeout']:g} s."
        if meta["options"].get("separate")
        else " All libraries timed in this one process."
    )
    if meta["skipped"]:
        parts += ["", "Skipped libraries: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items())]
    parts += [
        "",
        "## Median wall time (ms)",
        "",
        _table(head, rows(lambda c, lib: _fmt_time(c))),
        "",
        "## First call (ms, includes jit compilation)",
        "",
        _table(
            head,
            rows(
                lambda c, lib: _fmt(
                    c and {**c, "f": c["first_call_s"] * 1e3 if c.get("first_call_s") else None}, "f", ".4g"
                )
            ),
        ),
        "",
        "## Sinkhorn iterations (max over the batch)",
        "",
        _table(head, rows(lambda c, lib: "—" if lib == "torchsort" else _fmt(c, "iterations", "d"))),
        "",
        "## Accuracy: max abs distance to tightly converged float64 softsort; torchsort: to the hard operator",
        "",
        _table(
            head,
            rows(
                lambda c, lib: (
                    _fmt(c, "hard_distance", ".2e", "hard: ") if lib == "torchsort" else _fmt(c, "ref_distance", ".2e")
                )
            ),
        ),
        "",
        "## Distance to the hard operator (G1: loss value and zero gradient; G2: w[rank])",
        "",
        _table(head, rows(lambda c, lib: _fmt(c, "hard_distance", ".3g"))),
        "",
        "## Peak memory (MiB; method in brackets: xla = compiled buffer assignment, "
        "tracemalloc, malloc = sampled glibc heap delta)",
        "",
        _table(
            head,
            rows(
                lambda c, lib: (
                    _fmt(
                        c and {**c, "m": c["peak_memory_bytes"] / 2**20 if "peak_memory_bytes" in c else None},
                        "m",
                        ".3g",
                    )
                    + (f" [{c['memory_method']}]" if c and "memory_method" in c else "")
                )
            ),
        ),
    ]
    if sweep_rows:
        srows = []
        for r in sweep_rows:
            s, o = r.get("softsort"), r.get("ott")
            srows.append(
                [
                    f"{r['epsilon']:g}",
                    str(r["n"]),
                    (str(s) + ("" if r.get("softsort_converged", True) else " (not converged)"))
                    if s is not None
                    else r.get("softsort_error", "—"),
                    str(o) if o is not None else r.get("ott_error", "—"),
                    f"{s / o:.2f}" if s and o else "—",
                ]
            )
        backend = next((r["softsort_backend"] for r in sweep_rows if "softsort_backend" in r), "?")
        parts += [
            "",
            f"## Iterations of sort vs epsilon and n (threshold 1e-3, max_iterations {SWEEP_MAX_ITERATIONS}; "
            f"softsort on {backend}, OTT with its sorting initializer)",
            "",
            _table(["epsilon", "n", "softsort", "ott", "softsort/ott"], srows),
        ]
    matched = {n: c["threshold"] for (lib, n), c in cells.items() if lib == "softsort-jax-matched" and "threshold" in c}
    if matched:
        parts += [
            "",
            "softsort-jax-matched: softsort-jax at the loosest threshold 1e-3 / 2^k whose accuracy is at least "
            "OTT-JAX's on the workload: " + ", ".join(f"{n} {v:g}" for n, v in matched.items()) + ".",
        ]
    rat = meta["ratios"]
    if rat:
        parts += ["", "## Ratios targeted by the issue", ""]
        parts += [f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in rat.items()]
    fails = [c for c in cells.values() if c["status"] == "FAIL"]
    if fails:
        parts += ["", "## Failures", ""]
        parts += [f"- {c['library']} {c['workload']}: {c['reason']}" for c in fails]
    stopped = [c for c in cells.values() if c["status"] == "timeout"]
    if stopped:
        parts += ["", "## Stopped (did not finish within the cell timeout)", ""]
        parts += [f"- {c['library']} {c['workload']}: stopped after {c['timeout_s']:g} s" for c in stopped]
    warns = [(c["library"], c["workload"], w) for c in cells.values() for w in c.get("warnings", [])]
    if warns:
        parts += ["", "## Warnings raised during the runs", ""]
        parts += [f"- {lib} {n}: {w[:300]}" for lib, n, w in warns]
    parts += ["", "## Method", "", __doc__.split("Methods (also written to results.md):")[1].strip()]
    return "\n".join(parts) + "\n"


def plot(cells: dict, libs: list[str], names: list[str], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(names)), 4.5))
    width = 0.8 / max(1, len(libs))
    for i, lib in enumerate(libs):
        xs, ys = [], []
        for j, n in enumerate(names):
            c = cells.get((lib, n))
            if c is not None and c["status"] == "ok":
                xs.append(j + (i - (len(libs) - 1) / 2) * width)
                ys.append(c["median_s"] * 1e3)
        ax.bar(xs, ys, width=width, label=lib)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("median wall time (ms, log scale)")
    ax.set_title("softsort vs OTT-JAX vs torchsort (float32, CPU); missing bar = n/a or failed")
    ax.legend(fontsize=8, ncols=3)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats and a small sweep (a check, < 3 minutes)")
    p.add_argument("--only", default=None, help=f"comma list of {','.join(wl.WORKLOADS)},sweep")
    p.add_argument("--libs", default=None, help=f"comma list of {','.join(_libs.LIBS)}")
    p.add_argument("--epsilon", type=float, default=1e-2)
    p.add_argument("--torchsort-strength", type=float, default=1.0, help="torchsort regularization_strength (l2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 20; quick 3)")
    p.add_argument("--rows", type=int, default=None, help="batch of W7, G7, W8, G8 (default 16384 / 4096)")
    p.add_argument("--base", default=_libs.BASE_REVISION, help="git revision that softsort-jax-base runs")
    p.add_argument("--separate", action="store_true", help="time each (library, workload) in its own process")
    p.add_argument("--cell-timeout", type=float, default=300.0, help="--separate: stop a cell after this many seconds")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    # internal, for --separate: one library's cells to a file; other libraries' cells to read
    p.add_argument("--cells-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cells-in", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ref-cache", default=None, help=argparse.SUPPRESS)
    return p


def _separate(argv: list[str], libs: list[str], wanted: list[str], tmp: str, timeout: float) -> tuple[dict, list[dict]]:
    """Run this script once per (library, workload) cell (and once for the sweep), each in a fresh process.

    Libraries then cannot disturb each other (thread pools, allocator state, XLA's
    compilation threads), and a cell that runs longer than ``timeout`` seconds (OTT-JAX
    needs minutes a call on G7, G8) is stopped and reported as such instead of holding up
    the run. ``softsort-jax-matched`` runs after OTT-JAX and reads its cells (it matches
    OTT-JAX's accuracy). The float64 references are computed once and shared (``--ref-cache``).
    """
    import subprocess

    cells: dict[tuple[str, str], dict] = {}
    forward = [a for a in argv if a != "--separate"]
    for flag in ("--libs", "--only", "--cell-timeout"):
        forward = [a for k, a in enumerate(forward) if a != flag and (k == 0 or forward[k - 1] != flag)]
    names = [w for w in wanted if w != "sweep"]
    for lib in libs:
        for name in names:
            path = os.path.join(tmp, f"{lib}-{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), *forward, "--libs", lib, "--only", name]
            cmd += ["--cells-out", path, "--out", os.path.join(tmp, f"{lib}-{name}"), "--ref-cache", tmp]
            if lib == "softsort-jax-matched":
                cmd += ["--cells-in", ",".join(os.path.join(tmp, f"{o}-{name}.json") for o in ("ott", "ott-unrolled"))]
            print(f"== {lib} {name} in its own process", flush=True)
            try:
                subprocess.run(cmd, check=False, timeout=timeout)
            except subprocess.TimeoutExpired:
                cells[(lib, name)] = {"library": lib, "workload": name, "status": "timeout", "timeout_s": timeout}
                print(f"  {name} {lib}: did not finish within {timeout:g} s", flush=True)
                continue
            if os.path.exists(path):
                with open(path) as fh:
                    for c in json.load(fh):
                        cells[(c["library"], c["workload"])] = c
    sweep_rows: list[dict] = []
    if "sweep" in wanted:
        path = os.path.join(tmp, "sweep.json")
        sweep_libs = ",".join(lib for lib in libs if lib in ("softsort-jax", "softsort-torch", "softsort-numpy", "ott"))
        cmd = [sys.executable, os.path.abspath(__file__), *forward, "--libs", sweep_libs, "--only", "sweep"]
        subprocess.run([*cmd, "--cells-out", path, "--out", os.path.join(tmp, "sweep")], check=False)
        if os.path.exists(os.path.join(tmp, "sweep", "results.json")):
            with open(os.path.join(tmp, "sweep", "results.json")) as fh:
                sweep_rows = json.load(fh)["sweep"]
    return cells, sweep_rows


def main(argv: list[str] | None = None) -> int:
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    args = p.parse_args(argv)
    args.warmup = 1 if args.quick else 2
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.min_repeats = 1 if args.quick else 3
    args.rounds = 1 if args.quick else 3
    args.per_round = -(-args.repeats // args.rounds)
    args.budget = 1.0 if args.quick else 15.0

    wanted = [s.strip() for s in args.only.split(",")] if args.only else [*wl.WORKLOADS, "sweep"]
    unknown = [w for w in wanted if w not in wl.WORKLOADS and w != "sweep"]
    libs = [s.strip() for s in args.libs.split(",")] if args.libs else list(_libs.LIBS)
    unknown += [lib for lib in libs if lib not in _libs.LIBS]
    if unknown:
        p.error(f"unknown workload or library: {', '.join(unknown)}")
    names = [w for w in wl.WORKLOADS if w in wanted]
    rows = {n: args.rows or wl.DEFAULT_ROWS[n] for n in names if n in wl.DEFAULT_ROWS}

    skipped = {}
    for lib in list(libs):
        reason = _libs.available(lib)
        if reason is not None:
            print(f"SKIP {lib}: {reason}", flush=True)
            skipped[lib] = reason
            libs.remove(lib)
    if not args.separate and any(lib in _libs.JAX_LIBS for lib in libs):
        import jax

        if jax.config.jax_enable_x64:
            print("note: JAX_ENABLE_X64 is on; inputs stay float32", flush=True)
    if "softsort-jax-base" in libs and not args.separate:
        _libs.base_softsort(args.base)

    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    cells: dict[tuple[str, str], dict] = {}
    sweep_rows: list[dict] = []
    if args.separate:
        with tempfile.TemporaryDirectory() as tmp:
            cells, sweep_rows = _separate(argv, libs, wanted, tmp, args.cell_timeout)
    else:
        for path in (args.cells_in or "").split(","):
            if path and os.path.exists(path):
                with open(path) as fh:
                    cells.update({(c["library"], c["workload"]): c for c in json.load(fh)})
        _measure_all(cells, libs, names, rows, args)
        sweep_rows = sweep(libs, args) if "sweep" in wanted else []
    if args.cells_out:  # a child of --separate: its library's cells only
        with open(args.cells_out, "w") as fh:
            json.dump([c for (lib, _), c in cells.items() if lib in libs], fh, default=str)
        if "sweep" not in wanted:
            return 0

    versions = {m: _libs.version(m) for m in ("softsort", "numpy", "jax", "jaxlib", "torch", "ott", "torchsort")}
    if "torch" in sys.modules:
        versions["torch_threads"] = sys.modules["torch"].get_num_threads()
    ref_thr, ref_max = _reference_options(args)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": _measure.machine(),
        "versions": versions,
        "options": {
            "epsilon": args.epsilon,
            "torchsort_strength": args.torchsort_strength,
            "quick": args.quick,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "rows": rows,
            "separate": args.separate,
            "cell_timeout": args.cell_timeout,
            "base": args.base if "softsort-jax-base" in libs else None,
            "softsort_path": os.path.dirname(sys.modules["softsort"].__file__) if "softsort" in sys.modules else None,
            "reference": {"dtype": "float64", "backend": "numpy", "threshold": ref_thr, "max_iterations": ref_max},
        },
        "skipped": skipped,
        "workloads": {n: wl.describe(n, rows.get(n, 0)) for n in names},
    }
    meta["machine"]["load_average_at_start"] = load_before
    meta["ratios"] = ratios(cells, sweep_rows)
    cells = {k: c for k, c in cells.items() if k[0] in libs}
    text = report(cells, libs, names, sweep_rows, meta)
    print()
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    full = {**meta, "cells": list(cells.values()), "sweep": sweep_rows}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(full, f, indent=1, default=str)
    _targets.write(full, args.out)  # docs/performance.rst
    msg = plot(cells, libs, names, os.path.join(args.out, "timings.png"))
    if msg is None and os.path.abspath(args.out) == os.path.join(HERE, "results"):
        import shutil  # the performance page's figure: the committed run's plot

        shutil.copyfile(os.path.join(args.out, "timings.png"), os.path.join(DOCS_STATIC, "benchmark_timings.png"))
    print(msg or f"wrote {args.out}/results.md, results.json, timings.png", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


def _reference_options(args: Any) -> tuple[float, int]:
    return (1e-7, 100_000) if args.quick else (1e-9, 100_000)


def cached_reference(name: str, data: wl.Data, args: Any) -> np.ndarray:
    """The workload's accuracy reference, computed once per ``--separate`` run.

    The children of ``--separate`` share the folder ``--ref-cache``: the float64 references of
    W7-G8 take a minute each, and every library's process needs them.
    """
    ref_thr, ref_max = _reference_options(args)
    path = None
    if args.ref_cache:
        shape = "x".join(map(str, data.x.shape))
        path = os.path.join(args.ref_cache, f"ref-{name}-{shape}-{args.epsilon:g}-{ref_thr:g}-{ref_max}.npy")
        if os.path.exists(path):
            return np.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = wl.reference(name, data, args.epsilon, ref_thr, ref_max)
    if path is not None:  # whole or not at all: a child stopped by --cell-timeout leaves no torn file
        np.save(path + ".part.npy", ref)
        os.replace(path + ".part.npy", path)
    return ref


def _measure_all(cells: dict, libs: list[str], names: list[str], rows: dict[str, int], args: Any) -> None:
    """Every (library, workload) cell of this process, workload by workload."""
    # OTT's failing implicit solve logs a long lineax traceback from a callback; the cell says FAIL
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    for name in names:
        data = wl.make_data(name, rows.get(name))
        hard = wl.hard(name, data)
        ref = None
        if any(lib != "torchsort" for lib in libs):
            t0 = time.perf_counter()
            ref = cached_reference(name, data, args)
            print(f"{name}: reference in {time.perf_counter() - t0:.1f} s", flush=True)
        for lib in libs:
            cells[(lib, name)] = measure_cell(lib, name, data, ref, hard, args, cells)
        more_rounds([cells[(lib, name)] for lib in libs], name, args)
        for lib in libs:
            c = cells[(lib, name)]
            print(
                f"  {name} {lib:15s} time {_fmt_time(c):>10s} ms  it {_fmt(c, 'iterations', 'd'):>5s}  "
                f"err {_fmt(c, 'ref_distance', '.2e')}  hard {_fmt(c, 'hard_distance', '.2e')}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
