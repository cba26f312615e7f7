"""Timing, peak memory and machine description."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, min_repeats: int, budget_s: float) -> dict[str, Any]:
    """Median wall time of ``fn`` after ``warmup`` calls (the first one includes compilation).

    Stops after ``repeats`` calls, or earlier once ``min_repeats`` were made and
    ``budget_s`` seconds were spent. A warm-up call longer than ``budget_s / min_repeats``
    lowers ``min_repeats`` (to 1 at least, returned as ``min_repeats``): a library that needs
    seconds a call (OTT-JAX on W8: 13 s) then costs about ``budget_s``, not ``min_repeats`` calls.
    """
    first = last = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        last = time.perf_counter() - t0
        if i == 0:
            first = last
    if last:
        min_repeats = max(1, min(min_repeats, int(budget_s // last)))
    times = time_more(fn, repeats, min_repeats, budget_s)
    return {**summary(times), "first_call_s": first, "times_s": times, "min_repeats": min_repeats}


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


#: Pause before each block of timed calls. Idle worker threads of the library timed just
#: before keep spinning for a while: OpenBLAS's (NumPy) about 2**28 cycles, ~0.1 s, after
#: its last call. On 2 cores that halved PyTorch's speed when it ran right after NumPy
#: (W1: 9.7 ms after NumPy, 5.5 ms alone; 5.2 ms after NumPy with
#: OPENBLAS_THREAD_TIMEOUT=4), which is a property of the harness, not of either library.
#: After the pause the cores are idle and slow to pick up again (the first 3-4 calls of
#: JAX's W1 took 1.7x longer; 30 ms of calls were not enough), so untimed calls run for
#: REWARM_S (at least two) first.
SETTLE_S = 0.25
REWARM_S = 0.1


def time_more(fn: Callable[[], Any], repeats: int, min_repeats: int, budget_s: float) -> list[float]:
    """Timed calls of a warm ``fn``: ``repeats``, or fewer once ``min_repeats`` took ``budget_s``."""
    time.sleep(SETTLE_S)
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < REWARM_S:
        fn()
        calls += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return times


# -- memory -------------------------------------------------------------------------------------
class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> Callable[[], int] | None:
    """Bytes in use in glibc's heap (all arenas, mmapped chunks included), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


_IN_USE = _mallinfo()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _sampled(probe: Callable[[], int], interval_s: float = 2e-4) -> Iterator[dict[str, int]]:
    """Peak of ``probe() - probe()_before`` sampled by a thread while the block runs."""
    out = {"peak": 0}
    base = probe()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], probe() - base)
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], probe() - base)


def peak_memory(fn: Callable[[], Any], method: str) -> tuple[int, str]:
    """Peak extra memory of one call of ``fn``, by ``method``: 'tracemalloc' or 'malloc' (or RSS)."""
    if method == "tracemalloc":
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak - base, "tracemalloc"
    probe, label = (_IN_USE, "malloc") if _IN_USE is not None else (_rss, "rss")
    with _sampled(probe) as out:
        fn()
    return out["peak"], label


# -- machine ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    commit = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "softsort"], capture_output=True, text=True)
        imported = sys.modules.get("softsort")
        from_checkout = imported is not None and os.path.dirname(os.path.dirname(imported.__file__)) == root
        if dirty.stdout.strip() and from_checkout:
            commit += "+dirty(softsort/)"
        elif not from_checkout:
            commit += f" (checkout; softsort imported from {os.path.dirname(imported.__file__) if imported else '?'})"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "load_average_1_5_15min": list(os.getloadavg()),  # other processes skew timings; see the report
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "softsort_commit": commit,
    }
