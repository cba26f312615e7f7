"""Choose each CPU adapter's cache chunk (``Backend.cache_chunk_bytes``) by timing the workloads.

A batch whose plans exceed the chunk is solved in chunks of that many bytes of plans (see
``softsort._core._operators.cache_rows``). This times workloads at several chunk sizes,
each (library, size) in its own process with every adapter's ``cache_chunk_bytes`` set to
that size ("none": the batch at once), and reports the median ms per call and the largest
difference to the unsplit result. Example::

    python benchmarks/chunk_sizes.py --libs softsort-jax --only W8,G8 --sizes none,256K,1M,4M

The result is merged into ``benchmarks/results/chunk_sizes.json`` (``--out``). The sizes in the
adapters (``CACHE_CHUNK_BYTES`` in ``softsort/backends/``) were chosen with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _workloads as wl  # noqa: E402
from _measure import machine, time_calls  # noqa: E402

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int | None:
    """``none``, ``4096``, ``256K``, ``1M``: bytes, or None for "never split"."""
    if text == "none":
        return None
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def _set_chunk(nbytes: int | None) -> None:
    """Every adapter's ``cache_chunk_bytes`` returns ``nbytes`` (the adapters that import here)."""
    import importlib

    from softsort import backends

    for mod in ("_numpy", "_jax", "_torch"):
        try:
            importlib.import_module(f"softsort.backends.{mod}")
        except ImportError:
            continue
    todo = [backends.Backend]
    while todo:
        cls = todo.pop()
        cls.cache_chunk_bytes = lambda self, like, nbytes=nbytes: nbytes  # type: ignore[method-assign]
        todo.extend(cls.__subclasses__())


def _flat(result: Any) -> np.ndarray:
    """A workload's result (an array, or value and gradient) as one float64 vector."""
    parts = result if isinstance(result, tuple) else (result,)
    return np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in parts])


def worker(lib: str, size: str, name: str, rows: int | None, out: str) -> None:
    from _libs import Options, build

    _set_chunk(parse_size(size))
    data = wl.make_data(name, rows)
    runner = build(lib, name, data, Options())
    timing = time_calls(runner, warmup=2, repeats=9, min_repeats=3, budget_s=30.0)
    np.save(out, _flat(runner.result()))
    print(json.dumps({"median_ms": timing["median_s"] * 1e3, "first_call_s": timing["first_call_s"]}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libs", default="softsort-numpy,softsort-jax,softsort-torch")
    p.add_argument("--only", default="W8,G8,W7,G7")
    p.add_argument("--sizes", default="none,256K,1M,4M,8M,16M")
    p.add_argument("--rows", type=int, default=None, help="batch of W7/G7/W8/G8 (default: the workload's)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    p.add_argument("--out", default=os.path.join(HERE, "results", "chunk_sizes.json"))
    p.add_argument("--worker", nargs=4, metavar=("LIB", "SIZE", "NAME", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker[:3], args.rows, args.worker[3])
        return 0
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for lib in args.libs.split(","):
            for name in args.only.split(","):
                base = None
                for size in args.sizes.split(","):
                    path = os.path.join(tmp, f"{lib}-{name}-{size}.npy")
                    cmd = [sys.executable, __file__, "--worker", lib, size, name, path]
                    if args.rows is not None:
                        cmd += ["--rows", str(args.rows)]
                    env = {**os.environ, "JAX_ENABLE_X64": "0"}
                    try:
                        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                    except subprocess.TimeoutExpired:
                        cell = {"lib": lib, "workload": name, "size": size, "error": f"over {args.timeout:.0f} s"}
                    else:
                        if done.returncode != 0:
                            cell = {"lib": lib, "workload": name, "size": size, "error": done.stderr[-400:]}
                        else:
                            cell = {
                                "lib": lib,
                                "workload": name,
                                "size": size,
                                **json.loads(done.stdout.splitlines()[-1]),
                            }
                            flat = np.load(path)
                            base = flat if base is None and size == "none" else base
                            if base is not None:
                                cell["max_diff_to_none"] = float(np.abs(flat - base).max())
                    cells.append(cell)
                    shown = f"{cell['median_ms']:9.1f} ms" if "median_ms" in cell else cell["error"].strip()[-120:]
                    diff = f"  (max diff to none {cell['max_diff_to_none']:.1e})" if "max_diff_to_none" in cell else ""
                    print(f"{lib:15s} {name:3s} {size:>5s}: {shown}{diff}", flush=True)
    # Merged into the file's earlier cells (a run per library fits a time limit better);
    # a cell measured again replaces the old one.
    kept: list[dict[str, Any]] = []
    if os.path.exists(args.out):
        with open(args.out) as fh:
            earlier = json.load(fh)
        if earlier.get("rows") == args.rows:
            done = {(c["lib"], c["workload"], c["size"]) for c in cells}
            kept = [c for c in earlier["cells"] if (c["lib"], c["workload"], c["size"]) not in done]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"machine": machine(), "rows": args.rows, "cells": kept + cells}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
