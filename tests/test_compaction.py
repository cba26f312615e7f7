"""Batch compaction in the Sinkhorn loop (``_sinkhorn._iterate``).

Once at most a quarter of the problems of a batch still run, the loop goes on with those
only. A row's result must not depend on that: every row of a batch equals the same row
solved alone, iterations included, on every backend (under JAX the compaction is a
``lax.cond`` around nested while loops).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import softsort
from conftest import Lib
from softsort._core import _sinkhorn

#: In the slow set under JAX (compile-bound); compaction is core code, checked on the other backends.
pytestmark = pytest.mark.slow_on("jax")


def _spread_batch(rows: int, n: int = 12) -> np.ndarray:
    """Rows whose iteration counts differ a lot: the first few have near-tied values."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, n))
    for r in range(4):
        x[r, 1::2] = x[r, ::2] + 10.0 ** -(r + 1)  # pairs 0.1 ... 1e-4 apart: slow rows
    return x


def test_rows_equal_rows_solved_alone(lib: Lib) -> None:
    x = _spread_batch(rows=48)  # 48 * 12 * 12 kernel entries: above COMPACT_MIN_SIZE
    kw = {"epsilon": 1e-2, "threshold": 1e-8 if lib.float64 else 1e-4, "max_iterations": 5000}
    batch = softsort.transport_for_sort(lib.asarray(x), **kw)
    its = lib.to_numpy(batch.iterations)
    assert np.sort(its)[-7] < its.max(), its  # some blocks ran with at most 48 // 8 rows
    tol = 1e-10 if lib.float64 else 1e-5
    for r in (0, 1, 2, 3, 4, 10, 47):
        alone = softsort.transport_for_sort(lib.asarray(x[r : r + 1]), **kw)
        assert lib.to_numpy(alone.iterations)[0] == its[r], r
        np.testing.assert_allclose(lib.to_numpy(batch.plan)[r], lib.to_numpy(alone.plan)[0], atol=tol)
        np.testing.assert_allclose(lib.to_numpy(batch.errors)[r], lib.to_numpy(alone.errors)[0], atol=tol)
    ranks = lib.to_numpy(softsort.ranks(lib.asarray(x), **kw))
    for r in (0, 5):
        np.testing.assert_allclose(ranks[r], lib.to_numpy(softsort.ranks(lib.asarray(x[r]), **kw)), atol=1e3 * tol)


@pytest.mark.backend("numpy")
def test_compaction_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each level keeps an eighth of the rows, and only rows that still run are moved."""
    sizes: list[int] = []
    original = _sinkhorn._compacted

    def spy(backend, config, rows, state, keep, levels, until):  # type: ignore[no-untyped-def]
        sizes.append(keep)
        assert int(np.sum(state.last_err >= config.threshold)) <= keep
        return original(backend, config, rows, state, keep, levels, until)

    monkeypatch.setattr(_sinkhorn, "_compacted", spy)
    monkeypatch.setattr(_sinkhorn, "COMPACT_MIN_SIZE", 0)
    # The compaction of the Sinkhorn loop: without Newton steps, which take over the rows
    # still running after _newton.NEWTON_AFTER iterations (here before the second level).
    monkeypatch.setattr(_sinkhorn, "applies", lambda *args: False)
    x = _spread_batch(rows=128)
    out = softsort.transport_for_sort(x, threshold=1e-8, max_iterations=5000)
    assert sizes == [16, 2], sizes  # two levels at most
    sizes.clear()
    monkeypatch.setattr(_sinkhorn, "COMPACT_MIN_SIZE", 2 * 16 * 12 * 12)
    softsort.transport_for_sort(x, threshold=1e-8, max_iterations=5000)
    assert sizes == [16], sizes  # 16 rows of 12 x 12 are too small to compact again
    assert np.all(out.converged)


def test_max_iterations_cut_is_the_same(lib: Lib) -> None:
    """Rows still running at ``max_iterations`` stop there, compacted or not."""
    x = _spread_batch(rows=48)
    kw = {"epsilon": 1e-2, "threshold": 1e-12 if lib.float64 else 1e-7, "max_iterations": 95}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", softsort.ConvergenceWarning)
        batch = softsort.transport_for_sort(lib.asarray(x), **kw)
    its = lib.to_numpy(batch.iterations)
    assert its.max() == 95
    for r in (0, 1, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", softsort.ConvergenceWarning)
            alone = softsort.transport_for_sort(lib.asarray(x[r : r + 1]), **kw)
        assert lib.to_numpy(alone.iterations)[0] == its[r]
        np.testing.assert_allclose(
            lib.to_numpy(batch.plan)[r], lib.to_numpy(alone.plan)[0], atol=1e-10 if lib.float64 else 1e-5
        )
