"""Quantile-normalize the rows of a matrix too large for one process, with Dask.

Every softsort operator takes a ``dask.array`` and returns one, lazily: nothing runs until
``compute()``, then each block of rows is solved by NumPy (or CuPy) in its own task, on
whatever scheduler is active (here a cluster of two worker processes on this machine).

    pip install "softsort[dask]"
    python docs/scaling/dask_quantile_normalization.py [--rows 100000]
"""

from __future__ import annotations

import argparse

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import softsort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=50)
    args = parser.parse_args()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster),
    ):
        # Blocks of rows; the operator's axis (the last) must be one chunk, softsort rechunks it if not.
        x = da.random.default_rng(0).normal(size=(args.rows, args.cols), chunks=(max(1, args.rows // 8), -1))
        targets = np.linspace(-2.0, 2.0, args.cols)  # every row mapped onto these values, order kept
        normalized = softsort.quantile_normalization(x, targets, epsilon=1e-3)  # lazy: a graph
        ranks = softsort.ranks(x)
        normalized, ranks = da.compute(normalized, ranks)
    # Each row now holds (nearly) the target values, in the order of the row's ranks.
    order = np.argsort(ranks, axis=1)
    distance = np.mean(np.abs(np.take_along_axis(normalized, order, 1) - targets))
    print(f"mean distance to the targets: {distance:.4f} (targets {targets[1] - targets[0]:.3f} apart)")


if __name__ == "__main__":
    main()
