"""The runnable examples of docs/scaling.rst run, at small sizes, and print what they say."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import available

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "scaling"


def run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=full, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not available("numpy"), reason="numpy not enabled")
def test_dask_example() -> None:
    pytest.importorskip("distributed")
    out = run("dask_quantile_normalization.py", "--rows", "400", "--cols", "10")
    distance = float(out.split("mean distance to the targets:")[1].split()[0])
    assert distance < 0.1, out  # a fraction of the targets' spacing


@pytest.mark.slow
@pytest.mark.skipif(not available("jax"), reason="jax not enabled")
def test_jax_sharding_example() -> None:
    out = run(
        "jax_sharding.py", "--rows-per-device", "8", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    )
    lines = {line.split()[0]: line for line in out.splitlines() if "rows per device" in line}
    assert set(lines) == {"eager", "gradient", "shard_map"}, out
    for line in lines.values():
        assert "P('batch'" in line, out
        assert line.endswith("rows per device [8, 8]"), out
    assert "agree: True" in out, out


@pytest.mark.slow
@pytest.mark.skipif(not available("torch"), reason="torch not enabled")
def test_torch_ddp_example() -> None:
    out = run("torch_ddp.py", "--steps", "3", "--batch", "16")
    assert out.count("soft 0/1 loss") == 2, out  # steps 0 and 2
