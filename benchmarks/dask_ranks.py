"""Soft ranks of a large float64 matrix: Dask on a cluster of worker processes vs NumPy in one process.

Each measurement runs in a fresh process (NumPy: ``softsort.ranks(x)`` on the whole array;
Dask: a ``LocalCluster`` of ``--workers`` processes, one thread each, on 127.0.0.1, with the
input already persisted on the workers, timing ``softsort.ranks(x).compute()``, the result
gathered back to the client). BLAS and OpenMP pools are pinned to one thread in every
process, so that "one process" is one core and the cluster uses ``--workers`` cores. The two
kinds alternate, ``--repeat`` times each; the JSON keeps every time and the load average
(other processes on the machine slow both).

    python benchmarks/dask_ranks.py                       # 200,000 x 100, 2 workers, 3 repeats
    python benchmarks/dask_ranks.py --rows 20000 --repeat 2 --out /tmp/results

writes ``dask_ranks.json`` and ``dask_ranks.rst`` (included by docs/scaling.rst). Needs the
``dask`` extra (``pip install "softsort[dask]"``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _data(rows: int, cols: int):
    import numpy as np

    return np.random.default_rng(0).normal(size=(rows, cols))


def _time_numpy(rows: int, cols: int) -> dict:
    import softsort

    x = _data(rows, cols)
    start = time.perf_counter()
    out = softsort.ranks(x)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "checksum": float(out[:: max(1, rows // 1000)].sum())}


def _time_dask(rows: int, cols: int, workers: int, chunk_rows: int) -> dict:
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import softsort

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("softsort"))  # imports on the workers are not the solve
        x = client.persist(da.from_array(_data(rows, cols), chunks=(chunk_rows, cols)))
        wait(x)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        out = softsort.ranks(x).compute()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "setup_seconds": setup, "checksum": float(out[:: max(1, rows // 1000)].sum())}


def _child(args: argparse.Namespace) -> None:
    if args.child == "numpy":
        result = _time_numpy(args.rows, args.cols)
    else:
        result = _time_dask(args.rows, args.cols, args.workers, args.chunk_rows)
    print(json.dumps(result))


def _run_child(kind: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(args.rows), "--cols", str(args.cols)]
    cmd += ["--workers", str(args.workers), "--chunk-rows", str(args.chunk_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _autogroup() -> str:
    try:
        return "on" if pathlib.Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1" else "off"
    except OSError:
        return "unknown"


def _rst(report: dict) -> str:
    r = report
    rows = [
        ("array", f"{r['rows']:,} x {r['cols']} float64, chunks of {r['chunk_rows']:,} rows"),
        ("NumPy, one process (median s)", f"{r['numpy_median_s']:.2f}"),
        (f"Dask, {r['workers']} worker processes (median s)", f"{r['dask_median_s']:.2f}"),
        ("speed-up (NumPy time / Dask time)", f"{r['ratio']:.2f}x"),
        ("all times, NumPy (s)", ", ".join(f"{t:.2f}" for t in r["numpy_s"])),
        ("all times, Dask (s)", ", ".join(f"{t:.2f}" for t in r["dask_s"])),
        ("cluster start and data placement, not timed (s)", ", ".join(f"{t:.1f}" for t in r["dask_setup_s"])),
        (
            "machine",
            f"{r['cpus']} CPUs; load average {r['load_start']} at start, {r['load_end']} at end; "
            f"scheduler autogroup {r['autogroup']}",
        ),
        ("measured", f"{r['date']} with ``{r['command']}``"),
    ]
    lines = [".. list-table::", "   :header-rows: 0", ""]
    for key, value in rows:
        lines += [f"   * - {key}", f"     - {value}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cols", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per block (default rows / (4 workers))")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", choices=["numpy", "dask"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_rows is None:
        args.chunk_rows = max(1, -(-args.rows // (4 * args.workers)))
    if args.child:
        _child(args)
        return
    load_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    runs: dict[str, list[dict]] = {"numpy": [], "dask": []}
    for i in range(args.repeat):
        for kind in ("numpy", "dask"):
            runs[kind].append(_run_child(kind, args))
            print(f"round {i + 1}/{args.repeat} {kind}: {runs[kind][-1]['seconds']:.2f} s", flush=True)
    checks = {round(r["checksum"], 6) for kind in runs for r in runs[kind]}
    if len(checks) != 1:
        raise SystemExit(f"NumPy and Dask results differ: checksums {sorted(checks)}")
    numpy_s = [r["seconds"] for r in runs["numpy"]]
    dask_s = [r["seconds"] for r in runs["dask"]]
    command = "python benchmarks/dask_ranks.py" + "".join(
        f" --{k} {v}"
        for k, v, d in (("rows", args.rows, 200_000), ("cols", args.cols, 100), ("workers", args.workers, 2))
        if v != d
    )
    command += f" --repeat {args.repeat}" if args.repeat != 3 else ""
    report = {
        "rows": args.rows,
        "cols": args.cols,
        "workers": args.workers,
        "chunk_rows": args.chunk_rows,
        "repeat": args.repeat,
        "numpy_s": numpy_s,
        "dask_s": dask_s,
        "dask_setup_s": [r["setup_seconds"] for r in runs["dask"]],
        "numpy_median_s": statistics.median(numpy_s),
        "dask_median_s": statistics.median(dask_s),
        "ratio": statistics.median(numpy_s) / statistics.median(dask_s),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "threads_per_process": 1,
        # With autogroup on, a busy machine gives each session (this script and all its
        # processes) one share of the CPUs: two workers then cannot get more than NumPy's one.
        "autogroup": _autogroup(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dask_ranks.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "dask_ranks.rst").write_text(_rst(report))
    print(_rst(report))


if __name__ == "__main__":
    main()
