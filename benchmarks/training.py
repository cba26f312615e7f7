"""Measure the tutorial's training runs and write the results page's table.

    python benchmarks/training.py                      # both frameworks, the CLI's defaults
    python benchmarks/training.py --frameworks torch   # one of them

Runs ``python -m softsort train --framework <fw> --loss both --no-progress`` as a fresh
process per framework (process start to exit, JIT compilation included), reads the
``metrics.json`` it writes, and writes ``benchmarks/results/training.json`` (machine,
versions, load, every number) and ``benchmarks/results/training.rst``, which
``docs/results.rst`` includes: every figure on that page comes from here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from _measure import machine  # noqa: E402

import softsort  # noqa: E402, F401  (machine() reports the commit of the softsort imported)

NAMES = {"jax": "JAX (flax + optax, jitted step)", "torch": "PyTorch (autograd, 1 thread)"}
PACKAGES = {"jax": ("jax", "flax", "optax"), "torch": ("torch",)}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def measure(framework: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "softsort", "train", "--framework", framework, "--loss", "both"]
        cmd += ["--no-progress", "--out", out]
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "MPLBACKEND": "Agg"}
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.json")) as fh:
            metrics = json.load(fh)
    row = {
        "framework": framework,
        "command": " ".join(["python", *cmd[1:-2]]),
        "command_wall_s": wall,
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        "versions": {p: _version(p) for p in PACKAGES[framework]},
        "data": metrics["data"],
        "train_size": metrics["train_size"],
        "eval_size": metrics["eval_size"],
        "config": metrics["config"],
    }
    for loss in ("soft-error", "cross-entropy"):
        c = metrics[loss]
        row[loss] = {
            "final_eval_accuracy": c["final_eval_accuracy"],
            "final_train_accuracy": c["train"]["accuracy"][-1],
            "final_train_cross_entropy": c["train"]["cross_entropy"][-1],
            "wall_s": c["wall_time_s"],
            "prepare_s": c.get("prepare_time_s"),
        }
    return row


def rst(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured {report['date']} by ``python benchmarks/training.py`` on {m['cpu_model']} "
        f"({m['usable_cpus']} usable CPUs; 1-minute load average at start "
        f"{m['load_average_1_5_15min'][0]:.1f}: other jobs shared the machine), Python {m['python']}, "
        f"softsort commit {m['softsort_commit']}. Wall times are of the whole command, process start "
        "to exit (JIT compilation included), and of each loss's run (model, compilation, training "
        "and evaluations).",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - framework (versions)",
        "     - soft 0/1 loss: eval / train accuracy",
        "     - cross-entropy: eval / train accuracy",
        "     - wall time: soft / CE / whole command",
    ]
    for row in report["runs"]:
        se, ce = row["soft-error"], row["cross-entropy"]
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
        lines += [
            f"   * - {NAMES[row['framework']]} ({versions})",
            f"     - {100 * se['final_eval_accuracy']:.2f} % / {100 * se['final_train_accuracy']:.2f} %",
            f"     - {100 * ce['final_eval_accuracy']:.2f} % / {100 * ce['final_train_accuracy']:.2f} %",
            f"     - {se['wall_s']:.1f} s / {ce['wall_s']:.1f} s / {row['command_wall_s']:.1f} s",
        ]
    lines += [
        "",
        "Training-set cross-entropy at the end (``log 10`` = "
        f"{math.log(10):.3f} is that of a uniform prediction): "
        + "; ".join(
            f"{NAMES[r['framework']].split(' ')[0]}: soft 0/1 loss model "
            f"{r['soft-error']['final_train_cross_entropy']:.3f}, cross-entropy model "
            f"{r['cross-entropy']['final_train_cross_entropy']:.3f}"
            for r in report["runs"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frameworks", default="jax,torch", help="comma-separated: jax, torch")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for training.json/.rst")
    args = parser.parse_args(argv)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "runs": [measure(fw) for fw in args.frameworks.split(",")],
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "training.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    text = rst(report)
    with open(os.path.join(args.out, "training.rst"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
