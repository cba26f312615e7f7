"""Time two versions of softsort side by side in one process (A/B of a change).

The working tree's ``softsort`` runs against the package as it was at ``--old`` (extracted
with ``git archive`` and imported as ``softsort_old``), alternating old/new calls on the
benchmark's float32 inputs, so both see the same machine load. Example::

    python benchmarks/compare_commits.py --old HEAD~1 --backends numpy,jax --only W1,W3

Prints median ms per workload and backend for old and new, the largest difference between
their outputs and, with ``--accuracy``, each one's largest distance to the float64 reference
of the benchmark (threshold 1e-10). The gradient workloads (G1, G2, G7, G8: jitted
``value_and_grad`` or ``grad``, as in the benchmark) run on JAX only and without
``--accuracy``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _workloads as wl  # noqa: E402
from _libs import Options, _softsort_jax, extract_revision  # noqa: E402


def _call(mod: Any, name: str) -> Any:
    if name == "W5":
        return functools.partial(mod.sort, topk=wl.TOPK)
    if name == "W6":
        return functools.partial(mod.quantile, q=0.5)
    if name == "W7":
        return functools.partial(mod.topk_mask, k=wl.EXPERTS_K)
    if name in ("W3", "W4", "W8"):
        return mod.ranks
    return mod.sort


def _median_ms(f: Any, x: Any, repeats: int) -> float:
    f(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f(x)
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _flat(result: Any) -> np.ndarray:
    parts = result if isinstance(result, tuple) else (result,)
    return np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in parts])


def _gradient_line(name: str, old: Any, new: Any, repeats: int) -> str:
    """A gradient workload under JAX, old and new in turn (the benchmark's jitted function)."""
    data = wl.make_data(name)
    cells, outs = [], {}
    for label, mod in [("old", old), ("new", new)] * 2:
        runner = _softsort_jax(name, data, Options(), mod)
        cells.append(f"{label} {_median_ms(lambda _, r=runner: r(), None, repeats):.2f}")
        outs[label] = _flat(runner.result())
    diff = float(np.abs(outs["old"] - outs["new"]).max())
    return f"jax    {name}: " + " | ".join(cells) + f"  (max |old - new| {diff:.2e})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="git revision to compare against")
    p.add_argument("--backends", default="numpy,jax,torch")
    p.add_argument("--only", default=",".join((*wl.FORWARD, "W7", "W8")), help="workloads W1-W8, G1, G2, G7, G8")
    p.add_argument("--accuracy", action="store_true", help="also the distance to the float64 reference")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        extract_revision(args.old, tmp, "softsort_old")
        sys.path.insert(0, tmp)
        import softsort_old

        import softsort

        refs: dict[str, np.ndarray] = {}
        for backend in args.backends.split(","):
            for name in args.only.split(","):
                if name.startswith("G"):
                    if backend == "jax":
                        print(_gradient_line(name, softsort_old, softsort, args.repeats), flush=True)
                    continue
                x = wl.make_data(name).x
                cells, outs = [], {}
                for label, mod in [("old", softsort_old), ("new", softsort)] * 2:
                    f = _call(mod, name)
                    if backend == "jax":
                        import jax

                        f, xx = jax.jit(f), jax.numpy.asarray(x)
                    elif backend == "torch":
                        import torch

                        xx = torch.asarray(x)
                    else:
                        xx = x
                    cells.append(f"{label} {_median_ms(f, xx, args.repeats):.2f}")
                    outs[label] = np.asarray(f(xx))
                diff = float(np.abs(outs["old"] - outs["new"]).max())
                line = f"{backend:6s} {name}: " + " | ".join(cells) + f"  (max |old - new| {diff:.2e})"
                if args.accuracy:
                    if name not in refs:
                        refs[name] = wl.reference(name, wl.make_data(name), 1e-2, 1e-10, 100_000)
                    dist = {k: float(np.abs(v.ravel() - refs[name]).max()) for k, v in outs.items()}
                    line += f"  distance old {dist['old']:.2e} new {dist['new']:.2e}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
