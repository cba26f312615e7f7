"""W1-W8 at GPU scale: softsort on JAX, PyTorch and CuPy against OTT-JAX and torchsort.

Run on a CUDA machine with ``nox -s bench-gpu`` (installs the CUDA builds, then runs this
script), or directly::

    python benchmarks/gpu.py --out benchmarks/results/gpu
    python benchmarks/gpu.py --scale tiny --device cpu      # a check of the script, any machine

Every library runs the same float32 inputs (batches of 10^4-10^5 rows, rows up to 4,096
values). Times are medians of repeated calls after warm-up, each call waited for on the
device (``jax.block_until_ready``, ``torch.cuda.synchronize``, CuPy's stream sync). No
float64 reference at this scale: the accuracy column is the largest distance of each
library's output to softsort-JAX's on the same workload (torchsort, another problem, to the
hard operator). Writes ``gpu.json`` (machine, GPU, versions, every cell) and ``gpu.md``.
A library that cannot be imported or fails is reported with the reason; the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
import warnings
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:  # an installed softsort (nox -s bench-gpu) wins; else the checkout this file lives in
    import softsort  # noqa: F401
except ImportError:
    sys.path.insert(1, os.path.dirname(HERE))

import _libs  # noqa: E402
import _measure  # noqa: E402
import _workloads as wl  # noqa: E402

LIBS = ("softsort-jax", "softsort-torch", "softsort-cupy", "ott", "ott-unrolled", "torchsort")

#: (rows, n) of each workload's input at each scale; "gpu" is the issue's GPU scale.
SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "gpu": {
        "W1": (64, 4096),
        "W2": (10_000, 100),
        "W3": (100_000, 10),
        "W4": (64, 4096),
        "W5": (10_000, 1000),
        "W6": (10_000, 4096),
        "G1": (100_000, 10),
        "G2": (64, 4096),
        "W7": (100_000, 64),
        "G7": (100_000, 64),
        "W8": (100_000, 128),
        "G8": (100_000, 128),
    },
    "tiny": {name: (8, 16) if name not in ("G1", "W3") else (8, 10) for name in wl.WORKLOADS},
}


OPERATION = {
    "W1": "sort",
    "W2": "sort",
    "W3": "ranks",
    "W4": "ranks",
    "W5": "top-5 values",
    "W6": "median",
    "G1": "value_and_grad soft 0/1 loss of ranks",
    "G2": "grad of sum(w * sort(x))",
    "W7": "top-2 mask",
    "G7": "value_and_grad load-balancing loss of top-2 masks",
    "W8": "ranks",
    "G8": "value_and_grad Spearman loss of ranks",
}


def make_data(name: str, rows: int, n: int) -> wl.Data:
    """The workload's inputs at another size (the CPU benchmark's distributions)."""
    rng = np.random.default_rng([wl.SEED, int(name[1]), ord(name[0]), rows, n])
    x = rng.standard_normal((rows, n)).astype(np.float32)
    if name == "G1":
        return wl.Data(x, onehot=np.eye(n, dtype=np.float32)[rng.integers(0, n, size=rows)])
    if name == "G2":
        return wl.Data(x, w=rng.standard_normal((rows, n)).astype(np.float32))
    if name == "G8":
        relevance = rng.permutation(np.tile(np.arange(n), (rows, 1)), axis=1)
        return wl.Data((0.05 * relevance + 2.0 * x).astype(np.float32), true_ranks=relevance.astype(np.float32))
    return wl.Data(x)


def run_cell(lib: str, name: str, data: wl.Data, opts: _libs.Options, args: Any) -> tuple[dict, np.ndarray | None]:
    cell: dict[str, Any] = {"library": lib, "workload": name, "shape": list(data.x.shape)}
    try:
        runner = _libs.build(lib, name, data, opts)
    except _libs.NotApplicable as exc:
        return {**cell, "status": "n/a", "reason": str(exc)}, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cell.update(_measure.time_calls(runner, args.warmup, args.repeats, 3, args.budget))
            out = wl.flatten_output(name, runner.result())
        cell["status"] = "ok" if np.all(np.isfinite(out)) else "FAIL"
        if cell["status"] == "FAIL":
            cell["reason"] = "non-finite output"
        try:
            cell["iterations"] = runner.iterations()
        except Exception as exc:
            cell["iterations_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return cell, out
    except Exception as exc:  # out of memory, a missing kernel, ...
        cell.update(status="FAIL", reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        cell["traceback"] = traceback.format_exc(limit=3)[-1500:]
        return cell, None


def devices() -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        import jax

        found["jax"] = [str(d) for d in jax.devices()]
    except Exception as exc:
        found["jax"] = f"unavailable: {exc}"
    try:
        import torch

        found["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    except Exception as exc:
        found["torch_cuda"] = f"unavailable: {exc}"
    return found


def report(cells: list[dict], meta: dict) -> str:
    libs = [lib for lib in LIBS if any(c["library"] == lib for c in cells)]
    names = list(dict.fromkeys(c["workload"] for c in cells))
    by = {(c["library"], c["workload"]): c for c in cells}

    def cell(c: dict | None, key: str) -> str:
        if c is None:
            return "—"
        if c["status"] != "ok":
            return c["status"] if c["status"] == "n/a" else f"FAIL: {c.get('reason', '')[:60]}"
        v = c.get(key)
        if v is None:
            return "—"
        return f"{v * 1e3:.3g}" if key == "median_s" else format(v, ".2e") if isinstance(v, float) else str(v)

    def table(key: str) -> list[str]:
        lines = ["| workload | " + " | ".join(libs) + " |", "|---" * (len(libs) + 1) + "|"]
        for n in names:
            shape = next(c["shape"] for c in cells if c["workload"] == n)
            label = f"{n} {OPERATION[n]} ({shape[0]}x{shape[1]})"
            lines.append(f"| {label} | " + " | ".join(cell(by.get((lib, n)), key) for lib in libs) + " |")
        return lines

    return (
        "\n".join(
            [
                "# softsort on GPU (benchmarks/gpu.py)",
                "",
                f"Date {meta['date']}; devices {meta['devices']}; versions {meta['versions']}; scale {meta['scale']}; "
                f"epsilon {meta['epsilon']}, threshold 1e-3, float32.",
                "",
                "## Median wall time (ms, device synchronized)",
                "",
                *table("median_s"),
                "",
                "## Sinkhorn iterations (max over the batch)",
                "",
                *table("iterations"),
                "",
                "## Distance to softsort-JAX's output (torchsort: to the hard operator)",
                "",
                *table("distance"),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="gpu", choices=sorted(SHAPES))
    p.add_argument("--device", default="cuda", help="PyTorch's device (cuda, or cpu for a check)")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--only", default=",".join(wl.WORKLOADS))
    p.add_argument("--epsilon", type=float, default=1e-2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per cell at most")
    p.add_argument("--memory-budget", type=int, default=32 * 2**30, help="softsort's memory_budget (bytes)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpu"))
    args = p.parse_args(argv)
    args.warmup = 2
    opts = _libs.Options(epsilon=args.epsilon, device=args.device, memory_budget=args.memory_budget)
    libs = [lib for lib in args.libs.split(",") if lib]
    skipped = {lib: why for lib in libs if (why := _libs.available(lib)) is not None}
    for lib, why in skipped.items():
        print(f"SKIP {lib}: {why}", flush=True)
    libs = [lib for lib in libs if lib not in skipped]
    cells: list[dict] = []
    t0 = time.perf_counter()
    for name in args.only.split(","):
        rows, n = SHAPES[args.scale][name]
        data = make_data(name, rows, n)
        exact = wl.hard(name, data)
        outs: dict[str, np.ndarray] = {}
        for lib in libs:
            cell, out = run_cell(lib, name, data, opts, args)
            if out is not None:
                outs[lib] = out
                ref = exact if lib == "torchsort" else outs.get("softsort-jax")
                if ref is not None and ref.shape == out.shape:
                    cell["distance"] = float(np.max(np.abs(out - ref)))
            cell.pop("times_s", None)
            cells.append(cell)
            print(
                f"{name} {lib:15s} {cell['status']:4s} {cell.get('median_s', float('nan')) * 1e3:10.3f} ms", flush=True
            )
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": _measure.machine(),
        "devices": devices(),
        "versions": {m: _libs.version(m) for m in ("softsort", "jax", "jaxlib", "torch", "cupy", "ott", "torchsort")},
        "scale": args.scale,
        "shapes": SHAPES[args.scale],
        "epsilon": args.epsilon,
        "skipped": skipped,
        "options": dataclasses.asdict(opts),
        "seconds": time.perf_counter() - t0,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as fh:
        json.dump({**meta, "cells": cells}, fh, indent=1, default=str)
    text = report(cells, meta)
    with open(os.path.join(args.out, "gpu.md"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
