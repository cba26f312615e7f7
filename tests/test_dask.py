"""Dask arrays: every operator and ``vjp`` builds a lazy graph, solved chunk by chunk.

Lazy: the call computes nothing (a scheduler that raises is installed while the graph is
built, and the input's chunks count their own computations). Right: every result equals
NumPy's on the whole array to 1e-12 in float64, on the threaded scheduler and on a
``dask.distributed`` cluster of two worker processes on the loopback address.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import softsort
from conftest import available

pytestmark = pytest.mark.skipif(not available("numpy"), reason="numpy not enabled")
da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(9, 5, 6))
CRIT = RNG.normal(size=(9, 5))
T = np.linspace(-1.0, 1.0, 4)

#: (name, call) with call(x, lib) where lib is numpy or dask.array (to build the extra arrays)
CALLS = [
    ("sort", lambda x, lib: softsort.sort(x)),
    ("sort_axis0_topk", lambda x, lib: softsort.sort(x, axis=0, topk=3, epsilon=0.05)),
    ("ranks_axis1", lambda x, lib: softsort.ranks(x, axis=1, descending=True)),
    ("ranks_target_weights", lambda x, lib: softsort.ranks(x, target_weights=lib.asarray(np.full(3, 1 / 3)))),
    ("topk_mask", lambda x, lib: softsort.topk_mask(x, 2, axis=1)),
    ("quantile_levels", lambda x, lib: softsort.quantile(x, lib.asarray(np.array([0.2, 0.7])), axis=1)),
    ("quantile_axes", lambda x, lib: softsort.quantile(x, np.array([0.3, 0.5]), axis=(2, 0), epsilon=0.05)),
    ("quantize", lambda x, lib: softsort.quantize(x, num_levels=3, axis=0)),
    (
        "quantile_normalization",
        lambda x, lib: softsort.quantile_normalization(x, lib.asarray(T), weights=lib.asarray(np.full(4, 0.25))),
    ),
    ("sort_with", lambda x, lib: softsort.sort_with(x, lib.asarray(CRIT), topk=2)),
    ("epsilon_array", lambda x, lib: softsort.ranks(x, epsilon=lib.asarray(0.05))),
    ("straight_through", lambda x, lib: softsort.sort(x, straight_through=True)),
]


def chunked(values: np.ndarray) -> da.Array:
    """A dask array whose chunks split every axis (the operator's axis included)."""
    return da.from_array(values, chunks=tuple(max(1, s // 2) for s in values.shape))


class Counter(dask.callbacks.Callback):
    """Counts the tasks dask runs while active."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = 0

    def _pretask(self, key, dsk, state) -> None:
        self.tasks += 1


def refuse(*args, **kwargs):
    raise AssertionError("a dask graph was computed while the call was being built")


def assert_lazy(build):
    """``build()`` with every dask computation refused; its chunks count computations too."""
    counter = Counter()
    with dask.config.set(scheduler=refuse), counter:
        out = build()
    assert counter.tasks == 0
    return out


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_lazy_and_equal_to_numpy(name, call) -> None:
    out = assert_lazy(lambda: call(chunked(X), da))
    assert isinstance(out, da.Array)
    ref = call(X, np)
    assert out.shape == ref.shape
    assert out.dtype == ref.dtype
    with dask.config.set(scheduler="threads"):
        got = out.compute()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # NumPy extra arguments with a dask input give the same graph's numbers.
    np.testing.assert_allclose(call(chunked(X), np).compute(scheduler="threads"), ref, rtol=0, atol=1e-12)


def test_chunks_are_solved_independently() -> None:
    x = da.from_array(X, chunks=(2, 5, 3))  # 5 x 1 row blocks once the last axis is one chunk
    out = softsort.ranks(x)
    assert out.chunks == ((2, 2, 2, 2, 1), (5,), (6,))
    # One task per block of rows solves it: the graph has a task per block, none whole.
    solve = [k for k in dict(out.__dask_graph__()) if isinstance(k, tuple) and k[0] == out.name]
    assert len(solve) == 5


def test_vjp_lazy_and_equal_to_numpy() -> None:
    cot = RNG.normal(size=(9, 2, 6))
    for lib_cot in (np.asarray, lambda c: da.from_array(c, chunks=(4, 1, 3))):
        out, pull = assert_lazy(lambda: softsort.vjp(softsort.quantile, chunked(X), np.array([0.2, 0.7]), axis=1))
        grad = assert_lazy(lambda: pull(lib_cot(cot)))
        ref_out, ref_pull = softsort.vjp(softsort.quantile, X, np.array([0.2, 0.7]), axis=1)
        with dask.config.set(scheduler="threads"):
            np.testing.assert_allclose(out.compute(), ref_out, rtol=0, atol=1e-12)
            np.testing.assert_allclose(grad.compute(), ref_pull(cot), rtol=0, atol=1e-12)
    # sort_with: the gradient of the rows, vector and matrix rows.
    for rows, crit in ((X, CRIT), (CRIT[0], CRIT[0])):
        out, pull = softsort.vjp(softsort.sort_with, chunked(rows), crit, topk=3)
        ref_out, ref_pull = softsort.vjp(softsort.sort_with, rows, crit, topk=3)
        c = RNG.normal(size=ref_out.shape)
        np.testing.assert_allclose(pull(c).compute(scheduler="threads"), ref_pull(c), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cotangent"):
        pull(np.ones(7))


def test_transport_for_sort_lazy() -> None:
    out = assert_lazy(lambda: softsort.transport_for_sort(chunked(X), num_targets=4))
    ref = softsort.transport_for_sort(X, num_targets=4)
    assert all(isinstance(field, da.Array) for field in out)
    for got, want in zip(dask.compute(*out, scheduler="threads"), ref, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_argument_errors_at_call_time_value_errors_at_compute() -> None:
    x = chunked(X)
    with pytest.raises(ValueError, match="topk_mask"):
        assert_lazy(lambda: softsort.topk_mask(x, 9))  # k >= n: known from shapes
    with pytest.raises(ValueError, match="criterion"):
        softsort.sort_with(x, CRIT[:, :3])
    with pytest.raises(TypeError, match="no_such_option"):
        softsort.ranks(x, no_such_option=1)
    unknown = x[x[:, 0, 0] > 0]  # rows selected by value: sizes unknown until computed
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        assert_lazy(lambda: softsort.ranks(unknown))
    bad = assert_lazy(lambda: softsort.ranks(da.from_array(np.array([[1.0, np.nan, 2.0]]))))
    with pytest.raises(ValueError, match="finite"):
        bad.compute(scheduler="sync")


def test_large_block_warns() -> None:
    x = da.ones((200, 400), chunks=(200, 100))
    with dask.config.set({"array.chunk-size": "100 KiB"}), pytest.warns(da.PerformanceWarning, match="chunk-size"):
        softsort.ranks(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        softsort.ranks(da.ones((200, 400), chunks=(50, 400)))  # already one chunk: nothing to say


def test_array_keyword_split_with_the_rows() -> None:
    """An array keyword the adapter does not know (``mask=`` ...) is broadcast and chunked like x."""
    from softsort.backends import _dask

    def weighted_sum(x, /, *, axis=-1, scale=None):
        # An operator-shaped function: scale holds one value per element of x.
        return np.sum(x * scale, axis=axis, keepdims=True)

    scale = RNG.normal(size=(1, 5, 6))  # broadcasts over the first axis
    out = _dask.call(weighted_sum, (chunked(X),), {"axis": 2, "scale": scale})
    np.testing.assert_allclose(out.compute(scheduler="sync"), weighted_sum(X, axis=2, scale=scale), rtol=1e-14)
    with pytest.raises(ValueError, match=r"'scale'.*broadcast"):
        _dask.call(weighted_sum, (chunked(X),), {"scale": np.ones(4)})


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_distributed_two_worker_processes(cluster_client) -> None:
    distributed = pytest.importorskip("distributed")
    x = da.from_array(X, chunks=(1, 5, 2))
    cot = RNG.normal(size=X.shape)
    out, pull = softsort.vjp(softsort.ranks, x, target_weights=np.full(4, 0.25))
    ref_out, ref_pull = softsort.vjp(softsort.ranks, X, target_weights=np.full(4, 0.25))
    q = softsort.quantile(x, da.from_array(np.array([0.25, 0.5])), axis=0)
    with distributed.get_task_stream(cluster_client) as stream:
        got_out, got_grad, got_q = cluster_client.compute([out, pull(cot), q], sync=True)
    np.testing.assert_allclose(got_out, ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_grad, ref_pull(cot), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_q, softsort.quantile(X, np.array([0.25, 0.5]), axis=0), rtol=0, atol=1e-12)
    # The row blocks ran in both worker processes.
    assert len({task["worker"] for task in stream.data}) == 2
